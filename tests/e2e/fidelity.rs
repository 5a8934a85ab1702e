//! Every record arrives with its partition, key, value, headers and timestamp, in order.

use std::time::Duration;

use crate::common::*;

const TOPICS: usize = 3;
const PARTITIONS: i32 = 4;
const PER_PARTITION: u64 = 8_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_field_by_field_in_order() {
    let env = test_env!();
    let base = unique("fidelity");
    let state = tempfile::tempdir().unwrap();
    let producer = producer(&env.source);
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("{base}.t{i}")).collect();
    for topic in &topics {
        create_topic(&env.source, topic, PARTITIONS, &[("retention.ms", "86400000")]).await;
    }
    let mut produced = Vec::new();
    for topic in &topics {
        for partition in 0..PARTITIONS {
            let records: Vec<Record> = (0..PER_PARTITION).map(|seq| Record::numbered(topic, partition, seq)).collect();
            produce(&producer, topic, partition, &records).await;
            produced.push((topic.clone(), partition, records));
        }
    }
    let total: u64 = TOPICS as u64 * PARTITIONS as u64 * PER_PARTITION;
    assert!(total >= 100_000);

    let flow = unique("fid");
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &format!("{base}\\..*"), ""));
    let target_topics: Vec<String> = topics.iter().map(|topic| format!("src.{topic}")).collect();
    wait_for("all records on the target", Duration::from_secs(180), || {
        let ends: Vec<i64> = target_topics
            .iter()
            .flat_map(|topic| (0..PARTITIONS).map(move |partition| (topic.clone(), partition)))
            .map(|(topic, partition)| end_offset(&env.target, &topic, partition))
            .collect();
        assert!(
            ends.iter().all(|end| *end <= PER_PARTITION as i64),
            "more records than produced: {ends:?}\n{}",
            ferry.logs()
        );
        ends.iter().all(|end| *end == PER_PARTITION as i64).then_some(())
    })
    .await;
    assert_eq!(ferry.metric("ferry_task_failures_total", &[]), Some(0.0), "{}", ferry.logs());

    for (topic, partition, records) in &produced {
        let target_topic = format!("src.{topic}");
        assert_eq!(partition_count(&env.target, &target_topic), PARTITIONS as usize);
        let replicated: Vec<Record> =
            read_partition(&env.target, &target_topic, *partition).into_iter().map(|(_, record)| record).collect();
        assert_eq!(replicated.len(), records.len(), "{target_topic}[{partition}] record count");
        for (seq, (want, got)) in records.iter().zip(&replicated).enumerate() {
            assert_eq!(want, got, "{target_topic}[{partition}] record {seq} differs");
        }
    }
    // The target topic carries the source's replicable config.
    let configs = ferry_test_topic_config(&env.target, &target_topics[0]).await;
    assert_eq!(configs.get("retention.ms").map(String::as_str), Some("86400000"));

    let replicated = ferry.metric("ferry_records_replicated_total", &[("flow", &flow)]).unwrap();
    assert_eq!(replicated as u64, total, "records metric");
    wait_for("lag to reach zero", Duration::from_secs(30), || {
        let lag = ferry.metric("ferry_replication_lag_records", &[("flow", &flow)])?;
        let series = ferry.get("/metrics")?.1.matches("ferry_replication_lag_records{").count();
        (lag == 0.0 && series >= TOPICS).then_some(())
    })
    .await;
    assert_eq!(ferry.get("/readyz").map(|(code, _)| code), Some(200));

    // `ferry status` reads the member's /status; `ferry plan` finds nothing left to change on the target.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["status", "--url", &ferry.http])
        .output()
        .unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && status_text.contains("ready: yes"), "{status_text}");
    for topic in &topics {
        let row =
            status_text.lines().find(|line| line.contains(topic.as_str())).unwrap_or_else(|| panic!("{status_text}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[2..5], ["4", "0", "0"], "tasks, paused, lag of {topic}: {row}");
    }
    let plan = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["plan", "--config"])
        .arg(state.path().join("ferry.yaml"))
        .output()
        .unwrap();
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{plan_text}{}", String::from_utf8_lossy(&plan.stderr));
    assert!(plan_text.contains(&format!("{} -> src.{} (4 partitions)", topics[0], topics[0])), "{plan_text}");
    assert!(!plan_text.contains("would "), "nothing left to change: {plan_text}");
}

async fn ferry_test_topic_config(bootstrap: &str, topic: &str) -> std::collections::BTreeMap<String, String> {
    use rdkafka::admin::{AdminOptions, ResourceSpecifier};
    let results =
        admin(bootstrap).describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new()).await.unwrap();
    let resource = results.into_iter().next().unwrap().unwrap();
    resource.entries.into_iter().filter_map(|entry| entry.value.map(|value| (entry.name, value))).collect()
}

//! The target cluster's broker stops mid-stream and comes back: records wait in ferry, nothing is lost, nothing is
//! written twice, and ferry needs no restart.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_out_a_target_outage_and_arrive_once() {
    let env = test_env!();
    // A target of its own, so stopping it does not disturb the other tests.
    let node = KafkaNode::new(&env);
    node.start();
    let target = node.bootstrap();

    let topic = unique("outage");
    let flow = unique("out");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 2, &[]).await;
    let config_text = config(&env, state.path(), &flow, &topic, "").replace(&env.target, &target);
    let ferry = Ferry::start(state.path(), &config_text);
    let target_topic = format!("src.{topic}");
    let producer = producer(&env.source);
    let records: Vec<Vec<Record>> =
        (0..2).map(|p| (0..3_000).map(|seq| Record::numbered(&topic, p, seq)).collect()).collect();
    for (partition, records) in records.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[..1_000]).await;
    }
    wait_for("the first records replicated", Duration::from_secs(60), || {
        ((0..2).all(|p| end_offset(&target, &target_topic, p) == 1_000)).then_some(())
    })
    .await;

    node.stop();
    for (partition, records) in records.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[1_000..2_000]).await;
    }
    wait_for("the records produced during the outage counted as lag", Duration::from_secs(30), || {
        (ferry.metric("ferry_replication_lag_records", &[("flow", &flow)])? > 0.0).then_some(())
    })
    .await;
    node.start();
    let restarted = std::time::Instant::now();
    for (partition, records) in records.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[2_000..]).await;
    }
    wait_for("every record on the target after the outage", Duration::from_secs(120), || {
        ((0..2).all(|p| end_offset(&target, &target_topic, p) >= 3_000)).then_some(())
    })
    .await;
    let recovered = restarted.elapsed();
    for (partition, expected) in records.iter().enumerate() {
        let replicated: Vec<Record> =
            read_partition(&target, &target_topic, partition as i32).into_iter().map(|(_, r)| r).collect();
        assert_eq!(replicated.len(), expected.len(), "partition {partition}: no record lost or written twice");
        assert_eq!(&replicated, expected, "partition {partition}");
    }
    assert_eq!(ferry.metric("ferry_task_failures_total", &[("flow", &flow)]), Some(0.0), "{}", ferry.logs());
    report_fault(
        "the whole target cluster stopped, then started again",
        "at-least-once",
        "0",
        0,
        Recovery::After(recovered),
    );
}

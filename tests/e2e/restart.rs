//! kill -9 mid-stream and restart: nothing lost, duplicates only after the last checkpoint, and counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;

const PARTITIONS: i32 = 2;
const PER_PARTITION: u64 = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_then_restart_loses_nothing_and_counts_duplicates() {
    let env = test_env!();
    let topic = unique("restart");
    let flow = unique("rst");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let all: Vec<Vec<Record>> =
        (0..PARTITIONS).map(|p| (0..PER_PARTITION).map(|seq| Record::numbered(&topic, p, seq)).collect()).collect();
    // Half the records before ferry starts, the rest while it runs and across the kill.
    for (partition, records) in all.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[..records.len() / 2]).await;
    }
    let config_text = config(&env, state.path(), &flow, &topic, "");
    let ferry = Ferry::start(state.path(), &config_text);
    let target_topic = format!("src.{topic}");
    wait_for("replication under way with a checkpoint written", Duration::from_secs(60), || {
        let replicated: i64 = (0..PARTITIONS).map(|p| end_offset(&env.target, &target_topic, p).max(0)).sum();
        let checkpointed = stored_positions(state.path(), &flow).values().sum::<i64>();
        (replicated > 1_000 && checkpointed > 0).then_some(())
    })
    .await;
    let feeder = {
        let (producer, topic) = (producer.clone(), topic.clone());
        let rest: Vec<Vec<Record>> = all.iter().map(|records| records[records.len() / 2..].to_vec()).collect();
        tokio::spawn(async move {
            for chunk in 0..10 {
                for (partition, records) in rest.iter().enumerate() {
                    let size = records.len() / 10;
                    produce(&producer, &topic, partition as i32, &records[chunk * size..(chunk + 1) * size]).await;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    ferry.kill9();
    let checkpointed = stored_positions(state.path(), &flow);
    let on_target_at_kill: BTreeMap<i32, i64> =
        (0..PARTITIONS).map(|p| (p, end_offset(&env.target, &target_topic, p))).collect();

    let ferry = Ferry::start_with(state.path().join("ferry.yaml"), free_port(), &[]);
    let restarted = Instant::now();
    feeder.await.unwrap();
    // Every source record acknowledged (and checkpointed) means every record is on the target.
    wait_for("every source record acknowledged", Duration::from_secs(120), || {
        let positions = stored_positions(state.path(), &flow);
        ((0..PARTITIONS).all(|p| positions.get(&(topic.clone(), p)) == Some(&(PER_PARTITION as i64)))).then_some(())
    })
    .await;
    let recovered = restarted.elapsed();

    let mut duplicates = 0;
    for partition in 0..PARTITIONS {
        let replicated = read_partition(&env.target, &target_topic, partition);
        let mut seen = BTreeMap::new();
        for (_, record) in &replicated {
            *seen.entry(record.id()).or_insert(0) += 1;
        }
        let source_records = &all[partition as usize];
        assert!(source_records.iter().all(|record| seen.contains_key(&record.id())), "a record was lost");
        let checkpoint = checkpointed.get(&(topic.clone(), partition)).copied().unwrap_or(0);
        for (seq, record) in source_records.iter().enumerate() {
            let copies = seen[&record.id()];
            assert!(copies <= 2, "record {seq} of partition {partition} written {copies} times");
            if copies == 2 {
                assert!(
                    seq as i64 >= checkpoint,
                    "partition {partition}: record {seq} duplicated although the checkpoint ({checkpoint}) covered it"
                );
                duplicates += 1;
            }
        }
        let acknowledged_since_checkpoint = on_target_at_kill[&partition] - checkpoint;
        let copies_here = source_records.iter().filter(|record| seen[&record.id()] == 2).count() as i64;
        assert!(copies_here <= acknowledged_since_checkpoint, "more duplicates than records after the checkpoint");
    }
    let counted = wait_for("the duplicate metric", Duration::from_secs(30), || {
        ferry.metric("ferry_duplicates_total", &[("flow", &flow)])
    })
    .await;
    assert_eq!(counted as i64, duplicates, "ferry_duplicates_total must equal the duplicates on the target");
    report_fault(
        "ferry killed (SIGKILL) mid-stream and restarted (until every record is acknowledged)",
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::After(recovered),
    );
}

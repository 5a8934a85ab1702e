//! Exactly-once delivery against the real brokers: whatever is killed or stopped, a read_committed consumer of the
//! target sees every source record once, in order.

use std::time::Duration;

use crate::common::*;

/// The flow settings of an exactly-once flow (appended under the flow's `topics` line).
pub const EXACTLY_ONCE: &str = "    delivery: exactly-once\n    exactly_once: { buckets: 4, commit_interval: 200ms }\n";

/// Asserts that the target partition holds, for read_committed readers, exactly `expected` in order.
pub fn assert_exactly_once(bootstrap: &str, topic: &str, partition: i32, expected: &[Record]) {
    let replicated: Vec<Record> = read_partition(bootstrap, topic, partition).into_iter().map(|(_, r)| r).collect();
    let ids = |records: &[Record]| records.iter().map(Record::id).collect::<Vec<_>>();
    if replicated != expected {
        let (got, want) = (ids(&replicated), ids(expected));
        let first_difference = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!(
            "{topic}[{partition}]: {} records read committed, {} expected; first difference at index {first_difference}: \
             {:?} instead of {:?}",
            got.len(),
            want.len(),
            got.get(first_difference),
            want.get(first_difference)
        );
    }
}

/// Produces `records` in `chunks` pieces with a pause between them, so ferry is mid-stream when a test strikes.
pub fn feed_slowly(
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    records: Vec<Vec<Record>>,
    chunks: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in 0..chunks {
            for (partition, records) in records.iter().enumerate() {
                let size = records.len().div_ceil(chunks);
                let end = ((chunk + 1) * size).min(records.len());
                let start = (chunk * size).min(end);
                produce(&producer, &topic, partition as i32, &records[start..end]).await;
            }
            tokio::time::sleep(pause).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_then_restart_delivers_every_record_exactly_once() {
    const PARTITIONS: i32 = 3;
    const PER_PARTITION: u64 = 20_000;
    let env = test_env!();
    let topic = unique("eos-kill");
    let flow = unique("eosk");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let all: Vec<Vec<Record>> =
        (0..PARTITIONS).map(|p| (0..PER_PARTITION).map(|seq| Record::numbered(&topic, p, seq)).collect()).collect();
    for (partition, records) in all.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[..records.len() / 4]).await;
    }
    let config_text = config(&env, state.path(), &flow, &topic, EXACTLY_ONCE);
    let ferry = Ferry::start(state.path(), &config_text);
    let target_topic = format!("src.{topic}");
    wait_for("replication under way", Duration::from_secs(60), || {
        (end_offset(&env.target, &target_topic, 0) > 1_000).then_some(())
    })
    .await;
    let rest: Vec<Vec<Record>> = all.iter().map(|records| records[records.len() / 4..].to_vec()).collect();
    let feeder = feed_slowly(producer.clone(), topic.clone(), rest, 10, Duration::from_millis(150));
    tokio::time::sleep(Duration::from_millis(900)).await;
    ferry.kill9();

    let ferry = Ferry::start_with(state.path().join("ferry.yaml"), free_port(), &[]);
    feeder.await.unwrap();
    wait_for("every source record committed on the target", Duration::from_secs(120), || {
        let positions = stored_positions(state.path(), &flow);
        ((0..PARTITIONS).all(|p| positions.get(&(topic.clone(), p)) == Some(&(PER_PARTITION as i64)))).then_some(())
    })
    .await;
    for (partition, expected) in all.iter().enumerate() {
        assert_exactly_once(&env.target, &target_topic, partition as i32, expected);
    }
    assert_eq!(ferry.metric("ferry_duplicates_total", &[("flow", &flow)]).unwrap_or(0.0), 0.0);
    let logs = ferry.logs();
    assert!(logs.contains("transactional producer ready"), "{logs}");
}

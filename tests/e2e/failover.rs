//! Consumer failover on an ordinary topic: a group reads part of each partition on the source, fails over with
//! `ferry failover`, and reads the rest on the target: together exactly the source, nothing twice, nothing missed.

use std::process::Command;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::common::*;

const PARTITIONS: i32 = 3;
const PER_PARTITION: i64 = 300;

fn group_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Commits `positions` for `group` on the source, runs `ferry failover`, and checks that reading the target from the
/// translated offsets yields exactly the source's records at or after each position.
pub async fn fail_over_and_compare(env: &TestEnv, state: &std::path::Path, flow: &str, topic: &str, positions: &[i64]) {
    let group = unique("group");
    commit(&env.source, &group, topic, positions);
    let done = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["failover", "--config"])
        .arg(state.join("ferry.yaml"))
        .args(["--flow", flow, "--group", &group])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{stdout}{}", String::from_utf8_lossy(&done.stderr));
    let target_topic = format!("src.{topic}");
    let translated: Vec<i64> =
        committed(&env.target, &group, &target_topic, positions.len() as i32).into_iter().map(Option::unwrap).collect();
    for (partition, position) in positions.iter().enumerate() {
        let resumed: Vec<Record> = read_partition(&env.target, &target_topic, partition as i32)
            .into_iter()
            .filter(|(offset, _)| *offset >= translated[partition])
            .map(|(_, record)| record)
            .collect();
        let unread: Vec<Record> = read_partition(&env.source, topic, partition as i32)
            .into_iter()
            .filter(|(offset, _)| offset >= position)
            .map(|(_, record)| record)
            .collect();
        assert_eq!(resumed, unread, "partition {partition} from source offset {position}:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_exact_on_a_compacted_topic() {
    let env = test_env!();
    failover_on_a_compacted_topic(&env, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_exact_on_a_compacted_topic_replicated_exactly_once() {
    let env = test_env!();
    failover_on_a_compacted_topic(&env, crate::common::EXACTLY_ONCE).await;
}

/// Replicates a compacted partition with the flow settings `extra`, checks the target holds exactly its records,
/// then fails groups over from positions in and around compaction gaps.
async fn failover_on_a_compacted_topic(env: &TestEnv, extra: &str) {
    let topic = unique("compacted");
    let flow = unique("cmp");
    let state = tempfile::tempdir().unwrap();
    let compact_fast = [
        ("cleanup.policy", "compact"),
        ("segment.ms", "100"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("min.compaction.lag.ms", "0"),
        ("delete.retention.ms", "100"),
    ];
    create_topic(&env.source, &topic, 1, &compact_fast).await;
    let producer = producer(&env.source);
    // Every fourth record has a key of its own and survives; the others overwrite three hot keys. Written in several
    // segments, then the log cleaner removes the overwritten ones, leaving gaps between the survivors.
    for round in 0..5_u64 {
        let records: Vec<Record> = (0..60)
            .map(|i| {
                let seq = round * 60 + i;
                let mut record = Record::numbered(&topic, 0, seq);
                let key = if seq % 4 == 0 { format!("own-{seq}") } else { format!("hot-{}", seq % 3) };
                record.key = Some(key.into_bytes());
                // Tombstones would be removed too; keep every record a value.
                record.value.get_or_insert_with(|| b"value".to_vec());
                record
            })
            .collect();
        produce(&producer, &topic, 0, &records).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for("the source partition compacted", Duration::from_secs(90), || {
        let kept = read_partition(&env.source, &topic, 0).len() as i64;
        if kept < 150 {
            return Some(());
        }
        // Rolling the active segment needs a new record after segment.ms.
        let mut roll = Record::numbered(&topic, 0, 10_000);
        roll.key = Some(b"hot-0".to_vec());
        roll.value = Some(b"roll".to_vec());
        let producer = producer.clone();
        let topic = topic.clone();
        tokio::spawn(async move { produce(&producer, &topic, 0, &[roll]).await });
        None
    })
    .await;
    let source = read_partition(&env.source, &topic, 0);
    let end = end_offset(&env.source, &topic, 0);

    let _ferry = Ferry::start(state.path(), &config(env, state.path(), &flow, &topic, extra));
    wait_for("the compacted partition checkpointed", Duration::from_secs(60), || {
        (stored_positions(state.path(), &flow).get(&(topic.clone(), 0)) == Some(&end)).then_some(())
    })
    .await;
    let records: Vec<Record> = source.iter().map(|(_, record)| record.clone()).collect();
    crate::common::assert_exactly_once(&env.target, &format!("src.{topic}"), 0, &records);
    // Positions inside compacted-away gaps, at kept records, and at the very end.
    let gap = (1..source.len()).find(|i| source[*i].0 > source[*i - 1].0 + 1).expect("compaction left a gap");
    let inside_gap = source[gap - 1].0 + 1;
    for position in [inside_gap, source[gap].0, source[source.len() / 2].0 + 1, end] {
        fail_over_and_compare(env, state.path(), &flow, &topic, &[position]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_exact_on_a_transactional_topic_with_aborted_transactions() {
    let env = test_env!();
    failover_on_a_transactional_topic(&env, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_exact_on_a_transactional_topic_replicated_exactly_once() {
    let env = test_env!();
    failover_on_a_transactional_topic(&env, crate::common::EXACTLY_ONCE).await;
}

/// Replicates a partition written in transactions, some aborted, with the flow settings `extra`, checks the target
/// holds exactly the committed records, then fails groups over from markers, aborted ranges and records.
async fn failover_on_a_transactional_topic(env: &TestEnv, extra: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let topic = unique("transactional");
    let flow = unique("txn");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[]).await;
    let transactional: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.source)
        .set("transactional.id", unique("txn-producer"))
        .create()
        .unwrap();
    transactional.init_transactions(Duration::from_secs(30)).unwrap();
    // Transactions of 5 records, every third one aborted: the source log holds commit and abort markers and
    // aborted records that a read_committed reader never sees.
    for transaction in 0..12_u64 {
        transactional.begin_transaction().unwrap();
        for i in 0..5 {
            let value = format!("txn {transaction} record {i}");
            let key = format!("k{i}");
            transactional
                .send(FutureRecord::to(&topic).partition(0).key(&key).payload(&value), Duration::from_secs(10))
                .await
                .unwrap();
        }
        if transaction % 3 == 2 {
            transactional.abort_transaction(Duration::from_secs(30)).unwrap();
        } else {
            transactional.commit_transaction(Duration::from_secs(30)).unwrap();
        }
    }
    drop(transactional);
    let source = read_partition(&env.source, &topic, 0);
    assert_eq!(source.len(), 40, "8 committed transactions of 5 records");
    let end = end_offset(&env.source, &topic, 0);

    let ferry = Ferry::start(state.path(), &config(env, state.path(), &flow, &topic, extra));
    wait_for("the transactional partition replicated", Duration::from_secs(60), || {
        let next = stored_positions(state.path(), &flow).get(&(topic.clone(), 0)).copied()?;
        // The position stops after the last committed record; only the final commit marker lies beyond it.
        (next > source.last().unwrap().0).then_some(())
    })
    .await;
    let records: Vec<Record> = source.iter().map(|(_, record)| record.clone()).collect();
    crate::common::assert_exactly_once(&env.target, &format!("src.{topic}"), 0, &records);
    // Only a commit marker lies between the position and the partition end: that is no lag.
    wait_for("no lag on the caught-up transactional partition", Duration::from_secs(30), || {
        (ferry.metric("ferry_replication_lag_records", &[("flow", &flow)])? == 0.0).then_some(())
    })
    .await;
    // A commit marker, the first offset of an aborted transaction, a record after it, and the end.
    let marker = source[4].0 + 1;
    let aborted = (1..source.len()).find(|i| source[*i].0 > source[*i - 1].0 + 2).map(|i| source[i - 1].0 + 2).unwrap();
    for position in [marker, aborted, source[20].0, source[39].0 + 1, end] {
        fail_over_and_compare(env, state.path(), &flow, &topic, &[position]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_fails_over_with_nothing_redelivered_and_nothing_skipped() {
    let env = test_env!();
    let topic = unique("failover");
    let flow = unique("fo");
    let group = unique("billing");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let records: Vec<Vec<Record>> = (0..PARTITIONS)
        .map(|p| (0..PER_PARTITION as u64).map(|seq| Record::numbered(&topic, p, seq)).collect())
        .collect();
    for (partition, records) in records.iter().enumerate() {
        produce(&producer, &topic, partition as i32, records).await;
    }
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, ""));
    wait_for("every record checkpointed", Duration::from_secs(60), || {
        let positions = stored_positions(state.path(), &flow);
        ((0..PARTITIONS).all(|p| positions.get(&(topic.clone(), p)) == Some(&PER_PARTITION))).then_some(())
    })
    .await;

    // The group read (and committed) an uneven part of each partition on the source.
    let positions = [57_i64, 123, 299];
    commit(&env.source, &group, &topic, &positions);

    // `ferry translate` shows the same translation as JSON (delta 0 here: ferry created the target topic).
    let rows = translate_json(&state.path().join("ferry.yaml"), &flow, &group);
    for (partition, offset) in positions.iter().enumerate() {
        let row = &rows[partition];
        assert_eq!(row["source_offset"], *offset);
        assert_eq!(row["target_offset"], *offset);
        assert_eq!(row["not_yet_replicated"], 0);
    }

    // Refused while a consumer of the group is active on the target.
    let target_topic = format!("src.{topic}");
    let active = group_consumer(&env.target, &group);
    active.subscribe(&[&target_topic]).unwrap();
    wait_for("an active member on the target", Duration::from_secs(30), || {
        let _ = active.poll(Duration::from_millis(200));
        (!active.assignment().ok()?.elements().is_empty()).then_some(())
    })
    .await;
    let config_path = state.path().join("ferry.yaml");
    let failover = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["failover", "--config"])
            .arg(&config_path)
            .args(["--flow", &flow, "--group", &group])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = failover(&[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("active member"), "{refused:?}");
    drop(active);
    wait_for("the group's last member gone from the target", Duration::from_secs(30), || {
        (group_members(&env.target, &group) == 0).then_some(())
    })
    .await;

    let done = failover(&[]);
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{stdout}{}", String::from_utf8_lossy(&done.stderr));
    assert!(stdout.contains("committed 3 offsets"), "{stdout}");
    let translated: Vec<i64> =
        committed(&env.target, &group, &target_topic, PARTITIONS).into_iter().map(Option::unwrap).collect();
    for partition in 0..PARTITIONS as usize {
        let resumed: Vec<Record> = read_partition(&env.target, &target_topic, partition as i32)
            .into_iter()
            .filter(|(offset, _)| *offset >= translated[partition])
            .map(|(_, record)| record)
            .collect();
        let unread = &records[partition][positions[partition] as usize..];
        assert_eq!(resumed, unread, "partition {partition}: the target resumes exactly after what the group read");
    }

    // A group ahead of replication: ferry stopped, 50 more records read on the source. Translation points at the
    // end of what was replicated and reports what is missing.
    let (status, _, logs) = ferry.terminate(Duration::from_secs(30));
    assert!(status.success(), "{logs}");
    let more: Vec<Record> =
        (PER_PARTITION as u64..PER_PARTITION as u64 + 50).map(|seq| Record::numbered(&topic, 0, seq)).collect();
    produce(&producer, &topic, 0, &more).await;
    let ahead = unique("ahead");
    commit(&env.source, &ahead, &topic, &[PER_PARTITION + 50]);
    let rows = translate_json(&config_path, &flow, &ahead);
    let row = &rows[0];
    assert_eq!(row["target_offset"], PER_PARTITION, "the end of what was replicated: {row}");
    assert_eq!(row["not_yet_replicated"], 50, "{row}");
}

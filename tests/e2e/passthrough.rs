//! Batch pass-through (`passthrough: true`): record batches travel as bytes, with the guarantees of the per-record
//! path. Read back from the brokers: records field by field, batches byte by byte, aborted transactions left out,
//! translation exact, a refused batch a pause, a kill -9 nothing lost.

use std::time::Duration;

use bytes::Bytes;
use ferry::wire::batch::{self, Batch};
use ferry::wire::cluster::Cluster;
use ferry::wire::requests::{fetch_request, FETCH_VERSION};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};

use crate::common::*;

const PASSTHROUGH: &str = "    passthrough: true\n";

/// A producer that compresses its batches with `codec`.
fn compressing_producer(bootstrap: &str, codec: &str) -> FutureProducer {
    producer_with(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("compression.type", codec)
            .set("batch.num.messages", "500")
            .clone(),
    )
}

/// Every batch of a partition as the broker stores it (read_uncommitted, so markers and aborted batches too).
async fn raw_batches(bootstrap: &str, topic: &str, partition: i32) -> Vec<Batch> {
    let cluster = Cluster::new("test", bootstrap, "ferry-test");
    let leader = cluster.leader(topic, partition).await.unwrap();
    let mut connection = cluster.connect(&leader.address).await.unwrap();
    let end = end_offset(bootstrap, topic, partition);
    let mut batches: Vec<Batch> = Vec::new();
    let mut request = fetch_request(topic, partition, 1 << 20, 100, false);
    let mut offset = 0;
    while offset < end {
        request.topics[0].partitions[0].fetch_offset = offset;
        let response = connection.call(&request, FETCH_VERSION).await.unwrap();
        let data = &response.responses[0].partitions[0];
        assert_eq!(data.error_code, 0, "fetching {topic}[{partition}] at {offset}");
        let fetched = batch::split(data.records.clone().unwrap_or_default()).unwrap();
        assert!(!fetched.is_empty(), "no batch of {topic}[{partition}] at {offset} below its end {end}");
        for batch in fetched {
            if batch.last_offset() >= offset {
                offset = batch.last_offset() + 1;
                batches.push(batch);
            }
        }
    }
    batches
}

/// The records part of a batch (after its 61-byte header) and its attributes' compression bits.
fn records_and_codec(batch: &Batch) -> (Bytes, u8) {
    (batch.bytes().slice(batch::HEADER_LEN..), batch.bytes()[22] & 0x07)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_byte_for_byte_without_aborted_transactions_and_offsets_translate_exactly() {
    let env = test_env!();
    let topic = unique("passthrough");
    let flow = unique("pt");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 3, &[]).await;

    // Partition 0 lz4, partition 1 zstd, partition 2 lz4 in transactions: three committed, two aborted.
    let mut expected: Vec<Vec<Record>> = vec![Vec::new(); 3];
    for (partition, codec) in [(0, "lz4"), (1, "zstd")] {
        let records: Vec<Record> = (0..3_000).map(|seq| Record::numbered(&topic, partition, seq)).collect();
        produce(&compressing_producer(&env.source, codec), &topic, partition, &records).await;
        expected[partition as usize] = records;
    }
    let transactional: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.source)
        .set("transactional.id", unique("pt-tx"))
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    transactional.init_transactions(Duration::from_secs(30)).unwrap();
    let mut first_after_abort = None;
    for round in 0..5_u64 {
        let records: Vec<Record> =
            (round * 400..(round + 1) * 400).map(|seq| Record::numbered(&topic, 2, seq)).collect();
        transactional.begin_transaction().unwrap();
        produce(&transactional, &topic, 2, &records).await;
        if round % 2 == 0 {
            transactional.commit_transaction(Duration::from_secs(30)).unwrap();
            if round == 2 {
                first_after_abort = Some(records[0].id());
            }
            expected[2].extend(records);
        } else {
            transactional.abort_transaction(Duration::from_secs(30)).unwrap();
        }
    }

    let config = config(&env, state.path(), &flow, &topic, PASSTHROUGH);
    let ferry = Ferry::start(state.path(), &config);
    let target_topic = format!("src.{topic}");
    wait_for("every committed record on the target", Duration::from_secs(120), || {
        (0..3).all(|p| end_offset(&env.target, &target_topic, p) == expected[p as usize].len() as i64).then_some(())
    })
    .await;

    for partition in 0..3 {
        let replicated: Vec<(i64, Record)> = read_partition(&env.target, &target_topic, partition);
        let records: Vec<&Record> = replicated.iter().map(|(_, record)| record).collect();
        assert_eq!(records.len(), expected[partition as usize].len(), "{target_topic}[{partition}]");
        for (seq, (got, want)) in records.iter().zip(&expected[partition as usize]).enumerate() {
            assert_eq!(*got, want, "{target_topic}[{partition}] record {seq}");
        }
        // Byte for byte: each target batch carries the records part of a source batch, compression included, in
        // source order; transaction markers and aborted batches are not among them.
        let source: Vec<(Bytes, u8)> =
            raw_batches(&env.source, &topic, partition).await.iter().map(records_and_codec).collect();
        let target: Vec<(Bytes, u8)> =
            raw_batches(&env.target, &target_topic, partition).await.iter().map(records_and_codec).collect();
        let mut from = 0;
        for (index, batch) in target.iter().enumerate() {
            let found = source[from..].iter().position(|candidate| candidate == batch);
            let found = found.unwrap_or_else(|| {
                panic!("target batch {index} of {target_topic}[{partition}] is no source batch (from source {from} on)")
            });
            from += found + 1;
        }
        let codec = [3, 4, 3][partition as usize];
        assert!(target.iter().all(|(_, c)| *c == codec), "{target_topic}[{partition}] keeps its compression");
    }
    let total: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(ferry.metric("ferry_records_replicated_total", &[("flow", &flow)]), Some(total as f64));
    assert_eq!(ferry.metric("ferry_task_failures_total", &[]), Some(0.0), "{}", ferry.logs());
    wait_for("lag to reach zero", Duration::from_secs(30), || {
        (ferry.metric("ferry_replication_lag_records", &[("flow", &flow)])? == 0.0).then_some(())
    })
    .await;

    // Translation: a group at a record translates to the same record on the target, also after aborted
    // transactions (partition 2) where source and target offsets part.
    let source_records: Vec<Vec<(i64, Record)>> = (0..3).map(|p| read_partition(&env.source, &topic, p)).collect();
    let wanted_ids = [expected[0][1_234].id(), expected[1][2_999].id(), first_after_abort.expect("round 2 committed")];
    let offsets: Vec<i64> =
        (0..3).map(|p| source_records[p].iter().find(|(_, record)| record.id() == wanted_ids[p]).unwrap().0).collect();
    assert!(offsets[2] > 800, "partition 2's record sits behind an aborted transaction: {}", offsets[2]);
    let at: Vec<(i64, String)> = offsets.into_iter().zip(wanted_ids).collect();
    assert_a_group_translates_to_the_same_records(&env, state.path(), &flow, &topic, &at).await;
}

/// Commits a source group at `at` (per partition: the offset and the id of the record there), waits until the
/// checkpoints cover it, and checks that `ferry translate` points every partition at the same record on the target.
async fn assert_a_group_translates_to_the_same_records(
    env: &TestEnv,
    state_dir: &std::path::Path,
    flow: &str,
    topic: &str,
    at: &[(i64, String)],
) {
    let group = unique("pt-group");
    commit(&env.source, &group, topic, &at.iter().map(|(offset, _)| *offset).collect::<Vec<_>>());
    wait_for("a checkpoint of every partition", Duration::from_secs(30), || {
        let stored = stored_positions(state_dir, flow);
        at.iter()
            .enumerate()
            .all(|(p, (offset, _))| stored.get(&(topic.to_owned(), p as i32)).is_some_and(|next| next >= offset))
            .then_some(())
    })
    .await;
    let rows = translate_json(&state_dir.join("ferry.yaml"), flow, &group);
    let target_topic = format!("src.{topic}");
    for (partition, (_, id)) in at.iter().enumerate() {
        let row = rows.iter().find(|row| row["partition"] == partition).unwrap_or_else(|| panic!("{rows:?}"));
        let target_offset = row["target_offset"].as_i64().unwrap_or_else(|| panic!("{row}"));
        let replicated = read_partition(&env.target, &target_topic, partition as i32);
        let (_, record) = replicated.iter().find(|(offset, _)| *offset == target_offset).unwrap();
        assert_eq!(&record.id(), id, "{row}");
    }
}

/// A batch larger than the target accepts. Topic sync copies a source topic's own `max.message.bytes`, so this
/// happens where the source cluster's brokers allow larger batches than the target's (a broker-wide
/// `message.max.bytes`, which no topic config carries over): the task pauses before the batch, naming it, and
/// nothing after it is written or checkpointed; the per-record path (passthrough off) then copies it in smaller
/// batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_target_accepts_pauses_the_task_and_is_never_skipped() {
    use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let env = test_env!();
    let topic = unique("pt-oversize");
    let flow = unique("pto");
    let state = tempfile::tempdir().unwrap();
    // The source brokers accept batches of up to 4 MB (the target's keep Kafka's default of about 1 MB).
    let metadata_client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &env.source).create().unwrap();
    let brokers = metadata_client.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    for broker in brokers.brokers() {
        let config = AlterConfig::new(ResourceSpecifier::Broker(broker.id())).set("message.max.bytes", "4000000");
        let results = admin(&env.source).alter_configs([&config], &AdminOptions::new()).await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    create_topic(&env.source, &topic, 1, &[]).await;
    let large_batches = producer_with(
        ClientConfig::new()
            .set("bootstrap.servers", &env.source)
            .set("message.max.bytes", "4000000")
            .set("batch.size", "4000000")
            .set("linger.ms", "200")
            .clone(),
    );
    let records: Vec<Record> = (0..250)
        .map(|seq| {
            let mut record = Record::numbered(&topic, 0, seq);
            record.value = Some(vec![b'v'; 8_000]);
            record
        })
        .collect();
    // Up to 15 s for the broker-level limit to apply (dynamic broker configs propagate through the controller).
    let started = std::time::Instant::now();
    loop {
        let attempt = async { produce(&large_batches, &topic, 0, &records).await };
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(()) => break,
            Err(_) => assert!(started.elapsed() < Duration::from_secs(60), "the source refuses the large batch"),
        }
    }
    let source_batches = raw_batches(&env.source, &topic, 0).await;
    assert!(source_batches.iter().any(|batch| batch.len() > 1_100_000), "a source batch above the target's limit");

    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, PASSTHROUGH));
    let target_topic = format!("src.{topic}");
    wait_for("the task paused on the refused batch", Duration::from_secs(60), || {
        let (_, status) = ferry.get("/status")?;
        status.contains("refused the batch of source offsets").then_some(status)
    })
    .await;
    let logs = ferry.logs();
    assert!(logs.contains("MessageTooLarge") || logs.contains("RecordListTooLarge"), "{logs}");
    let written = end_offset(&env.target, &target_topic, 0);
    let stored = stored_positions(state.path(), &flow).get(&(topic.clone(), 0)).copied().unwrap_or(0);
    assert!(stored <= written, "checkpoint {stored} ahead of the {written} records on the target");
    drop(ferry);

    // Per record, the same records fit: all of them arrive, nothing skipped.
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, ""));
    wait_for("every record on the target", Duration::from_secs(60), || {
        (end_offset(&env.target, &target_topic, 0) == records.len() as i64).then_some(())
    })
    .await;
    let replicated: Vec<Record> =
        read_partition(&env.target, &target_topic, 0).into_iter().map(|(_, record)| record).collect();
    assert_eq!(replicated, records);
    assert_eq!(ferry.metric("ferry_duplicates_total", &[("flow", &flow)]), Some(0.0));
    report_fault(
        "a batch larger than the target accepts (pass-through: the task pauses before it, naming its offsets)",
        "at-least-once",
        "0",
        0,
        Recovery::Operator,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_nothing_is_lost_and_the_duplicates_are_counted() {
    let env = test_env!();
    let topic = unique("pt-kill");
    let flow = unique("ptk");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 2, &[]).await;
    let producer = compressing_producer(&env.source, "lz4");
    let records: Vec<Vec<Record>> =
        (0..2).map(|p| (0..20_000).map(|seq| Record::numbered(&topic, p, seq)).collect()).collect();
    for (partition, records) in records.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[..10_000]).await;
    }
    // Slow enough (1 MiB/s) that the kill lands mid-stream.
    let throttled = config(&env, state.path(), &flow, &topic, PASSTHROUGH)
        + "throttles:\n  - { from: src, to: dst, rate: 1MiB/s }\n";
    let ferry = Ferry::start(state.path(), &throttled);
    let target_topic = format!("src.{topic}");
    wait_for("a checkpoint mid-stream", Duration::from_secs(60), || {
        let stored = stored_positions(state.path(), &flow);
        stored.values().any(|next| *next > 1_000).then_some(())
    })
    .await;
    ferry.kill9();
    for (partition, records) in records.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[10_000..]).await;
    }
    let restarted = std::time::Instant::now();
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, PASSTHROUGH));
    wait_for("every record replicated", Duration::from_secs(120), || {
        let stored = stored_positions(state.path(), &flow);
        (0..2).all(|p| stored.get(&(topic.clone(), p)) == Some(&20_000)).then_some(())
    })
    .await;
    let recovered = restarted.elapsed();
    let duplicates = wait_at_least_once(&ferry, &flow, &env.target, &target_topic, &records).await;
    report_fault(
        "kill -9 of the member mid-stream, restart (pass-through)",
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::After(recovered),
    );
}

/// A source log the broker's cleaner compacted: its batches have holes in their offsets. Every surviving record
/// arrives once, in order, on both an lz4 and an uncompressed partition, and a group committed just after a hole
/// translates to the same record on the target (whose offsets have no holes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_source_arrives_without_its_holes_and_offsets_translate_exactly() {
    let env = test_env!();
    let topic = unique("pt-compacted");
    let flow = unique("ptc");
    let state = tempfile::tempdir().unwrap();
    // Small segments and an eager cleaner, so closed segments are compacted within the cleaner's first pass (its
    // thread looks for work every 15 s by default).
    let compacted = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "1048576"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("min.compaction.lag.ms", "0"),
    ];
    create_topic(&env.source, &topic, 2, &compacted).await;
    // 1,500 records of about 3 KB per partition: several segments. Every tenth record has a key of its own and
    // survives; the others share 40 keys, so most of them are superseded and batches keep records with holes between
    // them. Values are pseudo-random so that lz4 cannot shrink them below a segment.
    let records: Vec<Vec<Record>> = (0..2)
        .map(|partition| {
            (0..1_500_u64)
                .map(|seq| {
                    let mut record = Record::numbered(&topic, partition, seq);
                    let key = if seq % 10 == 0 { format!("own-{seq}") } else { format!("key-{}", seq % 40) };
                    record.key = Some(key.into_bytes());
                    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    record.value = Some(
                        (0..3_000)
                            .map(|_| {
                                state ^= state << 13;
                                state ^= state >> 7;
                                state ^= state << 17;
                                state as u8
                            })
                            .collect(),
                    );
                    record
                })
                .collect()
        })
        .collect();
    produce(&compressing_producer(&env.source, "lz4"), &topic, 0, &records[0]).await;
    produce(&compressing_producer(&env.source, "none"), &topic, 1, &records[1]).await;
    let survivors: Vec<Vec<(i64, Record)>> = wait_for("the source compacted", Duration::from_secs(120), || {
        let survivors: Vec<Vec<(i64, Record)>> = (0..2).map(|p| read_partition(&env.source, &topic, p)).collect();
        survivors.iter().all(|records| records.len() < 1_200).then_some(survivors)
    })
    .await;

    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, PASSTHROUGH));
    let target_topic = format!("src.{topic}");
    wait_for("every surviving record on the target", Duration::from_secs(60), || {
        (0..2).all(|p| end_offset(&env.target, &target_topic, p) == survivors[p as usize].len() as i64).then_some(())
    })
    .await;
    for partition in 0..2 {
        let replicated: Vec<Record> =
            read_partition(&env.target, &target_topic, partition).into_iter().map(|(_, record)| record).collect();
        let expected: Vec<&Record> = survivors[partition as usize].iter().map(|(_, record)| record).collect();
        assert_eq!(replicated.len(), expected.len(), "{target_topic}[{partition}]");
        for (index, (got, want)) in replicated.iter().zip(expected).enumerate() {
            assert_eq!(got, want, "{target_topic}[{partition}] record {index}");
        }
    }
    assert_eq!(ferry.metric("ferry_task_failures_total", &[]), Some(0.0), "{}", ferry.logs());

    // The first surviving record after a hole, per partition.
    let after_hole: Vec<(i64, String)> = survivors
        .iter()
        .map(|records| {
            let at = records.windows(2).position(|pair| pair[1].0 > pair[0].0 + 1).expect("a hole") + 1;
            (records[at].0, records[at].1.id())
        })
        .collect();
    assert_a_group_translates_to_the_same_records(&env, state.path(), &flow, &topic, &after_hole).await;
}

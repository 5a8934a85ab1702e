//! A source topic deleted and created again under the same name is another topic (it has another topic id): ferry
//! drops the old topic's positions and sync points, replicates the new topic from its beginning, and counts the
//! records of the old topic it saw but never copied in `ferry_records_lost_total{reason="source_topic_recreated"}`.
//! Before topic ids, the old position was reused and the new topic's first records were skipped without a trace.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::common::*;

const PARTITIONS: i32 = 2;
/// Of 1 KB each: far more per partition than librdkafka fetches ahead of a task (about 2 MiB), so the old topics
/// are deleted with records ferry saw in fetch responses but never copied.
const OLD_RECORDS: u64 = 4_000;
const NEW_RECORDS: u64 = 30;

/// Whether the source cluster's metadata lists `topic`.
fn listed(bootstrap: &str, topic: &str) -> bool {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    metadata.topics().iter().any(|listed| listed.name() == topic)
}

/// Deletes `topics` and creates them again with the same partition count, each as soon as the cluster lets it.
async fn recreate(bootstrap: &str, topics: &[&str]) {
    let results = admin(bootstrap).delete_topics(topics, &AdminOptions::new()).await.unwrap();
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot delete {topic}: {code}"));
    }
    for topic in topics {
        wait_for("the deleted topic gone from the metadata", Duration::from_secs(30), || {
            (!listed(bootstrap, topic)).then_some(())
        })
        .await;
        create_topic(bootstrap, topic, PARTITIONS, &[]).await;
    }
}

/// The record ids a partition of the target holds, in order.
fn target_ids(env: &TestEnv, topic: &str, partition: i32) -> Vec<String> {
    read_partition(&env.target, &format!("src.{topic}"), partition).into_iter().map(|(_, record)| record.id()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_topic_deleted_and_recreated_is_replicated_from_its_beginning_and_the_loss_counted() {
    let env = test_env!();
    let base = unique("src-recreated");
    let (alo, eos) = (format!("{base}-alo"), format!("{base}-eos"));
    let (alo_flow, eos_flow) = (unique("srcr-alo"), unique("srcr-eos"));
    let state = tempfile::tempdir().unwrap();
    let producer = producer(&env.source);
    // The old topics carry generation 0 in their record ids, the new ones generation 1, so a record of one can
    // never pass for a record of the other.
    let records = |topic: &str, generation: u64, partition: i32, count: u64| -> Vec<Record> {
        (0..count)
            .map(|seq| {
                let mut record = Record::numbered(&format!("{topic}#{generation}"), partition, seq);
                record.value = Some(vec![b'v'; 1_000]);
                record
            })
            .collect()
    };
    for topic in [&alo, &eos] {
        create_topic(&env.source, topic, PARTITIONS, &[]).await;
        for partition in 0..PARTITIONS {
            produce(&producer, topic, partition, &records(topic, 0, partition, OLD_RECORDS)).await;
        }
    }
    // A slow link keeps ferry behind, so it has seen records of the old topics it has not copied when they go: at
    // 256 KiB/s for four partitions it cannot copy the 16 MB even if deleting the topics takes a minute.
    let second_flow = format!(
        "  - name: {eos_flow}\n    source: src\n    target: dst\n    topics: {{ include: ['{eos}'] }}\n{EXACTLY_ONCE}\
         throttles:\n  - {{ from: src, to: dst, rate: 256KiB/s }}\n"
    );
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &alo_flow, &alo, &second_flow));
    // Ferry can only count what it saw: the old topics go once every task has checkpointed a position that knows
    // the partition's end.
    wait_for("every task behind, with the source end in its checkpoint", Duration::from_secs(60), || {
        [&alo_flow, &eos_flow]
            .iter()
            .all(|flow| {
                let checkpoints = stored_checkpoints(state.path(), flow);
                checkpoints.len() == PARTITIONS as usize
                    && checkpoints.values().all(|checkpoint| {
                        checkpoint["source_end"].as_i64() == Some(OLD_RECORDS as i64)
                            && checkpoint["next_source_offset"].as_i64() < Some(OLD_RECORDS as i64)
                    })
            })
            .then_some(())
    })
    .await;

    recreate(&env.source, &[&alo, &eos]).await;
    for topic in [&alo, &eos] {
        for partition in 0..PARTITIONS {
            produce(&producer, topic, partition, &records(topic, 1, partition, NEW_RECORDS)).await;
        }
    }

    // Each target partition holds a prefix of the old topic's records, then every record of the new topic.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let copied_of_old = loop {
        match old_records_copied(&env, &[&alo, &eos], &eos, &records) {
            Ok(copied) => break copied,
            Err(state) => {
                assert!(std::time::Instant::now() < deadline, "the new topics not replicated within 120 s: {state}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };

    // The records of the old topics ferry saw and never copied are counted, exactly, per flow and topic.
    for ((flow, topic), delivery) in
        [(&alo_flow, &alo), (&eos_flow, &eos)].into_iter().zip(["at-least-once", "exactly-once"])
    {
        let never_copied: u64 =
            (0..PARTITIONS).map(|partition| OLD_RECORDS - copied_of_old[&(topic.clone(), partition)]).sum();
        assert!(never_copied > 0, "{topic}: the throttle let ferry copy everything; the test proves nothing");
        let counted = || {
            ferry.metric(
                "ferry_records_lost_total",
                &[("flow", flow), ("topic", topic), ("reason", "source_topic_recreated")],
            )
        };
        wait_for("the loss counted", Duration::from_secs(10), || (counted()? == never_copied as f64).then_some(()))
            .await;
        report_fault(
            "a source topic deleted and created again under a running ferry (the new topic replicated from its \
             beginning)",
            delivery,
            &format!(
                "{never_copied} of the old topic deleted before ferry copied them, counted exactly (reason \
                      source_topic_recreated)"
            ),
            0,
            Recovery::NoInterruption,
        );
    }
    let logs = ferry.logs();
    assert!(logs.contains("the source topic was deleted and created again"), "{logs}");
    // Nothing of the new topics was taken for a retention loss or skipped as an offset the old position covered.
    assert_eq!(
        ferry.metric("ferry_records_lost_total", &[("reason", "source_retention"), ("flow", &alo_flow)]),
        Some(0.0)
    );
    assert!(!logs.contains("before this task's position"), "a task paused on the old position:\n{logs}");
}

/// How many records of the old topic each target partition holds, once it holds a prefix of them followed by every
/// record of the new topic; otherwise what it holds so far.
fn old_records_copied(
    env: &TestEnv,
    topics: &[&String],
    exactly_once_topic: &str,
    records: &dyn Fn(&str, u64, i32, u64) -> Vec<Record>,
) -> Result<BTreeMap<(String, i32), u64>, String> {
    let mut copied_of_old = BTreeMap::new();
    for topic in topics {
        for partition in 0..PARTITIONS {
            let ids: Vec<String> = if topic.as_str() == exactly_once_topic {
                read_committed(&env.target, &format!("src.{topic}"), partition)
                    .0
                    .into_iter()
                    .map(|(_, record)| record.id())
                    .collect()
            } else {
                target_ids(env, topic, partition)
            };
            let new: Vec<String> = records(topic, 1, partition, NEW_RECORDS).iter().map(Record::id).collect();
            if !ids.ends_with(&new) {
                return Err(format!(
                    "{topic}[{partition}] holds {} records, the last {:?}",
                    ids.len(),
                    &ids[ids.len().saturating_sub(3)..]
                ));
            }
            let old = &ids[..ids.len() - new.len()];
            let mut distinct: Vec<&String> = Vec::new();
            for id in old {
                if !distinct.contains(&id) {
                    distinct.push(id);
                }
            }
            let expected: Vec<String> =
                records(topic, 0, partition, distinct.len() as u64).iter().map(Record::id).collect();
            assert_eq!(
                distinct,
                expected.iter().collect::<Vec<_>>(),
                "{topic}[{partition}]: old records reordered or foreign"
            );
            if topic.as_str() == exactly_once_topic {
                assert_eq!(old.len(), distinct.len(), "{topic}[{partition}]: exactly-once wrote an old record twice");
            }
            copied_of_old.insert((topic.to_string(), partition), distinct.len() as u64);
        }
    }
    Ok(copied_of_old)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_topic_recreated_while_ferry_is_stopped_is_replicated_from_its_beginning() {
    let env = test_env!();
    let topic = unique("recreated-stopped");
    let flow = unique("rec");
    let state = tempfile::tempdir().unwrap();
    let producer = producer(&env.source);
    create_topic(&env.source, &topic, 1, &[]).await;
    let records: Vec<Record> = (0..100).map(|seq| Record::numbered(&topic, 0, seq)).collect();
    produce(&producer, &topic, 0, &records).await;
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, ""));
    wait_for("the partition checkpointed at 100", Duration::from_secs(60), || {
        (stored_positions(state.path(), &flow).get(&(topic.clone(), 0)) == Some(&100)).then_some(())
    })
    .await;
    let (status, _, logs) = ferry.terminate(Duration::from_secs(30));
    assert!(status.success(), "{logs}");

    // Deleted and created again with 10 new records at offsets 0..9, all before the old position: read from the old
    // position they would all be skipped.
    let topic_ref = topic.as_str();
    let results = admin(&env.source).delete_topics(&[topic_ref], &AdminOptions::new()).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    wait_for("the topic gone", Duration::from_secs(30), || (!listed(&env.source, &topic)).then_some(())).await;
    create_topic(&env.source, &topic, 1, &[]).await;
    let new_records: Vec<Record> = (1_000..1_010).map(|seq| Record::numbered(&topic, 0, seq)).collect();
    produce(&producer, &topic, 0, &new_records).await;

    let ferry = Ferry::start_with(state.path().join("ferry.yaml"), free_port(), &[]);
    let expected: Vec<String> = records.iter().chain(&new_records).map(Record::id).collect();
    wait_for("the new topic replicated after the old one", Duration::from_secs(60), || {
        (target_ids(&env, &topic, 0) == expected).then_some(())
    })
    .await;
    wait_for("the new topic checkpointed", Duration::from_secs(30), || {
        (stored_positions(state.path(), &flow).get(&(topic.clone(), 0)) == Some(&10)).then_some(())
    })
    .await;
    let logs = ferry.logs();
    assert!(logs.contains("the source topic was deleted and created again"), "{logs}");
    // Everything of the old topic was copied before it went: nothing to count.
    let lost = ferry.metric("ferry_records_lost_total", &[("flow", &flow), ("topic", &topic)]);
    assert_eq!(lost, Some(0.0), "nothing of the old topic was lost");
    assert_eq!(ferry.metric("ferry_tasks", &[("flow", &flow), ("state", "paused")]), Some(0.0));
}

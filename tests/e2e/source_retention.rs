//! Loss the source causes is never silent: records the source deletes (retention, `DeleteRecords`) before ferry
//! copied them are counted in `ferry_records_lost_total{reason="source_retention"}` and logged with their range,
//! ferry reads on from the log start, and translation maps a group positioned among them to the first record after
//! them. Records deleted before ferry ever replicated a partition were never ferry's to lose: not counted.

use std::time::Duration;

use rdkafka::admin::AdminOptions;
use rdkafka::{Offset, TopicPartitionList};

use crate::common::*;

/// Deletes the records of partition 0 of `topic` before `offset` (what retention does to old segments).
async fn delete_records_before(bootstrap: &str, topic: &str, offset: i64) {
    let mut cut = TopicPartitionList::new();
    cut.add_partition_offset(topic, 0, Offset::Offset(offset)).unwrap();
    let deleted = admin(bootstrap).delete_records(&cut, &AdminOptions::new()).await.unwrap();
    assert!(deleted.elements().iter().all(|element| element.error().is_ok()), "DeleteRecords failed: {deleted:?}");
}

fn ids(records: &[(i64, Record)]) -> Vec<String> {
    records.iter().map(|(_, record)| record.id()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_by_the_source_before_ferry_copied_them_are_counted_and_translation_knows_the_gap() {
    let env = test_env!();
    let base = unique("ret");
    let (lagging, fresh) = (format!("{base}-lagging"), format!("{base}-fresh"));
    let flow = unique("ret");
    let state = tempfile::tempdir().unwrap();
    let producer = producer(&env.source);
    for topic in [&lagging, &fresh] {
        create_topic(&env.source, topic, 1, &[]).await;
        let records: Vec<Record> = (0..100).map(|seq| Record::numbered(topic, 0, seq)).collect();
        produce(&producer, topic, 0, &records).await;
    }
    // Deleted before ferry ever read the partition: never ferry's to lose.
    delete_records_before(&env.source, &fresh, 40).await;

    let config = config(&env, state.path(), &flow, &format!("{base}-.*"), "");
    let ferry = Ferry::start(state.path(), &config);
    wait_for("both partitions checkpointed at 100", Duration::from_secs(60), || {
        let positions = stored_positions(state.path(), &flow);
        [&lagging, &fresh].iter().all(|topic| positions.get(&((*topic).clone(), 0)) == Some(&100)).then_some(())
    })
    .await;
    let (status, _, logs) = ferry.terminate(Duration::from_secs(30));
    assert!(status.success(), "{logs}");

    // While ferry is down, 200 more records arrive and retention deletes up to offset 250: 150 of them are gone
    // before ferry could copy them.
    let more: Vec<Record> = (100..300).map(|seq| Record::numbered(&lagging, 0, seq)).collect();
    produce(&producer, &lagging, 0, &more).await;
    delete_records_before(&env.source, &lagging, 250).await;

    let ferry = Ferry::start_with(state.path().join("ferry.yaml"), free_port(), &[]);
    wait_for("the lagging partition checkpointed at 300", Duration::from_secs(60), || {
        (stored_positions(state.path(), &flow).get(&(lagging.clone(), 0)) == Some(&300)).then_some(())
    })
    .await;
    let lost = |topic: &str| {
        ferry.metric("ferry_records_lost_total", &[("flow", &flow), ("topic", topic), ("reason", "source_retention")])
    };
    wait_for("the loss counted", Duration::from_secs(10), || (lost(&lagging)? == 150.0).then_some(())).await;
    assert_eq!(lost(&fresh), Some(0.0), "records deleted before ferry replicated the partition are not ferry's loss");
    let logs = ferry.logs();
    assert!(
        logs.contains("first_lost=100") && logs.contains("last_lost=249") && logs.contains(&lagging),
        "the log names the topic and the lost range:\n{logs}"
    );

    // The target holds what the source held when ferry read it: nothing else is missing, nothing is doubled.
    let expected: Vec<String> = (0..100).chain(250..300).map(|seq| Record::numbered(&lagging, 0, seq).id()).collect();
    assert_eq!(ids(&read_partition(&env.target, &format!("src.{lagging}"), 0)), expected);
    let fresh_expected: Vec<String> = (40..100).map(|seq| Record::numbered(&fresh, 0, seq).id()).collect();
    assert_eq!(ids(&read_partition(&env.target, &format!("src.{fresh}"), 0)), fresh_expected);

    // A group that had read up to offset 120 (inside the deleted range) resumes on the target at the first record
    // after the gap: source offset 250, which landed on target offset 100.
    let group = unique("inside-the-gap");
    commit(&env.source, &group, &lagging, &[120]);
    let rows = translate_json(&state.path().join("ferry.yaml"), &flow, &group);
    let row = rows.iter().find(|row| row["topic"] == lagging.as_str()).unwrap();
    assert_eq!(row["target_offset"], 100, "{row}");
    assert_eq!(row["may_redeliver"], 0, "{row}");
    let note = row["note"].as_str().unwrap_or_default();
    assert!(note.contains("100..=249") && note.contains("130 from this offset"), "the gap is reported: {row}");
    report_fault(
        "the source deleted records past ferry's checkpoint while ferry was stopped (DeleteRecords)",
        "at-least-once",
        "150 deleted by the source, counted exactly (reason source_retention)",
        0,
        Recovery::NoInterruption,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_overtaking_a_running_lagging_task_is_counted_exactly() {
    let env = test_env!();
    let topic = unique("overtaken");
    let flow = unique("ovt");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[]).await;
    // 10,000 records of about 1 KiB: a 500 KiB/s throttle keeps ferry about 20 s behind, far more than librdkafka
    // fetches ahead of a task (a few MiB), so deleting up to offset 8,000 takes records ferry has not fetched.
    let records: Vec<Record> = (0..10_000)
        .map(|seq| {
            let mut record = Record::numbered(&topic, 0, seq);
            record.value = Some(vec![b'v'; 1_000]);
            record
        })
        .collect();
    produce(&producer(&env.source), &topic, 0, &records).await;
    let throttle = "throttles:\n  - { from: src, to: dst, rate: 500KiB/s }\n";
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, throttle));
    let target_topic = format!("src.{topic}");
    wait_for("ferry replicating, far behind", Duration::from_secs(60), || {
        (end_offset(&env.target, &target_topic, 0) >= 20).then_some(())
    })
    .await;
    // Retention passes the running task while it is behind.
    delete_records_before(&env.source, &topic, 8_000).await;
    wait_for("the rest replicated", Duration::from_secs(120), || {
        (stored_positions(state.path(), &flow).get(&(topic.clone(), 0)) == Some(&10_000)).then_some(())
    })
    .await;
    let lost = ferry
        .metric("ferry_records_lost_total", &[("flow", &flow), ("topic", &topic), ("reason", "source_retention")])
        .unwrap() as u64;
    let replicated = ids(&read_partition(&env.target, &target_topic, 0));
    // Every record is either on the target, once and in order, or counted as lost: the lost ones are exactly the
    // run just before offset 8,000.
    assert!(lost > 0, "the loss was not counted; {} records replicated", replicated.len());
    let copied_before_the_gap = 8_000 - lost;
    let expected: Vec<String> =
        (0..copied_before_the_gap).chain(8_000..10_000).map(|seq| Record::numbered(&topic, 0, seq).id()).collect();
    assert_eq!(replicated, expected, "{lost} counted as lost");
    report_fault(
        "source retention overtook a running, lagging task",
        "at-least-once",
        &format!("{lost} deleted by the source, counted exactly (reason source_retention)"),
        0,
        Recovery::NoInterruption,
    );
}

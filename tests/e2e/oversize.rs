//! A record the target refuses pauses its task before the position passes it: nothing after it is checkpointed,
//! and once the limit is lifted the record and everything after
//! it arrive, with the records written ahead of it counted as duplicates.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_pauses_the_task_and_is_never_skipped() {
    let env = test_env!();
    let topic = unique("oversize");
    let flow = unique("ovs");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[("max.message.bytes", "2000000")]).await;
    let mut records: Vec<Record> = (0..21).map(|seq| Record::numbered(&topic, 0, seq)).collect();
    records[10].value = Some(vec![b'x'; 300_000]);
    produce(&producer(&env.source), &topic, 0, &records).await;

    // The target producer's own limit stands in for a target that refuses the record.
    let limited = config(&env, state.path(), &flow, &topic, "")
        .replace("  dst:\n", "  dst:\n    client: { message.max.bytes: \"100000\" }\n");
    let ferry = Ferry::start(state.path(), &limited);
    let target_topic = format!("src.{topic}");
    stop_after_refusal_of_offset_10(ferry, &flow).await;
    assert_eq!(
        stored_positions(state.path(), &flow).get(&(topic.clone(), 0)),
        Some(&10),
        "{}",
        std::fs::read_to_string(state.path().join(format!("{flow}.json"))).unwrap_or_default()
    );

    // Records behind the refused one were in flight when it was refused, so some landed ahead of it: they are
    // duplicates-to-be, and the restarted member counts them. Counted before it starts, which writes at once.
    let duplicates = end_offset(&env.target, &target_topic, 0) - 10;
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, ""));
    wait_for_all_21_records(&env.target, &target_topic, &records, duplicates).await;
    assert_eq!(ferry.metric("ferry_duplicates_total", &[("flow", &flow)]), Some(duplicates as f64));
    report_fault(
        "a record larger than the target accepts (the task pauses before it, naming its offset; duplicates once \
         the target accepts it)",
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::Operator,
    );
}

/// A record the target broker refuses (its topic allows no records older than an hour; the source does) while
/// the records after it, each in a batch of its own, are written and acknowledged: the position and the
/// checkpoint stay before the refused record, and once the limit is lifted it and everything after it arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_after_a_record_the_target_broker_refused_do_not_move_the_position() {
    let env = test_env!();
    let topic = unique("refused");
    let flow = unique("ref");
    let state = tempfile::tempdir().unwrap();
    let target_topic = format!("src.{topic}");
    create_topic(&env.source, &topic, 1, &[]).await;
    // A target-only config, which topic sync leaves alone (it copies only configs that describe the data).
    create_topic(&env.target, &target_topic, 1, &[("message.timestamp.before.max.ms", "3600000")]).await;
    let mut records: Vec<Record> = (0..21).map(|seq| Record::numbered(&topic, 0, seq)).collect();
    let two_days_ago = match records[10].timestamp {
        rdkafka::Timestamp::CreateTime(millis) => millis - 2 * 24 * 3600 * 1000,
        other => panic!("numbered records carry a create time, not {other:?}"),
    };
    records[10].timestamp = rdkafka::Timestamp::CreateTime(two_days_ago);
    produce(&producer(&env.source), &topic, 0, &records).await;

    // One record per batch, so the target refuses record 10 alone and accepts the records behind it.
    let one_per_batch = config(&env, state.path(), &flow, &topic, "")
        .replace("  dst:\n", "  dst:\n    client: { batch.num.messages: \"1\" }\n");
    let ferry = Ferry::start(state.path(), &one_per_batch);
    let logs = stop_after_refusal_of_offset_10(ferry, &flow).await;
    let written_after_refusal = end_offset(&env.target, &target_topic, 0) - 10;
    assert!(written_after_refusal > 0, "records behind the refused one were written and acknowledged:\n{logs}");
    assert_eq!(
        stored_positions(state.path(), &flow).get(&(topic.clone(), 0)),
        Some(&10),
        "the checkpoint stays before the refused record although {written_after_refusal} later ones were acknowledged"
    );

    let lifted = AlterConfig::new(ResourceSpecifier::Topic(&target_topic))
        .set("message.timestamp.before.max.ms", "9223372036854775807");
    for result in admin(&env.target).alter_configs([&lifted], &AdminOptions::new()).await.expect("alter configs") {
        result.expect("limit lifted");
    }
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, ""));
    wait_for_all_21_records(&env.target, &target_topic, &records, written_after_refusal).await;
    let (status, _, logs) = ferry.terminate(Duration::from_secs(30));
    assert!(status.success(), "{logs}");
}

/// Waits until the flow's task paused at source offset 10 and was retried (cautiously) from its checkpoint, then
/// stops ferry; its logs.
async fn stop_after_refusal_of_offset_10(ferry: Ferry, flow: &str) -> String {
    wait_for("the task paused at the refused record", Duration::from_secs(60), || {
        let paused = ferry.metric("ferry_tasks", &[("flow", flow), ("state", "paused")])?;
        (paused == 1.0).then_some(())
    })
    .await;
    assert!(ferry.logs().contains("refused source offset 10"), "the log names the refused offset:\n{}", ferry.logs());
    wait_for("a retry from the checkpoint", Duration::from_secs(30), || {
        (ferry.metric("ferry_task_failures_total", &[("flow", flow)])? >= 2.0).then_some(())
    })
    .await;
    let (status, _, logs) = ferry.terminate(Duration::from_secs(30));
    assert!(status.success(), "{logs}");
    logs
}

/// Waits until the target holds the 21 records plus `written_early` records written ahead of the refused one, and
/// checks that records 0-9 come first and the refused record and everything after it come last, in order.
async fn wait_for_all_21_records(target: &str, target_topic: &str, records: &[Record], written_early: i64) {
    wait_for("every record after the limit was lifted", Duration::from_secs(60), || {
        (end_offset(target, target_topic, 0) == 21 + written_early).then_some(())
    })
    .await;
    let replicated: Vec<Record> = read_partition(target, target_topic, 0).into_iter().map(|(_, r)| r).collect();
    assert_eq!(replicated[..10], records[..10]);
    assert_eq!(replicated[replicated.len() - 11..], records[10..], "the refused record and all after it, in order");
}

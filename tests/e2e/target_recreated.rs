//! The target topic is deleted under a running ferry (and recreated by its topic sync): the task notices that the
//! target partition ends before its position and pauses with the reason, instead of writing after a gap or
//! restarting in a loop.

use std::time::Duration;

use rdkafka::admin::AdminOptions;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_topic_recreated_under_ferry_pauses_the_task_with_the_reason() {
    let env = test_env!();
    let (topic, flow) = (unique("tgt-recreated"), unique("tgtr"));
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[]).await;
    let producer = producer(&env.source);
    let records: Vec<Record> = (0..300).map(|seq| Record::numbered(&topic, 0, seq)).collect();
    produce(&producer, &topic, 0, &records[..200]).await;
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, ""));
    let target_topic = format!("src.{topic}");
    wait_for("the first records checkpointed", Duration::from_secs(60), || {
        (stored_positions(state.path(), &flow).get(&(topic.clone(), 0)) == Some(&200)).then_some(())
    })
    .await;

    admin(&env.target).delete_topics(&[&target_topic], &AdminOptions::new()).await.unwrap();
    wait_for("the target topic recreated by the topic sync", Duration::from_secs(60), || {
        ferry.logs().matches(&format!("create topic {target_topic}")).nth(1).map(|_| ())
    })
    .await;
    produce(&producer, &topic, 0, &records[200..]).await;
    let status = wait_for("the task paused with the reason", Duration::from_secs(60), || {
        let (_, body) = ferry.get("/status")?;
        body.contains("was deleted and recreated").then_some(body)
    })
    .await;
    assert!(status.contains(&target_topic), "{status}");
    // Paused, not restarting in a loop: retries back off (doubling from 1 s), and the position stays where the old
    // topic ended.
    let failures = || ferry.metric("ferry_task_failures_total", &[("flow", &flow)]).unwrap_or(0.0);
    let before = failures();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(failures() - before <= 2.0, "{} failures in 4 s: a restart loop\n{}", failures() - before, ferry.logs());
    assert_eq!(stored_positions(state.path(), &flow).get(&(topic.clone(), 0)), Some(&200));
    report_fault(
        "the target topic deleted and created again under ferry (the task pauses, naming the topic)",
        "at-least-once",
        "0",
        0,
        Recovery::Operator,
    );
}

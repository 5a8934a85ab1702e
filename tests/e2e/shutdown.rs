//! SIGTERM: stop fetching, flush, write the final checkpoint, exit 0 in time.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_the_final_checkpoint_and_exits_zero() {
    let env = test_env!();
    let topic = unique("term");
    let flow = unique("trm");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 3, &[]).await;
    let producer = producer(&env.source);
    for partition in 0..3 {
        let records: Vec<Record> = (0..2_000).map(|seq| Record::numbered(&topic, partition, seq)).collect();
        produce(&producer, &topic, partition, &records).await;
    }
    // A long interval: only the final checkpoint can have written these positions.
    let config_text = config(&env, state.path(), &flow, &topic, "").replace("interval: 1s", "interval: 1h");
    std::fs::write(state.path().join("ferry.yaml"), &config_text).unwrap();
    let ferry = Ferry::start_with(state.path().join("ferry.yaml"), free_port(), &[("FERRY_LOG_FORMAT", "json")]);
    let target_topic = format!("src.{topic}");
    wait_for("records replicated", Duration::from_secs(60), || {
        ((0..3).all(|p| end_offset(&env.target, &target_topic, p) == 2_000)).then_some(())
    })
    .await;
    let (status, took, logs) = ferry.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}; logs:\n{logs}");
    assert!(took < Duration::from_secs(30));
    for line in logs.lines().filter(|line| !line.trim().is_empty()) {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed.get("level").is_some() && parsed.get("message").is_some(), "{line}");
    }
    assert!(logs.contains("final checkpoint written"), "{logs}");
    let positions = stored_positions(state.path(), &flow);
    for partition in 0..3 {
        assert_eq!(
            positions.get(&(topic.clone(), partition)),
            Some(&2_000),
            "final checkpoint of partition {partition}"
        );
    }
}

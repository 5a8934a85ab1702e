//! Continuous group offset sync: source groups' offsets appear, translated, in the inactive target groups; a target
//! group is not moved backwards unless the source group rewound; with the source cluster gone, failover uses the
//! last synced offsets and says how old they are.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_synced_forward_only_and_survive_the_loss_of_the_source() {
    let env = test_env!();
    let source = KafkaNode::new(&env);
    source.start();
    let topic = unique("groups");
    let flow = unique("gs");
    let prefix = unique("app");
    let state = tempfile::tempdir().unwrap();
    create_topic(&source.bootstrap(), &topic, 2, &[]).await;
    let producer = producer(&source.bootstrap());
    for partition in 0..2 {
        let records: Vec<Record> = (0..100).map(|seq| Record::numbered(&topic, partition, seq)).collect();
        produce(&producer, &topic, partition, &records).await;
    }
    let sync = format!("    sync_group_offsets: {{ enabled: true, include: ['{prefix}-.*'], interval: 1s }}\n");
    let config_text = config(&env, state.path(), &flow, &topic, &sync).replace(&env.source, &source.bootstrap());
    let ferry = Ferry::start(state.path(), &config_text);
    let target_topic = format!("src.{topic}");
    wait_for("replication", Duration::from_secs(60), || {
        ((0..2).all(|p| end_offset(&env.target, &target_topic, p) == 100)).then_some(())
    })
    .await;

    let group = format!("{prefix}-billing");
    commit(&source.bootstrap(), &group, &topic, &[40, 70]);
    wait_for("the group synced to the target", Duration::from_secs(30), || {
        (committed(&env.target, &group, &target_topic, 2) == [Some(40), Some(70)]).then_some(())
    })
    .await;
    let ignored = unique("other");
    commit(&source.bootstrap(), &ignored, &topic, &[1, 1]);

    // A consumer on the target moved the group further, then stopped: the sync must not pull it back.
    let moved_at = ferry::clock::now_ms();
    commit(&env.target, &group, &target_topic, &[90, 70]);
    // A sync round stamps its time before it reads the target's offsets: one stamped later has seen the move.
    wait_for("a sync round after the move on the target", Duration::from_secs(30), || {
        (synced_at_ms(state.path(), &flow, &group)? > moved_at + 1).then_some(())
    })
    .await;
    assert_eq!(committed(&env.target, &group, &target_topic, 2), [Some(90), Some(70)], "moved backwards");
    assert_eq!(committed(&env.target, &ignored, &target_topic, 2), [None, None], "a group outside the include list");
    // The source group itself rewinds: that is followed.
    commit(&source.bootstrap(), &group, &topic, &[10, 70]);
    wait_for("the rewind synced", Duration::from_secs(30), || {
        (committed(&env.target, &group, &target_topic, 2) == [Some(10), Some(70)]).then_some(())
    })
    .await;

    // The source region is lost: failover uses the synced offsets and says how old they are.
    let failed_over = format!("{prefix}-reports");
    commit(&source.bootstrap(), &failed_over, &topic, &[55, 66]);
    wait_for("the second group synced", Duration::from_secs(30), || {
        (committed(&env.target, &failed_over, &target_topic, 2) == [Some(55), Some(66)]).then_some(())
    })
    .await;
    // The rounds show on /metrics: groups synced and the time of the last completed round; without the source the
    // rounds fail, are counted, and the time stays (FerryGroupSyncStalled alerts on its age).
    let metric = |name: &str| ferry.metric(name, &[("flow", &flow)]).unwrap_or(0.0);
    assert!(metric("ferry_groups_synced_total") >= 2.0, "{}", metric("ferry_groups_synced_total"));
    assert!(metric("ferry_group_sync_last_success_timestamp_seconds") >= (moved_at / 1000) as f64);
    assert_eq!(metric("ferry_group_sync_failures_total"), 0.0);
    source.stop();
    wait_for("sync rounds failing without the source, counted", Duration::from_secs(90), || {
        (metric("ferry_group_sync_failures_total") >= 1.0).then_some(())
    })
    .await;
    let stalled_at = metric("ferry_group_sync_last_success_timestamp_seconds");
    wait_for("another failed round", Duration::from_secs(90), || {
        (metric("ferry_group_sync_failures_total") >= 2.0).then_some(())
    })
    .await;
    assert_eq!(metric("ferry_group_sync_last_success_timestamp_seconds"), stalled_at, "a failed round counted as done");
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["failover", "--dry-run", "--config"])
        .arg(state.path().join("ferry.yaml"))
        .args(["--flow", &flow, "--group", &failed_over])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("source cluster unreachable: using the group offsets ferry synced"), "{stdout}");
    let rows: Vec<Vec<&str>> =
        stdout.lines().filter(|line| line.starts_with(&topic)).map(|line| line.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    // TOPIC PARTITION SOURCE_OFFSET TARGET_TOPIC TARGET_OFFSET ...
    assert_eq!([rows[0][2], rows[0][4]], ["55", "55"], "{stdout}");
    assert_eq!([rows[1][2], rows[1][4]], ["66", "66"], "{stdout}");
}

/// When the file store's group sync last stored `group`'s offsets.
fn synced_at_ms(state: &std::path::Path, flow: &str, group: &str) -> Option<i64> {
    let bytes = std::fs::read(state.join("groups").join(format!("{flow}.json"))).ok()?;
    let groups: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    groups[group]["synced_at_ms"].as_i64()
}

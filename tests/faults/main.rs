//! Broker faults on three-broker clusters (`scripts/dev-env up --brokers 3`): a partition leader killed with SIGKILL
//! mid-stream and started again 20 s later, on the target and on the source, under at-least-once (per record and
//! batch pass-through) and exactly-once.
//!
//! Its own test binary, left out of a plain `cargo test` (`test = false` in Cargo.toml): it needs the three-broker
//! env, which `scripts/test` starts and then runs `cargo test --test faults`. The faults share that env, so they
//! take turns.

#[macro_use]
#[path = "../support/dev_env.rs"]
mod dev_env;
// The end-to-end harness; this binary uses only part of it.
#[allow(dead_code)]
#[macro_use]
#[path = "../e2e/common.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::common::*;

/// One fault at a time: a second leader killed at once would leave partitions below `min.insync.replicas`.
static ONE_FAULT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITIONS: i32 = 3;
const PER_PARTITION: u64 = 6_000;

/// Runs `scripts/dev-env ARGS` on the three-broker env.
fn dev_env(args: &[&str]) {
    let status = Command::new(repo_root().join("scripts/dev-env")).args(args).status().unwrap();
    assert!(status.success(), "scripts/dev-env {args:?} failed");
}

/// The node leading `topic[partition]`.
fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    metadata.topics()[0].partitions().iter().find(|p| p.id() == partition).expect("the partition").leader()
}

/// Replicates an at-least-once, a pass-through and an exactly-once flow while the leader of partition 0 on `cluster` (`source` or
/// `target`) is killed and started again 20 s later.
async fn leader_killed_mid_stream(cluster: &str) {
    let env = test_env!();
    let [brokers] = dev_env_vars!("FERRY_TEST_BROKERS");
    assert_eq!(brokers, "3", "these faults need `scripts/dev-env up --brokers 3`");
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let (alo, eos) = (unique(&format!("{cluster}-kill-alo")), unique(&format!("{cluster}-kill-eos")));
    let pt = unique(&format!("{cluster}-kill-pt"));
    let (alo_flow, eos_flow, pt_flow) = (unique("alo"), unique("eos"), unique("pt"));
    for topic in [&alo, &eos, &pt] {
        create_topic(&env.source, topic, PARTITIONS, &[]).await;
    }
    let state = tempfile::tempdir().unwrap();
    let second_flow = format!(
        "  - name: {eos_flow}\n    source: src\n    target: dst\n    topics: {{ include: ['{eos}'] }}\n{EXACTLY_ONCE}\
         \n  - name: {pt_flow}\n    source: src\n    target: dst\n    topics: {{ include: ['{pt}'] }}\n    passthrough: true\n"
    );
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &alo_flow, &alo, &second_flow));
    let numbered = |topic: &str| -> Vec<Vec<Record>> {
        (0..PARTITIONS).map(|p| (0..PER_PARTITION).map(|seq| Record::numbered(topic, p, seq)).collect()).collect()
    };
    let (alo_records, eos_records, pt_records) = (numbered(&alo), numbered(&eos), numbered(&pt));
    let producer = producer(&env.source);
    let feeders = [
        feed_slowly(producer.clone(), alo.clone(), alo_records.clone(), 60, Duration::from_millis(500)),
        feed_slowly(producer.clone(), eos.clone(), eos_records.clone(), 60, Duration::from_millis(500)),
        feed_slowly(producer.clone(), pt.clone(), pt_records.clone(), 60, Duration::from_millis(500)),
    ];
    wait_for("both flows replicating", Duration::from_secs(90), || {
        [&alo, &eos, &pt].iter().all(|topic| end_offset(&env.target, &format!("src.{topic}"), 0) > 200).then_some(())
    })
    .await;

    let (bootstrap, topic) = match cluster {
        "source" => (env.source.clone(), alo.clone()),
        _ => (env.target.clone(), format!("src.{alo}")),
    };
    let leader = leader_of(&bootstrap, &topic, 0).to_string();
    dev_env(&["kill", cluster, &leader]);
    tokio::time::sleep(Duration::from_secs(20)).await;
    dev_env(&["start", cluster, &leader]);
    // Recovered: the target holds as many records as the source did when the broker came back (for exactly-once a
    // little early: commit markers count among the target's offsets).
    let restarted = Instant::now();
    let total =
        |bootstrap: &str, topic: &str| -> i64 { (0..PARTITIONS).map(|p| end_offset(bootstrap, topic, p)).sum() };
    let marks = [&alo, &eos, &pt].map(|topic| (format!("src.{topic}"), total(&env.source, topic)));
    let mut recovered: [Option<Duration>; 3] = [None, None, None];
    wait_for("both flows caught up with the source as it was at the restart", Duration::from_secs(180), || {
        for ((target_topic, mark), recovered) in marks.iter().zip(recovered.iter_mut()) {
            if recovered.is_none() && total(&env.target, target_topic) >= *mark {
                *recovered = Some(restarted.elapsed());
            }
        }
        recovered.iter().all(Option::is_some).then_some(())
    })
    .await;
    let [alo_recovered, eos_recovered, pt_recovered] = recovered.map(|after| after.expect("waited for"));
    for feeder in feeders {
        feeder.await.unwrap();
    }

    let duplicates = wait_at_least_once(&ferry, &alo_flow, &env.target, &format!("src.{alo}"), &alo_records).await;
    let pt_duplicates = wait_at_least_once(&ferry, &pt_flow, &env.target, &format!("src.{pt}"), &pt_records).await;
    assert_eq!(ferry.metric("ferry_records_lost_total", &[("flow", &pt_flow)]).unwrap_or(0.0), 0.0);
    wait_exactly_once(&env.target, &format!("src.{eos}"), &eos_records, Duration::from_secs(180)).await;
    assert_eq!(ferry.metric("ferry_records_lost_total", &[("flow", &alo_flow)]).unwrap_or(0.0), 0.0);
    let fault = format!("{cluster} partition leader killed (SIGKILL) mid-stream, restarted 20 s later (3 brokers)");
    report_fault(&fault, "at-least-once", "0", duplicates as u64, Recovery::After(alo_recovered));
    report_fault(&fault, "exactly-once", "0", 0, Recovery::After(eos_recovered));
    report_fault(&fault, "at-least-once, pass-through", "0", pt_duplicates as u64, Recovery::After(pt_recovered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_partition_leader_killed_mid_stream_loses_nothing_and_exactly_once_holds() {
    leader_killed_mid_stream("target").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_partition_leader_killed_mid_stream_loses_nothing_and_exactly_once_holds() {
    leader_killed_mid_stream("source").await;
}

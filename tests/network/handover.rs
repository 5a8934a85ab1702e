//! A partition handed over to another member while the target does not answer the old owner: the old owner keeps
//! the partition until its producer has resolved the records it holds for it, so none of them reaches the target
//! behind the new owner's back (after the new owner's records, uncounted). Before, the old owner let go at its drain
//! timeout and its producer delivered the leftovers whenever the target answered again.

use std::time::Duration;

use crate::common::*;
use crate::fleet_support::*;
use crate::kafka_behind_proxy::KafkaBehindProxy;
use crate::toxiproxy::{Toxic, Toxiproxy};
use crate::*;

/// Longer than a member's drain timeout (20 s) plus the release's margin, so the old behaviour would have let go.
const STALL_ACROSS_HANDOVER: Duration = Duration::from_secs(35);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_to_another_member_only_once_its_records_are_acknowledged() {
    let env = test_env!();
    let etcd = etcd_endpoint!();
    let toxiproxy = Toxiproxy::start();
    // The target: member A reaches it through the proxy, member B and the test directly.
    let node = KafkaBehindProxy::start(&env, &toxiproxy, "target");
    let (topic, flow, prefix) = (unique("handover"), unique("handover"), format!("/{}", unique("ferry-handover")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let with_target = |target: &str| TestEnv {
        source: env.source.clone(),
        target: target.to_owned(),
        kafka_lib: env.kafka_lib.clone(),
    };
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a =
        Ferry::start(state_a.path(), &fleet_config(&with_target(node.via_proxy()), &etcd, &prefix, &flow, &topic, ""));
    let records = numbered(&topic);
    let feeder = feed_slowly(producer(&env.source), topic.clone(), records.clone(), CHUNKS, PAUSE);
    let target_topic = format!("src.{topic}");
    wait_for("member A replicating every partition", Duration::from_secs(90), || {
        (owned(&a) == Some(i64::from(PARTITIONS)) && total_end_offset(&node.direct(), &target_topic) > 300)
            .then_some(())
    })
    .await;

    note("target stalled for member A");
    node.proxy.add_both_ways("stall", Toxic::Stall);
    wait_for("member A holding records the target has not acknowledged", Duration::from_secs(30), || {
        (total_end_offset(&env.source, &topic) - total_end_offset(&node.direct(), &target_topic) > 200).then_some(())
    })
    .await;
    let b =
        Ferry::start(state_b.path(), &fleet_config(&with_target(&node.direct()), &etcd, &prefix, &flow, &topic, ""));
    note("member B started");
    tokio::time::sleep(STALL_ACROSS_HANDOVER).await;
    assert_eq!(owned(&b), Some(0), "a partition moved while its records were still in member A's producer");
    assert!(
        a.logs().contains("still waiting for the target to acknowledge the task's last records"),
        "member A did not say why it keeps the partitions:\n{}",
        a.logs()
    );
    node.proxy.remove_both_ways("stall");
    note("stall lifted");
    let lifted = std::time::Instant::now();

    wait_balanced(
        "the partitions shared once member A's records are acknowledged",
        &[&a, &b],
        i64::from(PARTITIONS),
        RECOVERY,
    )
    .await;
    feeder.await.unwrap();
    let target_env = with_target(&node.direct());
    wait_replicated(&target_env, &topic, PARTITIONS, Duration::from_secs(120)).await;
    let duplicates = assert_nothing_lost(&target_env, &topic, PARTITIONS);
    let counted: f64 =
        [&a, &b].iter().map(|member| member.metric("ferry_duplicates_total", &[("flow", &flow)]).unwrap_or(0.0)).sum();
    assert_eq!(duplicates, counted as usize, "duplicates on the target must be the ones counted");
    report_fault(
        "a member joins while the target stalls for the member that holds the partitions (hand-over waits for the \
         records in flight)",
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::After(lifted.elapsed()),
    );
}

/// A member stopped (SIGTERM) while the target does not answer purges what its producer still holds before it writes
/// its final checkpoint, and exits within its drain timeout; the next run replicates the purged records, counting
/// any that reached the target anyway as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_while_the_target_stalls_purges_its_leftovers_and_exits() {
    let env = test_env!();
    let toxiproxy = Toxiproxy::start();
    let node = KafkaBehindProxy::start(&env, &toxiproxy, "target");
    let (topic, flow) = (unique("leftovers"), unique("leftovers"));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let via_proxy =
        TestEnv { source: env.source.clone(), target: node.via_proxy().to_owned(), kafka_lib: env.kafka_lib.clone() };
    let state = tempfile::tempdir().unwrap();
    let ferry = Ferry::start(state.path(), &config(&via_proxy, state.path(), &flow, &topic, ""));
    let records = numbered(&topic);
    let feeder = feed_slowly(producer(&env.source), topic.clone(), records.clone(), CHUNKS / 4, PAUSE / 4);
    let target_topic = format!("src.{topic}");
    wait_for("replicating", Duration::from_secs(90), || {
        (total_end_offset(&node.direct(), &target_topic) > 300).then_some(())
    })
    .await;
    node.proxy.add_both_ways("stall", Toxic::Stall);
    note("target stalled");
    wait_for("records the target has not acknowledged", Duration::from_secs(30), || {
        (total_end_offset(&env.source, &topic) - total_end_offset(&node.direct(), &target_topic) > 200).then_some(())
    })
    .await;
    let (status, took, logs) = ferry.terminate(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}:\n{logs}");
    assert!(took < Duration::from_secs(35), "took {took:?} to stop:\n{logs}");
    assert!(logs.contains("were purged"), "no purge reported:\n{logs}");
    let checkpoint_order = logs.find("were purged").unwrap() < logs.find("final checkpoint written").unwrap_or(0);
    assert!(checkpoint_order, "the purge must come before the final checkpoint:\n{logs}");
    node.proxy.remove_both_ways("stall");
    note("stall lifted");

    feeder.await.unwrap();
    let ferry = Ferry::start_with(state.path().join("ferry.yaml"), free_port(), &[]);
    wait_at_least_once(&ferry, &flow, &node.direct(), &target_topic, &records).await;
}

//! Faults between ferry and one Kafka cluster: the cluster is a node of the test's own behind a proxy
//! ([`KafkaBehindProxy`]), the other cluster the dev env's, and the test feeds and reads both directly.

use std::time::Duration;

use crate::common::*;
use crate::kafka_behind_proxy::KafkaBehindProxy;
use crate::toxiproxy::{Stream, Toxic, Toxiproxy};
use crate::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

/// Replicates a topic at 100 ms added latency (responses delayed: +100 ms a round trip) between ferry and the
/// `side` cluster, while that link suffers rounds of connection resets and then a 30 s stall.
async fn resets_and_a_stall_under_latency(side: Side) {
    let env = test_env!();
    let toxiproxy = Toxiproxy::start();
    let node = KafkaBehindProxy::start(&env, &toxiproxy, "kafka");
    node.proxy.add("latency", LATENCY, Stream::Downstream);
    let (ferry_env, source, target, faulty) = match side {
        Side::Source => (
            TestEnv {
                source: node.via_proxy().to_owned(),
                target: env.target.clone(),
                kafka_lib: env.kafka_lib.clone(),
            },
            node.direct(),
            env.target.clone(),
            "src",
        ),
        Side::Target => (
            TestEnv {
                source: env.source.clone(),
                target: node.via_proxy().to_owned(),
                kafka_lib: env.kafka_lib.clone(),
            },
            env.source.clone(),
            node.direct(),
            "dst",
        ),
    };
    let (topic, flow) = (unique("net"), unique("net"));
    let target_topic = format!("src.{topic}");
    create_topic(&source, &topic, PARTITIONS, &[]).await;
    let state = tempfile::tempdir().unwrap();
    let ferry = Ferry::start(state.path(), &config(&ferry_env, state.path(), &flow, &topic, ""));
    let records = numbered(&topic);
    let feeder = feed_slowly(producer(&source), topic.clone(), records.clone(), CHUNKS, PAUSE);
    wait_for("replication under latency", Duration::from_secs(90), || {
        (total_end_offset(&target, &target_topic) > 300).then_some(())
    })
    .await;

    // Recovered: the target holds as many records as the source had when the fault was lifted.
    let produced = || total_end_offset(&source, &topic);
    let caught_up = |mark: i64| total_end_offset(&target, &target_topic) >= mark;
    let after_resets = reset_rounds(&node.proxy, "replication", produced, caught_up).await;
    let errors = ferry.metric("ferry_client_errors_total", &[("cluster", faulty)]).unwrap_or(0.0);
    assert!(errors > 0.0, "ferry's clients saw no error from the resets on {faulty}; logs:\n{}", ferry.logs());

    note("stall on");
    node.proxy.add_both_ways("stall", Toxic::Stall);
    // A few seconds in, whatever was on its way has landed; from then on the stall must hold the target still.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let frozen = total_end_offset(&target, &target_topic);
    tokio::time::sleep(STALL_HOLD - Duration::from_secs(5)).await;
    assert_eq!(total_end_offset(&target, &target_topic), frozen, "records replicated through a stalled link");
    node.proxy.remove_both_ways("stall");
    note("stall off");
    let (mark, lifted) = (produced(), std::time::Instant::now());
    wait_for("replication after the stall", RECOVERY, || caught_up(mark).then_some(())).await;
    let after_stall = lifted.elapsed();
    note("replication after the stall");

    feeder.await.unwrap();
    let duplicates = wait_at_least_once(&ferry, &flow, &target, &target_topic, &records).await;
    eprintln!("{side:?} link: {duplicates} duplicates, all counted; {errors} client errors after the resets");
    let link = match side {
        Side::Source => "source",
        Side::Target => "target",
    };
    report_fault(
        &format!("{RESET_ROUNDS} rounds of connection resets between ferry and the {link} cluster, 100 ms latency"),
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::After(after_resets),
    );
    report_fault(
        &format!("30 s stall between ferry and the {link} cluster, 100 ms latency"),
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::After(after_stall),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_a_stall_between_ferry_and_the_target_lose_nothing_and_duplicates_are_counted() {
    resets_and_a_stall_under_latency(Side::Target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_a_stall_between_ferry_and_the_source_lose_nothing_and_duplicates_are_counted() {
    resets_and_a_stall_under_latency(Side::Source).await;
}

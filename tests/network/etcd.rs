//! Faults between ferry and etcd: one member checkpointing in etcd through a proxy, the dev env's clusters direct.
//! While etcd is unreachable the member keeps replicating the tasks it owns (README), and its checkpoints resume
//! once etcd answers again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry::checkpoint::Access;

use crate::common::*;
use crate::fleet_support::{fleet_config, owned, TTL_SECONDS};
use crate::toxiproxy::{Stream, Toxic, Toxiproxy};
use crate::*;

/// The positions stored in etcd for `flow`, read the way the one-shot commands read them (config at `config`).
async fn stored_in_etcd(config: &Path, flow: &str) -> BTreeMap<i32, i64> {
    let config = ferry::config::Config::load(config).unwrap();
    let metrics = ferry::ops::metrics::Metrics::new(false);
    let store = ferry::checkpoint::open(&config.checkpoint, Access::ReadOnly, &metrics).await.unwrap().store;
    let stored = store.load(flow).await.unwrap();
    stored.into_iter().map(|(key, checkpoint)| (key.partition, checkpoint.position.next_source_offset)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_a_stall_between_ferry_and_etcd_lose_nothing_and_checkpoints_resume() {
    let env = test_env!();
    let etcd = etcd_endpoint!();
    let toxiproxy = Toxiproxy::start();
    let upstream = etcd.trim_start_matches("http://");
    assert!(!upstream.contains('/') && !upstream.contains(','), "one plain http endpoint expected: {etcd}");
    let proxy = toxiproxy.proxy("etcd", upstream);
    proxy.add("latency", LATENCY, Stream::Downstream);
    let (topic, flow, prefix) = (unique("net-etcd"), unique("net-etcd"), format!("/{}", unique("ferry-net")));
    let target_topic = format!("src.{topic}");
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let state = tempfile::tempdir().unwrap();
    let via_proxy = format!("http://{}", proxy.address());
    let ferry = Ferry::start(state.path(), &fleet_config(&env, &via_proxy, &prefix, &flow, &topic, ""));
    // The same store, reached directly: what the test reads checkpoints through.
    let direct_config = state.path().join("direct.yaml");
    std::fs::write(&direct_config, fleet_config(&env, &etcd, &prefix, &flow, &topic, "")).unwrap();
    let records = numbered(&topic);
    let feeder = feed_slowly(producer(&env.source), topic.clone(), records.clone(), CHUNKS, PAUSE);
    wait_for("replication with etcd under latency", Duration::from_secs(90), || {
        (total_end_offset(&env.target, &target_topic) > 300).then_some(())
    })
    .await;

    // Recovered: ferry owns every task and wrote a checkpoint after the fault was lifted. Resets that keep etcd away
    // for longer than the lease TTL cost the member its lease: it then stops its tasks and must rejoin and own them
    // again, so the stall below starts on a member with a lease, as a cut-off member would in production.
    let writes = || ferry.metric("ferry_checkpoint_writes_total", &[("flow", &flow)]).unwrap_or(0.0) as i64;
    let owns_all = || owned(&ferry) == Some(i64::from(PARTITIONS));
    let after_resets =
        reset_rounds(&proxy, "every task owned and a checkpoint written", writes, |mark| owns_all() && writes() > mark)
            .await;

    let stalled = Instant::now();
    note("stall on");
    proxy.add_both_ways("stall", Toxic::Stall);
    // Past the lease TTL, a member that stopped replicating on losing etcd would have stopped by now.
    tokio::time::sleep(Duration::from_secs(TTL_SECONDS + 3)).await;
    let writes_before = writes();
    let mark = total_end_offset(&env.source, &topic);
    let left = STALL_HOLD.saturating_sub(stalled.elapsed());
    wait_for("replication going on while etcd is unreachable", left, || {
        (total_end_offset(&env.target, &target_topic) >= mark).then_some(())
    })
    .await;
    note("replication going on while etcd is unreachable");
    tokio::time::sleep(STALL_HOLD.saturating_sub(stalled.elapsed())).await;
    let writes_in_stall = writes();
    assert_eq!(writes_in_stall, writes_before, "checkpoints written through a stalled link");
    proxy.remove_both_ways("stall");
    note("stall off");
    let lifted = Instant::now();
    wait_for("a checkpoint written after the stall", RECOVERY, || (writes() > writes_in_stall).then_some(())).await;
    let after_stall = lifted.elapsed();
    note("a checkpoint written after the stall");
    let etcd_errors = ferry.metric("ferry_etcd_errors_total", &[]).unwrap_or(0.0);
    assert!(etcd_errors > 0.0, "ferry saw no etcd error from the resets and the stall; logs:\n{}", ferry.logs());

    feeder.await.unwrap();
    let duplicates = wait_at_least_once(&ferry, &flow, &env.target, &target_topic, &records).await;
    let end = PER_PARTITION as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_in_etcd(&direct_config, &flow).await;
        if (0..PARTITIONS).all(|p| stored.get(&p) == Some(&end)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoints in etcd never reached {end}: {stored:?}; logs:\n{}",
            ferry.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("etcd link: {duplicates} duplicates, all counted; {etcd_errors} etcd errors");
    report_fault(
        &format!(
            "{RESET_ROUNDS} rounds of connection resets between ferry and etcd, 100 ms latency (until every task is \
             owned and checkpointed again)"
        ),
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::After(after_resets),
    );
    report_fault(
        "30 s stall between ferry and etcd (replication goes on; until the next checkpoint)",
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::After(after_stall),
    );
}

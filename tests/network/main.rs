//! Network faults between ferry and what it talks to, through Toxiproxy (`tests/support/toxiproxy.rs`): connection
//! resets and 30 s stalls under 100 ms of added latency, between ferry and the target cluster, the source cluster
//! and etcd. In every case nothing is lost, and the duplicates on the target are exactly the ones ferry counted.
//!
//! Needs the single-broker dev env (`scripts/dev-env up`) and toxiproxy-server (`scripts/install-toxiproxy`, which
//! `scripts/install-deps` runs). Each test has its own Toxiproxy server and, where a cluster sits behind the proxy,
//! its own single-node cluster, so the tests run in parallel.

#[macro_use]
#[path = "../support/dev_env.rs"]
mod dev_env;
// The end-to-end harness; this binary uses only part of it.
#[allow(dead_code)]
#[macro_use]
#[path = "../e2e/common.rs"]
mod common;
#[allow(dead_code)]
#[macro_use]
#[path = "../e2e/fleet_support.rs"]
mod fleet_support;
#[path = "../support/toxiproxy.rs"]
mod toxiproxy;

mod etcd;
mod handover;
mod kafka;
mod kafka_behind_proxy;
mod proxy;

use std::time::Duration;

use crate::common::*;
use crate::toxiproxy::{Proxy, Toxic};

const PARTITIONS: i32 = 3;
const PER_PARTITION: u64 = 2_400;
/// The feed lasts over a minute (80 chunks, 750 ms apart), so every fault strikes mid-stream.
const CHUNKS: usize = 80;
const PAUSE: Duration = Duration::from_millis(750);

const LATENCY: Toxic = Toxic::Latency { ms: 100 };
const RESET_ROUNDS: usize = 3;
/// Long enough for the clients to reconnect into the reset a few times (librdkafka backs off from 100 ms).
const RESET_HOLD: Duration = Duration::from_secs(3);
const STALL_HOLD: Duration = Duration::from_secs(30);
/// A generous bound for getting over a fault: librdkafka's reconnect backoff alone grows to 10 s.
const RECOVERY: Duration = Duration::from_secs(90);

/// Says on stderr, with a UTC time to set beside ferry's log lines, what the test does to the network.
fn note(what: &str) {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 86_400_000;
    let (hours, minutes, seconds) = (millis / 3_600_000, millis / 60_000 % 60, millis / 1000 % 60);
    eprintln!("{hours:02}:{minutes:02}:{seconds:02}.{:03} network: {what}", millis % 1000);
}

/// Every partition's numbered records.
fn numbered(topic: &str) -> Vec<Vec<Record>> {
    (0..PARTITIONS).map(|p| (0..PER_PARTITION).map(|seq| Record::numbered(topic, p, seq)).collect()).collect()
}

/// The sum of a topic's end offsets (0 for a topic not created yet).
fn total_end_offset(bootstrap: &str, topic: &str) -> i64 {
    (0..PARTITIONS).map(|p| end_offset(bootstrap, topic, p).max(0)).sum()
}

/// Resets every connection through `proxy` (both ways, as soon as data flows) for [`RESET_HOLD`], [`RESET_ROUNDS`]
/// times; after each round, waits until `recovered(mark())`, `mark` read as the resets stop.
async fn reset_rounds(proxy: &Proxy, what: &str, mark: impl Fn() -> i64, recovered: impl Fn(i64) -> bool) -> Duration {
    let mut longest = Duration::ZERO;
    for round in 1..=RESET_ROUNDS {
        note(&format!("resets on ({round}/{RESET_ROUNDS})"));
        proxy.add_both_ways("reset", Toxic::ResetPeer { after_ms: 0 });
        tokio::time::sleep(RESET_HOLD).await;
        proxy.remove_both_ways("reset");
        note("resets off");
        let (mark, lifted) = (mark(), std::time::Instant::now());
        wait_for(&format!("{what} after reset round {round}"), RECOVERY, || recovered(mark).then_some(())).await;
        longest = longest.max(lifted.elapsed());
        note(&format!("{what} after reset round {round}"));
    }
    longest
}

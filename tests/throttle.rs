//! The fleet-wide throttle: a budget split among three members holds the aggregate rate on the target, and a
//! hot-reloaded budget takes effect. A binary of its own so no other test competes for the CPU while it measures.

#[macro_use]
#[path = "support/dev_env.rs"]
mod dev_env;
#[allow(dead_code)]
#[macro_use]
#[path = "e2e/common.rs"]
mod common;
#[allow(dead_code)]
#[macro_use]
#[path = "e2e/fleet_support.rs"]
mod fleet_support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use fleet_support::*;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Writes `text` to `path` the way a ConfigMap update lands: a new file renamed over the old one.
fn replace_file(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Bytes per record in the throttle test: a value only, so the throttle's count and the test's agree; large enough that
/// 4 MiB/s is a few hundred records a second, so three debug-build members on two shared cores keep up with it.
const THROTTLED_RECORD: usize = 10_000;

async fn fill(producer: &FutureProducer, topic: &str, partitions: i32, records: usize) {
    let value = vec![b'x'; THROTTLED_RECORD];
    let mut deliveries = Vec::new();
    for index in 0..records {
        let mut record =
            FutureRecord::<(), _>::to(topic).partition((index % partitions as usize) as i32).payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
}

/// Reads the target topic's end offsets through one long-lived client, so a reading takes milliseconds and rate
/// windows are measured where they are meant to be.
struct TargetCounter {
    consumer: rdkafka::consumer::BaseConsumer,
    bootstrap: String,
    topic: String,
    partitions: i32,
}

impl TargetCounter {
    fn new(env: &TestEnv, topic: &str, partitions: i32) -> Self {
        let consumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &env.target).create().expect("consumer");
        TargetCounter { consumer, bootstrap: env.target.clone(), topic: format!("src.{topic}"), partitions }
    }

    fn records(&self) -> i64 {
        use rdkafka::consumer::Consumer;
        (0..self.partitions)
            .map(|p| {
                // A topic ferry just created may have no leader for a moment, and a busy broker answers slowly:
                // ask again for up to half a minute.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10)) {
                        Ok((_, high)) if high >= 0 => break high,
                        answer => {
                            // This client's metadata may be stale (the topic is new): a fresh one looks it up again.
                            let fresh = end_offset(&self.bootstrap, &self.topic, p);
                            if fresh >= 0 {
                                break fresh;
                            }
                            assert!(Instant::now() < deadline, "end offset of {}[{p}]: {answer:?}", self.topic);
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })
            .sum()
    }

    /// Target write rate in bytes per second over `window`.
    async fn rate(&self, window: Duration) -> f64 {
        let (start, at) = (self.records(), Instant::now());
        tokio::time::sleep(window).await;
        let records = self.records() - start;
        records as f64 * THROTTLED_RECORD as f64 / at.elapsed().as_secs_f64()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_throttle_is_split_among_members_and_follows_a_reload() {
    let env = test_env!();
    let etcd = etcd_endpoint!();
    const PARTITIONS: i32 = 6;
    const MIB: f64 = 1024.0 * 1024.0;
    let (topic, flow, prefix) = (unique("throttle"), unique("throttle"), format!("/{}", unique("ferry-throttle")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    // 4 MiB/s for ~35 s (start, settle, measure) and 2 MiB/s for ~15 s need about 180 MB of backlog.
    fill(&producer(&env.source), &topic, PARTITIONS, 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    // A long lease: this test is about rates, and a member that loses its lease mid-measurement pauses its tasks.
    let throttled = |rate: &str| {
        fleet_config_with_ttl(
            &env,
            &etcd,
            &prefix,
            &flow,
            &topic,
            &format!("throttles:\n  - {{ from: us-east, to: eu-west, rate: {rate} }}\n"),
            30,
        )
    };
    std::fs::write(&config, throttled("4MiB/s")).unwrap();
    let members: Vec<Ferry> = (0..3).map(|_| Ferry::start_with(config.clone(), free_port(), &[])).collect();
    let refs: Vec<&Ferry> = members.iter().collect();
    wait_balanced("6 tasks over 3 members", &refs, 6, Duration::from_secs(60)).await;
    // Each member enforces a third of the budget.
    wait_for_thirds("throttle shares of a third each", &members, 4.0 * MIB, Duration::from_secs(20)).await;
    // Let the initial bursts pass, then measure the aggregate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counter = TargetCounter::new(&env, &topic, PARTITIONS);
    let rate = counter.rate(Duration::from_secs(20)).await;
    assert!(
        (rate / (4.0 * MIB) - 1.0).abs() <= 0.15,
        "aggregate target write rate {:.2} MiB/s is not within 15 % of the 4 MiB/s fleet budget",
        rate / MIB
    );

    replace_file(&config, &throttled("2MiB/s"));
    let reloaded_at = Instant::now();
    // The controller re-splits the new budget and every member enforces its new share...
    wait_for_thirds(
        "every member enforcing a third of the reloaded budget",
        &members,
        2.0 * MIB,
        Duration::from_secs(10),
    )
    .await;
    let took = reloaded_at.elapsed();
    // ...and the target sees it: a window that starts after the switch runs at the new budget.
    let reloaded_rate = counter.rate(Duration::from_secs(5)).await;
    assert!(
        (reloaded_rate / (2.0 * MIB) - 1.0).abs() <= 0.15,
        "after the reload to 2 MiB/s the aggregate target write rate is {:.2} MiB/s",
        reloaded_rate / MIB
    );
    eprintln!(
        "throttle test: {:.2} MiB/s at the 4 MiB/s budget; the 2 MiB/s budget enforced {took:?} after the reload, then \
         {:.2} MiB/s",
        rate / MIB,
        reloaded_rate / MIB
    );
    assert!(members.iter().all(|m| m.metric("ferry_config_reloads_total", &[("result", "applied")]) == Some(1.0)));
}

/// Waits until every member enforces a third of `budget` (bytes/s) on the us-east → eu-west pair.
async fn wait_for_thirds(what: &str, members: &[Ferry], budget: f64, timeout: Duration) {
    wait_for(what, timeout, || {
        members
            .iter()
            .all(|m| {
                m.metric("ferry_throttle_rate_bytes", &[("from", "us-east"), ("to", "eu-west")])
                    .is_some_and(|rate| (rate - budget / 3.0).abs() < 2.0)
            })
            .then_some(())
    })
    .await;
}

//! Shared by the fleet tests: configs for members coordinated through etcd, ownership history from etcd, and checks
//! that nothing was lost.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use rdkafka::producer::FutureProducer;

use crate::common::*;

/// Member lease TTL in these tests; the issue's bound for moving a crashed member's tasks is TTL + 5 s.
pub const TTL_SECONDS: u64 = 5;

/// The dev env's etcd endpoint, or returns from the calling test after saying it is skipped.
macro_rules! etcd_endpoint {
    () => {{
        let [endpoint] = dev_env_vars!("FERRY_TEST_ETCD_ENDPOINTS");
        endpoint
    }};
}

/// A fleet config: one flow of `include`, checkpoints in etcd under `prefix`, and `extra` appended (throttles).
pub fn fleet_config(env: &TestEnv, etcd: &str, prefix: &str, flow: &str, include: &str, extra: &str) -> String {
    fleet_config_with_ttl(env, etcd, prefix, flow, include, extra, TTL_SECONDS)
}

/// [`fleet_config`] with a lease TTL of `ttl_seconds`.
pub fn fleet_config_with_ttl(
    env: &TestEnv,
    etcd: &str,
    prefix: &str,
    flow: &str,
    include: &str,
    extra: &str,
    ttl_seconds: u64,
) -> String {
    format!(
        r#"clusters:
  src:
    bootstrap_servers: "{source}"
    region: us-east
  dst:
    bootstrap_servers: "{target}"
    region: eu-west
checkpoint:
  store: etcd
  interval: 1s
  etcd:
    endpoints: ["{etcd}"]
    prefix: "{prefix}"
    lease_ttl: {ttl_seconds}s
discovery:
  interval: 2s
flows:
  - name: {flow}
    source: src
    target: dst
    topics: {{ include: ['{include}'] }}
{extra}"#,
        source = env.source,
        target = env.target,
    )
}

pub fn owned(member: &Ferry) -> Option<i64> {
    member.metric("ferry_owned_tasks", &[]).map(|value| value as i64)
}

pub fn is_leader(member: &Ferry) -> bool {
    member.metric("ferry_leader", &[]) == Some(1.0)
}

/// Waits until the members own `total` tasks between them, each within one of the others; returns the counts.
pub async fn wait_balanced(what: &str, members: &[&Ferry], total: i64, timeout: Duration) -> Vec<i64> {
    wait_for(what, timeout, || {
        let counts: Vec<i64> = members.iter().map(|member| owned(member)).collect::<Option<_>>()?;
        let (min, max) = (counts.iter().min()?, counts.iter().max()?);
        (counts.iter().sum::<i64>() == total && max - min <= 1).then_some(counts)
    })
    .await
}

/// One change of a key, as etcd's history records it.
#[derive(Debug)]
pub struct Change {
    pub key: String,
    pub put: bool,
    pub value: String,
    pub version: i64,
    pub revision: i64,
}

/// etcd's current revision.
pub async fn current_revision(endpoint: &str) -> i64 {
    let mut client = etcd_client::Client::connect([endpoint], None).await.unwrap();
    client.get("/", Some(GetOptions::new().with_count_only())).await.unwrap().header().unwrap().revision()
}

/// Every change under `prefix` since `from_revision` (taken at the test's start: a ferry controller compacts only
/// history older than an hour).
pub async fn history(endpoint: &str, prefix: &str, from_revision: i64) -> Vec<Change> {
    let mut client = etcd_client::Client::connect([endpoint], None).await.unwrap();
    let current = client.get("/", Some(GetOptions::new().with_count_only())).await.unwrap();
    let head = current.header().unwrap().revision();
    let mut stream =
        client.watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(from_revision))).await.unwrap();
    let mut changes = Vec::new();
    let mut seen = 0;
    // History arrives in a few responses right away; a quiet second means it is complete (the prefix may have
    // stopped changing before `head`, which other keys moved).
    while seen < head {
        let Ok(Ok(Some(response))) = tokio::time::timeout(Duration::from_secs(1), stream.message()).await else {
            break;
        };
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            seen = seen.max(kv.mod_revision());
            changes.push(Change {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                put: event.event_type() == EventType::Put,
                value: String::from_utf8_lossy(kv.value()).into_owned(),
                version: kv.version(),
                revision: kv.mod_revision(),
            });
        }
    }
    changes
}

/// No task ever had two owners: every owner key was only ever created (never overwritten while held) and
/// deleted, alternately. Returns how many times ownership was taken.
pub fn assert_one_owner_at_a_time(changes: &[Change]) -> usize {
    let mut held: BTreeMap<&str, &str> = BTreeMap::new();
    let mut takes = 0;
    for change in changes.iter().filter(|change| change.key.contains("/owners/")) {
        if change.put {
            assert_eq!(
                change.version,
                1,
                "owner key {} was overwritten at revision {} while {:?} held it",
                change.key,
                change.revision,
                held.get(change.key.as_str())
            );
            assert!(held.insert(&change.key, &change.value).is_none(), "{} taken twice", change.key);
            takes += 1;
        } else {
            held.remove(change.key.as_str());
        }
    }
    takes
}

/// Every source record of `topic` is on the target, in source order once duplicates are removed; returns the
/// number of duplicates (re-sent records after a member died).
pub fn assert_nothing_lost(env: &TestEnv, topic: &str, partitions: i32) -> usize {
    let mut duplicates = 0;
    for partition in 0..partitions {
        let source: Vec<String> =
            read_partition(&env.source, topic, partition).into_iter().map(|(_, r)| r.id()).collect();
        let target: Vec<(i64, String)> = read_partition(&env.target, &format!("src.{topic}"), partition)
            .into_iter()
            .map(|(offset, r)| (offset, r.id()))
            .collect();
        let mut seen = BTreeSet::new();
        let mut first_copies = Vec::new();
        for (offset, id) in &target {
            if seen.insert(id.clone()) {
                first_copies.push((*offset, id.clone()));
            } else {
                duplicates += 1;
            }
        }
        assert_eq!(first_copies.len(), source.len(), "partition {partition}: records lost or foreign records added");
        if let Some(at) = first_copies.iter().zip(&source).position(|((_, copied), original)| copied != original) {
            // The vectors run to thousands of records: show where they part, and the target around it.
            let window = |from: usize, len: usize| from.saturating_sub(3)..(from + 4).min(len);
            let target_at = target.iter().position(|(offset, _)| *offset == first_copies[at].0).unwrap();
            panic!(
                "partition {partition}: the target order differs from the source at the {at}th record: source {:?}, \
                 first copies (target offset, id) {:?}; target around it {:?}",
                &source[window(at, source.len())],
                &first_copies[window(at, first_copies.len())],
                &target[window(target_at, target.len())],
            );
        }
    }
    duplicates
}

pub async fn wait_replicated(env: &TestEnv, topic: &str, partitions: i32, timeout: Duration) {
    wait_for("every source record on the target", timeout, || {
        (0..partitions)
            .all(|p| end_offset(&env.target, &format!("src.{topic}"), p) >= end_offset(&env.source, topic, p))
            .then_some(())
    })
    .await;
}

/// Produces `per_partition` numbered records to every partition, in `chunks` spaced by `pause`.
pub fn feed(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    from: u64,
    per_partition: u64,
    chunks: u64,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let (producer, topic) = (producer.clone(), topic.to_owned());
    tokio::spawn(async move {
        let size = per_partition / chunks;
        for chunk in 0..chunks {
            for partition in 0..partitions {
                let records: Vec<Record> = (from + chunk * size..from + (chunk + 1) * size)
                    .map(|seq| Record::numbered(&topic, partition, seq))
                    .collect();
                produce(&producer, &topic, partition, &records).await;
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// Records on the target topic of `topic`, over all partitions.
pub fn replicated_records(env: &TestEnv, topic: &str, partitions: i32) -> i64 {
    (0..partitions).map(|p| end_offset(&env.target, &format!("src.{topic}"), p).max(0)).sum()
}

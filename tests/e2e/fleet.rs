//! Many members coordinated through real etcd: balanced assignment, kill -9 of a member and of the leader, a member
//! joining, the fleet-wide throttle and its hot reload, and etcd stopped for 30 s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::*;

/// Member lease TTL in these tests; the issue's bound for moving a crashed member's tasks is TTL + 5 s.
const TTL_SECONDS: u64 = 5;

fn etcd_endpoint() -> String {
    std::env::var("FERRY_TEST_ETCD_ENDPOINTS").unwrap_or_else(|_| {
        panic!("FERRY_TEST_ETCD_ENDPOINTS is not set: start the test environment with `eval \"$(scripts/dev-env up)\"`")
    })
}

/// A fleet config: one flow of `include`, checkpoints in etcd under `prefix`, and `extra` appended (throttles).
fn fleet_config(env: &TestEnv, etcd: &str, prefix: &str, flow: &str, include: &str, extra: &str) -> String {
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
    lease_ttl: {TTL_SECONDS}s
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

/// Writes `text` to `path` the way a ConfigMap update lands: a new file renamed over the old one.
fn replace_file(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn owned(member: &Ferry) -> Option<i64> {
    member.metric("ferry_owned_tasks", &[]).map(|value| value as i64)
}

fn is_leader(member: &Ferry) -> bool {
    member.metric("ferry_leader", &[]) == Some(1.0)
}

/// Waits until the members own `total` tasks between them, each within one of the others; returns the counts.
async fn wait_balanced(what: &str, members: &[&Ferry], total: i64, timeout: Duration) -> Vec<i64> {
    wait_for(what, timeout, || {
        let counts: Vec<i64> = members.iter().map(|member| owned(member)).collect::<Option<_>>()?;
        let (min, max) = (counts.iter().min()?, counts.iter().max()?);
        (counts.iter().sum::<i64>() == total && max - min <= 1).then_some(counts)
    })
    .await
}

/// One change of a key, as etcd's history records it.
#[derive(Debug)]
struct Change {
    key: String,
    put: bool,
    value: String,
    version: i64,
    revision: i64,
}

/// Every change under `prefix` since etcd started (the test etcd never compacts).
async fn history(endpoint: &str, prefix: &str) -> Vec<Change> {
    let mut client = etcd_client::Client::connect([endpoint], None).await.unwrap();
    let current = client.get("/", Some(GetOptions::new().with_count_only())).await.unwrap();
    let head = current.header().unwrap().revision();
    let mut stream =
        client.watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(1))).await.unwrap();
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
fn assert_one_owner_at_a_time(changes: &[Change]) -> usize {
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
fn assert_nothing_lost(env: &TestEnv, topic: &str, partitions: i32) -> usize {
    let mut duplicates = 0;
    for partition in 0..partitions {
        let source: Vec<String> =
            read_partition(&env.source, topic, partition).into_iter().map(|(_, r)| r.id()).collect();
        let target: Vec<String> =
            read_partition(&env.target, &format!("src.{topic}"), partition).into_iter().map(|(_, r)| r.id()).collect();
        let mut seen = BTreeSet::new();
        let mut first_copies = Vec::new();
        for id in &target {
            if seen.insert(id.clone()) {
                first_copies.push(id.clone());
            } else {
                duplicates += 1;
            }
        }
        assert_eq!(first_copies.len(), source.len(), "partition {partition}: records lost or foreign records added");
        assert_eq!(first_copies, source, "partition {partition}: the target order differs from the source");
    }
    duplicates
}

async fn wait_replicated(env: &TestEnv, topic: &str, partitions: i32, timeout: Duration) {
    wait_for("every source record on the target", timeout, || {
        (0..partitions)
            .all(|p| end_offset(&env.target, &format!("src.{topic}"), p) >= end_offset(&env.source, topic, p))
            .then_some(())
    })
    .await;
}

/// Produces `per_partition` numbered records to every partition, in `chunks` spaced by `pause`.
fn feed(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_moves_tasks_of_a_killed_member_and_a_killed_leader_without_loss() {
    let env = env();
    let etcd = etcd_endpoint();
    const PARTITIONS: i32 = 12;
    let (topic, flow, prefix) = (unique("fleet"), unique("fleet"), format!("/{}", unique("ferry-fleet")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    feed(&producer, &topic, PARTITIONS, 0, 1_000, 1, Duration::ZERO).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, fleet_config(&env, &etcd, &prefix, &flow, &topic, "")).unwrap();
    let mut members: Vec<Option<Ferry>> =
        (0..3).map(|_| Some(Ferry::start_with(config.clone(), free_port(), &[]))).collect();
    let alive =
        |members: &Vec<Option<Ferry>>| -> Vec<usize> { (0..members.len()).filter(|i| members[*i].is_some()).collect() };
    {
        let all: Vec<&Ferry> = members.iter().flatten().collect();
        let counts = wait_balanced("12 tasks balanced over 3 members", &all, 12, Duration::from_secs(60)).await;
        assert_eq!(counts, vec![4, 4, 4]);
    }
    let feeder = feed(&producer, &topic, PARTITIONS, 1_000, 3_000, 30, Duration::from_millis(300));

    // kill -9 of a member that is not the leader.
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        alive(&members).into_iter().find(|i| is_leader(members[*i].as_ref().unwrap()))
    })
    .await;
    let victim = alive(&members).into_iter().find(|i| *i != leader).unwrap();
    members[victim].take().unwrap().kill9();
    let killed_at = Instant::now();
    {
        let survivors: Vec<&Ferry> = members.iter().flatten().collect();
        wait_balanced("the killed member's tasks owned by the survivors", &survivors, 12, Duration::from_secs(60))
            .await;
    }
    let moved_after = killed_at.elapsed();
    assert!(
        moved_after <= Duration::from_secs(TTL_SECONDS + 5),
        "the killed member's tasks moved after {moved_after:?}, more than TTL + 5 s"
    );

    // kill -9 of the leader.
    members[leader].take().unwrap().kill9();
    let killed_at = Instant::now();
    let survivor = alive(&members)[0];
    wait_for("a new leader", Duration::from_secs(60), || is_leader(members[survivor].as_ref().unwrap()).then_some(()))
        .await;
    let elected_after = killed_at.elapsed();
    wait_for("every task owned by the last member", Duration::from_secs(60), || {
        (owned(members[survivor].as_ref().unwrap()) == Some(12)).then_some(())
    })
    .await;
    assert!(
        elected_after <= Duration::from_secs(TTL_SECONDS + 5),
        "a new leader took {elected_after:?}, more than TTL + 5 s"
    );

    feeder.await.unwrap();
    wait_replicated(&env, &topic, PARTITIONS, Duration::from_secs(120)).await;
    let duplicates = assert_nothing_lost(&env, &topic, PARTITIONS);

    let changes = history(&etcd, &prefix).await;
    let takes = assert_one_owner_at_a_time(&changes);
    // 12 at start, the killed member's 4, then the killed leader's 6.
    assert!(takes >= 12 + 4 + 6, "ownership history shows only {takes} takes");
    // No assignment written after the new leadership began carries another leader's name.
    let mut client = etcd_client::Client::connect([etcd.as_str()], None).await.unwrap();
    let leader_kv = client.get(format!("{prefix}/leader"), None).await.unwrap().kvs()[0].clone();
    let (new_leader, elected_at) =
        (String::from_utf8_lossy(leader_kv.value()).into_owned(), leader_kv.create_revision());
    for change in changes.iter().filter(|c| c.put && c.key.contains("/assignments/") && c.revision > elected_at) {
        let work: serde_json::Value = serde_json::from_str(&change.value).unwrap();
        assert_eq!(work["leader"], new_leader.as_str(), "an assignment by a deposed leader landed: {change:?}");
    }
    eprintln!("fleet kill test: tasks moved after {moved_after:?}, new leader after {elected_after:?}, {duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_takes_a_third_of_the_tasks_and_no_task_is_owned_twice() {
    let env = env();
    let etcd = etcd_endpoint();
    const PARTITIONS: i32 = 12;
    let (topic, flow, prefix) = (unique("join"), unique("join"), format!("/{}", unique("ferry-join")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, fleet_config(&env, &etcd, &prefix, &flow, &topic, "")).unwrap();
    let first = Ferry::start_with(config.clone(), free_port(), &[]);
    let second = Ferry::start_with(config.clone(), free_port(), &[]);
    assert_eq!(
        wait_balanced("12 tasks over 2 members", &[&first, &second], 12, Duration::from_secs(60)).await,
        vec![6, 6]
    );
    let feeder = feed(&producer, &topic, PARTITIONS, 0, 2_000, 20, Duration::from_millis(300));
    let moved_before: f64 = [&first, &second].iter().filter_map(|m| m.metric("ferry_moved_tasks_total", &[])).sum();

    let third = Ferry::start_with(config.clone(), free_port(), &[]);
    let counts =
        wait_balanced("12 tasks over 3 members", &[&first, &second, &third], 12, Duration::from_secs(60)).await;
    assert_eq!(counts, vec![4, 4, 4]);
    let moved: f64 =
        [&first, &second, &third].iter().filter_map(|m| m.metric("ferry_moved_tasks_total", &[])).sum::<f64>()
            - moved_before;
    assert_eq!(moved, 4.0, "adding a third member to 12 tasks should move exactly 4");

    feeder.await.unwrap();
    wait_replicated(&env, &topic, PARTITIONS, Duration::from_secs(120)).await;
    let duplicates = assert_nothing_lost(&env, &topic, PARTITIONS);
    assert_eq!(duplicates, 0, "a graceful hand-over checkpoints before releasing, so nothing is sent twice");
    let takes = assert_one_owner_at_a_time(&history(&etcd, &prefix).await);
    assert_eq!(takes, 12 + 4, "12 initial takes and 4 moved tasks");
}

/// Bytes per record in the throttle test: a value only, so the throttle's count and the test's agree.
const THROTTLED_RECORD: usize = 1_000;

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

fn replicated_records(env: &TestEnv, topic: &str, partitions: i32) -> i64 {
    (0..partitions).map(|p| end_offset(&env.target, &format!("src.{topic}"), p).max(0)).sum()
}

/// Reads the target topic's end offsets through one long-lived client, so a reading takes milliseconds and rate
/// windows are measured where they are meant to be.
struct TargetCounter {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
    partitions: i32,
}

impl TargetCounter {
    fn new(env: &TestEnv, topic: &str, partitions: i32) -> Self {
        let consumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &env.target).create().expect("consumer");
        TargetCounter { consumer, topic: format!("src.{topic}"), partitions }
    }

    fn records(&self) -> i64 {
        use rdkafka::consumer::Consumer;
        (0..self.partitions)
            .map(|p| {
                self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10)).map_or(0, |(_, high)| high)
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
    let env = env();
    let etcd = etcd_endpoint();
    const PARTITIONS: i32 = 6;
    const MIB: f64 = 1024.0 * 1024.0;
    let (topic, flow, prefix) = (unique("throttle"), unique("throttle"), format!("/{}", unique("ferry-throttle")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    // 4 MiB/s for ~30 s and 8 MiB/s for ~15 s need about 240 MB of backlog.
    fill(&producer(&env.source), &topic, PARTITIONS, 250_000).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    let throttled = |rate: &str| {
        fleet_config(
            &env,
            &etcd,
            &prefix,
            &flow,
            &topic,
            &format!("throttles:\n  - {{ from: us-east, to: eu-west, rate: {rate} }}\n"),
        )
    };
    std::fs::write(&config, throttled("4MiB/s")).unwrap();
    let members: Vec<Ferry> = (0..3).map(|_| Ferry::start_with(config.clone(), free_port(), &[])).collect();
    let refs: Vec<&Ferry> = members.iter().collect();
    wait_balanced("6 tasks over 3 members", &refs, 6, Duration::from_secs(60)).await;
    // Each member enforces a third of the budget.
    wait_for("throttle shares of a third each", Duration::from_secs(20), || {
        members
            .iter()
            .all(|m| {
                m.metric("ferry_throttle_rate_bytes", &[("from", "us-east"), ("to", "eu-west")])
                    .is_some_and(|rate| (rate - 4.0 * MIB / 3.0).abs() < 2.0)
            })
            .then_some(())
    })
    .await;
    // Let the initial bursts pass, then measure the aggregate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counter = TargetCounter::new(&env, &topic, PARTITIONS);
    let rate = counter.rate(Duration::from_secs(20)).await;
    assert!(
        (rate / (4.0 * MIB) - 1.0).abs() <= 0.15,
        "aggregate target write rate {:.2} MiB/s is not within 15 % of the 4 MiB/s fleet budget",
        rate / MIB
    );

    replace_file(&config, &throttled("8MiB/s"));
    let reloaded_at = Instant::now();
    let took = loop {
        let rate = counter.rate(Duration::from_secs(3)).await;
        eprintln!("after reload {:?}: {:.2} MiB/s", reloaded_at.elapsed(), rate / MIB);
        if (rate / (8.0 * MIB) - 1.0).abs() <= 0.15 {
            break reloaded_at.elapsed();
        }
        assert!(
            reloaded_at.elapsed() < Duration::from_secs(13),
            "the reloaded 8 MiB/s budget did not take effect: {:.2} MiB/s",
            rate / MIB
        );
    };
    eprintln!("throttle test: {:.2} MiB/s at 4 MiB/s budget; new budget effective after {took:?}", rate / MIB);
    assert!(members.iter().all(|m| m.metric("ferry_config_reloads_total", &[("result", "applied")]) == Some(1.0)));
}

/// An etcd of the test's own, so stopping it disturbs no other test.
struct EtcdNode {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdNode {
    fn start_new() -> Self {
        let mut node = EtcdNode {
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        node.start();
        node
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn start(&mut self) {
        let (client, peer) = (self.endpoint(), format!("http://127.0.0.1:{}", self.peer_port));
        let child = Command::new("etcd")
            .args(["--name", "fleet-test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("fleet-test={peer}"), "--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server) on PATH");
        self.child = Some(child);
        let health = format!("{}/health", self.endpoint());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ureq::get(&health).call().is_ok_and(|r| r.into_string().unwrap_or_default().contains("true")) {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn stored_offsets(endpoint: &str, prefix: &str, flow: &str) -> i64 {
    let config: ferry::config::EtcdConfig =
        serde_json::from_value(serde_json::json!({ "endpoints": [endpoint], "prefix": prefix })).unwrap();
    let metrics = ferry::metrics::Metrics::new(false);
    let etcd = ferry::etcd::Etcd::connect(&config, &metrics).await.unwrap();
    let store = ferry::checkpoint::EtcdStore::new(etcd, "test-reader");
    use ferry::checkpoint::CheckpointStore;
    store.load(flow).await.unwrap().values().map(|checkpoint| checkpoint.position.next_source_offset).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_continues_while_etcd_is_stopped_for_30_s() {
    let env = env();
    let mut etcd = EtcdNode::start_new();
    const PARTITIONS: i32 = 4;
    let (topic, flow, prefix) = (unique("etcd-down"), unique("etcd-down"), "/ferry-etcd-down".to_owned());
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let dir = tempfile::tempdir().unwrap();
    let config: PathBuf = dir.path().join("ferry.yaml");
    std::fs::write(&config, fleet_config(&env, &etcd.endpoint(), &prefix, &flow, &topic, "")).unwrap();
    let members: Vec<Ferry> = (0..2).map(|_| Ferry::start_with(config.clone(), free_port(), &[])).collect();
    let refs: Vec<&Ferry> = members.iter().collect();
    wait_balanced("4 tasks over 2 members", &refs, 4, Duration::from_secs(60)).await;
    let feeder = feed(&producer, &topic, PARTITIONS, 0, 4_000, 40, Duration::from_millis(1_000));
    wait_for("checkpoints in etcd", Duration::from_secs(30), || {
        let stored = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(stored_offsets(&etcd.endpoint(), &prefix, &flow))
        });
        (stored > 0).then_some(())
    })
    .await;

    etcd.stop();
    let replicated_at_stop = replicated_records(&env, &topic, PARTITIONS);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let replicated_during = replicated_records(&env, &topic, PARTITIONS) - replicated_at_stop;
    assert!(replicated_during > 1_000, "only {replicated_during} records replicated while etcd was down");
    assert!(members.iter().all(|m| m.get("/healthz").is_some()), "a member died while etcd was down");
    etcd.start();

    feeder.await.unwrap();
    wait_replicated(&env, &topic, PARTITIONS, Duration::from_secs(120)).await;
    let source_total: i64 = (0..PARTITIONS).map(|p| end_offset(&env.source, &topic, p)).sum();
    wait_for("checkpoints caught up after etcd came back", Duration::from_secs(60), || {
        let stored = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(stored_offsets(&etcd.endpoint(), &prefix, &flow))
        });
        (stored == source_total).then_some(())
    })
    .await;
    assert_eq!(members.iter().filter_map(owned).sum::<i64>(), 4, "the members kept their tasks through the outage");
    let duplicates = assert_nothing_lost(&env, &topic, PARTITIONS);
    assert_eq!(duplicates, 0, "no member restarted, so nothing was sent twice");
}

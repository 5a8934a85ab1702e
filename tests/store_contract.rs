//! The contract of `CheckpointStore`: the same test bodies run against the file store (in a temporary directory)
//! and the etcd store (on the dev env's real etcd, under a prefix of their own). Then the etcd store's own promises:
//! members' shards merge to the furthest checkpoint, writes are batched, released entries go once another member
//! holds them, dead members' dominated shards are collected, and an unreachable etcd fails naming its endpoint.
//!
//! The etcd cases need `FERRY_TEST_ETCD_ENDPOINTS`: run `eval "$(scripts/dev-env up)"` first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{DeleteOptions, GetOptions};
use ferry::checkpoint::{
    Checkpoint, CheckpointStore, EtcdStore, FileStore, GroupOffsets, StoreError, SyncedOffset, TaskKey,
};
use ferry::config::EtcdConfig;
use ferry::coordination::etcd::{Etcd, REQUEST_TIMEOUT};
use ferry::ops::metrics::Metrics;
use ferry::replication::progress::{Position, SyncPoint, MAX_SYNC_POINTS};
use futures::FutureExt;

#[macro_use]
#[path = "support/dev_env.rs"]
mod dev_env;

/// The member id the contract's stores write as.
const MEMBER: &str = "m1";

/// Where a store under test keeps its data; [`Harness::open`] builds a new store instance over the same data.
enum Harness {
    File(tempfile::TempDir),
    /// Boxed: the connection carries the member's whole metrics registry. With the endpoints it was made for.
    Etcd(Box<Etcd>, Vec<String>),
}

impl Harness {
    fn file() -> Self {
        Self::File(tempfile::tempdir().expect("temporary directory"))
    }

    /// A connection to the dev env's etcd under `/ferry-test/<test>-<pid>-<nanos>`; `None` (the test is skipped,
    /// see `tests/support/dev_env.rs`) when the dev env is not up.
    async fn etcd(test: &str) -> Option<Self> {
        let [endpoints] = dev_env::vars(test, ["FERRY_TEST_ETCD_ENDPOINTS"])?;
        let endpoints: Vec<String> = endpoints.split(',').map(str::to_owned).collect();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let prefix = format!("/ferry-test/{test}-{}-{nanos}", std::process::id());
        let metrics = Metrics::new(false);
        let etcd = Etcd::connect(&etcd_config(endpoints.clone(), prefix), &metrics).await.expect("etcd client");
        Some(Self::Etcd(Box::new(etcd), endpoints))
    }

    async fn open(&self) -> Arc<dyn CheckpointStore> {
        match self {
            Self::File(dir) => Arc::new(FileStore::open(dir.path()).expect("file store")),
            Self::Etcd(..) => Arc::new(self.etcd_store(MEMBER)),
        }
    }

    fn etcd_store(&self, member: &str) -> EtcdStore {
        EtcdStore::new(self.connection().clone(), member)
    }

    fn connection(&self) -> &Etcd {
        match self {
            Self::Etcd(etcd, _) => etcd,
            Self::File(_) => panic!("an etcd-only case got the file store"),
        }
    }

    /// The etcd endpoints of the connection.
    fn endpoints(&self) -> &[String] {
        match self {
            Self::Etcd(_, endpoints) => endpoints,
            Self::File(_) => panic!("an etcd-only case got the file store"),
        }
    }

    /// Requests counted under `op` so far, in the `Metrics` the connection was built with.
    fn requests(&self, op: &str) -> u64 {
        self.connection().metrics().etcd_requests.with_label_values(&[op]).get()
    }

    /// Removes what the case wrote (the temporary directory goes with the harness).
    async fn cleanup(self) {
        if let Self::Etcd(etcd, _) = self {
            let mut client = etcd.client();
            client.delete(etcd.key(""), Some(DeleteOptions::new().with_prefix())).await.expect("delete test prefix");
        }
    }
}

fn etcd_config(endpoints: Vec<String>, prefix: String) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        prefix,
        username: None,
        password: None,
        tls: None,
        lease_ttl: ferry::config::Duration::from_secs(10),
        history_retention: ferry::config::Duration::from_secs(3600),
    }
}

fn task(topic: &str, partition: i32) -> TaskKey {
    TaskKey { topic: topic.into(), partition }
}

/// A checkpoint at `next` with one sync point, like most tasks most of the time.
fn plain(next: i64) -> Checkpoint {
    let mut position = Position::starting_at(0);
    position.acknowledged(next - 1, next + 99);
    Checkpoint { position, written_at_ms: 1_700_000_000_000 + next }
}

fn written_at(mut checkpoint: Checkpoint, written_at_ms: i64) -> Checkpoint {
    checkpoint.written_at_ms = written_at_ms;
    checkpoint
}

/// A checkpoint at `next` whose sync points fill the bound: thinned, so its older part is coarse.
fn full_history(next: i64) -> Checkpoint {
    let mut position = Position::starting_at(0);
    let mut source = 0;
    while position.sync_points.len() < MAX_SYNC_POINTS || !position.sync_points.iter().any(|point| point.coarse) {
        // Every other source offset is compacted away: each record starts a run of its own.
        position.acknowledged(source, source / 2);
        source += 2;
    }
    position.next_source_offset = next.max(source);
    assert_eq!(position.sync_points.len(), MAX_SYNC_POINTS);
    Checkpoint { position, written_at_ms: 1_700_000_000_000 }
}

/// Tasks of every shape a checkpoint takes.
fn varied_tasks() -> BTreeMap<TaskKey, Checkpoint> {
    let mut gaps = Position::starting_at(0);
    for (source, target) in [(0, 0), (15, 10), (16, 12), (40, 30), (41, 32)] {
        gaps.acknowledged(source, target);
    }
    let coarse = Position {
        next_source_offset: 900,
        next_target_offset: Some(700),
        sync_points: vec![
            SyncPoint { source: 0, target: 0, coarse: true },
            SyncPoint::new(500, 400),
            SyncPoint { source: 600, target: 450, coarse: true },
            SyncPoint::new(800, 600),
        ],
        lost: vec![ferry::replication::progress::LostRange { first: 850, last: 870 }],
        target: Some("eu-west/us-east.orders".to_owned()),
        source_topic_id: Some(ferry::topics::identity::TopicId::from("b6nQ0xKvQm-PZk3c2H1y1A")),
        source_end: Some(1_000),
    };
    BTreeMap::from([
        (task("orders", 0), plain(10)),
        (task("orders", 1), Checkpoint { position: Position::starting_at(42), written_at_ms: 5 }),
        (task("orders.created", 2), Checkpoint { position: gaps, written_at_ms: 6 }),
        (task("payments", 0), Checkpoint { position: coarse, written_at_ms: 7 }),
        (task("payments", 1), full_history(5_000)),
    ])
}

fn batch(tasks: &BTreeMap<TaskKey, Checkpoint>) -> Vec<(TaskKey, Checkpoint)> {
    tasks.iter().map(|(key, checkpoint)| (key.clone(), checkpoint.clone())).collect()
}

/// 10,000 tasks: 50 topics of 200 partitions.
fn ten_thousand(next: i64) -> BTreeMap<TaskKey, Checkpoint> {
    (0..10_000).map(|n| (task(&format!("topic-{:02}", n / 200), n % 200), plain(next + i64::from(n)))).collect()
}

fn group(synced_at_ms: i64, partitions: &[(&str, i32, i64)]) -> GroupOffsets {
    GroupOffsets {
        synced_at_ms,
        partitions: partitions
            .iter()
            .map(|&(topic, partition, source_offset)| SyncedOffset {
                topic: topic.into(),
                partition,
                source_offset,
                target_offset: source_offset + 3,
                not_yet_replicated: 1,
                may_redeliver: 2,
            })
            .collect(),
    }
}

// ---- the contract, for every store ----

async fn empty_flow_loads_empty(harness: Harness) {
    let store = harness.open().await;
    assert!(store.load("never-written").await.unwrap().is_empty());
    assert!(store.load_group_offsets("never-written").await.unwrap().is_empty());
    harness.cleanup().await;
}

async fn saved_tasks_load_back_exactly(harness: Harness) {
    let tasks = varied_tasks();
    let store = harness.open().await;
    store.save("flow", &batch(&tasks)).await.unwrap();
    assert_eq!(store.load("flow").await.unwrap(), tasks);
    harness.cleanup().await;
}

async fn a_later_batch_replaces_only_its_tasks(harness: Harness) {
    let store = harness.open().await;
    let (a, b, c) = (task("t", 0), task("t", 1), task("u", 0));
    store.save("flow", &[(a.clone(), plain(5)), (b.clone(), plain(7)), (c.clone(), plain(9))]).await.unwrap();
    store.save("flow", &[(b.clone(), plain(11))]).await.unwrap();
    let expected = BTreeMap::from([(a.clone(), plain(5)), (b.clone(), plain(11)), (c.clone(), plain(9))]);
    assert_eq!(store.load("flow").await.unwrap(), expected);

    // A new instance that saves before it ever loads must keep what the old one stored.
    drop(store);
    harness.open().await.save("flow", &[(c.clone(), plain(13))]).await.unwrap();
    let expected = BTreeMap::from([(a, plain(5)), (b, plain(11)), (c, plain(13))]);
    assert_eq!(harness.open().await.load("flow").await.unwrap(), expected);
    harness.cleanup().await;
}

async fn flows_are_isolated(harness: Harness) {
    // Names that are prefixes of each other, and one that looks like another flow's side file.
    let flows = ["a", "a-b", "a.b", "ab", "a.groups"];
    let store = harness.open().await;
    for (n, flow) in (0i32..).zip(flows) {
        store.save(flow, &[(task("t", n), plain(100 + i64::from(n)))]).await.unwrap();
        store.save_group_offsets(flow, &format!("g-{flow}"), &group(1, &[("t", n, 50)])).await.unwrap();
    }
    let reopened = harness.open().await;
    for (n, flow) in (0i32..).zip(flows) {
        for store in [&store, &reopened] {
            let expected = BTreeMap::from([(task("t", n), plain(100 + i64::from(n)))]);
            assert_eq!(store.load(flow).await.unwrap(), expected, "checkpoints of flow {flow}");
            let expected = BTreeMap::from([(format!("g-{flow}"), group(1, &[("t", n, 50)]))]);
            assert_eq!(store.load_group_offsets(flow).await.unwrap(), expected, "group offsets of flow {flow}");
        }
    }
    harness.cleanup().await;
}

async fn a_new_instance_loads_what_the_first_saved(harness: Harness) {
    let tasks = varied_tasks();
    let first = harness.open().await;
    first.save("flow", &batch(&tasks)).await.unwrap();
    first.save_group_offsets("flow", "g", &group(3, &[("orders", 0, 7)])).await.unwrap();
    drop(first);
    let second = harness.open().await;
    assert_eq!(second.load("flow").await.unwrap(), tasks);
    assert_eq!(second.load_group_offsets("flow").await.unwrap()["g"], group(3, &[("orders", 0, 7)]));
    harness.cleanup().await;
}

async fn group_offsets_replace_per_group(harness: Harness) {
    let odd = "team a/orders consumer";
    let unicode = "100% ünïcödé";
    let store = harness.open().await;
    store.save_group_offsets("flow", "plain", &group(1, &[("orders", 0, 10)])).await.unwrap();
    store.save_group_offsets("flow", odd, &group(2, &[("orders", 0, 20), ("orders", 1, 21)])).await.unwrap();
    store.save_group_offsets("flow", unicode, &group(3, &[])).await.unwrap();
    store.save_group_offsets("flow", "plain", &group(4, &[("orders", 0, 40)])).await.unwrap();
    store.save_group_offsets("flow-2", "plain", &group(5, &[("other", 0, 50)])).await.unwrap();
    let expected = BTreeMap::from([
        ("plain".to_owned(), group(4, &[("orders", 0, 40)])),
        (odd.to_owned(), group(2, &[("orders", 0, 20), ("orders", 1, 21)])),
        (unicode.to_owned(), group(3, &[])),
    ]);
    assert_eq!(store.load_group_offsets("flow").await.unwrap(), expected);
    assert_eq!(harness.open().await.load_group_offsets("flow").await.unwrap(), expected);
    let other = harness.open().await.load_group_offsets("flow-2").await.unwrap();
    assert_eq!(other, BTreeMap::from([("plain".to_owned(), group(5, &[("other", 0, 50)]))]));
    harness.cleanup().await;
}

async fn ten_thousand_tasks_round_trip(harness: Harness) {
    let tasks = ten_thousand(1_000_000);
    harness.open().await.save("flow", &batch(&tasks)).await.unwrap();
    let loaded = harness.open().await.load("flow").await.unwrap();
    assert_eq!(loaded.len(), 10_000);
    assert_eq!(loaded, tasks);
    harness.cleanup().await;
}

/// Each contract case, once per store: `file::<case>` and `etcd::<case>`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case(super::Harness::file()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    if let Some(harness) = super::Harness::etcd(stringify!($case)).await {
                        super::$case(harness).await;
                    }
                }
            )*
        }
    };
}

contract!(
    empty_flow_loads_empty,
    saved_tasks_load_back_exactly,
    a_later_batch_replaces_only_its_tasks,
    flows_are_isolated,
    a_new_instance_loads_what_the_first_saved,
    group_offsets_replace_per_group,
    ten_thousand_tasks_round_trip,
);

// ---- the etcd store's own promises ----

/// The tasks (and chunk sizes) stored in `member`'s shard of `flow`, read straight from etcd.
async fn shard_of(etcd: &Etcd, flow: &str, member: &str) -> (BTreeSet<TaskKey>, Vec<usize>) {
    let prefix = etcd.key(&format!("checkpoints/{flow}/{member}/"));
    let response = etcd
        .client()
        .kv_client()
        .max_decoding_message_size(64 << 20)
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("read shard");
    let mut tasks = BTreeSet::new();
    let mut sizes = Vec::new();
    for kv in response.kvs() {
        sizes.push(kv.value().len());
        let chunk: serde_json::Value = serde_json::from_slice(kv.value()).expect("chunk is JSON");
        assert_eq!(chunk["member"], member);
        for entry in chunk["tasks"].as_array().expect("tasks") {
            let partition = i32::try_from(entry["partition"].as_i64().expect("partition")).expect("i32");
            tasks.insert(task(entry["topic"].as_str().expect("topic"), partition));
        }
    }
    (tasks, sizes)
}

mod etcd_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn members_saving_one_task_load_the_furthest() {
        let Some(harness) = Harness::etcd("members_saving_one_task").await else { return };
        let (a, b) = (harness.etcd_store("member-a"), harness.etcd_store("member-b"));
        let (t0, t1, t2) = (task("t", 0), task("t", 1), task("t", 2));
        a.save("flow", &[(t0.clone(), written_at(plain(100), 1)), (t1.clone(), plain(50))]).await.unwrap();
        b.save("flow", &[(t0.clone(), written_at(plain(100), 2)), (t1.clone(), plain(70)), (t2.clone(), plain(10))])
            .await
            .unwrap();
        let loaded = a.load("flow").await.unwrap();
        assert_eq!(loaded[&t0], written_at(plain(100), 2), "equal offsets: the later write wins");
        assert_eq!(loaded[&t1], plain(70));
        assert_eq!(loaded[&t2], plain(10));
        a.save("flow", &[(t1.clone(), plain(80))]).await.unwrap();
        assert_eq!(harness.etcd_store("member-c").load("flow").await.unwrap()[&t1], plain(80));
        harness.cleanup().await;
    }

    /// Damaged data spoils only the tasks it may belong to: a damaged entry its own task, an unreadable chunk the
    /// tasks without a readable checkpoint; and a member never loads past damage in its own shard, which it would
    /// overwrite.
    #[tokio::test(flavor = "multi_thread")]
    async fn damaged_data_holds_back_only_the_tasks_it_may_belong_to() {
        let Some(harness) = Harness::etcd("damaged_data").await else { return };
        let (t0, t1, t2) = (task("t", 0), task("t", 1), task("t", 2));
        harness
            .etcd_store("member-a")
            .save("flow", &[(t0.clone(), plain(100)), (t1.clone(), plain(50))])
            .await
            .unwrap();
        // member-a's chunk with t1's checkpoint replaced by something no version of ferry wrote.
        let mut client = harness.connection().client();
        let chunk_key = harness.connection().key("checkpoints/flow/member-a/0000");
        let stored = client.get(chunk_key.clone(), None).await.unwrap().kvs()[0].value().to_vec();
        let mut chunk: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        for entry in chunk["tasks"].as_array_mut().unwrap() {
            if entry["partition"] == 1 {
                entry["next_source_offset"] = serde_json::json!("twelve");
            }
        }
        client.put(chunk_key, serde_json::to_vec(&chunk).unwrap(), None).await.unwrap();

        let (loaded, damage) = harness.etcd_store("member-b").load_readable("flow").await.unwrap();
        assert_eq!(loaded, BTreeMap::from([(t0.clone(), plain(100))]));
        let reason = damage.holds_back(&t1, false).expect("t1 waits");
        assert!(reason.contains("checkpoints/flow/member-a/0000") && reason.contains("t/1"), "{reason}");
        assert_eq!(damage.holds_back(&t0, true), None);
        assert_eq!(damage.holds_back(&t2, false), None, "a damaged entry names its task; others may start");
        assert!(harness.etcd_store("member-b").load("flow").await.is_err(), "load reads all or nothing");
        let own = harness.etcd_store("member-a").load_readable("flow").await.unwrap_err().to_string();
        assert!(own.contains("member-a/0000"), "{own}");

        // A chunk that does not parse at all may hold any task: those without a readable checkpoint wait.
        client.put(harness.connection().key("checkpoints/flow/member-c/0000"), "{not json", None).await.unwrap();
        let (loaded, damage) = harness.etcd_store("member-b").load_readable("flow").await.unwrap();
        assert_eq!(loaded.get(&t0), Some(&plain(100)));
        assert_eq!(damage.holds_back(&t0, true), None, "a task with a readable checkpoint starts from it");
        let reason = damage.holds_back(&t2, false).expect("t2 has no readable checkpoint");
        assert!(reason.contains("member-c/0000"), "{reason}");
        harness.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn ten_thousand_tasks_cost_at_most_two_transactions() {
        let Some(harness) = Harness::etcd("batching").await else { return };
        let store = harness.etcd_store(MEMBER);
        let mut tasks = ten_thousand(1_000_000);
        let (saves, loads) = (harness.requests("checkpoint_save"), harness.requests("checkpoint_load"));
        store.save("flow", &batch(&tasks)).await.unwrap();
        let save_cost = harness.requests("checkpoint_save") - saves;
        assert!(save_cost <= 2, "saving 10,000 tasks took {save_cost} transactions");
        // Before its first save a store reads its own shard once, so it never drops what an earlier run stored.
        assert_eq!(harness.requests("checkpoint_load") - loads, 1);
        assert_eq!(harness.requests("checkpoint_gc"), 0);
        let (_, sizes) = shard_of(harness.connection(), "flow", MEMBER).await;
        assert!(sizes.iter().all(|&size| size <= 256 * 1024), "chunk sizes {sizes:?}");

        // The next interval: 100 tasks moved on.
        let changed: Vec<(TaskKey, Checkpoint)> = tasks
            .iter()
            .step_by(100)
            .map(|(key, checkpoint)| (key.clone(), plain(checkpoint.position.next_source_offset + 500)))
            .collect();
        assert_eq!(changed.len(), 100);
        tasks.extend(changed.iter().cloned());
        let saves = harness.requests("checkpoint_save");
        store.save("flow", &changed).await.unwrap();
        let save_cost = harness.requests("checkpoint_save") - saves;
        assert!(save_cost <= 2, "saving 100 changed tasks took {save_cost} transactions");

        let loads = harness.requests("checkpoint_load");
        assert_eq!(harness.etcd_store("other").load("flow").await.unwrap(), tasks);
        assert_eq!(harness.requests("checkpoint_load") - loads, 1, "a load is one ranged read");
        harness.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn many_keys_are_read_in_pages() {
        let Some(harness) = Harness::etcd("many_keys").await else { return };
        // 40 members' shards and 40 groups: more keys than one page of a ranged read holds.
        let mut expected = BTreeMap::new();
        for n in 0..40 {
            let checkpoint = plain(100 + i64::from(n));
            harness
                .etcd_store(&format!("member-{n}"))
                .save("flow", &[(task("t", n), checkpoint.clone())])
                .await
                .unwrap();
            expected.insert(task("t", n), checkpoint);
        }
        let store = harness.etcd_store(MEMBER);
        for n in 0..40 {
            store.save_group_offsets("flow", &format!("group {n}"), &group(n.into(), &[])).await.unwrap();
        }
        let loads = harness.requests("checkpoint_load");
        assert_eq!(store.load("flow").await.unwrap(), expected);
        assert_eq!(harness.requests("checkpoint_load") - loads, 2, "two pages");
        let groups = store.load_group_offsets("flow").await.unwrap();
        assert_eq!(groups.len(), 40);
        assert_eq!(groups["group 39"], group(39, &[]));
        harness.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn growing_entries_move_between_chunks_without_losing_any() {
        let Some(harness) = Harness::etcd("growing_entries").await else { return };
        let store = harness.etcd_store(MEMBER);
        let small: BTreeMap<TaskKey, Checkpoint> = (0..300).map(|n| (task("t", n), plain(10))).collect();
        store.save("flow", &batch(&small)).await.unwrap();
        let (_, sizes) = shard_of(harness.connection(), "flow", MEMBER).await;
        assert_eq!(sizes.len(), 1);

        // Every task now carries a full sync point history: ~2.8 MB, a dozen chunks, several transactions.
        let grown: BTreeMap<TaskKey, Checkpoint> = (0..300).map(|n| (task("t", n), full_history(5_000))).collect();
        let saves = harness.requests("checkpoint_save");
        store.save("flow", &batch(&grown)).await.unwrap();
        let (stored, sizes) = shard_of(harness.connection(), "flow", MEMBER).await;
        assert!(sizes.len() > 4, "chunk sizes {sizes:?}");
        assert!(sizes.iter().all(|&size| size <= 256 * 1024), "chunk sizes {sizes:?}");
        assert_eq!(stored.len(), 300, "each task stored once");
        let transactions = harness.requests("checkpoint_save") - saves;
        assert!(transactions <= sizes.len().div_ceil(4) as u64, "{transactions} transactions");
        assert_eq!(harness.etcd_store("other").load("flow").await.unwrap(), grown);

        // A restarted member continues its shard: one task moves, nothing else is lost or duplicated.
        let restarted = harness.etcd_store(MEMBER);
        restarted.save("flow", &[(task("t", 7), full_history(6_000))]).await.unwrap();
        let mut expected = grown;
        expected.insert(task("t", 7), full_history(6_000));
        assert_eq!(harness.etcd_store("other").load("flow").await.unwrap(), expected);
        assert_eq!(shard_of(harness.connection(), "flow", MEMBER).await.0.len(), 300);
        harness.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn released_entries_go_after_the_retention_once_another_member_holds_them() {
        let Some(harness) = Harness::etcd("released").await else { return };
        let retention = Duration::from_millis(300);
        let a = harness.etcd_store("member-a").with_released_retention(retention);
        let b = harness.etcd_store("member-b");
        let (t0, t1, t2, t3) = (task("t", 0), task("t", 1), task("t", 2), task("t", 3));
        a.save("flow", &[(t0.clone(), plain(100)), (t1.clone(), plain(100)), (t2.clone(), plain(100))]).await.unwrap();
        // t0 and t1 moved to b, which wrote them; t2 moved too but is idle there, so b has not written it.
        b.save("flow", &[(t0.clone(), plain(100)), (t1.clone(), plain(150))]).await.unwrap();
        a.released("flow", &[t0.clone(), t1.clone(), t2.clone()]).await.unwrap();
        // t1 came back to a.
        a.save("flow", &[(t1.clone(), plain(160))]).await.unwrap();

        a.save("flow", &[(t3.clone(), plain(1))]).await.unwrap();
        let shard = |tasks: &[&TaskKey]| tasks.iter().map(|task| (*task).clone()).collect::<BTreeSet<_>>();
        assert_eq!(shard_of(harness.connection(), "flow", "member-a").await.0, shard(&[&t0, &t1, &t2, &t3]));

        tokio::time::sleep(retention + Duration::from_millis(100)).await;
        a.save("flow", &[(t3.clone(), plain(2))]).await.unwrap();
        assert_eq!(
            shard_of(harness.connection(), "flow", "member-a").await.0,
            shard(&[&t1, &t2, &t3]),
            "t0 is dropped (b holds it as far); t1 was saved again; t2's entry is its only copy"
        );
        let loaded = b.load("flow").await.unwrap();
        assert_eq!(
            (loaded[&t0].clone(), loaded[&t1].clone(), loaded[&t2].clone()),
            (plain(100), plain(160), plain(100))
        );

        // Once b writes t2, a drops it after another retention period.
        b.save("flow", &[(t2.clone(), plain(120))]).await.unwrap();
        tokio::time::sleep(retention + Duration::from_millis(100)).await;
        a.save("flow", &[(t3.clone(), plain(3))]).await.unwrap();
        assert_eq!(shard_of(harness.connection(), "flow", "member-a").await.0, shard(&[&t1, &t3]));
        assert_eq!(b.load("flow").await.unwrap()[&t2], plain(120));
        harness.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn garbage_collection_deletes_only_dominated_shards_of_dead_members() {
        let Some(harness) = Harness::etcd("garbage").await else { return };
        let live = harness.etcd_store("live");
        let bulk: Vec<(TaskKey, Checkpoint)> = (0..3_000).map(|n| (task("bulk", n), plain(20))).collect();
        let (t0, t1, t2, t9) = (task("t", 0), task("t", 1), task("t", 2), task("t", 9));
        let mut live_batch = bulk.clone();
        live_batch.extend([(t0.clone(), plain(100)), (t1.clone(), plain(100)), (t2.clone(), plain(100))]);
        live.save("flow", &live_batch).await.unwrap();

        // Behind the live member everywhere, over several chunks: garbage.
        let behind = harness.etcd_store("dead-behind");
        let mut behind_batch: Vec<_> = bulk.iter().map(|(key, _)| (key.clone(), plain(10))).collect();
        behind_batch.extend([(t0.clone(), plain(90)), (t1.clone(), plain(100))]);
        behind.save("flow", &behind_batch).await.unwrap();
        assert!(shard_of(harness.connection(), "flow", "dead-behind").await.1.len() > 1, "a multi-chunk shard");
        // Holds the only copy of t9.
        harness
            .etcd_store("dead-only")
            .save("flow", &[(t2.clone(), plain(100)), (t9.clone(), plain(5))])
            .await
            .unwrap();
        // Holds the furthest copy of t0.
        harness.etcd_store("dead-ahead").save("flow", &[(t0.clone(), plain(200))]).await.unwrap();
        // A shard of another flow is never touched.
        harness.etcd_store("dead-behind").save("flow-2", &[(t0.clone(), plain(1))]).await.unwrap();

        let live_members = BTreeSet::from(["live".to_owned()]);
        let gcs = harness.requests("checkpoint_gc");
        assert_eq!(live.collect_garbage("flow", &live_members).await.unwrap(), 1);
        assert!(harness.requests("checkpoint_gc") - gcs <= 2, "one read and one transaction");
        assert!(shard_of(harness.connection(), "flow", "dead-behind").await.0.is_empty());
        assert_eq!(shard_of(harness.connection(), "flow", "dead-only").await.0.len(), 2);
        assert_eq!(shard_of(harness.connection(), "flow", "dead-ahead").await.0.len(), 1);
        assert_eq!(shard_of(harness.connection(), "flow-2", "dead-behind").await.0.len(), 1);
        let loaded = live.load("flow").await.unwrap();
        assert_eq!((loaded[&t0].clone(), loaded[&t9].clone()), (plain(200), plain(5)));
        assert_eq!(loaded[&task("bulk", 17)], plain(20));

        // Nothing more to collect; and the collecting member's own shard always counts as live.
        assert_eq!(live.collect_garbage("flow", &live_members).await.unwrap(), 0);
        assert_eq!(live.collect_garbage("flow", &BTreeSet::new()).await.unwrap(), 0);
        assert_eq!(shard_of(harness.connection(), "flow", "live").await.0.len(), 3_003);
        harness.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_opened_read_only_reads_every_shard_and_writes_nothing() {
        let Some(harness) = Harness::etcd("read_only").await else { return };
        let (t0, t1) = (task("t", 0), task("t", 1));
        harness.etcd_store("member-a").save("flow", &[(t0.clone(), plain(10))]).await.unwrap();
        harness.etcd_store("member-b").save("flow", &[(t1.clone(), plain(20))]).await.unwrap();
        harness.etcd_store("member-b").save_group_offsets("flow", "g", &group(5, &[("t", 1, 7)])).await.unwrap();
        let prefix = harness.connection().key("").trim_end_matches('/').to_owned();
        let config = ferry::config::CheckpointConfig {
            store: ferry::config::StoreKind::Etcd,
            etcd: Some(etcd_config(harness.endpoints().to_vec(), prefix.clone())),
            ..Default::default()
        };
        let mut client = harness.connection().client();
        // etcd's revision is global (other tests write too): compare what lies under this case's prefix.
        let revision = |response: etcd_client::GetResponse| {
            let kvs = response.kvs();
            (kvs.len(), kvs.iter().map(etcd_client::KeyValue::mod_revision).max())
        };
        let before = revision(client.get(prefix.clone(), Some(GetOptions::new().with_prefix())).await.unwrap());

        let metrics = Metrics::new(false);
        let reader = ferry::checkpoint::open(&config, ferry::checkpoint::Access::ReadOnly, &metrics).await.unwrap();
        assert_eq!(
            reader.store.load("flow").await.unwrap(),
            BTreeMap::from([(t0.clone(), plain(10)), (t1, plain(20))])
        );
        assert_eq!(reader.store.load_group_offsets("flow").await.unwrap()["g"], group(5, &[("t", 1, 7)]));
        for refused in [
            reader.store.save("flow", &[(t0.clone(), plain(11))]).await,
            reader.store.save_group_offsets("flow", "g", &group(6, &[])).await,
            reader.store.released("flow", &[t0]).await,
        ] {
            assert!(matches!(refused, Err(StoreError::ReadOnly { .. })), "{refused:?}");
        }
        let after = revision(client.get(prefix, Some(GetOptions::new().with_prefix())).await.unwrap());
        assert_eq!(before, after, "a read-only store wrote to etcd");
        harness.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_damaged_chunk_is_reported_with_its_key() {
        let Some(harness) = Harness::etcd("damaged_chunk").await else { return };
        let key = harness.connection().key("checkpoints/flow/m9/0000");
        harness.connection().client().put(key.clone(), "{not json", None).await.unwrap();
        let error = harness.etcd_store(MEMBER).load("flow").await.unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains(&key), "{error}");
        harness.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_etcd_fails_naming_its_endpoint() {
        let metrics = Metrics::new(false);
        let config = etcd_config(vec!["http://127.0.0.1:1".to_owned()], "/ferry-test/unreachable".to_owned());
        // The connection is lazy: the failure shows on the first request.
        let etcd = Etcd::connect(&config, &metrics).await.expect("lazy connect");
        let store = EtcdStore::new(etcd, MEMBER);
        let mut errors = Vec::new();
        for (op, request) in [
            ("load", store.load("flow").map(|outcome| outcome.map(drop)).boxed()),
            ("save", store.save("flow", &[(task("t", 0), plain(1))]).boxed()),
            ("save_group_offsets", store.save_group_offsets("flow", "g", &group(1, &[])).boxed()),
            ("load_group_offsets", store.load_group_offsets("flow").map(|outcome| outcome.map(drop)).boxed()),
        ] {
            let started = Instant::now();
            let error = request.await.expect_err(op);
            assert!(started.elapsed() <= REQUEST_TIMEOUT + Duration::from_secs(1), "{op} took {:?}", started.elapsed());
            errors.push(error);
        }
        for error in errors {
            assert!(matches!(error, StoreError::Etcd(_)), "{error}");
            assert!(error.to_string().contains("http://127.0.0.1:1"), "{error}");
        }
        assert!(metrics.etcd_errors.with_label_values(&["checkpoint_load"]).get() >= 1);
    }
}

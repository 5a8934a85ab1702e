//! The etcd checkpoint store for many members: each member writes its own shard of a flow's checkpoints, packed
//! into a few large chunks, so thousands of tasks cost a few transactions per checkpoint interval.
//!
//! Key layout, under the configured prefix (`<flow>`, `<member>` and `<group>` are percent-encoded, so no segment
//! holds a `/` and one flow's keys never fall under another flow's prefix):
//! - `<prefix>/checkpoints/<flow>/<member>/<chunk>`: `<chunk>` is `0000`, `0001`, ...; the value, at most about
//!   256 KiB, is JSON `{"version":1,"member":"<id>","tasks":[{"topic":..,"partition":..,<checkpoint>}]}` (the file
//!   store's entry shape).
//! - `<prefix>/groups/<flow>/<group>`: JSON of one group's [`GroupOffsets`].
//!
//! Invariant: no stored entry is ahead of what the target acknowledged (each is a snapshot of a
//! [`crate::replication::progress::Position`]), and positions only move forward, so for every task the entry with the greatest
//! next source offset is the newest; any other is older and could only cause duplicates, never loss. Hence a load
//! takes the furthest entry over all members' shards, and an entry is removed (a released task, a dead member's
//! shard) only by a transaction guarded on the exact revisions of the chunks that hold an entry at least as far for
//! the same task: the furthest stored entry of a task never disappears.
//!
//! Roles: this file holds the store, its trait implementation and its etcd requests; `shard` packs this member's
//! entries into chunks, `gc` removes released entries and dead members' shards that others dominate, `codec` is the
//! stored chunk format.

mod codec;
mod gc;
mod shard;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use self::codec::{
    chunk_key, decode_chunks, decode_readable_chunks, is_further, prefix_end, ChunkOut, CHUNK_BYTES, FORMAT_VERSION,
};
use self::gc::Guard;
use self::shard::Shard;
use super::{Checkpoint, CheckpointStore, Damage, GroupOffsets, StoreError, TaskKey};
use crate::coordination::etcd::Etcd;
use crate::coordination::keys::{decode_segment, encode_segment};

/// etcd 3.4's default `--max-txn-ops`; it bounds compares and operations separately.
const MAX_TXN_OPS: usize = 128;
/// Keys and values per transaction: etcd 3.4 refuses requests over 1.5 MiB (`--max-request-bytes`); four full chunks
/// fit, with room left for gRPC framing.
const MAX_TXN_BYTES: usize = 1_100_000;
/// Keys per ranged read: 32 chunks are at most ~8 MiB; larger ranges are read in pages at one revision.
const RANGE_PAGE_KEYS: i64 = 32;
/// Largest response accepted: a page of 32 values of up to etcd's 1.5 MiB each (tonic's default is 4 MiB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Checkpoints of many members in etcd: this member's shard per flow, merged with everyone's on load.
pub struct EtcdStore {
    etcd: Etcd,
    member_id: String,
    released_retention: Duration,
    /// This member's shard of each flow it loaded or saved: the authority on what its chunks hold.
    flows: Mutex<HashMap<String, Shard>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("etcd", &self.etcd)
            .field("member_id", &self.member_id)
            .field("released_retention", &self.released_retention)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// How long a released task's entry is kept by default: the new owner writes its own within an interval.
    pub const DEFAULT_RELEASED_RETENTION: Duration = Duration::from_secs(600);

    /// A store writing the shard of `member_id`, which must be unique among the members sharing `etcd`'s prefix.
    pub fn new(etcd: Etcd, member_id: impl Into<String>) -> Self {
        Self {
            etcd,
            member_id: member_id.into(),
            released_retention: Self::DEFAULT_RELEASED_RETENTION,
            flows: Mutex::new(HashMap::new()),
        }
    }

    /// The same store keeping released tasks' entries for `retention` instead of the default (tests shorten it).
    pub fn with_released_retention(mut self, retention: Duration) -> Self {
        self.released_retention = retention;
        self
    }

    /// The member whose shard this store writes.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Runs `ops` if every guarded key still has its revision; whether it did.
    async fn guarded(&self, op: &'static str, guards: BTreeSet<Guard>, ops: Vec<TxnOp>) -> Result<bool, StoreError> {
        let compares: Vec<Compare> =
            guards.into_iter().map(|(key, revision)| Compare::mod_revision(key, CompareOp::Equal, revision)).collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let response = self.etcd.timed(op, |mut client| async move { client.txn(txn).await }).await?;
        Ok(response.succeeded())
    }

    /// Every key under `prefix`, read at one revision (in pages when there are many), each page counted under `op`.
    async fn range(&self, op: &'static str, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let end = prefix_end(prefix);
        let mut start = prefix.as_bytes().to_vec();
        // 0 reads the newest revision; the first page's revision pins the rest, so the pages form one snapshot.
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(RANGE_PAGE_KEYS).with_revision(revision);
            let key = std::mem::take(&mut start);
            let mut response = self
                .etcd
                .timed(op, |client| async move {
                    client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES).get(key, Some(options)).await
                })
                .await?;
            if revision == 0 {
                revision = response.header().map_or(0, |header| header.revision());
            }
            let more = response.more();
            let page = response.take_kvs();
            match page.last() {
                Some(last) if more => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => {
                    kvs.extend(page);
                    return Ok(kvs);
                }
            }
            kvs.extend(page);
        }
    }

    fn flow_prefix(&self, flow: &str) -> String {
        self.etcd.key(&format!("checkpoints/{}/", encode_segment(flow)))
    }

    fn shard_prefix(&self, flow: &str) -> String {
        format!("{}{}/", self.flow_prefix(flow), encode_segment(&self.member_id))
    }

    fn groups_prefix(&self, flow: &str) -> String {
        self.etcd.key(&format!("groups/{}/", encode_segment(flow)))
    }

    /// Room for entries in one chunk: the chunk size less the envelope around them.
    fn chunk_capacity(&self) -> usize {
        let envelope =
            serde_json::to_vec(&ChunkOut { version: FORMAT_VERSION, member: &self.member_id, tasks: vec![] })
                .map_or(0, |bytes| bytes.len());
        CHUNK_BYTES.saturating_sub(envelope)
    }

    /// This member's shard of `flow`, read from etcd the first time so a save never drops what an earlier run
    /// of this member stored (an idle task is not saved again, yet its entry must stay).
    async fn shard<'a>(&self, flows: &'a mut HashMap<String, Shard>, flow: &str) -> Result<&'a mut Shard, StoreError> {
        match flows.entry(flow.to_owned()) {
            std::collections::hash_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let flow_prefix = self.flow_prefix(flow);
                let stored =
                    decode_chunks(&flow_prefix, self.range("checkpoint_load", &self.shard_prefix(flow)).await?)?;
                let shard =
                    Shard::restore(self.chunk_capacity(), stored.into_iter().map(|chunk| (chunk.index, chunk.tasks)))?;
                Ok(entry.insert(shard))
            }
        }
    }

    /// Writes every dirty chunk of `shard`, chunks that received moved tasks before the chunks they left.
    async fn write_dirty(&self, shard_prefix: &str, shard: &mut Shard) -> Result<(), StoreError> {
        let mut order = shard.write_order().into_iter().peekable();
        // An operation encoded but not fitting the previous transaction opens the next one.
        let mut carried: Option<(usize, usize, Option<TxnOp>)> = None;
        loop {
            let mut ops = Vec::new();
            let mut bytes = 0;
            let mut indices = Vec::new();
            while let Some((index, size, op)) = match carried.take() {
                Some(next) => Some(next),
                None => match order.next() {
                    Some(index) => Some(shard.chunk_op(index, &chunk_key(shard_prefix, index), &self.member_id)?),
                    None => None,
                },
            } {
                if op.is_some() && !ops.is_empty() && (ops.len() >= MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES) {
                    carried = Some((index, size, op));
                    break;
                }
                bytes += size;
                ops.extend(op);
                indices.push(index);
            }
            if indices.is_empty() {
                return Ok(());
            }
            if !ops.is_empty() {
                let txn = Txn::new().and_then(ops);
                self.etcd.timed("checkpoint_save", |mut client| async move { client.txn(txn).await }).await?;
            }
            shard.written(&indices);
        }
    }
}

/// Atomicity: the trait asks that a batch be stored all or none. Here a save writes the chunks of this member's
/// shard that changed; when they fit one transaction (at most 128 chunks and ~1 MiB) the save is all or none,
/// otherwise it is several transactions of whole chunks, and a failure can leave some of the batch stored and the
/// rest at its previous checkpoint. That is still safe: each chunk is all or none and every entry in it is a valid
/// checkpoint, a task moved to another chunk leaves its old chunk only after the new one is written, and a load takes
/// the furthest entry per task. The checkpointer retries what a failed save did not confirm.
#[async_trait]
impl CheckpointStore for EtcdStore {
    async fn load(&self, flow: &str) -> Result<BTreeMap<TaskKey, Checkpoint>, StoreError> {
        let (checkpoints, damage) = self.load_readable(flow).await?;
        let first = damage.tasks.into_values().chain(damage.unattributed).next();
        match first {
            Some(reason) => Err(StoreError::Corrupt { location: format!("flow {flow}"), message: reason }),
            None => Ok(checkpoints),
        }
    }

    async fn load_readable(&self, flow: &str) -> Result<(BTreeMap<TaskKey, Checkpoint>, Damage), StoreError> {
        let mut flows = self.flows.lock().await;
        let flow_prefix = self.flow_prefix(flow);
        let (stored, damaged) =
            decode_readable_chunks(&flow_prefix, self.range("checkpoint_load", &flow_prefix).await?);
        // This member rewrites its own chunks from what it read: damage there would be overwritten, and with it the
        // evidence and the task's position. Such damage stops the whole load, as before.
        if let Some(own) = damaged.iter().find(|damaged| damaged.member.as_deref() == Some(self.member_id.as_str())) {
            return Err(own.clone().into());
        }
        let mut damage = Damage::default();
        for damaged in damaged {
            let reason = format!("{}: {}", damaged.location, damaged.message);
            match damaged.task {
                Some(task) => {
                    damage.tasks.insert(task, reason);
                }
                None => damage.unattributed.push(reason),
            }
        }
        let mut furthest: BTreeMap<TaskKey, Checkpoint> = BTreeMap::new();
        for chunk in &stored {
            for (task, checkpoint) in &chunk.tasks {
                match furthest.get_mut(task) {
                    Some(best) if !is_further(checkpoint, best) => {}
                    Some(best) => *best = checkpoint.clone(),
                    None => {
                        furthest.insert(task.clone(), checkpoint.clone());
                    }
                }
            }
        }
        if !flows.contains_key(flow) {
            // The read already holds this member's shard: adopt it so the first save needs no read of its own.
            let own = stored.into_iter().filter(|chunk| chunk.member == self.member_id);
            let shard = Shard::restore(self.chunk_capacity(), own.map(|chunk| (chunk.index, chunk.tasks)))?;
            flows.insert(flow.to_owned(), shard);
        }
        Ok((furthest, damage))
    }

    async fn save(&self, flow: &str, batch: &[(TaskKey, Checkpoint)]) -> Result<(), StoreError> {
        let mut flows = self.flows.lock().await;
        let shard = self.shard(&mut flows, flow).await?;
        for (task, checkpoint) in batch {
            // A task saved again after its release came back to this member.
            shard.released.remove(task);
            shard.upsert(task, checkpoint)?;
        }
        shard.split_overflowing();
        let shard_prefix = self.shard_prefix(flow);
        self.write_dirty(&shard_prefix, shard).await?;
        // The batch is stored; dropping released entries is housekeeping whose failure the next save retries.
        match self.drop_released(flow, &shard_prefix, shard).await {
            Ok(0) => {}
            Ok(dropped) => debug!(flow, dropped, "released tasks' checkpoints dropped from this member's shard"),
            Err(error) => warn!(flow, %error, "dropping released tasks' checkpoints failed; retried at the next save"),
        }
        Ok(())
    }

    async fn released(&self, flow: &str, tasks: &[TaskKey]) -> Result<(), StoreError> {
        let mut flows = self.flows.lock().await;
        let shard = self.shard(&mut flows, flow).await?;
        let now = Instant::now();
        for task in tasks.iter().filter(|task| shard.entries.contains_key(*task)) {
            shard.released.entry(task.clone()).or_insert(now);
        }
        Ok(())
    }

    async fn load_group_offsets(&self, flow: &str) -> Result<BTreeMap<String, GroupOffsets>, StoreError> {
        let prefix = self.groups_prefix(flow);
        let mut groups = BTreeMap::new();
        for kv in self.range("group_offsets_load", &prefix).await? {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let group = key.strip_prefix(&prefix).filter(|rest| !rest.contains('/')).and_then(decode_segment);
            let Some(group) = group else {
                return Err(StoreError::Corrupt { location: key, message: "not a group offsets key".into() });
            };
            let offsets = serde_json::from_slice(kv.value())
                .map_err(|error| StoreError::Corrupt { location: key.clone(), message: error.to_string() })?;
            groups.insert(group, offsets);
        }
        Ok(groups)
    }

    async fn collect_garbage(&self, flow: &str, live_members: &BTreeSet<String>) -> Result<usize, StoreError> {
        // The inherent method: the shards of departed members.
        EtcdStore::collect_garbage(self, flow, live_members).await
    }

    async fn save_group_offsets(&self, flow: &str, group: &str, offsets: &GroupOffsets) -> Result<(), StoreError> {
        let key = format!("{}{}", self.groups_prefix(flow), encode_segment(group));
        let value = serde_json::to_vec(offsets)
            .map_err(|error| StoreError::Corrupt { location: key.clone(), message: error.to_string() })?;
        self.etcd.timed("group_offsets_save", |mut client| async move { client.put(key, value, None).await }).await?;
        Ok(())
    }
}

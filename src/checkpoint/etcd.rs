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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::{Checkpoint, CheckpointStore, GroupOffsets, StoreError, TaskKey};
use crate::coordination::etcd::Etcd;
use crate::coordination::keys::{decode_segment, encode_segment};

const FORMAT_VERSION: u32 = 1;
/// Target size of a chunk's value: 10,000 plain checkpoints fit in about six, and four fit one transaction.
const CHUNK_BYTES: usize = 256 * 1024;
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

    /// Deletes the shard of every member of `flow` not in `live_members` whose every entry is dominated by an entry
    /// at least as far for the same task in a live member's shard; returns how many shards it deleted.
    ///
    /// This member counts as live whatever `live_members` says. Each deletion is guarded on the revision of every
    /// deleted chunk and of every chunk holding a dominating entry, so neither a concurrent write to the dead shard
    /// nor a concurrent removal of the evidence can make a checkpoint disappear.
    pub async fn collect_garbage(&self, flow: &str, live_members: &BTreeSet<String>) -> Result<usize, StoreError> {
        let flow_prefix = self.flow_prefix(flow);
        let stored = decode_chunks(&flow_prefix, self.range("checkpoint_gc", &flow_prefix).await?)?;
        let is_live = |member: &str| member == self.member_id || live_members.contains(member);
        let evidence = Evidence::new(stored.iter().filter(|chunk| is_live(&chunk.member)));
        let mut dead: BTreeMap<&str, Vec<&StoredChunk>> = BTreeMap::new();
        for chunk in stored.iter().filter(|chunk| !is_live(&chunk.member)) {
            dead.entry(chunk.member.as_str()).or_default().push(chunk);
        }
        let mut deleted = 0;
        'shards: for (member, chunks) in dead {
            // One guard set per chunk: the chunk itself plus the chunks that dominate each of its entries.
            let mut plans = Vec::with_capacity(chunks.len());
            for chunk in chunks {
                let mut guards = BTreeSet::from([(chunk.key.clone(), chunk.mod_revision)]);
                for (task, checkpoint) in &chunk.tasks {
                    match evidence.dominating(task, checkpoint.position.next_source_offset, &guards) {
                        Some(guard) => {
                            guards.insert(guard);
                        }
                        None => {
                            debug!(
                                flow,
                                member,
                                topic = task.topic.as_str(),
                                partition = task.partition,
                                "dead member's shard kept: it holds the furthest checkpoint of a task"
                            );
                            continue 'shards;
                        }
                    }
                }
                if guards.len() > MAX_TXN_OPS {
                    warn!(
                        flow,
                        member,
                        chunk = chunk.key.as_str(),
                        "dead member's chunk kept: its entries are \
                        dominated in more chunks than one transaction can guard"
                    );
                    continue 'shards;
                }
                plans.push((chunk.key.clone(), guards));
            }
            if self.delete_guarded(plans).await? {
                debug!(flow, member, "dead member's dominated shard deleted");
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Deletes the chunks of `plans` in as few guarded transactions as fit; false when a guard failed.
    async fn delete_guarded(&self, plans: Vec<(String, BTreeSet<Guard>)>) -> Result<bool, StoreError> {
        let mut guards = BTreeSet::new();
        let mut ops = Vec::new();
        for (key, chunk_guards) in plans {
            if !ops.is_empty()
                && (ops.len() >= MAX_TXN_OPS || guards.union(&chunk_guards).count() > MAX_TXN_OPS)
                && !self.guarded("checkpoint_gc", std::mem::take(&mut guards), std::mem::take(&mut ops)).await?
            {
                return Ok(false);
            }
            guards.extend(chunk_guards);
            ops.push(TxnOp::delete(key, None));
        }
        if ops.is_empty() {
            return Ok(true);
        }
        self.guarded("checkpoint_gc", guards, ops).await
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

    /// Drops from `shard` the entries released at least a retention period ago whose task another member's shard
    /// holds at least as far, in one transaction guarded on those chunks; returns how many it dropped.
    async fn drop_released(&self, flow: &str, shard_prefix: &str, shard: &mut Shard) -> Result<usize, StoreError> {
        let now = Instant::now();
        let expired: Vec<TaskKey> = shard
            .released
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= self.released_retention)
            .map(|(task, _)| task.clone())
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let flow_prefix = self.flow_prefix(flow);
        let stored = decode_chunks(&flow_prefix, self.range("checkpoint_gc", &flow_prefix).await?)?;
        let evidence = Evidence::new(stored.iter().filter(|chunk| chunk.member != self.member_id));
        let mut by_chunk: BTreeMap<usize, (BTreeSet<TaskKey>, BTreeSet<Guard>)> = BTreeMap::new();
        for task in expired {
            let Some(entry) = shard.entries.get(&task) else {
                shard.released.remove(&task);
                continue;
            };
            let (tasks, guards) = by_chunk.entry(entry.chunk).or_default();
            match evidence.dominating(&task, entry.checkpoint.position.next_source_offset, guards) {
                Some(guard) => {
                    guards.insert(guard);
                    tasks.insert(task);
                }
                // The new owner has not written the task: it writes a task only when its position moves, so an
                // idle task may never be. This entry is its only copy; look again after another retention period.
                None => {
                    shard.released.insert(task, now);
                }
            }
        }
        let mut guards = BTreeSet::new();
        let mut ops = Vec::new();
        let mut bytes = 0;
        let mut applied = Vec::new();
        for (index, (tasks, chunk_guards)) in by_chunk {
            // A dirty chunk's stored value is not what memory holds; it is rewritten by a save first.
            if tasks.is_empty() || shard.chunks[index].dirty {
                continue;
            }
            let key = chunk_key(shard_prefix, index);
            let (size, op) = match shard.encode_chunk(index, &key, &self.member_id, &tasks)? {
                Some(value) => (key.len() + value.len(), TxnOp::put(key, value, None)),
                None => (key.len(), TxnOp::delete(key, None)),
            };
            // What does not fit this transaction waits for the next save.
            if !ops.is_empty()
                && (ops.len() >= MAX_TXN_OPS
                    || bytes + size > MAX_TXN_BYTES
                    || guards.union(&chunk_guards).count() > MAX_TXN_OPS)
            {
                break;
            }
            guards.extend(chunk_guards);
            ops.push(op);
            bytes += size;
            applied.push((index, tasks));
        }
        if ops.is_empty() {
            return Ok(0);
        }
        if !self.guarded("checkpoint_gc", guards, ops).await? {
            debug!(flow, "a chunk holding a newer copy of a released task changed; dropping it at a later save");
            return Ok(0);
        }
        let mut dropped = 0;
        for (index, tasks) in applied {
            for task in &tasks {
                shard.remove(task);
                shard.released.remove(task);
                dropped += 1;
            }
            shard.chunks[index].stored = !shard.chunks[index].tasks.is_empty();
        }
        shard.trim();
        Ok(dropped)
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
        let mut flows = self.flows.lock().await;
        let flow_prefix = self.flow_prefix(flow);
        let stored = decode_chunks(&flow_prefix, self.range("checkpoint_load", &flow_prefix).await?)?;
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
        Ok(furthest)
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

/// A chunk key and the revision it must still have.
type Guard = (String, i64);

/// This member's shard of one flow: its entries, which chunk holds each, and what is not yet written.
#[derive(Debug)]
struct Shard {
    /// Bytes of entries one chunk holds at most (an entry larger than that gets a chunk of its own).
    capacity: usize,
    entries: BTreeMap<TaskKey, Entry>,
    /// Chunk slots by index; an empty slot has no key in etcd once written.
    chunks: Vec<Chunk>,
    /// Tasks this member released, and since when.
    released: BTreeMap<TaskKey, Instant>,
}

#[derive(Debug)]
struct Entry {
    checkpoint: Checkpoint,
    chunk: usize,
    /// Encoded size, with the separating comma.
    bytes: usize,
}

#[derive(Debug, Default)]
struct Chunk {
    tasks: BTreeSet<TaskKey>,
    bytes: usize,
    /// Memory differs from etcd: the chunk must be written.
    dirty: bool,
    /// Its key exists in etcd (as far as this member wrote it).
    stored: bool,
    /// Chunks that received tasks moved out of this one and are not written yet: until they are, this chunk's
    /// stored value holds this shard's only copy of those tasks, so it must not be written before them.
    waits_for: BTreeSet<usize>,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Self { capacity, entries: BTreeMap::new(), chunks: Vec::new(), released: BTreeMap::new() }
    }

    /// The shard as stored; a task found in two chunks (a crash between writing a move's two chunks) keeps its
    /// furthest entry, and the other chunk is rewritten without it.
    fn restore(
        capacity: usize,
        stored: impl IntoIterator<Item = (usize, Vec<(TaskKey, Checkpoint)>)>,
    ) -> Result<Self, StoreError> {
        let mut shard = Self::new(capacity);
        for (index, tasks) in stored {
            shard.slot(index).stored = true;
            // A stored chunk without entries is deleted at the next save.
            shard.chunks[index].dirty = tasks.is_empty();
            for (task, checkpoint) in tasks {
                if let Some(existing) = shard.entries.get(&task) {
                    if !is_further(&checkpoint, &existing.checkpoint) {
                        shard.chunks[index].dirty = true;
                        continue;
                    }
                    let old = existing.chunk;
                    shard.remove(&task);
                    shard.chunks[old].dirty = true;
                }
                let bytes = entry_len(&task, &checkpoint)?;
                let chunk = &mut shard.chunks[index];
                chunk.tasks.insert(task.clone());
                chunk.bytes += bytes;
                shard.entries.insert(task, Entry { checkpoint, chunk: index, bytes });
            }
        }
        Ok(shard)
    }

    fn slot(&mut self, index: usize) -> &mut Chunk {
        if self.chunks.len() <= index {
            self.chunks.resize_with(index + 1, Chunk::default);
        }
        &mut self.chunks[index]
    }

    /// Sets a task's checkpoint; a new task goes into the first chunk with room.
    fn upsert(&mut self, task: &TaskKey, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let bytes = entry_len(task, checkpoint)?;
        if let Some(entry) = self.entries.get_mut(task) {
            let chunk = &mut self.chunks[entry.chunk];
            chunk.bytes = chunk.bytes + bytes - entry.bytes;
            chunk.dirty = true;
            entry.bytes = bytes;
            entry.checkpoint.clone_from(checkpoint);
            return Ok(());
        }
        let chunk = self.place(task, bytes, &BTreeSet::new());
        self.entries.insert(task.clone(), Entry { checkpoint: checkpoint.clone(), chunk, bytes });
        Ok(())
    }

    /// Puts `task` into the first chunk not in `excluded` with room for `bytes` (an empty one always has room).
    fn place(&mut self, task: &TaskKey, bytes: usize, excluded: &BTreeSet<usize>) -> usize {
        let capacity = self.capacity;
        let index = self
            .chunks
            .iter()
            .enumerate()
            .position(|(index, chunk)| {
                !excluded.contains(&index) && (chunk.tasks.is_empty() || chunk.bytes + bytes <= capacity)
            })
            .unwrap_or(self.chunks.len());
        let chunk = self.slot(index);
        chunk.tasks.insert(task.clone());
        chunk.bytes += bytes;
        chunk.dirty = true;
        index
    }

    /// Moves tasks out of chunks whose entries grew past the capacity, into chunks that are not themselves waiting
    /// for a move (which keeps the waits acyclic, so an order that writes destinations first always exists).
    fn split_overflowing(&mut self) {
        let capacity = self.capacity;
        let sources: Vec<usize> = (0..self.chunks.len())
            .filter(|&index| self.chunks[index].bytes > capacity && self.chunks[index].tasks.len() > 1)
            .collect();
        if sources.is_empty() {
            return;
        }
        let excluded: BTreeSet<usize> = (0..self.chunks.len())
            .filter(|index| sources.contains(index) || !self.chunks[*index].waits_for.is_empty())
            .collect();
        for source in sources {
            while self.chunks[source].bytes > capacity && self.chunks[source].tasks.len() > 1 {
                let Some(task) = self.chunks[source].tasks.pop_last() else { break };
                let Some(bytes) = self.entries.get(&task).map(|entry| entry.bytes) else { continue };
                self.chunks[source].bytes -= bytes;
                self.chunks[source].dirty = true;
                let destination = self.place(&task, bytes, &excluded);
                self.chunks[source].waits_for.insert(destination);
                if let Some(entry) = self.entries.get_mut(&task) {
                    entry.chunk = destination;
                }
            }
        }
    }

    /// Dirty chunks in an order where every chunk comes after the chunks it waits for.
    fn write_order(&self) -> Vec<usize> {
        fn depth(chunks: &[Chunk], index: usize, memo: &mut [Option<usize>], visiting: &mut BTreeSet<usize>) -> usize {
            if let Some(known) = memo[index] {
                return known;
            }
            // Waits are acyclic by construction; a cycle would only mean an arbitrary order, never a hang.
            if !visiting.insert(index) {
                return 0;
            }
            let found = chunks[index]
                .waits_for
                .iter()
                .filter(|&&next| next < chunks.len())
                .map(|&next| depth(chunks, next, memo, visiting) + 1)
                .max()
                .unwrap_or(0);
            visiting.remove(&index);
            memo[index] = Some(found);
            found
        }
        let mut memo = vec![None; self.chunks.len()];
        let mut order: Vec<(usize, usize)> = (0..self.chunks.len())
            .filter(|&index| self.chunks[index].dirty)
            .map(|index| (depth(&self.chunks, index, &mut memo, &mut BTreeSet::new()), index))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, index)| index).collect()
    }

    /// The write of chunk `index` under `key`: its size and operation (none for an empty chunk never stored).
    fn chunk_op(&self, index: usize, key: &str, member: &str) -> Result<(usize, usize, Option<TxnOp>), StoreError> {
        Ok(match self.encode_chunk(index, key, member, &BTreeSet::new())? {
            Some(value) => (index, key.len() + value.len(), Some(TxnOp::put(key, value, None))),
            None if self.chunks[index].stored => (index, key.len(), Some(TxnOp::delete(key, None))),
            None => (index, 0, None),
        })
    }

    /// Chunk `index` as JSON without the tasks in `without`; `None` when nothing remains.
    fn encode_chunk(
        &self,
        index: usize,
        key: &str,
        member: &str,
        without: &BTreeSet<TaskKey>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let tasks: Vec<EntryOut<'_>> = self.chunks[index]
            .tasks
            .iter()
            .filter(|task| !without.contains(*task))
            .filter_map(|task| {
                let entry = self.entries.get(task)?;
                Some(EntryOut { topic: &task.topic, partition: task.partition, checkpoint: &entry.checkpoint })
            })
            .collect();
        if tasks.is_empty() {
            return Ok(None);
        }
        serde_json::to_vec(&ChunkOut { version: FORMAT_VERSION, member, tasks })
            .map(Some)
            .map_err(|error| StoreError::Corrupt { location: key.to_owned(), message: error.to_string() })
    }

    /// Chunks `indices` were written: they match etcd now, and chunks waiting for them may follow.
    fn written(&mut self, indices: &[usize]) {
        let written: BTreeSet<usize> = indices.iter().copied().collect();
        for &index in indices {
            let chunk = &mut self.chunks[index];
            chunk.dirty = false;
            chunk.stored = !chunk.tasks.is_empty();
        }
        for chunk in &mut self.chunks {
            chunk.waits_for.retain(|index| !written.contains(index));
        }
        self.trim();
    }

    /// Forgets a task's entry (its chunk's stored value is the caller's business).
    fn remove(&mut self, task: &TaskKey) {
        if let Some(entry) = self.entries.remove(task) {
            let chunk = &mut self.chunks[entry.chunk];
            chunk.tasks.remove(task);
            chunk.bytes -= entry.bytes;
        }
    }

    /// Drops trailing slots that hold nothing here or in etcd.
    fn trim(&mut self) {
        while self.chunks.last().is_some_and(|chunk| chunk.tasks.is_empty() && !chunk.stored && !chunk.dirty) {
            self.chunks.pop();
        }
    }
}

/// Where other shards stand, per task: every entry's next source offset and the chunk holding it.
struct Evidence<'a> {
    tasks: HashMap<&'a TaskKey, Vec<(i64, &'a StoredChunk)>>,
}

impl<'a> Evidence<'a> {
    fn new(chunks: impl Iterator<Item = &'a StoredChunk>) -> Self {
        let mut tasks: HashMap<&TaskKey, Vec<(i64, &StoredChunk)>> = HashMap::new();
        for chunk in chunks {
            for (task, checkpoint) in &chunk.tasks {
                tasks.entry(task).or_default().push((checkpoint.position.next_source_offset, chunk));
            }
        }
        Self { tasks }
    }

    /// A chunk holding `task` at least as far as `next_source_offset`, preferring one already in `guards` so a
    /// transaction guards as few chunks as possible.
    fn dominating(&self, task: &TaskKey, next_source_offset: i64, guards: &BTreeSet<Guard>) -> Option<Guard> {
        let candidates = self.tasks.get(task)?;
        let dominating = || candidates.iter().filter(|(offset, _)| *offset >= next_source_offset);
        dominating()
            .map(|(_, chunk)| (chunk.key.clone(), chunk.mod_revision))
            .find(|candidate| guards.contains(candidate))
            .or_else(|| {
                dominating().max_by_key(|(offset, _)| *offset).map(|(_, chunk)| (chunk.key.clone(), chunk.mod_revision))
            })
    }
}

/// One chunk as read from etcd.
#[derive(Debug)]
struct StoredChunk {
    key: String,
    member: String,
    index: usize,
    mod_revision: i64,
    tasks: Vec<(TaskKey, Checkpoint)>,
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    version: u32,
    member: &'a str,
    tasks: Vec<EntryOut<'a>>,
}

/// One task in a chunk: the file store's entry shape.
#[derive(Serialize)]
struct EntryOut<'a> {
    topic: &'a str,
    partition: i32,
    #[serde(flatten)]
    checkpoint: &'a Checkpoint,
}

#[derive(Deserialize)]
struct ChunkIn {
    version: u32,
    member: String,
    tasks: Vec<EntryIn>,
}

#[derive(Deserialize)]
struct EntryIn {
    topic: String,
    partition: i32,
    #[serde(flatten)]
    checkpoint: Checkpoint,
}

/// Decodes every chunk under `flow_prefix`; anything else there is damage, reported with its key.
fn decode_chunks(flow_prefix: &str, kvs: Vec<KeyValue>) -> Result<Vec<StoredChunk>, StoreError> {
    kvs.into_iter().map(|kv| decode_chunk(flow_prefix, &kv)).collect()
}

fn decode_chunk(flow_prefix: &str, kv: &KeyValue) -> Result<StoredChunk, StoreError> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let corrupt = |message: String| StoreError::Corrupt { location: key.clone(), message };
    let (member, index) = key
        .strip_prefix(flow_prefix)
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| corrupt("not a checkpoint chunk key (<flow>/<member>/<chunk>)".into()))?;
    let member = decode_segment(member).ok_or_else(|| corrupt(format!("member {member:?} is not percent-encoded")))?;
    let index = Some(index)
        .filter(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|index| index.parse::<usize>().ok())
        .ok_or_else(|| corrupt(format!("chunk {index:?} is not a number")))?;
    let chunk: ChunkIn = serde_json::from_slice(kv.value()).map_err(|error| corrupt(error.to_string()))?;
    if chunk.version != FORMAT_VERSION {
        return Err(corrupt(format!("format version {} is not {FORMAT_VERSION}", chunk.version)));
    }
    if chunk.member != member {
        return Err(corrupt(format!("chunk of member {member:?} says it was written by {:?}", chunk.member)));
    }
    Ok(StoredChunk {
        key: key.clone(),
        member,
        index,
        mod_revision: kv.mod_revision(),
        tasks: chunk
            .tasks
            .into_iter()
            .map(|entry| (TaskKey { topic: entry.topic, partition: entry.partition }, entry.checkpoint))
            .collect(),
    })
}

/// Whether `candidate` is further than `current`: a greater next source offset, ties to the later write.
fn is_further(candidate: &Checkpoint, current: &Checkpoint) -> bool {
    (candidate.position.next_source_offset, candidate.written_at_ms)
        > (current.position.next_source_offset, current.written_at_ms)
}

/// The encoded size of one entry in a chunk, with its separating comma.
fn entry_len(task: &TaskKey, checkpoint: &Checkpoint) -> Result<usize, StoreError> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(1);
    serde_json::to_writer(&mut counter, &EntryOut { topic: &task.topic, partition: task.partition, checkpoint })
        .map_err(|error| StoreError::Corrupt {
            location: format!("{}/{}", task.topic, task.partition),
            message: error.to_string(),
        })?;
    Ok(counter.0)
}

fn chunk_key(shard_prefix: &str, index: usize) -> String {
    format!("{shard_prefix}{index:04}")
}

/// The end of the key range of everything under `prefix` (which ends in `/`, so its last byte can be incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::progress::Position;

    fn key(partition: i32) -> TaskKey {
        TaskKey { topic: "orders".into(), partition }
    }

    fn checkpoint(next: i64, sync_points: usize) -> Checkpoint {
        let mut position = Position::starting_at(0);
        for run in 0..sync_points as i64 {
            // Each record lands one target offset further than a contiguous run would: a new sync point each.
            position.acknowledged(run, 2 * run);
        }
        position.next_source_offset = next;
        Checkpoint { position, written_at_ms: 7 }
    }

    #[test]
    fn new_tasks_fill_chunks_up_to_the_capacity() {
        let mut shard = Shard::new(10_000);
        for partition in 0..500 {
            shard.upsert(&key(partition), &checkpoint(1, 1)).unwrap();
        }
        assert!(shard.chunks.len() > 1);
        for chunk in &shard.chunks {
            assert!(chunk.bytes <= 10_000 && chunk.dirty && chunk.waits_for.is_empty());
            let encoded: usize = chunk.tasks.iter().map(|task| shard.entries[task].bytes).sum();
            assert_eq!(encoded, chunk.bytes);
        }
        assert_eq!(shard.chunks.iter().map(|chunk| chunk.tasks.len()).sum::<usize>(), 500);
        let encoded = shard.encode_chunk(0, "k", "m", &BTreeSet::new()).unwrap().unwrap();
        let header = serde_json::to_vec(&ChunkOut { version: 1, member: "m", tasks: vec![] }).unwrap().len();
        // Sizes count one comma per entry; the last entry has none.
        assert_eq!(encoded.len(), header + shard.chunks[0].bytes - 1);
    }

    #[test]
    fn grown_entries_move_to_other_chunks_which_are_written_first() {
        let mut shard = Shard::new(20_000);
        for partition in 0..100 {
            shard.upsert(&key(partition), &checkpoint(1, 1)).unwrap();
        }
        let indices: Vec<usize> = (0..shard.chunks.len()).collect();
        shard.written(&indices);
        let before = shard.chunks.len();
        // Every task gains sync points: chunks overflow and move tasks out.
        for partition in 0..100 {
            shard.upsert(&key(partition), &checkpoint(2, 20)).unwrap();
        }
        shard.split_overflowing();
        assert!(shard.chunks.len() > before);
        for (index, chunk) in shard.chunks.iter().enumerate() {
            assert!(chunk.bytes <= 20_000 || chunk.tasks.len() == 1, "chunk {index} overflows");
            for task in &chunk.tasks {
                assert_eq!(shard.entries[task].chunk, index);
            }
        }
        let order = shard.write_order();
        let position = |index: usize| order.iter().position(|&at| at == index).unwrap();
        for (index, chunk) in shard.chunks.iter().enumerate() {
            for &destination in &chunk.waits_for {
                assert!(position(destination) < position(index), "{destination} must be written before {index}");
            }
        }
        shard.written(&order);
        assert!(shard.chunks.iter().all(|chunk| !chunk.dirty && chunk.waits_for.is_empty()));
    }

    #[test]
    fn restoring_a_task_found_in_two_chunks_keeps_the_furthest_and_rewrites_the_other() {
        let stored = vec![
            (0, vec![(key(0), checkpoint(5, 1)), (key(1), checkpoint(9, 1))]),
            (1, vec![(key(1), checkpoint(8, 1))]),
            (2, vec![(key(2), checkpoint(3, 1))]),
            (4, vec![]),
        ];
        let shard = Shard::restore(10_000, stored).unwrap();
        assert_eq!(shard.entries[&key(1)].checkpoint.position.next_source_offset, 9);
        assert_eq!(shard.entries[&key(1)].chunk, 0);
        assert!(!shard.chunks[0].dirty && shard.chunks[1].dirty && !shard.chunks[2].dirty);
        assert!(!shard.chunks[3].stored, "a gap in the numbering is an empty slot");
        assert!(shard.chunks[4].stored && shard.chunks[4].dirty, "an empty stored chunk is deleted");
        assert!(shard.chunk_op(1, "k", "m").unwrap().2.is_some(), "chunk 1 is deleted: it holds nothing now");
    }
}

//! Garbage: entries of this member's shard that it released, and whole shards of members that left, removed only
//! where another shard holds the same task at least as far.
//!
//! Invariant: every delete is one transaction guarded on the revision of each chunk it changes and of each chunk
//! holding a dominating entry, so the furthest stored entry of a task never disappears, whatever runs concurrently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use etcd_client::TxnOp;
use tracing::{debug, warn};

use super::codec::{chunk_key, decode_chunks, StoredChunk};
use super::shard::Shard;
use super::{EtcdStore, MAX_TXN_BYTES, MAX_TXN_OPS};
use crate::checkpoint::{StoreError, TaskKey};

/// A chunk key and the revision it must still have.
pub(super) type Guard = (String, i64);

impl EtcdStore {
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

    /// Drops from `shard` the entries released at least a retention period ago whose task another member's shard
    /// holds at least as far, in one transaction guarded on those chunks; returns how many it dropped.
    pub(super) async fn drop_released(
        &self,
        flow: &str,
        shard_prefix: &str,
        shard: &mut Shard,
    ) -> Result<usize, StoreError> {
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

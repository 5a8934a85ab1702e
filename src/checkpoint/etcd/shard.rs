//! This member's shard of a flow in memory: which chunk holds each task's entry, packing new and grown entries
//! into chunks of bounded size, and the order in which dirty chunks must be written.
//!
//! Invariant: a task moved out of a chunk stays in that chunk's stored value until the chunk it moved to is
//! written (a chunk waits for its destinations), so at every moment some stored chunk holds the task's entry.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use etcd_client::TxnOp;

use super::codec::{entry_len, is_further, ChunkOut, EntryOut, FORMAT_VERSION};
use crate::checkpoint::{Checkpoint, StoreError, TaskKey};

/// This member's shard of one flow: its entries, which chunk holds each, and what is not yet written.
#[derive(Debug)]
pub(super) struct Shard {
    /// Bytes of entries one chunk holds at most (an entry larger than that gets a chunk of its own).
    capacity: usize,
    pub(super) entries: BTreeMap<TaskKey, Entry>,
    /// Chunk slots by index; an empty slot has no key in etcd once written.
    pub(super) chunks: Vec<Chunk>,
    /// Tasks this member released, and since when.
    pub(super) released: BTreeMap<TaskKey, Instant>,
}

/// One task's entry: its checkpoint and the chunk slot holding it.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) checkpoint: Checkpoint,
    pub(super) chunk: usize,
    /// Encoded size, with the separating comma.
    bytes: usize,
}

/// One chunk slot: the tasks it holds, their encoded size, and how it stands against etcd.
#[derive(Debug, Default)]
pub(super) struct Chunk {
    pub(super) tasks: BTreeSet<TaskKey>,
    bytes: usize,
    /// Memory differs from etcd: the chunk must be written.
    pub(super) dirty: bool,
    /// Its key exists in etcd (as far as this member wrote it).
    pub(super) stored: bool,
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
    pub(super) fn restore(
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
    pub(super) fn upsert(&mut self, task: &TaskKey, checkpoint: &Checkpoint) -> Result<(), StoreError> {
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
    pub(super) fn split_overflowing(&mut self) {
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
    pub(super) fn write_order(&self) -> Vec<usize> {
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
    pub(super) fn chunk_op(
        &self,
        index: usize,
        key: &str,
        member: &str,
    ) -> Result<(usize, usize, Option<TxnOp>), StoreError> {
        Ok(match self.encode_chunk(index, key, member, &BTreeSet::new())? {
            Some(value) => (index, key.len() + value.len(), Some(TxnOp::put(key, value, None))),
            None if self.chunks[index].stored => (index, key.len(), Some(TxnOp::delete(key, None))),
            None => (index, 0, None),
        })
    }

    /// Chunk `index` as JSON without the tasks in `without`; `None` when nothing remains.
    pub(super) fn encode_chunk(
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
    pub(super) fn written(&mut self, indices: &[usize]) {
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
    pub(super) fn remove(&mut self, task: &TaskKey) {
        if let Some(entry) = self.entries.remove(task) {
            let chunk = &mut self.chunks[entry.chunk];
            chunk.tasks.remove(task);
            chunk.bytes -= entry.bytes;
        }
    }

    /// Drops trailing slots that hold nothing here or in etcd.
    pub(super) fn trim(&mut self) {
        while self.chunks.last().is_some_and(|chunk| chunk.tasks.is_empty() && !chunk.stored && !chunk.dirty) {
            self.chunks.pop();
        }
    }
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

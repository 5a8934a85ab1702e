//! Checkpoint stores: where tasks' durable progress lives (a local directory, or etcd for many members), and the
//! checkpointer that writes it in batches.
//!
//! Invariant: a stored checkpoint never claims more than the target acknowledged, because it is always a
//! snapshot of a [`crate::replication::progress::Position`].

mod etcd;
mod file;
mod open;
mod writer;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use etcd::EtcdStore;
pub use file::FileStore;
pub use open::{location, open, Access, OpenedStore};
pub use writer::Checkpointer;

use crate::replication::progress::{Position, TaskId};

/// A task inside one flow: source topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
}

impl From<&TaskId> for TaskKey {
    /// The store's key of a task: its flow is the store's namespace, so only topic and partition remain.
    fn from(id: &TaskId) -> Self {
        TaskKey { topic: id.topic.to_string(), partition: id.partition }
    }
}

/// A task's checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The acknowledged position.
    #[serde(flatten)]
    pub position: Position,
    /// Wall-clock time of the write, milliseconds since the Unix epoch.
    pub written_at_ms: i64,
}

/// Errors of a checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's medium failed (disk, network); the write may be retried.
    #[error("checkpoint store I/O failed at {location}: {source}")]
    Io {
        /// File or endpoint involved.
        location: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Stored data could not be decoded; it was written by something else or is damaged.
    #[error("checkpoint data at {location} is unreadable: {message}")]
    Corrupt {
        /// File or key involved.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// etcd failed or did not answer in time; the request may be retried.
    #[error(transparent)]
    Etcd(#[from] crate::coordination::etcd::EtcdError),
    /// The store was opened read-only (a one-shot command) and was asked to write.
    #[error("{location} is open read-only: cannot {operation}")]
    ReadOnly {
        /// What was asked.
        operation: &'static str,
        /// The store, for the message.
        location: String,
    },
    /// The config chose a store whose section is missing (validation refuses such a config).
    #[error("{key} is required by the configured checkpoint store")]
    NotConfigured {
        /// The missing section's key path.
        key: &'static str,
    },
}

/// Durable storage of task checkpoints, per flow.
#[async_trait]
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Every checkpoint stored for `flow`; any damaged data is an error.
    async fn load(&self, flow: &str) -> Result<BTreeMap<TaskKey, Checkpoint>, StoreError>;

    /// Every readable checkpoint stored for `flow`, and what could not be read: how a member starting tasks keeps
    /// damaged data from stopping the tasks it does not belong to. The default reads all or nothing.
    async fn load_readable(&self, flow: &str) -> Result<(BTreeMap<TaskKey, Checkpoint>, Damage), StoreError> {
        Ok((self.load(flow).await?, Damage::default()))
    }

    /// Stores a batch of checkpoints of one flow atomically: all or none. ([`EtcdStore`] relaxes this to all or
    /// none per chunk for a batch larger than one transaction; its impl says why that is safe.)
    async fn save(&self, flow: &str, batch: &[(TaskKey, Checkpoint)]) -> Result<(), StoreError>;

    /// The consumer group offsets last synced for `flow`, by group.
    async fn load_group_offsets(&self, flow: &str) -> Result<BTreeMap<String, GroupOffsets>, StoreError>;

    /// Replaces the synced offsets of one group of `flow`.
    async fn save_group_offsets(&self, flow: &str, group: &str, offsets: &GroupOffsets) -> Result<(), StoreError>;

    /// This member no longer runs `tasks` of `flow`: call it after their last checkpoint was saved, when they move
    /// to another member. A store shared by many members may later drop their entries once the new owner holds its
    /// own; a later save of such a task (it came back) cancels its release. The default does nothing.
    async fn released(&self, _flow: &str, _tasks: &[TaskKey]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Deletes what members not in `live_members` stored for `flow` once nothing of it is the furthest checkpoint
    /// of a task any more; returns how many members' entries it deleted. Run by the controller. The default (a
    /// store of one member) has nothing to collect.
    async fn collect_garbage(&self, _flow: &str, _live_members: &BTreeSet<String>) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// Stored checkpoint data of a flow that could not be read: the tasks it may belong to must not start from
/// scratch, or they would replicate their partitions again from the beginning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damage {
    /// Tasks whose own entry is damaged, with where and why.
    pub tasks: BTreeMap<TaskKey, String>,
    /// Damaged data that names no readable task (a chunk that does not parse), where and why: any task without a
    /// readable checkpoint may be in it.
    pub unattributed: Vec<String>,
}

impl Damage {
    /// Why `task`, whose readable checkpoint is `found`, must wait; `None` when it may start.
    pub fn holds_back(&self, task: &TaskKey, found: bool) -> Option<String> {
        if let Some(reason) = self.tasks.get(task) {
            return Some(format!("its checkpoint data is damaged: {reason}"));
        }
        match self.unattributed.first() {
            Some(reason) if !found => Some(format!(
                "it has no readable checkpoint and the flow holds damaged checkpoint data that may be its: {reason}"
            )),
            _ => None,
        }
    }
}

/// A consumer group's offsets as last synced: where it was on the source and where that is on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsets {
    /// When the source offsets were read, milliseconds since the Unix epoch.
    pub synced_at_ms: i64,
    /// Per partition.
    pub partitions: Vec<SyncedOffset>,
}

/// One partition of a synced group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedOffset {
    /// Source topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset on the source.
    pub source_offset: i64,
    /// Its translation on the target.
    pub target_offset: i64,
    /// Source records before it the target did not have yet.
    pub not_yet_replicated: i64,
    /// Records a group resuming there may see again (thinned-out sync points), at most.
    #[serde(default)]
    pub may_redeliver: i64,
}

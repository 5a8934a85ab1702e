//! The one way to open the configured checkpoint store, for `ferry run` and the one-shot commands alike.
//!
//! Invariant: a store opened with [`Access::ReadOnly`] changes nothing anywhere: it creates no local directory,
//! writes no etcd key and takes no lease, and refuses every write with [`StoreError::ReadOnly`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Checkpoint, CheckpointStore, EtcdStore, FileStore, GroupOffsets, StoreError, TaskKey};
use crate::config::{CheckpointConfig, StoreKind};
use crate::coordination::etcd::Etcd;
use crate::ops::metrics::Metrics;

/// What the opener may do with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A running member: it writes its own checkpoints (its etcd shard, or the file store's directory, created if
    /// missing). The id must be unique among the members sharing the store.
    Member(String),
    /// A one-shot command (`translate`, `failover`, `failback`): it only reads.
    ReadOnly,
}

/// An opened store, and the etcd connection behind it, which a member reuses for coordination.
#[derive(Debug, Clone)]
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn CheckpointStore>,
    /// The etcd connection the store uses; `None` for the file store.
    pub etcd: Option<Etcd>,
}

/// Opens the store `config` names (`checkpoint.store`) with `access`; etcd requests count in `metrics`.
pub async fn open(config: &CheckpointConfig, access: Access, metrics: &Metrics) -> Result<OpenedStore, StoreError> {
    match (config.store, &access) {
        (StoreKind::File, Access::Member(_)) => {
            Ok(OpenedStore { store: Arc::new(FileStore::open(&config.path)?), etcd: None })
        }
        (StoreKind::File, Access::ReadOnly) => Ok(OpenedStore {
            store: Arc::new(ReadOnly { inner: FileStore::existing(&config.path), location: location(config) }),
            etcd: None,
        }),
        (StoreKind::Etcd, _) => {
            let etcd_config = config.etcd.as_ref().ok_or(StoreError::NotConfigured { key: "checkpoint.etcd" })?;
            let etcd = Etcd::connect(etcd_config, metrics).await?;
            let store: Arc<dyn CheckpointStore> = match access {
                Access::Member(id) => Arc::new(EtcdStore::new(etcd.clone(), id)),
                // A reader's shard is never written, so its id only has to differ from the members' ids.
                Access::ReadOnly => Arc::new(ReadOnly {
                    inner: EtcdStore::new(etcd.clone(), "ferry-read-only"),
                    location: location(config),
                }),
            };
            Ok(OpenedStore { store, etcd: Some(etcd) })
        }
    }
}

/// Where the configured store keeps its data, for messages: the directory, or etcd's endpoints and prefix.
pub fn location(config: &CheckpointConfig) -> String {
    match (config.store, &config.etcd) {
        (StoreKind::Etcd, Some(etcd)) => {
            format!("the etcd store at {} under {}", etcd.endpoints.join(","), etcd.prefix)
        }
        (StoreKind::Etcd, None) => "the etcd store (not configured)".to_owned(),
        (StoreKind::File, _) => format!("the file store at {}", config.path.display()),
    }
}

/// A store that passes reads through and refuses writes.
#[derive(Debug)]
struct ReadOnly<S> {
    inner: S,
    location: String,
}

impl<S> ReadOnly<S> {
    fn refuse(&self, operation: &'static str) -> StoreError {
        StoreError::ReadOnly { operation, location: self.location.clone() }
    }
}

#[async_trait]
impl<S: CheckpointStore> CheckpointStore for ReadOnly<S> {
    async fn load(&self, flow: &str) -> Result<BTreeMap<TaskKey, Checkpoint>, StoreError> {
        self.inner.load(flow).await
    }

    async fn save(&self, _flow: &str, _batch: &[(TaskKey, Checkpoint)]) -> Result<(), StoreError> {
        Err(self.refuse("save checkpoints"))
    }

    async fn load_group_offsets(&self, flow: &str) -> Result<BTreeMap<String, GroupOffsets>, StoreError> {
        self.inner.load_group_offsets(flow).await
    }

    async fn save_group_offsets(&self, _flow: &str, _group: &str, _offsets: &GroupOffsets) -> Result<(), StoreError> {
        Err(self.refuse("save group offsets"))
    }

    async fn released(&self, _flow: &str, _tasks: &[TaskKey]) -> Result<(), StoreError> {
        Err(self.refuse("release tasks"))
    }

    async fn collect_garbage(&self, _flow: &str, _live_members: &BTreeSet<String>) -> Result<usize, StoreError> {
        Err(self.refuse("collect garbage"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::progress::Position;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_read_only_file_store_creates_nothing_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let config = CheckpointConfig { path: dir.path().join("ferry-state"), ..CheckpointConfig::default() };
        let opened = open(&config, Access::ReadOnly, &Metrics::new(false)).await.unwrap();
        assert!(opened.etcd.is_none());
        assert!(opened.store.load("flow").await.unwrap().is_empty());
        assert!(opened.store.load_group_offsets("flow").await.unwrap().is_empty());
        let checkpoint = Checkpoint { position: Position::starting_at(3), written_at_ms: 1 };
        let task = TaskKey { topic: "t".into(), partition: 0 };
        let refused = opened.store.save("flow", &[(task, checkpoint)]).await.unwrap_err();
        assert!(matches!(refused, StoreError::ReadOnly { .. }), "{refused}");
        assert!(refused.to_string().contains("ferry-state"), "{refused}");
        assert!(!config.path.exists(), "a read-only open created the state directory");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_read_only_file_store_reads_what_a_member_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let config = CheckpointConfig { path: dir.path().join("state"), ..CheckpointConfig::default() };
        let metrics = Metrics::new(false);
        let member = open(&config, Access::Member("m".into()), &metrics).await.unwrap();
        let checkpoint = Checkpoint { position: Position::starting_at(7), written_at_ms: 1 };
        let task = TaskKey { topic: "t".into(), partition: 2 };
        member.store.save("flow", &[(task.clone(), checkpoint.clone())]).await.unwrap();
        let reader = open(&config, Access::ReadOnly, &metrics).await.unwrap();
        assert_eq!(reader.store.load("flow").await.unwrap(), BTreeMap::from([(task, checkpoint)]));
    }
}

//! The embedded checkpoint store for a single member: one JSON file per flow in one directory, and one file of
//! synced group offsets per flow in its `groups/` subdirectory.
//!
//! Invariant: a file is replaced only by an atomic rename of a fully written and synced temporary file, so a crash
//! leaves either the old or the new checkpoints, never a torn file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{Checkpoint, CheckpointStore, GroupOffsets, StoreError, TaskKey};

/// Checkpoints in `<dir>/<flow>.json`, synced group offsets in `<dir>/groups/<flow>.json`.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    /// What each flow's file holds, so a batch of a few tasks does not need a read before the write.
    flows: Mutex<HashMap<String, BTreeMap<TaskKey, Checkpoint>>>,
}

#[derive(Serialize, Deserialize)]
struct FlowFile {
    version: u32,
    tasks: Vec<StoredTask>,
}

#[derive(Serialize, Deserialize)]
struct StoredTask {
    topic: String,
    partition: i32,
    #[serde(flatten)]
    checkpoint: Checkpoint,
}

const FORMAT_VERSION: u32 = 1;
/// Subdirectory of the group offsets files. Group offsets used to live in `<dir>/<flow>.groups.json`, which is also
/// the checkpoints file of a flow named `<flow>.groups`; a flow name never holds `/`, so a subdirectory cannot clash.
const GROUPS_DIR: &str = "groups";

impl FileStore {
    /// A store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let groups = dir.join(GROUPS_DIR);
        std::fs::create_dir_all(&groups).map_err(|source| io_error(&groups, source))?;
        Ok(Self { dir, flows: Mutex::new(HashMap::new()) })
    }

    /// A store in `dir` for reading, which creates nothing: a missing directory holds no checkpoints.
    pub fn existing(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), flows: Mutex::new(HashMap::new()) }
    }

    fn flow_path(&self, flow: &str) -> PathBuf {
        self.dir.join(format!("{flow}.json"))
    }

    fn read_flow(&self, flow: &str) -> Result<BTreeMap<TaskKey, Checkpoint>, StoreError> {
        let path = self.flow_path(flow);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => return Err(io_error(&path, source)),
        };
        let file: FlowFile = serde_json::from_slice(&bytes).map_err(|error| StoreError::Corrupt {
            location: path.display().to_string(),
            message: error.to_string(),
        })?;
        if file.version != FORMAT_VERSION {
            return Err(StoreError::Corrupt {
                location: path.display().to_string(),
                message: format!("format version {} is not {FORMAT_VERSION}", file.version),
            });
        }
        Ok(file
            .tasks
            .into_iter()
            .map(|task| (TaskKey { topic: task.topic, partition: task.partition }, task.checkpoint))
            .collect())
    }

    fn write_flow(&self, flow: &str, tasks: &BTreeMap<TaskKey, Checkpoint>) -> Result<(), StoreError> {
        let file = FlowFile {
            version: FORMAT_VERSION,
            tasks: tasks
                .iter()
                .map(|(key, checkpoint)| StoredTask {
                    topic: key.topic.clone(),
                    partition: key.partition,
                    checkpoint: checkpoint.clone(),
                })
                .collect(),
        };
        replace_file(&self.dir, &format!("{flow}.json"), &file)
    }

    fn groups_dir(&self) -> PathBuf {
        self.dir.join(GROUPS_DIR)
    }

    fn read_groups(&self, flow: &str) -> Result<BTreeMap<String, GroupOffsets>, StoreError> {
        let path = self.groups_dir().join(format!("{flow}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| StoreError::Corrupt {
                location: path.display().to_string(),
                message: error.to_string(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => self.read_legacy_groups(flow),
            Err(source) => Err(io_error(&path, source)),
        }
    }

    /// Group offsets from the old `<dir>/<flow>.groups.json`, until the first save writes the new file. That name
    /// may instead hold the checkpoints of a flow named `<flow>.groups`, so what does not read as group offsets is
    /// not ours and counts as none (and is never deleted).
    fn read_legacy_groups(&self, flow: &str) -> Result<BTreeMap<String, GroupOffsets>, StoreError> {
        let path = self.dir.join(format!("{flow}.groups.json"));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => return Err(io_error(&path, source)),
        };
        Ok(serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::warn!(path = %path.display(), %error, "not read as group offsets: it is not in their format");
            BTreeMap::new()
        }))
    }
}

/// Replaces `<dir>/<name>` with `value` as JSON: temporary file, fsync, rename, directory fsync.
fn replace_file(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), StoreError> {
    let path = dir.join(name);
    let bytes = serde_json::to_vec(value)
        .map_err(|error| StoreError::Corrupt { location: path.display().to_string(), message: error.to_string() })?;
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut out = std::fs::File::create(&temporary).map_err(|source| io_error(&temporary, source))?;
    out.write_all(&bytes).and_then(|()| out.sync_all()).map_err(|source| io_error(&temporary, source))?;
    drop(out);
    std::fs::rename(&temporary, &path).map_err(|source| io_error(&path, source))?;
    // The rename itself is only durable once the directory entry is synced.
    std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(|source| io_error(dir, source))
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io { location: path.display().to_string(), source }
}

#[async_trait]
impl CheckpointStore for FileStore {
    async fn load(&self, flow: &str) -> Result<BTreeMap<TaskKey, Checkpoint>, StoreError> {
        let mut flows = self.flows.lock().await;
        let tasks = tokio::task::block_in_place(|| self.read_flow(flow))?;
        flows.insert(flow.to_owned(), tasks.clone());
        Ok(tasks)
    }

    async fn load_group_offsets(&self, flow: &str) -> Result<BTreeMap<String, GroupOffsets>, StoreError> {
        let _guard = self.flows.lock().await;
        tokio::task::block_in_place(|| self.read_groups(flow))
    }

    async fn save_group_offsets(&self, flow: &str, group: &str, offsets: &GroupOffsets) -> Result<(), StoreError> {
        let _guard = self.flows.lock().await;
        tokio::task::block_in_place(|| {
            let mut groups = self.read_groups(flow)?;
            groups.insert(group.to_owned(), offsets.clone());
            replace_file(&self.groups_dir(), &format!("{flow}.json"), &groups)
        })
    }

    async fn save(&self, flow: &str, batch: &[(TaskKey, Checkpoint)]) -> Result<(), StoreError> {
        let mut flows = self.flows.lock().await;
        let current = match flows.get(flow) {
            Some(current) => current.clone(),
            None => tokio::task::block_in_place(|| self.read_flow(flow))?,
        };
        let mut next = current;
        for (key, checkpoint) in batch {
            next.insert(key.clone(), checkpoint.clone());
        }
        tokio::task::block_in_place(|| self.write_flow(flow, &next))?;
        flows.insert(flow.to_owned(), next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::progress::Position;

    fn checkpoint(next: i64) -> Checkpoint {
        let mut position = Position::starting_at(0);
        position.acknowledged(next - 1, next + 9);
        Checkpoint { position, written_at_ms: 1 }
    }

    fn key(topic: &str, partition: i32) -> TaskKey {
        TaskKey { topic: topic.into(), partition }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn saved_batches_merge_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert!(store.load("flow-a").await.unwrap().is_empty());
        store.save("flow-a", &[(key("t", 0), checkpoint(5)), (key("t", 1), checkpoint(7))]).await.unwrap();
        store.save("flow-a", &[(key("t", 0), checkpoint(9))]).await.unwrap();
        store.save("flow-b", &[(key("t", 0), checkpoint(1))]).await.unwrap();

        let reopened = FileStore::open(dir.path()).unwrap();
        let flow_a = reopened.load("flow-a").await.unwrap();
        assert_eq!(flow_a.len(), 2);
        assert_eq!(flow_a[&key("t", 0)], checkpoint(9));
        assert_eq!(flow_a[&key("t", 1)], checkpoint(7));
        assert_eq!(reopened.load("flow-b").await.unwrap()[&key("t", 0)], checkpoint(1));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn group_offsets_move_out_of_the_way_of_a_flow_named_like_their_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = GroupOffsets { synced_at_ms: 3, partitions: Vec::new() };
        let legacy = BTreeMap::from([("g".to_owned(), offsets.clone())]);
        std::fs::write(dir.path().join("old.groups.json"), serde_json::to_vec(&legacy).unwrap()).unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load_group_offsets("old").await.unwrap(), legacy, "the old file is still read");

        // Flow "a.groups" has the old group offsets file name of flow "a".
        store.save("a.groups", &[(key("t", 0), checkpoint(5))]).await.unwrap();
        assert!(store.load_group_offsets("a").await.unwrap().is_empty());
        store.save_group_offsets("a", "g", &offsets).await.unwrap();
        assert_eq!(store.load_group_offsets("a").await.unwrap(), legacy);
        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(reopened.load("a.groups").await.unwrap()[&key("t", 0)], checkpoint(5));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_damaged_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("flow-a.json"), b"{not json").unwrap();
        let error = FileStore::open(dir.path()).unwrap().load("flow-a").await.unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("flow-a.json"), "{error}");
    }
}

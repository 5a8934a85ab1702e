//! The stored chunk format: a chunk's key (`<flow>/<member>/<chunk>` under the store's prefix) and its JSON value
//! `{"version":1,"member":"<id>","tasks":[...]}`, whose entries have the file store's shape.
//!
//! Invariant: a chunk decodes only if its key names a percent-encoded member and a numbered chunk, its version is
//! [`FORMAT_VERSION`] and the member it names is the one in its key; anything else is reported as damage.

use etcd_client::KeyValue;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, StoreError, TaskKey};
use crate::coordination::keys::decode_segment;

/// Version of the chunk value format; a chunk of another version is damage.
pub(super) const FORMAT_VERSION: u32 = 1;
/// Target size of a chunk's value: 10,000 plain checkpoints fit in about six, and four fit one transaction.
pub(super) const CHUNK_BYTES: usize = 256 * 1024;

/// One chunk as read from etcd.
#[derive(Debug)]
pub(super) struct StoredChunk {
    pub(super) key: String,
    pub(super) member: String,
    pub(super) index: usize,
    pub(super) mod_revision: i64,
    pub(super) tasks: Vec<(TaskKey, Checkpoint)>,
}

/// A chunk's value as written.
#[derive(Serialize)]
pub(super) struct ChunkOut<'a> {
    pub(super) version: u32,
    pub(super) member: &'a str,
    pub(super) tasks: Vec<EntryOut<'a>>,
}

/// One task in a chunk: the file store's entry shape.
#[derive(Serialize)]
pub(super) struct EntryOut<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: i32,
    #[serde(flatten)]
    pub(super) checkpoint: &'a Checkpoint,
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
pub(super) fn decode_chunks(flow_prefix: &str, kvs: Vec<KeyValue>) -> Result<Vec<StoredChunk>, StoreError> {
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
pub(super) fn is_further(candidate: &Checkpoint, current: &Checkpoint) -> bool {
    (candidate.position.next_source_offset, candidate.written_at_ms)
        > (current.position.next_source_offset, current.written_at_ms)
}

/// The encoded size of one entry in a chunk, with its separating comma.
pub(super) fn entry_len(task: &TaskKey, checkpoint: &Checkpoint) -> Result<usize, StoreError> {
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

pub(super) fn chunk_key(shard_prefix: &str, index: usize) -> String {
    format!("{shard_prefix}{index:04}")
}

/// The end of the key range of everything under `prefix` (which ends in `/`, so its last byte can be incremented).
pub(super) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

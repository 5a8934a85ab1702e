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
    /// Decoded one by one, so a damaged entry spoils only its own task.
    tasks: Vec<serde_json::Value>,
}

/// Which task an entry belongs to: readable even when its checkpoint is not.
#[derive(Deserialize)]
struct EntryKey {
    topic: String,
    partition: i32,
}

#[derive(Deserialize)]
struct EntryIn {
    topic: String,
    partition: i32,
    #[serde(flatten)]
    checkpoint: Checkpoint,
}

/// Stored data that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damaged {
    /// The key it is stored under (and the entry's task, when readable).
    pub(super) location: String,
    /// The member whose shard holds it, when the key says.
    pub(super) member: Option<String>,
    /// The task it belongs to, when its entry names one.
    pub(super) task: Option<TaskKey>,
    /// What is wrong.
    pub(super) message: String,
}

impl From<Damaged> for StoreError {
    fn from(damaged: Damaged) -> Self {
        StoreError::Corrupt { location: damaged.location, message: damaged.message }
    }
}

/// Decodes every chunk under `flow_prefix`; anything else there is damage, reported with its key.
pub(super) fn decode_chunks(flow_prefix: &str, kvs: Vec<KeyValue>) -> Result<Vec<StoredChunk>, StoreError> {
    let (chunks, damage) = decode_readable_chunks(flow_prefix, kvs);
    match damage.into_iter().next() {
        Some(damaged) => Err(damaged.into()),
        None => Ok(chunks),
    }
}

/// Decodes what can be read under `flow_prefix`: the chunks (without their damaged entries), and what is damaged.
pub(super) fn decode_readable_chunks(flow_prefix: &str, kvs: Vec<KeyValue>) -> (Vec<StoredChunk>, Vec<Damaged>) {
    let (mut chunks, mut damage) = (Vec::new(), Vec::new());
    for kv in kvs {
        match decode_chunk(flow_prefix, kv.key(), kv.value(), kv.mod_revision()) {
            Ok((chunk, damaged_entries)) => {
                chunks.push(chunk);
                damage.extend(damaged_entries);
            }
            Err(damaged) => damage.push(damaged),
        }
    }
    (chunks, damage)
}

/// A chunk and its damaged entries; `Err` when the chunk as a whole cannot be read.
fn decode_chunk(
    flow_prefix: &str,
    key: &[u8],
    value: &[u8],
    mod_revision: i64,
) -> Result<(StoredChunk, Vec<Damaged>), Damaged> {
    let key = String::from_utf8_lossy(key).into_owned();
    let corrupt = |member: Option<&str>, message: String| Damaged {
        location: key.clone(),
        member: member.map(str::to_owned),
        task: None,
        message,
    };
    let (member, index) = key
        .strip_prefix(flow_prefix)
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| corrupt(None, "not a checkpoint chunk key (<flow>/<member>/<chunk>)".into()))?;
    let member =
        decode_segment(member).ok_or_else(|| corrupt(None, format!("member {member:?} is not percent-encoded")))?;
    let corrupt = |message: String| corrupt(Some(&member), message);
    let index = Some(index)
        .filter(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|index| index.parse::<usize>().ok())
        .ok_or_else(|| corrupt(format!("chunk {index:?} is not a number")))?;
    let chunk: ChunkIn = serde_json::from_slice(value).map_err(|error| corrupt(error.to_string()))?;
    if chunk.version != FORMAT_VERSION {
        return Err(corrupt(format!("format version {} is not {FORMAT_VERSION}", chunk.version)));
    }
    if chunk.member != member {
        return Err(corrupt(format!("chunk of member {member:?} says it was written by {:?}", chunk.member)));
    }
    let (mut tasks, mut damaged) = (Vec::new(), Vec::new());
    for entry in chunk.tasks {
        let task = serde_json::from_value::<EntryKey>(entry.clone())
            .ok()
            .map(|key| TaskKey { topic: key.topic, partition: key.partition });
        match serde_json::from_value::<EntryIn>(entry) {
            Ok(entry) => tasks.push((TaskKey { topic: entry.topic, partition: entry.partition }, entry.checkpoint)),
            Err(error) => damaged.push(Damaged {
                location: match &task {
                    Some(task) => format!("{key} (task {}/{})", task.topic, task.partition),
                    None => format!("{key} (an entry naming no task)"),
                },
                member: Some(member.clone()),
                task,
                message: error.to_string(),
            }),
        }
    }
    let chunk = StoredChunk { key: key.clone(), member, index, mod_revision, tasks };
    Ok((chunk, damaged))
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::replication::progress::{Position, SyncPoint};

    const PREFIX: &str = "/ferry/checkpoints/flow/";
    const KEY: &str = "/ferry/checkpoints/flow/member-a/0003";

    fn checkpoint(next: i64) -> Checkpoint {
        let mut position = Position::starting_at(next);
        position.next_target_offset = Some(next + 7);
        position.sync_points = vec![SyncPoint::new(next - 1, next + 6)];
        Checkpoint { position, written_at_ms: 1_700_000_000_000 + next }
    }

    fn entries(count: usize) -> Vec<(TaskKey, Checkpoint)> {
        (0..count)
            .map(|n| (TaskKey { topic: format!("t{}", n % 3), partition: n as i32 }, checkpoint(100 + n as i64)))
            .collect()
    }

    fn encode(entries: &[(TaskKey, Checkpoint)]) -> serde_json::Value {
        let chunk = ChunkOut {
            version: FORMAT_VERSION,
            member: "member-a",
            tasks: entries
                .iter()
                .map(|(task, checkpoint)| EntryOut { topic: &task.topic, partition: task.partition, checkpoint })
                .collect(),
        };
        serde_json::to_value(&chunk).unwrap()
    }

    /// Any JSON a foreign writer might leave where an entry belongs.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z_]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("topic".to_owned()),
                        Just("partition".to_owned()),
                        Just("next_source_offset".to_owned()),
                        Just("next_target_offset".to_owned()),
                        Just("sync_points".to_owned()),
                        Just("written_at_ms".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..7
                )
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever bytes are stored under a chunk key: no panic, and either a chunk or damage naming the key.
        #[test]
        fn arbitrary_bytes_decode_or_are_named_as_damage(value in proptest::collection::vec(any::<u8>(), 0..400)) {
            match decode_chunk(PREFIX, KEY.as_bytes(), &value, 1) {
                Ok((chunk, damaged)) => {
                    prop_assert_eq!(chunk.member, "member-a");
                    prop_assert!(damaged.iter().all(|damaged| damaged.location.starts_with(KEY)));
                }
                Err(damaged) => {
                    prop_assert_eq!(damaged.location, KEY);
                    prop_assert_eq!(damaged.member.as_deref(), Some("member-a"));
                }
            }
        }

        /// A chunk cut short anywhere is damage, never a shorter chunk.
        #[test]
        fn a_truncated_chunk_is_damage(count in 1usize..6, cut in any::<proptest::sample::Index>()) {
            let value = serde_json::to_vec(&encode(&entries(count))).unwrap();
            let cut = cut.index(value.len());
            prop_assert!(decode_chunk(PREFIX, KEY.as_bytes(), &value[..cut], 1).is_err());
        }

        /// One entry replaced by anything: every other entry decodes exactly as written, and the replaced one is
        /// either a well-formed entry or damage naming its task when it names one.
        #[test]
        fn a_foreign_entry_spoils_only_itself(count in 1usize..6, at in any::<proptest::sample::Index>(), foreign in json()) {
            let written = entries(count);
            let at = at.index(count);
            let mut chunk = encode(&written);
            chunk["tasks"][at] = foreign.clone();
            let value = serde_json::to_vec(&chunk).unwrap();
            let (decoded, damaged) = decode_chunk(PREFIX, KEY.as_bytes(), &value, 1).expect("the chunk itself is sound");
            let expected: Vec<(TaskKey, Checkpoint)> =
                written.iter().enumerate().filter(|(n, _)| *n != at).map(|(_, entry)| entry.clone()).collect();
            let others: Vec<(TaskKey, Checkpoint)> = match damaged.as_slice() {
                [] => {
                    // The foreign value happens to be a well-formed entry: it decodes to what it says.
                    let mut decoded = decoded.tasks.clone();
                    let foreign = decoded.remove(at);
                    let reencoded = serde_json::to_value(EntryOut {
                        topic: &foreign.0.topic,
                        partition: foreign.0.partition,
                        checkpoint: &foreign.1,
                    })
                    .unwrap();
                    prop_assert_eq!(serde_json::from_value::<EntryIn>(reencoded).ok().map(|e| e.checkpoint), Some(foreign.1));
                    decoded
                }
                [one] => {
                    prop_assert!(one.location.starts_with(KEY));
                    let names = serde_json::from_value::<EntryKey>(foreign.clone()).ok();
                    prop_assert_eq!(one.task.clone(), names.map(|key| TaskKey { topic: key.topic, partition: key.partition }));
                    decoded.tasks
                }
                more => return Err(TestCaseError::fail(format!("one foreign entry, {} damaged: {more:?}", more.len()))),
            };
            prop_assert_eq!(others, expected);
        }
    }

    #[test]
    fn a_chunk_decodes_as_written() {
        let written = entries(4);
        let value = serde_json::to_vec(&encode(&written)).unwrap();
        let (chunk, damaged) = decode_chunk(PREFIX, KEY.as_bytes(), &value, 9).unwrap();
        assert!(damaged.is_empty());
        assert_eq!((chunk.member.as_str(), chunk.index, chunk.mod_revision), ("member-a", 3, 9));
        assert_eq!(chunk.tasks, written);
    }

    #[test]
    fn keys_that_are_not_chunk_keys_are_damage_of_no_member() {
        let value = serde_json::to_vec(&encode(&entries(1))).unwrap();
        for key in ["/ferry/checkpoints/flow/no-chunk", "/ferry/checkpoints/flow/member-a/x1", "/elsewhere/m/0001"] {
            let damaged = decode_chunk(PREFIX, key.as_bytes(), &value, 1).unwrap_err();
            assert_eq!(damaged.location, key);
        }
        let damaged = decode_chunk(PREFIX, b"/ferry/checkpoints/flow/no-chunk", &value, 1).unwrap_err();
        assert_eq!(damaged.member, None);
    }
}

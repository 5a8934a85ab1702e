//! MirrorMaker 2's checkpoint records, so Java tooling built on `RemoteClusterUtils.translateOffsets` keeps working
//! with the translations ferry writes to `<source alias>.checkpoints.internal` on the target.
//!
//! Invariant: the encoding is MM2's `Checkpoint` class at format version 0, byte for byte (checked by running MM2's
//! own class against ferry's records in the end-to-end tests).

/// MirrorMaker 2's checkpoint record for one group partition (its `Checkpoint` class, format version 0): the key
/// is (group, topic, partition), the value (version, upstream offset, downstream offset, metadata), in Kafka's
/// protocol encoding (big-endian integers, strings with an int16 length). `topic` is the target topic name.
pub fn mm2_checkpoint_record(
    group: &str,
    topic: &str,
    partition: i32,
    upstream: i64,
    downstream: i64,
) -> (Vec<u8>, Vec<u8>) {
    fn string(out: &mut Vec<u8>, value: &str) {
        let length = i16::try_from(value.len()).unwrap_or(i16::MAX);
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&value.as_bytes()[..length as usize]);
    }
    let mut key = Vec::with_capacity(8 + group.len() + topic.len());
    string(&mut key, group);
    string(&mut key, topic);
    key.extend_from_slice(&partition.to_be_bytes());
    let mut value = Vec::with_capacity(20);
    value.extend_from_slice(&0_i16.to_be_bytes());
    value.extend_from_slice(&upstream.to_be_bytes());
    value.extend_from_slice(&downstream.to_be_bytes());
    string(&mut value, "");
    (key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm2_checkpoint_records_use_kafkas_protocol_encoding() {
        let (key, value) = mm2_checkpoint_record("g", "us-east.t", 3, 100, 90);
        assert_eq!(key, [&[0, 1][..], b"g", &[0, 9], b"us-east.t", &[0, 0, 0, 3]].concat());
        assert_eq!(value, [&[0, 0][..], &100_i64.to_be_bytes(), &90_i64.to_be_bytes(), &[0, 0]].concat());
    }
}

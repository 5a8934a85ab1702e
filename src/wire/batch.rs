//! Kafka record batches (message format v2) as bytes: read the header, stamp ferry's producer into it, and renumber
//! a batch whose offsets the target would refuse as they are.
//!
//! Invariant: a stamped batch differs from the fetched one only in the header's partition leader epoch, attributes'
//! transactional bit, producer id, producer epoch, base sequence and CRC; the records (keys, values, headers,
//! timestamp and offset deltas, compression) stay byte-identical. A renumbered batch keeps every kept record's
//! attributes, timestamp, key, value and headers byte-identical and only gives the records consecutive offset
//! deltas (and, for a batch stamped with the log append time, that time).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::protocol::buf::ByteBuf;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;
/// Bytes of a v2 batch header; the records follow.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength`'s count starts (base offset and the length itself).
const LOG_OVERHEAD: usize = 12;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_LOG_APPEND: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;
const DELETE_HORIZON: i16 = 0x40;

/// A batch that cannot be read or rewritten.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The bytes do not hold what a batch header says.
    #[error("malformed record batch at offset {base_offset}: {detail}")]
    Malformed {
        /// The batch's base offset (or -1 when even that is missing).
        base_offset: i64,
        /// What is wrong.
        detail: String,
    },
    /// A message format older than v2 (Kafka before 0.11): no producer fields to stamp.
    #[error("record batch at offset {base_offset} has message format v{magic}; pass-through copies only v2 batches")]
    OldFormat {
        /// The batch's base offset.
        base_offset: i64,
        /// Its magic byte.
        magic: i8,
    },
    /// Decompressing or compressing the records failed.
    #[error("cannot {action} the {codec} records of the batch at offset {base_offset}: {detail}")]
    Codec {
        /// `decompress` or `compress`.
        action: &'static str,
        /// The codec.
        codec: &'static str,
        /// The batch's base offset.
        base_offset: i64,
        /// The codec's error.
        detail: String,
    },
}

/// The producer ferry writes a batch as: its idempotent producer on the target partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    /// Producer id.
    pub id: i64,
    /// Producer epoch.
    pub epoch: i16,
}

/// One record batch, as fetched.
#[derive(Debug, Clone)]
pub struct Batch {
    bytes: Bytes,
}

fn read_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(bytes[at..at + 2].try_into().expect("two bytes"))
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// Splits a fetch response's records into whole batches. A broker may end the data with a partial batch (cut at the
/// fetch's byte limit); it is left out, and fetched again from its start next time.
pub fn split(mut records: Bytes) -> Result<Vec<Batch>, BatchError> {
    let mut batches = Vec::new();
    while records.len() >= LOG_OVERHEAD {
        let base_offset = read_i64(&records, BASE_OFFSET);
        let length = read_i32(&records, BATCH_LENGTH);
        let Ok(length) = usize::try_from(length) else {
            return Err(BatchError::Malformed { base_offset, detail: format!("negative batch length {length}") });
        };
        let size = LOG_OVERHEAD + length;
        if records.len() < size {
            break;
        }
        let bytes = records.split_to(size);
        if bytes.len() > MAGIC && bytes[MAGIC] as i8 != 2 {
            return Err(BatchError::OldFormat { base_offset, magic: bytes[MAGIC] as i8 });
        }
        if bytes.len() < HEADER_LEN {
            return Err(BatchError::Malformed { base_offset, detail: format!("{size} bytes, shorter than a header") });
        }
        batches.push(Batch { bytes });
    }
    Ok(batches)
}

impl Batch {
    /// The whole batch as fetched.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Size of the batch in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the batch is empty; never for a batch from [`split`].
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Offset of its first record.
    pub fn base_offset(&self) -> i64 {
        read_i64(&self.bytes, BASE_OFFSET)
    }

    /// Offset of its last record (also after compaction removed records from it).
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(read_i32(&self.bytes, LAST_OFFSET_DELTA))
    }

    /// Records it holds.
    pub fn record_count(&self) -> i32 {
        read_i32(&self.bytes, RECORDS_COUNT)
    }

    fn attributes(&self) -> i16 {
        read_i16(&self.bytes, ATTRIBUTES)
    }

    /// A transaction marker (commit or abort), never replicated.
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL != 0
    }

    /// Written by a transactional producer.
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL != 0
    }

    /// The producer id the source batch carries.
    pub fn producer_id(&self) -> i64 {
        read_i64(&self.bytes, PRODUCER_ID)
    }

    /// Timestamp of the first record (for log append time, the time the source broker appended the batch).
    pub fn first_timestamp(&self) -> i64 {
        if self.log_append_time() {
            self.max_timestamp()
        } else {
            read_i64(&self.bytes, BASE_TIMESTAMP)
        }
    }

    fn max_timestamp(&self) -> i64 {
        read_i64(&self.bytes, MAX_TIMESTAMP)
    }

    fn log_append_time(&self) -> bool {
        self.attributes() & TIMESTAMP_TYPE_LOG_APPEND != 0
    }

    /// Whether the batch can be produced as it is: its offsets are consecutive from its base offset (compaction
    /// left no holes), its timestamps are create times (the per-record path gives each record the source broker's
    /// append time as its create time), and it carries no compaction delete horizon in place of its base timestamp.
    pub fn passes_as_is(&self) -> bool {
        i64::from(self.record_count()) == self.last_offset() - self.base_offset() + 1
            && self.attributes() & (TIMESTAMP_TYPE_LOG_APPEND | DELETE_HORIZON) == 0
    }

    /// The batch for the target, stamped with `producer` and `base_sequence` (see `stamp_header`): a new header, and
    /// the fetched records as they are (not copied).
    pub fn stamped(&self, producer: ProducerStamp, base_sequence: i32) -> Stamped {
        let mut header: [u8; HEADER_LEN] = self.bytes[..HEADER_LEN].try_into().expect("a whole header");
        let records = self.bytes.slice(HEADER_LEN..);
        stamp_header(&mut header, &records, producer, base_sequence);
        Stamped { header, records }
    }

    /// A new batch of the records from `from` on, with consecutive offset deltas, stamped with `producer` and
    /// `base_sequence`, compressed like this one; and the source offset of each record in it. `None` when no record
    /// is at or after `from`.
    pub fn renumbered(
        &self,
        from: i64,
        producer: ProducerStamp,
        base_sequence: i32,
    ) -> Result<Option<(Stamped, Vec<i64>)>, BatchError> {
        let base_offset = self.base_offset();
        let codec = Codec::of(self.attributes(), base_offset)?;
        let records = codec.decompress(self.bytes.slice(HEADER_LEN..), base_offset)?;
        let append_time = self.log_append_time().then(|| self.max_timestamp());
        let base_timestamp = append_time.unwrap_or_else(|| read_i64(&self.bytes, BASE_TIMESTAMP));
        let malformed = |detail: &str| BatchError::Malformed { base_offset, detail: detail.to_owned() };

        let mut kept = BytesMut::with_capacity(records.len());
        let mut offsets = Vec::new();
        let mut max_timestamp = i64::MIN;
        let mut rest = records;
        for _ in 0..self.record_count() {
            let length = read_varint(&mut rest).ok_or_else(|| malformed("truncated record length"))?;
            let length = usize::try_from(length).map_err(|_| malformed("negative record length"))?;
            if rest.len() < length {
                return Err(malformed("record longer than the batch"));
            }
            let mut record = rest.split_to(length);
            if record.is_empty() {
                return Err(malformed("empty record"));
            }
            let attributes = record.get_u8();
            let timestamp_delta = read_varint(&mut record).ok_or_else(|| malformed("truncated timestamp delta"))?;
            let offset_delta = read_varint(&mut record).ok_or_else(|| malformed("truncated offset delta"))?;
            let offset = base_offset + offset_delta;
            if offset < from {
                continue;
            }
            let timestamp_delta = if append_time.is_some() { 0 } else { timestamp_delta };
            max_timestamp = max_timestamp.max(base_timestamp + timestamp_delta);
            let new_delta = offsets.len() as i64;
            let mut prefix = [0_u8; 1 + 10 + 10];
            prefix[0] = attributes;
            let mut used = 1;
            used += write_varint(&mut prefix[used..], timestamp_delta);
            used += write_varint(&mut prefix[used..], new_delta);
            let mut length_bytes = [0_u8; 10];
            let length_used = write_varint(&mut length_bytes, (used + record.len()) as i64);
            kept.put_slice(&length_bytes[..length_used]);
            kept.put_slice(&prefix[..used]);
            kept.put_slice(&record);
            offsets.push(offset);
        }
        if rest.has_remaining() {
            return Err(malformed("bytes after the last record"));
        }
        if offsets.is_empty() {
            return Ok(None);
        }
        let mut out = BytesMut::with_capacity(HEADER_LEN + kept.len());
        out.put_i64(0);
        out.put_i32(0); // batch length, set below
        out.put_i32(-1);
        out.put_i8(2);
        out.put_u32(0); // CRC, set by `stamp`
        out.put_i16(self.attributes() & COMPRESSION_MASK);
        out.put_i32(offsets.len() as i32 - 1);
        out.put_i64(base_timestamp);
        out.put_i64(max_timestamp);
        out.put_i64(-1);
        out.put_i16(-1);
        out.put_i32(-1);
        out.put_i32(offsets.len() as i32);
        codec.compress(&mut out, &kept, base_offset)?;
        let batch_length = (out.len() - LOG_OVERHEAD) as i32;
        out[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        let mut records = out.freeze();
        let mut header: [u8; HEADER_LEN] = records.split_to(HEADER_LEN)[..].try_into().expect("a whole header");
        stamp_new_header(&mut header, &records, producer, base_sequence);
        Ok(Some((Stamped { header, records }, offsets)))
    }
}

/// A batch ready for the target: ferry's header, and the records that follow it.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// The batch header, with ferry's producer and the CRC.
    pub header: [u8; HEADER_LEN],
    /// The records part, as fetched (or renumbered).
    pub records: Bytes,
}

impl Stamped {
    /// Size of the whole batch.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.records.len()
    }

    /// Whether the batch is empty; never.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole batch in one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        out.put_slice(&self.header);
        out.put_slice(&self.records);
        out.freeze()
    }
}

/// Writes ferry's producer into a batch header. The base offset is 0, as producers send it (the target assigns
/// offsets, and checks a compressed batch's inner offsets count from 0); the partition leader epoch is the target's
/// business (-1, as producers send it); the batch is no longer transactional (ferry's producer is idempotent, not
/// transactional; the source's transaction already committed).
///
/// The CRC-32C is not computed over the records again: the header's change is folded into the source's CRC (CRCs
/// are linear), which costs the same for any batch size and keeps a batch damaged on the way detectable: the target
/// refuses it (CORRUPT_MESSAGE) rather than taking damaged records under a new, matching CRC.
fn stamp_header(header: &mut [u8; HEADER_LEN], records: &[u8], producer: ProducerStamp, base_sequence: i32) {
    let source_crc = u32::from_be_bytes(header[CRC..CRC + 4].try_into().expect("four bytes"));
    let before = crc32c::crc32c(&header[ATTRIBUTES..]);
    write_producer(header, producer, base_sequence);
    let after = crc32c::crc32c(&header[ATTRIBUTES..]);
    let crc = source_crc ^ crc32c::crc32c_combine(before ^ after, 0, records.len());
    header[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// [`stamp_header`] for a batch ferry built itself: its CRC is computed over the records.
fn stamp_new_header(header: &mut [u8; HEADER_LEN], records: &[u8], producer: ProducerStamp, base_sequence: i32) {
    write_producer(header, producer, base_sequence);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[ATTRIBUTES..]), records);
    header[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

fn write_producer(header: &mut [u8; HEADER_LEN], producer: ProducerStamp, base_sequence: i32) {
    header[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&0_i64.to_be_bytes());
    header[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4].copy_from_slice(&(-1_i32).to_be_bytes());
    let attributes = read_i16(header, ATTRIBUTES) & !(TRANSACTIONAL | CONTROL);
    header[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    header[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer.id.to_be_bytes());
    header[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&producer.epoch.to_be_bytes());
    header[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
}

/// The sequence after a batch of `count` records at `base_sequence` (sequences wrap at `i32::MAX`, as Kafka's do).
pub fn next_sequence(base_sequence: i32, count: i32) -> i32 {
    ((i64::from(base_sequence) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32
}

/// A batch's compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    fn of(attributes: i16, base_offset: i64) -> Result<Codec, BatchError> {
        Ok(match attributes & COMPRESSION_MASK {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            other => {
                return Err(BatchError::Malformed { base_offset, detail: format!("unknown compression type {other}") })
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Codec::None => "uncompressed",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    fn decompress(self, mut data: Bytes, base_offset: i64) -> Result<Bytes, BatchError> {
        let result = match self {
            Codec::None => return Ok(data),
            Codec::Gzip => Gzip::decompress(&mut data, |buf| Ok(take_all(buf))),
            Codec::Snappy => Snappy::decompress(&mut data, |buf| Ok(take_all(buf))),
            Codec::Lz4 => Lz4::decompress(&mut data, |buf| Ok(take_all(buf))),
            Codec::Zstd => Zstd::decompress(&mut data, |buf| Ok(take_all(buf))),
        };
        result.map_err(|error| BatchError::Codec {
            action: "decompress",
            codec: self.name(),
            base_offset,
            detail: error.to_string(),
        })
    }

    fn compress(self, out: &mut BytesMut, records: &[u8], base_offset: i64) -> Result<(), BatchError> {
        let write = |buf: &mut BytesMut| {
            buf.put_slice(records);
            Ok(())
        };
        let result = match self {
            Codec::None => {
                out.put_slice(records);
                return Ok(());
            }
            Codec::Gzip => Gzip::compress(out, write),
            Codec::Snappy => Snappy::compress(out, write),
            Codec::Lz4 => Lz4::compress(out, write),
            Codec::Zstd => Zstd::compress(out, write),
        };
        result.map_err(|error| BatchError::Codec {
            action: "compress",
            codec: self.name(),
            base_offset,
            detail: error.to_string(),
        })
    }
}

fn take_all<B: ByteBuf>(buf: &mut B) -> Bytes {
    let remaining = buf.remaining();
    buf.get_bytes(remaining)
}

/// Reads a zig-zag varint (Kafka's `varint`/`varlong`); `None` when the bytes end first or it is too long.
fn read_varint(buf: &mut Bytes) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// Writes a zig-zag varint into `out`; returns the bytes used (at most 10).
fn write_varint(out: &mut [u8], value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut used = 0;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out[used] = byte;
            return used + 1;
        }
        out[used] = byte | 0x80;
        used += 1;
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;

    const PRODUCER: ProducerStamp = ProducerStamp { id: 4242, epoch: 3 };

    /// Whether the CRC of a batch matches its content, as the target checks it.
    fn crc_matches(batch: &[u8]) -> bool {
        batch.len() >= HEADER_LEN
            && crc32c::crc32c(&batch[ATTRIBUTES..]) == u32::from_be_bytes(batch[CRC..CRC + 4].try_into().unwrap())
    }

    /// Records at `offsets` (gaps where compaction removed records), as a source producer wrote them.
    fn records(offsets: &[i64], timestamp_type: TimestampType) -> Vec<Record> {
        offsets
            .iter()
            .map(|&offset| Record {
                transactional: true,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 7,
                producer_id: 99,
                producer_epoch: 1,
                timestamp_type,
                offset,
                sequence: offset as i32,
                timestamp: 1_700_000_000_000 + offset * 10,
                key: (offset % 3 != 0).then(|| Bytes::from(format!("key-{offset}"))),
                value: (offset % 4 != 0)
                    .then(|| Bytes::from(format!("value {offset} {}", "x".repeat(offset as usize)))),
                headers: IndexMap::from_iter([(
                    kafka_protocol::protocol::StrBytes::from_static_str("id"),
                    Some(Bytes::from(offset.to_string())),
                )]),
            })
            .collect()
    }

    fn encode(records: &[Record], compression: Compression) -> Bytes {
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(&mut out, records, &RecordEncodeOptions { version: 2, compression }).unwrap();
        out.freeze()
    }

    fn decode(bytes: Bytes) -> Vec<Record> {
        RecordBatchDecoder::decode(&mut bytes.clone()).unwrap().records
    }

    fn only(bytes: Bytes) -> Batch {
        let mut batches = split(bytes).unwrap();
        assert_eq!(batches.len(), 1);
        batches.remove(0)
    }

    #[test]
    fn a_stamped_batch_keeps_its_records_byte_for_byte_and_carries_ferrys_producer() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd, Compression::Gzip] {
            let source = records(&(500..600).collect::<Vec<_>>(), TimestampType::Creation);
            let batch = only(encode(&source, compression));
            assert!(batch.passes_as_is() && batch.is_transactional());
            assert_eq!((batch.base_offset(), batch.last_offset(), batch.record_count()), (500, 599, 100));

            let stamped = batch.stamped(PRODUCER, 77).to_bytes();
            assert_eq!(stamped[HEADER_LEN..], batch.bytes()[HEADER_LEN..], "{compression:?}: records untouched");
            assert!(crc_matches(&stamped));
            let written = decode(stamped);
            assert_eq!(written.len(), 100);
            for (delta, (got, want)) in written.iter().zip(&source).enumerate() {
                assert_eq!((got.offset, got.sequence), (delta as i64, 77 + delta as i32));
                assert_eq!((got.producer_id, got.producer_epoch, got.transactional), (4242, 3, false));
                assert_eq!(got.partition_leader_epoch, -1);
                assert_eq!(
                    (&got.key, &got.value, &got.headers, got.timestamp),
                    (&want.key, &want.value, &want.headers, want.timestamp)
                );
            }
        }
    }

    #[test]
    fn a_batch_damaged_before_it_is_stamped_still_fails_its_crc() {
        let batch = only(encode(&records(&[0, 1, 2], TimestampType::Creation), Compression::Lz4));
        assert!(crc_matches(batch.bytes()));
        let mut damaged = batch.bytes().to_vec();
        let last = damaged.len() - 3;
        damaged[last] ^= 0x40;
        let damaged = only(Bytes::from(damaged));
        assert!(!crc_matches(&damaged.stamped(PRODUCER, 0).to_bytes()), "the target must see the damage");
        assert!(crc_matches(&batch.stamped(PRODUCER, 0).to_bytes()));
    }

    #[test]
    fn a_compacted_batch_is_renumbered_and_names_each_records_source_offset() {
        let offsets = [100, 102, 103, 107, 111];
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd, Compression::Snappy] {
            let source = records(&offsets, TimestampType::Creation);
            let batch = only(encode(&source, compression));
            assert_eq!((batch.last_offset(), batch.record_count()), (111, 5));
            assert!(!batch.passes_as_is(), "holes in the offsets");

            let (stamped, renumbered) = batch.renumbered(100, PRODUCER, 9).unwrap().unwrap();
            let bytes = stamped.to_bytes();
            assert_eq!(renumbered, offsets);
            assert!(crc_matches(&bytes));
            let written = only(bytes.clone());
            assert!(written.passes_as_is(), "consecutive now");
            assert_eq!((written.base_offset(), written.last_offset(), written.record_count()), (0, 4, 5));
            assert_eq!(bytes[ATTRIBUTES + 1] & 0x07, batch.bytes()[ATTRIBUTES + 1] & 0x07, "same codec");
            for (delta, (got, want)) in decode(bytes).iter().zip(&source).enumerate() {
                assert_eq!((got.offset, got.sequence, got.producer_id), (delta as i64, 9 + delta as i32, 4242));
                assert_eq!(
                    (&got.key, &got.value, &got.headers, got.timestamp),
                    (&want.key, &want.value, &want.headers, want.timestamp)
                );
            }

            // From the middle of the batch (a position inside it): only the records from there on.
            let (_, from_middle) = batch.renumbered(103, PRODUCER, 0).unwrap().unwrap();
            assert_eq!(from_middle, [103, 107, 111]);
            let (_, in_a_hole) = batch.renumbered(104, PRODUCER, 0).unwrap().unwrap();
            assert_eq!(in_a_hole, [107, 111]);
            assert!(batch.renumbered(112, PRODUCER, 0).unwrap().is_none());
        }
    }

    #[test]
    fn a_batch_stamped_with_the_log_append_time_gives_every_record_that_time_as_its_create_time() {
        let mut source = encode(&records(&[0, 1, 2], TimestampType::Creation), Compression::None).to_vec();
        // As a broker with `message.timestamp.type=LogAppendTime` stores it: the type bit and the append time.
        source[ATTRIBUTES + 1] |= TIMESTAMP_TYPE_LOG_APPEND as u8;
        source[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&1_800_000_000_000_i64.to_be_bytes());
        let batch = only(Bytes::from(source));
        assert!(!batch.passes_as_is());
        assert_eq!(batch.first_timestamp(), 1_800_000_000_000);
        let (stamped, offsets) = batch.renumbered(0, PRODUCER, 0).unwrap().unwrap();
        assert_eq!(offsets, [0, 1, 2]);
        for record in decode(stamped.to_bytes()) {
            assert_eq!((record.timestamp, record.timestamp_type), (1_800_000_000_000, TimestampType::Creation));
        }
    }

    #[test]
    fn a_partial_batch_at_the_end_of_a_fetch_is_left_for_the_next_fetch() {
        let first = encode(&records(&[0, 1], TimestampType::Creation), Compression::None);
        let second = encode(&records(&[2, 3, 4], TimestampType::Creation), Compression::Lz4);
        let mut fetched = BytesMut::new();
        fetched.extend_from_slice(&first);
        fetched.extend_from_slice(&second[..second.len() - 5]);
        let batches = split(fetched.freeze()).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].last_offset(), 1);
    }

    #[test]
    fn sequences_wrap_at_the_largest_int32_as_kafkas_do() {
        assert_eq!(next_sequence(5, 10), 15);
        assert_eq!(next_sequence(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn varints_round_trip() {
        for value in [0_i64, 1, -1, 63, -64, 64, 300, -300, i32::MAX as i64, i64::MIN, i64::MAX] {
            let mut out = [0_u8; 10];
            let used = write_varint(&mut out, value);
            let mut bytes = Bytes::copy_from_slice(&out[..used]);
            assert_eq!(read_varint(&mut bytes), Some(value));
            assert!(bytes.is_empty());
        }
    }
}

//! The two requests of the data path, built once per task and reused: a fetch of one partition and a produce of one
//! batch to one partition.

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

/// Fetch request version: v11 (Kafka 2.3) has read_committed, aborted transactions and the log start offset, and
/// every broker from 2.3 to 4.x answers it.
pub const FETCH_VERSION: i16 = 11;
/// Produce request version: v8 (Kafka 2.4) names the refused record; every broker from 2.4 to 4.x answers it.
pub const PRODUCE_VERSION: i16 = 8;

/// A consumer's fetch of `topic`'s `partition` (the offset set per request, in `topics[0].partitions[0]`), up to
/// `max_bytes`; `read_committed` hides open and aborted transactions and lists the aborted ones.
pub fn fetch_request(
    topic: &str,
    partition: i32,
    max_bytes: i32,
    max_wait_ms: i32,
    read_committed: bool,
) -> FetchRequest {
    let mut wanted = FetchPartition::default();
    wanted.partition = partition;
    wanted.current_leader_epoch = -1;
    wanted.log_start_offset = -1;
    wanted.partition_max_bytes = max_bytes;
    let mut fetch_topic = FetchTopic::default();
    fetch_topic.topic = TopicName(StrBytes::from_string(topic.to_owned()));
    fetch_topic.partitions = vec![wanted];
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(-1);
    request.max_wait_ms = max_wait_ms;
    request.min_bytes = 1;
    request.max_bytes = max_bytes;
    request.isolation_level = i8::from(read_committed);
    request.session_id = 0;
    request.session_epoch = -1;
    request.topics = vec![fetch_topic];
    request
}

/// A produce request (`acks=all`, waiting up to `timeout_ms` for the replicas) to `topic`'s `partition`, its batch
/// left out (`records: None`, encoded last at [`PRODUCE_VERSION`]):
/// [`Connection::send_with_records`](super::connection::Connection::send_with_records) sends the batch after it
/// without copying it.
pub fn produce_request(topic: &str, partition: i32, timeout_ms: i32) -> ProduceRequest {
    let mut data = PartitionProduceData::default();
    data.index = partition;
    data.records = None;
    let mut topic_data = TopicProduceData::default();
    topic_data.name = TopicName(StrBytes::from_string(topic.to_owned()));
    topic_data.partition_data = vec![data];
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = timeout_ms;
    request.topic_data = vec![topic_data];
    request
}

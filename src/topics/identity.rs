//! A topic's identity: the id Kafka gives a topic when it creates it (KIP-516). A topic deleted and created again
//! under the same name gets a new id, and its offsets start over: a position in the old topic says nothing about
//! the new one.
//!
//! rdkafka does not wrap DescribeTopics, librdkafka's only call that returns topic ids, so this module calls
//! librdkafka's C API directly (through [`super::native`]).

use std::collections::BTreeMap;
use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};

use super::native::{self, Owned};

/// Kafka's id of a topic, in the base64 form Kafka's own tools print.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicId(String);

impl TopicId {
    /// The id as Kafka's tools print it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for TopicId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl std::fmt::Display for TopicId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The ids of those of `topics` that exist on the cluster `client` talks to; a topic that does not exist (or is
/// being deleted) is left out. Blocks for up to `timeout` (one request to a broker).
pub fn topic_ids<C: ClientContext>(
    client: &Client<C>,
    topics: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<String, TopicId>, KafkaError> {
    if topics.is_empty() {
        return Ok(BTreeMap::new());
    }
    let names = topics
        .iter()
        .map(|topic| CString::new(*topic))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| KafkaError::AdminOpCreation("a topic name holds a NUL byte".to_owned()))?;
    let mut name_pointers: Vec<*const c_char> = names.iter().map(|name| name.as_ptr()).collect();
    let timeout_ms = native::millis(timeout);
    let rk = client.native_ptr();
    // SAFETY: every pointer handed to librdkafka is valid for the call (the names outlive the collection, which
    // copies them); every object librdkafka returns is owned by an `Owned` and destroyed once; the descriptions read
    // below belong to the event and are only read while it lives.
    unsafe {
        let collection = Owned {
            ptr: rd::rd_kafka_TopicCollection_of_topic_names(name_pointers.as_mut_ptr(), name_pointers.len()),
            destroy: rd::rd_kafka_TopicCollection_destroy,
        };
        let options = native::options(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS, timeout_ms)?;
        let queue = native::queue(rk);
        rd::rd_kafka_DescribeTopics(rk, collection.ptr, options.ptr, queue.ptr);
        let event = native::answer(&queue, timeout_ms)?;
        let result = rd::rd_kafka_event_DescribeTopics_result(event.ptr);
        if result.is_null() {
            return Err(KafkaError::AdminOpCreation("DescribeTopics answered with another event".to_owned()));
        }
        let mut count = 0_usize;
        let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        let mut ids = BTreeMap::new();
        for index in 0..count {
            let description = *descriptions.add(index);
            let error = rd::rd_kafka_TopicDescription_error(description);
            if !error.is_null() && rd::rd_kafka_error_code(error) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                continue;
            }
            let uuid = rd::rd_kafka_TopicDescription_topic_id(description);
            if uuid.is_null()
                || (rd::rd_kafka_Uuid_most_significant_bits(uuid) == 0
                    && rd::rd_kafka_Uuid_least_significant_bits(uuid) == 0)
            {
                // Brokers without topic ids answer the zero id, which identifies nothing.
                continue;
            }
            let name = CStr::from_ptr(rd::rd_kafka_TopicDescription_name(description)).to_string_lossy().into_owned();
            let id = CStr::from_ptr(rd::rd_kafka_Uuid_base64str(uuid)).to_string_lossy().into_owned();
            ids.insert(name, TopicId(id));
        }
        Ok(ids)
    }
}

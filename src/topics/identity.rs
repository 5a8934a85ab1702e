//! A topic's identity: the id Kafka gives a topic when it creates it (KIP-516). A topic deleted and created again
//! under the same name gets a new id, and its offsets start over: a position in the old topic says nothing about
//! the new one.
//!
//! rdkafka does not wrap DescribeTopics, librdkafka's only call that returns topic ids, so this module calls
//! librdkafka's C API directly; it is the only admin request ferry makes that way.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::{Deserialize, Serialize};

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

/// A librdkafka object destroyed when dropped.
struct Owned<T> {
    ptr: *mut T,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the librdkafka constructor matching `destroy` and is destroyed only here.
            unsafe { (self.destroy)(self.ptr) }
        }
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
    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    let rk = client.native_ptr();
    // SAFETY: every pointer handed to librdkafka is valid for the call (the names outlive the collection, which
    // copies them); every object librdkafka returns is owned by an `Owned` and destroyed once; the descriptions read
    // below belong to the event and are only read while it lives.
    unsafe {
        let collection = Owned {
            ptr: rd::rd_kafka_TopicCollection_of_topic_names(name_pointers.as_mut_ptr(), name_pointers.len()),
            destroy: rd::rd_kafka_TopicCollection_destroy,
        };
        let options = Owned {
            ptr: rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS),
            destroy: rd::rd_kafka_AdminOptions_destroy,
        };
        let mut error_text = [0 as c_char; 256];
        let set = rd::rd_kafka_AdminOptions_set_request_timeout(
            options.ptr,
            timeout_ms,
            error_text.as_mut_ptr(),
            error_text.len(),
        );
        if set != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            let text = CStr::from_ptr(error_text.as_ptr()).to_string_lossy().into_owned();
            return Err(KafkaError::AdminOpCreation(text));
        }
        let queue = Owned { ptr: rd::rd_kafka_queue_new(rk), destroy: rd::rd_kafka_queue_destroy };
        rd::rd_kafka_DescribeTopics(rk, collection.ptr, options.ptr, queue.ptr);
        // The request's own timeout ends it with an error event; the margin lets that event, not this wait, say so.
        let event = Owned {
            ptr: rd::rd_kafka_queue_poll(queue.ptr, timeout_ms.saturating_add(5_000)),
            destroy: rd::rd_kafka_event_destroy,
        };
        if event.ptr.is_null() {
            return Err(KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut));
        }
        let code = rd::rd_kafka_event_error(event.ptr);
        if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(KafkaError::AdminOp(code.into()));
        }
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

//! The admin requests rdkafka does not wrap, made through librdkafka's C API: the objects they need (destroyed when
//! dropped), their options, and the wait for their answer. Used by [`super::identity`] (DescribeTopics, for topic
//! ids) and [`super::acls`] (DescribeAcls and CreateAcls, for topic ACL sync).

use std::ffi::{c_char, c_int, CStr};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A librdkafka object destroyed when dropped.
pub(super) struct Owned<T> {
    pub(super) ptr: *mut T,
    pub(super) destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the librdkafka constructor matching `destroy` and is destroyed only here.
            unsafe { (self.destroy)(self.ptr) }
        }
    }
}

/// `timeout` in librdkafka's milliseconds.
pub(super) fn millis(timeout: Duration) -> c_int {
    c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX)
}

/// Options for an admin request of kind `op` that the cluster must answer within `timeout_ms`.
///
/// # Safety
/// `rk` must be a live librdkafka client.
pub(super) unsafe fn options(
    rk: *mut rd::rd_kafka_t,
    op: rd::rd_kafka_admin_op_t,
    timeout_ms: c_int,
) -> Result<Owned<rd::rd_kafka_AdminOptions_t>, KafkaError> {
    let options = Owned { ptr: rd::rd_kafka_AdminOptions_new(rk, op), destroy: rd::rd_kafka_AdminOptions_destroy };
    let mut error_text = [0 as c_char; 256];
    let set = rd::rd_kafka_AdminOptions_set_request_timeout(
        options.ptr,
        timeout_ms,
        error_text.as_mut_ptr(),
        error_text.len(),
    );
    if set != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(KafkaError::AdminOpCreation(CStr::from_ptr(error_text.as_ptr()).to_string_lossy().into_owned()));
    }
    Ok(options)
}

/// A queue for one request's answer.
///
/// # Safety
/// `rk` must be a live librdkafka client.
pub(super) unsafe fn queue(rk: *mut rd::rd_kafka_t) -> Owned<rd::rd_kafka_queue_t> {
    Owned { ptr: rd::rd_kafka_queue_new(rk), destroy: rd::rd_kafka_queue_destroy }
}

/// Waits for the answer on `queue` of a request sent with `timeout_ms`; an answer that is an error is returned as
/// one.
///
/// # Safety
/// `queue` must be the queue the request was sent with.
pub(super) unsafe fn answer(
    queue: &Owned<rd::rd_kafka_queue_t>,
    timeout_ms: c_int,
) -> Result<Owned<rd::rd_kafka_event_t>, KafkaError> {
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
    Ok(event)
}

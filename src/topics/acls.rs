//! Topic ACL sync, as MirrorMaker 2 does by default (`sync.topic.acls.enabled`): whoever may read a replicated
//! topic on the source may read its replica on the target. ACLs that allow READ or DESCRIBE on a source topic (by its
//! literal name) are created for the same principal and host on the target topic; ALL becomes READ, and nothing
//! else (WRITE above all) is ever granted on the target, where only ferry writes.
//!
//! Invariant: sync only adds the target ACLs its source ACLs imply; it never deletes or widens one.
//!
//! rdkafka does not wrap the ACL requests, so they go through librdkafka's C API ([`super::native`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::native::{self, Owned};

/// What an ACL on a topic allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Read records (and commit a group's offsets for them).
    Read,
    /// See the topic and its metadata.
    Describe,
    /// Everything; mirrored as READ.
    All,
    /// Anything else (WRITE, ALTER, DELETE, ...): never mirrored.
    Other,
}

/// An ACL that allows `principal` on `host` one operation on one topic, named literally.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopicAcl {
    /// The topic.
    pub topic: String,
    /// For example `User:alice`.
    pub principal: String,
    /// `*` for any host.
    pub host: String,
    /// What it allows.
    pub operation: Operation,
}

/// The target ACLs that the source ACLs `source` imply for the replicated topics, `remote` mapping each source topic
/// to its target topic.
pub fn mirrored(source: &[TopicAcl], remote: &BTreeMap<String, String>) -> BTreeSet<TopicAcl> {
    source
        .iter()
        .filter_map(|acl| {
            let target = remote.get(&acl.topic)?;
            let operation = match acl.operation {
                Operation::Read | Operation::All => Operation::Read,
                Operation::Describe => Operation::Describe,
                Operation::Other => return None,
            };
            Some(TopicAcl {
                topic: target.clone(),
                principal: acl.principal.clone(),
                host: acl.host.clone(),
                operation,
            })
        })
        .collect()
}

/// Every ACL of the cluster that allows an operation on a topic named literally; `None` when the cluster has no
/// authorizer (there are no ACLs to sync). Blocks for up to `timeout`.
pub fn describe<C: ClientContext>(client: &Client<C>, timeout: Duration) -> Result<Option<Vec<TopicAcl>>, KafkaError> {
    let timeout_ms = native::millis(timeout);
    let rk = client.native_ptr();
    // SAFETY: the filter, options and queue are owned and destroyed once; the bindings read below belong to the
    // event and are only read while it lives; every string librdkafka returns is NUL-terminated or null.
    unsafe {
        let mut error_text = [0 as c_char; 256];
        let filter = Owned {
            ptr: rd::rd_kafka_AclBindingFilter_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                std::ptr::null(),
                rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                std::ptr::null(),
                std::ptr::null(),
                rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY,
                rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                error_text.as_mut_ptr(),
                error_text.len(),
            ),
            destroy: rd::rd_kafka_AclBinding_destroy,
        };
        if filter.ptr.is_null() {
            return Err(KafkaError::AdminOpCreation(
                CStr::from_ptr(error_text.as_ptr()).to_string_lossy().into_owned(),
            ));
        }
        let options = native::options(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS, timeout_ms)?;
        let queue = native::queue(rk);
        rd::rd_kafka_DescribeAcls(rk, filter.ptr, options.ptr, queue.ptr);
        let event = match native::answer(&queue, timeout_ms) {
            Ok(event) => event,
            Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::SecurityDisabled) => return Ok(None),
            Err(error) => return Err(error),
        };
        let result = rd::rd_kafka_event_DescribeAcls_result(event.ptr);
        if result.is_null() {
            return Err(KafkaError::AdminOpCreation("DescribeAcls answered with another event".to_owned()));
        }
        let mut count = 0_usize;
        let bindings = rd::rd_kafka_DescribeAcls_result_acls(result, &mut count);
        let text = |pointer: *const c_char| {
            if pointer.is_null() {
                String::new()
            } else {
                CStr::from_ptr(pointer).to_string_lossy().into_owned()
            }
        };
        let mut acls = Vec::with_capacity(count);
        for index in 0..count {
            let binding = *bindings.add(index);
            acls.push(TopicAcl {
                topic: text(rd::rd_kafka_AclBinding_name(binding)),
                principal: text(rd::rd_kafka_AclBinding_principal(binding)),
                host: text(rd::rd_kafka_AclBinding_host(binding)),
                operation: match rd::rd_kafka_AclBinding_operation(binding) {
                    rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_READ => Operation::Read,
                    rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_DESCRIBE => Operation::Describe,
                    rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ALL => Operation::All,
                    _ => Operation::Other,
                },
            });
        }
        Ok(Some(acls))
    }
}

/// Creates `acls` (each allowing its operation) on the cluster. Blocks for up to `timeout`.
pub fn create<C: ClientContext>(client: &Client<C>, acls: &[TopicAcl], timeout: Duration) -> Result<(), KafkaError> {
    if acls.is_empty() {
        return Ok(());
    }
    let strings = |acl: &TopicAcl| -> Result<[CString; 3], KafkaError> {
        let c = |value: &str| {
            CString::new(value)
                .map_err(|_| KafkaError::AdminOpCreation(format!("an ACL field holds a NUL byte: {acl:?}")))
        };
        Ok([c(&acl.topic)?, c(&acl.principal)?, c(&acl.host)?])
    };
    let fields = acls.iter().map(strings).collect::<Result<Vec<_>, _>>()?;
    let timeout_ms = native::millis(timeout);
    let rk = client.native_ptr();
    // SAFETY: librdkafka copies the strings into each binding; the bindings are owned and destroyed once, after the
    // request (which copies them) was made; the results read below belong to the event and live as long as it does.
    unsafe {
        let mut bindings = Vec::with_capacity(acls.len());
        for (acl, [topic, principal, host]) in acls.iter().zip(&fields) {
            let operation = match acl.operation {
                Operation::Read | Operation::All => rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_READ,
                Operation::Describe => rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_DESCRIBE,
                Operation::Other => {
                    return Err(KafkaError::AdminOpCreation(format!("ferry never grants this ACL: {acl:?}")))
                }
            };
            let mut error_text = [0 as c_char; 256];
            let binding = Owned {
                ptr: rd::rd_kafka_AclBinding_new(
                    rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                    topic.as_ptr(),
                    rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                    principal.as_ptr(),
                    host.as_ptr(),
                    operation,
                    rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                    error_text.as_mut_ptr(),
                    error_text.len(),
                ),
                destroy: rd::rd_kafka_AclBinding_destroy,
            };
            if binding.ptr.is_null() {
                let text = CStr::from_ptr(error_text.as_ptr()).to_string_lossy().into_owned();
                return Err(KafkaError::AdminOpCreation(format!("{acl:?}: {text}")));
            }
            bindings.push(binding);
        }
        let mut pointers: Vec<*mut rd::rd_kafka_AclBinding_t> = bindings.iter().map(|binding| binding.ptr).collect();
        let options = native::options(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS, timeout_ms)?;
        let queue = native::queue(rk);
        rd::rd_kafka_CreateAcls(rk, pointers.as_mut_ptr(), pointers.len(), options.ptr, queue.ptr);
        let event = native::answer(&queue, timeout_ms)?;
        let result = rd::rd_kafka_event_CreateAcls_result(event.ptr);
        if result.is_null() {
            return Err(KafkaError::AdminOpCreation("CreateAcls answered with another event".to_owned()));
        }
        let mut count = 0_usize;
        let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut count);
        for index in 0..count {
            let error = rd::rd_kafka_acl_result_error(*results.add(index));
            if !error.is_null() {
                let code = rd::rd_kafka_error_code(error);
                if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return Err(KafkaError::AdminOp(code.into()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(topic: &str, principal: &str, operation: Operation) -> TopicAcl {
        TopicAcl { topic: topic.to_owned(), principal: principal.to_owned(), host: "*".to_owned(), operation }
    }

    #[test]
    fn read_and_describe_are_mirrored_all_becomes_read_and_nothing_else_is_granted() {
        let source = [
            acl("orders", "User:reader", Operation::Read),
            acl("orders", "User:reader", Operation::Describe),
            acl("orders", "User:owner", Operation::All),
            acl("orders", "User:producer", Operation::Other),
            acl("payments", "User:reader", Operation::Read),
        ];
        let remote = BTreeMap::from([("orders".to_owned(), "us-east.orders".to_owned())]);
        let expected = BTreeSet::from([
            acl("us-east.orders", "User:reader", Operation::Read),
            acl("us-east.orders", "User:reader", Operation::Describe),
            acl("us-east.orders", "User:owner", Operation::Read),
        ]);
        assert_eq!(mirrored(&source, &remote), expected, "payments is not replicated, and WRITE never mirrored");
    }

    #[test]
    fn hosts_are_kept() {
        let mut source = acl("orders", "User:reader", Operation::Read);
        source.host = "10.0.0.7".to_owned();
        let remote = BTreeMap::from([("orders".to_owned(), "orders".to_owned())]);
        let mirrored = mirrored(&[source], &remote);
        assert_eq!(mirrored.into_iter().next().map(|acl| acl.host), Some("10.0.0.7".to_owned()));
    }
}

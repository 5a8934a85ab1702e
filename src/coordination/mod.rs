//! What members and the controller share in etcd: the key layout, the assignment record each member reads, and
//! the errors of coordination.
//!
//! Keys under the configured prefix:
//! - `members/<member>`: a live member (bound to its lease), JSON [`MemberInfo`];
//! - `leader`: the controller's member id (bound to its lease); its create revision is the leadership's identity;
//! - `assignments/<member>`: what the controller assigned to a member, JSON [`AssignedWork`], written only in
//!   transactions guarded by that create revision;
//! - `owners/<flow>/<topic>/<partition>`: the one member running a task (bound to that member's lease); `<flow>`
//!   and `<topic>` are percent-encoded ([`keys`]), so a name holding `/` cannot make one task's key another's;
//! - `checkpoints/...` and `groups/...`: the checkpoint store's (see [`crate::checkpoint`]).
//!
//! Invariant: every key a member writes that says "I hold this" is bound to its lease, so a crashed member's
//! leadership, membership and tasks all become free together when its lease expires.

pub mod assignment;
pub mod controller;
pub mod election;
pub mod etcd;
pub mod keys;
pub mod membership;
pub mod ownership;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::coordination::etcd::EtcdError;
use crate::coordination::keys::{decode_segment, encode_segment};
use crate::replication::progress::TaskId;

/// How often members poll the leader and their assignment, and the controller polls membership. Together with
/// the lease TTL it bounds how fast a crashed member's tasks move (TTL + about two polls).
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Errors of coordination through etcd.
#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    /// etcd did not answer or refused the request.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The member's lease is gone (expired while etcd could not be reached, or revoked): everything it held is free.
    #[error("the member's etcd lease {lease:x} expired; its tasks may already run elsewhere")]
    LeaseLost {
        /// The lost lease.
        lease: i64,
    },
    /// Another member became the controller; this one's guarded write was refused.
    #[error("no longer the controller: leadership {revision} was replaced")]
    Deposed {
        /// The create revision of the lost leadership.
        revision: i64,
    },
    /// A value in etcd could not be decoded.
    #[error("etcd key {key} holds an unreadable value: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// What a member says about itself in `members/<member>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its id.
    pub id: String,
    /// Where its HTTP endpoint listens, for `ferry status`.
    pub http: String,
    /// When it joined, milliseconds since the Unix epoch.
    pub joined_at_ms: i64,
    /// ferry version it runs.
    pub version: String,
}

/// A member's share of one fleet-wide throttle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleShare {
    /// The throttle's `from` (region or alias) as configured.
    pub from: String,
    /// The throttle's `to`.
    pub to: String,
    /// This member's part of the budget.
    pub bytes_per_second: u64,
}

/// What the controller assigned to one member: `assignments/<member>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedWork {
    /// Increases with every assignment the controller writes, across leaders.
    pub generation: u64,
    /// The controller that wrote it.
    pub leader: String,
    /// Tasks by flow, then topic, then partitions: compact for thousands of partitions.
    pub tasks: BTreeMap<String, BTreeMap<String, Vec<i32>>>,
    /// The member's throttle shares.
    pub throttles: Vec<ThrottleShare>,
}

impl AssignedWork {
    /// The assigned tasks as ids.
    pub fn task_ids(&self) -> BTreeSet<TaskId> {
        self.tasks
            .iter()
            .flat_map(|(flow, topics)| {
                topics.iter().flat_map(move |(topic, partitions)| {
                    partitions.iter().map(move |partition| TaskId::new(flow, topic, *partition))
                })
            })
            .collect()
    }

    /// Groups `tasks` into the record's compact form.
    pub fn group(tasks: &BTreeSet<TaskId>) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
        let mut grouped: BTreeMap<String, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        for task in tasks {
            grouped
                .entry(task.flow.to_string())
                .or_default()
                .entry(task.topic.to_string())
                .or_default()
                .push(task.partition);
        }
        grouped
    }
}

/// Key suffix of a member's registration.
pub fn member_key(member: &str) -> String {
    format!("members/{member}")
}

/// Key suffix of the leadership.
pub const LEADER_KEY: &str = "leader";

/// Key suffix of a member's assignment.
pub fn assignment_key(member: &str) -> String {
    format!("assignments/{member}")
}

/// Key suffix of a task's owner; flow and topic are percent-encoded segments, so the key names exactly one task.
pub fn owner_key(task: &TaskId) -> String {
    format!("owners/{}/{}/{}", encode_segment(&task.flow), encode_segment(&task.topic), task.partition)
}

/// Parses the suffix of an owner key back into a task id.
pub fn task_of_owner_key(suffix: &str) -> Option<TaskId> {
    let mut parts = suffix.strip_prefix("owners/")?.splitn(3, '/');
    let (flow, topic, partition) = (parts.next()?, parts.next()?, parts.next()?);
    Some(TaskId::new(&decode_segment(flow)?, &decode_segment(topic)?, partition.parse().ok()?))
}

/// A fresh member id: the host name (the pod name on Kubernetes) and a random suffix, so a restarted process is a
/// new member and never mistakes the previous incarnation's keys for its own.
pub fn new_member_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "ferry".to_owned());
    let host: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_i64(crate::clock::now_ms());
    format!("{host}-{:08x}", hasher.finish() as u32)
}

/// Every member's assignment as the controller last wrote it, by member id.
pub async fn read_assignments(
    etcd: &crate::coordination::etcd::Etcd,
) -> Result<BTreeMap<String, AssignedWork>, CoordinationError> {
    let prefix = etcd.key(&assignment_key(""));
    let response = {
        let prefix = prefix.clone();
        etcd.timed("assignments_get", |mut client| async move {
            client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await
        })
        .await?
    };
    let mut assignments = BTreeMap::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(member) = key.strip_prefix(&prefix) else { continue };
        assignments.insert(member.to_owned(), decode(&key, kv.value())?);
    }
    Ok(assignments)
}

/// Decodes a JSON value read from `key`.
pub fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, CoordinationError> {
    serde_json::from_slice(value)
        .map_err(|error| CoordinationError::Corrupt { key: key.to_owned(), message: error.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_work_round_trips_task_ids() {
        let tasks: BTreeSet<TaskId> =
            [TaskId::new("a", "t1", 0), TaskId::new("a", "t1", 3), TaskId::new("b", "t2", 1)].into_iter().collect();
        let work = AssignedWork { tasks: AssignedWork::group(&tasks), ..AssignedWork::default() };
        assert_eq!(work.task_ids(), tasks);
    }

    #[test]
    fn owner_keys_parse_back() {
        let task = TaskId::new("east-to-west", "orders.v1", 17);
        assert_eq!(task_of_owner_key(&owner_key(&task)), Some(task));
        assert_eq!(task_of_owner_key("owners/x/y"), None);
    }

    #[test]
    fn owner_keys_of_names_with_slashes_and_percents_round_trip_and_stay_apart() {
        // Unencoded, the first two would both be `owners/a/b/c/0`; a `%` must come back as itself, not as an escape.
        let tasks = [
            TaskId::new("a/b", "c", 0),
            TaskId::new("a", "b/c", 0),
            TaskId::new("east-to-west", "100%", 1),
            TaskId::new("east-to-west", "100%25", 1),
            TaskId::new("east-to-west", "orders/v1", 2),
        ];
        let keys: BTreeSet<String> = tasks.iter().map(owner_key).collect();
        assert_eq!(keys.len(), tasks.len(), "two tasks share an owner key: {keys:?}");
        for task in &tasks {
            let key = owner_key(task);
            assert_eq!(key.matches('/').count(), 3, "{key}");
            assert_eq!(task_of_owner_key(&key).as_ref(), Some(task), "{key}");
        }
        assert_eq!(owner_key(&TaskId::new("east-to-west", "orders.v1", 17)), "owners/east-to-west/orders.v1/17");
        assert_eq!(task_of_owner_key("owners/a%2/b/0"), None, "a malformed escape is not a task");
    }

    #[test]
    fn member_ids_are_unique_per_call() {
        assert_ne!(new_member_id(), new_member_id());
    }
}

//! Leader election by lease and transaction: the `leader` key is created only if absent, bound to the candidate's
//! lease; its create revision identifies the leadership and guards every write the controller makes.
//!
//! Invariant: a controller write carries `create_revision(leader) == its revision` as a condition, so once the key
//! was deleted (lease expired or revoked) and re-created by another member, the deposed controller's writes fail.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::coordination::etcd::Etcd;
use crate::coordination::membership::Membership;
use crate::coordination::{assignment_key, decode, AssignedWork, CoordinationError, LEADER_KEY};

/// Proof of leadership: the leader key's create revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// Create revision of the `leader` key this member made.
    pub revision: i64,
}

impl Leadership {
    /// The condition every controller write is guarded by.
    pub fn guard(&self, etcd: &Etcd) -> Compare {
        Compare::create_revision(etcd.key(LEADER_KEY), CompareOp::Equal, self.revision)
    }
}

/// What one poll saw: who leads, whether this member does, and this member's assignment.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The current leader's member id, if any.
    pub leader: Option<String>,
    /// Set when this member is the leader.
    pub leadership: Option<Leadership>,
    /// This member's assignment, if the controller wrote one.
    pub assignment: Option<AssignedWork>,
}

/// One round trip: becomes leader if no one is, and reads the leader and this member's assignment.
pub async fn campaign_and_observe(etcd: &Etcd, member: &Membership) -> Result<Observed, CoordinationError> {
    let leader_key = etcd.key(LEADER_KEY);
    let assignment = etcd.key(&assignment_key(&member.id));
    let reads = [TxnOp::get(leader_key.clone(), None), TxnOp::get(assignment.clone(), None)];
    let txn = Txn::new()
        .when([Compare::create_revision(leader_key.clone(), CompareOp::Equal, 0)])
        .and_then(
            [
                vec![TxnOp::put(
                    leader_key.clone(),
                    member.id.clone(),
                    Some(PutOptions::new().with_lease(member.lease)),
                )],
                reads.to_vec(),
            ]
            .concat(),
        )
        .or_else(reads.to_vec());
    let response = etcd.timed("campaign_observe", |mut client| async move { client.txn(txn).await }).await?;
    let mut observed = Observed::default();
    let mut gets = response.op_responses().into_iter().filter_map(|op| match op {
        TxnOpResponse::Get(get) => Some(get),
        _ => None,
    });
    if let Some(kv) = gets.next().and_then(|get| get.kvs().first().cloned()) {
        let leader = String::from_utf8_lossy(kv.value()).into_owned();
        if leader == member.id && kv.lease() == member.lease {
            observed.leadership = Some(Leadership { revision: kv.create_revision() });
        }
        observed.leader = Some(leader);
    }
    if let Some(kv) = gets.next().and_then(|get| get.kvs().first().cloned()) {
        observed.assignment = Some(decode(&assignment, kv.value())?);
    }
    Ok(observed)
}

/// The current leader's member id, if any (for `ferry status`).
pub async fn current_leader(etcd: &Etcd) -> Result<Option<String>, CoordinationError> {
    let key = etcd.key(LEADER_KEY);
    let response = etcd.timed("leader_get", |mut client| async move { client.get(key, None).await }).await?;
    Ok(response.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

//! Leader election by lease and transaction: the `leader` key is created only if absent, bound to the candidate's
//! lease; its create revision identifies the leadership and guards every write the controller makes.
//!
//! Invariant: a controller write carries `create_revision(leader) == its revision` as a condition, so once the key
//! was deleted (lease expired or revoked) and re-created by another member, the deposed controller's writes fail.
//!
//! A member sees the election as a watched value: its [`Elector`] campaigns and observes, and publishes each new
//! [`Observed`] on a `tokio::sync::watch` channel; the member starts and stops its controller and follows its
//! assignment by watching that value.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, WatchStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::coordination::etcd::Etcd;
use crate::coordination::membership::Membership;
use crate::coordination::{assignment_key, decode, AssignedWork, CoordinationError, LEADER_KEY, POLL_INTERVAL};

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

/// What one look at the election saw: who leads, whether this member does, and this member's assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// Campaigns and observes for one membership, and publishes what it sees.
pub struct Elector {
    etcd: Etcd,
    membership: Membership,
    observed: watch::Sender<Option<Observed>>,
}

impl Elector {
    /// An elector for `membership`, and the value it publishes: `None` until etcd first answered.
    pub fn new(etcd: Etcd, membership: Membership) -> (Self, watch::Receiver<Option<Observed>>) {
        let (observed, receiver) = watch::channel(None);
        (Self { etcd, membership, observed }, receiver)
    }

    /// Looks at the election whenever the leader key or this member's assignment changes (an etcd watch), and at
    /// least every poll interval (the watch may be down while etcd is), until `shutdown`. While etcd does not
    /// answer, the last observation stays published: the member runs on its current assignment meanwhile.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut changes: Option<WatchStream> = None;
        let mut unreachable_since: Option<Instant> = None;
        loop {
            match campaign_and_observe(&self.etcd, &self.membership).await {
                Ok(observed) => {
                    if let Some(since) = unreachable_since.take() {
                        info!(after = ?since.elapsed(), "etcd answers again");
                    }
                    self.observed.send_if_modified(|current| {
                        let changed = current.as_ref() != Some(&observed);
                        *current = Some(observed);
                        changed
                    });
                    if changes.is_none() {
                        changes = self.watch_changes().await;
                    }
                }
                Err(error) => {
                    if unreachable_since.is_none() {
                        warn!(%error, "cannot read the assignment from etcd; running on the current one until it answers");
                        unreachable_since = Some(Instant::now());
                    }
                    changes = None;
                }
            }
            let change = async {
                match changes.as_mut() {
                    Some(stream) => stream.message().await.ok().flatten().is_some(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                alive = change => {
                    if !alive {
                        debug!("the election watch ended; polling until it is set up again");
                        changes = None;
                    }
                }
            }
        }
    }

    /// A watch on the leader key and this member's assignment, or `None` if etcd refused it (polling goes on).
    async fn watch_changes(&self) -> Option<WatchStream> {
        let (leader, assignment) = (self.etcd.key(LEADER_KEY), self.etcd.key(&assignment_key(&self.membership.id)));
        let watched = self
            .etcd
            .timed("election_watch", |mut client| async move {
                let mut stream = client.watch(leader, None).await?;
                stream.watch(assignment, None).await?;
                Ok(stream)
            })
            .await;
        watched.map_err(|error| debug!(%error, "cannot watch the election; polling")).ok()
    }
}

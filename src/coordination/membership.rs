//! Membership: a member registers under `members/<id>` with a lease and keeps the lease alive; the controller lists
//! the live members.
//!
//! Invariant: while etcd cannot be reached the member keeps its lease in mind and keeps running (no one else can
//! take its tasks without etcd either); only an answer from etcd saying the lease is gone ends the membership.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::coordination::etcd::Etcd;
use crate::coordination::{decode, member_key, CoordinationError, MemberInfo};

/// A member's registration: its id and the lease every key it holds is bound to.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The member id.
    pub id: String,
    /// The lease id.
    pub lease: i64,
    /// The lease TTL.
    pub ttl: Duration,
}

impl Membership {
    /// Grants a lease and registers `info` under it.
    pub async fn join(etcd: &Etcd, info: &MemberInfo, ttl: Duration) -> Result<Self, CoordinationError> {
        let ttl_seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = etcd
            .timed("lease_grant", |mut client| async move { client.lease_grant(ttl_seconds, None).await })
            .await?
            .id();
        let key = etcd.key(&member_key(&info.id));
        let value = serde_json::to_vec(info).expect("member info serializes");
        etcd.timed("member_put", |mut client| async move {
            client.put(key, value, Some(PutOptions::new().with_lease(lease))).await
        })
        .await?;
        info!(member = info.id.as_str(), lease = format!("{lease:x}"), ttl = ?ttl, "joined the fleet");
        Ok(Self { id: info.id.clone(), lease, ttl })
    }

    /// Keeps the lease alive every third of its TTL until `shutdown`. Cancels `lost` and returns when etcd says the
    /// lease no longer exists; failures to reach etcd are retried and do not end the membership.
    pub async fn keep_alive(&self, etcd: &Etcd, lost: CancellationToken, shutdown: CancellationToken) {
        let period = (self.ttl / 3).max(Duration::from_millis(300));
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let lease = self.lease;
            let answer = etcd
                .timed("lease_keepalive", |mut client| async move {
                    let renewed = async {
                        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
                        keeper.keep_alive().await?;
                        stream.message().await
                    };
                    match renewed.await {
                        Ok(response) => Ok(response.map_or(0, |response| response.ttl())),
                        // etcd answers a renewal of an unknown lease with TTL 0, which the client turns into this.
                        Err(etcd_client::Error::LeaseKeepAliveError(message)) if message.contains("not found") => Ok(0),
                        Err(error) => Err(error),
                    }
                })
                .await;
            match answer {
                Ok(ttl) if ttl > 0 => {
                    if let Some(since) = unreachable_since.take() {
                        info!(lease = format!("{lease:x}"), after = ?since.elapsed(), "etcd reachable again; lease kept");
                    }
                }
                Ok(_) => {
                    warn!(
                        member = self.id.as_str(),
                        lease = format!("{lease:x}"),
                        "etcd says the member's lease expired"
                    );
                    lost.cancel();
                    return;
                }
                Err(error) => {
                    if unreachable_since.is_none() {
                        warn!(%error, "cannot renew the member lease; running on the current assignment meanwhile");
                        unreachable_since = Some(tokio::time::Instant::now());
                    }
                }
            }
        }
    }

    /// Ends the membership now: revoking the lease frees the registration, leadership and every owned task at once.
    /// Called after the last checkpoint is written.
    pub async fn leave(&self, etcd: &Etcd) -> Result<(), CoordinationError> {
        let lease = self.lease;
        etcd.timed("lease_revoke", |mut client| async move { client.lease_revoke(lease).await }).await?;
        info!(member = self.id.as_str(), "left the fleet");
        Ok(())
    }
}

/// Every registered member, by id.
pub async fn live_members(etcd: &Etcd) -> Result<BTreeMap<String, MemberInfo>, CoordinationError> {
    let prefix = etcd.key(&member_key(""));
    let response = {
        let prefix = prefix.clone();
        etcd.timed("members_get", |mut client| async move {
            client.get(prefix, Some(GetOptions::new().with_prefix())).await
        })
        .await?
    };
    let mut members = BTreeMap::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let info: MemberInfo = decode(&key, kv.value())?;
        members.insert(info.id.clone(), info);
    }
    Ok(members)
}

//! A coordinated member's link to the fleet: its membership sessions, the controller while it leads, task
//! ownership, and the fleet view `/status` shows.
//!
//! Invariant: when the member's lease is lost, every task it ran is stopped and checkpointed before it rejoins,
//! because its owner keys are already free for other members.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::coordination::controller::Controller;
use crate::coordination::etcd::Etcd;
use crate::coordination::membership::live_members;
use crate::coordination::membership::Membership;
use crate::coordination::ownership::Ownership;
use crate::coordination::read_assignments;
use crate::coordination::AssignedWork;
use crate::coordination::CoordinationError;
use crate::coordination::MemberInfo;
use crate::coordination::POLL_INTERVAL;
use crate::ops::http::FleetMember;
use crate::ops::http::FleetStatus;
use crate::replication::progress::TaskId;
use crate::topics::discovery::Discovered;

use super::{lead, lock, Shared, DRAIN_TIMEOUT, FLEET_VIEW_INTERVAL};
use crate::coordination::election::Elector;
use crate::topics::discovery::Waiting;

/// A coordinated member's link to the fleet: membership sessions, the leader's controller, and task ownership.
pub(super) struct Coordinator {
    pub(super) shared: Arc<Shared>,
    pub(super) etcd: Etcd,
    pub(super) member_id: String,
    pub(super) http: String,
    pub(super) wanted: Arc<watch::Sender<Discovered>>,
    pub(super) running: watch::Receiver<BTreeSet<TaskId>>,
    pub(super) fleet: Arc<RwLock<Option<FleetStatus>>>,
    /// The current membership, left by the member after its final checkpoint.
    pub(super) membership: Arc<Mutex<Option<Membership>>>,
}

impl Coordinator {
    /// Joins, follows the assignment and leads when elected, until `shutdown`; rejoins when the lease is lost.
    pub(super) async fn run(self, shutdown: CancellationToken) {
        let ttl = self
            .shared
            .config
            .borrow()
            .checkpoint
            .etcd
            .as_ref()
            .map_or(Duration::from_secs(10), |e| e.lease_ttl.as_std());
        let info = MemberInfo {
            id: self.member_id.clone(),
            http: self.http.clone(),
            joined_at_ms: crate::clock::now_ms(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let mut logged_failure = false;
        while !shutdown.is_cancelled() {
            let membership = match Membership::join(&self.etcd, &info, ttl).await {
                Ok(membership) => membership,
                Err(error) => {
                    if !logged_failure {
                        error!(%error, "cannot join the fleet through etcd; retrying");
                        logged_failure = true;
                    }
                    self.publish_waiting(Waiting::CannotJoin(error.to_string()));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(POLL_INTERVAL) => continue,
                    }
                }
            };
            logged_failure = false;
            *lock(&self.membership) = Some(membership.clone());
            let lease_lost = self.session(&membership, &shutdown).await;
            if !lease_lost {
                return;
            }
            // Everything this member held is free and may already run elsewhere: stop, checkpoint, rejoin.
            lock(&self.membership).take();
            self.publish_waiting(Waiting::LeaseExpired);
            let stopped = self.running.clone();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(5), async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(BTreeSet::is_empty).await;
            })
            .await;
            if let Err(error) = self.shared.checkpointer.flush().await {
                warn!(%error, "cannot checkpoint after losing the lease");
            }
        }
    }

    fn publish_waiting(&self, reason: Waiting) {
        self.shared.metrics.owned_tasks.set(0);
        self.wanted.send_replace(Discovered { waiting_for: Some(reason), ..Discovered::default() });
    }

    /// One membership: returns `true` when it ended because the lease was lost, `false` on shutdown.
    async fn session(&self, membership: &Membership, shutdown: &CancellationToken) -> bool {
        let session = shutdown.child_token();
        let lost = CancellationToken::new();
        let mut joins = JoinSet::new();
        {
            let (membership, etcd, lost, session) =
                (membership.clone(), self.etcd.clone(), lost.clone(), session.clone());
            joins.spawn(async move { membership.keep_alive(&etcd, lost, session).await });
        }
        let (assigned_tx, assigned_rx) = watch::channel(None::<AssignedWork>);
        {
            // Ownership publishes straight into the supervisor's wanted channel, which outlives the session.
            let ownership = Ownership::new(
                self.etcd.clone(),
                membership.clone(),
                self.shared.store.clone(),
                self.shared.checkpointer.clone(),
                self.shared.registry.clone(),
                self.shared.config.subscribe(),
                assigned_rx,
                self.running.clone(),
                self.wanted.clone(),
                self.shared.metrics.clone(),
                DRAIN_TIMEOUT,
            );
            joins.spawn(ownership.run(session.clone()));
        }
        let (elector, mut observed) = Elector::new(self.etcd.clone(), membership.clone());
        joins.spawn(elector.run(session.clone()));
        let mut controller: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
        let mut fleet_view_due = tokio::time::interval(FLEET_VIEW_INTERVAL);
        fleet_view_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lease_lost = loop {
            let controller_stopped = async {
                match controller.as_mut() {
                    Some((_, handle)) => {
                        let _ = handle.await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break false,
                _ = lost.cancelled() => break true,
                changed = observed.changed() => {
                    if changed.is_err() {
                        // The elector only stops with the session.
                        break false;
                    }
                }
                () = controller_stopped => {
                    // It could not take over (etcd failed it); still the leader, so try again after a poll.
                    controller = None;
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                _ = fleet_view_due.tick() => {
                    let leader = observed.borrow().as_ref().and_then(|seen| seen.leader.clone());
                    self.refresh_fleet_view(leader).await;
                    continue;
                }
            }
            let Some(seen) = observed.borrow_and_update().clone() else { continue };
            if let Some(work) = &seen.assignment {
                lock(&self.shared.clients).apply_shares(&work.throttles);
            }
            assigned_tx.send_if_modified(|current| {
                let changed = *current != seen.assignment;
                current.clone_from(&seen.assignment);
                changed
            });
            match (seen.leadership, &controller) {
                (Some(leadership), None) => controller = Some(self.start_controller(leadership, &session)),
                (None, Some((token, _))) => {
                    info!("no longer the leader; stopping the controller");
                    token.cancel();
                    controller = None;
                }
                _ => {}
            }
        };
        session.cancel();
        if let Some((token, handle)) = controller {
            token.cancel();
            let _ = handle.await;
        }
        while joins.join_next().await.is_some() {}
        lease_lost
    }

    async fn refresh_fleet_view(&self, leader: Option<String>) {
        match fleet_view(&self.etcd).await {
            Ok(members) => {
                *self.fleet.write().unwrap_or_else(|p| p.into_inner()) =
                    Some(FleetStatus { member: self.member_id.clone(), leader, members });
            }
            Err(error) => debug!(%error, "cannot read the fleet's members"),
        }
    }

    fn start_controller(
        &self,
        leadership: crate::coordination::election::Leadership,
        session: &CancellationToken,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let token = session.child_token();
        let (shared, etcd, member) = (self.shared.clone(), self.etcd.clone(), self.member_id.clone());
        let stop = token.clone();
        let handle = tokio::spawn(async move {
            let (discovered_tx, discovered_rx) = watch::channel(Discovered::default());
            let taken = Controller::take_over(
                etcd,
                member,
                leadership,
                shared.config.subscribe(),
                discovered_rx,
                shared.store.clone(),
                shared.metrics.clone(),
            )
            .await;
            let (controller, seed) = match taken {
                Ok(taken) => taken,
                Err(error) => {
                    warn!(%error, "cannot take over as controller; trying again next poll");
                    return;
                }
            };
            let services = stop.child_token();
            let lead_handle = tokio::spawn(lead(shared.clone(), Arc::new(discovered_tx), seed, services.clone()));
            if let Err(error) = controller.run(stop.clone()).await {
                warn!(%error, "controller stopped");
            }
            services.cancel();
            let _ = lead_handle.await;
            shared.metrics.leader.set(0);
        });
        (token, handle)
    }
}

/// The live members with their assigned task counts.
pub(super) async fn fleet_view(etcd: &Etcd) -> Result<Vec<FleetMember>, CoordinationError> {
    let members = live_members(etcd).await?;
    let assignments = read_assignments(etcd).await?;
    Ok(members
        .into_values()
        .map(|info| FleetMember {
            assigned_tasks: assignments.get(&info.id).map_or(0, |work| work.task_ids().len()),
            id: info.id,
            http: info.http,
        })
        .collect())
}

/// The address other hosts reach this member's HTTP endpoint at: the pod IP on Kubernetes (`POD_IP`), else the
/// bound address, with an unspecified IP replaced by the host name.
pub(super) fn advertised(bound: SocketAddr) -> String {
    if let Ok(ip) = std::env::var("POD_IP") {
        if !ip.is_empty() {
            return format!("{ip}:{}", bound.port());
        }
    }
    if bound.ip().is_unspecified() {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        if !host.is_empty() {
            return format!("{host}:{}", bound.port());
        }
    }
    bound.to_string()
}

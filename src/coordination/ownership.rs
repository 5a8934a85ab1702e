//! Task ownership: between a member's assignment and its supervisor. A task starts only after this member took its
//! `owners/<task>` key (created only if absent, bound to the member's lease), and the key is given up only after
//! the task stopped and its last checkpoint was written.
//!
//! Invariant: at most one member holds a task's owner key at any time, and a member runs only tasks whose key it
//! holds; a task that moves is released (drained, checkpointed) by the old member before the new one can start it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::checkpoint::{CheckpointStore, Checkpointer, TaskKey};
use crate::config::Config;
use crate::coordination::etcd::Etcd;
use crate::coordination::membership::Membership;
use crate::coordination::{owner_key, task_of_owner_key, AssignedWork, CoordinationError, POLL_INTERVAL};
use crate::ops::metrics::Metrics;
use crate::replication::progress::{Registry, TaskId};
use crate::topics::discovery::{Discovered, TaskSpec, Waiting};
use crate::topics::naming::TopicNaming;

/// Owner keys taken or released per transaction: well under etcd's default 128 operations.
const KEYS_PER_TXN: usize = 64;

/// Takes and gives up owner keys to follow the assignment, and tells the supervisor what to run.
pub struct Ownership {
    etcd: Etcd,
    membership: Membership,
    store: Arc<dyn CheckpointStore>,
    checkpointer: Checkpointer,
    registry: Arc<Registry>,
    config: watch::Receiver<Arc<Config>>,
    assigned: watch::Receiver<Option<AssignedWork>>,
    running: watch::Receiver<BTreeSet<TaskId>>,
    wanted: Arc<watch::Sender<Discovered>>,
    metrics: Metrics,
    drain_timeout: Duration,
    owned: BTreeMap<TaskId, TaskSpec>,
    /// Tasks whose owner keys this member holds but which wait because their stored checkpoint cannot be read,
    /// with the reason (logged once per reason).
    damaged: BTreeMap<TaskId, String>,
}

impl Ownership {
    /// Ownership for `membership`; `running` is the supervisor's running set, `wanted` what the supervisor runs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        etcd: Etcd,
        membership: Membership,
        store: Arc<dyn CheckpointStore>,
        checkpointer: Checkpointer,
        registry: Arc<Registry>,
        config: watch::Receiver<Arc<Config>>,
        assigned: watch::Receiver<Option<AssignedWork>>,
        running: watch::Receiver<BTreeSet<TaskId>>,
        wanted: Arc<watch::Sender<Discovered>>,
        metrics: Metrics,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            etcd,
            membership,
            store,
            checkpointer,
            registry,
            config,
            assigned,
            running,
            wanted,
            metrics,
            drain_timeout,
            owned: BTreeMap::new(),
            damaged: BTreeMap::new(),
        }
    }

    /// Follows the assignment until `shutdown`. Owner keys are not released here on shutdown: the member revokes
    /// its lease after the final checkpoint, which frees them all at once.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                changed = self.assigned.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let Some(work) = self.assigned.borrow_and_update().clone() else {
                self.publish(None, Some(Waiting::FirstAssignment));
                continue;
            };
            let config = self.config.borrow().clone();
            let specs = task_specs(&config, &work);
            let unknown_flows = work.tasks.keys().filter(|flow| !specs.flows.contains(*flow)).count();
            let leaving: Vec<TaskId> = self.owned.keys().filter(|id| !specs.tasks.contains_key(*id)).cloned().collect();
            if !leaving.is_empty() {
                self.release(leaving, &shutdown).await;
            }
            let missing: Vec<TaskSpec> =
                specs.tasks.values().filter(|spec| !self.owned.contains_key(&spec.id)).cloned().collect();
            if !missing.is_empty() {
                if let Err(error) = self.acquire(missing).await {
                    warn!(%error, "cannot take task ownership; retrying");
                }
            }
            self.damaged.retain(|id, _| specs.tasks.contains_key(id));
            let waiting = specs.tasks.len() - specs.tasks.keys().filter(|id| self.owned.contains_key(*id)).count();
            let reason = if let Some((task, why)) = self.damaged.iter().next() {
                Some(Waiting::DamagedCheckpoints(self.damaged.len(), format!("task {task}: {why}")))
            } else if waiting > 0 {
                Some(Waiting::PreviousOwners(waiting))
            } else if unknown_flows > 0 {
                Some(Waiting::UnknownFlows(unknown_flows))
            } else {
                None
            };
            self.publish(Some(&work), reason);
        }
    }

    fn publish(&self, work: Option<&AssignedWork>, waiting_for: Option<Waiting>) {
        self.metrics.owned_tasks.set(i64::try_from(self.owned.len()).unwrap_or(i64::MAX));
        let tasks = self.owned.clone();
        self.wanted.send_if_modified(|wanted| {
            let next = Discovered {
                tasks,
                complete: waiting_for.is_none(),
                ever_complete: wanted.ever_complete || work.is_some(),
                // Only discovery knows; the controller's discovery shows on its own member's status.
                problems: Vec::new(),
                waiting_for,
            };
            let changed = *wanted != next;
            *wanted = next;
            changed
        });
    }

    /// Takes the free owner keys among `specs` and loads where each of those tasks left off.
    async fn acquire(&mut self, specs: Vec<TaskSpec>) -> Result<(), CoordinationError> {
        let prefix = self.etcd.key("owners/");
        let holders: BTreeMap<TaskId, (String, i64)> = {
            let prefix = prefix.clone();
            let response = self
                .etcd
                .timed("owners_get", |mut client| async move {
                    client.get(prefix, Some(GetOptions::new().with_prefix())).await
                })
                .await?;
            response
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let key = String::from_utf8_lossy(kv.key());
                    let task = task_of_owner_key(key.strip_prefix(&self.etcd.key(""))?)?;
                    Some((task, (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())))
                })
                .collect()
        };
        let mut taken = Vec::new();
        let mut free = Vec::new();
        for spec in specs {
            match holders.get(&spec.id) {
                None => free.push(spec),
                // Ours from an earlier round whose answer was lost.
                Some((holder, lease)) if *holder == self.membership.id && *lease == self.membership.lease => {
                    taken.push(spec)
                }
                Some((holder, _)) => debug!(task = %spec.id, holder, "task still owned by its previous member"),
            }
        }
        for batch in free.chunks(KEYS_PER_TXN) {
            let keys: Vec<String> = batch.iter().map(|spec| self.etcd.key(&owner_key(&spec.id))).collect();
            let txn = Txn::new()
                .when(
                    keys.iter()
                        .map(|key| Compare::create_revision(key.clone(), CompareOp::Equal, 0))
                        .collect::<Vec<_>>(),
                )
                .and_then(
                    keys.iter()
                        .map(|key| {
                            TxnOp::put(
                                key.clone(),
                                self.membership.id.clone(),
                                Some(PutOptions::new().with_lease(self.membership.lease)),
                            )
                        })
                        .collect::<Vec<_>>(),
                );
            let response = self.etcd.timed("owners_take", |mut client| async move { client.txn(txn).await }).await?;
            if response.succeeded() {
                taken.extend(batch.iter().cloned());
            } else {
                // Someone took one of them between the read and the write; the next round reads again.
                debug!(tasks = batch.len(), "owner keys changed while taking them; retrying next round");
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        let flows: BTreeSet<Arc<str>> = taken.iter().map(|spec| spec.id.flow.clone()).collect();
        // A flow whose load fails is left out: without their checkpoints its tasks would start from the beginning,
        // so they wait, with their keys kept (found as ours next round), and the load is retried then.
        let mut stored = BTreeMap::new();
        for flow in flows {
            match self.store.load_readable(&flow).await {
                Ok(loaded) => {
                    stored.insert(flow, loaded);
                }
                Err(error) => warn!(%flow, %error, "cannot load checkpoints for newly owned tasks; they wait"),
            }
        }
        // Damaged checkpoint data holds back only the tasks it may belong to; the keys stay ours, so the next round
        // reads again and starts them once the data is repaired or removed.
        taken.retain(|spec| {
            let Some((checkpoints, damage)) = stored.get(&spec.id.flow) else { return false };
            let key = TaskKey::from(&spec.id);
            let held_back = damage.holds_back(&key, checkpoints.contains_key(&key));
            match held_back {
                Some(reason) => {
                    if self.damaged.get(&spec.id) != Some(&reason) {
                        error!(
                            task = %spec.id,
                            %reason,
                            "task waits: its stored checkpoint cannot be read, and starting it from scratch would \
                             replicate its partition again from the beginning; repair or delete the named etcd key"
                        );
                    }
                    self.damaged.insert(spec.id.clone(), reason);
                    false
                }
                None => {
                    self.damaged.remove(&spec.id);
                    true
                }
            }
        });
        info!(tasks = taken.len(), "took task ownership");
        for mut spec in taken {
            let key = TaskKey::from(&spec.id);
            spec.resume = stored
                .get(&spec.id.flow)
                .and_then(|(checkpoints, _)| checkpoints.get(&key))
                .map(|c| c.position.clone());
            self.owned.insert(spec.id.clone(), spec);
        }
        Ok(())
    }

    /// Stops `tasks`, writes their last checkpoint, then gives up their owner keys.
    async fn release(&mut self, tasks: Vec<TaskId>, shutdown: &CancellationToken) {
        // Kept to put back: a release that cannot finish leaves the tasks ours, neither run twice nor released
        // unflushed, and the next round tries again.
        let specs: Vec<TaskSpec> = tasks.iter().filter_map(|id| self.owned.remove(id)).collect();
        self.publish(None, Some(Waiting::HandingOver(tasks.len())));
        let leaving: BTreeSet<TaskId> = tasks.iter().cloned().collect();
        let stopped = self.running.wait_for(|running| running.is_disjoint(&leaving));
        // A task bounds its own drain; the margin covers the join.
        if tokio::time::timeout(self.drain_timeout + Duration::from_secs(5), stopped).await.is_err() {
            warn!(tasks = tasks.len(), "tasks did not stop in time; keeping their ownership until they do");
            self.keep(specs);
            return;
        }
        if shutdown.is_cancelled() {
            return;
        }
        if let Err(error) = self.checkpointer.flush().await {
            warn!(%error, "cannot write the last checkpoint of moving tasks; keeping their ownership until it is written");
            self.keep(specs);
            return;
        }
        let mut by_flow: BTreeMap<Arc<str>, Vec<TaskKey>> = BTreeMap::new();
        for id in &tasks {
            by_flow.entry(id.flow.clone()).or_default().push(TaskKey::from(id));
            self.registry.remove(id);
        }
        for (flow, keys) in by_flow {
            if let Err(error) = self.store.released(&flow, &keys).await {
                debug!(%flow, %error, "store did not note the release");
            }
        }
        for batch in tasks.chunks(KEYS_PER_TXN) {
            let mut compares = Vec::new();
            let mut deletes = Vec::new();
            for id in batch {
                let key = self.etcd.key(&owner_key(id));
                compares.push(Compare::lease(key.clone(), CompareOp::Equal, self.membership.lease));
                deletes.push(TxnOp::delete(key, None));
            }
            let txn = Txn::new().when(compares).and_then(deletes.clone());
            match self.etcd.timed("owners_release", |mut client| async move { client.txn(txn).await }).await {
                Ok(response) if response.succeeded() => {}
                Ok(_) => {
                    // Some key is no longer ours (lease churn): delete the ones that still are, one by one.
                    for id in batch {
                        let key = self.etcd.key(&owner_key(id));
                        let txn = Txn::new()
                            .when([Compare::lease(key.clone(), CompareOp::Equal, self.membership.lease)])
                            .and_then([TxnOp::delete(key, None)]);
                        let _ =
                            self.etcd.timed("owners_release", |mut client| async move { client.txn(txn).await }).await;
                    }
                }
                Err(error) => warn!(%error, "cannot release owner keys; they are freed when this member's lease ends"),
            }
        }
        info!(tasks = tasks.len(), "handed over tasks after their last checkpoint");
    }

    fn keep(&mut self, specs: Vec<TaskSpec>) {
        for spec in specs {
            self.owned.insert(spec.id.clone(), spec);
        }
    }
}

/// The assigned tasks this member can run (their flow is in its config), with their target topics.
struct AssignedSpecs {
    flows: BTreeSet<String>,
    tasks: BTreeMap<TaskId, TaskSpec>,
}

fn task_specs(config: &Config, work: &AssignedWork) -> AssignedSpecs {
    let mut flows = BTreeSet::new();
    let mut tasks = BTreeMap::new();
    for flow in &config.flows {
        let Some(topics) = work.tasks.get(&flow.name) else { continue };
        flows.insert(flow.name.clone());
        let naming = TopicNaming::for_flow(config, flow);
        for (topic, partitions) in topics {
            let target_topic = naming.remote_topic(topic);
            for partition in partitions {
                let id = TaskId::new(&flow.name, topic, *partition);
                tasks.insert(id.clone(), TaskSpec { id, target_topic: target_topic.clone(), resume: None });
            }
        }
    }
    AssignedSpecs { flows, tasks }
}

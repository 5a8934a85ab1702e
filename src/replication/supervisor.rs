//! The supervisor: the one owner of every task on this member. It starts wanted tasks, stops unwanted ones and
//! restarts failed ones from their checkpoint after a backoff.
//!
//! Invariant: at most one task runs per partition. A task is started again only after its previous run has been
//! joined, so two loops never produce the same partition.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::checkpoint::{Checkpoint, TaskKey};
use crate::ops::metrics::Metrics;
use crate::replication::progress::{Position, Registry, TaskId, TaskProgress, TaskState};
use crate::replication::source::SourceConsumer;
use crate::replication::target::TargetProducer;
use crate::replication::task::{self, PassThroughClusters, Provenance, Refused, TaskContext, TaskError};
use crate::replication::throttle::Throttle;
use crate::replication::transaction::FlowTransactions;
use crate::topics::discovery::{Discovered, TaskSpec};

/// First restart delay after a failure; doubled per consecutive failure up to [`MAX_BACKOFF`], then jittered.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The delay before the restart after `failures` consecutive failures: doubling from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], of which the upper half is scaled by `jitter` (in `0.0..1.0`). Thousands of tasks failing
/// together (a target outage) then retry spread over half their backoff instead of in lockstep.
fn restart_delay(failures: u32, jitter: f64) -> Duration {
    let ceiling = FIRST_BACKOFF.saturating_mul(1 << (failures.clamp(1, 7) - 1)).min(MAX_BACKOFF);
    ceiling / 2 + (ceiling / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

/// A fraction in `0.0..1.0`, different per task and failure, and per process (the hasher's keys are random).
fn jitter_fraction(id: &TaskId, failures: u32) -> f64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::LazyLock<std::collections::hash_map::RandomState> =
        std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
    let hash = KEYS.hash_one((&*id.flow, &*id.topic, id.partition, failures));
    (hash >> 11) as f64 / (1_u64 << 53) as f64
}

/// The shared parts every task of one flow uses.
#[derive(Debug)]
pub struct FlowRuntime {
    /// The flow's consumer.
    pub source: Arc<SourceConsumer>,
    /// The target cluster's producer.
    pub target: TargetProducer,
    /// The region pair's throttle.
    pub throttle: Option<Arc<Throttle>>,
    /// Identity naming's loop guard.
    pub provenance: Option<Provenance>,
    /// Checkpoints loaded at start.
    pub stored: BTreeMap<TaskKey, Checkpoint>,
    /// Set for exactly-once delivery: the flow's transactional buckets.
    pub transactions: Option<Arc<FlowTransactions>>,
    /// Set for batch pass-through: the clusters its tasks reach by themselves.
    pub passthrough: Option<Arc<PassThroughClusters>>,
}

/// A change to the flows the supervisor runs, from a config reload.
#[derive(Debug)]
pub enum FlowUpdate {
    /// Adds a flow, or replaces one whose settings changed: its running tasks restart with the new runtime.
    Set(String, FlowRuntime),
    /// Removes a flow: its tasks stop.
    Remove(String),
}

/// Starts, stops and restarts tasks to match what discovery wants.
pub struct Supervisor {
    flows: BTreeMap<String, FlowRuntime>,
    registry: Arc<Registry>,
    metrics: Metrics,
    drain_timeout: Duration,
    /// Running tasks: how to stop each, and the target topic it writes to.
    running: HashMap<TaskId, (CancellationToken, String)>,
    joins: JoinSet<Result<(), TaskError>>,
    /// Which task each join handle runs, so a panic can still be attributed.
    join_ids: HashMap<tokio::task::Id, TaskId>,
    /// When each failed task may start again.
    retries: HashMap<TaskId, Instant>,
    /// Consecutive failures per task, for the backoff.
    failures: HashMap<TaskId, u32>,
    /// The offsets the target refused in each task's last failed run, for its retry.
    refused: HashMap<TaskId, Refused>,
    /// The tasks running now, for whoever must wait until a task stopped (ownership hand-over).
    running_tx: watch::Sender<BTreeSet<TaskId>>,
}

impl Supervisor {
    /// A supervisor over `flows`, registering task progress in `registry`.
    pub fn new(
        flows: BTreeMap<String, FlowRuntime>,
        registry: Arc<Registry>,
        metrics: Metrics,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            flows,
            registry,
            metrics,
            drain_timeout,
            running: HashMap::new(),
            joins: JoinSet::new(),
            join_ids: HashMap::new(),
            retries: HashMap::new(),
            failures: HashMap::new(),
            refused: HashMap::new(),
            running_tx: watch::channel(BTreeSet::new()).0,
        }
    }

    /// The set of running tasks, updated as tasks start and stop.
    pub fn running(&self) -> watch::Receiver<BTreeSet<TaskId>> {
        self.running_tx.subscribe()
    }

    /// Follows `wanted` until `shutdown`, then stops every task and waits for each to flush (bounded by the
    /// drain timeout).
    pub async fn run(
        mut self,
        mut wanted: watch::Receiver<Discovered>,
        mut updates: mpsc::Receiver<FlowUpdate>,
        shutdown: CancellationToken,
    ) {
        loop {
            let next_retry = self.retries.values().min().copied();
            tokio::select! {
                // Shutdown first so a busy stream of joins or changes cannot delay it.
                biased;
                _ = shutdown.cancelled() => break,
                Some(joined) = self.joins.join_next_with_id(), if !self.joins.is_empty() => {
                    self.joined(joined);
                    self.reconcile(&wanted.borrow().tasks);
                }
                changed = wanted.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let tasks = wanted.borrow_and_update().tasks.clone();
                    self.reconcile(&tasks);
                }
                _ = tokio::time::sleep_until(next_retry.unwrap_or_else(Instant::now)), if next_retry.is_some() => {
                    self.reconcile(&wanted.borrow().tasks);
                }
                Some(update) = updates.recv() => {
                    self.update_flow(update);
                    self.reconcile(&wanted.borrow().tasks);
                }
            }
        }
        self.stop_all().await;
    }

    fn update_flow(&mut self, update: FlowUpdate) {
        let name = match update {
            FlowUpdate::Set(name, runtime) => {
                info!(flow = name.as_str(), "flow (re)configured");
                self.flows.insert(name.clone(), runtime);
                name
            }
            FlowUpdate::Remove(name) => {
                info!(flow = name.as_str(), "flow removed");
                self.flows.remove(&name);
                name
            }
        };
        // Running tasks of the flow stop; those still wanted start again with the new runtime once joined.
        for (id, (stop, _)) in &self.running {
            if *id.flow == *name {
                stop.cancel();
            }
        }
    }

    fn reconcile(&mut self, wanted: &BTreeMap<TaskId, TaskSpec>) {
        for (id, (stop, target_topic)) in &self.running {
            // A task whose target topic changed (the flow's naming) restarts to write to the new one.
            if wanted.get(id).is_none_or(|spec| spec.target_topic != *target_topic) {
                stop.cancel();
            }
        }
        self.retries.retain(|id, _| wanted.contains_key(id));
        self.failures.retain(|id, _| wanted.contains_key(id));
        self.refused.retain(|id, _| wanted.contains_key(id));
        let now = Instant::now();
        for (id, spec) in wanted {
            let waiting = self.retries.get(id).is_some_and(|at| *at > now);
            if !self.running.contains_key(id) && !waiting {
                self.retries.remove(id);
                self.start(spec);
            }
        }
        self.update_gauges();
    }

    fn start(&mut self, spec: &TaskSpec) {
        let Some(flow) = self.flows.get(&*spec.id.flow) else {
            // A reload is adding or removing the flow; the wanted set catches up within one discovery.
            debug!(task = %spec.id, "no runtime for the task's flow yet");
            return;
        };
        let known = self.registry.get(&spec.id);
        let progress = match (&spec.resume, known) {
            // The store's position is further than this member's (the task ran elsewhere meanwhile).
            (Some(resume), known)
                if known.as_ref().is_none_or(|p| p.position().next_source_offset < resume.next_source_offset) =>
            {
                Arc::new(TaskProgress::resumed(resume.clone()))
            }
            (_, Some(known)) => known,
            (_, None) => {
                let key = TaskKey::from(&spec.id);
                let position = flow.stored.get(&key).map_or_else(|| Position::starting_at(0), |c| c.position.clone());
                Arc::new(TaskProgress::new(position))
            }
        };
        if !self.failures.contains_key(&spec.id) {
            // A restarted task stays paused, with its reason, until it is replicating again (task::run says so).
            progress.set_state(TaskState::Running);
        }
        self.registry.insert(spec.id.clone(), progress.clone());
        let ctx = TaskContext {
            spec: spec.clone(),
            source: flow.source.clone(),
            target: flow.target.clone(),
            throttle: flow.throttle.clone(),
            metrics: self.metrics.task(&spec.id.flow, &spec.id.topic, spec.id.partition),
            progress,
            provenance: flow.provenance.clone(),
            drain_timeout: self.drain_timeout,
            refused: self.refused.get(&spec.id).copied(),
            transactions: flow.transactions.clone(),
            passthrough: flow.passthrough.clone(),
        };
        let stop = CancellationToken::new();
        self.running.insert(spec.id.clone(), (stop.clone(), spec.target_topic.clone()));
        let id = &spec.id;
        let span = info_span!("task", flow = %id.flow, topic = %id.topic, partition = id.partition);
        let handle = self.joins.spawn(task::run(ctx, stop).instrument(span));
        self.join_ids.insert(handle.id(), id.clone());
        self.running_tx.send_modify(|running| {
            running.insert(id.clone());
        });
    }

    fn joined(&mut self, joined: Result<(tokio::task::Id, Result<(), TaskError>), tokio::task::JoinError>) {
        let (join_id, failure) = match joined {
            Ok((join_id, Ok(()))) => (join_id, None),
            Ok((join_id, Err(error))) => {
                if let (TaskError::Rejected { offset, through, .. }, Some(id)) = (&error, self.join_ids.get(&join_id)) {
                    self.refused.insert(id.clone(), Refused { first: *offset, last: *through });
                }
                (join_id, Some((error.to_string(), error.is_retriable())))
            }
            Err(join_error) => (join_error.id(), Some((format!("task panicked: {join_error}"), true))),
        };
        let Some(id) = self.join_ids.remove(&join_id) else { return };
        self.running.remove(&id);
        self.running_tx.send_modify(|running| {
            running.remove(&id);
        });
        let Some((reason, retriable)) = failure else {
            self.failures.remove(&id);
            return;
        };
        let failures = self.failures.get(&id).copied().unwrap_or(0) + 1;
        self.failures.insert(id.clone(), failures);
        let backoff = restart_delay(failures, jitter_fraction(&id, failures));
        self.metrics.task_failures_of(&id.flow, &id.topic).inc();
        if let Some(progress) = self.registry.get(&id) {
            progress.set_state(TaskState::Paused(reason.clone()));
        }
        if retriable {
            warn!(task = %id, error = reason, retry_in = ?backoff, "task failed; restarting from its checkpoint");
        } else {
            error!(
                task = %id,
                error = reason,
                retry_in = ?backoff,
            "task paused: restarting alone cannot help (the error says why); it is retried with backoff and nothing \
                 after its position is checkpointed meanwhile"
            );
        }
        self.retries.insert(id, Instant::now() + backoff);
    }

    fn update_gauges(&self) {
        let mut counts: BTreeMap<&str, (i64, i64)> = self.flows.keys().map(|flow| (flow.as_str(), (0, 0))).collect();
        for id in self.running.keys() {
            if let Some(count) = counts.get_mut(&*id.flow) {
                count.0 += 1;
            }
        }
        for id in self.retries.keys() {
            if let Some(count) = counts.get_mut(&*id.flow) {
                count.1 += 1;
            }
        }
        for (flow, (running, paused)) in counts {
            let gauges = self.metrics.flow_tasks(flow);
            gauges.running.set(running);
            gauges.paused.set(paused);
        }
    }

    async fn stop_all(mut self) {
        info!(tasks = self.running.len(), "stopping tasks");
        for (stop, _) in self.running.values() {
            stop.cancel();
        }
        // Each task bounds its own drain; the margin covers the join itself.
        let deadline = Instant::now() + self.drain_timeout + Duration::from_secs(2);
        while !self.joins.is_empty() {
            match tokio::time::timeout_at(deadline, self.joins.join_next_with_id()).await {
                Ok(Some(joined)) => self.joined(joined),
                Ok(None) => break,
                Err(_) => {
                    warn!(tasks = self.joins.len(), "tasks did not stop in time; aborting them");
                    self.joins.abort_all();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_double_up_to_the_maximum_within_their_jitter() {
        for (failures, ceiling) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)] {
            let ceiling = Duration::from_secs(ceiling);
            assert_eq!(restart_delay(failures, 0.0), ceiling / 2, "after {failures} failures");
            assert_eq!(restart_delay(failures, 1.0), ceiling, "after {failures} failures");
        }
    }

    #[test]
    fn tasks_failing_together_do_not_retry_in_lockstep() {
        let delays: Vec<Duration> = (0..2_000)
            .map(|partition| restart_delay(5, jitter_fraction(&TaskId::new("f", "t", partition), 5)))
            .collect();
        let (low, high) = (Duration::from_secs(8), Duration::from_secs(16));
        assert!(delays.iter().all(|delay| (low..=high).contains(delay)), "outside 8-16 s");
        // Spread over the whole upper half: in every tenth of it some tasks, none holding more than a fifth.
        let mut buckets = [0_usize; 10];
        for delay in &delays {
            let tenth = ((delay.as_secs_f64() - 8.0) / 0.8).floor() as usize;
            buckets[tenth.min(9)] += 1;
        }
        assert!(buckets.iter().all(|count| (1..400).contains(count)), "bunched retries: {buckets:?}");
    }
}

//! The controller: runs on the elected leader only. It turns discovered tasks and live members into a sticky,
//! balanced assignment, splits each fleet-wide throttle by the members' task shares, writes both to
//! `assignments/<member>` in transactions guarded by its leadership, and clears checkpoint shards of crashed members.
//!
//! Invariant: every write is guarded by the leadership's create revision, so a deposed controller cannot change an
//! assignment; it learns it was deposed from the refused write and stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::CheckpointStore;
use crate::config::{Config, Delivery};
use crate::coordination::assignment::{self, Assignment};
use crate::coordination::election::Leadership;
use crate::coordination::etcd::{Etcd, EtcdError};
use crate::coordination::membership::live_members;
use crate::coordination::{
    assignment_key, read_assignments, AssignedWork, CoordinationError, ThrottleShare, POLL_INTERVAL,
};
use crate::ops::metrics::Metrics;
use crate::replication::progress::TaskId;
use crate::replication::transaction::bucket_of;
use crate::topics::discovery::Discovered;

/// How often shards of departed members are checked for deletion.
const GARBAGE_INTERVAL: Duration = Duration::from_secs(60);
/// How often the controller notes etcd's revision and compacts what is older than the configured retention.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(60);
/// etcd refuses transactions with more operations than this by default (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// The leader's control loop.
pub struct Controller {
    etcd: Etcd,
    member: String,
    leadership: Leadership,
    config: watch::Receiver<Arc<Config>>,
    discovered: watch::Receiver<Discovered>,
    store: Arc<dyn CheckpointStore>,
    metrics: Metrics,
    previous: Assignment,
    written: BTreeMap<String, AssignedWork>,
    generation: u64,
    history: History,
}

/// etcd revisions noted over time, so the controller can compact exactly what is older than the retention.
#[derive(Debug, Default)]
pub struct History {
    samples: std::collections::VecDeque<(tokio::time::Instant, i64)>,
    compacted: i64,
}

impl History {
    /// Notes that etcd was at `revision` at `now`.
    pub fn note(&mut self, now: tokio::time::Instant, revision: i64) {
        self.samples.push_back((now, revision));
    }

    /// The revision to compact at, if one noted at least `retention` ago is newer than the last compaction; forgets
    /// the samples it passes.
    pub fn due(&mut self, now: tokio::time::Instant, retention: Duration) -> Option<i64> {
        let mut due = None;
        while let Some((at, revision)) = self.samples.front().copied() {
            if now.duration_since(at) < retention {
                break;
            }
            self.samples.pop_front();
            due = Some(revision);
        }
        let revision = due.filter(|revision| *revision > self.compacted)?;
        self.compacted = revision;
        Some(revision)
    }
}

impl Controller {
    /// Takes over from earlier controllers: reads the assignments they wrote, so the first new assignment is sticky
    /// to them. Returns the controller and the tasks those assignments held (to seed discovery, so a cluster that
    /// does not answer the new leader does not lose its tasks).
    #[allow(clippy::too_many_arguments)]
    pub async fn take_over(
        etcd: Etcd,
        member: String,
        leadership: Leadership,
        config: watch::Receiver<Arc<Config>>,
        discovered: watch::Receiver<Discovered>,
        store: Arc<dyn CheckpointStore>,
        metrics: Metrics,
    ) -> Result<(Self, BTreeSet<TaskId>), CoordinationError> {
        let written = read_assignments(&etcd).await?;
        let mut previous = Assignment::default();
        for (member, work) in &written {
            previous.by_member.insert(member.clone(), work.task_ids());
        }
        let generation = written.values().map(|work| work.generation).max().unwrap_or(0);
        let tasks = previous.by_member.values().flatten().cloned().collect();
        info!(revision = leadership.revision, members = previous.by_member.len(), generation, "became the controller");
        metrics.leader.set(1);
        let controller = Self {
            etcd,
            member,
            leadership,
            config,
            discovered,
            store,
            metrics,
            previous,
            written,
            generation,
            history: History::default(),
        };
        Ok((controller, tasks))
    }

    /// Assigns every poll interval (and whenever discovery changes) until `shutdown`; returns
    /// [`CoordinationError::Deposed`] when a guarded write is refused.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), CoordinationError> {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut garbage_due = tokio::time::Instant::now() + GARBAGE_INTERVAL;
        let mut compaction_due = tokio::time::Instant::now();
        let outcome = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = ticker.tick() => {}
                changed = self.discovered.changed() => {
                    if changed.is_err() {
                        break Ok(());
                    }
                }
            }
            let members = match live_members(&self.etcd).await {
                Ok(members) => members,
                Err(error) => {
                    debug!(%error, "cannot list members; keeping the current assignment");
                    continue;
                }
            };
            let live: BTreeSet<String> = members.keys().cloned().collect();
            self.metrics.members.set(i64::try_from(live.len()).unwrap_or(i64::MAX));
            if let Err(error) = self.assign(&live).await {
                if matches!(error, CoordinationError::Deposed { .. }) {
                    break Err(error);
                }
                warn!(%error, "cannot write the assignment; retrying");
            }
            if tokio::time::Instant::now() >= garbage_due {
                garbage_due = tokio::time::Instant::now() + GARBAGE_INTERVAL;
                self.collect_garbage(&live).await;
            }
            if tokio::time::Instant::now() >= compaction_due {
                compaction_due = tokio::time::Instant::now() + COMPACTION_INTERVAL;
                self.compact().await;
            }
        };
        self.metrics.leader.set(0);
        self.metrics.members.set(0);
        self.metrics.assigned_tasks.reset();
        outcome
    }

    async fn assign(&mut self, live: &BTreeSet<String>) -> Result<(), CoordinationError> {
        let discovered = self.discovered.borrow().clone();
        if !discovered.ever_complete || live.is_empty() {
            // Until one complete look at the clusters, the task list may be partial: assigning it would stop tasks.
            return Ok(());
        }
        let tasks: BTreeSet<TaskId> = discovered.tasks.keys().cloned().collect();
        let config = self.config.borrow().clone();
        // An exactly-once flow's tasks go to members by bucket: one transactional producer per bucket.
        let buckets: BTreeMap<&str, u32> = config
            .flows
            .iter()
            .filter(|flow| flow.delivery == Delivery::ExactlyOnce)
            .map(|flow| (flow.name.as_str(), flow.exactly_once.buckets))
            .collect();
        let unit_of = |task: &TaskId| buckets.get(&*task.flow).map(|n| bucket_of(&task.topic, task.partition, *n));
        let next = assignment::assign_grouped(&tasks, live, &self.previous, unit_of);
        let shares = throttle_shares(&config, &next);
        let mut wanted: BTreeMap<String, AssignedWork> = BTreeMap::new();
        for (member, tasks) in &next.by_member {
            wanted.insert(
                member.clone(),
                AssignedWork {
                    generation: 0,
                    leader: self.member.clone(),
                    tasks: AssignedWork::group(tasks),
                    throttles: shares.get(member).cloned().unwrap_or_default(),
                },
            );
        }
        let unchanged = |member: &str, work: &AssignedWork| {
            self.written.get(member).is_some_and(|old| old.tasks == work.tasks && old.throttles == work.throttles)
        };
        let changed: Vec<String> =
            wanted.iter().filter(|(member, work)| !unchanged(member, work)).map(|(member, _)| member.clone()).collect();
        let departed: Vec<String> =
            self.written.keys().filter(|member| !wanted.contains_key(*member)).cloned().collect();
        if changed.is_empty() && departed.is_empty() {
            self.publish_counts(&next);
            return Ok(());
        }
        let generation = self.generation + 1;
        let mut ops = Vec::new();
        for member in &changed {
            let work = wanted.get_mut(member).expect("changed members come from wanted");
            work.generation = generation;
            let value = serde_json::to_vec(work).expect("assignments serialize");
            ops.push(TxnOp::put(self.etcd.key(&assignment_key(member)), value, None));
        }
        for member in &departed {
            ops.push(TxnOp::delete(self.etcd.key(&assignment_key(member)), None));
        }
        for batch in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new().when([self.leadership.guard(&self.etcd)]).and_then(batch.to_vec());
            let response =
                self.etcd.timed("assignment_write", |mut client| async move { client.txn(txn).await }).await?;
            if !response.succeeded() {
                warn!(revision = self.leadership.revision, "deposed: another member leads now");
                return Err(CoordinationError::Deposed { revision: self.leadership.revision });
            }
        }
        let moved = assignment::moved(&self.previous, &next);
        if moved > 0 {
            self.metrics.rebalances.inc();
            self.metrics.moved_tasks.inc_by(u64::try_from(moved).unwrap_or(u64::MAX));
        }
        info!(
            generation,
            members = live.len(),
            tasks = tasks.len(),
            moved,
            changed_members = changed.len(),
            "assignment written"
        );
        self.generation = generation;
        for member in departed {
            self.written.remove(&member);
        }
        for member in changed {
            if let Some(work) = wanted.remove(&member) {
                self.written.insert(member, work);
            }
        }
        self.publish_counts(&next);
        self.previous = next;
        Ok(())
    }

    /// Compacts etcd history older than `checkpoint.etcd.history_retention`: checkpoints rewrite their keys every
    /// interval, and etcd keeps every revision until compacted, growing until it refuses writes.
    async fn compact(&mut self) {
        let retention = self.config.borrow().checkpoint.etcd.as_ref().map(|etcd| etcd.history_retention.as_std());
        let Some(retention) = retention.filter(|retention| !retention.is_zero()) else { return };
        let key = self.etcd.key(crate::coordination::LEADER_KEY);
        let revision =
            self.etcd
                .timed("revision", |mut client| async move {
                    client.get(key, Some(GetOptions::new().with_count_only())).await
                })
                .await;
        match revision.map(|response| response.header().map(|header| header.revision())) {
            Ok(Some(revision)) => self.history.note(tokio::time::Instant::now(), revision),
            Ok(None) => return,
            Err(error) => {
                debug!(%error, "cannot read etcd's revision");
                return;
            }
        }
        let Some(revision) = self.history.due(tokio::time::Instant::now(), retention) else { return };
        match self.etcd.timed("compact", |mut client| async move { client.compact(revision, None).await }).await {
            Ok(_) => info!(revision, kept = ?retention, "compacted etcd history"),
            // etcd's own auto-compaction may already be further along.
            Err(error @ EtcdError::Compacted { .. }) => debug!(%error, "etcd history already compacted"),
            Err(error) => warn!(%error, "cannot compact etcd history"),
        }
    }

    fn publish_counts(&self, assignment: &Assignment) {
        self.metrics.assigned_tasks.reset();
        for (member, count) in assignment.counts() {
            self.metrics.assigned_tasks_of(&member).set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    async fn collect_garbage(&self, live: &BTreeSet<String>) {
        let store = &self.store;
        let flows: Vec<String> = self.config.borrow().flows.iter().map(|flow| flow.name.clone()).collect();
        for flow in flows {
            match store.collect_garbage(&flow, live).await {
                Ok(0) => {}
                Ok(deleted) => info!(flow, deleted, "deleted checkpoint shards of departed members"),
                Err(error) => warn!(flow, %error, "cannot clear checkpoint shards of departed members"),
            }
        }
    }
}

/// Each member's share of every fleet-wide throttle: the budget split by the member's part of the tasks whose flow
/// the throttle applies to. Members without such tasks get no share.
pub fn throttle_shares(config: &Config, assignment: &Assignment) -> BTreeMap<String, Vec<ThrottleShare>> {
    let flow_throttle: BTreeMap<&str, usize> = config
        .flows
        .iter()
        .filter_map(|flow| {
            config.throttle_for(&flow.source, &flow.target).map(|(index, _)| (flow.name.as_str(), index))
        })
        .collect();
    // Tasks per throttle per member.
    let mut counts: BTreeMap<usize, BTreeMap<&str, u64>> = BTreeMap::new();
    for (member, tasks) in &assignment.by_member {
        for task in tasks {
            if let Some(index) = flow_throttle.get(&*task.flow) {
                *counts.entry(*index).or_default().entry(member.as_str()).or_default() += 1;
            }
        }
    }
    let mut shares: BTreeMap<String, Vec<ThrottleShare>> = BTreeMap::new();
    for (index, per_member) in counts {
        let throttle = &config.throttles[index];
        let rate = throttle.rate.bytes_per_second();
        let total: u64 = per_member.values().sum();
        for (member, count) in per_member {
            let share = u64::try_from(u128::from(rate) * u128::from(count) / u128::from(total.max(1))).unwrap_or(rate);
            shares.entry(member.to_owned()).or_default().push(ThrottleShare {
                from: throttle.from.clone(),
                to: throttle.to.clone(),
                bytes_per_second: share.max(1),
            });
        }
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        use figment::providers::Format;
        Config::from_figment(figment::Figment::from(crate::config::Yaml::string(yaml))).expect("valid test config")
    }

    #[test]
    fn history_is_compacted_only_past_the_retention_and_never_backwards() {
        let start = tokio::time::Instant::now();
        let minute = Duration::from_secs(60);
        let mut history = History::default();
        for (minutes, revision) in [(0, 100), (1, 150), (2, 400)] {
            history.note(start + minute * minutes, revision);
        }
        let hour = Duration::from_secs(3600);
        assert_eq!(history.due(start + minute * 30, hour), None, "nothing is an hour old yet");
        assert_eq!(history.due(start + hour + minute, hour), Some(150), "the newest revision at least an hour old");
        assert_eq!(history.due(start + hour + minute, hour), None, "compacted once");
        assert_eq!(history.due(start + hour * 2, hour), Some(400));
    }

    #[test]
    fn a_throttle_is_split_by_each_members_share_of_its_tasks() {
        let config = config(
            r#"
clusters:
  east: { bootstrap_servers: "e:9092", region: us-east }
  west: { bootstrap_servers: "w:9092", region: eu-west }
flows:
  - { name: e2w, source: east, target: west, topics: { include: ["t"] } }
  - { name: w2e, source: west, target: east, topics: { include: ["t"] } }
throttles:
  - { from: us-east, to: eu-west, rate: 3MiB/s }
"#,
        );
        let mut assignment = Assignment::default();
        let task = |flow: &str, partition| TaskId::new(flow, "t", partition);
        assignment.by_member.insert("a".into(), [task("e2w", 0), task("e2w", 1), task("w2e", 0)].into());
        assignment.by_member.insert("b".into(), [task("e2w", 2), task("w2e", 1)].into());
        assignment.by_member.insert("c".into(), [task("w2e", 2)].into());
        let shares = throttle_shares(&config, &assignment);
        let rate = |member: &str| shares.get(member).map(|s| s[0].bytes_per_second);
        assert_eq!(rate("a"), Some(2 * 1024 * 1024));
        assert_eq!(rate("b"), Some(1024 * 1024));
        assert_eq!(rate("c"), None, "c runs no east-to-west task");
    }
}

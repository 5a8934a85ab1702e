//! Discovery: polls each flow's source metadata and turns matching topic-partitions into the wanted tasks,
//! after making sure their target topics exist.
//!
//! Invariant: a cluster that cannot be reached never stops tasks. Its flows keep the tasks found last time
//! (librdkafka keeps retrying underneath), and only a successful look shrinks or grows the set.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::TopicFilter;
use crate::ops::metrics::Metrics;
use crate::replication::progress::TaskId;
use crate::topics::acls;
use crate::topics::admin::{AdminError, ClusterAdmin, TopicInfo};
use crate::topics::naming::TopicNaming;
use crate::topics::sync::{self, TopicPair};

/// How soon to look again after a failed look, when the discovery interval is longer.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(3);

/// One wanted task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The task.
    pub id: TaskId,
    /// The target topic its records go to.
    pub target_topic: String,
    /// Where to resume when the task starts on this member, if the checkpoint store knows better than the member
    /// (the task just moved here from another member).
    pub resume: Option<crate::replication::progress::Position>,
}

/// A flow as discovery sees it.
#[derive(Debug, Clone)]
pub struct FlowTopics {
    /// Flow name.
    pub name: String,
    /// Source cluster alias.
    pub source: String,
    /// Target cluster alias.
    pub target: String,
    /// Include/exclude patterns.
    pub filter: TopicFilter,
    /// Naming policy.
    pub naming: TopicNaming,
    /// Whether the source topics' READ and DESCRIBE ACLs are mirrored onto the target topics.
    pub sync_topic_acls: bool,
}

impl FlowTopics {
    /// Discovery's view of one configured flow.
    pub fn from_config(
        config: &crate::config::Config,
        flow: &crate::config::FlowConfig,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            name: flow.name.clone(),
            source: flow.source.clone(),
            target: flow.target.clone(),
            filter: flow.topic_filter()?,
            naming: TopicNaming::for_flow(config, flow),
            sync_topic_acls: flow.sync_topic_acls,
        })
    }

    /// The topics of `source_topics` this flow replicates, with their target names.
    pub fn matching(&self, source_topics: &BTreeMap<String, TopicInfo>) -> Vec<TopicPair> {
        source_topics
            .iter()
            .filter(|(topic, _)| self.naming.check(topic).is_ok() && self.filter.matches(topic))
            .map(|(topic, info)| TopicPair {
                source: topic.clone(),
                target: self.naming.remote_topic(topic),
                partitions: info.partitions,
            })
            .collect()
    }
}

/// The outcome of one look at every flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    /// Every wanted task.
    pub tasks: BTreeMap<TaskId, TaskSpec>,
    /// Whether every cluster answered; `false` means some flows kept their previous tasks.
    pub complete: bool,
    /// Whether any look has completed since start.
    pub ever_complete: bool,
    /// Why the last look was not complete, one line per failure (each names its cluster), for `/readyz`.
    pub problems: Vec<String>,
    /// Why the set is not final yet, when something other than discovery decides it (the fleet).
    pub waiting_for: Option<Waiting>,
}

/// Why a coordinated member's set of tasks is not final yet; shown as the reason `/readyz` fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// The member cannot join the fleet (etcd refuses or does not answer); what etcd said.
    CannotJoin(String),
    /// The member's lease expired: it stops its tasks and joins again.
    LeaseExpired,
    /// The controller has not assigned this member anything yet.
    FirstAssignment,
    /// Tasks assigned to this member whose previous owners have not released them yet.
    PreviousOwners(usize),
    /// Assigned flows this member's config does not have yet (a config rollout in progress).
    UnknownFlows(usize),
    /// Tasks this member hands over to their next owners.
    HandingOver(usize),
    /// Assigned tasks that wait because their stored checkpoint cannot be read, and the first one's reason.
    DamagedCheckpoints(usize, String),
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::CannotJoin(error) => write!(f, "cannot join the fleet: {error}"),
            Waiting::LeaseExpired => f.write_str("the member's etcd lease expired; rejoining"),
            Waiting::FirstAssignment => f.write_str("waiting for the controller's first assignment"),
            Waiting::PreviousOwners(count) => {
                write!(f, "waiting for the previous owners of {count} assigned tasks to release them")
            }
            Waiting::UnknownFlows(count) => write!(f, "{count} assigned flows are not in this member's config yet"),
            Waiting::HandingOver(count) => write!(f, "handing over {count} tasks"),
            Waiting::DamagedCheckpoints(count, first) => write!(
                f,
                "{count} assigned tasks wait because their stored checkpoint data cannot be read (the log names \
                 each); the first: {first}"
            ),
        }
    }
}

/// Polls source metadata for every flow.
#[derive(Debug)]
pub struct Discovery {
    flows: Vec<FlowTopics>,
    admins: BTreeMap<String, Arc<ClusterAdmin>>,
    metrics: Metrics,
    /// The last ACL sync failure per flow, so each is logged once rather than every interval.
    acl_sync_failures: Mutex<BTreeMap<String, String>>,
}

impl Discovery {
    /// Discovery over `flows`, with an admin client per cluster alias they use.
    pub fn new(flows: Vec<FlowTopics>, admins: BTreeMap<String, Arc<ClusterAdmin>>, metrics: Metrics) -> Self {
        Self { flows, admins, metrics, acl_sync_failures: Mutex::default() }
    }

    fn admin(&self, alias: &str) -> &ClusterAdmin {
        self.admins.get(alias).expect("an admin client exists for every cluster a flow names")
    }

    /// Looks once at every flow; flows whose clusters do not answer keep their tasks from `previous`.
    pub async fn discover(&self, previous: &Discovered) -> Discovered {
        let mut tasks = BTreeMap::new();
        let mut complete = true;
        let mut problems = Vec::new();
        let mut source_topics: BTreeMap<&str, Option<BTreeMap<String, TopicInfo>>> = BTreeMap::new();
        for flow in &self.flows {
            if !source_topics.contains_key(flow.source.as_str()) {
                let listed = self.admin(&flow.source).topics().await;
                self.metrics.cluster(&flow.source).up.set(i64::from(listed.is_ok()));
                let listed = listed
                    .map_err(|error| {
                        warn!(cluster = flow.source.as_str(), %error, "cannot list topics of source cluster");
                        problems.push(error.to_string());
                    })
                    .ok();
                source_topics.insert(flow.source.as_str(), listed);
            }
            let found = match &source_topics[flow.source.as_str()] {
                Some(topics) => {
                    self.check_named_topics(flow, topics).await.unwrap_or_else(|problem| problems.push(problem));
                    self.flow_tasks(flow, topics).await.map_err(|problem| problems.push(problem)).ok()
                }
                None => None,
            };
            match found {
                Some(found) => tasks.extend(found),
                None => {
                    complete = false;
                    tasks.extend(
                        previous
                            .tasks
                            .iter()
                            .filter(|(id, _)| *id.flow == *flow.name)
                            .map(|(id, spec)| (id.clone(), spec.clone())),
                    );
                }
            }
        }
        problems.dedup();
        Discovered { tasks, complete, ever_complete: previous.ever_complete || complete, problems, waiting_for: None }
    }

    /// A topic the flow names outright that the source does not list may be hidden from ferry's principal (no
    /// DESCRIBE ACL): then the flow would replicate nothing and say nothing. Asks for those names; the error names
    /// the flow, the cluster, the principal and the ACL.
    async fn check_named_topics(&self, flow: &FlowTopics, listed: &BTreeMap<String, TopicInfo>) -> Result<(), String> {
        let unlisted: Vec<&str> = flow.filter.named_topics().filter(|name| !listed.contains_key(*name)).collect();
        if unlisted.is_empty() {
            return Ok(());
        }
        self.admin(&flow.source).check_described(&unlisted).await.map_err(|error| {
            warn!(flow = flow.name.as_str(), cluster = flow.source.as_str(), %error, "source topics hidden");
            format!("flow {}: {error}", flow.name)
        })
    }

    /// The flow's tasks, or why they could not be worked out (naming the flow and the cluster).
    async fn flow_tasks(
        &self,
        flow: &FlowTopics,
        source_topics: &BTreeMap<String, TopicInfo>,
    ) -> Result<BTreeMap<TaskId, TaskSpec>, String> {
        let pairs = flow.matching(source_topics);
        let target = self.admin(&flow.target);
        let ready = match sync::sync(&flow.name, self.admin(&flow.source), target, &pairs, &self.metrics).await {
            Ok(ready) => {
                self.metrics.cluster(&flow.target).up.set(1);
                ready
            }
            Err(error) => {
                warn!(flow = flow.name.as_str(), %error, "cannot prepare target topics");
                if matches!(error, crate::topics::admin::AdminError::Request { ref cluster, .. } if *cluster == flow.target)
                {
                    self.metrics.cluster(&flow.target).up.set(0);
                }
                return Err(format!("flow {}: {error}", flow.name));
            }
        };
        if flow.sync_topic_acls {
            self.sync_acls(flow, &pairs, &ready).await;
        }
        let mut tasks = BTreeMap::new();
        for pair in pairs.iter().filter(|pair| ready.contains(&pair.source)) {
            for partition in 0..pair.partitions {
                let id = TaskId::new(&flow.name, &pair.source, partition);
                tasks.insert(id.clone(), TaskSpec { id, target_topic: pair.target.clone(), resume: None });
            }
        }
        Ok(tasks)
    }

    /// Creates on the target the ACLs that the source's ACLs on the flow's replicated topics imply (see
    /// [`acls`]). A failure is logged (once until it changes) and does not hold up replication.
    async fn sync_acls(&self, flow: &FlowTopics, pairs: &[TopicPair], ready: &[String]) {
        let remote: BTreeMap<String, String> = pairs
            .iter()
            .filter(|pair| ready.contains(&pair.source))
            .map(|pair| (pair.source.clone(), pair.target.clone()))
            .collect();
        let (source, target) = (self.admin(&flow.source), self.admin(&flow.target));
        let outcome = async {
            // A cluster without an authorizer has no ACLs to copy, or none to set.
            let Some(source_acls) = source.topic_acls().await? else { return Ok(0) };
            let wanted = acls::mirrored(&source_acls, &remote);
            if wanted.is_empty() {
                return Ok(0);
            }
            let Some(existing) = target.topic_acls().await? else { return Ok(0) };
            let existing: BTreeSet<acls::TopicAcl> = existing.into_iter().collect();
            let missing: Vec<acls::TopicAcl> = wanted.difference(&existing).cloned().collect();
            target.create_topic_acls(&missing).await?;
            Ok::<usize, AdminError>(missing.len())
        }
        .await;
        let mut failures = self.acl_sync_failures.lock().expect("ACL sync failures lock poisoned");
        match outcome {
            Ok(created) => {
                if created > 0 {
                    info!(flow = flow.name.as_str(), created, "created target topic ACLs mirrored from the source");
                }
                if failures.remove(&flow.name).is_some() {
                    info!(flow = flow.name.as_str(), "topic ACL sync works again");
                }
            }
            Err(error) => {
                let error = error.to_string();
                if failures.get(&flow.name) != Some(&error) {
                    warn!(
                        flow = flow.name.as_str(),
                        %error,
                        "cannot sync topic ACLs (ferry's principal needs DESCRIBE on the source cluster and ALTER on \
                         the target cluster; set sync_topic_acls: false to turn it off); replication goes on"
                    );
                    failures.insert(flow.name.clone(), error);
                }
            }
        }
    }

    /// The tasks of `tasks` that belong to a configured flow, as a not yet complete look: a new controller starts
    /// from the assignment it inherits, so a cluster that does not answer it keeps its tasks.
    pub fn seed(&self, tasks: impl IntoIterator<Item = TaskId>) -> Discovered {
        let by_flow: BTreeMap<&str, &FlowTopics> = self.flows.iter().map(|flow| (flow.name.as_str(), flow)).collect();
        let tasks = tasks
            .into_iter()
            .filter_map(|id| {
                let flow = by_flow.get(&*id.flow)?;
                let target_topic = flow.naming.remote_topic(&id.topic);
                Some((id.clone(), TaskSpec { id, target_topic, resume: None }))
            })
            .collect();
        Discovered { tasks, ..Discovered::default() }
    }

    /// Looks every `interval` (sooner after a failure) and publishes each outcome until `shutdown`, starting from
    /// `initial` (see [`Discovery::seed`]).
    pub async fn run(
        self,
        interval: Duration,
        initial: Discovered,
        publish: Arc<watch::Sender<Discovered>>,
        shutdown: CancellationToken,
    ) {
        let mut current = initial;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = self.discover(&current) => next,
            };
            if next.tasks.len() != current.tasks.len() {
                info!(tasks = next.tasks.len(), complete = next.complete, "discovered tasks");
            }
            let wait = if next.complete { interval } else { interval.min(RETRY_AFTER_FAILURE) };
            current = next;
            publish.send_replace(current.clone());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

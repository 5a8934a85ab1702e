//! A member: one running ferry process. Builds the clients, and runs the supervisor, the checkpointer, the status
//! reporter, the config watcher and the HTTP endpoint as one tree that shuts down together. With the file store it
//! is the whole fleet: it discovers tasks itself. With etcd it joins the fleet, runs the tasks the controller
//! assigns it once it owns them, and runs the controller (with discovery and group sync) while it is the leader.
//!
//! Invariant: on shutdown the tasks drain first and the final checkpoint is written after them, and only then does
//! the member leave the fleet (revoking its lease frees its owner keys), so the last checkpoint covers everything
//! the target acknowledged before another member can start its tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::checkpoint::{self, Access, CheckpointStore, Checkpointer, OpenedStore, StoreError};
use crate::config::watch::{ConfigWatcher, Reload};
use crate::config::{Config, ConfigError, FlowConfig, Naming};
use crate::coordination::controller::Controller;
use crate::coordination::election::campaign_and_observe;
use crate::coordination::etcd::{Etcd, EtcdError};
use crate::coordination::membership::{live_members, Membership};
use crate::coordination::ownership::Ownership;
use crate::coordination::{
    new_member_id, read_assignments, AssignedWork, CoordinationError, MemberInfo, ThrottleShare, POLL_INTERVAL,
};
use crate::kafka::ClientError;
use crate::offsets::group_sync::GroupSync;
use crate::ops::http::{self, FleetMember, FleetStatus, HttpError, HttpState, Status};
use crate::ops::metrics::Metrics;
use crate::replication::lag::{self, LagGauges};
use crate::replication::progress::{Registry, TaskId};
use crate::replication::source::{SourceConsumer, SourceError};
use crate::replication::supervisor::{FlowRuntime, FlowUpdate, Supervisor};
use crate::replication::target::TargetProducer;
use crate::replication::task::Provenance;
use crate::replication::throttle::Throttle;
use crate::topics::admin::{AdminError, ClusterAdmin};
use crate::topics::discovery::{Discovered, Discovery, FlowTopics};

/// How long tasks may take to get their in-flight records acknowledged on shutdown. Together with the final
/// checkpoint and producer flush it keeps shutdown well inside Kubernetes' default 30 s grace period.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often lag and readiness are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often a coordinated member refreshes the fleet view `/status` shows.
const FLEET_VIEW_INTERVAL: Duration = Duration::from_secs(5);

/// Errors that stop a member from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The HTTP endpoint could not start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The checkpoint store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// etcd could not be set up.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A Kafka client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A source consumer could not be built.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// An admin client could not be built.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The configuration is inconsistent in a way validation should have caught.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The group offset sync could not be set up.
    #[error(transparent)]
    Failover(#[from] crate::offsets::failover::FailoverError),
    /// A component stopped on its own before shutdown was asked.
    #[error("component {0} stopped unexpectedly")]
    ComponentStopped(&'static str),
}

/// A started member; [`Member::run`] drives it until shutdown.
pub struct Member {
    config: Config,
    config_file: Option<PathBuf>,
    metrics: Metrics,
}

impl Member {
    /// A member for `config`.
    pub fn new(config: Config) -> Self {
        let metrics = Metrics::new(config.metrics.per_partition);
        Self { config, config_file: None, metrics }
    }

    /// Watches `path` (the file `config` was loaded from) and applies valid changes without a restart.
    pub fn with_config_file(mut self, path: PathBuf) -> Self {
        self.config_file = Some(path);
        self
    }

    /// The member's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs until `shutdown` is cancelled, then stops everything in order. Returns the bound HTTP address
    /// through `on_listening` as soon as it is known.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        on_listening: impl FnOnce(SocketAddr),
    ) -> Result<(), MemberError> {
        let Member { config, config_file, metrics } = self;
        unsupported(&config)?;
        let member_id = new_member_id();
        let OpenedStore { store, etcd } =
            checkpoint::open(&config.checkpoint, Access::Member(member_id.clone()), &metrics).await?;

        let status = Arc::new(RwLock::new(Status::default()));
        let http_shutdown = CancellationToken::new();
        let (bound, http_handle) = http::serve(
            config.http.listen,
            HttpState { metrics: metrics.clone(), status: status.clone() },
            http_shutdown.clone(),
        )
        .await?;
        info!(address = %bound, member = member_id.as_str(), "HTTP endpoint listening");
        on_listening(bound);

        let registry = Arc::new(Registry::default());
        let checkpointer = Checkpointer::new(store.clone(), registry.clone(), metrics.clone());
        let (config_tx, _) = watch::channel(Arc::new(config.clone()));
        let clients = Arc::new(Mutex::new(Clients::new(metrics.clone())));
        let mut flows = BTreeMap::new();
        for flow in &config.flows {
            // Only the file store is read up front: with etcd, tasks load their checkpoint when they are taken.
            let stored = if etcd.is_none() { store.load(&flow.name).await? } else { BTreeMap::new() };
            info!(flow = flow.name.as_str(), checkpoints = stored.len(), "loaded checkpoints");
            flows.insert(flow.name.clone(), lock(&clients).flow_runtime(&config, flow, stored)?);
            checkpointer.touch(&flow.name);
        }
        lock(&clients).apply_configured_rates(&config);
        let (updates_tx, updates_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            metrics: metrics.clone(),
            registry: registry.clone(),
            store: store.clone(),
            etcd: etcd.clone(),
            checkpointer: checkpointer.clone(),
            config: config_tx,
            clients,
            flow_updates: updates_tx,
            coordinated: etcd.is_some(),
        });
        let supervisor = Supervisor::new(flows, registry.clone(), metrics.clone(), DRAIN_TIMEOUT);
        let running = supervisor.running();
        let wanted = Arc::new(watch::channel(Discovered::default()).0);
        let fleet = Arc::new(RwLock::new(None::<FleetStatus>));
        let membership: Arc<Mutex<Option<Membership>>> = Arc::default();

        let work = shutdown.child_token();
        let mut components: JoinSet<&'static str> = JoinSet::new();
        {
            let (checkpointer, interval, work) =
                (checkpointer.clone(), config.checkpoint.interval.as_std(), work.clone());
            components.spawn(async move {
                checkpointer.run(interval, work).await;
                "checkpointer"
            });
        }
        {
            let (shared, wanted, fleet, work) = (shared.clone(), wanted.subscribe(), fleet.clone(), work.clone());
            components.spawn(async move {
                report_status(shared, wanted, fleet, status, work).await;
                "status"
            });
        }
        if let Some(path) = config_file {
            let (reloads_tx, reloads_rx) = mpsc::channel(4);
            let watcher = ConfigWatcher::new(path, Arc::new(config.clone()), metrics.clone());
            let (shared, work) = (shared.clone(), work.clone());
            components.spawn(async move {
                tokio::join!(watcher.run(reloads_tx, work.clone()), apply_reloads(shared, reloads_rx, work));
                "config watcher"
            });
        }
        match etcd {
            None => {
                metrics.leader.set(1);
                metrics.members.set(1);
                let (shared, wanted, work) = (shared.clone(), wanted.clone(), work.clone());
                components.spawn(async move {
                    lead(shared, wanted, BTreeSet::new(), work).await;
                    "discovery"
                });
            }
            Some(etcd) => {
                let coordinator = Coordinator {
                    shared: shared.clone(),
                    etcd,
                    member_id: member_id.clone(),
                    http: advertised(bound),
                    wanted: wanted.clone(),
                    running: running.clone(),
                    fleet,
                    membership: membership.clone(),
                };
                let work = work.clone();
                components.spawn(async move {
                    coordinator.run(work).await;
                    "coordinator"
                });
            }
        }
        let supervisor_done = CancellationToken::new();
        let supervisor_handle = {
            let (work, done, wanted) = (work.clone(), supervisor_done.clone(), wanted.subscribe());
            tokio::spawn(async move {
                supervisor.run(wanted, updates_rx, work).await;
                done.cancel();
            })
        };

        let mut failure = None;
        tokio::select! {
            // Components end by themselves when `work` is cancelled; checking it first keeps a clean shutdown
            // from looking like a component failure.
            biased;
            _ = work.cancelled() => {}
            _ = supervisor_done.cancelled(), if !work.is_cancelled() => {
                failure = Some(MemberError::ComponentStopped("supervisor"));
            }
            Some(stopped) = components.join_next() => {
                if !work.is_cancelled() {
                    failure = Some(MemberError::ComponentStopped(stopped.unwrap_or("a panicked component")));
                }
            }
        }
        if let Some(failure) = &failure {
            error!(%failure, "shutting down");
        }
        info!("shutting down: draining tasks");
        work.cancel();
        if let Err(join_error) = supervisor_handle.await {
            error!(%join_error, "supervisor panicked during shutdown");
        }
        while components.join_next().await.is_some() {}
        match checkpointer.flush().await {
            Ok(written) => info!(changed_tasks = written, "final checkpoint written"),
            Err(error) => error!(%error, "final checkpoint failed; a restart resumes from the previous one"),
        }
        let leaving = lock(&membership).take();
        if let (Some(membership), Some(etcd)) = (leaving, &shared.etcd) {
            // After the final checkpoint: the tasks' next owners start where this member stopped.
            if let Err(error) = membership.leave(etcd).await {
                warn!(%error, "cannot revoke the member lease; its tasks move when it expires");
            }
        }
        let producers: Vec<TargetProducer> = lock(&shared.clients).producers.values().cloned().collect();
        for producer in producers {
            if let Err(error) = producer.flush(Duration::from_secs(2)).await {
                warn!(cluster = producer.alias(), %error, "producer flush at exit failed");
            }
        }
        http_shutdown.cancel();
        let _ = http_handle.await;
        match failure {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// Refuses the settings of the config contract this version does not implement: the rule of
/// [`crate::config::admit`], kept here for callers that start a member without admitting its config first.
pub fn unsupported(config: &Config) -> Result<(), ConfigError> {
    let problems = crate::config::unimplemented_settings(config);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section only inserts into maps, so a panic inside cannot leave them inconsistent.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the member's long-running parts share.
struct Shared {
    metrics: Metrics,
    registry: Arc<Registry>,
    store: Arc<dyn CheckpointStore>,
    etcd: Option<Etcd>,
    checkpointer: Checkpointer,
    /// The config in force; replaced by valid reloads.
    config: watch::Sender<Arc<Config>>,
    clients: Arc<Mutex<Clients>>,
    flow_updates: mpsc::Sender<FlowUpdate>,
    coordinated: bool,
}

/// The Kafka clients and throttles, built once per cluster alias, flow or throttle and reused across reloads.
struct Clients {
    metrics: Metrics,
    admins: BTreeMap<String, Arc<ClusterAdmin>>,
    producers: BTreeMap<String, TargetProducer>,
    sources: BTreeMap<String, Arc<SourceConsumer>>,
    /// By the throttle's (from, to).
    throttles: BTreeMap<(String, String), Arc<Throttle>>,
}

impl Clients {
    fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            admins: BTreeMap::new(),
            producers: BTreeMap::new(),
            sources: BTreeMap::new(),
            throttles: BTreeMap::new(),
        }
    }

    fn admin(&mut self, config: &Config, alias: &str) -> Result<Arc<ClusterAdmin>, MemberError> {
        if let Some(admin) = self.admins.get(alias) {
            return Ok(admin.clone());
        }
        let admin = Arc::new(ClusterAdmin::new(alias, &config.clusters[alias], &self.metrics)?);
        self.admins.insert(alias.to_owned(), admin.clone());
        Ok(admin)
    }

    /// A flow's runtime; its consumer is new (a changed flow starts over with its new settings).
    fn flow_runtime(
        &mut self,
        config: &Config,
        flow: &FlowConfig,
        stored: BTreeMap<crate::checkpoint::TaskKey, crate::checkpoint::Checkpoint>,
    ) -> Result<FlowRuntime, MemberError> {
        for alias in [&flow.source, &flow.target] {
            self.admin(config, alias)?;
        }
        if !self.producers.contains_key(&flow.target) {
            let producer = TargetProducer::new(&flow.target, &config.clusters[&flow.target], &self.metrics)?;
            self.producers.insert(flow.target.clone(), producer);
        }
        let throttle = config.throttle_for(&flow.source, &flow.target).map(|(_, throttle)| {
            let key = (throttle.from.clone(), throttle.to.clone());
            let metrics = &self.metrics;
            self.throttles
                .entry(key)
                .or_insert_with(|| {
                    let wait = metrics.throttle_wait_seconds.with_label_values(&[&throttle.from, &throttle.to]);
                    Arc::new(Throttle::new(throttle.rate.bytes_per_second(), wait))
                })
                .clone()
        });
        let provenance = (flow.naming == Naming::Identity)
            .then(|| Provenance { source_alias: flow.source.clone(), target_alias: flow.target.clone() });
        let source =
            Arc::new(SourceConsumer::new(&flow.name, &flow.source, &config.clusters[&flow.source], &self.metrics)?);
        self.sources.insert(flow.name.clone(), source.clone());
        Ok(FlowRuntime { source, target: self.producers[&flow.target].clone(), throttle, provenance, stored })
    }

    /// Discovery over every flow of `config`.
    fn discovery(&mut self, config: &Config) -> Result<Discovery, MemberError> {
        let mut flows = Vec::new();
        let mut admins = BTreeMap::new();
        for flow in &config.flows {
            for alias in [&flow.source, &flow.target] {
                admins.insert(alias.clone(), self.admin(config, alias)?);
            }
            flows.push(FlowTopics::from_config(config, flow)?);
        }
        Ok(Discovery::new(flows, admins, self.metrics.clone()))
    }

    /// Sets every throttle to its configured budget: the whole budget when this member is the whole fleet.
    fn apply_configured_rates(&self, config: &Config) {
        for throttle in &config.throttles {
            if let Some(limiter) = self.throttles.get(&(throttle.from.clone(), throttle.to.clone())) {
                limiter.set_rate(throttle.rate.bytes_per_second());
                self.metrics
                    .throttle_rate_bytes
                    .with_label_values(&[&throttle.from, &throttle.to])
                    .set(i64::try_from(throttle.rate.bytes_per_second()).unwrap_or(i64::MAX));
            }
        }
    }

    /// Sets the throttles to this member's shares of the fleet-wide budgets.
    fn apply_shares(&self, shares: &[ThrottleShare]) {
        for share in shares {
            if let Some(limiter) = self.throttles.get(&(share.from.clone(), share.to.clone())) {
                if limiter.bytes_per_second() != share.bytes_per_second {
                    info!(
                        from = share.from.as_str(),
                        to = share.to.as_str(),
                        bytes_per_second = share.bytes_per_second,
                        "throttle share set"
                    );
                }
                limiter.set_rate(share.bytes_per_second);
            }
            self.metrics
                .throttle_rate_bytes
                .with_label_values(&[&share.from, &share.to])
                .set(i64::try_from(share.bytes_per_second).unwrap_or(i64::MAX));
        }
    }
}

/// Runs what the fleet needs once: discovery into `output`, and group offset sync. Restarts both with each new
/// config. `seed` are tasks known before the first look (an inherited assignment).
async fn lead(
    shared: Arc<Shared>,
    output: Arc<watch::Sender<Discovered>>,
    seed: BTreeSet<TaskId>,
    shutdown: CancellationToken,
) {
    let mut config_rx = shared.config.subscribe();
    let mut seed = Some(seed);
    loop {
        let config = config_rx.borrow_and_update().clone();
        let services = shutdown.child_token();
        let mut joins = JoinSet::new();
        match lock(&shared.clients).discovery(&config) {
            Ok(discovery) => {
                // After a reload, start from what the previous discovery found so nothing stops meanwhile.
                let initial = match seed.take() {
                    Some(seed) => discovery.seed(seed),
                    None => {
                        let current = output.borrow().clone();
                        Discovered { tasks: discovery.seed(current.tasks.into_keys()).tasks, ..current }
                    }
                };
                let (interval, output, services) =
                    (config.discovery.interval.as_std(), output.clone(), services.clone());
                joins.spawn(async move { discovery.run(interval, initial, output, services).await });
            }
            Err(error) => error!(%error, "cannot set up discovery"),
        }
        for flow in config.flows.iter().filter(|flow| flow.sync_group_offsets.enabled || flow.emit_mm2_checkpoints) {
            let sync = GroupSync::new(
                config.clone(),
                flow.clone(),
                shared.registry.clone(),
                shared.store.clone(),
                shared.metrics.clone(),
            );
            match sync {
                Ok(sync) => {
                    let sync = if shared.coordinated { sync.with_stored_positions() } else { sync };
                    let (interval, services) = (flow.sync_group_offsets.interval.as_std(), services.clone());
                    joins.spawn(async move { sync.run(interval, services).await });
                }
                Err(error) => error!(flow = flow.name.as_str(), %error, "cannot set up group offset sync"),
            }
        }
        let reconfigured = tokio::select! {
            _ = shutdown.cancelled() => false,
            changed = config_rx.changed() => changed.is_ok(),
        };
        services.cancel();
        while joins.join_next().await.is_some() {}
        if !reconfigured {
            return;
        }
    }
}

/// Applies each valid config reload: flows added, removed or changed, and throttle budgets.
async fn apply_reloads(shared: Arc<Shared>, mut reloads: mpsc::Receiver<Reload>, shutdown: CancellationToken) {
    loop {
        let reload = tokio::select! {
            _ = shutdown.cancelled() => return,
            reload = reloads.recv() => match reload {
                Some(reload) => reload,
                None => return,
            },
        };
        let Reload { config, change, .. } = reload;
        let old = shared.config.borrow().clone();
        for path in &change.needs_restart {
            warn!(key = path.as_str(), "this change takes effect only after a restart");
        }
        let mut rebuild: BTreeSet<String> = change.added_flows.iter().chain(&change.changed_flows).cloned().collect();
        if change.throttles_changed {
            // A flow whose matching throttle is now another entry (or none) needs its tasks to pick it up.
            for flow in &config.flows {
                let key = |config: &Config| {
                    config.throttle_for(&flow.source, &flow.target).map(|(_, t)| (t.from.clone(), t.to.clone()))
                };
                if old.flows.iter().any(|f| f.name == flow.name) && key(&old) != key(&config) {
                    rebuild.insert(flow.name.clone());
                }
            }
        }
        for name in &change.removed_flows {
            let _ = shared.flow_updates.send(FlowUpdate::Remove(name.clone())).await;
        }
        for flow in config.flows.iter().filter(|flow| rebuild.contains(&flow.name)) {
            let stored = if shared.coordinated {
                BTreeMap::new()
            } else {
                match shared.store.load(&flow.name).await {
                    Ok(stored) => stored,
                    Err(error) => {
                        error!(flow = flow.name.as_str(), %error, "cannot load checkpoints of a reloaded flow; not applied");
                        continue;
                    }
                }
            };
            let runtime = lock(&shared.clients).flow_runtime(&config, flow, stored);
            match runtime {
                Ok(runtime) => {
                    shared.checkpointer.touch(&flow.name);
                    let _ = shared.flow_updates.send(FlowUpdate::Set(flow.name.clone(), runtime)).await;
                }
                Err(error) => error!(flow = flow.name.as_str(), %error, "cannot build the clients of a reloaded flow"),
            }
        }
        if change.throttles_changed && !shared.coordinated {
            lock(&shared.clients).apply_configured_rates(&config);
        }
        // Discovery, group sync and the controller follow the new config from here.
        shared.config.send_replace(config);
    }
}

/// A coordinated member's link to the fleet: membership sessions, the leader's controller, and task ownership.
struct Coordinator {
    shared: Arc<Shared>,
    etcd: Etcd,
    member_id: String,
    http: String,
    wanted: Arc<watch::Sender<Discovered>>,
    running: watch::Receiver<BTreeSet<TaskId>>,
    fleet: Arc<RwLock<Option<FleetStatus>>>,
    /// The current membership, left by the member after its final checkpoint.
    membership: Arc<Mutex<Option<Membership>>>,
}

impl Coordinator {
    /// Joins, follows the assignment and leads when elected, until `shutdown`; rejoins when the lease is lost.
    async fn run(self, shutdown: CancellationToken) {
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
                    self.publish_waiting(format!("cannot join the fleet: {error}"));
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
            self.publish_waiting("the member's etcd lease expired; rejoining".to_owned());
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

    fn publish_waiting(&self, reason: String) {
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
        let mut controller: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fleet_due = tokio::time::Instant::now();
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        let lease_lost = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break false,
                _ = lost.cancelled() => break true,
                _ = ticker.tick() => {}
            }
            if controller.as_ref().is_some_and(|(_, handle)| handle.is_finished()) {
                controller = None;
            }
            let leader = match campaign_and_observe(&self.etcd, membership).await {
                Ok(observed) => {
                    if let Some(work) = &observed.assignment {
                        lock(&self.shared.clients).apply_shares(&work.throttles);
                    }
                    assigned_tx.send_if_modified(|current| {
                        let changed = *current != observed.assignment;
                        *current = observed.assignment.clone();
                        changed
                    });
                    match (observed.leadership, &controller) {
                        (Some(leadership), None) => controller = Some(self.start_controller(leadership, &session)),
                        (None, Some((token, _))) => {
                            info!("no longer the leader; stopping the controller");
                            token.cancel();
                            controller = None;
                        }
                        _ => {}
                    }
                    observed.leader
                }
                Err(error) => {
                    if unreachable_since.is_none() {
                        warn!(%error, "cannot read the assignment from etcd; running on the current one until it answers");
                        unreachable_since = Some(tokio::time::Instant::now());
                    }
                    continue;
                }
            };
            if let Some(since) = unreachable_since.take() {
                info!(after = ?since.elapsed(), "etcd answers again");
            }
            if tokio::time::Instant::now() >= fleet_due {
                fleet_due = tokio::time::Instant::now() + FLEET_VIEW_INTERVAL;
                match fleet_view(&self.etcd).await {
                    Ok(members) => {
                        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) =
                            Some(FleetStatus { member: self.member_id.clone(), leader: leader.clone(), members });
                    }
                    Err(error) => debug!(%error, "cannot read the fleet's members"),
                }
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
async fn fleet_view(etcd: &Etcd) -> Result<Vec<FleetMember>, CoordinationError> {
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
fn advertised(bound: SocketAddr) -> String {
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

/// Refreshes the lag gauges, readiness and `/status` every second.
async fn report_status(
    shared: Arc<Shared>,
    wanted: watch::Receiver<Discovered>,
    fleet: Arc<RwLock<Option<FleetStatus>>>,
    status: Arc<RwLock<Status>>,
    shutdown: CancellationToken,
) {
    let metrics = &shared.metrics;
    let mut gauges = LagGauges::default();
    let mut ticker = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now_ms = crate::clock::now_ms();
        let sources = lock(&shared.clients).sources.clone();
        let (lags, not_ready_reason) = {
            let discovered = wanted.borrow();
            let mut lags = Vec::with_capacity(discovered.tasks.len());
            for id in discovered.tasks.keys() {
                let (Some(progress), Some(source)) = (shared.registry.get(id), sources.get(&*id.flow)) else {
                    continue;
                };
                let end = source.end_offset(&id.topic, id.partition);
                lags.push(lag::task_lag(id, &progress.lag_inputs(), end, now_ms));
            }
            let reason = if let Some(waiting) = &discovered.waiting_for {
                Some(waiting.clone())
            } else if !discovered.ever_complete {
                Some("no complete look at the clusters yet (see ferry_cluster_up and the logs)".to_owned())
            } else if !discovered.complete {
                Some("a cluster did not answer the last discovery (see ferry_cluster_up)".to_owned())
            } else {
                None
            };
            if !shared.coordinated {
                metrics.owned_tasks.set(i64::try_from(discovered.tasks.len()).unwrap_or(i64::MAX));
            }
            (lags, reason)
        };
        gauges.publish(metrics, &lags);
        metrics.ready.set(i64::from(not_ready_reason.is_none()));
        let fleet = fleet.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let mut status = status.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *status = Status { ready: not_ready_reason.is_none(), not_ready_reason, tasks: lags, fleet };
    }
    let mut status = status.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    status.ready = false;
    status.not_ready_reason = Some("shutting down".to_owned());
}

//! A member: one running ferry process. Builds the clients, and runs the supervisor, the checkpointer, the status
//! reporter, the config watcher and the HTTP endpoint as one tree that shuts down together. With the file store it
//! is the whole fleet: it discovers tasks itself. With etcd it joins the fleet, runs the tasks the controller
//! assigns it once it owns them, and runs the controller (with discovery and group sync) while it is the leader.
//!
//! Invariant: on shutdown the tasks drain first and the final checkpoint is written after them, and only then does
//! the member leave the fleet (revoking its lease frees its owner keys), so the last checkpoint covers everything
//! the target acknowledged before another member can start its tasks.

mod clients;
mod coordinator;
mod lead;
mod reload;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::{self, Access, CheckpointStore, Checkpointer, OpenedStore, StoreError};
use crate::config::watch::ConfigWatcher;
use crate::config::Config;
use crate::coordination::etcd::{Etcd, EtcdError};
use crate::coordination::membership::Membership;
use crate::coordination::new_member_id;
use crate::kafka::ClientError;
use crate::ops::http::{self, FleetStatus, HttpError, HttpState, Status};
use crate::ops::metrics::Metrics;
use crate::replication::progress::Registry;
use crate::replication::source::SourceError;
use crate::replication::supervisor::{FlowUpdate, Supervisor};
use crate::replication::target::TargetProducer;
use crate::topics::admin::AdminError;
use crate::topics::discovery::Discovered;

use self::clients::Clients;
use self::coordinator::{advertised, Coordinator};
use self::lead::lead;
use self::reload::apply_reloads;
use self::status::report_status;

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
        let member_id = new_member_id();

        // The endpoint comes first, so that a store that cannot be opened yet shows on /readyz with its reason.
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
        let Some(OpenedStore { store, etcd }) = open_store(&config, &member_id, &metrics, &status, &shutdown).await?
        else {
            http_shutdown.cancel();
            let _ = http_handle.await;
            return Ok(());
        };

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
            discovery_problems: RwLock::default(),
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
        // Before the final checkpoint: it covers what the target acknowledged, and nothing may arrive after it.
        let producers: Vec<TargetProducer> = lock(&shared.clients).producers.values().cloned().collect();
        for producer in producers {
            let purged = producer.purge_unacknowledged();
            if purged > 0 {
                warn!(
                    cluster = producer.alias(),
                    purged,
                    "records not acknowledged by the drain timeout were purged; they are replicated again from the \
                     final checkpoint, and any that reached the target anyway are counted as duplicates then"
                );
            }
        }
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
        http_shutdown.cancel();
        let _ = http_handle.await;
        match failure {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// How many different reasons for not opening the store are logged (then only `/readyz` shows the latest).
const MAX_DISTINCT_STORE_ERRORS: usize = 8;

/// Opens the checkpoint store; while etcd refuses or does not answer (a certificate it does not trust, a wrong
/// password, etcd still starting), keeps trying with etcd's reason on `/readyz`, as a running member does when it
/// cannot join the fleet. `None` when shut down meanwhile.
async fn open_store(
    config: &Config,
    member_id: &str,
    metrics: &Metrics,
    status: &RwLock<Status>,
    shutdown: &CancellationToken,
) -> Result<Option<OpenedStore>, MemberError> {
    // Each distinct reason is logged once: a refused client certificate reads as a TLS alert on one attempt and as
    // a broken pipe on the next (TLS 1.3 sends the refusal after the client's side of the handshake is done).
    let mut logged: Vec<String> = Vec::new();
    loop {
        let error = match checkpoint::open(&config.checkpoint, Access::Member(member_id.to_owned()), metrics).await {
            Ok(opened) => return Ok(Some(opened)),
            Err(StoreError::Etcd(error @ EtcdError::Request { .. })) => error,
            Err(other) => return Err(other.into()),
        };
        let reason = error.to_string();
        if !logged.contains(&reason) && logged.len() < MAX_DISTINCT_STORE_ERRORS {
            error!(%error, "cannot open the checkpoint store in etcd; retrying");
            logged.push(reason);
        }
        status.write().unwrap_or_else(|poisoned| poisoned.into_inner()).not_ready_reason =
            Some(format!("cannot open the checkpoint store: {error}"));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(crate::coordination::POLL_INTERVAL) => {}
        }
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
    /// Why this member's last discovery (it leads, or it is the only member) was not complete; empty otherwise.
    discovery_problems: RwLock<Vec<String>>,
}

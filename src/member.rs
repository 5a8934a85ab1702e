//! A member: one running ferry process. Builds the clients, loads checkpoints, and runs discovery, the supervisor,
//! the checkpointer, the lag reporter and the HTTP endpoint as one tree that shuts down together.
//!
//! Invariant: on shutdown the tasks drain first and the final checkpoint is written after them, so the last
//! checkpoint covers everything the target acknowledged before exit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{AdminError, ClusterAdmin};
use crate::checkpoint::{CheckpointStore, Checkpointer, FileStore, StoreError};
use crate::config::{Config, ConfigError, ConfigProblem, Delivery, Naming, StoreKind, ThrottleConfig};
use crate::discovery::{Discovered, Discovery, FlowTopics};
use crate::group_sync::GroupSync;
use crate::http::{self, HttpError, HttpState, Status};
use crate::kafka::ClientError;
use crate::lag::{self, LagGauges};
use crate::metrics::Metrics;
use crate::progress::Registry;
use crate::source::{SourceConsumer, SourceError};
use crate::supervisor::{FlowRuntime, Supervisor};
use crate::target::TargetProducer;
use crate::task::Provenance;
use crate::throttle::Throttle;

/// How long tasks may take to get their in-flight records acknowledged on shutdown. Together with the final
/// checkpoint and producer flush it keeps shutdown well inside Kubernetes' default 30 s grace period.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often lag and readiness are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Errors that stop a member from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The HTTP endpoint could not start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The checkpoint store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    Failover(#[from] crate::failover::FailoverError),
    /// A component stopped on its own before shutdown was asked.
    #[error("component {0} stopped unexpectedly")]
    ComponentStopped(&'static str),
}

/// A started member; [`Member::run`] drives it until shutdown.
pub struct Member {
    config: Config,
    metrics: Metrics,
}

impl Member {
    /// A member for `config`.
    pub fn new(config: Config) -> Self {
        let metrics = Metrics::new(config.metrics.per_partition);
        Self { config, metrics }
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
        let Member { config, metrics } = self;
        unsupported(&config)?;
        let store: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(&config.checkpoint.path)?);

        let status = Arc::new(RwLock::new(Status::default()));
        let http_shutdown = CancellationToken::new();
        let (bound, http_handle) = http::serve(
            config.http.listen,
            HttpState { metrics: metrics.clone(), status: status.clone() },
            http_shutdown.clone(),
        )
        .await?;
        info!(address = %bound, "HTTP endpoint listening");
        on_listening(bound);

        let registry = Arc::new(Registry::default());
        let checkpointer = Checkpointer::new(store.clone(), registry.clone(), metrics.clone());
        let (flows, discovery_flows, admins, producers) = build_flows(&config, &metrics, store.as_ref()).await?;
        for flow in flows.keys() {
            checkpointer.touch(flow);
        }
        let sources: BTreeMap<String, Arc<SourceConsumer>> =
            flows.iter().map(|(name, flow)| (name.clone(), flow.source.clone())).collect();

        let (wanted_tx, wanted_rx) = watch::channel(Discovered::default());
        let work = shutdown.child_token();
        let mut components: JoinSet<&'static str> = JoinSet::new();
        {
            let discovery = Discovery::new(discovery_flows, admins, metrics.clone());
            let interval = config.discovery.interval.as_std();
            let work = work.clone();
            components.spawn(async move {
                discovery.run(interval, wanted_tx, work).await;
                "discovery"
            });
        }
        {
            let checkpointer = checkpointer.clone();
            let interval = config.checkpoint.interval.as_std();
            let work = work.clone();
            components.spawn(async move {
                checkpointer.run(interval, work).await;
                "checkpointer"
            });
        }
        {
            let (metrics, registry, wanted, work) =
                (metrics.clone(), registry.clone(), wanted_rx.clone(), work.clone());
            components.spawn(async move {
                report_status(metrics, registry, sources, wanted, status, work).await;
                "status"
            });
        }
        let config = Arc::new(config);
        for flow in config.flows.iter().filter(|flow| flow.sync_group_offsets.enabled || flow.emit_mm2_checkpoints) {
            let sync = GroupSync::new(config.clone(), flow.clone(), registry.clone(), store.clone(), metrics.clone())?;
            let (interval, work) = (flow.sync_group_offsets.interval.as_std(), work.clone());
            components.spawn(async move {
                sync.run(interval, work).await;
                "group offset sync"
            });
        }
        let supervisor = Supervisor::new(flows, registry.clone(), metrics.clone(), DRAIN_TIMEOUT);
        let supervisor_done = CancellationToken::new();
        let supervisor_handle = {
            let (work, done) = (work.clone(), supervisor_done.clone());
            tokio::spawn(async move {
                supervisor.run(wanted_rx, work).await;
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
        for producer in producers.values() {
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

/// Refuses, with their key paths, the settings of the config contract that this version does not implement yet,
/// rather than silently running without them.
pub fn unsupported(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    if config.checkpoint.store == StoreKind::Etcd {
        problems
            .push(ConfigProblem::new("checkpoint.store", "etcd is not implemented in this version yet; use `file`"));
    }
    for (index, flow) in config.flows.iter().enumerate() {
        if flow.delivery == Delivery::ExactlyOnce {
            problems.push(ConfigProblem::new(
                format!("flows[{index}].delivery"),
                "exactly-once is not implemented in this version yet; use `at-least-once`",
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

type BuiltFlows = (
    BTreeMap<String, FlowRuntime>,
    Vec<FlowTopics>,
    BTreeMap<String, Arc<ClusterAdmin>>,
    BTreeMap<String, TargetProducer>,
);

/// Builds every client the flows need (no connection is made yet) and loads their checkpoints.
async fn build_flows(
    config: &Config,
    metrics: &Metrics,
    store: &dyn CheckpointStore,
) -> Result<BuiltFlows, MemberError> {
    let mut admins = BTreeMap::new();
    let mut producers: BTreeMap<String, TargetProducer> = BTreeMap::new();
    let mut throttles: BTreeMap<usize, Arc<Throttle>> = BTreeMap::new();
    let mut flows = BTreeMap::new();
    let mut discovery_flows = Vec::new();
    for flow in &config.flows {
        for alias in [&flow.source, &flow.target] {
            if !admins.contains_key(alias) {
                admins.insert(alias.clone(), Arc::new(ClusterAdmin::new(alias, &config.clusters[alias], metrics)?));
            }
        }
        if !producers.contains_key(&flow.target) {
            producers.insert(
                flow.target.clone(),
                TargetProducer::new(&flow.target, &config.clusters[&flow.target], metrics)?,
            );
        }
        let throttle = throttle_for(config, &flow.source, &flow.target).map(|(index, throttle)| {
            throttles
                .entry(index)
                .or_insert_with(|| {
                    let wait = metrics.throttle_wait_seconds.with_label_values(&[&throttle.from, &throttle.to]);
                    Arc::new(Throttle::new(throttle.rate.bytes_per_second(), wait))
                })
                .clone()
        });
        let provenance = (flow.naming == Naming::Identity)
            .then(|| Provenance { source_alias: flow.source.clone(), target_alias: flow.target.clone() });
        let stored = store.load(&flow.name).await?;
        info!(flow = flow.name.as_str(), checkpoints = stored.len(), "loaded checkpoints");
        let source = Arc::new(SourceConsumer::new(&flow.name, &flow.source, &config.clusters[&flow.source], metrics)?);
        flows.insert(
            flow.name.clone(),
            FlowRuntime { source, target: producers[&flow.target].clone(), throttle, provenance, stored },
        );
        discovery_flows.push(FlowTopics::from_config(config, flow)?);
    }
    Ok((flows, discovery_flows, admins, producers))
}

/// The first throttle whose `from` names the source (alias or region) and whose `to` names the target.
fn throttle_for<'a>(config: &'a Config, source: &str, target: &str) -> Option<(usize, &'a ThrottleConfig)> {
    let names = |alias: &str| [alias.to_owned(), config.region_of(alias).to_owned()];
    let (sources, targets) = (names(source), names(target));
    config
        .throttles
        .iter()
        .enumerate()
        .find(|(_, throttle)| sources.contains(&throttle.from) && targets.contains(&throttle.to))
}

/// Refreshes the lag gauges, readiness and `/status` every second.
async fn report_status(
    metrics: Metrics,
    registry: Arc<Registry>,
    sources: BTreeMap<String, Arc<SourceConsumer>>,
    wanted: watch::Receiver<Discovered>,
    status: Arc<RwLock<Status>>,
    shutdown: CancellationToken,
) {
    let mut gauges = LagGauges::default();
    let mut ticker = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let discovered = wanted.borrow().clone();
        let now_ms = crate::checkpoint::now_ms();
        let mut lags = Vec::with_capacity(discovered.tasks.len());
        for id in discovered.tasks.keys() {
            let (Some(progress), Some(source)) = (registry.get(id), sources.get(&*id.flow)) else { continue };
            let end = source.end_offset(&id.topic, id.partition);
            lags.push(lag::task_lag(id, &progress.lag_inputs(), end, now_ms));
        }
        gauges.publish(&metrics, &lags);
        let not_ready_reason = if !discovered.ever_complete {
            Some("no complete look at the clusters yet (see ferry_cluster_up and the logs)".to_owned())
        } else if !discovered.complete {
            Some("a cluster did not answer the last discovery (see ferry_cluster_up)".to_owned())
        } else {
            None
        };
        metrics.ready.set(i64::from(not_ready_reason.is_none()));
        let mut status = status.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *status = Status { ready: not_ready_reason.is_none(), not_ready_reason, tasks: lags };
    }
    let mut status = status.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    status.ready = false;
    status.not_ready_reason = Some("shutting down".to_owned());
}

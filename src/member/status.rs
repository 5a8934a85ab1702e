//! Lag, readiness and `/status`, refreshed every second from the tasks' positions and the sources' end offsets.
//!
//! Invariant: `/readyz` says ready only after discovery has had a complete look at the clusters, the discovery this
//! member runs (as the controller, or the only member) reported no problem, and the member is not waiting for the
//! fleet; when not, it says why, with the clusters' own errors where discovery has them.

use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ops::http::FleetStatus;
use crate::ops::http::Status;
use crate::replication::lag;
use crate::replication::lag::LagGauges;
use crate::replication::progress::TaskState;
use crate::topics::discovery::Discovered;

use super::{lock, Shared, STATUS_INTERVAL};

/// Refreshes the lag gauges, readiness and `/status` every second.
pub(super) async fn report_status(
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
                let mut lag = lag::task_lag(id, &progress.lag_inputs(), end, now_ms);
                if let TaskState::Paused(reason) = progress.state() {
                    lag.pause_reason = Some(reason);
                }
                lags.push(lag);
            }
            let problems = shared.discovery_problems.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
            let reason = if let Some(waiting) = &discovered.waiting_for {
                Some(if problems.is_empty() {
                    waiting.to_string()
                } else {
                    format!("{waiting}; discovery: {}", problems.join("; "))
                })
            } else if !discovered.ever_complete {
                Some(with_problems("no complete look at the clusters yet", &problems))
            } else if !discovered.complete {
                Some(with_problems("a cluster did not answer the last discovery", &problems))
            } else if !problems.is_empty() {
                Some(with_problems("the last discovery found problems", &problems))
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

/// `what`, with the failures that made it so, or a pointer to where they show when none is known yet.
fn with_problems(what: &str, problems: &[String]) -> String {
    if problems.is_empty() {
        format!("{what} (see ferry_cluster_up and the logs)")
    } else {
        format!("{what}: {}", problems.join("; "))
    }
}

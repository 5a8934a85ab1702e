//! What the fleet needs once, run by the controller (or by the only member with the file store): discovery of
//! wanted tasks, and the continuous group offset sync.
//!
//! Invariant: a config reload restarts both from what the previous discovery found, so no task stops meanwhile.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::offsets::group_sync::GroupSync;
use crate::replication::progress::TaskId;
use crate::topics::discovery::Discovered;

use super::{lock, Shared};

/// Runs what the fleet needs once: discovery into `output`, and group offset sync. Restarts both with each new
/// config. `seed` are tasks known before the first look (an inherited assignment).
pub(super) async fn lead(
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
                {
                    // Discovery's problems also explain readiness where this member's tasks come from its
                    // assignment, which does not say why discovery failed.
                    let (shared, mut seen, services) = (shared.clone(), output.subscribe(), services.clone());
                    joins.spawn(async move {
                        loop {
                            let problems = seen.borrow_and_update().problems.clone();
                            *shared.discovery_problems.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                                problems;
                            tokio::select! {
                                _ = services.cancelled() => break,
                                changed = seen.changed() => if changed.is_err() { break },
                            }
                        }
                        shared.discovery_problems.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
                    });
                }
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

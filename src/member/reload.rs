//! Applying a valid config reload to a running member: flows added, removed or changed, and throttle budgets.
//!
//! Invariant: only configs the watcher admitted arrive here; a flow whose clients cannot be built keeps running
//! with its old settings.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::watch::Reload;
use crate::config::Config;
use crate::replication::supervisor::FlowUpdate;

use super::{lock, Shared};

/// Applies each valid config reload: flows added, removed or changed, and throttle budgets.
pub(super) async fn apply_reloads(
    shared: Arc<Shared>,
    mut reloads: mpsc::Receiver<Reload>,
    shutdown: CancellationToken,
) {
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
        for flow in config.flows.iter().filter(|flow| change.changed_flows.contains(&flow.name)) {
            let Some(before) = old.flows.iter().find(|before| before.name == flow.name) else { continue };
            if before.delivery != flow.delivery || before.exactly_once != flow.exactly_once {
                // Each task drains (its last transaction committed, or its records acknowledged) before it starts
                // again in the new mode from the position it reached: nothing is lost or written twice.
                info!(
                    flow = flow.name.as_str(),
                    from = ?before.delivery,
                    to = ?flow.delivery,
                    "delivery settings change; applied as each task stops and starts again (a task boundary)"
                );
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

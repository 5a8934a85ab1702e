//! The checkpointer: every interval, one batched write per flow of every task whose position moved.
//!
//! Invariant: a task's position is marked saved only after the store confirmed the write that contained it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Checkpoint, CheckpointStore, StoreError, TaskKey};
use crate::clock::now_ms;
use crate::ops::metrics::Metrics;
use crate::replication::progress::{Registry, TaskProgress};

/// A checkpoint about to be written, with the progress and version to mark saved once it is.
type Pending = (TaskKey, Checkpoint, Arc<TaskProgress>, u64);

/// Writes the positions of a member's tasks to a [`CheckpointStore`] in batches.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    store: Arc<dyn CheckpointStore>,
    registry: Arc<Registry>,
    metrics: Metrics,
    last_success: Arc<std::sync::Mutex<BTreeMap<String, Instant>>>,
}

impl Checkpointer {
    /// A checkpointer for the tasks in `registry`.
    pub fn new(store: Arc<dyn CheckpointStore>, registry: Arc<Registry>, metrics: Metrics) -> Self {
        Self { store, registry, metrics, last_success: Arc::default() }
    }

    /// The store it writes to.
    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        &self.store
    }

    /// Writes every unsaved position now, one batch per flow. Returns the first error after trying every flow.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let mut batches: BTreeMap<Arc<str>, Vec<Pending>> = BTreeMap::new();
        let written_at_ms = now_ms();
        for (id, progress) in self.registry.snapshot() {
            if let Some((position, version)) = progress.unsaved() {
                let key = TaskKey::from(&id);
                batches.entry(id.flow.clone()).or_default().push((
                    key,
                    Checkpoint { position, written_at_ms },
                    progress,
                    version,
                ));
            }
        }
        let mut written = 0;
        let mut first_error = None;
        for (flow, batch) in batches {
            let records: Vec<(TaskKey, Checkpoint)> =
                batch.iter().map(|(key, checkpoint, _, _)| (key.clone(), checkpoint.clone())).collect();
            match self.store.save(&flow, &records).await {
                Ok(()) => {
                    for (_, _, progress, version) in &batch {
                        progress.saved(*version);
                    }
                    written += batch.len();
                    self.metrics.checkpoint(&flow).writes.inc();
                    self.lock_last_success().insert(flow.to_string(), Instant::now());
                    debug!(%flow, tasks = batch.len(), "checkpoint written");
                }
                Err(error) => {
                    self.metrics.checkpoint(&flow).failures.inc();
                    warn!(%flow, %error, "checkpoint write failed; positions stay unsaved and are retried");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(written),
        }
    }

    /// Marks `flow` as checkpointed now (its stored state was just loaded), so its age starts at zero.
    pub fn touch(&self, flow: &str) {
        self.lock_last_success().entry(flow.to_owned()).or_insert_with(Instant::now);
    }

    /// Flushes every `interval` until `shutdown`; the final flush is the caller's, after the tasks drained.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    // Errors are counted and logged inside; positions stay unsaved and go into the next batch.
                    let _ = self.flush().await;
                    self.update_age();
                }
            }
        }
    }

    fn update_age(&self) {
        for (flow, at) in self.lock_last_success().iter() {
            self.metrics.checkpoint(flow).age_seconds.set(at.elapsed().as_secs_f64());
        }
    }

    fn lock_last_success(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Instant>> {
        self.last_success.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

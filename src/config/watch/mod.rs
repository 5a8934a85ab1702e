//! Hot reload of the config file: polls it, validates each new version exactly as `ferry run` does at start, and
//! hands every valid change to the member together with what changed.
//!
//! Kubernetes updates a mounted ConfigMap by renaming a new `..data` symlink over the old one, which inotify on the
//! file path never sees, so the watcher polls: it reads the file through its path (following the symlinks afresh each
//! time) and compares the bytes with the last version it looked at.
//!
//! Invariant: a [`Reload`] is sent only for a config that passed every check `ferry run` makes and that differs from
//! the one sent before it (or the one the process started with); a rejected version is logged and counted once,
//! and the running config stays in force until a valid one replaces it.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{admit, layered, Admitted, Config, ConfigError, ConfigProblem, FlowConfig, SecretCheck};
use crate::ops::metrics::{Metrics, ReloadResult};

/// How often the file is read unless [`ConfigWatcher::with_interval`] says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Lower bound on the poll interval: tokio's interval panics on zero, and faster polling buys nothing.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// A file missing for longer than this is no longer a symlink swap in progress, so it earns a warning.
const UNREADABLE_WARN_AFTER: Duration = Duration::from_secs(10);
/// The `needs_restart` key for differences in settings [`ConfigChange::between`] does not know about, so that a
/// section added to [`Config`] later is reported as needing a restart instead of being ignored.
const OTHER_SETTINGS: &str = "(other settings)";

/// What changed between two valid configs, as the member applies it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigChange {
    /// Names of flows only the new config has, sorted.
    pub added_flows: Vec<String>,
    /// Names of flows only the old config has, sorted.
    pub removed_flows: Vec<String>,
    /// Names of flows in both whose settings differ in any field, sorted (the member restarts their tasks).
    pub changed_flows: Vec<String>,
    /// Whether the throttle budgets, or the region of a cluster they match on, changed.
    pub throttles_changed: bool,
    /// Key paths of changes that only take effect after a restart (`clusters.<alias>`, `checkpoint`, `http.listen`,
    /// `discovery.interval`, `metrics.per_partition`); logged as a warning.
    pub needs_restart: Vec<String>,
}

impl ConfigChange {
    /// Compares two configs section by section, deciding for each difference whether it can be applied live.
    pub fn between(old: &Config, new: &Config) -> Self {
        let old_flows: BTreeMap<&str, &FlowConfig> = old.flows.iter().map(|f| (f.name.as_str(), f)).collect();
        let new_flows: BTreeMap<&str, &FlowConfig> = new.flows.iter().map(|f| (f.name.as_str(), f)).collect();
        let added_flows =
            new_flows.keys().filter(|name| !old_flows.contains_key(*name)).map(|n| n.to_string()).collect();
        let removed_flows =
            old_flows.keys().filter(|name| !new_flows.contains_key(*name)).map(|n| n.to_string()).collect();
        let changed_flows = new_flows
            .iter()
            .filter(|(name, flow)| old_flows.get(*name).is_some_and(|before| before != *flow))
            .map(|(name, _)| name.to_string())
            .collect();

        // Throttles match flows by region, so moving an existing cluster to another region changes which budget its
        // flows draw from even when the throttle list itself is unchanged.
        let region_moved = old
            .clusters
            .keys()
            .any(|alias| new.clusters.contains_key(alias) && old.region_of(alias) != new.region_of(alias));
        let throttles_changed = old.throttles != new.throttles || region_moved;

        let mut needs_restart = Vec::new();
        for (alias, before) in &old.clusters {
            // Clients of an existing alias are built once with its connection settings; only its region (throttle
            // matching) is live. New aliases are fine: the member builds clients for them when a flow needs them.
            let Some(after) = new.clusters.get(alias) else { continue };
            let mut connection = after.clone();
            connection.region = before.region.clone();
            if connection != *before {
                needs_restart.push(format!("clusters.{alias}"));
            }
        }
        // The store, the HTTP listener, the discovery loop and the metric labels are all set up once at start.
        if old.checkpoint != new.checkpoint {
            needs_restart.push("checkpoint".to_string());
        }
        if old.http.listen != new.http.listen {
            needs_restart.push("http.listen".to_string());
        }
        if old.discovery.interval != new.discovery.interval {
            needs_restart.push("discovery.interval".to_string());
        }
        if old.metrics.per_partition != new.metrics.per_partition {
            needs_restart.push("metrics.per_partition".to_string());
        }
        // Whatever is left after overwriting every setting judged above with its old value must be unchanged;
        // otherwise Config grew a setting this function does not know, and restarting is the safe answer.
        let mut rest = new.clone();
        rest.clusters.clone_from(&old.clusters);
        rest.checkpoint.clone_from(&old.checkpoint);
        rest.flows.clone_from(&old.flows);
        rest.throttles.clone_from(&old.throttles);
        rest.http.listen = old.http.listen;
        rest.discovery.interval = old.discovery.interval;
        rest.metrics.per_partition = old.metrics.per_partition;
        if rest != *old {
            needs_restart.push(OTHER_SETTINGS.to_string());
        }

        ConfigChange { added_flows, removed_flows, changed_flows, throttles_changed, needs_restart }
    }

    /// True when nothing the member acts on (or should warn about) changed.
    pub fn is_empty(&self) -> bool {
        self.added_flows.is_empty()
            && self.removed_flows.is_empty()
            && self.changed_flows.is_empty()
            && !self.throttles_changed
            && self.needs_restart.is_empty()
    }
}

/// A new config to apply, with what changed since the previous one.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The new config, validated like the one `ferry run` started with.
    pub config: Arc<Config>,
    /// What differs from the config sent before (or started with).
    pub change: ConfigChange,
    /// The new config's legal but suspicious settings, for the log.
    pub warnings: Vec<ConfigProblem>,
}

/// Polls one config file and sends each valid new version; see the module docs.
pub struct ConfigWatcher {
    path: PathBuf,
    current: Arc<Config>,
    metrics: Metrics,
    interval: Duration,
    /// The bytes last looked at (valid or not), so an unchanged or already rejected file costs a read and a compare.
    last_seen: Option<Vec<u8>>,
    /// When the file became unreadable, and whether that was already warned about.
    unreadable: Option<(Instant, bool)>,
}

impl ConfigWatcher {
    /// A watcher of `path` for a process running `current`; remembers the file's content now.
    pub fn new(path: PathBuf, current: Arc<Config>, metrics: Metrics) -> Self {
        let mut watcher =
            ConfigWatcher { path, current, metrics, interval: DEFAULT_INTERVAL, last_seen: None, unreadable: None };
        // Only remembered if it still yields the running config: a file that changed since `current` was loaded must
        // be looked at by the first poll, not taken as already seen.
        if let Ok(bytes) = std::fs::read(&watcher.path) {
            if watcher.validate(&bytes).is_ok_and(|admitted| admitted.config == *watcher.current) {
                watcher.last_seen = Some(bytes);
            }
        }
        watcher
    }

    /// Polls every `interval` instead of every second (at least every 10 ms).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(MIN_INTERVAL);
        self
    }

    /// Polls until `shutdown`; sends each applied reload.
    ///
    /// Returns early if `reloads` is closed, since nobody is left to apply them.
    pub async fn run(mut self, reloads: mpsc::Sender<Reload>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        // A slow receiver must not cause a burst of catch-up reads afterwards.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Shutdown wins over a due tick so a stopping member is not handed a reload.
                biased;
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let Some(reload) = self.poll().await else { continue };
            tokio::select! {
                // Same as above; the channel is bounded, so this send may wait for the member.
                biased;
                _ = shutdown.cancelled() => return,
                sent = reloads.send(reload.clone()) => {
                    if sent.is_err() {
                        debug!(file = %self.path.display(), "reload receiver closed; config watcher stopping");
                        return;
                    }
                }
            }
            self.metrics.config_reloads_of(ReloadResult::Applied).inc();
            self.log_applied(&reload);
            self.current = reload.config;
        }
    }

    /// Reads the file once; returns the reload to send, if any, after logging and counting a rejection.
    async fn poll(&mut self) -> Option<Reload> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                self.note_unreadable(&error);
                return None;
            }
        };
        if let Some((since, warned)) = self.unreadable.take() {
            if warned {
                info!(file = %self.path.display(), after = ?since.elapsed(), "config file readable again");
            }
        }
        if self.last_seen.as_deref() == Some(bytes.as_slice()) {
            return None;
        }
        let result = self.check(&bytes);
        // Remembered whatever the verdict, so a rejected version is reported once, not on every poll.
        self.last_seen = Some(bytes);
        match result {
            Ok(Some(reload)) => Some(reload),
            Ok(None) => {
                debug!(file = %self.path.display(), "config file changed but the config it yields did not");
                None
            }
            Err(error) => {
                self.metrics.config_reloads_of(ReloadResult::Rejected).inc();
                error!(
                    file = %self.path.display(),
                    "config file {} rejected, keeping the running config:\n{error}",
                    self.path.display()
                );
                None
            }
        }
    }

    /// Validates `bytes` as the config file's content: `Ok(None)` when they yield the config already running.
    fn check(&self, bytes: &[u8]) -> Result<Option<Reload>, ConfigError> {
        let Admitted { config, warnings } = self.validate(bytes)?;
        if config == *self.current {
            return Ok(None);
        }
        let change = ConfigChange::between(&self.current, &config);
        Ok(Some(Reload { config: Arc::new(config), change, warnings }))
    }

    /// The checks `ferry run` makes at start: `Config::load` on these bytes, then the same [`admit`].
    fn validate(&self, bytes: &[u8]) -> Result<Admitted, ConfigError> {
        // The same error `Config::load` gives for a file that is not UTF-8.
        let content = String::from_utf8(bytes.to_vec()).map_err(|error| ConfigError::Read {
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, error),
        })?;
        // Layered from the bytes already read rather than through `Config::load`, which would read the file again
        // and could see a newer version than the one compared.
        admit(Config::from_figment(layered(&self.path, content))?, SecretCheck::Resolve)
    }

    /// Logs a failed read: at debug level first (a symlink swap in progress), with one warning if it lasts.
    fn note_unreadable(&mut self, error: &io::Error) {
        match &mut self.unreadable {
            None => {
                debug!(file = %self.path.display(), %error, "config file unreadable; keeping the running config");
                self.unreadable = Some((Instant::now(), false));
            }
            Some((since, warned)) if !*warned && since.elapsed() >= UNREADABLE_WARN_AFTER => {
                warn!(
                    file = %self.path.display(),
                    %error,
                    after = ?since.elapsed(),
                    "config file still unreadable; keeping the running config"
                );
                *warned = true;
            }
            Some(_) => {}
        }
    }

    /// The operator's record of a reload: a summary, the keys that wait for a restart, and the new config's warnings.
    fn log_applied(&self, reload: &Reload) {
        let change = &reload.change;
        info!(
            file = %self.path.display(),
            added_flows = ?change.added_flows,
            removed_flows = ?change.removed_flows,
            changed_flows = ?change.changed_flows,
            throttles_changed = change.throttles_changed,
            "config reloaded"
        );
        if !change.needs_restart.is_empty() {
            warn!(
                file = %self.path.display(),
                keys = ?change.needs_restart,
                "config changes that take effect only after a restart"
            );
        }
        for warning in &reload.warnings {
            warn!(file = %self.path.display(), "config: {warning}");
        }
    }
}

#[cfg(test)]
// `figment::Jail` closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests;

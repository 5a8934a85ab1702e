//! ferry's configuration: the YAML contract of DESIGN.md ("Config contract"), layered with `FERRY_` environment
//! overrides, typed, and validated as a whole.
//!
//! Invariant: a [`Config`] returned by [`Config::load`] or [`Config::from_figment`] has passed every check in
//! `validate.rs` (clusters referenced by flows exist, regexes compile, names are unique, no identity-naming loop,
//! intervals and rates are non-zero, etcd is configured when chosen); anything else was reported as a
//! [`ConfigError`] listing *all* problems, each at its key path (`flows[1].topics.include[0]`). Whether ferry *runs*
//! a config is decided after that by [`admit`], the same for `ferry run`, `ferry check-config` and hot reload.
//!
//! Layout: `units` (durations, sizes, rates), `yaml` (the figment YAML format), `secret` (client values and
//! redaction), `cluster`, `checkpoint`, `flow` and `filter` (the sections), `load` (layering and extraction),
//! `validate` (cross-field rules), `error` (errors and key paths), `admit` (what `run` refuses beyond that: secrets,
//! TLS files, librdkafka properties), `guarantees` (client properties that would weaken a flow's guarantees).

mod admit;
mod checkpoint;
mod cluster;
mod error;
mod filter;
mod flow;
mod guarantees;
mod load;
mod secret;
mod units;
mod validate;
pub mod watch;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use serde::Deserialize;

pub(crate) use self::admit::redact_secrets;
pub use self::admit::{admit, Admitted, SecretCheck};
pub use self::checkpoint::{CheckpointConfig, EtcdConfig, EtcdTls, StoreKind};
pub use self::cluster::ClusterConfig;
pub use self::error::{render_path, ConfigError, ConfigProblem};
pub use self::filter::TopicFilter;
pub use self::flow::{Delivery, ExactlyOnce, FlowConfig, GroupOffsetSync, Naming, TopicSelection};
pub use self::load::{env_provider, layered, ENV_PREFIX};
pub use self::secret::{is_sensitive_key, ClientValue, Secretish};
pub use self::units::{ByteRate, ByteSize, Duration};
pub use self::yaml::{Yaml, YamlError};

/// The whole configuration of one ferry process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka clusters by alias; required, at least one.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Checkpoint store; default: file store at `./ferry-state`, written every `5s`.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Replication flows; required, at least one.
    pub flows: Vec<FlowConfig>,
    /// Fleet-wide bandwidth budgets per region (or cluster) pair; default none (unthrottled).
    #[serde(default)]
    pub throttles: Vec<ThrottleConfig>,
    /// HTTP server for `/metrics`, `/healthz`, `/readyz`; default listen `0.0.0.0:9464`.
    #[serde(default)]
    pub http: HttpConfig,
    /// Source metadata polling; default every `30s`.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Metric label options; default per-topic labels only.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `throttles[]`: a fleet-wide budget for traffic from one region (or cluster alias) to another.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Source region name or cluster alias. Required.
    pub from: String,
    /// Target region name or cluster alias. Required.
    pub to: String,
    /// Budget shared by all members, e.g. `100MiB/s`; must be non-zero. Required.
    pub rate: ByteRate,
}

/// The `http` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port to listen on (`ip:port`, no host names); default `0.0.0.0:9464`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

/// Parses `ip:port`, quoting the rejected text (std's own message, "invalid socket address syntax", does not).
fn socket_addr<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address {text:?}: expected ip:port such as 0.0.0.0:9464 or [::]:9464 (host names are not accepted)"
        ))
    })
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: SocketAddr::from(([0, 0, 0, 0], 9464)) }
    }
}

/// The `discovery` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// How often the controller polls source metadata for new topics and partitions; default `30s`.
    pub interval: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig { interval: Duration::from_secs(30) }
    }
}

/// The `metrics` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Add a `partition` label to per-task metrics (cardinality grows with partitions); default `false`.
    pub per_partition: bool,
}

impl Config {
    /// Reads `path` and layers it, lowest to highest precedence: built-in defaults < YAML file < `FERRY_` environment
    /// variables (`FERRY_HTTP__LISTEN=...` sets `http.listen`; `__` separates levels; see [`env_provider`]), then
    /// validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let content =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_figment(layered(path, content))
    }

    /// Extracts and validates a config from any figment (tests, or callers adding their own layers).
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config = load::extract(&figment)?;
        let problems = validate::problems(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Legal but suspicious settings, for the caller to log (e.g. a flow whose source and target are one cluster).
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        validate::warnings(self)
    }

    /// The region a cluster belongs to: its `region`, or its alias when none is set (or the alias is unknown).
    pub fn region_of<'a>(&'a self, alias: &'a str) -> &'a str {
        self.clusters.get(alias).and_then(|c| c.region.as_deref()).unwrap_or(alias)
    }

    /// The first throttle whose `from` names the source (alias or region) and whose `to` names the target, with
    /// its index in `throttles`.
    pub fn throttle_for(&self, source: &str, target: &str) -> Option<(usize, &ThrottleConfig)> {
        let names = |alias: &str| [alias.to_owned(), self.region_of(alias).to_owned()];
        let (sources, targets) = (names(source), names(target));
        self.throttles
            .iter()
            .enumerate()
            .find(|(_, throttle)| sources.contains(&throttle.from) && targets.contains(&throttle.to))
    }
}

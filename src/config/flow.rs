//! A flow: which topics go from one cluster to another, under which name, with which delivery guarantee.
//!
//! Invariant: after validation a flow's clusters exist, its name is unique and its regexes compile; identity naming
//! never points a cluster at itself.

use serde::Deserialize;

use super::error::{ConfigError, ConfigProblem};
use super::filter::TopicFilter;
use super::units::Duration;

/// One entry of `flows`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Unique name, `[A-Za-z0-9._-]+`; used in metrics labels, checkpoint keys and CLI flags. Required.
    pub name: String,
    /// Alias of the cluster read from. Required.
    pub source: String,
    /// Alias of the cluster written to. Required.
    pub target: String,
    /// Which source topics to replicate. Required.
    pub topics: TopicSelection,
    /// How target topics are named; default `prefix`.
    #[serde(default)]
    pub naming: Naming,
    /// Delivery guarantee; default `at-least-once`.
    #[serde(default)]
    pub delivery: Delivery,
    /// How `delivery: exactly-once` groups tasks into transactions; ignored for at-least-once.
    #[serde(default)]
    pub exactly_once: ExactlyOnce,
    /// Continuous consumer group offset sync into the target; default disabled.
    #[serde(default)]
    pub sync_group_offsets: GroupOffsetSync,
    /// Also write MM2-compatible checkpoint records for MM2 tooling; default `false`.
    #[serde(default)]
    pub emit_mm2_checkpoints: bool,
    /// Cluster `client` properties this flow accepts although they weaken a guarantee (`acks`, ...); default none.
    #[serde(default)]
    pub allow_unsafe_client_properties: Vec<String>,
    /// Mirror the ACLs that allow READ or DESCRIBE on a replicated source topic onto its target topic, as MirrorMaker
    /// 2 does; default `true`.
    #[serde(default = "enabled")]
    pub sync_topic_acls: bool,
    /// Copy record batches as bytes (only the producer fields and CRC of their headers rewritten) instead of record
    /// by record; default `false`. Needs at-least-once delivery, prefix naming and plaintext clusters.
    #[serde(default)]
    pub passthrough: bool,
}

fn enabled() -> bool {
    true
}

impl FlowConfig {
    /// The compiled topic filter (cannot fail for a validated config, but fields are public and may have changed).
    pub fn topic_filter(&self) -> Result<TopicFilter, ConfigError> {
        self.topics.filter().map_err(ConfigError::Invalid)
    }

    /// The transactional id prefix of exactly-once delivery: the configured one, else `ferry-<flow>`.
    pub fn transactional_id_prefix(&self) -> String {
        self.exactly_once.transactional_id_prefix.clone().unwrap_or_else(|| format!("ferry-{}", self.name))
    }

    /// The compiled consumer group filter of `sync_group_offsets`.
    pub fn group_filter(&self) -> Result<TopicFilter, ConfigError> {
        self.sync_group_offsets.filter().map_err(ConfigError::Invalid)
    }
}

/// `flows[].topics`: regexes matched against whole topic names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSelection {
    /// A topic is replicated if it matches one of these; required, at least one.
    pub include: Vec<String>,
    /// ... and none of these; default empty.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl TopicSelection {
    /// Compiles the patterns; problem paths are relative (`topics.include[0]`).
    pub fn filter(&self) -> Result<TopicFilter, Vec<ConfigProblem>> {
        TopicFilter::new("topics", &self.include, &self.exclude)
    }
}

/// Remote topic naming policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Naming {
    /// `<source-alias>.<topic>` (MM2-compatible); already-prefixed topics are never re-replicated, so no loops.
    #[default]
    Prefix,
    /// Same name on the target; loops are prevented by a provenance header.
    Identity,
}

/// Delivery guarantee on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Duplicates possible after a crash, back to the last checkpoint (and counted).
    #[default]
    AtLeastOnce,
    /// Kafka transactions on the target; the source position commits atomically with the records.
    ExactlyOnce,
}

/// `flows[].exactly_once`: the transactional units of an exactly-once flow (docs/adr/0021-exactly-once.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExactlyOnce {
    /// Transactional units per flow: each has one transactional producer and moves between members as a whole;
    /// default 16. Tasks map to a bucket by a stable hash of topic and partition.
    pub buckets: u32,
    /// How often a bucket commits its open transaction (sooner when a task's window is full); default `250ms`.
    /// Read-committed consumers of the target see records only after the commit.
    pub commit_interval: Duration,
    /// Prefix of the transactional ids (`<prefix>-<bucket>`) and the name of the target group that holds the
    /// positions; default `ferry-<flow>`. Two deployments writing one target cluster need different prefixes.
    pub transactional_id_prefix: Option<String>,
}

impl Default for ExactlyOnce {
    fn default() -> Self {
        ExactlyOnce { buckets: 16, commit_interval: Duration::from_millis(250), transactional_id_prefix: None }
    }
}

/// `flows[].sync_group_offsets`: translate committed offsets of source consumer groups into inactive target groups.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupOffsetSync {
    /// Whether to sync; default `false`.
    pub enabled: bool,
    /// Group name regexes (whole-name); default `[".*"]`.
    pub include: Vec<String>,
    /// Group name regexes to skip; default empty.
    pub exclude: Vec<String>,
    /// How often to sync; default `10s`.
    pub interval: Duration,
}

impl GroupOffsetSync {
    /// Compiles the group patterns; problem paths are relative (`sync_group_offsets.include[0]`).
    pub fn filter(&self) -> Result<TopicFilter, Vec<ConfigProblem>> {
        TopicFilter::new("sync_group_offsets", &self.include, &self.exclude)
    }
}

impl Default for GroupOffsetSync {
    fn default() -> Self {
        GroupOffsetSync {
            enabled: false,
            include: vec![".*".to_string()],
            exclude: Vec::new(),
            interval: Duration::from_secs(10),
        }
    }
}

//! Target topics: created with the source's partition count and data-describing configs, and kept in step when
//! the source grows partitions or changes those configs.
//!
//! Invariant: only the configs in [`REPLICATED_CONFIGS`] are copied; any other config set on the target topic
//! (say `min.insync.replicas`, which depends on the target cluster) is preserved.

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::ops::metrics::{Metrics, TopicSyncKind};
use crate::topics::admin::{AdminError, ClusterAdmin, TopicConfigs, TopicInfo};

/// Topic configs that describe the data itself and therefore must be the same on both sides.
pub const REPLICATED_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// A source topic and the target topic it is replicated to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPair {
    /// Source topic name.
    pub source: String,
    /// Target topic name.
    pub target: String,
    /// Source partition count.
    pub partitions: i32,
}

/// One change to the target cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the target topic.
    Create {
        /// Target topic.
        topic: String,
        /// Partition count.
        partitions: i32,
        /// Configs to set.
        configs: TopicConfigs,
    },
    /// Grow the target topic to the source's partition count.
    AddPartitions {
        /// Target topic.
        topic: String,
        /// Current count.
        from: i32,
        /// New count.
        to: i32,
    },
    /// Replace the target topic's dynamic configs.
    ReplaceConfigs {
        /// Target topic.
        topic: String,
        /// The full new set.
        configs: TopicConfigs,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Create { topic, partitions, configs } => {
                write!(f, "create topic {topic} with {partitions} partitions")?;
                if !configs.is_empty() {
                    let configs: Vec<String> = configs.iter().map(|(key, value)| format!("{key}={value}")).collect();
                    write!(f, " and {}", configs.join(", "))?;
                }
                Ok(())
            }
            Action::AddPartitions { topic, from, to } => write!(f, "grow topic {topic} from {from} to {to} partitions"),
            Action::ReplaceConfigs { topic, configs } => {
                let configs: Vec<String> = configs.iter().map(|(key, value)| format!("{key}={value}")).collect();
                write!(f, "set configs of topic {topic} to [{}]", configs.join(", "))
            }
        }
    }
}

/// The configs only the source may decide.
fn replicated(configs: &TopicConfigs) -> TopicConfigs {
    configs
        .iter()
        .filter(|(key, _)| REPLICATED_CONFIGS.contains(&key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What must change on the target so every pair's target topic matches its source. Pure: the inputs are what
/// the two clusters reported.
pub fn plan(
    pairs: &[TopicPair],
    source_configs: &BTreeMap<String, TopicConfigs>,
    target_topics: &BTreeMap<String, TopicInfo>,
    target_configs: &BTreeMap<String, TopicConfigs>,
) -> Vec<Action> {
    let empty = TopicConfigs::new();
    let mut actions = Vec::new();
    for pair in pairs {
        let wanted = replicated(source_configs.get(&pair.source).unwrap_or(&empty));
        match target_topics.get(&pair.target) {
            None => actions.push(Action::Create {
                topic: pair.target.clone(),
                partitions: pair.partitions,
                configs: wanted,
            }),
            Some(existing) => {
                if existing.partitions < pair.partitions {
                    actions.push(Action::AddPartitions {
                        topic: pair.target.clone(),
                        from: existing.partitions,
                        to: pair.partitions,
                    });
                }
                let current = target_configs.get(&pair.target).unwrap_or(&empty);
                let mut desired: TopicConfigs = current
                    .iter()
                    .filter(|(key, _)| !REPLICATED_CONFIGS.contains(&key.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                desired.extend(wanted);
                if desired != *current {
                    actions.push(Action::ReplaceConfigs { topic: pair.target.clone(), configs: desired });
                }
            }
        }
    }
    actions
}

/// Asks both clusters what they hold and plans what must change on the target (nothing is changed).
pub async fn plan_against(
    source: &ClusterAdmin,
    target: &ClusterAdmin,
    pairs: &[TopicPair],
) -> Result<Vec<Action>, AdminError> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let source_names: Vec<&str> = pairs.iter().map(|pair| pair.source.as_str()).collect();
    let source_configs = source.topic_configs(&source_names).await?;
    let target_topics = target.topics().await?;
    let existing: Vec<&str> =
        pairs.iter().map(|pair| pair.target.as_str()).filter(|topic| target_topics.contains_key(*topic)).collect();
    let target_configs = target.topic_configs(&existing).await?;
    Ok(plan(pairs, &source_configs, &target_topics, &target_configs))
}

/// Brings every pair's target topic in step with its source. Returns the source topics whose target topic is
/// ready for their tasks; a topic whose change failed is logged and left out until the next attempt.
pub async fn sync(
    flow: &str,
    source: &ClusterAdmin,
    target: &ClusterAdmin,
    pairs: &[TopicPair],
    metrics: &Metrics,
) -> Result<Vec<String>, AdminError> {
    let mut failed = std::collections::BTreeSet::new();
    for action in plan_against(source, target, pairs).await? {
        let (result, topic, kind) = match &action {
            Action::Create { topic, partitions, configs } => {
                (target.create_topic(topic, *partitions, configs).await, topic, TopicSyncKind::Create)
            }
            Action::AddPartitions { topic, to, .. } => {
                (target.create_partitions(topic, *to).await, topic, TopicSyncKind::AddPartitions)
            }
            Action::ReplaceConfigs { topic, configs } => {
                (target.replace_topic_configs(topic, configs).await, topic, TopicSyncKind::AlterConfigs)
            }
        };
        match result {
            Ok(()) => {
                metrics.topic_syncs_of(flow, kind).inc();
                info!(flow, cluster = target.alias(), "{action}");
            }
            Err(error) => {
                warn!(flow, cluster = target.alias(), %error, "cannot {action}; retrying at the next discovery");
                // A config mismatch does not stop replication; a missing topic or partition does.
                if kind != TopicSyncKind::AlterConfigs {
                    failed.insert(topic.clone());
                }
            }
        }
    }
    Ok(pairs.iter().filter(|pair| !failed.contains(&pair.target)).map(|pair| pair.source.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(entries: &[(&str, &str)]) -> TopicConfigs {
        entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn pair(source: &str, partitions: i32) -> TopicPair {
        TopicPair { source: source.into(), target: format!("a.{source}"), partitions }
    }

    #[test]
    fn missing_topics_are_created_with_replicated_configs_only() {
        let source = BTreeMap::from([(
            "orders".to_owned(),
            configs(&[("cleanup.policy", "compact"), ("min.insync.replicas", "2"), ("retention.ms", "1000")]),
        )]);
        let actions = plan(&[pair("orders", 4)], &source, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            actions,
            vec![Action::Create {
                topic: "a.orders".into(),
                partitions: 4,
                configs: configs(&[("cleanup.policy", "compact"), ("retention.ms", "1000")])
            }]
        );
    }

    #[test]
    fn partition_growth_and_config_changes_are_followed_and_target_only_configs_kept() {
        let source = BTreeMap::from([("orders".to_owned(), configs(&[("retention.ms", "2000")]))]);
        let target_topics = BTreeMap::from([("a.orders".to_owned(), TopicInfo { partitions: 2 })]);
        let target = BTreeMap::from([(
            "a.orders".to_owned(),
            configs(&[("retention.ms", "1000"), ("cleanup.policy", "compact"), ("min.insync.replicas", "2")]),
        )]);
        let actions = plan(&[pair("orders", 4)], &source, &target_topics, &target);
        assert_eq!(
            actions,
            vec![
                Action::AddPartitions { topic: "a.orders".into(), from: 2, to: 4 },
                Action::ReplaceConfigs {
                    topic: "a.orders".into(),
                    configs: configs(&[("min.insync.replicas", "2"), ("retention.ms", "2000")])
                },
            ]
        );
    }

    #[test]
    fn a_topic_in_step_needs_nothing() {
        let source = BTreeMap::from([("orders".to_owned(), configs(&[("retention.ms", "2000")]))]);
        let target_topics = BTreeMap::from([("a.orders".to_owned(), TopicInfo { partitions: 6 })]);
        let target = BTreeMap::from([("a.orders".to_owned(), configs(&[("retention.ms", "2000")]))]);
        assert!(plan(&[pair("orders", 4)], &source, &target_topics, &target).is_empty());
    }
}

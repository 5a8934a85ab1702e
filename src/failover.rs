//! Consumer failover: a group's committed offsets on the source, translated with the flow's checkpoints, and
//! committed for the same group on the target under the remote topic names.
//!
//! Invariant: offsets are committed on the target only while the group has no active member there (unless
//! forced), so a running consumer never has its position moved underneath it.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::checkpoint::{CheckpointStore, FileStore, StoreError};
use crate::config::{Config, ConfigError, ConfigProblem, FlowConfig};
use crate::kafka::{client_config, ClientError, ClusterContext, Role, REQUEST_TIMEOUT};
use crate::metrics::Metrics;
use crate::naming::TopicNaming;
use crate::translate::{translate, TranslateError};

/// Errors of translation and failover.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// The flow name is not in the config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The checkpoint store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A request to a cluster failed.
    #[error("cannot {what} for group {group} on cluster {cluster}: {source}")]
    Kafka {
        /// What was asked.
        what: &'static str,
        /// Group id.
        group: String,
        /// Cluster alias.
        cluster: String,
        /// librdkafka's error.
        source: Box<KafkaError>,
    },
    /// An admin client could not be built or used.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// The group still has consumers on the target.
    #[error("group {group} has {members} active member(s) on cluster {cluster}; stop them first or pass --force")]
    ActiveMembers {
        /// Group id.
        group: String,
        /// Target cluster alias.
        cluster: String,
        /// Number of members.
        members: usize,
    },
}

/// A group's translated offsets, and whether they come from the last sync instead of the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupTranslation {
    /// Per partition, sorted by topic and partition.
    pub rows: Vec<PartitionOffsets>,
    /// When the offsets were synced, if the source could not be asked and the stored sync was used.
    pub synced_at_ms: Option<i64>,
}

/// One partition of a failover: where the group is on the source and where it resumes on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionOffsets {
    /// Source topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset on the source.
    pub source_offset: i64,
    /// Target topic.
    pub target_topic: String,
    /// Translated target offset, when it could be translated.
    pub target_offset: Option<i64>,
    /// Source records before the committed offset that the target does not have yet.
    pub not_yet_replicated: i64,
    /// Records the group may see again (thinned-out sync points), at most.
    pub may_redeliver: i64,
    /// Why there is no translation, if there is none.
    pub note: Option<String>,
}

impl FailoverError {
    /// A failed request about `group` to cluster `cluster`.
    pub(crate) fn kafka(what: &'static str, group: &str, cluster: &str, source: KafkaError) -> Self {
        FailoverError::Kafka { what, group: group.to_owned(), cluster: cluster.to_owned(), source: Box::new(source) }
    }
}

fn flow<'a>(config: &'a Config, name: &str) -> Result<&'a FlowConfig, ConfigError> {
    config.flows.iter().find(|flow| flow.name == name).ok_or_else(|| {
        let known: Vec<&str> = config.flows.iter().map(|flow| flow.name.as_str()).collect();
        ConfigError::Invalid(vec![ConfigProblem::new(
            "--flow",
            format!("unknown flow \"{name}\" (known: {})", known.join(", ")),
        )])
    })
}

/// A client that reads and commits `group`'s offsets on cluster `alias` without joining the group; its errors are
/// counted in `metrics`.
pub(crate) fn group_client(
    config: &Config,
    alias: &str,
    group: &str,
    metrics: &Metrics,
) -> Result<BaseConsumer<ClusterContext>, FailoverError> {
    let mut client = client_config(alias, &config.clusters[alias], Role::Admin)?;
    client.set("group.id", group).set("enable.auto.commit", "false");
    Ok(client
        .create_with_context(ClusterContext::new(alias, metrics))
        .map_err(|source| ClientError::Create { cluster: alias.to_owned(), source })?)
}

/// How many members `group` has on the cluster `client` talks to.
pub(crate) fn active_members(
    client: &BaseConsumer<ClusterContext>,
    group: &str,
    cluster: &str,
) -> Result<usize, FailoverError> {
    let groups = client
        .fetch_group_list(Some(group), REQUEST_TIMEOUT)
        .map_err(|e| FailoverError::kafka("describe the group", group, cluster, e))?;
    Ok(groups.groups().iter().map(|g| g.members().len()).sum())
}

/// Translates the committed source offsets of `group` for every partition the flow replicates.
pub async fn translate_group(config: &Config, flow_name: &str, group: &str) -> Result<GroupTranslation, FailoverError> {
    let flow = flow(config, flow_name)?;
    let store: Box<dyn CheckpointStore> = Box::new(FileStore::open(&config.checkpoint.path)?);
    let checkpoints = store.load(&flow.name).await?;
    let naming = TopicNaming::new(flow.naming, &flow.source, config.clusters.keys().cloned());
    let mut wanted = TopicPartitionList::new();
    for key in checkpoints.keys() {
        wanted.add_partition(&key.topic, key.partition);
    }
    // A one-shot command: its client errors are logged; there is no scrape to count them for.
    let source = group_client(config, &flow.source, group, &Metrics::new(false))?;
    let committed = match tokio::task::block_in_place(|| source.committed_offsets(wanted, REQUEST_TIMEOUT)) {
        Ok(committed) => committed,
        // The real disaster: the source is gone. The continuous sync kept the group's last translation.
        Err(error) => return synced_translation(store.as_ref(), flow, group, &naming, error).await,
    };
    let mut rows = Vec::new();
    for element in committed.elements() {
        let Offset::Offset(source_offset) = element.offset() else { continue };
        let key = crate::checkpoint::TaskKey { topic: element.topic().to_owned(), partition: element.partition() };
        let position = &checkpoints[&key].position;
        let (target_offset, not_yet_replicated, may_redeliver, note) = match translate(position, source_offset) {
            Ok(translation) => {
                (Some(translation.target_offset), translation.not_yet_replicated, translation.may_redeliver, None)
            }
            Err(error @ TranslateError::BeforeHistory { .. }) | Err(error @ TranslateError::NothingReplicated) => {
                (None, 0, 0, Some(error.to_string()))
            }
        };
        rows.push(PartitionOffsets {
            topic: key.topic.clone(),
            partition: key.partition,
            source_offset,
            target_topic: naming.remote_topic(&key.topic),
            target_offset,
            not_yet_replicated,
            may_redeliver,
            note,
        });
    }
    // Drop the partition list before the consumer: librdkafka can hang on shutdown otherwise.
    drop(committed);
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(GroupTranslation { rows, synced_at_ms: None })
}

/// The group's offsets as the continuous sync last stored them, when the source cannot be asked.
async fn synced_translation(
    store: &dyn CheckpointStore,
    flow: &FlowConfig,
    group: &str,
    naming: &TopicNaming,
    source_error: KafkaError,
) -> Result<GroupTranslation, FailoverError> {
    let Some(synced) = store.load_group_offsets(&flow.name).await?.remove(group) else {
        return Err(FailoverError::kafka(
            "read committed offsets (and no synced offsets are stored)",
            group,
            &flow.source,
            source_error,
        ));
    };
    let mut rows: Vec<PartitionOffsets> = synced
        .partitions
        .into_iter()
        .map(|offset| PartitionOffsets {
            target_topic: naming.remote_topic(&offset.topic),
            topic: offset.topic,
            partition: offset.partition,
            source_offset: offset.source_offset,
            target_offset: Some(offset.target_offset),
            not_yet_replicated: offset.not_yet_replicated,
            may_redeliver: offset.may_redeliver,
            note: None,
        })
        .collect();
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(GroupTranslation { rows, synced_at_ms: Some(synced.synced_at_ms) })
}

/// Commits the translated offsets for `group` on the flow's target cluster.
pub fn commit_on_target(
    config: &Config,
    flow_name: &str,
    group: &str,
    rows: &[PartitionOffsets],
    force: bool,
) -> Result<usize, FailoverError> {
    let flow = flow(config, flow_name)?;
    let target = group_client(config, &flow.target, group, &Metrics::new(false))?;
    let kafka_error = |what| move |source| FailoverError::kafka(what, group, &flow.target, source);
    let members = active_members(&target, group, &flow.target)?;
    if members > 0 && !force {
        return Err(FailoverError::ActiveMembers { group: group.to_owned(), cluster: flow.target.clone(), members });
    }
    let mut offsets = TopicPartitionList::new();
    for row in rows {
        if let Some(target_offset) = row.target_offset {
            offsets
                .add_partition_offset(&row.target_topic, row.partition, Offset::Offset(target_offset))
                .map_err(kafka_error("prepare offsets"))?;
        }
    }
    let count = offsets.count();
    if count > 0 {
        target.commit(&offsets, CommitMode::Sync).map_err(kafka_error("commit offsets"))?;
    }
    drop(offsets);
    // Give librdkafka a moment to finish the commit's bookkeeping before the client is dropped.
    std::thread::sleep(Duration::from_millis(10));
    Ok(count)
}

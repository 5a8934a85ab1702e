//! Consumer failover and failback. Failover: a group's committed offsets on the source, translated with the flow's
//! checkpoints, committed for the same group on the target under the remote topic names. Failback: the group's
//! offsets on those remote topics translated back and committed on the source under the original names, together
//! with its offsets on topics that originated on the target, translated forward through the reverse flow.
//!
//! Invariant: offsets are committed on a cluster only while the group has no active member there (unless
//! forced), so a running consumer never has its position moved underneath it; and the checkpoint store is only
//! read (a one-shot command changes nothing in it).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::checkpoint::{self, Access, Checkpoint, CheckpointStore, StoreError, SyncedOffset, TaskKey};
use crate::config::{Config, ConfigError, ConfigProblem, FlowConfig};
use crate::offsets::group::{GroupClient, GroupError, Offsets};
use crate::offsets::translate::{translate, translate_back, TranslateError};
use crate::ops::metrics::Metrics;
use crate::replication::progress::Position;
use crate::topics::naming::TopicNaming;

/// Errors of translation and failover.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// The flow name is not in the config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The checkpoint store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A group client could not be built, or a request about the group failed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The source cluster did not answer and no synced offsets of the group are stored to fall back on.
    #[error("{source} (and no offsets of group {group} synced by ferry are stored to use instead)")]
    SourceUnreachable {
        /// Group id.
        group: String,
        /// Why the source did not answer.
        source: Box<GroupError>,
    },
    /// A producer or admin client could not be built.
    #[error(transparent)]
    Client(#[from] crate::kafka::ClientError),
    /// An admin client could not be built or used.
    #[error(transparent)]
    Admin(#[from] crate::topics::admin::AdminError),
    /// The group still has consumers on the cluster its offsets would be committed on.
    #[error("group {group} has {members} active member(s) on cluster {cluster}; stop them first or pass --force")]
    ActiveMembers {
        /// Group id.
        group: String,
        /// Cluster alias.
        cluster: String,
        /// Number of members.
        members: usize,
    },
    /// The store holds no checkpoint of the flow: nothing can be translated.
    #[error(
        "no checkpoints of flow {flow} in {location}: ferry has not replicated this flow with this checkpoint store \
         (is checkpoint.store the one the running members use?)"
    )]
    NoCheckpoints {
        /// Flow name.
        flow: String,
        /// The store that was read.
        location: String,
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

/// One partition of a flow's task: the group's offset on the source and on the target, one of them committed and
/// the other translated from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionOffsets {
    /// Source topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's offset on the source: committed there (failover), or translated back (failback).
    pub source_offset: Option<i64>,
    /// Target topic.
    pub target_topic: String,
    /// The group's offset on the target: translated (failover), or committed there (failback).
    pub target_offset: Option<i64>,
    /// Source records before the committed offset that the target does not have yet.
    pub not_yet_replicated: i64,
    /// Records the group may see again (thinned-out sync points), at most.
    pub may_redeliver: i64,
    /// Why there is no translation, if there is none.
    pub note: Option<String>,
}

/// A group's failback: its offsets on the flow's remote topics translated back to the source topics, and its
/// offsets on topics that originated on the target translated forward through each reverse flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailbackPlan {
    /// Through the flow, backwards: `source_offset` is what is committed on the source.
    pub back: Vec<PartitionOffsets>,
    /// Through the reverse flows (target -> source), by flow name: `target_offset` is what is committed on the
    /// source cluster, under `target_topic`.
    pub reverse: Vec<(String, Vec<PartitionOffsets>)>,
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

/// The flow's checkpoints, read-only from the configured store; refused when there are none.
async fn load_checkpoints(
    config: &Config,
    store: &dyn CheckpointStore,
    flow: &FlowConfig,
) -> Result<BTreeMap<TaskKey, Checkpoint>, FailoverError> {
    let checkpoints = store.load(&flow.name).await?;
    if checkpoints.is_empty() {
        return Err(FailoverError::NoCheckpoints {
            flow: flow.name.clone(),
            location: checkpoint::location(&config.checkpoint),
        });
    }
    Ok(checkpoints)
}

/// The store the config names, opened read-only.
async fn read_only_store(config: &Config) -> Result<std::sync::Arc<dyn CheckpointStore>, FailoverError> {
    // A one-shot command: its etcd requests are not scraped by anyone.
    Ok(checkpoint::open(&config.checkpoint, Access::ReadOnly, &Metrics::new(false)).await?.store)
}

/// Translates a group's `committed` source offsets (by source topic-partition) with the tasks' `positions`: the
/// one translate-a-group path of `translate`, `failover`, failback's reverse flows and the continuous group sync.
/// Sorted by topic and partition; a partition the group has no offset for is left out.
pub fn translate_committed<'a>(
    positions: impl IntoIterator<Item = (&'a TaskKey, &'a Position)>,
    naming: &TopicNaming,
    committed: &Offsets,
) -> Vec<PartitionOffsets> {
    let mut rows = Vec::new();
    for (key, position) in positions {
        let Some(&source_offset) = committed.get(&(key.topic.clone(), key.partition)) else { continue };
        let (target_offset, not_yet_replicated, may_redeliver, note) = match translate(position, source_offset) {
            Ok(translation) => {
                // The rule already maps an offset inside a lost range to the first record after it; say why.
                let note = position.lost_range_of(source_offset).map(|range| {
                    format!(
                        "source offsets {}..={} were deleted by the source before ferry copied them; {} from this \
                         offset on are not on the target",
                        range.first,
                        range.last,
                        range.last - source_offset + 1
                    )
                });
                (Some(translation.target_offset), translation.not_yet_replicated, translation.may_redeliver, note)
            }
            Err(error @ (TranslateError::BeforeHistory { .. } | TranslateError::NothingReplicated)) => {
                (None, 0, 0, Some(error.to_string()))
            }
        };
        rows.push(PartitionOffsets {
            topic: key.topic.clone(),
            partition: key.partition,
            source_offset: Some(source_offset),
            target_topic: naming.remote_topic(&key.topic),
            target_offset,
            not_yet_replicated,
            may_redeliver,
            note,
        });
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    rows
}

fn positions(checkpoints: &BTreeMap<TaskKey, Checkpoint>) -> impl Iterator<Item = (&TaskKey, &Position)> {
    checkpoints.iter().map(|(key, checkpoint)| (key, &checkpoint.position))
}

impl PartitionOffsets {
    /// The row as the group sync stores it; `None` when it has no translation.
    pub fn synced(&self) -> Option<SyncedOffset> {
        Some(SyncedOffset {
            topic: self.topic.clone(),
            partition: self.partition,
            source_offset: self.source_offset?,
            target_offset: self.target_offset?,
            not_yet_replicated: self.not_yet_replicated,
            may_redeliver: self.may_redeliver,
        })
    }

    /// A stored row of the group sync, shown as a translation.
    pub fn from_synced(offset: SyncedOffset, naming: &TopicNaming) -> Self {
        PartitionOffsets {
            target_topic: naming.remote_topic(&offset.topic),
            topic: offset.topic,
            partition: offset.partition,
            source_offset: Some(offset.source_offset),
            target_offset: Some(offset.target_offset),
            not_yet_replicated: offset.not_yet_replicated,
            may_redeliver: offset.may_redeliver,
            note: None,
        }
    }
}

/// Translates the committed source offsets of `group` for every partition the flow replicates.
pub async fn translate_group(config: &Config, flow_name: &str, group: &str) -> Result<GroupTranslation, FailoverError> {
    let flow = flow(config, flow_name)?;
    let store = read_only_store(config).await?;
    let checkpoints = load_checkpoints(config, store.as_ref(), flow).await?;
    let naming = TopicNaming::for_flow(config, flow);
    // A one-shot command: its client errors are logged; there is no scrape to count them for.
    let source = GroupClient::new(config, &flow.source, group, &Metrics::new(false))?;
    let committed = match source.committed(checkpoints.keys().map(|key| (key.topic.clone(), key.partition))) {
        Ok(committed) => committed,
        // The real disaster: the source is gone. The continuous sync kept the group's last translation.
        Err(error) => return synced_translation(store.as_ref(), flow, group, &naming, error).await,
    };
    Ok(GroupTranslation { rows: translate_committed(positions(&checkpoints), &naming, &committed), synced_at_ms: None })
}

/// The group's offsets as the continuous sync last stored them, when the source cannot be asked.
async fn synced_translation(
    store: &dyn CheckpointStore,
    flow: &FlowConfig,
    group: &str,
    naming: &TopicNaming,
    source_error: GroupError,
) -> Result<GroupTranslation, FailoverError> {
    let Some(synced) = store.load_group_offsets(&flow.name).await?.remove(group) else {
        return Err(FailoverError::SourceUnreachable { group: group.to_owned(), source: Box::new(source_error) });
    };
    let mut rows: Vec<PartitionOffsets> =
        synced.partitions.into_iter().map(|offset| PartitionOffsets::from_synced(offset, naming)).collect();
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(GroupTranslation { rows, synced_at_ms: Some(synced.synced_at_ms) })
}

/// Translates `group`'s committed offsets on the target back to the source: the flow's remote topics through its
/// checkpoints, and the target's own topics forward through every reverse flow of the config.
pub async fn failback_plan(config: &Config, flow_name: &str, group: &str) -> Result<FailbackPlan, FailoverError> {
    let flow = flow(config, flow_name)?;
    let store = read_only_store(config).await?;
    let checkpoints = load_checkpoints(config, store.as_ref(), flow).await?;
    let naming = TopicNaming::for_flow(config, flow);
    let target = GroupClient::new(config, &flow.target, group, &Metrics::new(false))?;
    let remote = |key: &TaskKey| (naming.remote_topic(&key.topic), key.partition);
    let committed = target.committed(checkpoints.keys().map(remote))?;
    let mut back = Vec::new();
    for (key, checkpoint) in &checkpoints {
        let (target_topic, partition) = remote(key);
        let Some(&target_offset) = committed.get(&(target_topic.clone(), partition)) else { continue };
        let (source_offset, may_redeliver, note) = match translate_back(&checkpoint.position, target_offset) {
            Ok(back) => (Some(back.source_offset), back.may_redeliver, None),
            Err(error @ (TranslateError::BeforeHistory { .. } | TranslateError::NothingReplicated)) => {
                (None, 0, Some(error.to_string()))
            }
        };
        back.push(PartitionOffsets {
            topic: key.topic.clone(),
            partition,
            source_offset,
            target_topic,
            target_offset: Some(target_offset),
            not_yet_replicated: 0,
            may_redeliver,
            note,
        });
    }
    let mut reverse = Vec::new();
    for reverse_flow in config.flows.iter().filter(|f| f.source == flow.target && f.target == flow.source) {
        let checkpoints = store.load(&reverse_flow.name).await?;
        let naming = TopicNaming::for_flow(config, reverse_flow);
        let committed = target.committed(checkpoints.keys().map(|key| (key.topic.clone(), key.partition)))?;
        let rows = translate_committed(positions(&checkpoints), &naming, &committed);
        if !rows.is_empty() {
            reverse.push((reverse_flow.name.clone(), rows));
        }
    }
    Ok(FailbackPlan { back, reverse })
}

/// Commits `offsets` for `group` on cluster `alias`, refusing while the group has active members there unless
/// `force`; returns how many were committed.
fn commit_offsets(
    config: &Config,
    alias: &str,
    group: &str,
    offsets: &Offsets,
    force: bool,
) -> Result<usize, FailoverError> {
    let client = GroupClient::new(config, alias, group, &Metrics::new(false))?;
    let members = client.active_members()?;
    if members > 0 && !force {
        return Err(FailoverError::ActiveMembers { group: group.to_owned(), cluster: alias.to_owned(), members });
    }
    Ok(client.commit(offsets)?)
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
    let offsets: Offsets =
        rows.iter().filter_map(|row| Some(((row.target_topic.clone(), row.partition), row.target_offset?))).collect();
    commit_offsets(config, &flow.target, group, &offsets, force)
}

/// Commits a failback for `group` on the flow's source cluster: the original topics at their translated source
/// offsets, and the reverse flows' remote topics at their translated target offsets.
pub fn commit_failback(
    config: &Config,
    flow_name: &str,
    group: &str,
    plan: &FailbackPlan,
    force: bool,
) -> Result<usize, FailoverError> {
    let flow = flow(config, flow_name)?;
    let back = plan.back.iter().filter_map(|row| Some(((row.topic.clone(), row.partition), row.source_offset?)));
    let reverse = plan
        .reverse
        .iter()
        .flat_map(|(_, rows)| rows)
        .filter_map(|row| Some(((row.target_topic.clone(), row.partition), row.target_offset?)));
    let offsets: Offsets = back.chain(reverse).collect();
    commit_offsets(config, &flow.source, group, &offsets, force)
}

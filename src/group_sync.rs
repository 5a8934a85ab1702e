//! Continuous consumer group offset sync: each interval, the source groups' committed offsets are translated with
//! the tasks' live positions, stored (so failover works with the source gone) and committed into the same groups on
//! the target while they have no active members there.
//!
//! Invariant: a target group is never moved backwards unless the source group itself rewound, and never while it
//! has members on the target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::{now_ms, CheckpointStore, GroupOffsets, SyncedOffset};
use crate::config::{Config, FlowConfig, TopicFilter};
use crate::failover::group_client;
use crate::kafka::{ClusterContext, REQUEST_TIMEOUT};
use crate::naming::TopicNaming;
use crate::progress::Registry;
use crate::translate::translate;

/// Group names that are never synced: tooling and replicators (MirrorMaker 2 skips the same).
fn is_tooling_group(group: &str) -> bool {
    group.starts_with("console-consumer-")
        || group.starts_with("connect-")
        || group.starts_with("__")
        || group.starts_with("ferry-")
}

/// Syncs the consumer groups of one flow.
pub struct GroupSync {
    config: Arc<Config>,
    flow: FlowConfig,
    filter: TopicFilter,
    naming: TopicNaming,
    registry: Arc<Registry>,
    store: Arc<dyn CheckpointStore>,
    /// Source offsets synced last time, to tell a source rewind from a stale target.
    last_source: BTreeMap<(String, String, i32), i64>,
}

impl GroupSync {
    /// A sync for `flow`, whose group filter was validated with the config.
    pub fn new(
        config: Arc<Config>,
        flow: FlowConfig,
        registry: Arc<Registry>,
        store: Arc<dyn CheckpointStore>,
    ) -> Result<Self, crate::config::ConfigError> {
        let filter = flow.group_filter()?;
        let naming = TopicNaming::new(flow.naming, &flow.source, config.clusters.keys().cloned());
        Ok(Self { config, flow, filter, naming, registry, store, last_source: BTreeMap::new() })
    }

    /// Syncs every `interval` until `shutdown`.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.sync_once().await {
                warn!(flow = self.flow.name.as_str(), %error, "group offset sync failed; retrying next interval");
            }
        }
    }

    async fn sync_once(&mut self) -> Result<(), crate::failover::FailoverError> {
        // The group list is not Send: read the names out of it before anything awaits.
        let names: Vec<String> = {
            let source = group_client(&self.config, &self.flow.source, "ferry-group-sync")?;
            let groups = tokio::task::block_in_place(|| source.fetch_group_list(None, REQUEST_TIMEOUT))
                .map_err(|e| kafka_error("list groups", "*", &self.flow.source, e))?;
            groups
                .groups()
                .iter()
                .map(|group| group.name().to_owned())
                .filter(|name| !is_tooling_group(name) && self.filter.matches(name))
                .collect()
        };
        for group in names {
            self.sync_group(&group).await?;
        }
        Ok(())
    }

    async fn sync_group(&mut self, group: &str) -> Result<(), crate::failover::FailoverError> {
        let tasks: Vec<_> =
            self.registry.snapshot().into_iter().filter(|(id, _)| *id.flow == *self.flow.name).collect();
        if tasks.is_empty() {
            return Ok(());
        }
        let mut wanted = TopicPartitionList::new();
        for (id, _) in &tasks {
            wanted.add_partition(&id.topic, id.partition);
        }
        let source = group_client(&self.config, &self.flow.source, group)?;
        let committed = tokio::task::block_in_place(|| source.committed_offsets(wanted, REQUEST_TIMEOUT))
            .map_err(|e| kafka_error("read committed offsets", group, &self.flow.source, e))?;
        let mut partitions = Vec::new();
        for (id, progress) in &tasks {
            let Some(element) = committed.find_partition(&id.topic, id.partition) else { continue };
            let Offset::Offset(source_offset) = element.offset() else { continue };
            let Ok(translation) = translate(&progress.position(), source_offset) else { continue };
            partitions.push(SyncedOffset {
                topic: id.topic.to_string(),
                partition: id.partition,
                source_offset,
                target_offset: translation.target_offset,
                not_yet_replicated: translation.not_yet_replicated,
            });
        }
        drop(committed);
        if partitions.is_empty() {
            return Ok(());
        }
        let synced = GroupOffsets { synced_at_ms: now_ms(), partitions };
        if let Err(error) = self.store.save_group_offsets(&self.flow.name, group, &synced).await {
            warn!(flow = self.flow.name.as_str(), group, %error, "cannot store synced group offsets");
        }
        self.commit_on_target(group, &synced)
    }

    fn commit_on_target(&mut self, group: &str, synced: &GroupOffsets) -> Result<(), crate::failover::FailoverError> {
        let target = group_client(&self.config, &self.flow.target, group)?;
        let members = target
            .fetch_group_list(Some(group), REQUEST_TIMEOUT)
            .map_err(|e| kafka_error("describe the group", group, &self.flow.target, e))?
            .groups()
            .iter()
            .map(|g| g.members().len())
            .sum::<usize>();
        if members > 0 {
            debug!(flow = self.flow.name.as_str(), group, members, "group active on the target; not synced");
            return Ok(());
        }
        let current = target_committed(&target, &self.naming, synced)
            .map_err(|e| kafka_error("read committed offsets", group, &self.flow.target, e))?;
        let mut commit = TopicPartitionList::new();
        for offset in &synced.partitions {
            let target_topic = self.naming.remote_topic(&offset.topic);
            let key = (group.to_owned(), offset.topic.clone(), offset.partition);
            let rewound = self.last_source.get(&key).is_some_and(|last| offset.source_offset < *last);
            let behind =
                current.get(&(target_topic.clone(), offset.partition)).is_none_or(|now| *now < offset.target_offset);
            if behind || rewound {
                commit
                    .add_partition_offset(&target_topic, offset.partition, Offset::Offset(offset.target_offset))
                    .map_err(|e| kafka_error("prepare offsets", group, &self.flow.target, e))?;
            }
            self.last_source.insert(key, offset.source_offset);
        }
        if commit.count() > 0 {
            target
                .commit(&commit, CommitMode::Sync)
                .map_err(|e| kafka_error("commit offsets", group, &self.flow.target, e))?;
            info!(
                flow = self.flow.name.as_str(),
                group,
                partitions = commit.count(),
                "synced group offsets to the target"
            );
        }
        Ok(())
    }
}

/// The group's committed offsets on the target for the synced partitions.
fn target_committed(
    target: &BaseConsumer<ClusterContext>,
    naming: &TopicNaming,
    synced: &GroupOffsets,
) -> Result<BTreeMap<(String, i32), i64>, rdkafka::error::KafkaError> {
    let mut wanted = TopicPartitionList::new();
    for offset in &synced.partitions {
        wanted.add_partition(&naming.remote_topic(&offset.topic), offset.partition);
    }
    let committed = target.committed_offsets(wanted, REQUEST_TIMEOUT)?;
    let current = committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some(((element.topic().to_owned(), element.partition()), offset)),
            _ => None,
        })
        .collect();
    drop(committed);
    Ok(current)
}

fn kafka_error(
    what: &'static str,
    group: &str,
    cluster: &str,
    source: rdkafka::error::KafkaError,
) -> crate::failover::FailoverError {
    crate::failover::FailoverError::Kafka {
        what,
        group: group.to_owned(),
        cluster: cluster.to_owned(),
        source: Box::new(source),
    }
}

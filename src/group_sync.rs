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
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin::ClusterAdmin;
use crate::checkpoint::{now_ms, CheckpointStore, GroupOffsets, SyncedOffset};
use crate::config::{Config, FlowConfig, TopicFilter};
use crate::failover::{active_members, group_client, FailoverError};
use crate::kafka::{ClusterContext, REQUEST_TIMEOUT};
use crate::metrics::Metrics;
use crate::naming::TopicNaming;
use crate::progress::Registry;
use crate::target::{AckSink, TargetProducer, TargetRecord};
use crate::translate::translate;

/// MirrorMaker 2's checkpoint record for one group partition (its `Checkpoint` class, format version 0): the key
/// is (group, topic, partition), the value (version, upstream offset, downstream offset, metadata), in Kafka's
/// protocol encoding (big-endian integers, strings with an int16 length). `topic` is the target topic name.
pub fn mm2_checkpoint_record(
    group: &str,
    topic: &str,
    partition: i32,
    upstream: i64,
    downstream: i64,
) -> (Vec<u8>, Vec<u8>) {
    fn string(out: &mut Vec<u8>, value: &str) {
        let length = i16::try_from(value.len()).unwrap_or(i16::MAX);
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&value.as_bytes()[..length as usize]);
    }
    let mut key = Vec::with_capacity(8 + group.len() + topic.len());
    string(&mut key, group);
    string(&mut key, topic);
    key.extend_from_slice(&partition.to_be_bytes());
    let mut value = Vec::with_capacity(20);
    value.extend_from_slice(&0_i16.to_be_bytes());
    value.extend_from_slice(&upstream.to_be_bytes());
    value.extend_from_slice(&downstream.to_be_bytes());
    string(&mut value, "");
    (key, value)
}

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
    /// Producer and admin client for MM2-compatible checkpoints, when the flow emits them.
    mm2: Option<Mm2Checkpoints>,
    /// The member's metrics, where the group clients count their errors.
    metrics: Metrics,
    /// Read task positions from the checkpoint store each round instead of this member's registry: with many
    /// members the controller runs the sync and owns only some of the tasks.
    positions_from_store: bool,
}

/// Writes MM2-compatible checkpoint records to `<source alias>.checkpoints.internal` on the target.
struct Mm2Checkpoints {
    topic: String,
    producer: TargetProducer,
    admin: ClusterAdmin,
    topic_ready: bool,
}

impl GroupSync {
    /// A sync for `flow`, whose group filter was validated with the config.
    pub fn new(
        config: Arc<Config>,
        flow: FlowConfig,
        registry: Arc<Registry>,
        store: Arc<dyn CheckpointStore>,
        metrics: Metrics,
    ) -> Result<Self, FailoverError> {
        let filter = flow.group_filter()?;
        let naming = TopicNaming::new(flow.naming, &flow.source, config.clusters.keys().cloned());
        let mm2 = if flow.emit_mm2_checkpoints {
            let target = &config.clusters[&flow.target];
            Some(Mm2Checkpoints {
                topic: format!("{}.checkpoints.internal", flow.source),
                producer: TargetProducer::new(&flow.target, target, &metrics)?,
                admin: ClusterAdmin::new(&flow.target, target, &metrics)?,
                topic_ready: false,
            })
        } else {
            None
        };
        Ok(Self {
            config,
            flow,
            filter,
            naming,
            registry,
            store,
            last_source: BTreeMap::new(),
            mm2,
            metrics,
            positions_from_store: false,
        })
    }

    /// Translates with the positions in the checkpoint store (every member's tasks) rather than this member's own.
    pub fn with_stored_positions(mut self) -> Self {
        self.positions_from_store = true;
        self
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

    async fn sync_once(&mut self) -> Result<(), FailoverError> {
        if self.positions_from_store {
            let stored = match self.store.load(&self.flow.name).await {
                Ok(stored) => stored,
                Err(error) => {
                    warn!(flow = self.flow.name.as_str(), %error, "cannot read stored positions; group sync skips a round");
                    return Ok(());
                }
            };
            let registry = Registry::default();
            for (key, checkpoint) in stored {
                let id = crate::progress::TaskId::new(&self.flow.name, &key.topic, key.partition);
                registry.insert(id, Arc::new(crate::progress::TaskProgress::new(checkpoint.position)));
            }
            self.registry = Arc::new(registry);
        }
        // The group list is not Send: read the names out of it before anything awaits.
        let names: Vec<String> = {
            let source = group_client(&self.config, &self.flow.source, "ferry-group-sync", &self.metrics)?;
            let groups = tokio::task::block_in_place(|| source.fetch_group_list(None, REQUEST_TIMEOUT))
                .map_err(|e| FailoverError::kafka("list groups", "*", &self.flow.source, e))?;
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

    async fn sync_group(&mut self, group: &str) -> Result<(), FailoverError> {
        let tasks: Vec<_> =
            self.registry.snapshot().into_iter().filter(|(id, _)| *id.flow == *self.flow.name).collect();
        if tasks.is_empty() {
            return Ok(());
        }
        let mut wanted = TopicPartitionList::new();
        for (id, _) in &tasks {
            wanted.add_partition(&id.topic, id.partition);
        }
        let source = group_client(&self.config, &self.flow.source, group, &self.metrics)?;
        let committed = tokio::task::block_in_place(|| source.committed_offsets(wanted, REQUEST_TIMEOUT))
            .map_err(|e| FailoverError::kafka("read committed offsets", group, &self.flow.source, e))?;
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
                may_redeliver: translation.may_redeliver,
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
        if let Some(mm2) = &mut self.mm2 {
            if let Err(error) = mm2.emit(group, &synced, &self.naming).await {
                warn!(flow = self.flow.name.as_str(), group, %error, "cannot write MM2-compatible checkpoints");
            }
        }
        if self.flow.sync_group_offsets.enabled {
            self.commit_on_target(group, &synced)?;
        }
        Ok(())
    }

    fn commit_on_target(&mut self, group: &str, synced: &GroupOffsets) -> Result<(), FailoverError> {
        let target = group_client(&self.config, &self.flow.target, group, &self.metrics)?;
        let members = active_members(&target, group, &self.flow.target)?;
        if members > 0 {
            debug!(flow = self.flow.name.as_str(), group, members, "group active on the target; not synced");
            return Ok(());
        }
        let current = target_committed(&target, &self.naming, synced)
            .map_err(|e| FailoverError::kafka("read committed offsets", group, &self.flow.target, e))?;
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
                    .map_err(|e| FailoverError::kafka("prepare offsets", group, &self.flow.target, e))?;
            }
            self.last_source.insert(key, offset.source_offset);
        }
        if commit.count() > 0 {
            target
                .commit(&commit, CommitMode::Sync)
                .map_err(|e| FailoverError::kafka("commit offsets", group, &self.flow.target, e))?;
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

impl Mm2Checkpoints {
    async fn emit(&mut self, group: &str, synced: &GroupOffsets, naming: &TopicNaming) -> Result<(), String> {
        if !self.topic_ready {
            let compact = BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]);
            self.admin.create_topic(&self.topic, 1, &compact).await.map_err(|e| e.to_string())?;
            self.topic_ready = true;
        }
        let sink = AckSink::new();
        for offset in &synced.partitions {
            let target_topic = naming.remote_topic(&offset.topic);
            let (key, value) = mm2_checkpoint_record(
                group,
                &target_topic,
                offset.partition,
                offset.source_offset,
                offset.target_offset,
            );
            let record: TargetRecord<'_> = BaseRecord::with_opaque_to(&self.topic, sink.clone())
                .partition(0)
                .key(key.as_slice())
                .payload(value.as_slice());
            self.producer.send(record).map_err(|(error, _)| error.to_string())?;
        }
        sink.wait_for(synced.partitions.len()).await.map_err(|error| error.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm2_checkpoint_records_use_kafkas_protocol_encoding() {
        let (key, value) = mm2_checkpoint_record("g", "us-east.t", 3, 100, 90);
        assert_eq!(key, [&[0, 1][..], b"g", &[0, 9], b"us-east.t", &[0, 0, 0, 3]].concat());
        assert_eq!(value, [&[0, 0][..], &100_i64.to_be_bytes(), &90_i64.to_be_bytes(), &[0, 0]].concat());
    }
}

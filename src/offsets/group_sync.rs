//! Continuous consumer group offset sync: each interval, the source groups' committed offsets are translated with
//! the tasks' live positions, stored (so failover works with the source gone) and committed into the same groups on
//! the target while they have no active members there.
//!
//! Invariant: a target group is never moved backwards unless the source group itself rewound, and never while it
//! has members on the target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::BaseRecord;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::{CheckpointStore, GroupOffsets, TaskKey};
use crate::clock::now_ms;
use crate::config::{Config, FlowConfig, TopicFilter};
use crate::offsets::failover::{translate_committed, FailoverError};
use crate::offsets::group::{GroupClient, Offsets};
use crate::offsets::mm2::mm2_checkpoint_record;
use crate::ops::metrics::Metrics;
use crate::replication::progress::{Position, Registry};
use crate::replication::target::{AckSink, TargetProducer, TargetRecord};
use crate::topics::admin::ClusterAdmin;
use crate::topics::naming::TopicNaming;

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
        let naming = TopicNaming::for_flow(&config, &flow);
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
        let flow = self.flow.name.clone();
        let last_success = self.metrics.group_sync_last_success.with_label_values(&[&flow]);
        let failures = self.metrics.group_sync_failures.with_label_values(&[&flow]);
        // Until a first round completes, the age counts from the start: a sync that never succeeds alerts too.
        last_success.set(now_ms() / 1000);
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.sync_once().await {
                Ok(()) => last_success.set(now_ms() / 1000),
                Err(error) => {
                    failures.inc();
                    warn!(flow = flow.as_str(), %error, "group offset sync failed; retrying next interval");
                }
            }
        }
    }

    /// The flow's task positions to translate with: this member's live ones, or every member's stored ones.
    async fn positions(&self) -> Result<Vec<(TaskKey, Position)>, crate::checkpoint::StoreError> {
        if self.positions_from_store {
            let stored = self.store.load(&self.flow.name).await?;
            return Ok(stored.into_iter().map(|(key, checkpoint)| (key, checkpoint.position)).collect());
        }
        Ok(self
            .registry
            .snapshot()
            .into_iter()
            .filter(|(id, _)| *id.flow == *self.flow.name)
            .map(|(id, progress)| (TaskKey::from(&id), progress.position()))
            .collect())
    }

    async fn sync_once(&mut self) -> Result<(), FailoverError> {
        let positions = match self.positions().await {
            Ok(positions) => positions,
            Err(error) => {
                warn!(flow = self.flow.name.as_str(), %error, "cannot read stored positions; group sync skips a round");
                return Ok(());
            }
        };
        if positions.is_empty() {
            return Ok(());
        }
        let source = GroupClient::new(&self.config, &self.flow.source, "ferry-group-sync", &self.metrics)?;
        let names: Vec<String> = source
            .all_groups()?
            .into_iter()
            .filter(|name| !is_tooling_group(name) && self.filter.matches(name))
            .collect();
        for group in names {
            self.sync_group(&group, &positions).await?;
        }
        Ok(())
    }

    async fn sync_group(&mut self, group: &str, positions: &[(TaskKey, Position)]) -> Result<(), FailoverError> {
        let source = GroupClient::new(&self.config, &self.flow.source, group, &self.metrics)?;
        let committed = source.committed(positions.iter().map(|(key, _)| (key.topic.clone(), key.partition)))?;
        let rows =
            translate_committed(positions.iter().map(|(key, position)| (key, position)), &self.naming, &committed);
        let partitions: Vec<_> = rows.iter().filter_map(|row| row.synced()).collect();
        if partitions.is_empty() {
            return Ok(());
        }
        let synced = GroupOffsets { synced_at_ms: now_ms(), partitions };
        self.metrics.groups_synced.with_label_values(&[&self.flow.name]).inc();
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
        let target = GroupClient::new(&self.config, &self.flow.target, group, &self.metrics)?;
        let members = target.active_members()?;
        if members > 0 {
            debug!(flow = self.flow.name.as_str(), group, members, "group active on the target; not synced");
            return Ok(());
        }
        let remote = |topic: &str, partition: i32| (self.naming.remote_topic(topic), partition);
        let current =
            target.committed(synced.partitions.iter().map(|offset| remote(&offset.topic, offset.partition)))?;
        let mut commit = Offsets::new();
        for offset in &synced.partitions {
            let key = (group.to_owned(), offset.topic.clone(), offset.partition);
            let rewound = self.last_source.get(&key).is_some_and(|last| offset.source_offset < *last);
            let target_partition = remote(&offset.topic, offset.partition);
            let behind = current.get(&target_partition).is_none_or(|now| *now < offset.target_offset);
            if behind || rewound {
                commit.insert(target_partition, offset.target_offset);
            }
            self.last_source.insert(key, offset.source_offset);
        }
        let committed = target.commit(&commit)?;
        if committed > 0 {
            info!(flow = self.flow.name.as_str(), group, partitions = committed, "synced group offsets to the target");
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

//! One consumer group's offsets on one cluster: read, committed and its members counted, without joining the group.
//!
//! Invariant: the client never joins the group (no subscription), so reading or committing offsets never triggers a
//! rebalance of the group's real consumers.

use std::collections::BTreeMap;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::{client_config, ClientError, ClusterContext, Role, REQUEST_TIMEOUT};
use crate::ops::metrics::Metrics;

/// A request about a group failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The cluster refused or did not answer.
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
}

/// Offsets by (topic, partition).
pub type Offsets = BTreeMap<(String, i32), i64>;

/// A client for `group` on cluster `cluster`.
pub struct GroupClient {
    consumer: BaseConsumer<ClusterContext>,
    group: String,
    cluster: String,
}

impl GroupClient {
    /// A client for `group` on the cluster `alias` of `config`; its client errors count in `metrics`.
    pub fn new(config: &Config, alias: &str, group: &str, metrics: &Metrics) -> Result<Self, GroupError> {
        let mut client = client_config(alias, &config.clusters[alias], Role::Admin)?;
        client.set("group.id", group).set("enable.auto.commit", "false");
        let consumer = client
            .create_with_context(ClusterContext::new(alias, &config.clusters[alias], metrics))
            .map_err(|source| ClientError::create(alias, &config.clusters[alias], &source))?;
        Ok(Self { consumer, group: group.to_owned(), cluster: alias.to_owned() })
    }

    fn failed(&self, what: &'static str) -> impl FnOnce(KafkaError) -> GroupError + '_ {
        move |source| GroupError::Kafka {
            what,
            group: self.group.clone(),
            cluster: self.cluster.clone(),
            source: Box::new(source),
        }
    }

    /// How many members the group has on the cluster.
    pub fn active_members(&self) -> Result<usize, GroupError> {
        let groups = tokio::task::block_in_place(|| self.consumer.fetch_group_list(Some(&self.group), REQUEST_TIMEOUT))
            .map_err(self.failed("describe the group"))?;
        Ok(groups.groups().iter().map(|group| group.members().len()).sum())
    }

    /// The names of every group on the cluster.
    pub fn all_groups(&self) -> Result<Vec<String>, GroupError> {
        let groups = tokio::task::block_in_place(|| self.consumer.fetch_group_list(None, REQUEST_TIMEOUT))
            .map_err(self.failed("list groups"))?;
        Ok(groups.groups().iter().map(|group| group.name().to_owned()).collect())
    }

    /// The group's committed offsets for `partitions`; partitions without one are left out.
    pub fn committed(&self, partitions: impl IntoIterator<Item = (String, i32)>) -> Result<Offsets, GroupError> {
        let mut wanted = TopicPartitionList::new();
        for (topic, partition) in partitions {
            wanted.add_partition(&topic, partition);
        }
        let committed = tokio::task::block_in_place(|| self.consumer.committed_offsets(wanted, REQUEST_TIMEOUT))
            .map_err(self.failed("read committed offsets"))?;
        let offsets = committed
            .elements()
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => Some(((element.topic().to_owned(), element.partition()), offset)),
                _ => None,
            })
            .collect();
        // Drop the partition list before the consumer: librdkafka can hang on shutdown otherwise.
        drop(committed);
        Ok(offsets)
    }

    /// Commits `offsets` for the group; returns how many were committed once the coordinator stored them.
    pub fn commit(&self, offsets: &Offsets) -> Result<usize, GroupError> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(self.failed("prepare offsets"))?;
        }
        let count = list.count();
        if count > 0 {
            tokio::task::block_in_place(|| self.consumer.commit(&list, CommitMode::Sync))
                .map_err(self.failed("commit offsets"))?;
        }
        drop(list);
        Ok(count)
    }
}

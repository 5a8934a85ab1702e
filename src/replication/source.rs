//! The source side of a flow: one shared consumer per flow that hands each task its own partition queue.
//!
//! Invariant: a partition is split off into its task's queue *before* it is assigned, so none of its records can
//! land in the shared main queue; the main queue only carries events and is served by a background driver.
//! One consumer per flow (not per source cluster) because librdkafka assigns a partition once per consumer, and
//! two flows may replicate the same source topic to different targets.

use std::ffi::CString;
use std::sync::Arc;

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::ClusterConfig;
use crate::kafka::{client_config, ClientError, ClusterContext, Role};
use crate::ops::metrics::Metrics;

/// A task's own queue of source records.
pub type PartitionQueue = StreamPartitionQueue<ClusterContext>;

/// The shared consumer of one flow.
pub struct SourceConsumer {
    alias: String,
    consumer: Arc<StreamConsumer<ClusterContext>>,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for SourceConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConsumer").field("cluster", &self.alias).finish_non_exhaustive()
    }
}

/// Errors of the source side.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The consumer could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The partition could not be assigned.
    #[error("cannot assign {topic}[{partition}] on cluster {cluster}: {source}")]
    Assign {
        /// Cluster alias.
        cluster: String,
        /// Source topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// librdkafka's error (boxed: errors travel through every task's hot-path `Result`).
        source: Box<KafkaError>,
    },
    /// The partition's log start and end offsets could not be read.
    #[error("cannot read the offsets of {topic}[{partition}] on cluster {cluster}: {source}")]
    Watermarks {
        /// Cluster alias.
        cluster: String,
        /// Source topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// librdkafka's error.
        source: Box<KafkaError>,
    },
}

impl SourceConsumer {
    /// Builds the consumer for a flow reading cluster `alias`. Needs no connection: librdkafka connects lazily
    /// and keeps retrying, which is what lets ferry start while a source cluster is down.
    pub fn new(flow: &str, alias: &str, cluster: &ClusterConfig, metrics: &Metrics) -> Result<Self, SourceError> {
        let mut config = client_config(alias, cluster, Role::Consumer)?;
        config.set("client.id", format!("ferry-{flow}-{alias}"));
        let context = ClusterContext::new(alias, cluster, metrics);
        let consumer: StreamConsumer<ClusterContext> =
            config.create_with_context(context).map_err(|source| ClientError::create(alias, cluster, &source))?;
        let consumer = Arc::new(consumer);
        let driver = tokio::spawn(serve_main_queue(consumer.clone(), alias.to_owned()));
        Ok(Self { alias: alias.to_owned(), consumer, driver })
    }

    /// The source cluster alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Splits off the partition's queue and assigns the partition from `next_offset`.
    pub fn attach(&self, topic: &str, partition: i32, next_offset: i64) -> Result<PartitionQueue, SourceError> {
        let queue = self.consumer.split_partition_queue(topic, partition).ok_or_else(|| {
            self.assign_error(
                topic,
                partition,
                KafkaError::Subscription(format!("no partition queue for {topic}[{partition}]")),
            )
        })?;
        self.assign(topic, partition, next_offset)?;
        Ok(queue)
    }

    /// Assigns the partition again from `offset`: how a task moves on after its position became invalid (librdkafka
    /// leaves such a partition in an error state that a seek cannot leave). The partition queue stays the task's.
    pub fn restart_at(&self, topic: &str, partition: i32, offset: i64) -> Result<(), SourceError> {
        self.detach(topic, partition);
        self.assign(topic, partition, offset)
    }

    fn assign(&self, topic: &str, partition: i32, offset: i64) -> Result<(), SourceError> {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(|error| self.assign_error(topic, partition, error))?;
        self.consumer.incremental_assign(&assignment).map_err(|error| self.assign_error(topic, partition, error))
    }

    fn assign_error(&self, topic: &str, partition: i32, source: KafkaError) -> SourceError {
        SourceError::Assign {
            cluster: self.alias.clone(),
            topic: topic.to_owned(),
            partition,
            source: Box::new(source),
        }
    }

    /// The partition's log start and end offsets, asked of its leader.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), SourceError> {
        tokio::task::block_in_place(|| self.consumer.fetch_watermarks(topic, partition, crate::kafka::REQUEST_TIMEOUT))
            .map_err(|source| SourceError::Watermarks {
                cluster: self.alias.clone(),
                topic: topic.to_owned(),
                partition,
                source: Box::new(source),
            })
    }

    /// Unassigns the partition; its queue may be dropped afterwards.
    pub fn detach(&self, topic: &str, partition: i32) {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition(topic, partition);
        if let Err(error) = self.consumer.incremental_unassign(&assignment) {
            warn!(cluster = self.alias.as_str(), topic, partition, %error, "cannot unassign source partition");
        }
    }

    /// The high watermark of a source partition from the consumer's last fetch response (no request is made),
    /// or `None` before the first fetch.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let topic = CString::new(topic).ok()?;
        let (mut low, mut high) = (-1_i64, -1_i64);
        // SAFETY: the client pointer is valid while `self.consumer` lives; librdkafka only reads the topic string
        // and writes the two offsets, under its own partition lock.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
    }
}

impl Drop for SourceConsumer {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Serves the consumer's main queue: statistics, errors and rebalance events arrive there, and librdkafka only
/// delivers them while someone polls it.
async fn serve_main_queue(consumer: Arc<StreamConsumer<ClusterContext>>, alias: String) {
    loop {
        match consumer.recv().await {
            // Only possible for a record fetched just before its partition was unassigned: it will be fetched
            // again from the checkpoint when the partition is next assigned, so it is not lost.
            Ok(message) => debug!(
                cluster = alias.as_str(),
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                "record of an unassigned partition ignored"
            ),
            // The client context's error callback has already logged and counted it.
            Err(error) => debug!(cluster = alias.as_str(), %error, "source consumer error"),
        }
    }
}

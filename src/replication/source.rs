//! The source side of a flow: one shared consumer per flow that hands each task its own partition queue.
//!
//! Invariant: a partition is split off into its task's queue *before* it is assigned, so none of its records can
//! land in the shared main queue; the main queue only carries events and is served by a background driver.
//! One consumer per flow (not per source cluster) because librdkafka assigns a partition once per consumer, and
//! two flows may replicate the same source topic to different targets.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::ClusterConfig;
use crate::kafka::{client_config, ClientError, ClusterContext, Role, REQUEST_TIMEOUT};
use crate::ops::metrics::Metrics;
use crate::topics::identity::{topic_ids, TopicId};

/// How often the ids of the topics a flow reads are checked: a topic deleted and created again under the same name
/// is noticed within this, wherever its tasks run.
const TOPIC_ID_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How long an id read for a starting task is reused for the next task of the same topic, so the partitions of a
/// topic starting together cost one request.
const TOPIC_ID_REUSE: Duration = Duration::from_secs(2);

/// A task's own queue of source records.
pub type PartitionQueue = StreamPartitionQueue<ClusterContext>;

/// The shared consumer of one flow.
pub struct SourceConsumer {
    alias: String,
    consumer: Arc<StreamConsumer<ClusterContext>>,
    driver: JoinHandle<()>,
    identities: Arc<Identities>,
    id_checker: JoinHandle<()>,
}

/// The ids of the topics the flow's tasks read.
struct Identities {
    /// The newest id read of each topic; a topic that vanished keeps its last id until another appears.
    current: watch::Sender<BTreeMap<String, TopicId>>,
    /// Attached partitions per topic: the topics worth checking.
    attached: Mutex<BTreeMap<String, usize>>,
    /// When each topic's id was last read; held across a read so tasks starting together share it.
    read_at: tokio::sync::Mutex<BTreeMap<String, Instant>>,
}

impl Identities {
    fn attached_topics(&self) -> Vec<String> {
        self.attached.lock().expect("attached topics lock poisoned").keys().cloned().collect()
    }

    /// Takes in freshly read ids; topics the cluster did not describe keep their last id.
    fn merge(&self, read: BTreeMap<String, TopicId>) {
        self.current.send_if_modified(|current| {
            let mut changed = false;
            for (topic, id) in read {
                if current.get(&topic) != Some(&id) {
                    current.insert(topic, id);
                    changed = true;
                }
            }
            changed
        });
    }
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
        let identities = Arc::new(Identities {
            current: watch::channel(BTreeMap::new()).0,
            attached: Mutex::new(BTreeMap::new()),
            read_at: tokio::sync::Mutex::new(BTreeMap::new()),
        });
        let id_checker = tokio::spawn(check_topic_ids(consumer.clone(), identities.clone(), alias.to_owned()));
        Ok(Self { alias: alias.to_owned(), consumer, driver, identities, id_checker })
    }

    /// The source topic's id as the cluster describes it now (or read moments ago for another partition), `None`
    /// when the cluster cannot say (unreachable, topic missing, or a broker without topic ids).
    pub async fn topic_id(&self, topic: &str) -> Option<TopicId> {
        let mut read_at = self.identities.read_at.lock().await;
        let fresh = read_at.get(topic).is_some_and(|at| at.elapsed() < TOPIC_ID_REUSE);
        if !fresh {
            let consumer = self.consumer.clone();
            let wanted = topic.to_owned();
            let read =
                tokio::task::spawn_blocking(move || topic_ids(consumer.client(), &[wanted.as_str()], REQUEST_TIMEOUT))
                    .await
                    .unwrap_or(Err(KafkaError::Canceled));
            match read {
                Ok(ids) => {
                    read_at.insert(topic.to_owned(), Instant::now());
                    self.identities.merge(ids);
                }
                Err(error) => {
                    debug!(cluster = self.alias.as_str(), topic, %error, "cannot read the source topic's id");
                    return None;
                }
            }
        }
        self.identities.current.borrow().get(topic).cloned()
    }

    /// Every change to the ids of the topics this flow reads.
    pub fn topic_ids(&self) -> watch::Receiver<BTreeMap<String, TopicId>> {
        self.identities.current.subscribe()
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
        *self
            .identities
            .attached
            .lock()
            .expect("attached topics lock poisoned")
            .entry(topic.to_owned())
            .or_default() += 1;
        Ok(queue)
    }

    /// Assigns the partition again from `offset`: how a task moves on after its position became invalid (librdkafka
    /// leaves such a partition in an error state that a seek cannot leave). The partition queue stays the task's.
    pub fn restart_at(&self, topic: &str, partition: i32, offset: i64) -> Result<(), SourceError> {
        self.unassign(topic, partition);
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
        {
            let mut attached = self.identities.attached.lock().expect("attached topics lock poisoned");
            if let Some(count) = attached.get_mut(topic) {
                *count -= 1;
                if *count == 0 {
                    attached.remove(topic);
                }
            }
        }
        self.unassign(topic, partition);
    }

    fn unassign(&self, topic: &str, partition: i32) {
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
        self.id_checker.abort();
    }
}

/// Reads the ids of the attached topics every [`TOPIC_ID_CHECK_INTERVAL`]: the tasks of a topic deleted and created
/// again learn it from the change.
async fn check_topic_ids(consumer: Arc<StreamConsumer<ClusterContext>>, identities: Arc<Identities>, alias: String) {
    let mut ticker = tokio::time::interval(TOPIC_ID_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let topics = identities.attached_topics();
        if topics.is_empty() {
            continue;
        }
        let consumer = consumer.clone();
        let read = tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            topic_ids(consumer.client(), &names, REQUEST_TIMEOUT)
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled));
        match read {
            Ok(ids) => identities.merge(ids),
            // Unreachable clusters are reported by the clients' own errors and ferry_cluster_up.
            Err(error) => debug!(cluster = alias.as_str(), %error, "cannot read the ids of the source topics"),
        }
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

//! The target side: one shared idempotent producer per target cluster, used by every task writing there, and the
//! acknowledgement sink through which each task learns what became of its records.
//!
//! Invariant: records of one partition are acknowledged in the order they were sent (idempotence keeps order
//! across retries), which is what lets a task advance its position by acknowledgements alone.
//!
//! Acknowledgements arrive in batches: the producer's delivery thread appends each one to the sending task's
//! [`AckSink`] and wakes the task only if it is waiting, so a task wakes once per delivery batch, not once per
//! record, and no per-record future or channel is allocated (docs/benchmarks.md).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use crate::config::ClusterConfig;
use crate::kafka::{client_config, ClientError, ClusterContext, Role, REQUEST_TIMEOUT};
use crate::ops::metrics::Metrics;

/// What became of one produced record: its target offset, or why the target refused it.
pub type Ack = Result<i64, KafkaError>;

/// Where the producer's delivery thread leaves the acknowledgements of one sender's records, in send order.
#[derive(Debug, Default)]
pub struct AckSink {
    arrived: Mutex<Vec<Ack>>,
    waker: AtomicWaker,
}

impl AckSink {
    /// An empty sink, to be handed to [`TargetProducer::send`] with every record.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn push(&self, ack: Ack) {
        self.arrived.lock().expect("ack sink lock poisoned").push(ack);
        self.waker.wake();
    }

    /// Moves every acknowledgement that arrived into `into` (which the caller has emptied); `Pending` (and a wake-up
    /// when the next one arrives) if none did.
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<Ack>) -> Poll<()> {
        // Registering before looking closes the race with a push between the look and the registration.
        self.waker.register(cx.waker());
        if self.try_take(into) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Moves every acknowledgement that arrived into `into`; whether there was any.
    fn try_take(&self, into: &mut Vec<Ack>) -> bool {
        let mut arrived = self.arrived.lock().expect("ack sink lock poisoned");
        if arrived.is_empty() {
            return false;
        }
        // Swapping hands the delivery thread back the caller's (empty, already allocated) buffer.
        std::mem::swap(&mut *arrived, into);
        true
    }

    /// Waits for the next acknowledgements and moves them into `into`.
    pub async fn take(&self, into: &mut Vec<Ack>) {
        std::future::poll_fn(|cx| self.poll_take(cx, into)).await
    }

    /// Waits until `count` acknowledgements arrived; the first refusal among them, if any.
    pub async fn wait_for(&self, count: usize) -> Result<(), KafkaError> {
        let (mut acks, mut received) = (Vec::new(), 0);
        while received < count {
            self.take(&mut acks).await;
            received += acks.len();
            for ack in acks.drain(..) {
                ack?;
            }
        }
        Ok(())
    }
}

/// Producer context of a target producer: logs under the cluster alias and routes acknowledgements to the sink
/// each record was sent with.
pub struct TargetContext {
    cluster: ClusterContext,
}

impl ClientContext for TargetContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.cluster.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.cluster.error(error, reason);
    }
}

impl ProducerContext for TargetContext {
    type DeliveryOpaque = Arc<AckSink>;

    fn delivery(&self, result: &DeliveryResult<'_>, sink: Arc<AckSink>) {
        sink.push(match result {
            Ok(message) => Ok(message.offset()),
            Err((error, _)) => Err(error.clone()),
        });
    }
}

/// A new librdkafka producer for cluster `alias`: transactional when `transactional_id` is set.
fn build(
    alias: &str,
    cluster: &ClusterConfig,
    metrics: &Metrics,
    transactional_id: Option<&str>,
) -> Result<ThreadedProducer<TargetContext>, ClientError> {
    let mut config = client_config(alias, cluster, Role::Producer)?;
    if let Some(transactional_id) = transactional_id {
        // Set after the user's properties: the id is what fences zombies, so it is never the user's to choose.
        config.set("transactional.id", transactional_id);
        // The next transaction's first request waits out the coordinator's CONCURRENT_TRANSACTIONS while the
        // previous commit's markers are written; librdkafka's 100 ms backoff made every commit cost 100 ms
        // (docs/adr/0019-exactly-once-design.md).
        if config.get("retry.backoff.ms").is_none() {
            config.set("retry.backoff.ms", "10");
        }
        // librdkafka refuses a transactional producer whose records may outlive the transaction (ferry's producers
        // otherwise never time records out); a record that times out aborts the transaction, and the bucket's
        // tasks replicate again from the committed position.
        if !cluster.client.contains_key("message.timeout.ms") {
            let transaction_timeout = config.get("transaction.timeout.ms").unwrap_or("60000").to_owned();
            config.set("message.timeout.ms", transaction_timeout);
        }
    }
    let context = TargetContext { cluster: ClusterContext::new(alias, cluster, metrics) };
    config.create_with_context(context).map_err(|source| ClientError::create(alias, cluster, &source))
}

/// A record for [`TargetProducer::send`]; its acknowledgement goes to the sink it carries.
pub type TargetRecord<'a> = BaseRecord<'a, [u8], [u8], Arc<AckSink>>;

/// The shared producer of one target cluster: a handle on one librdkafka instance, and the cell through which the
/// cluster's tasks get the instance that replaces it after a fatal error.
#[derive(Clone)]
pub struct TargetProducer {
    alias: String,
    producer: Arc<ThreadedProducer<TargetContext>>,
    cell: Arc<ProducerCell>,
}

/// The current instance of a cluster's producer, and how to build another.
struct ProducerCell {
    current: Mutex<Arc<ThreadedProducer<TargetContext>>>,
    cluster: ClusterConfig,
    metrics: Metrics,
    transactional_id: Option<String>,
}

impl std::fmt::Debug for TargetProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetProducer").field("cluster", &self.alias).finish_non_exhaustive()
    }
}

impl TargetProducer {
    /// Builds the producer for cluster `alias`; it connects lazily.
    pub fn new(alias: &str, cluster: &ClusterConfig, metrics: &Metrics) -> Result<Self, ClientError> {
        Self::with_cell(alias, cluster, metrics, None)
    }

    fn with_cell(
        alias: &str,
        cluster: &ClusterConfig,
        metrics: &Metrics,
        transactional_id: Option<String>,
    ) -> Result<Self, ClientError> {
        let producer = Arc::new(build(alias, cluster, metrics, transactional_id.as_deref())?);
        let cell = Arc::new(ProducerCell {
            current: Mutex::new(producer.clone()),
            cluster: cluster.clone(),
            metrics: metrics.clone(),
            transactional_id,
        });
        Ok(Self { alias: alias.to_owned(), producer, cell })
    }

    /// A handle on the cluster's current instance: the one that replaced this handle's after a fatal error, if any.
    pub fn current(&self) -> TargetProducer {
        let producer = self.cell.current.lock().expect("producer cell lock poisoned").clone();
        Self { alias: self.alias.clone(), producer, cell: self.cell.clone() }
    }

    /// After a task failed: when librdkafka says this handle's instance hit a fatal error (it can never send
    /// again, for example after a sequence it cannot recover), replaces it as the cluster's current instance, once
    /// for all its tasks. Returns librdkafka's reason when it did (or another task already had).
    pub fn replace_if_fatal(&self) -> Option<String> {
        let (code, reason) = self.producer.client().fatal_error()?;
        let mut current = self.cell.current.lock().expect("producer cell lock poisoned");
        if Arc::ptr_eq(&current, &self.producer) {
            let cell = &self.cell;
            match build(&self.alias, &cell.cluster, &cell.metrics, cell.transactional_id.as_deref()) {
                Ok(fresh) => {
                    *current = Arc::new(fresh);
                    cell.metrics.producer_rebuilds_of(&self.alias).inc();
                    tracing::error!(
                        cluster = self.alias.as_str(),
                        ?code,
                        reason = reason.as_str(),
                        "the target producer hit a fatal error; replaced by a new one (its tasks resume from their \
                         acknowledged positions)"
                    );
                }
                Err(error) => {
                    tracing::error!(cluster = self.alias.as_str(), %error, "cannot rebuild the target producer")
                }
            }
        }
        Some(reason)
    }

    /// A transactional producer for cluster `alias` (exactly-once delivery): one per bucket, with a
    /// `transactional.id` that stays the same whichever member runs the bucket, so a new instance fences the old.
    pub fn transactional(
        alias: &str,
        cluster: &ClusterConfig,
        metrics: &Metrics,
        transactional_id: &str,
    ) -> Result<Self, ClientError> {
        Self::with_cell(alias, cluster, metrics, Some(transactional_id.to_owned()))
    }

    /// The librdkafka producer, for the transaction calls of a bucket.
    pub(crate) fn client(&self) -> &Arc<ThreadedProducer<TargetContext>> {
        &self.producer
    }

    /// The target cluster alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Hands a record to the producer; its acknowledgement will arrive in the record's sink. A refusal returns the
    /// record (for example when the producer's queue is full).
    // The record comes back by value so a full queue can be retried without copying it (rdkafka's own shape).
    #[allow(clippy::result_large_err)]
    pub fn send<'a>(&self, record: TargetRecord<'a>) -> Result<(), (KafkaError, TargetRecord<'a>)> {
        self.producer.send(record)
    }

    /// The high watermark of a target partition (one request to the partition leader).
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, rdkafka::error::KafkaError> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || producer.client().fetch_watermarks(&topic, partition, REQUEST_TIMEOUT))
            .await
            .map_err(|_| rdkafka::error::KafkaError::Canceled)?
            .map(|(_, high)| high)
    }

    /// Refreshes the producer's metadata of `topic`, so partitions added since it last looked are known.
    pub async fn refresh_metadata(&self, topic: &str) -> Result<(), rdkafka::error::KafkaError> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&topic), REQUEST_TIMEOUT).map(drop))
            .await
            .map_err(|_| rdkafka::error::KafkaError::Canceled)?
    }

    /// Drops every record the producer still holds (queued, or in flight with the answer not yet read) and returns
    /// how many there were: a member that stopped and wrote its final checkpoint must not deliver records later,
    /// behind the back of the partitions' next owners. Records already on their way may still land; the next owner
    /// counts them as duplicates when it starts.
    pub fn purge_unacknowledged(&self) -> i32 {
        let held = self.producer.in_flight_count();
        if held > 0 {
            self.producer.purge(PurgeConfig::default().queue().inflight());
        }
        held
    }
}

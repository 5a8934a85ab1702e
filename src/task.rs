//! The per-partition task: fetch from its partition queue, pass the throttle, produce to the same partition of the
//! target topic, and advance its position on acknowledgements.
//!
//! Invariant: the position moves only over records the target acknowledged (or that the task deliberately does
//! not replicate), in source-offset order. A rejected record stops the task before the position passes it, so
//! nothing is lost silently; the supervisor restarts the task from its checkpoint.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::future_producer::{DeliveryFuture, OwnedDeliveryResult};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::checkpoint::now_ms;
use crate::discovery::TaskSpec;
use crate::metrics::TaskMetrics;
use crate::naming::PROVENANCE_HEADER;
use crate::progress::{Position, TaskProgress};
use crate::source::{SourceConsumer, SourceError};
use crate::target::TargetProducer;
use crate::throttle::Throttle;

/// Records a task may have sent but not yet seen acknowledged.
pub const MAX_IN_FLIGHT: usize = 10_000;

/// How long to wait before retrying a send the full producer queue refused, when nothing of this task is in flight.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// How often to refresh metadata and retry a send to a partition the producer does not know yet.
const UNKNOWN_PARTITION_RETRIES: u32 = 60;
/// Pause between those retries.
const UNKNOWN_PARTITION_BACKOFF: Duration = Duration::from_millis(500);

/// Identity naming's loop guard: which cluster records come from and go to.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// Source cluster alias, written into records that carry no provenance yet.
    pub source_alias: String,
    /// Target cluster alias: records that originated there are not sent back.
    pub target_alias: String,
}

/// Everything a task needs; the shared clients are cheap handles.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Which partition and where it goes.
    pub spec: TaskSpec,
    /// The flow's shared consumer.
    pub source: Arc<SourceConsumer>,
    /// The target cluster's shared producer.
    pub target: TargetProducer,
    /// The region pair's throttle, if any.
    pub throttle: Option<Arc<Throttle>>,
    /// Pre-resolved counters.
    pub metrics: TaskMetrics,
    /// Shared position.
    pub progress: Arc<TaskProgress>,
    /// Set for identity naming.
    pub provenance: Option<Provenance>,
    /// How long to wait for in-flight records when stopping.
    pub drain_timeout: Duration,
    /// Send one record and wait for its acknowledgement before pipelining: after the target refused a record,
    /// this keeps every retry from writing the records behind it again.
    pub cautious_start: bool,
}

/// Why a task stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The partition could not be assigned.
    #[error(transparent)]
    Attach(Box<SourceError>),
    /// The target refused a record; the task's position stays before it.
    #[error("target cluster {cluster} refused source offset {offset} (target topic {target_topic}, partition {partition}): {error}")]
    Rejected {
        /// Target cluster alias.
        cluster: String,
        /// Target topic.
        target_topic: String,
        /// Partition.
        partition: i32,
        /// Source offset of the refused record.
        offset: i64,
        /// Kafka's error (boxed to keep the hot path's `Result` small).
        error: Box<KafkaError>,
    },
    /// The producer went away while records were in flight (only during process shutdown).
    #[error("producer of target cluster {cluster} shut down with records in flight")]
    ProducerGone {
        /// Target cluster alias.
        cluster: String,
    },
}

impl TaskError {
    /// Whether restarting the task can help without an operator changing something.
    pub fn is_retriable(&self) -> bool {
        match self {
            TaskError::Rejected { error, .. } => crate::kafka::is_retriable(error),
            TaskError::Attach(_) | TaskError::ProducerGone { .. } => true,
        }
    }
}

/// A record sent (or deliberately skipped) and not yet accounted for.
struct InFlight {
    offset: i64,
    timestamp_ms: Option<i64>,
    bytes: usize,
    /// `None` for a record that is skipped, not produced.
    delivery: Option<DeliveryFuture>,
}

/// What became of the oldest in-flight record.
enum Outcome {
    Skipped,
    Delivered(OwnedDeliveryResult),
    ProducerGone,
}

/// Resolves when the oldest in-flight record is accounted for. Only the oldest is polled: the producer
/// acknowledges a partition's records in order, so it is always the next to complete.
fn next_outcome(in_flight: &mut VecDeque<InFlight>) -> impl Future<Output = (InFlight, Outcome)> + '_ {
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        let Some(front) = in_flight.front_mut() else { return Poll::Pending };
        let outcome = match front.delivery.as_mut() {
            None => Outcome::Skipped,
            Some(delivery) => match Pin::new(delivery).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(result)) => Outcome::Delivered(result),
                Poll::Ready(Err(_canceled)) => Outcome::ProducerGone,
            },
        };
        let front = in_flight.pop_front().expect("front exists");
        Poll::Ready((front, outcome))
    })
}

struct Replication<'a> {
    ctx: &'a TaskContext,
    position: Position,
    in_flight: VecDeque<InFlight>,
    last_acked_timestamp_ms: Option<i64>,
    /// Set until the first acknowledgement of a cautious start.
    cautious: bool,
    /// Acknowledged records and bytes not yet added to the shared counters. All tasks of a topic share one
    /// counter (and all tasks of a flow one latency histogram), so per-record updates would contend across
    /// threads; they are added once per batch of acknowledgements, in `publish`.
    unpublished_records: u64,
    unpublished_bytes: u64,
    /// Latency observations not yet flushed into the flow's histogram (also in `publish`).
    latency: prometheus::local::LocalHistogram,
}

impl Replication<'_> {
    fn max_in_flight(&self) -> usize {
        if self.cautious {
            1
        } else {
            MAX_IN_FLIGHT
        }
    }

    fn account(&mut self, record: InFlight, outcome: Outcome) -> Result<(), TaskError> {
        match outcome {
            Outcome::Skipped => {
                self.position.skipped(record.offset);
                self.ctx.metrics.skipped_loop.inc();
            }
            Outcome::Delivered(Ok(delivery)) => {
                self.cautious = false;
                self.position.acknowledged(record.offset, delivery.offset);
                self.unpublished_records += 1;
                self.unpublished_bytes += record.bytes as u64;
                if let Some(timestamp_ms) = record.timestamp_ms {
                    self.latency.observe((now_ms() - timestamp_ms).max(0) as f64 / 1000.0);
                    self.last_acked_timestamp_ms = Some(timestamp_ms);
                }
            }
            Outcome::Delivered(Err((error, _))) => {
                return Err(TaskError::Rejected {
                    cluster: self.ctx.target.alias().to_owned(),
                    target_topic: self.ctx.spec.target_topic.clone(),
                    partition: self.ctx.spec.id.partition,
                    offset: record.offset,
                    error: Box::new(error),
                })
            }
            Outcome::ProducerGone => {
                return Err(TaskError::ProducerGone { cluster: self.ctx.target.alias().to_owned() });
            }
        }
        Ok(())
    }

    /// Accounts for every in-flight record that is already done, then publishes the position once.
    fn account_ready(&mut self, record: InFlight, outcome: Outcome) -> Result<(), TaskError> {
        let result = self.account(record, outcome).and_then(|()| {
            while let Some((record, outcome)) = next_outcome(&mut self.in_flight).now_or_never() {
                self.account(record, outcome)?;
            }
            Ok(())
        });
        self.publish();
        result
    }

    fn publish(&mut self) {
        if self.unpublished_records > 0 {
            self.ctx.metrics.records.inc_by(self.unpublished_records);
            self.ctx.metrics.bytes.inc_by(self.unpublished_bytes);
            (self.unpublished_records, self.unpublished_bytes) = (0, 0);
        }
        self.latency.flush();
        if self.in_flight.is_empty() {
            self.ctx.progress.mark_idle(now_ms());
        }
        let oldest_unacked = self.in_flight.front().and_then(|record| record.timestamp_ms);
        self.ctx.progress.publish(&self.position, oldest_unacked, self.last_acked_timestamp_ms);
    }

    /// Produces one source record. Returns `false` when `stop` fired before the record was handed over.
    async fn send(&mut self, message: &BorrowedMessage<'_>, stop: &CancellationToken) -> Result<bool, TaskError> {
        let offset = message.offset();
        let timestamp_ms = message.timestamp().to_millis();
        let mut bytes = message.key_len() + message.payload_len();
        let mut headers = None;
        let mut origin = None;
        if let Some(source_headers) = message.headers() {
            for header in source_headers.iter() {
                bytes += header.key.len() + header.value.map_or(0, <[u8]>::len);
                if header.key == PROVENANCE_HEADER {
                    origin = Some(header.value.unwrap_or_default());
                }
            }
            headers = Some(source_headers.detach());
        }
        if let Some(provenance) = &self.ctx.provenance {
            if origin == Some(provenance.target_alias.as_bytes()) {
                self.in_flight.push_back(InFlight { offset, timestamp_ms, bytes, delivery: None });
                return Ok(true);
            }
            if origin.is_none() {
                headers = Some(
                    headers
                        .unwrap_or_else(OwnedHeaders::new)
                        .insert(Header { key: PROVENANCE_HEADER, value: Some(provenance.source_alias.as_bytes()) }),
                );
            }
        }

        if let Some(throttle) = &self.ctx.throttle {
            tokio::select! {
                // Stopping wins: the record is simply fetched again from the checkpoint next time.
                biased;
                _ = stop.cancelled() => return Ok(false),
                _ = throttle.acquire(bytes) => {}
            }
        }

        let mut record = FutureRecord::to(&self.ctx.spec.target_topic).partition(self.ctx.spec.id.partition);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(timestamp_ms) = timestamp_ms {
            record = record.timestamp(timestamp_ms);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        let mut unknown_partition_retries = 0;
        loop {
            match self.ctx.target.producer().send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push_back(InFlight { offset, timestamp_ms, bytes, delivery: Some(delivery) });
                    return Ok(true);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    // The shared producer is full: wait for room, accounting for our own acknowledgements meanwhile.
                    if self.in_flight.is_empty() {
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => return Ok(false),
                            _ = tokio::time::sleep(QUEUE_FULL_BACKOFF) => {}
                        }
                    } else {
                        let (done, outcome) = tokio::select! {
                            biased;
                            _ = stop.cancelled() => return Ok(false),
                            next = next_outcome(&mut self.in_flight) => next,
                        };
                        self.account_ready(done, outcome)?;
                    }
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition), returned))
                    if unknown_partition_retries < UNKNOWN_PARTITION_RETRIES =>
                {
                    // A partition discovery just added: the shared producer's metadata predates it.
                    record = returned;
                    unknown_partition_retries += 1;
                    if let Err(error) = self.ctx.target.refresh_metadata(&self.ctx.spec.target_topic).await {
                        warn!(task = %self.ctx.spec.id, %error, "cannot refresh target metadata");
                    }
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(UNKNOWN_PARTITION_BACKOFF) => {}
                    }
                }
                Err((error, _)) => {
                    return Err(TaskError::Rejected {
                        cluster: self.ctx.target.alias().to_owned(),
                        target_topic: self.ctx.spec.target_topic.clone(),
                        partition: self.ctx.spec.id.partition,
                        offset,
                        error: Box::new(error),
                    })
                }
            }
        }
    }

    async fn replicate(
        &mut self,
        queue: &crate::source::PartitionQueue,
        stop: &CancellationToken,
    ) -> Result<(), TaskError> {
        loop {
            tokio::select! {
                // Acknowledgements first: they free in-flight room and move the position.
                biased;
                (done, outcome) = next_outcome(&mut self.in_flight), if !self.in_flight.is_empty() => {
                    self.account_ready(done, outcome)?;
                }
                _ = stop.cancelled() => return Ok(()),
                received = queue.recv(), if self.in_flight.len() < self.max_in_flight() => match received {
                    Ok(message) => {
                        self.ctx.progress.mark_busy();
                        if !self.send(&message, stop).await? {
                            return Ok(());
                        }
                    }
                    Err(error) => {
                        warn!(task = %self.ctx.spec.id, %error, "source partition error; librdkafka retries");
                    }
                },
            }
        }
    }

    /// Waits (up to the drain timeout) for what is in flight, so the last checkpoint covers it.
    async fn drain(&mut self) -> Result<(), TaskError> {
        let deadline = tokio::time::Instant::now() + self.ctx.drain_timeout;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, next_outcome(&mut self.in_flight)).await {
                Ok((done, outcome)) => self.account_ready(done, outcome)?,
                Err(_) => {
                    warn!(
                        task = %self.ctx.spec.id,
                        unacknowledged = self.in_flight.len(),
                        "stopping with records not yet acknowledged; they are replicated again from the checkpoint"
                    );
                    break;
                }
            }
        }
        self.publish();
        Ok(())
    }
}

/// Counts the records the target got after the checkpoint was written: they are about to be written again.
async fn count_duplicates(ctx: &TaskContext, position: &Position) {
    let Some(next_target) = position.next_target_offset else { return };
    match ctx.target.end_offset(&ctx.spec.target_topic, ctx.spec.id.partition).await {
        Ok(end) if end > next_target => {
            let duplicates = ctx.progress.uncounted_duplicates(next_target, end);
            if duplicates == 0 {
                return;
            }
            ctx.metrics.duplicates.inc_by(duplicates as u64);
            info!(
                task = %ctx.spec.id,
                duplicates,
                "target holds records acknowledged after the last checkpoint; they will be written again"
            );
        }
        Ok(_) => {}
        Err(error) => warn!(task = %ctx.spec.id, %error, "cannot read the target end offset to count duplicates"),
    }
}

/// Runs the task until `stop` fires (returns `Ok`) or a record cannot be replicated (returns the error).
pub async fn run(ctx: TaskContext, stop: CancellationToken) -> Result<(), TaskError> {
    let position = ctx.progress.position();
    count_duplicates(&ctx, &position).await;
    let (topic, partition) = (ctx.spec.id.topic.clone(), ctx.spec.id.partition);
    let queue = ctx
        .source
        .attach(&topic, partition, position.next_source_offset)
        .map_err(|e| TaskError::Attach(Box::new(e)))?;
    let mut replication = Replication {
        ctx: &ctx,
        position,
        in_flight: VecDeque::new(),
        last_acked_timestamp_ms: None,
        cautious: ctx.cautious_start,
        unpublished_records: 0,
        unpublished_bytes: 0,
        latency: ctx.metrics.latency.local(),
    };
    let result = match replication.replicate(&queue, &stop).await {
        Ok(()) => replication.drain().await,
        Err(error) => {
            // Records sent before the refused one may still be acknowledged: account for them so the position
            // reaches the refused record (a local refusal happens while earlier records are in flight).
            let _ = replication.drain().await;
            Err(error)
        }
    };
    ctx.source.detach(&topic, partition);
    drop(queue);
    result
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::FutureProducer;
    use rdkafka::ClientConfig;

    use super::*;
    use crate::config::ClusterConfig;
    use crate::metrics::Metrics;
    use crate::progress::{SyncPoint, TaskId};

    fn cluster(bootstrap: &str) -> ClusterConfig {
        ClusterConfig { bootstrap_servers: bootstrap.to_owned(), region: None, client: BTreeMap::new() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_task_loop_replicates_in_order_and_stops_with_everything_acknowledged() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("orders", 1, 1).unwrap();
        mock.create_topic("remote.orders", 1, 1).unwrap();
        let bootstrap = mock.bootstrap_servers();
        let feeder: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        for seq in 0..200 {
            let key = format!("k{seq}");
            let value = format!("v{seq}");
            let record = FutureRecord::to("orders").partition(0).key(&key).payload(&value);
            feeder.send(record, Duration::from_secs(5)).await.unwrap();
        }

        let metrics = Metrics::new(false);
        let id = TaskId::new("flow", "orders", 0);
        let progress = Arc::new(TaskProgress::new(Position::starting_at(0)));
        let ctx = TaskContext {
            spec: TaskSpec { id: id.clone(), target_topic: "remote.orders".to_owned(), resume: None },
            source: Arc::new(SourceConsumer::new("flow", "mock", &cluster(&bootstrap), &metrics).unwrap()),
            target: TargetProducer::new("mock", &cluster(&bootstrap), &metrics).unwrap(),
            throttle: None,
            metrics: metrics.task("flow", "orders", 0),
            progress: progress.clone(),
            provenance: None,
            drain_timeout: Duration::from_secs(5),
            cautious_start: false,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(ctx, stop.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while progress.position().next_source_offset < 200 {
            assert!(tokio::time::Instant::now() < deadline, "stalled at {:?}", progress.position());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        task.await.unwrap().unwrap();

        let position = progress.position();
        assert_eq!(position.next_source_offset, 200);
        assert_eq!(position.next_target_offset, Some(200));
        assert_eq!(position.sync_points, vec![SyncPoint::new(0, 0)]);
        assert_eq!(metrics.task("flow", "orders", 0).records.get(), 200);
    }
}

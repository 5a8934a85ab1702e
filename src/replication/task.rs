//! The per-partition task: fetch from its partition queue, pass the throttle, produce to the same partition of the
//! target topic, and advance its position on acknowledgements.
//!
//! Invariant: the position moves only over records the target acknowledged (or that the task deliberately does
//! not replicate), in source-offset order. A rejected record stops the task before the position passes it, so
//! nothing is lost silently; the supervisor restarts the task from its checkpoint. Under exactly-once delivery the
//! position moves only over records whose transaction committed ([`crate::replication::transaction`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::ops::metrics::TaskMetrics;
use crate::replication::ledger::{Breach, Fate, Ledger, Pending};
use crate::replication::progress::{Position, TaskProgress, TaskState};
use crate::replication::source::{PartitionQueue, SourceConsumer, SourceError};
use crate::replication::target::{Ack, AckSink, TargetProducer, TargetRecord};
use crate::replication::throttle::Throttle;
use crate::replication::transaction::{Enlistment, Entry, FlowTransactions, TransactionError};
use crate::topics::discovery::TaskSpec;
use crate::topics::identity::TopicId;
use crate::topics::naming::PROVENANCE_HEADER;

mod passthrough;
pub use passthrough::{PassThroughClusters, MAX_IN_FLIGHT_BATCHES};

/// Records a task may have sent but not yet seen acknowledged. With acknowledgements arriving every few
/// milliseconds this keeps a partition at full speed; more only costs memory (docs/benchmarks.md).
pub const MAX_IN_FLIGHT_RECORDS: usize = 5_000;
/// Bytes (keys, values and headers) a task may have sent but not yet seen acknowledged; a single larger record is
/// still sent, alone.
pub const MAX_IN_FLIGHT_BYTES: usize = 2 << 20;
/// Under exactly-once, records a task may hold in open transactions (acknowledged or not); when reached, the task
/// asks its bucket to commit early. An acknowledged record costs only its bookkeeping here, not its payload.
pub const MAX_UNCOMMITTED_RECORDS: usize = 50_000;
/// Under exactly-once, bytes a task may hold in open transactions: bounds a transaction's size per partition.
pub const MAX_UNCOMMITTED_BYTES: usize = 16 << 20;

/// How long to wait before retrying a send the full producer queue refused, when nothing of this task is in flight.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// How many records a task forwards from its queue in one go before it looks at acknowledgements again.
const BURST: usize = 1024;

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
    /// The source offsets the target refused in the previous run, if it failed so: they are sent one at a time
    /// (under exactly-once, the first only after everything before it committed), so the retry names the very
    /// record the target refuses and rewrites nothing behind it.
    pub refused: Option<Refused>,
    /// Set for exactly-once delivery: the flow's transactional buckets.
    pub transactions: Option<Arc<FlowTransactions>>,
    /// Set for batch pass-through (`flows[].passthrough`): the clusters the task fetches from and produces to by
    /// itself, instead of through the flow's consumer and the target's producer.
    pub passthrough: Option<Arc<PassThroughClusters>>,
}

/// Source offsets `first..=last` the target refused together (Kafka refuses whole batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// First refused offset.
    pub first: i64,
    /// Last refused offset.
    pub last: i64,
}

/// Why a task stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The source partition could not be assigned, or its offsets could not be read.
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
        /// Last source offset refused with it (the rest of its batch).
        through: i64,
        /// Kafka's error (boxed to keep the hot path's `Result` small).
        error: Box<KafkaError>,
    },
    /// Acknowledgements broke the per-partition order the position relies on; the position stays where the order
    /// last held and the task restarts from its checkpoint.
    #[error("acknowledgements from target cluster {cluster} out of order (target topic {target_topic}, partition {partition}): {detail}")]
    Unordered {
        /// Target cluster alias.
        cluster: String,
        /// Target topic.
        target_topic: String,
        /// Partition.
        partition: i32,
        /// What was seen.
        detail: String,
    },
    /// The source partition ends before the task's position: it was truncated (an unclean leader election), or
    /// the topic was recreated on a cluster that does not report topic ids. Reading on from the old position would
    /// skip records, so the task waits.
    #[error(
        "source partition {topic}[{partition}] ends at offset {end}, before this task's position {position}: the \
         partition was truncated (unclean leader election) or the topic recreated without ferry seeing a new topic \
         id; its checkpoint no longer applies (delete it to replicate the partition from its start)"
    )]
    SourceBehindPosition {
        /// Source topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The partition's end offset.
        end: i64,
        /// The task's next source offset.
        position: i64,
    },
    /// The target partition ends before what the task's position says it holds: its topic was deleted and
    /// recreated, or it lost acknowledged records. Writing on would leave a gap or put records out of order.
    #[error(
        "target partition {target_topic}[{partition}] on cluster {cluster} ends at offset {end}, before offset \
         {expected} that this task's position says it reached: the target topic was deleted and recreated, or lost \
         acknowledged records (unclean leader election); the task waits rather than write after a gap (delete its \
         checkpoint to replicate the partition again from the source's log start)"
    )]
    TargetBehindPosition {
        /// Target cluster alias.
        cluster: String,
        /// Target topic.
        target_topic: String,
        /// Partition.
        partition: i32,
        /// The target partition's end offset.
        end: i64,
        /// The next target offset the position recorded.
        expected: i64,
    },
    /// The source topic was deleted and created again under the same name while the task read it; the task starts
    /// over, and its next run replicates the new topic from its beginning.
    #[error(
        "source topic {topic} on cluster {cluster} was deleted and created again (topic id {before} is now {now})"
    )]
    SourceTopicRecreated {
        /// Source cluster alias.
        cluster: String,
        /// Source topic.
        topic: String,
        /// The id the task's position belongs to.
        before: TopicId,
        /// The topic's id now.
        now: TopicId,
    },
    /// Pass-through: the target refused a batch; the task's position stays before it.
    #[error(
        "target cluster {cluster} refused the batch of source offsets {first}..={through} (target topic \
         {target_topic}, partition {partition}): {error}{detail}"
    )]
    BatchRefused {
        /// Target cluster alias.
        cluster: String,
        /// Target topic.
        target_topic: String,
        /// Partition.
        partition: i32,
        /// First source offset of the batch.
        first: i64,
        /// Last source offset of the batch.
        through: i64,
        /// Kafka's error.
        error: kafka_protocol::error::ResponseError,
        /// The broker's message, if it gave one.
        detail: String,
        /// Whether a new run (with a new producer id) can help.
        retriable: bool,
    },
    /// Pass-through: the source refused a fetch, a batch cannot be copied, or no leader was reachable for too long.
    #[error("pass-through of source partition {topic}[{partition}]: {detail}")]
    PassThrough {
        /// Source topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// What happened.
        detail: String,
        /// Whether restarting the task can help.
        retriable: bool,
    },
    /// Exactly-once delivery cannot go on for now (the target refuses transactions, a transaction aborted, the
    /// producer was fenced); the task starts over from the committed position.
    #[error(transparent)]
    Transaction(Box<TransactionError>),
}

impl From<TransactionError> for TaskError {
    fn from(error: TransactionError) -> Self {
        TaskError::Transaction(Box::new(error))
    }
}

impl TaskError {
    /// Whether restarting the task can help without an operator changing something.
    pub fn is_retriable(&self) -> bool {
        match self {
            TaskError::Rejected { error, .. } => crate::kafka::is_retriable(error),
            TaskError::Attach(_)
            | TaskError::Unordered { .. }
            | TaskError::Transaction(_)
            | TaskError::SourceTopicRecreated { .. } => true,
            TaskError::BatchRefused { retriable, .. } | TaskError::PassThrough { retriable, .. } => *retriable,
            TaskError::SourceBehindPosition { .. } | TaskError::TargetBehindPosition { .. } => false,
        }
    }
}

/// Permission to add a record to the task's transaction (empty without exactly-once), held until it is tracked.
struct Admitted(Option<Entry>);

impl Admitted {
    fn epoch(&self) -> u64 {
        self.0.as_ref().map_or(0, |entry| entry.epoch)
    }
}

struct Replication<'a> {
    ctx: &'a TaskContext,
    position: Position,
    /// What the task took up and has not accounted for in `position` yet.
    ledger: Ledger,
    /// Where the producer leaves this task's acknowledgements.
    sink: Arc<AckSink>,
    /// Acknowledgements taken from the sink (the buffer is handed back to the sink's delivery thread).
    acks: Vec<Ack>,
    /// What the last settle accounted for (the buffer is reused), for the counters.
    settled: Vec<Pending>,
    /// Set for exactly-once delivery: the task's place in its transactional bucket.
    transaction: Option<Enlistment>,
    /// Whether the log already said that the consumer delivered an offset the task had taken up (said once a run).
    stale_fetch_reported: bool,
    last_acked_timestamp_ms: Option<i64>,
    /// Acknowledged records and bytes not yet added to the shared counters. All tasks of a topic share one
    /// counter (and all tasks of a flow one latency histogram), so per-record updates would contend across
    /// threads; they are added once per batch of acknowledgements, in `publish`.
    unpublished_records: u64,
    unpublished_bytes: u64,
    /// Latency observations not yet flushed into the flow's histogram (also in `publish`).
    latency: prometheus::local::LocalHistogram,
    /// The ids of the flow's source topics, to notice this task's topic deleted and created again.
    source_topic_ids: watch::Receiver<BTreeMap<String, TopicId>>,
}

impl Replication<'_> {
    fn has_room(&self) -> bool {
        let next = self.next_fetch();
        if let Some(refused) = self.ctx.refused.filter(|refused| (refused.first..=refused.last).contains(&next)) {
            // One at a time; under exactly-once the first refused record goes into a transaction of its own.
            let committed_first = self.transaction.is_none() || next != refused.first || self.ledger.pending_len() == 0;
            return self.ledger.in_flight() == 0 && committed_first;
        }
        if self.transaction.is_some() {
            return self.ledger.in_flight() < MAX_IN_FLIGHT_RECORDS
                && self.ledger.pending_len() < MAX_UNCOMMITTED_RECORDS
                && self.ledger.pending_bytes() < MAX_UNCOMMITTED_BYTES;
        }
        self.ledger.pending_len() < MAX_IN_FLIGHT_RECORDS && self.ledger.pending_bytes() < MAX_IN_FLIGHT_BYTES
    }

    /// The producer this task writes through: its bucket's transactional one, or the target cluster's shared one.
    fn producer(&self) -> &TargetProducer {
        self.transaction.as_ref().map_or(&self.ctx.target, Enlistment::producer)
    }

    /// Adds a record to `pending` under an admission, and tells the bucket how far the task's transaction reaches.
    fn track_admitted(&mut self, admitted: Admitted, mut record: Pending) {
        record.epoch = admitted.epoch();
        self.ledger.track(record);
        if let (Some(transaction), Some(entry)) = (&self.transaction, &admitted.0) {
            transaction.advance(entry, self.next_fetch());
        }
    }

    /// The newest transaction whose records are on the target for good (every record, without exactly-once).
    fn committed_epoch(&self) -> Result<u64, TaskError> {
        match &self.transaction {
            None => Ok(u64::MAX),
            Some(transaction) => Ok(transaction.committed_epoch()?),
        }
    }

    /// The source offset the task reads next: after the last offset it took up (or, with nothing pending, its
    /// position).
    fn next_fetch(&self) -> i64 {
        self.ledger.next_fetch(&self.position)
    }

    fn rejected(&self, offset: i64, through: i64, error: KafkaError) -> TaskError {
        TaskError::Rejected {
            cluster: self.ctx.target.alias().to_owned(),
            target_topic: self.ctx.spec.target_topic.clone(),
            partition: self.ctx.spec.id.partition,
            offset,
            through,
            error: Box::new(error),
        }
    }

    /// The task error for a breach of the ledger's accounting.
    fn breached(&self, breach: Breach) -> TaskError {
        match breach {
            Breach::Refused { offset, through, error } => self.rejected(offset, through, error),
            Breach::Unordered(detail) => TaskError::Unordered {
                cluster: self.ctx.target.alias().to_owned(),
                target_topic: self.ctx.spec.target_topic.clone(),
                partition: self.ctx.spec.id.partition,
                detail,
            },
        }
    }

    /// Accounts for the acknowledgements taken from the sink and for the skipped records behind them (under
    /// exactly-once, those of committed transactions), then publishes the position once.
    fn settle(&mut self) -> Result<(), TaskError> {
        self.ledger.receive(self.acks.drain(..));
        let result = match self.committed_epoch() {
            Ok(committed) => self
                .ledger
                .settle(&mut self.position, committed, &mut self.settled)
                .map_err(|breach| self.breached(breach)),
            // The transaction aborted: a record the target refused in it is the reason worth reporting.
            Err(aborted) => Err(self.ledger.refusal(&self.position).map_or(aborted, |breach| self.breached(breach))),
        };
        self.count_settled();
        self.publish();
        result
    }

    /// Accounts for skipped records at the front (the source moved on without producing anything).
    fn settle_skipped(&mut self) -> Result<(), TaskError> {
        let committed = self.committed_epoch()?;
        self.ledger.settle_skipped(&mut self.position, committed, &mut self.settled);
        self.count_settled();
        Ok(())
    }

    /// Adds what the last settle accounted for to the task's counters (published in `publish`).
    fn count_settled(&mut self) {
        let now = now_ms();
        for record in self.settled.drain(..) {
            match record.fate {
                Fate::Produced => {
                    self.unpublished_records += 1;
                    self.unpublished_bytes += record.bytes as u64;
                    if let Some(timestamp_ms) = record.timestamp_ms {
                        self.latency.observe((now - timestamp_ms).max(0) as f64 / 1000.0);
                        self.last_acked_timestamp_ms = Some(timestamp_ms);
                    }
                }
                Fate::SkippedLoop => self.ctx.metrics.skipped_loop.inc(),
                Fate::Lost { .. } | Fate::BeforeFirstRead => {}
            }
        }
    }

    fn publish(&mut self) {
        if self.unpublished_records > 0 {
            self.ctx.metrics.records.inc_by(self.unpublished_records);
            self.ctx.metrics.bytes.inc_by(self.unpublished_bytes);
            (self.unpublished_records, self.unpublished_bytes) = (0, 0);
        }
        self.latency.flush();
        if self.ledger.pending_len() == 0 {
            self.ctx.progress.mark_idle(now_ms());
        }
        let id = &self.ctx.spec.id;
        if let Some(end) = self.ctx.source.end_offset(&id.topic, id.partition) {
            self.position.source_end = Some(end);
        }
        let oldest_unacked = self.ledger.front().and_then(|record| record.timestamp_ms);
        self.ctx.progress.publish(&self.position, oldest_unacked, self.last_acked_timestamp_ms);
    }

    /// Produces one source record (or skips it). Returns `false` when `stop` fired before the record was handed
    /// over.
    async fn forward(&mut self, message: &BorrowedMessage<'_>, stop: &CancellationToken) -> Result<bool, TaskError> {
        let offset = message.offset();
        let next = self.next_fetch();
        if offset < next {
            // Taken up already: a fetch from before the partition was last assigned. Written again, it would land
            // after records that follow it in the source.
            if !self.stale_fetch_reported {
                warn!(task = %self.ctx.spec.id, offset, next, "the source consumer delivered a record this task already took up; dropped");
                self.stale_fetch_reported = true;
            }
            return Ok(true);
        }
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
                let Some(admitted) = admit(&self.transaction, stop).await? else { return Ok(false) };
                self.track_admitted(
                    admitted,
                    Pending { offset, epoch: 0, timestamp_ms, bytes, fate: Fate::SkippedLoop },
                );
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

        let mut record: TargetRecord<'_> = BaseRecord::with_opaque_to(&self.ctx.spec.target_topic, self.sink.clone())
            .partition(self.ctx.spec.id.partition);
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
            let Some(admitted) = admit(&self.transaction, stop).await? else { return Ok(false) };
            match self.producer().send(record) {
                Ok(()) => {
                    self.track_admitted(
                        admitted,
                        Pending { offset, epoch: 0, timestamp_ms, bytes, fate: Fate::Produced },
                    );
                    return Ok(true);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    drop(admitted);
                    record = returned;
                    // The shared producer is full: wait for room, accounting for our own acknowledgements meanwhile.
                    if self.ledger.unacknowledged() == 0 {
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => return Ok(false),
                            _ = tokio::time::sleep(QUEUE_FULL_BACKOFF) => {}
                        }
                    } else {
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => return Ok(false),
                            () = self.sink.take(&mut self.acks) => self.settle()?,
                        }
                    }
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition), returned))
                    if unknown_partition_retries < UNKNOWN_PARTITION_RETRIES =>
                {
                    // A partition discovery just added: the shared producer's metadata predates it.
                    drop(admitted);
                    record = returned;
                    unknown_partition_retries += 1;
                    if let Err(error) = self.producer().refresh_metadata(&self.ctx.spec.target_topic).await {
                        warn!(task = %self.ctx.spec.id, %error, "cannot refresh target metadata");
                    }
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(UNKNOWN_PARTITION_BACKOFF) => {}
                    }
                }
                Err((error, _)) => return Err(self.rejected(offset, offset, error)),
            }
        }
    }

    async fn replicate(&mut self, queue: &PartitionQueue, stop: &CancellationToken) -> Result<(), TaskError> {
        self.check_source_topic_id()?;
        let mut records = queue.stream();
        loop {
            let has_room = self.has_room();
            if let Some(transaction) = self.transaction.as_ref().filter(|_| !has_room) {
                // The window is full of records waiting for their transaction: commit now rather than at the interval.
                transaction.request_commit();
            }
            let awaiting_acks = self.ledger.in_flight() > 0;
            tokio::select! {
                // Acknowledgements and commits first: they free room and move the position.
                biased;
                () = self.sink.take(&mut self.acks), if awaiting_acks => self.settle()?,
                () = transaction_changed(&mut self.transaction) => self.settle()?,
                () = topic_ids_changed(&mut self.source_topic_ids) => self.check_source_topic_id()?,
                _ = stop.cancelled() => return Ok(()),
                received = records.next(), if has_room => {
                    self.ctx.progress.mark_busy();
                    let mut received = received.expect("librdkafka message streams never end");
                    // Forward what the queue already holds without going back to the scheduler for each record.
                    // A record is taken from the queue only once it will be forwarded in this burst.
                    let mut forwarded = 0;
                    loop {
                        match received {
                            Ok(message) => {
                                if !self.forward(&message, stop).await? {
                                    return Ok(());
                                }
                            }
                            Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) => {
                                let Some(from) = self.account_deleted_records(self.next_fetch(), stop).await? else {
                                    return Ok(());
                                };
                                let id = &self.ctx.spec.id;
                                self.ctx
                                    .source
                                    .restart_at(&id.topic, id.partition, from)
                                    .map_err(|error| TaskError::Attach(Box::new(error)))?;
                            }
                            Err(error) => {
                                warn!(task = %self.ctx.spec.id, %error, "source partition error; librdkafka retries");
                            }
                        }
                        forwarded += 1;
                        if forwarded == BURST || !self.has_room() {
                            break;
                        }
                        received = match records.next().now_or_never() {
                            Some(next) => next.expect("librdkafka message streams never end"),
                            None => break,
                        };
                    }
                    if self.ledger.front().is_some_and(|record| !record.produced()) {
                        self.settle()?;
                    }
                },
            }
        }
    }

    /// The source no longer has the offset `next` the task reads next. Below the partition's log start, the records in
    /// between were deleted before the task read them (retention overtook replication, or `DeleteRecords`): they
    /// are counted in `ferry_records_lost_total`, logged with their range and passed in the position like skipped
    /// offsets (a group positioned among them translates to the first record after them); then the task reads on
    /// from the log start. A task that never had a record acknowledged starts at the log start without counting:
    /// ferry never saw what was deleted before it started. Past the partition's end, the task stops and waits.
    /// Returns the offset to read on from; `None` when `stop` fired first.
    async fn account_deleted_records(&mut self, next: i64, stop: &CancellationToken) -> Result<Option<i64>, TaskError> {
        let id = &self.ctx.spec.id;
        let (log_start, end) =
            self.ctx.source.watermarks(&id.topic, id.partition).map_err(|error| TaskError::Attach(Box::new(error)))?;
        if next > end {
            // Most likely the topic was deleted and created again, before the periodic id check noticed.
            if let (Some(now), Some(before)) =
                (self.ctx.source.topic_id(&id.topic).await, self.position.source_topic_id.as_ref())
            {
                if now != *before {
                    return Err(TaskError::SourceTopicRecreated {
                        cluster: self.ctx.source.alias().to_owned(),
                        topic: id.topic.to_string(),
                        before: before.clone(),
                        now,
                    });
                }
            }
            return Err(TaskError::SourceBehindPosition {
                topic: id.topic.to_string(),
                partition: id.partition,
                end,
                position: next,
            });
        }
        if log_start > next {
            let Some(admitted) = admit(&self.transaction, stop).await? else { return Ok(None) };
            let never_replicated = self.position.next_target_offset.is_none() && self.ledger.pending_len() == 0;
            let fate = if never_replicated {
                info!(task = %id, log_start, "the source partition starts at its log start offset; replicating from there");
                Fate::BeforeFirstRead
            } else {
                let lost = log_start - next;
                self.ctx.metrics.lost_source_retention.inc_by(u64::try_from(lost).unwrap_or(0));
                warn!(
                    task = %id,
                    first_lost = next,
                    last_lost = log_start - 1,
                    lost,
                    "the source deleted records before ferry copied them (retention overtook replication); \
                     counted in ferry_records_lost_total"
                );
                Fate::Lost { first: next }
            };
            self.track_admitted(
                admitted,
                Pending { offset: log_start - 1, epoch: 0, timestamp_ms: None, bytes: 0, fate },
            );
            self.settle_skipped()?;
        }
        Ok(Some(log_start.max(next)))
    }

    /// Ends the task when its source topic now has another id than the one its position belongs to: the topic was
    /// deleted and created again, and the next run starts the new topic from its beginning (see [`bind_to_source`]).
    fn check_source_topic_id(&mut self) -> Result<(), TaskError> {
        let id = &self.ctx.spec.id;
        let Some(now) = self.source_topic_ids.borrow_and_update().get(&*id.topic).cloned() else { return Ok(()) };
        match &self.position.source_topic_id {
            Some(before) if *before != now => Err(TaskError::SourceTopicRecreated {
                cluster: self.ctx.source.alias().to_owned(),
                topic: id.topic.to_string(),
                before: before.clone(),
                now,
            }),
            Some(_) => Ok(()),
            None => {
                self.position.source_topic_id = Some(now);
                Ok(())
            }
        }
    }

    /// Whether records wait for the target: acknowledgements, and under exactly-once also commits.
    fn unsettled(&self) -> bool {
        if self.transaction.is_some() {
            self.ledger.pending_len() > 0
        } else {
            self.ledger.unacknowledged() > 0
        }
    }

    /// Waits for what is in flight, so the last checkpoint covers it. Under exactly-once it waits up to the drain
    /// timeout for the commit of the task's records (an uncommitted transaction is aborted or fenced, never
    /// delivered later). Under at-least-once it waits until the producer has resolved every record it holds for
    /// the task, however long that takes: records left queued would be delivered later, behind the back of the
    /// partition's next owner, out of order and uncounted. When the whole member stops, the supervisor ends the
    /// wait at the drain timeout and the member purges its producers before writing its final checkpoint.
    async fn drain(&mut self) -> Result<(), TaskError> {
        if !self.ledger.stopped() {
            self.settle()?;
            if let Some(transaction) = &self.transaction {
                transaction.request_commit();
            }
            let mut deadline = tokio::time::Instant::now() + self.ctx.drain_timeout;
            while self.unsettled() {
                let awaiting_acks = self.ledger.in_flight() > 0;
                let settled = tokio::time::timeout_at(deadline, async {
                    tokio::select! {
                        () = self.sink.take(&mut self.acks), if awaiting_acks => {}
                        () = transaction_changed(&mut self.transaction) => {}
                    }
                });
                match settled.await {
                    Ok(()) => self.settle()?,
                    Err(_) if self.transaction.is_some() => {
                        warn!(
                            task = %self.ctx.spec.id,
                            unsettled = self.ledger.pending_len(),
                            "stopping before the transaction holding the task's last records committed; they are \
                             committed with their position, or aborted and replicated again"
                        );
                        break;
                    }
                    Err(_) => {
                        warn!(
                            task = %self.ctx.spec.id,
                            unacknowledged = self.ledger.unacknowledged(),
                            "still waiting for the target to acknowledge the task's last records; the partition is \
                             handed over once they are resolved, so none is delivered behind its next owner's back"
                        );
                        deadline += self.ctx.drain_timeout;
                    }
                }
            }
        }
        self.publish();
        Ok(())
    }
}

/// Refuses to go on when the target partition ends before the position's next target offset (see
/// [`TaskError::TargetBehindPosition`]).
fn check_target_end(ctx: &TaskContext, position: &Position, end: i64) -> Result<(), TaskError> {
    match position.next_target_offset {
        Some(expected) if end < expected => Err(TaskError::TargetBehindPosition {
            cluster: ctx.target.alias().to_owned(),
            target_topic: ctx.spec.target_topic.clone(),
            partition: ctx.spec.id.partition,
            end,
            expected,
        }),
        _ => Ok(()),
    }
}

/// Checks the target partition against the position, then counts the records the target got after the checkpoint
/// was written: they are about to be written again.
async fn check_target_and_count_duplicates(ctx: &TaskContext, position: &Position) -> Result<(), TaskError> {
    let Some(next_target) = position.next_target_offset else { return Ok(()) };
    match ctx.target.end_offset(&ctx.spec.target_topic, ctx.spec.id.partition).await {
        Ok(end) if end > next_target => {
            let duplicates = ctx.progress.uncounted_duplicates(next_target, end);
            if duplicates > 0 {
                ctx.metrics.duplicates.inc_by(duplicates as u64);
                info!(
                    task = %ctx.spec.id,
                    duplicates,
                    "target holds records acknowledged after the last checkpoint; they will be written again"
                );
            }
        }
        Ok(end) => check_target_end(ctx, position, end)?,
        Err(error) => warn!(task = %ctx.spec.id, %error, "cannot read the target end offset to count duplicates"),
    }
    Ok(())
}

/// Waits until the task may add to its transaction (at once without exactly-once). `None` when `stop` fired first.
// A free function: a future borrowing the whole task loop would not be `Send` (its local histogram is not `Sync`).
async fn admit(transaction: &Option<Enlistment>, stop: &CancellationToken) -> Result<Option<Admitted>, TaskError> {
    let Some(transaction) = transaction else { return Ok(Some(Admitted(None))) };
    tokio::select! {
        biased;
        _ = stop.cancelled() => Ok(None),
        entry = transaction.enter() => Ok(Some(Admitted(Some(entry?)))),
    }
}

/// Waits for the next change to the ids of the flow's source topics.
async fn topic_ids_changed(ids: &mut watch::Receiver<BTreeMap<String, TopicId>>) {
    if ids.changed().await.is_err() {
        // The task holds the flow's source consumer, which holds the sender: never while the task runs.
        std::future::pending::<()>().await;
    }
}

/// Waits for the next commit or abort of the task's bucket; never without exactly-once.
async fn transaction_changed(transaction: &mut Option<Enlistment>) {
    match transaction {
        Some(transaction) => transaction.changed().await,
        None => std::future::pending().await,
    }
}

/// Joins the task's transactional bucket and makes the position the one committed with the records: the target
/// may hold committed transactions the checkpoint store has not seen (a crash right after a commit). `None` when
/// `stop` fired first.
async fn enlist(
    ctx: &TaskContext,
    transactions: &FlowTransactions,
    position: &mut Position,
    source_recreated: bool,
    stop: &CancellationToken,
) -> Result<Option<Enlistment>, TaskError> {
    let enlistment = tokio::select! {
        biased;
        _ = stop.cancelled() => return Ok(None),
        enlistment = transactions.enlist(&ctx.spec, position.source_topic_id.clone(), source_recreated) => enlistment?,
    };
    check_target_end(ctx, position, enlistment.target_end)?;
    if let Some(committed) = enlistment
        .committed
        .as_ref()
        .map(|committed| committed.offset)
        .filter(|offset| *offset > position.next_source_offset)
    {
        info!(
            task = %ctx.spec.id,
            checkpoint = position.next_source_offset,
            committed,
            bucket = enlistment.bucket(),
            "the target's committed transactions reach past the checkpoint; resuming where they end"
        );
        position.resume_after_unrecorded(committed, enlistment.target_end);
        ctx.progress.publish(position, None, None);
    }
    Ok(Some(enlistment))
}

/// Binds the position to the target the task writes to. A position that belongs to another target (the flow's
/// `target` or `naming` changed) says nothing about the new one: the new target is filled from the source's
/// beginning (from its log start when older records are gone, which the new target never had).
fn bind_to_target(ctx: &TaskContext, position: &mut Position) {
    let target = format!("{}/{}", ctx.target.alias(), ctx.spec.target_topic);
    match &position.target {
        Some(bound) if *bound == target => return,
        Some(bound) => {
            info!(
                task = %ctx.spec.id,
                before = bound.as_str(),
                now = target.as_str(),
                "the flow writes to another target now; its position belongs to the old one: replicating the \
                 partition to the new target from the source's beginning"
            );
            let source_topic_id = position.source_topic_id.take();
            *position = Position::starting_at(0);
            position.source_topic_id = source_topic_id;
        }
        None => {}
    }
    position.target = Some(target);
    ctx.progress.publish(position, None, None);
}

/// Binds the position to the source topic's id. A position in a topic since deleted and created again under the
/// same name says nothing about the new topic: the new one is replicated from its beginning, and the records of the
/// old one the task saw but never copied are counted as lost. `true` when the position was dropped for that reason.
async fn bind_to_source(ctx: &TaskContext, position: &mut Position) -> bool {
    let id = &ctx.spec.id;
    // Unknown (the cluster cannot say now): the running task adopts the id once the flow's periodic check reads it.
    let Some(current) = ctx.source.topic_id(&id.topic).await else { return false };
    let recreated = match &position.source_topic_id {
        Some(bound) if *bound == current => return false,
        Some(bound) => {
            let never_copied = position.source_end.map_or(0, |end| (end - position.next_source_offset).max(0));
            ctx.metrics.lost_source_topic_recreated.inc_by(u64::try_from(never_copied).unwrap_or(0));
            warn!(
                task = %id,
                before = %bound,
                now = %current,
                position = position.next_source_offset,
                last_seen_end = position.source_end,
                never_copied,
                "the source topic was deleted and created again (its topic id changed): the old topic's position and \
                 sync points are dropped and the new topic is replicated from its beginning; records of the old topic \
                 never copied are counted in ferry_records_lost_total"
            );
            let target = position.target.take();
            *position = Position::starting_at(0);
            position.target = target;
            true
        }
        None => false,
    };
    position.source_topic_id = Some(current);
    ctx.progress.publish(position, None, None);
    recreated
}

/// Runs the task until `stop` fires (returns `Ok`) or a record cannot be replicated (returns the error).
pub async fn run(mut ctx: TaskContext, stop: CancellationToken) -> Result<(), TaskError> {
    // The cluster's current producer: the replacement, if a fatal error ended the one this task last used.
    ctx.target = ctx.target.current();
    let mut position = ctx.progress.position();
    bind_to_target(&ctx, &mut position);
    let source_recreated = bind_to_source(&ctx, &mut position).await;
    let transaction = match &ctx.transactions {
        Some(transactions) => match enlist(&ctx, transactions, &mut position, source_recreated, &stop).await? {
            Some(enlistment) => Some(enlistment),
            None => return Ok(()),
        },
        None => {
            check_target_and_count_duplicates(&ctx, &position).await?;
            None
        }
    };
    let mut replication = Replication {
        ctx: &ctx,
        position,
        ledger: Ledger::default(),
        settled: Vec::new(),
        stale_fetch_reported: false,
        sink: AckSink::new(),
        acks: Vec::new(),
        transaction,
        last_acked_timestamp_ms: None,
        unpublished_records: 0,
        unpublished_bytes: 0,
        latency: ctx.metrics.latency.local(),
        source_topic_ids: ctx.source.topic_ids(),
    };
    if let Some(clusters) = &ctx.passthrough {
        ctx.progress.set_state(TaskState::Running);
        return replication.pass_through(clusters, &stop).await;
    }
    let (topic, partition) = (ctx.spec.id.topic.clone(), ctx.spec.id.partition);
    let queue = ctx
        .source
        .attach(&topic, partition, replication.position.next_source_offset)
        .map_err(|e| TaskError::Attach(Box::new(e)))?;
    ctx.progress.set_state(TaskState::Running);
    let result = match replication.replicate(&queue, &stop).await {
        Ok(()) => replication.drain().await,
        Err(error) => {
            // Records sent before a record the producer refused locally may still be acknowledged: account for them
            // so the position reaches the refused record. After a refusal by the target nothing more is accounted.
            let _ = replication.drain().await;
            Err(error)
        }
    };
    ctx.source.detach(&topic, partition);
    drop(queue);
    if result.is_err() {
        // A fatal producer error fails every task of the cluster; the first to see it replaces the producer, so
        // their restarts do not run into the dead one again.
        ctx.target.replace_if_fatal();
    }
    result
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;

    use super::*;
    use crate::config::ClusterConfig;
    use crate::ops::metrics::Metrics;
    use crate::replication::progress::{SyncPoint, TaskId};

    fn cluster(bootstrap: &str) -> ClusterConfig {
        ClusterConfig { bootstrap_servers: bootstrap.to_owned(), region: None, client: BTreeMap::new() }
    }

    /// Several bursts' worth, so records at burst boundaries are covered.
    const RECORDS: i64 = 4 * BURST as i64 + 100;

    /// A mock cluster whose partition `orders[0]` holds [`RECORDS`] records, and an empty `remote.orders`.
    async fn mock_with_records() -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String) {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("orders", 1, 1).unwrap();
        mock.create_topic("remote.orders", 1, 1).unwrap();
        let bootstrap = mock.bootstrap_servers();
        let feeder: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        let sends = (0..RECORDS).map(|seq| {
            let (key, value) = (format!("k{seq}"), format!("v{seq}"));
            let feeder = &feeder;
            async move {
                let record = FutureRecord::to("orders").partition(0).key(&key).payload(&value);
                feeder.send(record, Duration::from_secs(5)).await.unwrap();
            }
        });
        futures::future::join_all(sends).await;
        (mock, bootstrap)
    }

    /// The context of the task of `orders[0]` on the mock cluster at `bootstrap`.
    fn mock_context(
        bootstrap: &str,
        metrics: &Metrics,
        progress: &Arc<TaskProgress>,
        transactions: Option<Arc<FlowTransactions>>,
    ) -> TaskContext {
        TaskContext {
            spec: TaskSpec {
                id: TaskId::new("flow", "orders", 0),
                target_topic: "remote.orders".to_owned(),
                resume: None,
            },
            source: Arc::new(SourceConsumer::new("flow", "mock", &cluster(bootstrap), metrics).unwrap()),
            target: TargetProducer::new("mock", &cluster(bootstrap), metrics).unwrap(),
            throttle: None,
            metrics: metrics.task("flow", "orders", 0),
            progress: progress.clone(),
            provenance: None,
            drain_timeout: Duration::from_secs(10),
            refused: None,
            transactions,
            passthrough: None,
        }
    }

    /// Runs the task until its position passes every record of the mock's partition, then stops it cleanly.
    async fn run_until_all_replicated(ctx: TaskContext, progress: &TaskProgress) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(ctx, stop.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while progress.position().next_source_offset < RECORDS {
            assert!(tokio::time::Instant::now() < deadline, "stalled at {:?}", progress.position());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_task_loop_replicates_in_order_and_stops_with_everything_acknowledged() {
        let (_mock, bootstrap) = mock_with_records().await;
        let metrics = Metrics::new(false);
        let progress = Arc::new(TaskProgress::new(Position::starting_at(0)));
        let ctx = mock_context(&bootstrap, &metrics, &progress, None);
        run_until_all_replicated(ctx, &progress).await;

        let position = progress.position();
        assert_eq!(position.next_source_offset, RECORDS);
        assert_eq!(position.next_target_offset, Some(RECORDS));
        assert_eq!(position.sync_points, vec![SyncPoint::new(0, 0)]);
        assert_eq!(metrics.task("flow", "orders", 0).records.get(), RECORDS as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fatal_producer_error_replaces_the_producer_and_the_task_resumes_from_its_position() {
        let (_mock, bootstrap) = mock_with_records().await;
        let metrics = Metrics::new(false);
        let progress = Arc::new(TaskProgress::new(Position::starting_at(0)));
        let ctx = mock_context(&bootstrap, &metrics, &progress, None);
        let reason = std::ffi::CString::new("injected by the test").unwrap();
        // SAFETY: the producer outlives the call; librdkafka copies the reason.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                rdkafka::producer::Producer::client(&**ctx.target.client()).native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
        let failed = run(ctx.clone(), CancellationToken::new()).await;
        assert!(matches!(failed, Err(TaskError::Rejected { .. })), "{failed:?}");
        assert_eq!(metrics.producer_rebuilds_of("mock").get(), 1, "the dead producer is replaced once");

        // The restarted task (same context, as the supervisor hands it) writes through the new producer.
        run_until_all_replicated(ctx, &progress).await;
        assert_eq!(progress.position().next_target_offset, Some(RECORDS));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_exactly_once_the_position_moves_only_over_committed_transactions() {
        let (_mock, bootstrap) = mock_with_records().await;
        let metrics = Metrics::new(false);
        let flow: crate::config::FlowConfig = serde_json::from_value(serde_json::json!({
            "name": "flow", "source": "mock", "target": "mock", "topics": { "include": ["orders"] },
            "delivery": "exactly-once", "exactly_once": { "buckets": 2, "commit_interval": "100ms" }
        }))
        .unwrap();
        let transactions = Arc::new(FlowTransactions::new(&flow, &cluster(&bootstrap), &metrics).unwrap());
        let progress = Arc::new(TaskProgress::new(Position::starting_at(0)));
        let ctx = mock_context(&bootstrap, &metrics, &progress, Some(transactions));
        let stop = CancellationToken::new();
        let mut task = tokio::spawn(run(ctx.clone(), stop.clone()));
        let committed = metrics.transactions_of("flow").committed;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut published = Vec::new();
        while progress.position().next_source_offset < RECORDS {
            if task.is_finished() {
                // As the supervisor would: a retriable failure (the mock's coordinator slow under a loaded machine)
                // starts the task again; anything else fails the test.
                let error = task.await.unwrap().expect_err("a task only ends by itself on an error");
                assert!(error.is_retriable(), "{error}");
                eprintln!("task failed, restarting: {error}");
                task = tokio::spawn(run(ctx.clone(), stop.clone()));
            }
            assert!(tokio::time::Instant::now() < deadline, "stalled at {:?}", progress.position());
            published.push((committed.get(), progress.position().next_source_offset));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        task.await.unwrap().unwrap();
        assert!(committed.get() >= 1, "records reached the position through a commit");
        assert!(
            published.iter().all(|(commits, offset)| *commits > 0 || *offset == 0),
            "the position moved before any transaction committed: {published:?}"
        );

        assert_eq!(progress.position().next_source_offset, RECORDS);
    }
}

//! The task's pass-through mode (`flows[].passthrough: true`): fetch record batches from the source partition's
//! leader and produce them to the target partition's leader as bytes, with ferry's own idempotent producer id.
//!
//! Invariant: the same as the per-record path's. Batches are taken up in source order and every record of a batch
//! is accounted for in the ledger, so the position, sync points and checkpoints pass a record only once the target
//! acknowledged its batch. A batch the target refuses stops the task before it; a resend after a lost connection
//! or a leader change carries the same producer id and sequence, so the broker writes it once. Batches are
//! pipelined only once the target partition acknowledged one of the producer's: before, it would take any sequence
//! as the first, and a batch behind a retriably refused one could land ahead of it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProduceRequest, ProduceResponse};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{topic_ids_changed, Replication, TaskError};
use crate::replication::ledger::{Fate, Pending};
use crate::wire::batch::{self, Batch, BatchError, ProducerStamp, Stamped};
use crate::wire::cluster::{init_producer_id, Cluster};
use crate::wire::connection::Connection;
use crate::wire::requests::{fetch_request, produce_request, FETCH_VERSION, PRODUCE_VERSION};
use crate::wire::WireError;

/// Produce requests (one batch each) a task keeps in flight. Over a long link a partition moves this many batches
/// per round trip, so small source batches need many: at 80 ms, 64 batches of 20 records carry 16,000 records/s.
/// The broker handles a connection's requests one after another, so order holds however many are in flight.
pub const MAX_IN_FLIGHT_BATCHES: usize = 64;
/// Bytes of batches a task keeps in flight (a single larger batch still goes, alone).
const MAX_IN_FLIGHT_BYTES: usize = 4 << 20;
/// A broker remembers a producer's last five batches per partition: after a lost connection, up to five unanswered
/// batches are sent again with their sequences (one the broker already has is answered with its first offset, not
/// written twice); with more, the run ends and the next one counts what the target got after the position as
/// duplicates.
const RESENDABLE_BATCHES: usize = 5;
/// Bytes fetched and not yet produced that a task holds before it fetches again. With one fetch of up to
/// [`PARTITION_MAX_BYTES`] in flight, a task holds at most this plus that besides its batches in flight, so a
/// member's memory stays bounded by its partition count when the target is slow.
const MAX_READY_BYTES: usize = 2 << 20;
/// `max_bytes` and `partition_max_bytes` of a fetch (one partition per fetch); a larger single batch still comes
/// whole (KIP-74). A task has one fetch in flight, so this is what a partition moves per round trip to the source:
/// with the source 80 ms away, 2 MiB kept 0.79 of the loopback rate and 4 MiB 1.2 (docs/benchmarks.md, runs P and R).
const PARTITION_MAX_BYTES: i32 = 4 << 20;
/// How long a fetch waits at the source for data: the per-record path's `fetch.wait.max.ms`.
const FETCH_MAX_WAIT_MS: i32 = 100;
/// How long the target waits for its replicas before answering a produce request (`acks=all`).
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// How long a request may go unanswered before its connection is taken as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);
/// The first wait after a failure to reach a leader; it doubles up to [`MAX_RETRY_BACKOFF`].
const FIRST_RETRY_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// How long the task keeps reconnecting on its own before it fails and the supervisor restarts (and reports) it.
const MAX_TROUBLE: Duration = Duration::from_secs(120);
/// How long after its last acknowledged batch the target partition is taken to still know ferry's producer; a
/// broker forgets an idle producer after `producer.id.expiration.ms`, a day by default.
const PRODUCER_REMEMBERED_FOR: Duration = Duration::from_secs(3600);

/// The two clusters of a pass-through flow.
#[derive(Debug)]
pub struct PassThroughClusters {
    /// Read from.
    pub source: Cluster,
    /// Written to.
    pub target: Cluster,
}

impl PassThroughClusters {
    fn alias(&self, side: Side) -> &str {
        match side {
            Side::Source => self.source.alias(),
            Side::Target => self.target.alias(),
        }
    }
}

/// A fetched batch waiting to be produced, and the first source offset of it the task has not taken up yet.
#[derive(Debug)]
struct Ready {
    batch: Batch,
    from: i64,
}

/// A produce request in flight: what to resend, and how many records its acknowledgement covers.
#[derive(Debug)]
struct Sent {
    batch: Stamped,
    records: i32,
}

/// What a fetch response left to do.
enum Fetched {
    Data,
    OutOfRange,
    Retry(String),
}

/// The task's connections and the batches between them.
struct Pipe {
    fetch: Option<Connection>,
    produce: Option<Connection>,
    /// ferry's producer on the target partition; a new one each run (the target fences nothing for it).
    producer: Option<ProducerStamp>,
    /// When the target last acknowledged a batch of `producer`. A partition that does not know the producer takes
    /// any sequence as its first, so a batch behind one answered with a retriable error (a leader not ready yet)
    /// could be written ahead of it; until the partition knows the producer, one batch goes at a time.
    acknowledged_at: Option<Instant>,
    next_sequence: i32,
    /// The next source offset to fetch.
    fetch_offset: i64,
    ready: VecDeque<Ready>,
    ready_bytes: usize,
    sent: VecDeque<Sent>,
    sent_bytes: usize,
    /// The source refused the fetch offset; handled once every fetched batch is taken up.
    out_of_range: bool,
    /// Since when the task has not reached the source's and the target's leader, and the next waits.
    trouble: [Trouble; 2],
    /// The task's fetch, its offset set before each send.
    fetch_request: FetchRequest,
    /// The task's produce request, sent before each batch.
    produce_request: ProduceRequest,
}

impl Pipe {
    fn new(ctx: &super::TaskContext, fetch_offset: i64) -> Self {
        let partition = ctx.spec.id.partition;
        let fetch_request = fetch_request(&ctx.spec.id.topic, partition, PARTITION_MAX_BYTES, FETCH_MAX_WAIT_MS, true);
        let produce_request = produce_request(&ctx.spec.target_topic, partition, PRODUCE_TIMEOUT_MS);
        Pipe {
            fetch: None,
            produce: None,
            producer: None,
            acknowledged_at: None,
            next_sequence: 0,
            fetch_offset,
            ready: VecDeque::new(),
            ready_bytes: 0,
            sent: VecDeque::new(),
            sent_bytes: 0,
            out_of_range: false,
            trouble: [Trouble::default(), Trouble::default()],
            fetch_request,
            produce_request,
        }
    }

    /// Whether the next ready batch may be sent now.
    fn has_room(&self) -> bool {
        !self.ready.is_empty()
            && (self.sent.is_empty()
                || (self.sent.len() < in_flight_limit(self.acknowledged_at, Instant::now())
                    && self.sent_bytes < MAX_IN_FLIGHT_BYTES))
    }

    fn fetching(&self) -> bool {
        self.fetch.as_ref().is_some_and(|connection| connection.in_flight() > 0)
    }

    /// When the oldest request of either connection has waited too long.
    fn request_deadline(&self) -> Option<Instant> {
        [&self.fetch, &self.produce]
            .into_iter()
            .filter_map(|connection| connection.as_ref()?.oldest_sent_at())
            .min()
            .map(|sent_at| sent_at + REQUEST_TIMEOUT)
    }

    /// A leader of `side` answered: its next trouble starts afresh.
    fn answered(&mut self, side: Side) {
        self.trouble[side as usize] = Trouble::default();
    }
}

/// How many batches may be in flight, given when the target partition last acknowledged one of the producer's.
fn in_flight_limit(acknowledged_at: Option<Instant>, now: Instant) -> usize {
    match acknowledged_at {
        Some(at) if now.saturating_duration_since(at) < PRODUCER_REMEMBERED_FOR => MAX_IN_FLIGHT_BATCHES,
        _ => 1,
    }
}

/// The cluster a connection goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source = 0,
    Target = 1,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// Since when one side's leader has not been reached, and the next wait.
#[derive(Debug)]
struct Trouble {
    since: Option<Instant>,
    backoff: Duration,
}

impl Default for Trouble {
    fn default() -> Self {
        Trouble { since: None, backoff: FIRST_RETRY_BACKOFF }
    }
}

/// Waits for the next response of `connection` (never, without one in flight).
async fn next_response<R: kafka_protocol::protocol::Request>(
    connection: &mut Option<Connection>,
) -> Result<R::Response, WireError> {
    match connection {
        Some(connection) if connection.in_flight() > 0 => connection.receive::<R>().await,
        _ => std::future::pending().await,
    }
}

/// Waits until `deadline` (never, without one).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Aborted transactions of one fetch response: which producers' transactional batches to drop (read_committed).
struct AbortedTransactions {
    /// `(first offset, producer id)`, by first offset.
    upcoming: VecDeque<(i64, i64)>,
    /// Producers whose transaction at the current batch aborted.
    open: HashSet<i64>,
}

impl AbortedTransactions {
    fn new(response: Option<&Vec<kafka_protocol::messages::fetch_response::AbortedTransaction>>) -> Self {
        let mut upcoming: Vec<(i64, i64)> =
            response.into_iter().flatten().map(|aborted| (aborted.first_offset, aborted.producer_id.0)).collect();
        upcoming.sort_unstable();
        AbortedTransactions { upcoming: upcoming.into(), open: HashSet::new() }
    }

    /// Whether `batch` is to be replicated: not a transaction marker, and not part of an aborted transaction.
    fn keeps(&mut self, batch: &Batch) -> bool {
        while self.upcoming.front().is_some_and(|(first, _)| *first <= batch.last_offset()) {
            let (_, producer) = self.upcoming.pop_front().expect("checked above");
            self.open.insert(producer);
        }
        if batch.is_control() {
            // The marker ends its producer's transaction: an aborted one is over, later batches are a new one.
            self.open.remove(&batch.producer_id());
            return false;
        }
        !(batch.is_transactional() && self.open.contains(&batch.producer_id()))
    }
}

impl Replication<'_> {
    /// Replicates by batches until `stop` fires, then waits (up to the drain timeout) for what is in flight.
    pub(super) async fn pass_through(
        &mut self,
        clusters: &Arc<PassThroughClusters>,
        stop: &CancellationToken,
    ) -> Result<(), TaskError> {
        self.check_source_topic_id()?;
        let mut pipe = Pipe::new(self.ctx, self.next_fetch());
        let result = self.pass_through_until_stopped(clusters, &mut pipe, stop).await;
        if result.is_ok() {
            // Batches already sent may still be acknowledged: account for them before the position is checkpointed.
            // After a refusal nothing behind the refused batch is written (its sequence is missing).
            self.drain_batches(&mut pipe).await?;
        }
        self.publish();
        result
    }

    async fn pass_through_until_stopped(
        &mut self,
        clusters: &PassThroughClusters,
        pipe: &mut Pipe,
        stop: &CancellationToken,
    ) -> Result<(), TaskError> {
        loop {
            if pipe.produce.is_none() && pipe.sent.len() > RESENDABLE_BATCHES {
                return Err(TaskError::PassThrough {
                    topic: self.ctx.spec.id.topic.to_string(),
                    partition: self.ctx.spec.id.partition,
                    detail: format!(
                        "the connection to the target partition's leader was lost with {} batches unanswered, more \
                         than a broker recognises when they are sent again: starting over from the position (what the \
                         target got after it is counted in ferry_duplicates_total)",
                        pipe.sent.len()
                    ),
                    retriable: true,
                });
            }
            if pipe.fetch.is_none() || pipe.produce.is_none() {
                if let Err((side, error)) = self.connect(clusters, pipe).await {
                    if !self.lost_connection(pipe, clusters, side, Failure::Connection(error.to_string()), stop).await?
                    {
                        return Ok(());
                    }
                    continue;
                }
            }
            if pipe.out_of_range && pipe.ready.is_empty() {
                let Some(from) = self.account_deleted_records(pipe.fetch_offset, stop).await? else { return Ok(()) };
                pipe.fetch_offset = from;
                pipe.out_of_range = false;
            }
            if !pipe.fetching() && !pipe.out_of_range && pipe.ready_bytes < MAX_READY_BYTES {
                pipe.fetch_request.topics[0].partitions[0].fetch_offset = pipe.fetch_offset;
                let connection = pipe.fetch.as_mut().expect("connected above");
                if let Err(error) = connection.send(&pipe.fetch_request, FETCH_VERSION).await {
                    let failure = Failure::Connection(error.to_string());
                    if !self.lost_connection(pipe, clusters, Side::Source, failure, stop).await? {
                        return Ok(());
                    }
                    continue;
                }
            }
            while pipe.has_room() {
                match self.send_next(pipe, stop).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(failure) => {
                        if !self.lost_connection(pipe, clusters, Side::Target, failure, stop).await? {
                            return Ok(());
                        }
                        break;
                    }
                }
            }
            if pipe.produce.is_none() {
                continue;
            }
            let deadline = pipe.request_deadline();
            let Pipe { fetch, produce, .. } = pipe;
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                () = topic_ids_changed(&mut self.source_topic_ids) => self.check_source_topic_id()?,
                response = next_response::<ProduceRequest>(produce) => {
                    if let Err(failure) = self.produced(pipe, response) {
                        if !self.lost_connection(pipe, clusters, Side::Target, failure, stop).await? {
                            return Ok(());
                        }
                    }
                }
                response = next_response::<FetchRequest>(fetch) => {
                    let failure = match response {
                        Ok(response) => match self.fetched(pipe, response)? {
                            Fetched::Data => {
                                pipe.answered(Side::Source);
                                continue;
                            }
                            Fetched::OutOfRange => {
                                pipe.out_of_range = true;
                                continue;
                            }
                            Fetched::Retry(why) => Failure::Connection(why),
                        },
                        Err(error) => Failure::Connection(error.to_string()),
                    };
                    if !self.lost_connection(pipe, clusters, Side::Source, failure, stop).await? {
                        return Ok(());
                    }
                }
                () = sleep_until(deadline) => {
                    let produce_oldest = pipe.produce.as_ref().and_then(Connection::oldest_sent_at);
                    let fetch_oldest = pipe.fetch.as_ref().and_then(Connection::oldest_sent_at);
                    let side = match (produce_oldest, fetch_oldest) {
                        (Some(produce), Some(fetch)) if produce <= fetch => Side::Target,
                        (Some(_), None) => Side::Target,
                        _ => Side::Source,
                    };
                    let failure = Failure::Connection(format!("no answer within {REQUEST_TIMEOUT:?}"));
                    if !self.lost_connection(pipe, clusters, side, failure, stop).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Connects to whichever leader the task has no connection to, and takes a producer id on the target.
    async fn connect(&mut self, clusters: &PassThroughClusters, pipe: &mut Pipe) -> Result<(), (Side, WireError)> {
        let (topic, partition) = (&*self.ctx.spec.id.topic, self.ctx.spec.id.partition);
        if pipe.fetch.is_none() {
            let failed = |error| (Side::Source, error);
            let leader = clusters.source.leader(topic, partition).await.map_err(failed)?;
            pipe.fetch = Some(clusters.source.connect(&leader.address).await.map_err(failed)?);
        }
        if pipe.produce.is_none() {
            let failed = |error| (Side::Target, error);
            let leader = clusters.target.leader(&self.ctx.spec.target_topic, partition).await.map_err(failed)?;
            let mut connection = clusters.target.connect(&leader.address).await.map_err(failed)?;
            if pipe.producer.is_none() {
                pipe.producer = Some(init_producer_id(&mut connection).await.map_err(failed)?);
            }
            // What was in flight on the lost connection goes again, in order, with the same sequences.
            for sent in &pipe.sent {
                connection
                    .send_with_records(&pipe.produce_request, PRODUCE_VERSION, &sent.batch.header, &sent.batch.records)
                    .await
                    .map_err(failed)?;
            }
            if !pipe.sent.is_empty() {
                info!(task = %self.ctx.spec.id, batches = pipe.sent.len(), broker = connection.broker(), "resent the batches in flight to the target partition's leader");
            }
            pipe.produce = Some(connection);
        }
        Ok(())
    }

    /// Ends the task on a task failure; on a connection failure drops `side`'s connection and waits before the next
    /// attempt. `false` when `stop` fired first.
    async fn lost_connection(
        &mut self,
        pipe: &mut Pipe,
        clusters: &PassThroughClusters,
        side: Side,
        failure: Failure,
        stop: &CancellationToken,
    ) -> Result<bool, TaskError> {
        let why = match failure {
            Failure::Task(error) => return Err(error),
            Failure::Connection(why) => why,
        };
        match side {
            Side::Source => pipe.fetch = None,
            Side::Target => pipe.produce = None,
        }
        self.wait_after_trouble(pipe, side, format!("cluster {}: {why}", clusters.alias(side)), stop).await
    }

    /// Waits the backoff after a failure to reach `side`'s leader; fails the task once that lasted too long.
    /// `false` when `stop` fired first.
    async fn wait_after_trouble(
        &mut self,
        pipe: &mut Pipe,
        side: Side,
        why: String,
        stop: &CancellationToken,
    ) -> Result<bool, TaskError> {
        let trouble = &mut pipe.trouble[side as usize];
        let since = *trouble.since.get_or_insert_with(Instant::now);
        if since.elapsed() > MAX_TROUBLE {
            return Err(TaskError::PassThrough {
                topic: self.ctx.spec.id.topic.to_string(),
                partition: self.ctx.spec.id.partition,
                detail: format!("the {} partition's leader not reached for {MAX_TROUBLE:?}: {why}", side.name()),
                retriable: true,
            });
        }
        let backoff = trouble.backoff;
        trouble.backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
        warn!(task = %self.ctx.spec.id, side = side.name(), error = why, retry_in = ?backoff, "pass-through: reconnecting");
        tokio::select! {
            biased;
            _ = stop.cancelled() => Ok(false),
            _ = tokio::time::sleep(backoff) => Ok(true),
        }
    }

    /// Produces the next ready batch: passes the throttle, stamps ferry's producer into it (renumbered if it cannot
    /// go as it is), and takes up its records. `false` when `stop` fired first.
    async fn send_next(&mut self, pipe: &mut Pipe, stop: &CancellationToken) -> Result<bool, Failure> {
        let ready = pipe.ready.front().expect("called with a ready batch");
        if let Some(throttle) = &self.ctx.throttle {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(false),
                _ = throttle.acquire(ready.batch.len()) => {}
            }
        }
        let ready = pipe.ready.pop_front().expect("checked above");
        pipe.ready_bytes -= ready.batch.len();
        let producer = pipe.producer.expect("a producer id is taken on connecting");
        let sequence = pipe.next_sequence;
        let timestamp_ms = Some(ready.batch.first_timestamp());
        let (stamped, records) = if ready.batch.base_offset() >= ready.from && ready.batch.passes_as_is() {
            let stamped = ready.batch.stamped(producer, sequence);
            let records = ready.batch.record_count();
            self.take_up(ready.batch.base_offset()..=ready.batch.last_offset(), records, &stamped, timestamp_ms);
            (stamped, records)
        } else {
            let renumbered = ready
                .batch
                .renumbered(ready.from, producer, sequence)
                .map_err(|error| Failure::Task(self.malformed(ready.batch.base_offset(), error)))?;
            let Some((stamped, offsets)) = renumbered else { return Ok(true) };
            let records = offsets.len() as i32;
            self.take_up(offsets, records, &stamped, timestamp_ms);
            (stamped, records)
        };
        pipe.next_sequence = batch::next_sequence(sequence, records);
        let connection = pipe.produce.as_mut().expect("connected before sending");
        let sent = connection
            .send_with_records(&pipe.produce_request, PRODUCE_VERSION, &stamped.header, &stamped.records)
            .await;
        pipe.sent_bytes += stamped.len();
        pipe.sent.push_back(Sent { batch: stamped, records });
        sent.map_err(|error| Failure::Connection(error.to_string()))?;
        self.ctx.progress.mark_busy();
        Ok(true)
    }

    /// Takes up the `records` records of a batch about to be sent, at `offsets` in the source, its bytes spread
    /// over them.
    fn take_up(
        &mut self,
        offsets: impl IntoIterator<Item = i64>,
        records: i32,
        stamped: &Stamped,
        timestamp_ms: Option<i64>,
    ) {
        let bytes = stamped.len() / records.max(1) as usize;
        for offset in offsets {
            self.ledger.track(Pending { offset, epoch: 0, timestamp_ms, bytes, fate: Fate::Produced });
        }
    }

    fn malformed(&self, offset: i64, error: BatchError) -> TaskError {
        TaskError::PassThrough {
            topic: self.ctx.spec.id.topic.to_string(),
            partition: self.ctx.spec.id.partition,
            detail: format!("cannot copy the source batch at offset {offset}: {error}"),
            retriable: false,
        }
    }

    /// Accounts for a produce response: the records of the oldest batch in flight were written from the returned
    /// base offset on, or the target refused them.
    fn produced(&mut self, pipe: &mut Pipe, response: Result<ProduceResponse, WireError>) -> Result<(), Failure> {
        let response = response.map_err(|error| Failure::Connection(error.to_string()))?;
        let Some(partition) = response.responses.first().and_then(|topic| topic.partition_responses.first()) else {
            return Err(Failure::Connection("a produce response without the partition".to_owned()));
        };
        match partition.error_code.err() {
            None => {
                let sent = pipe.sent.pop_front().expect("a response answers a request in flight");
                pipe.sent_bytes -= sent.batch.len();
                pipe.acknowledged_at = Some(Instant::now());
                let base = partition.base_offset;
                self.acks.extend((0..i64::from(sent.records)).map(|delta| Ok(base + delta)));
                pipe.answered(Side::Target);
                self.settle().map_err(Failure::Task)
            }
            Some(error) if error.is_retriable() => Err(Failure::Connection(format!("produce answered {error}"))),
            Some(error) => {
                let first = self.ledger.front().map_or(self.position.next_source_offset, |record| record.offset);
                let through = first + i64::from(pipe.sent.front().map_or(1, |sent| sent.records)) - 1;
                let mut detail = partition.error_message.as_ref().map(|m| format!(": {}", &**m)).unwrap_or_default();
                for refused in &partition.record_errors {
                    if let Some(message) = &refused.batch_index_error_message {
                        detail.push_str(&format!(" (record {} of the batch: {})", refused.batch_index, &**message));
                    }
                }
                Err(Failure::Task(self.batch_refused(first, through, error, detail)))
            }
        }
    }

    fn batch_refused(&self, first: i64, through: i64, error: ResponseError, detail: String) -> TaskError {
        let retriable = matches!(
            error,
            ResponseError::OutOfOrderSequenceNumber
                | ResponseError::DuplicateSequenceNumber
                | ResponseError::UnknownProducerId
                | ResponseError::InvalidProducerEpoch
        );
        TaskError::BatchRefused {
            cluster: self.ctx.target.alias().to_owned(),
            target_topic: self.ctx.spec.target_topic.clone(),
            partition: self.ctx.spec.id.partition,
            first,
            through,
            error,
            detail,
            retriable,
        }
    }

    /// Takes a fetch response's batches up as ready to produce, past transaction markers and aborted transactions.
    fn fetched(&mut self, pipe: &mut Pipe, response: FetchResponse) -> Result<Fetched, TaskError> {
        if let Some(error) = response.error_code.err() {
            return Ok(Fetched::Retry(format!("fetch answered {error}")));
        }
        let Some(partition) = response.responses.first().and_then(|topic| topic.partitions.first()) else {
            return Ok(Fetched::Retry("a fetch response without the partition".to_owned()));
        };
        match partition.error_code.err() {
            None => {}
            Some(ResponseError::OffsetOutOfRange) => return Ok(Fetched::OutOfRange),
            Some(error) if error.is_retriable() => return Ok(Fetched::Retry(format!("fetch answered {error}"))),
            Some(error) => {
                return Err(TaskError::PassThrough {
                    topic: self.ctx.spec.id.topic.to_string(),
                    partition: self.ctx.spec.id.partition,
                    detail: format!("the source refused the fetch at offset {}: {error}", pipe.fetch_offset),
                    retriable: false,
                })
            }
        }
        if partition.high_watermark >= 0 {
            self.position.source_end = Some(partition.high_watermark);
        }
        let records = partition.records.clone().unwrap_or_default();
        let batches = batch::split(records).map_err(|error| self.malformed(pipe.fetch_offset, error))?;
        let mut aborted = AbortedTransactions::new(partition.aborted_transactions.as_ref());
        for batch in batches {
            if batch.last_offset() < pipe.fetch_offset {
                continue;
            }
            let from = pipe.fetch_offset;
            pipe.fetch_offset = batch.last_offset() + 1;
            if aborted.keeps(&batch) {
                pipe.ready_bytes += batch.len();
                pipe.ready.push_back(Ready { batch, from });
            }
        }
        if pipe.ready.is_empty() && self.ledger.pending_len() == 0 {
            self.publish();
        }
        Ok(Fetched::Data)
    }

    /// Waits up to the drain timeout for the acknowledgements of the batches in flight.
    async fn drain_batches(&mut self, pipe: &mut Pipe) -> Result<(), TaskError> {
        let deadline = Instant::now() + self.ctx.drain_timeout;
        while !pipe.sent.is_empty() && pipe.produce.is_some() {
            let response = tokio::time::timeout_at(deadline, next_response::<ProduceRequest>(&mut pipe.produce)).await;
            match response {
                Ok(response) => match self.produced(pipe, response) {
                    Ok(()) => {}
                    Err(Failure::Task(error)) => return Err(error),
                    Err(Failure::Connection(why)) => {
                        warn!(task = %self.ctx.spec.id, error = why, unacknowledged = pipe.sent.len(), "stopping without the acknowledgement of the last batches; they are replicated again from the checkpoint");
                        break;
                    }
                },
                Err(_) => {
                    warn!(task = %self.ctx.spec.id, unacknowledged = pipe.sent.len(), "stopping before the target acknowledged the last batches; they are replicated again from the checkpoint");
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Why sending or a response failed: the task must stop, or only a connection is lost.
enum Failure {
    Task(TaskError),
    Connection(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_batch_goes_at_a_time_until_the_target_partition_knows_the_producer() {
        let now = Instant::now();
        assert_eq!(in_flight_limit(None, now), 1, "a new producer: the partition would take any first sequence");
        assert_eq!(in_flight_limit(Some(now), now + Duration::from_secs(5)), MAX_IN_FLIGHT_BATCHES);
        assert_eq!(
            in_flight_limit(Some(now), now + PRODUCER_REMEMBERED_FOR),
            1,
            "idle long enough that the broker may have forgotten the producer"
        );
    }
}

//! Exactly-once delivery's unit of transaction: a bucket of one flow's tasks sharing a transactional producer on
//! the target. Its open transaction holds the records every task of the bucket sent and, through
//! `send_offsets_to_transaction` under the flow's position group, the source offset each task advanced to; both
//! commit together or not at all (docs/adr/0021-exactly-once.md).
//!
//! Invariants:
//! - The source offset committed for a task is exactly its frontier when the commit began: tasks add to the open
//!   transaction only while holding the bucket's gate, which the committer holds exclusively from reading the
//!   frontiers until the next transaction has begun.
//! - A task moves its position over a record only once the transaction holding it committed; when a transaction
//!   with its records aborts, the task starts over from the committed position.
//! - A bucket's transactional id is the same on every member, so the member that takes a bucket over fences the one
//!   that ran it before: a frozen member that wakes up cannot commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{watch, Notify, OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::now_ms;
use crate::config::{ClusterConfig, FlowConfig};
use crate::kafka::{client_config, ClientError, ClusterContext, Role, REQUEST_TIMEOUT};
use crate::ops::metrics::{Metrics, TransactionMetrics};
use crate::replication::target::TargetProducer;
use crate::topics::discovery::TaskSpec;
use crate::topics::identity::TopicId;

/// How long one transaction call (init, commit, abort, offsets) may take before it is retried or reported.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than [`CALL_TIMEOUT`] a transaction call may block before it is taken as hung: librdkafka 2.12
/// can leave `send_offsets_to_transaction` waiting forever for an answer after the transaction coordinator's broker
/// was killed (seen in tests/faults), and a hung bucket would stall its partitions without a word.
const HUNG_CALL_MARGIN: Duration = Duration::from_secs(15);
/// How long an idle bucket (no task left) keeps its producer before it closes.
const IDLE_CLOSE_AFTER: u32 = 4;

/// Why a task cannot replicate exactly once right now.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The bucket's producer could not be created.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The target refused to start transactions (the broker cannot host them, or refuses the settings).
    #[error(
        "flow {flow}: target cluster {cluster} refused to start transactions for transactional id {transactional_id}: \
         {error}{hint} (exactly-once delivery waits; it never falls back to at-least-once)"
    )]
    Init {
        /// Flow name.
        flow: String,
        /// Target cluster alias.
        cluster: String,
        /// The bucket's transactional id.
        transactional_id: String,
        /// Kafka's error (boxed: the variants travel in every task's `Result`).
        error: Box<KafkaError>,
        /// What to check, when Kafka's error does not say.
        hint: &'static str,
    },
    /// The committed positions could not be read from the target.
    #[error("flow {flow}: cannot read the committed position of {topic}[{partition}] in group {group} on target cluster {cluster}: {error}")]
    Positions {
        /// Flow name.
        flow: String,
        /// Target cluster alias.
        cluster: String,
        /// The flow's position group.
        group: String,
        /// Target topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Kafka's error (boxed: the variants travel in every task's `Result`).
        error: Box<KafkaError>,
    },
    /// A transaction holding this task's records aborted: they are not on the target, and the task starts over
    /// from the committed position.
    #[error("flow {flow}: a transaction of bucket {bucket} aborted; replicating again from the committed position")]
    Aborted {
        /// Flow name.
        flow: String,
        /// Bucket number.
        bucket: u32,
    },
    /// The bucket's producer can no longer commit (fenced by a newer instance, or another fatal error).
    #[error("flow {flow}: the producer of bucket {bucket} on target cluster {cluster} stopped: {reason}")]
    Failed {
        /// Flow name.
        flow: String,
        /// Target cluster alias.
        cluster: String,
        /// Bucket number.
        bucket: u32,
        /// What happened.
        reason: Arc<str>,
    },
}

/// The bucket of a task: a stable hash of topic and partition, the same on every member and in every version.
pub fn bucket_of(topic: &str, partition: i32, buckets: u32) -> u32 {
    // FNV-1a: fixed, documented, and cheap; std's hasher is neither stable across versions nor across processes.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Partitions of one topic land in consecutive buckets, so a topic spreads over all of them.
    let partition = u64::from(partition.unsigned_abs());
    u32::try_from(hash.wrapping_add(partition) % u64::from(buckets.max(1))).expect("below a u32 bucket count")
}

/// What the tasks of a bucket watch: how far its transactions committed, and whether it can go on.
#[derive(Debug, Clone, Default)]
struct Outcome {
    /// The newest committed transaction's epoch (transactions are numbered from 1; 0: none yet).
    committed_epoch: u64,
    /// Set when the producer can no longer commit.
    failure: Option<Arc<str>>,
}

/// One task's place in its bucket.
#[derive(Debug)]
struct Slot {
    target_topic: String,
    partition: i32,
    /// The source topic's id, committed with the frontier: a frontier in a topic since deleted and created again
    /// must not be taken for a position in the new one.
    source_topic_id: Option<TopicId>,
    /// The source offset after everything the task added to a transaction (records sent, offsets passed); written
    /// under the gate.
    frontier: AtomicI64,
    /// The frontier the newest committed transaction carried.
    committed: AtomicI64,
    /// A transaction with this task's records aborted (or the bucket failed): the task must start over.
    aborted: AtomicBool,
    /// The task stopped; the slot goes once its frontier is committed or aborted.
    closed: AtomicBool,
}

impl Slot {
    fn settled(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
            || self.frontier.load(Ordering::Acquire) <= self.committed.load(Ordering::Acquire)
    }
}

/// What every bucket of a flow shares.
struct FlowShared {
    flow: String,
    cluster_alias: String,
    cluster: ClusterConfig,
    prefix: String,
    commit_interval: Duration,
    metrics: TransactionMetrics,
    client_metrics: Metrics,
    /// Reads and names the position group (`group.id` = the prefix); never joins it.
    positions: Arc<BaseConsumer<ClusterContext>>,
    stop: CancellationToken,
}

/// A transactional producer and the tasks writing through it.
struct Bucket {
    flow: Arc<str>,
    number: u32,
    transactional_id: String,
    producer: TargetProducer,
    /// Shared by tasks adding to the open transaction, exclusive for the committer.
    gate: Arc<RwLock<()>>,
    /// The epoch of the open transaction.
    open_epoch: AtomicU64,
    /// When the open transaction got its first record (ms since the epoch, 0: none yet).
    opened_at_ms: AtomicI64,
    slots: Mutex<Vec<Arc<Slot>>>,
    outcome: watch::Sender<Outcome>,
    commit_now: Notify,
}

type BucketCell = Arc<tokio::sync::Mutex<Option<Arc<Bucket>>>>;

/// The exactly-once side of one flow on one member: its buckets, opened as tasks need them.
pub struct FlowTransactions {
    shared: Arc<FlowShared>,
    buckets: u32,
    cells: Mutex<HashMap<u32, BucketCell>>,
}

impl std::fmt::Debug for FlowTransactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTransactions")
            .field("flow", &self.shared.flow)
            .field("prefix", &self.shared.prefix)
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

impl Drop for FlowTransactions {
    fn drop(&mut self) {
        // The runtime of the flow is gone (reload or shutdown): each bucket commits what its stopped tasks left and
        // closes.
        self.shared.stop.cancel();
    }
}

impl FlowTransactions {
    /// The exactly-once side of `flow`, writing to `cluster` (the flow's target).
    pub fn new(flow: &FlowConfig, cluster: &ClusterConfig, metrics: &Metrics) -> Result<Self, ClientError> {
        let prefix = flow.transactional_id_prefix();
        let mut config = client_config(&flow.target, cluster, Role::Consumer)?;
        config.set("group.id", &prefix);
        let positions: BaseConsumer<ClusterContext> = config
            .create_with_context(ClusterContext::new(&flow.target, cluster, metrics))
            .map_err(|source| ClientError::create(&flow.target, cluster, &source))?;
        Ok(Self {
            shared: Arc::new(FlowShared {
                flow: flow.name.clone(),
                cluster_alias: flow.target.clone(),
                cluster: cluster.clone(),
                prefix,
                commit_interval: flow.exactly_once.commit_interval.as_std(),
                metrics: metrics.transactions_of(&flow.name),
                client_metrics: metrics.clone(),
                positions: Arc::new(positions),
                stop: CancellationToken::new(),
            }),
            buckets: flow.exactly_once.buckets,
            cells: Mutex::new(HashMap::new()),
        })
    }

    /// Joins the task to its bucket (opening the bucket, and so fencing any earlier instance of it, if this member
    /// has not yet) and reads the position the last committed transaction left for it. `source_topic_id` is the id
    /// of the source topic the task reads, committed with its frontiers; a committed position of another topic of
    /// the same name (deleted and created again) is not the task's, nor one committed without an id when
    /// `source_recreated` says the topic was just found recreated.
    pub async fn enlist(
        &self,
        spec: &TaskSpec,
        source_topic_id: Option<TopicId>,
        source_recreated: bool,
    ) -> Result<Enlistment, TransactionError> {
        let number = bucket_of(&spec.id.topic, spec.id.partition, self.buckets);
        let cell = self.cells.lock().expect("bucket cells lock poisoned").entry(number).or_default().clone();
        let mut open = cell.lock().await;
        let bucket = match open.as_ref().filter(|bucket| bucket.outcome.borrow().failure.is_none()) {
            Some(bucket) => bucket.clone(),
            None => {
                let bucket = Arc::new(self.open_bucket(number).await?);
                tokio::spawn(commit_loop(bucket.clone(), self.shared.clone(), cell.clone()));
                *open = Some(bucket.clone());
                bucket
            }
        };
        // A slot the partition's previous run left (it stopped before its last records committed) must be resolved
        // first: the position read below has to include them, or they would be written twice.
        let previous = |bucket: &Bucket| {
            bucket
                .slots
                .lock()
                .expect("bucket slots lock poisoned")
                .iter()
                .any(|slot| slot.target_topic == spec.target_topic && slot.partition == spec.id.partition)
        };
        let mut outcome = bucket.outcome.subscribe();
        let mut waited = 0;
        while previous(&bucket) {
            bucket.commit_now.notify_one();
            let changed = tokio::time::timeout(CALL_TIMEOUT, outcome.changed()).await;
            if changed.as_ref().is_ok_and(Result::is_err) || outcome.borrow().failure.is_some() {
                return Err(self.failed(&bucket, "closed while the task joined"));
            }
            if changed.is_err() {
                waited += 1;
                warn!(
                    task = %spec.id,
                    bucket = number,
                    waited_s = waited * CALL_TIMEOUT.as_secs(),
                    "waiting for the partition's previous run to commit or abort its last records"
                );
            }
        }
        let slot = Arc::new(Slot {
            target_topic: spec.target_topic.clone(),
            partition: spec.id.partition,
            source_topic_id: source_topic_id.clone(),
            frontier: AtomicI64::new(i64::MIN),
            committed: AtomicI64::new(i64::MIN),
            aborted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        bucket.slots.lock().expect("bucket slots lock poisoned").push(slot.clone());
        drop(open);

        let (committed, target_end) = match self.read_position(spec).await {
            Ok(read) => read,
            Err(error) => {
                // The slot holds nothing yet: let it go, or the task's next run would wait for it for ever.
                slot.closed.store(true, Ordering::Release);
                bucket.commit_now.notify_one();
                return Err(error);
            }
        };
        let same_topic = |committed: &CommittedPosition| match (&committed.source_topic_id, &source_topic_id) {
            (Some(committed), Some(current)) => committed == current,
            // Committed by a version that did not record the id.
            (None, _) => !source_recreated,
            (Some(_), None) => true,
        };
        let committed = match committed {
            Some(stale) if !same_topic(&stale) => {
                info!(
                    task = %spec.id,
                    committed = stale.offset,
                    "the target's committed transactions recorded a position in an earlier topic of the same name; \
                     ignored"
                );
                None
            }
            committed => committed,
        };
        if let Some(committed) = &committed {
            slot.frontier.store(committed.offset, Ordering::Release);
            slot.committed.store(committed.offset, Ordering::Release);
        }
        Ok(Enlistment { outcome: bucket.outcome.subscribe(), bucket, slot, committed, target_end })
    }

    fn failed(&self, bucket: &Bucket, reason: &str) -> TransactionError {
        TransactionError::Failed {
            flow: self.shared.flow.clone(),
            cluster: self.shared.cluster_alias.clone(),
            bucket: bucket.number,
            reason: bucket.outcome.borrow().failure.clone().unwrap_or_else(|| reason.into()),
        }
    }

    async fn open_bucket(&self, number: u32) -> Result<Bucket, TransactionError> {
        let shared = &self.shared;
        let transactional_id = format!("{}-{number}", shared.prefix);
        let producer = TargetProducer::transactional(
            &shared.cluster_alias,
            &shared.cluster,
            &shared.client_metrics,
            &transactional_id,
        )?;
        let client = producer.client().clone();
        let started = Instant::now();
        // init_transactions fences every earlier instance with this id and completes or aborts its open transaction.
        let result = tokio::task::spawn_blocking(move || {
            client.init_transactions(CALL_TIMEOUT)?;
            client.begin_transaction()
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled));
        if let Err(error) = result {
            return Err(TransactionError::Init {
                flow: shared.flow.clone(),
                cluster: shared.cluster_alias.clone(),
                transactional_id,
                hint: if matches!(&error, KafkaError::Transaction(e) if e.code() == RDKafkaErrorCode::OperationTimedOut)
                {
                    "; no transaction coordinator answered in time: the target's brokers must be able to create \
                     __transaction_state (transaction.state.log.replication.factor and .min.isr met by live brokers)"
                } else {
                    ""
                },
                error: Box::new(error),
            });
        }
        info!(
            flow = shared.flow.as_str(),
            bucket = number,
            transactional_id = transactional_id.as_str(),
            took_ms = started.elapsed().as_millis() as u64,
            "transactional producer ready; any earlier instance of this bucket is fenced"
        );
        Ok(Bucket {
            flow: shared.flow.as_str().into(),
            number,
            transactional_id,
            producer,
            gate: Arc::new(RwLock::new(())),
            open_epoch: AtomicU64::new(1),
            opened_at_ms: AtomicI64::new(0),
            slots: Mutex::new(Vec::new()),
            outcome: watch::channel(Outcome::default()).0,
            commit_now: Notify::new(),
        })
    }

    /// The source position the position group holds for the task's target partition, and that partition's end.
    async fn read_position(&self, spec: &TaskSpec) -> Result<(Option<CommittedPosition>, i64), TransactionError> {
        let positions = self.shared.positions.clone();
        let (topic, partition) = (spec.target_topic.clone(), spec.id.partition);
        let result = tokio::task::spawn_blocking(move || {
            read_committed_and_end(&positions, &topic, partition).or_else(|_| {
                // Seen once after a target broker was killed just after the topic was created: every read of one
                // partition failed with UnknownPartition for minutes, across task restarts, because the shared
                // consumer kept what its metadata cache said. A metadata request of the topic's own replaces that.
                let _ = positions.fetch_metadata(Some(&topic), REQUEST_TIMEOUT);
                read_committed_and_end(&positions, &topic, partition)
            })
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled));
        result.map_err(|error| TransactionError::Positions {
            flow: self.shared.flow.clone(),
            cluster: self.shared.cluster_alias.clone(),
            group: self.shared.prefix.clone(),
            topic: spec.target_topic.clone(),
            partition: spec.id.partition,
            error: Box::new(error),
        })
    }
}

/// What the position group holds for `topic[partition]` on the target, and that partition's end (blocking).
fn read_committed_and_end(
    positions: &BaseConsumer<ClusterContext>,
    topic: &str,
    partition: i32,
) -> Result<(Option<CommittedPosition>, i64), KafkaError> {
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(topic, partition);
    let committed = positions.committed_offsets(wanted, REQUEST_TIMEOUT)?;
    let position = committed.find_partition(topic, partition).and_then(|entry| match entry.offset() {
        Offset::Offset(offset) => Some(CommittedPosition {
            offset,
            source_topic_id: entry.metadata().strip_prefix(SOURCE_TOPIC_ID_METADATA).map(TopicId::from),
        }),
        _ => None,
    });
    let (_, end) = positions.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
    Ok((position, end))
}

/// The source position a committed transaction recorded for a task's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedPosition {
    /// The next source offset.
    pub offset: i64,
    /// The id of the source topic the offset belongs to; `None` when committed by a version that did not record it.
    pub source_topic_id: Option<TopicId>,
}

/// Prefix of the offset metadata that carries the source topic's id.
const SOURCE_TOPIC_ID_METADATA: &str = "source_topic_id=";

/// A task's membership of its bucket; leaving it (drop) lets the bucket commit what the task left and forget it.
pub struct Enlistment {
    bucket: Arc<Bucket>,
    slot: Arc<Slot>,
    outcome: watch::Receiver<Outcome>,
    /// The source position the last committed transaction recorded for this task's partition, if any.
    pub committed: Option<CommittedPosition>,
    /// The target partition's end offset when the task joined.
    pub target_end: i64,
}

impl std::fmt::Debug for Enlistment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enlistment")
            .field("transactional_id", &self.bucket.transactional_id)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl Drop for Enlistment {
    fn drop(&mut self) {
        self.slot.closed.store(true, Ordering::Release);
        self.bucket.commit_now.notify_one();
    }
}

/// Permission to add to the open transaction, held while a record is handed to the producer.
pub struct Entry {
    _gate: OwnedRwLockReadGuard<()>,
    /// The open transaction's epoch.
    pub epoch: u64,
}

impl Enlistment {
    /// The bucket's transactional producer.
    pub fn producer(&self) -> &TargetProducer {
        &self.bucket.producer
    }

    /// The bucket number.
    pub fn bucket(&self) -> u32 {
        self.bucket.number
    }

    /// Waits until the task may add to the open transaction; an error when the task must start over first.
    pub async fn enter(&self) -> Result<Entry, TransactionError> {
        let gate = self.bucket.gate.clone().read_owned().await;
        self.committed_epoch()?;
        if self.bucket.opened_at_ms.load(Ordering::Relaxed) == 0 {
            let _ = self.bucket.opened_at_ms.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        }
        Ok(Entry { _gate: gate, epoch: self.bucket.open_epoch.load(Ordering::Acquire) })
    }

    /// Records, while still holding `entry`, the source offset after what the task just added.
    pub fn advance(&self, _entry: &Entry, frontier: i64) {
        self.slot.frontier.store(frontier, Ordering::Release);
    }

    /// The epoch of the newest committed transaction: records of that epoch or older are on the target for good.
    /// An error when a transaction holding this task's records aborted or the bucket failed.
    pub fn committed_epoch(&self) -> Result<u64, TransactionError> {
        let outcome = self.outcome.borrow();
        if let Some(reason) = &outcome.failure {
            return Err(TransactionError::Failed {
                flow: self.bucket.flow.to_string(),
                cluster: self.bucket.producer.alias().to_owned(),
                bucket: self.bucket.number,
                reason: reason.clone(),
            });
        }
        if self.slot.aborted.load(Ordering::Acquire) {
            return Err(TransactionError::Aborted { flow: self.bucket.flow.to_string(), bucket: self.bucket.number });
        }
        Ok(outcome.committed_epoch)
    }

    /// Asks the bucket to commit now rather than at its next interval (a task's window is full, or it stops).
    pub fn request_commit(&self) {
        self.bucket.commit_now.notify_one();
    }

    /// Waits until a transaction of the bucket committed or aborted.
    pub async fn changed(&mut self) {
        if self.outcome.changed().await.is_err() {
            // The bucket is gone; its last outcome stays readable, so never wake again for it.
            std::future::pending::<()>().await;
        }
    }
}

/// Whether a transaction call's error leaves the producer usable after an abort.
fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(error) => error.is_fatal() || !error.txn_requires_abort() && !error.is_retriable(),
        _ => false,
    }
}

fn is_retriable(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(error) if error.is_retriable())
}

fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

/// A transaction call that has not returned [`HUNG_CALL_MARGIN`] after its own timeout.
struct Hung(&'static str);

/// Runs the blocking transaction call `what` off the runtime; `Err(Hung)` when it has not returned after
/// [`CALL_TIMEOUT`] + [`HUNG_CALL_MARGIN`] of time the process was running (its thread and producer are then
/// abandoned: the bucket starts over with a new producer, which fences the old one). Time the process was frozen
/// (SIGSTOP, a paused VM) does not count: librdkafka could not answer then either, and a zombie waking up must
/// learn from its call that it was fenced rather than give up first.
async fn transaction_call<T: Send + 'static>(
    what: &'static str,
    call: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<Result<T, KafkaError>, Hung> {
    const TICK: Duration = Duration::from_secs(1);
    let mut call = tokio::task::spawn_blocking(call);
    let mut running = Duration::ZERO;
    loop {
        let tick_started = tokio::time::Instant::now();
        tokio::select! {
            joined = &mut call => return Ok(joined.unwrap_or(Err(KafkaError::Canceled))),
            _ = tokio::time::sleep(TICK) => {}
        }
        // A tick that took much longer than itself was a freeze.
        running += tick_started.elapsed().min(2 * TICK);
        if running >= CALL_TIMEOUT + HUNG_CALL_MARGIN {
            return Err(Hung(what));
        }
    }
}

/// Commits the bucket's open transaction every commit interval (or when a task asks), until the flow's runtime
/// goes or the bucket has had no task for a while.
async fn commit_loop(bucket: Arc<Bucket>, shared: Arc<FlowShared>, cell: BucketCell) {
    let mut ticker = tokio::time::interval(shared.commit_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_ticks = 0;
    loop {
        let stopping = tokio::select! {
            _ = shared.stop.cancelled() => true,
            _ = ticker.tick() => false,
            () = bucket.commit_now.notified() => false,
        };
        if !commit(&bucket, &shared).await {
            break;
        }
        if stopping {
            break;
        }
        if bucket.slots.lock().expect("bucket slots lock poisoned").is_empty() {
            idle_ticks += 1;
        } else {
            idle_ticks = 0;
        }
        if idle_ticks >= IDLE_CLOSE_AFTER {
            let mut open = cell.lock().await;
            // Under the cell's lock no task can join meanwhile.
            if bucket.slots.lock().expect("bucket slots lock poisoned").is_empty() {
                if open.as_ref().is_some_and(|current| Arc::ptr_eq(current, &bucket)) {
                    *open = None;
                }
                break;
            }
        }
    }
    close(&bucket, &shared).await;
}

/// Commits what the bucket's tasks added since the last commit, with their frontiers. `false` when the producer
/// can no longer be used.
async fn commit(bucket: &Bucket, shared: &FlowShared) -> bool {
    let gate = bucket.gate.clone().write_owned().await;
    let slots: Vec<Arc<Slot>> = bucket.slots.lock().expect("bucket slots lock poisoned").clone();
    let mut offsets = TopicPartitionList::new();
    let mut carried = Vec::new();
    for slot in &slots {
        let frontier = slot.frontier.load(Ordering::Acquire);
        if !slot.aborted.load(Ordering::Acquire) && frontier > slot.committed.load(Ordering::Acquire) {
            let mut entry = offsets.add_partition(&slot.target_topic, slot.partition);
            entry.set_offset(Offset::Offset(frontier)).expect("an absolute offset is always valid");
            if let Some(id) = &slot.source_topic_id {
                entry.set_metadata(format!("{SOURCE_TOPIC_ID_METADATA}{id}"));
            }
            carried.push((slot.clone(), frontier));
        }
    }
    if carried.is_empty() {
        forget_settled_slots(bucket);
        return true;
    }
    let epoch = bucket.open_epoch.load(Ordering::Acquire);
    let opened_at_ms = bucket.opened_at_ms.swap(0, Ordering::Relaxed);
    let client = bucket.producer.client().clone();
    let positions = shared.positions.clone();
    let sent = transaction_call("send_offsets_to_transaction", move || {
        let metadata = positions.group_metadata().ok_or(KafkaError::Canceled)?;
        client.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT)
    })
    .await;
    let result = match sent {
        Ok(Ok(())) => loop {
            let client = bucket.producer.client().clone();
            match transaction_call("commit_transaction", move || client.commit_transaction(CALL_TIMEOUT)).await {
                // A commit that timed out may be called again; it completes the same transaction.
                Ok(Err(error)) if is_retriable(&error) && !shared.stop.is_cancelled() => {
                    warn!(%error, "transaction commit not confirmed yet; retrying");
                }
                outcome => break outcome,
            }
        },
        other => other,
    };
    let took = Some(opened_at_ms).filter(|at| *at > 0).map(|at| (now_ms() - at).max(0) as f64 / 1000.0);
    let flow = shared.flow.as_str();
    let alive = match result {
        Ok(Ok(())) => {
            for (slot, frontier) in &carried {
                slot.committed.store(*frontier, Ordering::Release);
            }
            shared.metrics.committed.inc();
            if let Some(took) = took {
                shared.metrics.duration.observe(took);
            }
            next_transaction(bucket, shared, epoch, Some(epoch))
        }
        Ok(Err(error)) if !is_fatal(&error) => {
            warn!(
                flow,
                bucket = bucket.number,
                cluster = shared.cluster_alias.as_str(),
                %error,
                "transaction aborted; its tasks replicate again from the committed position"
            );
            let client = bucket.producer.client().clone();
            let aborted = transaction_call("abort_transaction", move || client.abort_transaction(CALL_TIMEOUT)).await;
            for (slot, _) in &carried {
                slot.aborted.store(true, Ordering::Release);
            }
            shared.metrics.aborted.inc();
            if let Some(took) = took {
                shared.metrics.duration.observe(took);
            }
            match aborted {
                Ok(Ok(())) => next_transaction(bucket, shared, epoch, None),
                Ok(Err(error)) => fail(bucket, shared, &error),
                Err(hung) => hung_up(bucket, shared, hung),
            }
        }
        Ok(Err(error)) => fail(bucket, shared, &error),
        Err(hung) => hung_up(bucket, shared, hung),
    };
    drop(gate);
    forget_settled_slots(bucket);
    alive
}

/// Opens the transaction after `epoch` and tells the tasks; `false` if the producer refuses.
fn next_transaction(bucket: &Bucket, shared: &FlowShared, epoch: u64, committed: Option<u64>) -> bool {
    bucket.open_epoch.store(epoch + 1, Ordering::Release);
    if let Err(error) = bucket.producer.client().begin_transaction() {
        return fail(bucket, shared, &error);
    }
    bucket.outcome.send_modify(|outcome| {
        if let Some(committed) = committed {
            outcome.committed_epoch = committed;
        }
    });
    true
}

/// Marks the bucket failed: every task of it stops and starts over (with a new producer) if it is still wanted.
fn fail(bucket: &Bucket, shared: &FlowShared, error: &KafkaError) -> bool {
    let reason: Arc<str> = if is_fenced(error) {
        shared.metrics.fenced.inc();
        error!(
            flow = shared.flow.as_str(),
            bucket = bucket.number,
            transactional_id = bucket.transactional_id.as_str(),
            %error,
            "this member's transactional producer was fenced: another instance of the bucket took over; its open \
             transaction is not committed"
        );
        format!("fenced by a newer instance of transactional id {}", bucket.transactional_id).into()
    } else {
        error!(
            flow = shared.flow.as_str(),
            bucket = bucket.number,
            transactional_id = bucket.transactional_id.as_str(),
            %error,
            "transactional producer failed; its tasks restart with a new one"
        );
        error.to_string().into()
    };
    give_up(bucket, reason)
}

/// Gives the bucket up after a transaction call hung: every task of it stops and starts over with a new producer,
/// whose `init_transactions` fences the hung one and resolves its open transaction.
fn hung_up(bucket: &Bucket, shared: &FlowShared, Hung(call): Hung) -> bool {
    error!(
        flow = shared.flow.as_str(),
        bucket = bucket.number,
        transactional_id = bucket.transactional_id.as_str(),
        call,
        after = ?(CALL_TIMEOUT + HUNG_CALL_MARGIN),
        "librdkafka did not return from a transaction call; the bucket's producer is abandoned and its tasks restart \
         with a new one"
    );
    give_up(bucket, format!("librdkafka's {call} hung; the bucket starts over with a new producer").into())
}

/// Marks every slot of the bucket aborted and the bucket failed for `reason`: its tasks stop and start over. Always
/// `false` (the producer can no longer be used).
fn give_up(bucket: &Bucket, reason: Arc<str>) -> bool {
    for slot in bucket.slots.lock().expect("bucket slots lock poisoned").iter() {
        slot.aborted.store(true, Ordering::Release);
    }
    bucket.outcome.send_modify(|outcome| outcome.failure = Some(reason));
    false
}

/// Drops the slots of stopped tasks whose frontier is committed (or will never be), and tells a task waiting to
/// take the partition up again.
fn forget_settled_slots(bucket: &Bucket) {
    let forgot = {
        let mut slots = bucket.slots.lock().expect("bucket slots lock poisoned");
        let before = slots.len();
        slots.retain(|slot| !(slot.closed.load(Ordering::Acquire) && slot.settled()));
        slots.len() < before
    };
    if forgot {
        bucket.outcome.send_modify(|_| {});
    }
}

/// Leaves nothing open: an empty transaction costs nothing (librdkafka begins one locally), but one holding records
/// would block read-committed consumers of those partitions until the broker's transaction timeout.
async fn close(bucket: &Bucket, shared: &FlowShared) {
    if bucket.outcome.borrow().failure.is_some() {
        return;
    }
    if bucket.opened_at_ms.load(Ordering::Relaxed) != 0 {
        let client = bucket.producer.client().clone();
        match transaction_call("abort_transaction", move || client.abort_transaction(CALL_TIMEOUT)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                warn!(flow = shared.flow.as_str(), bucket = bucket.number, %error, "cannot abort the last open transaction")
            }
            Err(Hung(call)) => warn!(
                flow = shared.flow.as_str(),
                bucket = bucket.number,
                call,
                "librdkafka did not return from aborting the last open transaction; the next instance of the bucket \
                 resolves it"
            ),
        }
    }
    info!(flow = shared.flow.as_str(), bucket = bucket.number, "transactional producer closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread_a_topic_over_all_of_them() {
        let first = bucket_of("orders", 0, 16);
        let spread: std::collections::BTreeSet<u32> =
            (0..16).map(|partition| bucket_of("orders", partition, 16)).collect();
        assert_eq!(spread.len(), 16, "16 partitions of one topic fill 16 buckets");
        assert_eq!(bucket_of("orders", 1, 16), (first + 1) % 16);
        assert!((0..1000).all(|partition| bucket_of("payments", partition, 7) < 7));
        assert_eq!(bucket_of("orders", 5, 1), 0);
    }

    /// An exactly-once flow of one bucket writing to `mock`, and a task of it whose target is `remote.orders`[0].
    fn one_bucket_flow_on(
        mock: &rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    ) -> (FlowTransactions, TaskSpec) {
        mock.create_topic("remote.orders", 1, 1).unwrap();
        let cluster =
            ClusterConfig { bootstrap_servers: mock.bootstrap_servers(), region: None, client: Default::default() };
        let flow: FlowConfig = serde_json::from_value(serde_json::json!({
            "name": "flow", "source": "mock", "target": "mock", "topics": { "include": ["orders"] },
            "delivery": "exactly-once", "exactly_once": { "buckets": 1 }
        }))
        .unwrap();
        let transactions = FlowTransactions::new(&flow, &cluster, &Metrics::new(false)).unwrap();
        let spec = TaskSpec {
            id: crate::replication::progress::TaskId::new("flow", "orders", 0),
            target_topic: "remote.orders".to_owned(),
            resume: None,
        };
        (transactions, spec)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_whose_position_could_not_be_read_can_join_again_at_once() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

        let mock = MockCluster::new(1).unwrap();
        let (transactions, spec) = one_bucket_flow_on(&mock);
        // The position read fails (as on a topic whose leader is not known yet), also when read again.
        let refused = RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED;
        mock.request_errors(RDKafkaApiKey::OffsetFetch, &[refused, refused]);
        assert!(matches!(transactions.enlist(&spec, None, false).await, Err(TransactionError::Positions { .. })));
        mock.clear_request_errors(RDKafkaApiKey::OffsetFetch);
        // The next run is not kept waiting for a slot the failed one never used.
        let again = tokio::time::timeout(Duration::from_secs(10), transactions.enlist(&spec, None, false)).await;
        let enlisted = again.expect("joined without waiting").expect("joined");
        assert_eq!(enlisted.committed, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_position_read_that_fails_once_is_read_again_after_a_metadata_request() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

        let mock = MockCluster::new(1).unwrap();
        let (transactions, spec) = one_bucket_flow_on(&mock);
        mock.request_errors(
            RDKafkaApiKey::OffsetFetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
        );
        let enlisted = tokio::time::timeout(Duration::from_secs(30), transactions.enlist(&spec, None, false)).await;
        assert_eq!(enlisted.expect("enlisted in time").expect("enlisted").committed, None);
    }

    #[test]
    fn bucket_numbers_do_not_change_between_versions() {
        // FNV-1a of "orders" plus the partition, computed independently: members of different versions agree.
        assert_eq!(bucket_of("orders", 0, 16), 12);
        assert_eq!(bucket_of("orders", 3, 16), 15);
        assert_eq!(bucket_of("orders", 3, 1024), 847);
    }
}

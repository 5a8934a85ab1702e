//! The benchmark's Rust side (`scripts/bench` runs it; see docs/benchmarks.md):
//!
//! - `pipe`: the raw pipe, the baseline ferry is measured against: one plain librdkafka consumer (every partition
//!   assigned, main queue polled) feeding one plain librdkafka producer, with exactly ferry's client settings
//!   (`ferry::kafka::client_config`), copying key, value, headers and timestamp to the same partition. No
//!   positions, no checkpoints, no per-record futures: the least work a correct copy can do.
//! - `produce`: the load generator (the backlog as fast as the source takes it, or a fixed rate of records stamped
//!   with their send time for the latency phase and the scale run), with a codec (`--compression`) and values of a
//!   kind (`--payload`: compressible or not).
//! - `watch`: polls the end offsets of source and target topics and prints one JSON line per poll, so the script
//!   can time the drain and sample the replicator's CPU and memory at its start and end. With `--committed` (a
//!   replicator that writes the target in transactions) a partition counts as drained only once its last committed
//!   record is the source partition's last record: a transactional target's end offsets also count the commit
//!   markers, one offset per transaction and partition, so "end offset >= the source's" can hold while the last
//!   records are still missing or in an open transaction.
//! - `latency`: reads the target (read_committed) and prints the distribution of receive time − record timestamp;
//!   with the source topic too, it splits each record's latency into its source part and the replicator's hop.
//! - `create-topics`: creates many topics in one admin request; `delete-topics` deletes topics.
//!
//! It is a `[[bench]]` with `harness = false`: `cargo bench --bench pipe -- pipe ...` runs it. Without a
//! subcommand (as `cargo test --all-targets` runs it) it prints nothing and exits 0.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use ferry::config::ClusterConfig;
use ferry::kafka::{client_config, Role};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

/// The same allocator as the `ferry` binary (ADR 15), so the baseline differs from ferry in the copying alone.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(about = "ferry benchmark tool: raw pipe, load generator, offset watcher, latency reader")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy SOURCE_TOPIC=TARGET_TOPIC pairs from the first partition to the last, until killed; target topics must
    /// exist with as many partitions.
    Pipe {
        #[command(flatten)]
        route: Route,
        /// Extra librdkafka property for the consumer (KEY=VALUE, repeatable).
        #[arg(long = "consumer-set")]
        consumer_set: Vec<String>,
        /// Extra librdkafka property for the producer (KEY=VALUE, repeatable).
        #[arg(long = "producer-set")]
        producer_set: Vec<String>,
    },
    /// Produce records of `size` value bytes (no key) round-robin over the partitions of the topics.
    Produce {
        #[arg(long)]
        bootstrap: String,
        /// Topic names, comma-separated.
        #[arg(long)]
        topics: String,
        #[arg(long)]
        partitions: i32,
        /// Stop after this many records (0: only `seconds` counts).
        #[arg(long, default_value_t = 0)]
        records: u64,
        /// Stop after this many seconds (0: only `records` counts).
        #[arg(long, default_value_t = 0.0)]
        seconds: f64,
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Records per second (0: as fast as the cluster takes them).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Producer linger.ms (default: 5 at a fixed rate, 20 as fast as possible).
        #[arg(long)]
        linger_ms: Option<u64>,
        /// Disable idempotence (a librdkafka idempotent producer spends much CPU per partition with
        /// thousands of partitions).
        #[arg(long)]
        no_idempotence: bool,
        /// First send one record per partition marked with the `ferry-bench-warmup` header (which `latency`
        /// ignores) and wait for it, so connection set-up and producer id are not part of the stamped records.
        #[arg(long)]
        warmup: bool,
        /// Producer compression.type (none, gzip, snappy, lz4, zstd): the codec the source topic's batches keep
        /// (topics keep the producer's compression).
        #[arg(long, default_value = "none")]
        compression: String,
        /// What the values hold: `repeat`, windows of one 4 KiB incompressible buffer (each value alone does not
        /// compress, but the records of a batch repeat each other); `random`, incompressible values that do not
        /// repeat each other; `text`, words of a small vocabulary that do not repeat each other (compresses like
        /// text or logs: about 2x with lz4, more with zstd).
        #[arg(long, value_enum, default_value_t = Payload::Repeat)]
        payload: Payload,
    },
    /// Poll end offsets every `interval-ms`; one JSON line per poll; exit once every target partition reached
    /// its source partition's end, or after `timeout` seconds (exit 1).
    Watch {
        #[command(flatten)]
        route: Route,
        #[arg(long)]
        partitions: i32,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long, default_value_t = 1800.0)]
        timeout: f64,
        /// The target is written in transactions: count a partition as caught up once its last committed record is
        /// the source partition's last record (same timestamp, key and value), not once its end offset, which also
        /// counts commit markers, reaches the source's. `target` in the output is then the sum of the target's
        /// high watermarks (written, committed or not); `stable` the sum of its last stable offsets.
        #[arg(long)]
        committed: bool,
    },
    /// Read a topic from its beginning until `expect` records arrived (or `timeout` seconds passed); print
    /// the end-to-end latency (receive time − record timestamp) percentiles as JSON.
    Latency {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partitions: i32,
        #[arg(long)]
        expect: u64,
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        /// Also read the topic the records were replicated from, on this cluster: adds the latency a reader of
        /// the source sees (the floor under any replicator) and each record's hop (target receive − source
        /// receive, paired by partition and offset), overall and for the worst seconds.
        #[arg(long, requires = "source_topic")]
        source_bootstrap: Option<String>,
        #[arg(long, requires = "source_bootstrap")]
        source_topic: Option<String>,
    },
    /// Create topics (comma-separated) with `partitions` each, replication factor 1, in one request.
    CreateTopics {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topics: String,
        #[arg(long)]
        partitions: i32,
    },
    /// Delete topics (comma-separated); one that does not exist is no error.
    DeleteTopics {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topics: String,
    },
}

/// Which cluster and topics are read, and where each is replicated to.
#[derive(clap::Args)]
struct Route {
    /// Source bootstrap servers.
    #[arg(long)]
    source: String,
    /// Target bootstrap servers.
    #[arg(long)]
    target: String,
    /// SOURCE_TOPIC=TARGET_TOPIC (repeatable).
    #[arg(long = "map", required = true)]
    maps: Vec<String>,
}

impl Route {
    fn pairs(&self) -> Vec<(String, String)> {
        self.maps
            .iter()
            .map(|map| {
                let (source, target) =
                    map.split_once('=').unwrap_or_else(|| panic!("--map wants SOURCE=TARGET: {map}"));
                (source.to_owned(), target.to_owned())
            })
            .collect()
    }
}

fn main() {
    // `cargo test --all-targets` and `cargo bench` without arguments run this binary too: nothing to do then.
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    if args.first().is_none_or(|arg| arg.starts_with('-')) {
        return;
    }
    let cli = Cli::parse_from(std::iter::once("pipe".to_owned()).chain(args));
    let result = match cli.command {
        Command::Pipe { route, consumer_set, producer_set } => {
            pipe(&route.source, &route.target, &route.pairs(), &consumer_set, &producer_set)
        }
        Command::Produce {
            bootstrap,
            topics,
            partitions,
            records,
            seconds,
            size,
            rate,
            linger_ms,
            no_idempotence,
            warmup,
            compression,
            payload,
        } => {
            let linger_ms = linger_ms.unwrap_or(if rate > 0.0 { 5 } else { 20 });
            let idempotence = !no_idempotence;
            let load = Load { records, seconds, size, rate, linger_ms, idempotence, warmup, compression, payload };
            produce(&bootstrap, &split(&topics), partitions, &load)
        }
        Command::Watch { route, partitions, interval_ms, timeout, committed } => {
            let interval = Duration::from_millis(interval_ms);
            watch(&route.source, &route.target, &route.pairs(), partitions, interval, timeout, committed)
        }
        Command::Latency { bootstrap, topic, partitions, expect, timeout, source_bootstrap, source_topic } => {
            let target = Read { bootstrap, topic };
            let source = source_bootstrap.zip(source_topic).map(|(bootstrap, topic)| Read { bootstrap, topic });
            latency(target, source, partitions, expect, timeout)
        }
        Command::CreateTopics { bootstrap, topics, partitions } => {
            create_topics(&bootstrap, &split(&topics), partitions)
        }
        Command::DeleteTopics { bootstrap, topics } => delete_topics(&bootstrap, &split(&topics)),
    };
    if let Err(error) = result {
        eprintln!("pipe: {error}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn split(list: &str) -> Vec<String> {
    list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

fn cluster(bootstrap: &str) -> ClusterConfig {
    ClusterConfig { bootstrap_servers: bootstrap.to_owned(), region: None, client: BTreeMap::new() }
}

fn plain(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

fn apply(config: &mut ClientConfig, settings: &[String]) {
    for setting in settings {
        let (key, value) = setting.split_once('=').unwrap_or_else(|| panic!("KEY=VALUE expected: {setting}"));
        config.set(key, value);
    }
}

/// Prints librdkafka's log lines (`--consumer-set debug=...`) to stderr.
struct StderrLog;

impl ClientContext for StderrLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        eprintln!("{:.3} {level:?} {facility}: {message}", now_secs());
    }
}

impl ConsumerContext for StderrLog {}

/// Counts acknowledgements and failures of the pipe's producer.
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) < 10 {
                    eprintln!("pipe: delivery failed: {error}");
                }
            }
        }
    }
}

fn pipe(
    source: &str,
    target: &str,
    maps: &[(String, String)],
    consumer_set: &[String],
    producer_set: &[String],
) -> Result<()> {
    let mut assignment = TopicPartitionList::new();
    let mut target_of = HashMap::new();
    let metadata_client: BaseConsumer = plain(source).create()?;
    for (source_topic, target_topic) in maps {
        let metadata = metadata_client.fetch_metadata(Some(source_topic), Duration::from_secs(10))?;
        let partitions = metadata.topics().first().map_or(0, |topic| topic.partitions().len());
        if partitions == 0 {
            return Err(format!("source topic {source_topic} has no partitions").into());
        }
        for partition in 0..partitions as i32 {
            assignment.add_partition_offset(source_topic, partition, Offset::Beginning)?;
        }
        target_of.insert(source_topic.clone(), target_topic.clone());
    }
    drop(metadata_client);

    let mut consumer_config = client_config("raw-source", &cluster(source), Role::Consumer)?;
    // ferry gives every partition a queue of its own, and librdkafka applies these two prefetch limits to the
    // queue a partition's records wait in. Here every partition feeds the one consumer queue, so the same
    // per-partition budget is the limit times the partition count (else the pipe backs off fetching for
    // fetch.queue.backoff.ms whenever the shared queue holds one partition's worth).
    for key in ["queued.min.messages", "queued.max.messages.kbytes"] {
        let per_partition: i64 = consumer_config.get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        if per_partition > 0 {
            let limit = if key == "queued.min.messages" { 10_000_000 } else { 2_097_151 };
            consumer_config.set(key, (per_partition * assignment.count() as i64).min(limit).to_string());
        }
    }
    apply(&mut consumer_config, consumer_set);
    if consumer_set.iter().any(|setting| setting.starts_with("debug=")) {
        consumer_config.set_log_level(RDKafkaLogLevel::Debug);
    }
    let consumer: BaseConsumer<StderrLog> = consumer_config.create_with_context(StderrLog)?;
    let mut producer_config = client_config("raw-target", &cluster(target), Role::Producer)?;
    apply(&mut producer_config, producer_set);
    let producer: BaseProducer<Deliveries> =
        producer_config.create_with_context(Deliveries { acked: AtomicU64::new(0), failed: AtomicU64::new(0) })?;

    consumer.assign(&assignment)?;
    eprintln!("pipe: copying {} partitions", assignment.count());

    let stop = stop_on_sigterm();
    let mut sent: u64 = 0;
    let mut queue_full: u64 = 0;
    let verbose = std::env::var_os("PIPE_VERBOSE").is_some();
    let mut last_report = Instant::now();
    loop {
        if verbose && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "pipe: sent {sent} acked {} queue-full {queue_full} in-queue {}",
                producer.context().acked.load(Ordering::Relaxed),
                producer.in_flight_count()
            );
        }
        if stop.load(Ordering::Relaxed) {
            producer.flush(Duration::from_secs(30))?;
            let (acked, failed) =
                (producer.context().acked.load(Ordering::Relaxed), producer.context().failed.load(Ordering::Relaxed));
            eprintln!("pipe: stopped after {sent} records sent, {acked} acknowledged, {failed} failed");
            return if failed == 0 { Ok(()) } else { Err(format!("{failed} records failed").into()) };
        }
        let message = match consumer.poll(Duration::from_millis(100)) {
            None => {
                producer.poll(Duration::ZERO);
                continue;
            }
            Some(Err(error)) => {
                eprintln!("pipe: consumer error: {error}");
                continue;
            }
            Some(Ok(message)) => message,
        };
        let Some(target_topic) = target_of.get(message.topic()) else { continue };
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(target_topic).partition(message.partition());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(timestamp) = message.timestamp().to_millis() {
            record = record.timestamp(timestamp);
        }
        if let Some(headers) = message.headers() {
            record = record.headers(headers.detach());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    queue_full += 1;
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
        sent += 1;
        if sent % 256 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
}

/// A flag set by SIGTERM (served by a thread of its own).
fn stop_on_sigterm() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let mut terminate = runtime
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) })
        .expect("SIGTERM handler");
    std::thread::spawn(move || {
        runtime.block_on(terminate.recv());
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// A buffer of incompressible bytes; record values are windows of it.
fn filler(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Values whose windows `text` records are: 16 MiB, so the records of one batch (or one compression window) are
/// as good as never the same bytes.
const DISTINCT_BYTES: usize = 16 << 20;

/// A buffer of `len` bytes of space-separated words drawn uniformly from 256 made-up lowercase words of 2 to 9
/// letters: no two windows alike, but compressible.
fn text_filler(len: usize) -> Vec<u8> {
    let bytes = filler(256 * 10 + len * 2);
    let mut vocabulary = Vec::with_capacity(256);
    for (word, chunk) in bytes[..256 * 10].chunks(10).enumerate() {
        let letters = 2 + word % 8;
        vocabulary.push(chunk[..letters].iter().map(|b| b'a' + b % 26).collect::<Vec<u8>>());
    }
    let mut out = Vec::with_capacity(len + 10);
    for choice in &bytes[256 * 10..] {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(&vocabulary[*choice as usize]);
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// What the load generator's values hold (`produce --payload`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Payload {
    Repeat,
    Random,
    Text,
}

/// What `produce` sends.
struct Load {
    records: u64,
    seconds: f64,
    size: usize,
    rate: f64,
    linger_ms: u64,
    idempotence: bool,
    warmup: bool,
    compression: String,
    payload: Payload,
}

/// Header of the records `produce --warmup` sends first; `latency` does not count them.
const WARMUP_HEADER: &str = "ferry-bench-warmup";

fn produce(bootstrap: &str, topics: &[String], partitions: i32, load: &Load) -> Result<()> {
    let Load { records, seconds, size, rate, .. } = *load;
    if records == 0 && seconds <= 0.0 {
        return Err("give --records or --seconds".into());
    }
    let producer: BaseProducer = plain(bootstrap)
        .set("enable.idempotence", load.idempotence.to_string())
        .set("acks", "all")
        .set("linger.ms", load.linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", "0")
        .set("compression.type", &load.compression)
        .create()?;
    // Values are windows of `data`, starting `window` bytes apart at most.
    let (data, window) = match load.payload {
        Payload::Repeat => (filler(size + 4096), 4096),
        Payload::Random => (filler(size + DISTINCT_BYTES), DISTINCT_BYTES),
        Payload::Text => (text_filler(size + DISTINCT_BYTES), DISTINCT_BYTES),
    };
    let targets: Vec<(&str, i32)> =
        topics.iter().flat_map(|topic| (0..partitions).map(move |partition| (topic.as_str(), partition))).collect();
    if load.warmup {
        for &(topic, partition) in &targets {
            let headers = OwnedHeaders::new().insert(Header { key: WARMUP_HEADER, value: Some(&b"1"[..]) });
            let record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(topic).partition(partition).payload(&data[..size]).headers(headers);
            producer.send(record).map_err(|(error, _)| error)?;
        }
        producer.flush(Duration::from_secs(60))?;
    }
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        if records > 0 && sent >= records {
            break;
        }
        let elapsed = start.elapsed().as_secs_f64();
        if seconds > 0.0 && elapsed >= seconds {
            break;
        }
        if rate > 0.0 && (sent as f64) >= rate * elapsed {
            // Ahead of the rate: sleep until the next record is due. Not `poll` with a short timeout: rdkafka
            // rounds the remaining time down to whole milliseconds and spins on a zero timeout, which made this
            // generator burn a whole core and starve the brokers and replicator it measures.
            producer.poll(Duration::ZERO);
            let due = sent as f64 / rate;
            std::thread::sleep(Duration::from_secs_f64((due - elapsed).clamp(0.0, 0.001)));
            continue;
        }
        let (topic, partition) = targets[(sent % targets.len() as u64) as usize];
        let offset = match load.payload {
            Payload::Repeat => (sent as usize * 61) % window,
            // A multiplicative hash of the record number: windows all over the buffer, not overlapping their
            // neighbours in a batch.
            Payload::Random | Payload::Text => (sent.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % window,
        };
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).partition(partition).payload(&data[offset..offset + size]).timestamp(now_ms());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(2));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
        sent += 1;
        if sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(600))?;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"records\": {sent}, \"seconds\": {elapsed:.3}, \"records_per_sec\": {:.0}}}",
        sent as f64 / elapsed.max(1e-9)
    );
    Ok(())
}

/// End offsets of every partition of `topic`; `None` for a partition (or topic) that does not exist yet. With
/// librdkafka's `isolation.level=read_committed` (its default) the end offset is the last stable offset, with
/// `read_uncommitted` the high watermark.
fn end_offsets(client: &BaseConsumer, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    (0..partitions)
        .map(|partition| client.fetch_watermarks(topic, partition, Duration::from_secs(5)).ok().map(|w| w.1))
        .collect()
}

/// What identifies a copied record: a replicator keeps timestamp, key and value.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    timestamp_ms: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

impl Fingerprint {
    fn of(message: &rdkafka::message::BorrowedMessage<'_>) -> Fingerprint {
        Fingerprint {
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
        }
    }
}

/// A consumer that reads single partitions at given offsets (committed records only) up to their end.
fn reader(bootstrap: &str) -> Result<BaseConsumer> {
    Ok(plain(bootstrap)
        .set("group.id", "ferry-bench-watch-unused")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()?)
}

/// The last record of each partition of `topic` read from the given offset up to the partition's end (for a
/// read_committed reader: its last stable offset); `None` for a partition without a record in that range.
fn last_records(
    consumer: &BaseConsumer,
    topic: &str,
    from: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, Option<Fingerprint>>> {
    let mut assignment = TopicPartitionList::new();
    for (&partition, &offset) in from {
        assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.assign(&assignment)?;
    let mut last: BTreeMap<i32, Option<Fingerprint>> = BTreeMap::new();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while at_end.len() < from.len() {
        if Instant::now() > deadline {
            return Err(format!("{topic}: could not read to the end of partitions {from:?} in 30 s").into());
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last.insert(message.partition(), Some(Fingerprint::of(&message)));
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => eprintln!("watch: reading {topic}: {error}"),
            None => {}
        }
    }
    consumer.unassign()?;
    Ok(from.keys().map(|partition| (*partition, last.remove(partition).flatten())).collect())
}

fn watch(
    source: &str,
    target: &str,
    maps: &[(String, String)],
    partitions: i32,
    interval: Duration,
    timeout: f64,
    committed: bool,
) -> Result<()> {
    let source_client: BaseConsumer = plain(source).create()?;
    let target_client: BaseConsumer = plain(target).set("isolation.level", "read_committed").create()?;
    // With --committed: what was written, committed or not (the first record on the target starts the copy window
    // as it does for a replicator without transactions).
    let written_client: Option<BaseConsumer> =
        if committed { Some(plain(target).set("isolation.level", "read_uncommitted").create()?) } else { None };
    let mut source_ends = Vec::new();
    for (source_topic, _) in maps {
        for end in end_offsets(&source_client, source_topic, partitions) {
            source_ends.push(end.ok_or_else(|| format!("cannot read the end offsets of {source_topic}"))?);
        }
    }
    let source_total: i64 = source_ends.iter().sum();
    // With --committed: each source partition's last record, what the target partition's last committed record
    // must be once everything is copied (None for an empty partition), and which target partitions showed it.
    let mut source_last: Vec<Option<Fingerprint>> = Vec::new();
    let mut verified = vec![false; source_ends.len()];
    let mut window = vec![1_000_i64; source_ends.len()];
    let checker = if committed {
        let source_reader = reader(source)?;
        for (index, (source_topic, _)) in maps.iter().enumerate() {
            let ends = &source_ends[index * partitions as usize..(index + 1) * partitions as usize];
            let from: BTreeMap<i32, i64> =
                (0..partitions).filter(|p| ends[*p as usize] > 0).map(|p| (p, ends[p as usize] - 1)).collect();
            let mut last =
                if from.is_empty() { BTreeMap::new() } else { last_records(&source_reader, source_topic, &from)? };
            for partition in 0..partitions {
                let fingerprint = last.remove(&partition).flatten();
                if ends[partition as usize] > 0 && fingerprint.is_none() {
                    return Err(format!("cannot read the last record of {source_topic}[{partition}]").into());
                }
                source_last.push(fingerprint);
            }
        }
        Some(reader(target)?)
    } else {
        None
    };
    let start = Instant::now();
    let mut stdout = std::io::stdout().lock();
    // Until a replicator created its target topic, watermark requests for it would wait out their timeout.
    let mut created = vec![false; maps.len()];
    loop {
        let mut target_ends = Vec::with_capacity(source_ends.len());
        let mut written_ends = Vec::with_capacity(source_ends.len());
        for ((_, target_topic), created) in maps.iter().zip(created.iter_mut()) {
            if !*created {
                let metadata = target_client.fetch_metadata(Some(target_topic), Duration::from_secs(5))?;
                *created = metadata
                    .topics()
                    .first()
                    .is_some_and(|topic| topic.error().is_none() && topic.partitions().len() as i32 == partitions);
            }
            if *created {
                if let Some(written_client) = &written_client {
                    written_ends.extend(
                        end_offsets(written_client, target_topic, partitions).into_iter().map(|e| e.unwrap_or(0)),
                    );
                }
                target_ends
                    .extend(end_offsets(&target_client, target_topic, partitions).into_iter().map(|e| e.unwrap_or(0)));
            } else {
                target_ends.extend(std::iter::repeat_n(0, partitions as usize));
                written_ends.extend(std::iter::repeat_n(0, partitions as usize));
            }
        }
        let caught_up = match &checker {
            None => target_ends.iter().zip(&source_ends).all(|(target, source)| target >= source),
            Some(checker) => {
                // A partition whose last stable offset is short of the source's end certainly misses records (it
                // holds at least as many offsets as records); one at or past it may still miss the last records of
                // up to one offset per commit marker: compare its last committed record with the source's.
                for (index, (_, target_topic)) in maps.iter().enumerate() {
                    let range = index * partitions as usize..(index + 1) * partitions as usize;
                    let from: BTreeMap<i32, i64> = range
                        .clone()
                        .filter(|&i| !verified[i] && target_ends[i] >= source_ends[i])
                        .map(|i| ((i - range.start) as i32, (target_ends[i] - window[i]).max(0)))
                        .collect();
                    if from.is_empty() {
                        continue;
                    }
                    for (partition, last) in last_records(checker, target_topic, &from)? {
                        let i = range.start + partition as usize;
                        if last.is_none() && source_last[i].is_some() {
                            window[i] *= 10; // only markers in the window: look further back next time
                        }
                        verified[i] = last == source_last[i];
                    }
                }
                verified.iter().all(|done| *done)
            }
        };
        let target_total: i64 = if committed { written_ends.iter().sum() } else { target_ends.iter().sum() };
        let stable =
            if committed { format!(", \"stable\": {}", target_ends.iter().sum::<i64>()) } else { String::new() };
        writeln!(
            stdout,
            "{{\"t\": {:.3}, \"source\": {source_total}, \"target\": {target_total}{stable}, \"caught_up\": {caught_up}}}",
            now_secs(),
        )?;
        stdout.flush()?;
        if caught_up {
            return Ok(());
        }
        if start.elapsed().as_secs_f64() > timeout {
            return Err(format!("not caught up after {timeout} s").into());
        }
        std::thread::sleep(interval);
    }
}

/// A topic to read from its beginning, on one cluster.
struct Read {
    bootstrap: String,
    topic: String,
}

/// When a reader received one record.
#[derive(Clone, Copy)]
struct Receipt {
    partition: i32,
    /// The record's place among the stamped records of its partition (0, 1, ...), in offset order.
    ordinal: i64,
    timestamp_ms: i64,
    received_ms: i64,
}

/// Reads `read` from its beginning until `expect` stamped records arrived or `timeout` passed.
fn receipts(read: &Read, partitions: i32, expect: u64, timeout: f64) -> Result<Vec<Receipt>> {
    let consumer: BaseConsumer = plain(&read.bootstrap)
        .set("group.id", "ferry-bench-latency-unused")
        .set("enable.auto.commit", "false")
        // librdkafka's default, spelled out: an exactly-once replicator's records count once committed.
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(&read.topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let start = Instant::now();
    let mut receipts = Vec::with_capacity(expect as usize);
    let mut count_of: HashMap<i32, i64> = HashMap::new();
    while (receipts.len() as u64) < expect && start.elapsed().as_secs_f64() < timeout {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let warmup =
                    message.headers().is_some_and(|headers| headers.iter().any(|header| header.key == WARMUP_HEADER));
                if let (Some(timestamp_ms), false) = (message.timestamp().to_millis(), warmup) {
                    let count = count_of.entry(message.partition()).or_default();
                    *count += 1;
                    receipts.push(Receipt {
                        partition: message.partition(),
                        ordinal: *count - 1,
                        timestamp_ms,
                        received_ms: now_ms(),
                    });
                }
            }
            Some(Err(error)) => eprintln!("latency: consumer error on {}: {error}", read.topic),
            None => {}
        }
    }
    if (receipts.len() as u64) < expect {
        return Err(
            format!("{}: only {} of {expect} records arrived within {timeout} s", read.topic, receipts.len()).into()
        );
    }
    Ok(receipts)
}

/// p50, p99 and max of `values` (sorted in place); -1 when empty.
fn quantiles(values: &mut [i64]) -> [i64; 3] {
    values.sort_unstable();
    [0.5, 0.99, 1.0].map(|q| {
        if values.is_empty() {
            return -1;
        }
        values[((values.len() - 1) as f64 * q).round() as usize]
    })
}

fn latency(target: Read, source: Option<Read>, partitions: i32, expect: u64, timeout: f64) -> Result<()> {
    let source_reader = source.map(|source| std::thread::spawn(move || receipts(&source, partitions, expect, timeout)));
    let at_target = receipts(&target, partitions, expect, timeout)?;
    let mut end_to_end: Vec<i64> = at_target.iter().map(|r| r.received_ms - r.timestamp_ms).collect();
    let [p50, p99, max] = quantiles(&mut end_to_end);
    let mut report = serde_json::json!({"records": at_target.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max});
    if let Some(reader) = source_reader {
        let at_source = reader.join().map_err(|_| "source reader panicked")??;
        for (key, value) in split_by_hop(&at_source, &at_target) {
            report[key] = value;
        }
    }
    println!("{report}");
    Ok(())
}

/// The report fields that split each record's end-to-end latency into its source part (record timestamp → a
/// source reader has it) and its hop (→ a target reader has it). Replicators keep partition, order and timestamp,
/// and the topics are new, so the n-th stamped record of a partition is the n-th on both sides (not the same
/// offset: a transactional target has commit markers between records); a pair whose timestamps differ is counted
/// as unpaired instead (a replicator that wrote duplicates).
fn split_by_hop(at_source: &[Receipt], at_target: &[Receipt]) -> Vec<(&'static str, serde_json::Value)> {
    let source_of: HashMap<(i32, i64), Receipt> =
        at_source.iter().map(|receipt| ((receipt.partition, receipt.ordinal), *receipt)).collect();
    let first_ms = at_target.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
    let (mut source_part, mut hop, mut unpaired) = (Vec::new(), Vec::new(), 0);
    // Per second of record timestamps: the worst end-to-end latency, and the worst source part and hop then.
    let mut seconds: BTreeMap<i64, [i64; 3]> = BTreeMap::new();
    for target in at_target {
        let Some(source) =
            source_of.get(&(target.partition, target.ordinal)).filter(|s| s.timestamp_ms == target.timestamp_ms)
        else {
            unpaired += 1;
            continue;
        };
        let parts = [
            target.received_ms - target.timestamp_ms,
            source.received_ms - source.timestamp_ms,
            target.received_ms - source.received_ms,
        ];
        source_part.push(parts[1]);
        hop.push(parts[2]);
        let worst = seconds.entry((target.timestamp_ms - first_ms) / 1000).or_insert([i64::MIN; 3]);
        for (worst, part) in worst.iter_mut().zip(parts) {
            *worst = (*worst).max(part);
        }
    }
    let [source_p50, source_p99, source_max] = quantiles(&mut source_part);
    let [hop_p50, hop_p99, hop_max] = quantiles(&mut hop);
    let mut worst: Vec<(i64, [i64; 3])> = seconds.into_iter().collect();
    worst.sort_by_key(|(_, [end_to_end, ..])| std::cmp::Reverse(*end_to_end));
    let worst: Vec<serde_json::Value> = worst
        .iter()
        .take(5)
        .map(|(second, [end_to_end, source, hop])| {
            serde_json::json!({"second": second, "max_ms": end_to_end, "source_max_ms": source, "hop_max_ms": hop})
        })
        .collect();
    vec![
        ("source_p50_ms", source_p50.into()),
        ("source_p99_ms", source_p99.into()),
        ("source_max_ms", source_max.into()),
        ("hop_p50_ms", hop_p50.into()),
        ("hop_p99_ms", hop_p99.into()),
        ("hop_max_ms", hop_max.into()),
        ("unpaired", unpaired.into()),
        ("worst_seconds", worst.into()),
    ]
}

fn create_topics(bootstrap: &str, topics: &[String], partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = plain(bootstrap).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(120)));
    // One request per chunk: a single-node broker creates a few thousand partitions per request comfortably.
    for chunk in topics.chunks(20) {
        let mut attempt = 0;
        loop {
            let new_topics: Vec<NewTopic<'_>> =
                chunk.iter().map(|topic| NewTopic::new(topic, partitions, TopicReplication::Fixed(1))).collect();
            let mut retry = false;
            for result in futures::executor::block_on(admin.create_topics(&new_topics, &options))? {
                match result {
                    Ok(_) => {}
                    Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => eprintln!("create-topics: {topic} exists"),
                    // A broker that missed a heartbeat on a busy machine is fenced for a moment: no broker to
                    // place replicas on. Retry the chunk (topics already created report TopicAlreadyExists).
                    Err((topic, code)) if attempt < 10 && is_transient(code) => {
                        eprintln!("create-topics: {topic}: {code}; retrying");
                        retry = true;
                    }
                    Err((topic, code)) => return Err(format!("cannot create {topic}: {code}").into()),
                }
            }
            if !retry {
                break;
            }
            attempt += 1;
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    Ok(())
}

fn delete_topics(bootstrap: &str, topics: &[String]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = plain(bootstrap).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(120)));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for chunk in names.chunks(20) {
        for result in futures::executor::block_on(admin.delete_topics(chunk, &options))? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => return Err(format!("cannot delete {topic}: {code}").into()),
            }
        }
    }
    Ok(())
}

fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::BrokerNotAvailable
    )
}

//! Shared harness of the end-to-end tests: the dev env's real clusters, Kafka clients to feed and read them,
//! and ferry processes started from the built binary.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// The dev env's addresses, from `eval "$(scripts/dev-env up)"`.
pub struct TestEnv {
    pub source: String,
    pub target: String,
    pub kafka_lib: String,
}

/// The dev env of the calling test, or returns from it after saying it is skipped (see `tests/support/dev_env.rs`).
macro_rules! test_env {
    () => {{
        let [source, target, kafka_lib] =
            dev_env_vars!("FERRY_TEST_SOURCE_BOOTSTRAP", "FERRY_TEST_TARGET_BOOTSTRAP", "FERRY_TEST_KAFKA_LIB");
        crate::common::TestEnv { source, target, kafka_lib }
    }};
}

/// The dev env's secured parts (issue 15): SASL_SSL listeners of both clusters, its users, and the etcd with TLS,
/// client certificates and auth.
pub struct SecureEnv {
    /// The plain parts, for what a test does not need to do securely.
    pub plain: TestEnv,
    /// SASL_SSL bootstrap of the source cluster.
    pub source: String,
    /// SASL_SSL bootstrap of the target cluster.
    pub target: String,
    /// PEM of the CA that signed the brokers' (and etcd's) certificates.
    pub ca_file: String,
    /// A SCRAM-SHA-512 super user.
    pub admin: Login,
    /// A SCRAM-SHA-512 user no ACL allows anything.
    pub limited: Login,
    /// The etcd with TLS, client certificates and auth.
    pub etcd: SecureEtcd,
}

/// A SASL user.
#[derive(Clone)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// The secured etcd and ferry's credentials for it.
pub struct SecureEtcd {
    pub endpoints: String,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub username: String,
    pub password: String,
}

/// The dev env's secured parts, or returns from the calling test after saying it is skipped.
#[allow(unused_macros)] // only the e2e binary runs secured tests; network and throttle share this file
macro_rules! secure_env {
    () => {{
        let plain = test_env!();
        let [source, target, ca_file, user, password, limited_user, limited_password] = dev_env_vars!(
            "FERRY_TEST_SOURCE_SECURE_BOOTSTRAP",
            "FERRY_TEST_TARGET_SECURE_BOOTSTRAP",
            "FERRY_TEST_CA_FILE",
            "FERRY_TEST_SASL_USERNAME",
            "FERRY_TEST_SASL_PASSWORD",
            "FERRY_TEST_SASL_LIMITED_USERNAME",
            "FERRY_TEST_SASL_LIMITED_PASSWORD",
        );
        let [endpoints, etcd_ca, cert_file, key_file, etcd_user, etcd_password] = dev_env_vars!(
            "FERRY_TEST_SECURE_ETCD_ENDPOINTS",
            "FERRY_TEST_ETCD_CA_FILE",
            "FERRY_TEST_ETCD_CERT_FILE",
            "FERRY_TEST_ETCD_KEY_FILE",
            "FERRY_TEST_ETCD_USERNAME",
            "FERRY_TEST_ETCD_PASSWORD",
        );
        crate::common::SecureEnv {
            plain,
            source,
            target,
            ca_file,
            admin: crate::common::Login { username: user, password },
            limited: crate::common::Login { username: limited_user, password: limited_password },
            etcd: crate::common::SecureEtcd {
                endpoints,
                ca_file: etcd_ca,
                cert_file,
                key_file,
                username: etcd_user,
                password: etcd_password,
            },
        }
    }};
}

impl SecureEnv {
    /// Client settings for a SASL_SSL listener of the dev env, as `login`.
    pub fn client(&self, bootstrap: &str, login: &Login) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", &login.username)
            .set("sasl.password", &login.password)
            .set("ssl.ca.location", &self.ca_file);
        config
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{:x}-{}", nanos % 0xffff_ffff, COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client")
}

pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    create_topic_with(&admin(bootstrap), topic, partitions, configs).await;
}

/// [`create_topic`] through an admin client of the caller's (a secured listener's).
pub async fn create_topic_with(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        new_topic = new_topic.set(key, value);
    }
    let results = admin.create_topics([&new_topic], &AdminOptions::new()).await.expect("create topics");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot create {topic}: {code}"));
    }
}

pub async fn add_partitions(bootstrap: &str, topic: &str, partitions: usize) {
    let results = admin(bootstrap)
        .create_partitions([&NewPartitions::new(topic, partitions)], &AdminOptions::new())
        .await
        .expect("create partitions");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot grow {topic}: {code}"));
    }
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    producer_with(ClientConfig::new().set("bootstrap.servers", bootstrap).clone())
}

/// [`producer`] on the caller's connection settings (a secured listener's).
pub fn producer_with(mut connection: ClientConfig) -> FutureProducer {
    connection.set("enable.idempotence", "true").set("linger.ms", "5").create().expect("producer")
}

/// Explicit record timestamps start ten minutes before this test process started: recent enough that no retention
/// check deletes them mid-test (time-based retention reads record timestamps), fixed so records can be rebuilt.
fn timestamp_base_ms() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        now - 10 * 60 * 1000
    })
}

/// A record as the tests compare it, field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: rdkafka::Timestamp,
}

impl Record {
    /// A record with a value naming it; every third has no key, every fifth no value, all have headers.
    pub fn numbered(topic: &str, partition: i32, seq: u64) -> Self {
        let id = format!("{topic}/{partition}/{seq}");
        Record {
            key: (seq % 3 != 0).then(|| format!("key-{}", seq % 17).into_bytes()),
            value: (seq % 5 != 0).then(|| format!("value {id} {}", "x".repeat((seq % 40) as usize)).into_bytes()),
            headers: vec![
                ("id".to_owned(), Some(id.into_bytes())),
                ("bin".to_owned(), Some(vec![0, 159, 146, 150, (seq % 256) as u8])),
                ("dup".to_owned(), Some(b"first".to_vec())),
                ("dup".to_owned(), Some(b"second".to_vec())),
                ("null".to_owned(), None),
            ],
            timestamp: rdkafka::Timestamp::CreateTime(timestamp_base_ms() + seq as i64 * 7),
        }
    }

    /// The value of header `id`, which names the record.
    pub fn id(&self) -> String {
        let value = self.headers.iter().find(|(key, _)| key == "id").and_then(|(_, value)| value.clone());
        String::from_utf8(value.unwrap_or_default()).unwrap()
    }
}

/// Produces `records` to one partition, in order, and waits for every acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, partition: i32, records: &[Record]) {
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(Header { key, value: value.as_deref() });
        }
        let mut future = FutureRecord::to(topic).partition(partition).headers(headers);
        if let Some(key) = &record.key {
            future = future.key(key);
        }
        if let Some(value) = &record.value {
            future = future.payload(value);
        }
        if let Some(millis) = record.timestamp.to_millis() {
            future = future.timestamp(millis);
        }
        loop {
            match producer.send_result(future) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    future = returned;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    for delivery in deliveries {
        delivery.await.expect("delivery").expect("record acknowledged");
    }
}

/// Reads a partition from its start to its current end.
pub fn read_partition(bootstrap: &str, topic: &str, partition: i32) -> Vec<(i64, Record)> {
    let (records, low, high) = read_committed(bootstrap, topic, partition);
    assert!(
        !records.is_empty() || high == low,
        "read no record of {topic}[{partition}] although its offsets run from {low} to {high}"
    );
    records
}

/// Reads a partition (read_committed) from its start to its current end: the records, and the offsets it spans.
/// Without records is legitimate while everything on it was aborted (exactly-once starting over).
pub fn read_committed(bootstrap: &str, topic: &str, partition: i32) -> (Vec<(i64, Record)>, i64, i64) {
    read_committed_with(ClientConfig::new().set("bootstrap.servers", bootstrap).clone(), topic, partition)
}

/// [`read_partition`] on the caller's connection settings (a secured listener's).
pub fn read_partition_with(connection: ClientConfig, topic: &str, partition: i32) -> Vec<(i64, Record)> {
    let (records, low, high) = read_committed_with(connection, topic, partition);
    assert!(
        !records.is_empty() || high == low,
        "read no record of {topic}[{partition}] although its offsets run from {low} to {high}"
    );
    records
}

/// [`read_committed`] on the caller's connection settings.
pub fn read_committed_with(
    mut connection: ClientConfig,
    topic: &str,
    partition: i32,
) -> (Vec<(i64, Record)>, i64, i64) {
    let consumer: BaseConsumer = connection
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // Never jump to the end: a reset must re-read, or the comparison would see no records at all.
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(low)).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut position = low;
    while position < high {
        assert!(Instant::now() < deadline, "reading {topic}[{partition}] stalled at {position} of {high}");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                position = message.offset() + 1;
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers.iter().map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec))).collect()
                    })
                    .unwrap_or_default();
                records.push((
                    message.offset(),
                    Record {
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec),
                        headers,
                        timestamp: message.timestamp(),
                    },
                ));
            }
            Some(Err(error)) => panic!("reading {topic}[{partition}]: {error}"),
            None => {
                // Transaction markers and compacted gaps can leave the end unreachable by records alone.
                let current = consumer.position().unwrap();
                if let Some(Offset::Offset(next)) =
                    current.find_partition(topic, partition).map(|element| element.offset())
                {
                    position = position.max(next);
                }
            }
        }
    }
    drop(assignment);
    (records, low, high)
}

/// The high watermark of a partition.
pub fn end_offset(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).map(|(_, high)| high).unwrap_or(-1)
}

/// Partition count of a topic, or 0 when it does not exist.
pub fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    metadata.topics().first().filter(|t| t.error().is_none()).map_or(0, |t| t.partitions().len())
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every source record of `expected` (by partition) is on `target_topic` in source order once
/// duplicates are removed, then checks that nothing was counted lost and that the duplicates are exactly those
/// ferry counted; returns how many there were.
pub async fn wait_at_least_once(
    ferry: &Ferry,
    flow: &str,
    target: &str,
    target_topic: &str,
    expected: &[Vec<Record>],
) -> usize {
    let wanted: i64 = expected.iter().map(|records| records.len() as i64).sum();
    let copies = wait_for("every record on the target", Duration::from_secs(180), || {
        // Reading every record is slow; the end offsets say cheaply when it is worth it.
        let held: i64 = (0..expected.len()).map(|p| end_offset(target, target_topic, p as i32).max(0)).sum();
        if held < wanted {
            return None;
        }
        let mut copies = BTreeMap::new();
        for (partition, expected) in expected.iter().enumerate() {
            let ids: Vec<String> =
                read_partition(target, target_topic, partition as i32).into_iter().map(|(_, r)| r.id()).collect();
            let mut seen = std::collections::BTreeSet::new();
            let first: Vec<&String> = ids.iter().filter(|id| seen.insert(id.as_str())).collect();
            if first.len() < expected.len() {
                return None;
            }
            let wanted: Vec<String> = expected.iter().map(Record::id).collect();
            assert!(
                first.iter().copied().eq(wanted.iter()),
                "{target_topic}[{partition}]: lost, foreign or reordered records"
            );
            copies.insert(partition, ids.len() - first.len());
        }
        Some(copies)
    })
    .await;
    let duplicates: usize = copies.values().sum();
    // ferry counts a duplicate when a task restarts from its checkpoint, which can come a moment after the copy.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = loop {
        let counted = ferry.metric("ferry_duplicates_total", &[("flow", flow)]).unwrap_or(0.0) as usize;
        if counted >= duplicates || Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(duplicates, counted, "duplicates on the target ({copies:?} by partition) must be the ones counted");
    assert_eq!(ferry.metric("ferry_records_lost_total", &[("flow", flow)]), Some(0.0), "records counted lost");
    duplicates
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The environment variable that makes a ferry started by [`Ferry::start_with`] log at debug level.
pub const DEBUG_LOG: (&str, &str) = ("RUST_LOG", "debug");

/// A ferry process started from the built binary, with its stdout and stderr captured.
pub struct Ferry {
    child: Child,
    pub http: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Ferry {
    /// Starts `ferry run` with `config` (YAML) written into `dir`.
    pub fn start(dir: &Path, config: &str) -> Ferry {
        let port = free_port();
        let config_path = dir.join("ferry.yaml");
        std::fs::write(&config_path, config).unwrap();
        Self::start_with(config_path, port, &[])
    }

    /// Starts `ferry run` on an existing config file, with extra environment variables; they win over the
    /// harness's own, so [`DEBUG_LOG`] forces debug logging whatever `FERRY_TEST_RUST_LOG` says.
    pub fn start_with(config_path: PathBuf, port: u16, env: &[(&str, &str)]) -> Ferry {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .args(["run", "--config"])
            .arg(&config_path)
            .env("FERRY_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", std::env::var("FERRY_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start ferry");
        let logs = Arc::new(Mutex::new(Vec::new()));
        // Both streams, so that a test can check everything ferry printed (the no-secret checks).
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let sink = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("FERRY_TEST_ECHO").is_some() {
                        eprintln!("ferry: {line}");
                    }
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Ferry { child, http: format!("http://127.0.0.1:{port}"), logs }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// GET a path of the HTTP endpoint: (status, body), or None when it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        match ureq::get(&format!("{}{path}", self.http)).timeout(Duration::from_secs(5)).call() {
            Ok(response) => Some((response.status(), response.into_string().unwrap_or_default())),
            Err(ureq::Error::Status(code, response)) => Some((code, response.into_string().unwrap_or_default())),
            Err(_) => None,
        }
    }

    /// Sum of a metric's samples whose labels include every pair in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        Some(sum_metric(&body, name, labels))
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(mut self, timeout: Duration) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status, started.elapsed(), self.logs());
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("ferry did not exit within {timeout:?} of SIGTERM; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        // A failed test shows what ferry was doing, without having to rerun it with FERRY_TEST_ECHO.
        if std::thread::panicking() && std::env::var_os("FERRY_TEST_ECHO").is_none() {
            let logs = self.logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let tail = logs.len().saturating_sub(300);
            let earlier: Vec<&String> =
                logs[..tail].iter().filter(|line| line.contains(" WARN ") || line.contains(" ERROR ")).collect();
            if !earlier.is_empty() {
                eprintln!("--- warnings and errors before that ({}) ---", self.http);
                for line in &earlier[earlier.len().saturating_sub(100)..] {
                    eprintln!("ferry: {line}");
                }
            }
            eprintln!("--- last {} lines of ferry's log ({}) ---", logs.len() - tail, self.http);
            for line in &logs[tail..] {
                eprintln!("ferry: {line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sums the samples of `name` in a Prometheus text body whose labels include every pair in `labels`.
pub fn sum_metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all_match = labels.iter().all(|(key, wanted)| label_text.contains(&format!("{key}=\"{wanted}\"")));
            all_match.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A minimal config replicating `include` from the dev env's source to its target.
pub fn config(env: &TestEnv, state_dir: &Path, flow: &str, include: &str, extra_flow: &str) -> String {
    format!(
        r#"clusters:
  src:
    bootstrap_servers: "{source}"
  dst:
    bootstrap_servers: "{target}"
checkpoint:
  store: file
  path: "{state}"
  interval: 1s
discovery:
  interval: 2s
flows:
  - name: {flow}
    source: src
    target: dst
    topics: {{ include: ['{include}'] }}
{extra_flow}"#,
        source = env.source,
        target = env.target,
        state = state_dir.display(),
    )
}

/// The stored checkpoints of a flow in the file store, as JSON: (topic, partition) -> checkpoint.
pub fn stored_checkpoints(state_dir: &Path, flow: &str) -> BTreeMap<(String, i32), serde_json::Value> {
    let Ok(bytes) = std::fs::read(state_dir.join(format!("{flow}.json"))) else { return BTreeMap::new() };
    let mut file: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    file["tasks"]
        .as_array_mut()
        .unwrap()
        .drain(..)
        .map(|task| ((task["topic"].as_str().unwrap().to_owned(), task["partition"].as_i64().unwrap() as i32), task))
        .collect()
}

/// The stored checkpoints of a flow in the file store: (topic, partition) -> next source offset.
pub fn stored_positions(state_dir: &Path, flow: &str) -> BTreeMap<(String, i32), i64> {
    stored_checkpoints(state_dir, flow)
        .into_iter()
        .map(|(task, checkpoint)| (task, checkpoint["next_source_offset"].as_i64().unwrap()))
        .collect()
}

/// A Kafka cluster of a test's own (scripts/kafka-node), for faults that must not disturb the shared clusters.
/// Stopped when dropped.
pub struct KafkaNode {
    dir: tempfile::TempDir,
    lib: String,
    /// Extra server.properties lines (scripts/kafka-node's KAFKA_NODE_PROPERTIES).
    properties: String,
    broker_port: u16,
    controller_port: u16,
    created: std::cell::Cell<bool>,
}

impl KafkaNode {
    /// A node on free loopback ports, not started yet.
    pub fn new(env: &TestEnv) -> Self {
        KafkaNode {
            dir: tempfile::tempdir().unwrap(),
            lib: env.kafka_lib.clone(),
            properties: String::new(),
            broker_port: free_port(),
            controller_port: free_port(),
            created: std::cell::Cell::new(false),
        }
    }

    /// A node whose server.properties also hold `properties` (one `key=value` per line).
    pub fn with_properties(env: &TestEnv, properties: &str) -> Self {
        let mut node = Self::new(env);
        node.properties = properties.to_owned();
        node
    }

    /// Its bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.broker_port)
    }

    /// Starts it (again, with its data, after a stop) and waits until it is ready.
    pub fn start(&self) {
        let ports = [self.broker_port.to_string(), self.controller_port.to_string()];
        let args: Vec<&str> = if self.created.get() { vec!["start"] } else { vec!["start", &ports[0], &ports[1]] };
        self.run(&args);
        self.created.set(true);
    }

    /// Stops it (SIGTERM, controlled shutdown).
    pub fn stop(&self) {
        self.run(&["stop"]);
    }

    fn run(&self, args: &[&str]) {
        let status = Command::new(repo_root().join("scripts/kafka-node"))
            .arg(args[0])
            .arg(self.dir.path())
            .args(&args[1..])
            .env("FERRY_KAFKA_LIB", &self.lib)
            .env("KAFKA_NODE_PROPERTIES", &self.properties)
            .status()
            .unwrap();
        assert!(status.success(), "kafka-node {args:?} failed");
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        if self.created.get() {
            let _ = Command::new(repo_root().join("scripts/kafka-node")).arg("stop").arg(self.dir.path()).status();
        }
    }
}

/// `ferry translate --format json` of `group` through `flow` with the config at `config`: its rows.
pub fn translate_json(config: &Path, flow: &str, group: &str) -> Vec<serde_json::Value> {
    let translate = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["translate", "--format", "json", "--config"])
        .arg(config)
        .args(["--flow", flow, "--group", group])
        .output()
        .unwrap();
    assert!(translate.status.success(), "{}", String::from_utf8_lossy(&translate.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&translate.stdout).unwrap();
    rows.as_array().expect("translate prints a JSON array").clone()
}

/// How many members `group` has on the cluster.
pub fn group_members(bootstrap: &str, group: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let groups = consumer.fetch_group_list(Some(group), Duration::from_secs(10)).unwrap();
    groups.groups().iter().map(|group| group.members().len()).sum()
}

/// Commits `offsets` (by partition number) for `group` without joining it.
pub fn commit(bootstrap: &str, group: &str, topic: &str, offsets: &[i64]) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets.iter().enumerate() {
        list.add_partition_offset(topic, partition as i32, Offset::Offset(*offset)).unwrap();
    }
    consumer.commit(&list, CommitMode::Sync).unwrap();
}

/// The committed offsets of `group` for partitions `0..partitions` (`None` where it has none).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().unwrap();
    let mut wanted = TopicPartitionList::new();
    for partition in 0..partitions {
        wanted.add_partition(topic, partition);
    }
    let list = consumer.committed_offsets(wanted, Duration::from_secs(10)).unwrap();
    let offsets = list
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        })
        .collect();
    drop(list);
    offsets
}

/// The flow settings of an exactly-once flow (appended under the flow's `topics` line).
pub const EXACTLY_ONCE: &str = "    delivery: exactly-once\n    exactly_once: { buckets: 4, commit_interval: 200ms }\n";

/// Asserts that the target partition holds, for read_committed readers, exactly `expected` in order.
pub fn assert_exactly_once(bootstrap: &str, topic: &str, partition: i32, expected: &[Record]) {
    let replicated: Vec<Record> = read_partition(bootstrap, topic, partition).into_iter().map(|(_, r)| r).collect();
    let ids = |records: &[Record]| records.iter().map(Record::id).collect::<Vec<_>>();
    if replicated != expected {
        let (got, want) = (ids(&replicated), ids(expected));
        let first_difference = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!(
            "{topic}[{partition}]: {} records read committed, {} expected; first difference at index {first_difference}: \
             {:?} instead of {:?}",
            got.len(),
            want.len(),
            got.get(first_difference),
            want.get(first_difference)
        );
    }
}

/// Produces `records` in `chunks` pieces with a pause between them, so ferry is mid-stream when a test strikes.
pub fn feed_slowly(
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    records: Vec<Vec<Record>>,
    chunks: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in 0..chunks {
            for (partition, records) in records.iter().enumerate() {
                let size = records.len().div_ceil(chunks);
                let end = ((chunk + 1) * size).min(records.len());
                let start = (chunk * size).min(end);
                produce(&producer, &topic, partition as i32, &records[start..end]).await;
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// Reads the target until it holds, for read_committed readers, exactly `expected` on every partition; fails at once
/// when a partition holds more (a duplicate can never go away).
pub async fn wait_exactly_once(bootstrap: &str, topic: &str, expected: &[Vec<Record>], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let counts: Vec<usize> =
            (0..expected.len()).map(|partition| read_committed(bootstrap, topic, partition as i32).0.len()).collect();
        for (partition, (count, expected)) in counts.iter().zip(expected).enumerate() {
            assert!(
                *count <= expected.len(),
                "{topic}[{partition}]: {count} records read, {} expected",
                expected.len()
            );
        }
        if counts.iter().zip(expected).all(|(count, expected)| *count == expected.len()) {
            break;
        }
        let wanted: Vec<usize> = expected.iter().map(Vec::len).collect();
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for every source record committed on {topic}: \
             read_committed counts per partition {counts:?}, expected {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (partition, expected) in expected.iter().enumerate() {
        assert_exactly_once(bootstrap, topic, partition as i32, expected);
    }
}

/// How ferry got over a fault, for the fault table.
pub enum Recovery {
    /// The target caught up again this long after the fault ended.
    After(Duration),
    /// Replication never stopped.
    NoInterruption,
    /// The task waits, with the reason, for an operator (by design).
    Operator,
}

/// Records one row of the fault table (docs/faults.md): printed, and appended to the file `$FERRY_FAULT_REPORT`
/// names when it is set (`scripts/test` sets it and prints the run's table at the end). `lost` says what ferry
/// lost (always 0) or what the source destroyed before ferry could copy it.
pub fn report_fault(fault: &str, delivery: &str, lost: &str, duplicates: u64, recovery: Recovery) {
    let recovered = match recovery {
        Recovery::After(after) => format!("{:.1} s", after.as_secs_f64()),
        Recovery::NoInterruption => "no interruption".to_owned(),
        Recovery::Operator => "waits for an operator, with the reason (by design)".to_owned(),
    };
    let row = format!("{fault}\t{delivery}\t{lost}\t{duplicates}\t{recovered}");
    eprintln!("fault report: {row}");
    if let Some(path) = std::env::var_os("FERRY_FAULT_REPORT") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the fault report");
        writeln!(file, "{row}").expect("append to the fault report");
    }
}

//! librdkafka client settings shared by every client ferry builds, the client context that reports errors under
//! the cluster's alias, and the classification of Kafka errors.
//!
//! Invariant: user `client` properties always win over ferry's defaults, and every log line or error a client
//! emits names the cluster alias it belongs to and shows none of the cluster's secret values.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{debug, error, info, warn};

use crate::config::ClusterConfig;
use crate::ops::metrics::Metrics;

/// Timeout for one metadata or admin request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Building a client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A `client` property could not be resolved (missing secret file or variable).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// librdkafka refused to create the client.
    #[error("cannot create a Kafka client for cluster {cluster}: {message}")]
    Create {
        /// Cluster alias.
        cluster: String,
        /// librdkafka's error, with every secret of the cluster's config redacted (its texts may quote a value).
        message: String,
    },
}

impl ClientError {
    /// librdkafka's refusal to create a client of cluster `alias`, with the cluster's secret values taken out of its
    /// text: librdkafka quotes the values it rejects, and a secret must never reach a log.
    pub fn create(alias: &str, cluster: &ClusterConfig, source: &KafkaError) -> Self {
        let message = match cluster_secrets(alias, cluster) {
            Some(secrets) => crate::config::redact_secrets(&source.to_string(), secrets.iter().map(String::as_str)),
            // The secrets cannot be read again to take them out: show nothing of librdkafka's text.
            None => "librdkafka's reason is withheld (the cluster's secrets cannot be read to redact it)".to_owned(),
        };
        ClientError::Create { cluster: alias.to_owned(), message }
    }
}

/// The values of the cluster's sensitive client properties, or `None` when they cannot be read.
fn cluster_secrets(alias: &str, cluster: &ClusterConfig) -> Option<Vec<String>> {
    let properties = cluster.client_properties(alias).ok()?;
    Some(
        properties
            .iter()
            .filter(|(_, value)| value.is_sensitive())
            .map(|(_, value)| value.expose().to_owned())
            .collect(),
    )
}

/// The role a client plays, which decides ferry's default properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads a source cluster.
    Consumer,
    /// Writes a target cluster.
    Producer,
    /// Metadata and topic administration.
    Admin,
}

/// The client configuration for `cluster` in `role`: ferry's defaults, then the user's `client` properties.
pub fn client_config(alias: &str, cluster: &ClusterConfig, role: Role) -> Result<ClientConfig, ClientError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &cluster.bootstrap_servers);
    config.set("client.id", format!("ferry-{alias}"));
    match role {
        Role::Consumer => {
            config
                // Aborted transactions must never reach the target.
                .set("isolation.level", "read_committed")
                // ferry tracks positions itself; the source cluster never sees a ferry consumer group.
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "false")
                // A position the source no longer has (retention deleted it, or the topic was recreated) is an
                // error the task handles: it counts what it never saw before it moves on (never a silent jump).
                .set("auto.offset.reset", "error")
                // librdkafka prefetches per partition (each task has its own partition queue); its defaults
                // (64 MiB and 100,000 records each) do not fit thousands of tasks. A partition is fetched again
                // while its queue holds less than 1 MiB and fewer than 5,000 records, and one fetch brings at
                // most 1 MiB of it (max.partition.fetch.bytes), so a task always has its next fetch ready behind
                // the records it is forwarding; more only costs memory (every queued record also costs
                // librdkafka a few hundred bytes of bookkeeping, which dominates for small records). Measured
                // in docs/benchmarks.md.
                .set("queued.max.messages.kbytes", "1024")
                .set("queued.min.messages", "5000")
                // A partition whose queue is over those limits is not fetched again for this long (librdkafka's
                // default, 1 s, leaves a busy partition idle once its task has drained the queue).
                .set("fetch.queue.backoff.ms", "10")
                .set("fetch.wait.max.ms", "100")
                // Manual assignment needs a group id only for librdkafka's bookkeeping; nothing is committed.
                .set("group.id", format!("ferry-{alias}-unused"));
        }
        Role::Producer => {
            config
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                // Never give up on a record: while the target is down records wait (and so does the source side).
                .set("message.timeout.ms", "0")
                // Bounds the producer's buffer; when full, tasks wait (backpressure), they never drop.
                .set("queue.buffering.max.kbytes", "65536")
                .set("queue.buffering.max.messages", "200000")
                .set("batch.size", "1000000")
                // librdkafka's 1 MB default would refuse records the source topic allows (max.message.bytes is
                // copied to the target topic); let the target broker decide.
                .set("message.max.bytes", "67108864");
        }
        Role::Admin => {
            // Asking the metadata of one named topic must never create it on a broker that auto-creates topics
            // (librdkafka's default for this client type would allow it).
            config.set("allow.auto.create.topics", "false");
        }
    }
    for (key, value) in cluster.client_properties(alias)? {
        config.set(key, value.expose());
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    Ok(config)
}

/// The last error a client of each cluster reported, by alias, redacted. Shared by all clients of a cluster: the
/// consumers and producers report errors, while an admin client's go to a queue rust-rdkafka never polls.
static LAST_ERRORS: LazyLock<Mutex<BTreeMap<String, (Instant, String)>>> = LazyLock::new(Mutex::default);

/// The last error librdkafka reported for a client of cluster `alias` (an authentication or TLS failure, an
/// unreachable broker), redacted, if it came within `recent`: a failed request's own error only says that it failed.
pub fn recent_client_error(alias: &str, recent: Duration) -> Option<String> {
    let last = LAST_ERRORS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    last.get(alias).filter(|(at, _)| at.elapsed() <= recent).map(|(_, text)| text.clone())
}

/// Client context that logs librdkafka's errors and logs under the cluster alias, counts the errors and keeps the
/// last one (see [`recent_client_error`]), with the cluster's secret values taken out of every text.
#[derive(Clone)]
pub struct ClusterContext {
    alias: String,
    errors: prometheus::IntCounter,
    /// Sensitive property values of the cluster; `None` when they could not be read (then librdkafka's texts are
    /// withheld: the client could not be built from such a config anyway).
    secrets: Option<Arc<[String]>>,
}

impl ClusterContext {
    /// A context for clients of cluster `alias` (configured as `cluster`).
    pub fn new(alias: &str, cluster: &ClusterConfig, metrics: &Metrics) -> Self {
        Self {
            alias: alias.to_owned(),
            errors: metrics.cluster(alias).client_errors,
            secrets: cluster_secrets(alias, cluster).map(Arc::from),
        }
    }

    /// The cluster alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    fn redact(&self, text: &str) -> String {
        match &self.secrets {
            Some(secrets) => crate::config::redact_secrets(text, secrets.iter().map(String::as_str)),
            None => "librdkafka's text is withheld (the cluster's secrets cannot be read to redact it)".to_owned(),
        }
    }
}

impl ClientContext for ClusterContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let cluster = self.alias.as_str();
        let message = self.redact(message);
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                error!(cluster, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => warn!(cluster, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(cluster, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Debug => debug!(cluster, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.inc();
        let reason = self.redact(reason);
        // "1/1 brokers are down" follows every failed connection and would hide the failure that says why.
        let explains = error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown);
        let error = self.redact(&error.to_string());
        warn!(cluster = self.alias.as_str(), %error, "Kafka client error: {reason}");
        if !explains {
            return;
        }
        LAST_ERRORS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(self.alias.clone(), (Instant::now(), reason));
    }
}

/// Source consumers (manual assignment) and group clients (offset reads and commits for failover) use the same
/// context; none of them joins a group.
impl rdkafka::consumer::ConsumerContext for ClusterContext {}

/// Whether a delivery failure can succeed if the same record is sent again later (after a restart from the
/// checkpoint), as opposed to a record the target will always refuse.
pub fn is_retriable(error: &KafkaError) -> bool {
    match error.rdkafka_error_code() {
        Some(code) => !matches!(
            code,
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::UnsupportedForMessageFormat
                | RDKafkaErrorCode::InvalidTimestamp
        ),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_creation_errors_never_show_a_secret() {
        let secret_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret_file.path(), "user-from-file\n").unwrap();
        let cluster: ClusterConfig = serde_json::from_value(serde_json::json!({
            "bootstrap_servers": "127.0.0.1:1",
            "client": { "sasl.password": "hunter2-inline second-part", "sasl.username": { "file": secret_file.path() } }
        }))
        .unwrap();
        let quoted = KafkaError::ClientCreation("bad login user-from-file with hunter2-inline second-part".to_owned());
        let error = ClientError::create("us-east", &cluster, &quoted).to_string();
        assert!(!error.contains("hunter2-inline") && !error.contains("user-from-file"), "{error}");
        assert!(error.contains("us-east") && error.contains("<redacted>"), "{error}");
        // A piece of a secret (librdkafka splits list values) is not shown either.
        let piece = KafkaError::ClientCreation("mechanism from second-part refused".to_owned());
        let error = ClientError::create("us-east", &cluster, &piece).to_string();
        assert!(!error.contains("second-part") && error.contains("withheld"), "{error}");
    }

    #[test]
    fn client_errors_are_kept_per_cluster_without_secrets() {
        let cluster: ClusterConfig = serde_json::from_value(serde_json::json!({
            "bootstrap_servers": "127.0.0.1:1",
            "client": { "sasl.username": "alice", "sasl.password": "hunter2-inline" }
        }))
        .unwrap();
        let context = ClusterContext::new("errors-kept", &cluster, &Metrics::new(false));
        assert_eq!(recent_client_error("errors-kept", Duration::from_secs(60)), None);
        context.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: alice with hunter2-inline refused",
        );
        let kept = recent_client_error("errors-kept", Duration::from_secs(60)).unwrap();
        assert_eq!(kept, "SASL authentication error: alice with <redacted> refused");
        context.error(KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
        let kept = recent_client_error("errors-kept", Duration::from_secs(60)).unwrap();
        assert!(kept.starts_with("SASL authentication error"), "the failure that says why stays: {kept}");
        assert_eq!(recent_client_error("errors-kept", Duration::ZERO), None, "an old error explains nothing");
        assert_eq!(recent_client_error("another-cluster", Duration::from_secs(60)), None);
    }

    #[test]
    fn oversize_records_are_permanent_and_timeouts_are_not() {
        assert!(!is_retriable(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(!is_retriable(&KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(is_retriable(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
        assert!(is_retriable(&KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas)));
    }
}

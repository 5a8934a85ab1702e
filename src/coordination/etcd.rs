//! The etcd connection every coordinated member shares: one client, the key prefix, and request metrics.
//!
//! Invariant: every request ferry sends to etcd goes through [`Etcd::timed`], so `ferry_etcd_requests_total`
//! counts exactly what the fleet costs etcd and the latency and error series cannot miss a call.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tracing::warn;

use crate::config::{ConfigError, EtcdConfig};
use crate::ops::metrics::Metrics;

/// How long one etcd request may take before it counts as failed: long enough for a busy quorum, short enough
/// that a member notices a dead one well inside a lease TTL.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A TLS file named in `checkpoint.etcd.tls` could not be read.
    #[error("cannot read {key} at {path}: {source}")]
    TlsFile {
        /// Config key path of the file.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The password could not be resolved.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The revision asked for is older than etcd's last compaction (etcd's `ErrCompacted`); nothing to retry.
    #[error("etcd {op} at {endpoints}: the revision was already compacted")]
    Compacted {
        /// Which operation.
        op: &'static str,
        /// The configured endpoints.
        endpoints: String,
    },
    /// The request failed or timed out.
    #[error("etcd {op} at {endpoints} failed: {message}")]
    Request {
        /// Which operation (the `op` label of the metrics).
        op: &'static str,
        /// The configured endpoints, to name the cluster.
        endpoints: String,
        /// What etcd or the transport said.
        message: String,
    },
}

/// A connected etcd client with ferry's key prefix.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    endpoints: String,
    metrics: Metrics,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).field("prefix", &self.prefix).finish()
    }
}

/// Whether the warning about a password over plain http was logged (once a process).
static PLAIN_PASSWORD_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Etcd {
    /// Connects to `config.endpoints`. The connection is lazy: an unreachable etcd shows up on the first request.
    pub async fn connect(config: &EtcdConfig, metrics: &Metrics) -> Result<Self, EtcdError> {
        let endpoints = config.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), REQUEST_TIMEOUT)
            .with_keep_alive_while_idle(true)
            // etcd forgets its auth tokens when it restarts (simple tokens) or when they expire (JWT): log in again
            // instead of failing every request from then on.
            .with_auto_token_refresh(true);
        if let (Some(user), Some(password)) = (&config.username, config.resolve_password()?) {
            // etcd-client gives an endpoint without a scheme https only when TLS is configured.
            let plain: Vec<&str> = config
                .endpoints
                .iter()
                .map(String::as_str)
                .filter(|e| e.starts_with("http://") || (config.tls.is_none() && !e.starts_with("https://")))
                .collect();
            if !plain.is_empty() && !PLAIN_PASSWORD_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!(
                    endpoints = plain.join(","),
                    user = user.as_str(),
                    "checkpoint.etcd.password is sent to etcd over plain http, readable by anyone on the path; use \
                     https:// endpoints with checkpoint.etcd.tls"
                );
            }
            options = options.with_user(user.clone(), password.expose().to_owned());
        }
        if let Some(tls) = &config.tls {
            let mut tls_options = TlsOptions::new();
            if let Some(ca) = &tls.ca_file {
                tls_options =
                    tls_options.ca_certificate(Certificate::from_pem(read_pem("checkpoint.etcd.tls.ca_file", ca)?));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                tls_options = tls_options.identity(Identity::from_pem(
                    read_pem("checkpoint.etcd.tls.cert_file", cert)?,
                    read_pem("checkpoint.etcd.tls.key_file", key)?,
                ));
            }
            options = options.with_tls(tls_options);
        }
        let started = Instant::now();
        let client = Client::connect(&config.endpoints, Some(options)).await.map_err(|error| EtcdError::Request {
            op: "connect",
            endpoints: endpoints.clone(),
            message: describe(&error),
        });
        let connect = metrics.etcd_op("connect");
        connect.requests.inc();
        connect.latency.observe(started.elapsed().as_secs_f64());
        if client.is_err() {
            connect.errors.inc();
        }
        Ok(Self { client: client?, prefix: config.prefix.clone(), endpoints, metrics: metrics.clone() })
    }

    /// A clone of the client, for the streaming calls (watch, lease keep-alive) that need their own handle.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The full key for `suffix` under ferry's prefix (`suffix` starts without a slash).
    pub fn key(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.prefix)
    }

    /// The configured endpoints, comma-separated, for messages.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The member's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs one request under the timeout, counting it, its latency and its failure under `op`.
    pub async fn timed<T, F, Fut>(&self, op: &'static str, request: F) -> Result<T, EtcdError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let counted = self.metrics.etcd_op(op);
        counted.requests.inc();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, request(self.client.clone())).await;
        counted.latency.observe(started.elapsed().as_secs_f64());
        let message = match outcome {
            Ok(Ok(value)) => return Ok(value),
            // etcd answers a compaction at or below the last one with OutOfRange: an outcome, not a failure.
            Ok(Err(etcd_client::Error::GRpcStatus(status))) if status.code() == tonic::Code::OutOfRange => {
                return Err(EtcdError::Compacted { op, endpoints: self.endpoints.clone() });
            }
            Ok(Err(error)) => describe(&error),
            Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
        };
        counted.errors.inc();
        Err(EtcdError::Request { op, endpoints: self.endpoints.clone(), message })
    }
}

/// What etcd or the transport said, with the causes behind tonic's terse top-level texts ("transport error"): a
/// refused connection, a TLS alert, an untrusted certificate. None of them carries a credential: etcd's auth
/// errors name the failure, never the password.
fn describe(error: &etcd_client::Error) -> String {
    let (mut text, mut cause): (String, Option<&(dyn std::error::Error + 'static)>) = match error {
        etcd_client::Error::GRpcStatus(status) => {
            (format!("{:?}: {}", status.code(), status.message()), std::error::Error::source(status))
        }
        etcd_client::Error::TransportError(transport) => {
            ("transport error".to_owned(), std::error::Error::source(transport))
        }
        other => (other.to_string(), None),
    };
    while let Some(error) = cause {
        let said = error.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = error.source();
    }
    text
}

fn read_pem(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::TlsFile { key, path: path.display().to_string(), source })
}

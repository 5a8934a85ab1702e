//! Where task checkpoints are stored: a local directory (single member) or etcd (many members, coordination).
//!
//! Invariant: after validation, `store: etcd` implies `etcd` is present with at least one endpoint.

use std::path::PathBuf;

use serde::Deserialize;

use super::error::{ConfigError, ConfigProblem};
use super::secret::{ClientValue, Secretish};
use super::units::Duration;

/// The `checkpoint` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Which store to use; default `file`.
    pub store: StoreKind,
    /// Directory of the file store, relative to the working directory; default `./ferry-state`.
    pub path: PathBuf,
    /// etcd connection; required when `store: etcd`, ignored otherwise.
    pub etcd: Option<EtcdConfig>,
    /// How often each task's progress is written; default `5s`. Bounds the re-delivery window after a crash.
    pub interval: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            store: StoreKind::File,
            path: PathBuf::from("./ferry-state"),
            etcd: None,
            interval: Duration::from_secs(5),
        }
    }
}

/// The checkpoint store implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One directory with atomically renamed files; one member only.
    #[default]
    File,
    /// etcd: checkpoints plus membership, election and ownership for many members.
    Etcd,
}

/// The `checkpoint.etcd` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`; at least one (checked in validation, for a clearer message).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Key prefix for everything ferry writes; default `/ferry`. Starts with `/`, no trailing `/`.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// etcd user; set together with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// etcd password, inline or `{ env: VAR }` / `{ file: /path }`; never printed.
    #[serde(default)]
    pub password: Option<ClientValue>,
    /// TLS to etcd; default none (plain HTTP).
    #[serde(default)]
    pub tls: Option<EtcdTls>,
    /// TTL of the member lease (whole seconds, at least 1s); default `10s`. A crashed member's tasks move after it.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: Duration,
    /// How much etcd history the controller keeps: it compacts older revisions (etcd keeps every revision until
    /// compacted, and checkpoints rewrite their keys every interval). `0s` leaves compaction to etcd's own
    /// `--auto-compaction-retention`. Default `1h`.
    #[serde(default = "default_history_retention")]
    pub history_retention: Duration,
}

impl EtcdConfig {
    /// The password with any `env`/`file` indirection read now; the error names `checkpoint.etcd.password`.
    pub fn resolve_password(&self) -> Result<Option<Secretish>, ConfigError> {
        let Some(password) = &self.password else {
            return Ok(None);
        };
        password
            .resolve()
            .map(|value| Some(Secretish::new(value, true)))
            .map_err(|message| ConfigError::Invalid(vec![ConfigProblem::new("checkpoint.etcd.password", message)]))
    }
}

/// Default etcd key prefix.
fn default_etcd_prefix() -> String {
    "/ferry".to_string()
}

/// Default etcd history kept by the controller's compaction.
fn default_history_retention() -> Duration {
    Duration::from_secs(3600)
}

/// Default member lease TTL.
fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

/// The `checkpoint.etcd.tls` section: PEM files; all optional (a CA alone verifies the server).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdTls {
    /// CA bundle that signed the etcd server certificates; default: system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS; set together with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client private key for mutual TLS; set together with `cert_file`.
    pub key_file: Option<PathBuf>,
}

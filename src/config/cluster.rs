//! One Kafka cluster known by an alias: where to connect and which librdkafka properties to pass through.
//!
//! Invariant: the `client` map is handed to librdkafka as-is (after secret resolution) and is never printed with the
//! values of sensitive keys or of `env`/`file` indirections.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::error::{ConfigError, ConfigProblem};
use super::secret::{is_sensitive_key, ClientValue, Secretish};

/// A Kafka cluster: `clusters.<alias>` in the config.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Comma-separated `host:port` list (librdkafka `bootstrap.servers`); required, non-empty.
    pub bootstrap_servers: String,
    /// Region name used by throttles; default: the cluster's alias.
    #[serde(default)]
    pub region: Option<String>,
    /// librdkafka properties passed through unchanged (`security.protocol`, `sasl.*`, `ssl.*`, ...); default empty.
    /// Values are scalars or `{ env: VAR }` / `{ file: /path }`.
    #[serde(default)]
    pub client: BTreeMap<String, ClientValue>,
}

impl ClusterConfig {
    /// All librdkafka properties for this cluster, `bootstrap.servers` first, with `env`/`file` secrets read now.
    ///
    /// Every unresolvable secret is reported, each at `clusters.<alias>.client.<key>`.
    pub fn client_properties(&self, alias: &str) -> Result<Vec<(String, Secretish)>, ConfigError> {
        let mut properties =
            vec![("bootstrap.servers".to_string(), Secretish::new(self.bootstrap_servers.clone(), false))];
        let mut problems = Vec::new();
        for (key, value) in &self.client {
            match value.resolve() {
                Ok(resolved) => {
                    let sensitive = value.is_indirect() || is_sensitive_key(key);
                    properties.push((key.clone(), Secretish::new(resolved, sensitive)));
                }
                Err(message) => problems.push(ConfigProblem::new(format!("clusters.{alias}.client.{key}"), message)),
            }
        }
        if problems.is_empty() {
            Ok(properties)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("region", &self.region)
            .field("client", &RedactedClient(&self.client))
            .finish()
    }
}

/// Debug view of a client map: inline values of harmless keys shown, everything else redacted.
struct RedactedClient<'a>(&'a BTreeMap<String, ClientValue>);

impl fmt::Debug for RedactedClient<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in self.0 {
            match value {
                ClientValue::Plain(plain) if !is_sensitive_key(key) => map.entry(key, plain),
                _ => map.entry(key, value),
            };
        }
        map.finish()
    }
}

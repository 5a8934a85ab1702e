//! Client property values that may be secrets: inline, or read from an environment variable or a file.
//!
//! Invariant: no `Debug` or `Display` here prints an inline value or a resolved secret. Only the *names* of
//! environment variables and files are shown, because they are what an operator needs to fix a failed lookup.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Substrings of librdkafka (and etcd) property names whose values are credentials.
const SENSITIVE_KEY_PARTS: &[&str] = &[
    "password",
    "secret",
    "token",
    "credential",
    "sasl.oauthbearer.config",
    // librdkafka 2.10+'s JWT bearer grant: the private key itself, its passphrase and its file.
    "sasl.oauthbearer.assertion.private.key",
    "sasl.jaas.config",
    "ssl.key.pem",
    "ssl_key",
    "ssl.keystore",
];

/// Whether a client property's value must never be printed (`sasl.password`, `ssl.key.pem`, `ssl.keystore.*`, ...).
pub fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SENSITIVE_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// A property value as written in the config: inline, `{ env: VAR }` or `{ file: /path }` (resolved when used).
///
/// YAML scalars (strings, numbers, booleans) are accepted inline and kept in their string form, because librdkafka
/// takes every property as a string.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientValue {
    /// The value itself.
    Plain(String),
    /// Read from this environment variable when resolved.
    Env {
        /// Name of the environment variable.
        env: String,
    },
    /// Read from this file when resolved; trailing newlines are dropped.
    File {
        /// Path of the file holding the value.
        file: PathBuf,
    },
}

impl ClientValue {
    /// Whether the value is an indirection (`env`/`file`), which marks it as a secret whatever its key.
    pub fn is_indirect(&self) -> bool {
        !matches!(self, ClientValue::Plain(_))
    }

    /// The value, reading the environment variable or file now; the error says which one failed and why.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            ClientValue::Plain(value) => Ok(value.clone()),
            ClientValue::Env { env } => std::env::var(env).map_err(|e| match e {
                std::env::VarError::NotPresent => format!("environment variable {env} is not set"),
                std::env::VarError::NotUnicode(_) => {
                    format!("environment variable {env} is not valid UTF-8")
                }
            }),
            ClientValue::File { file } => read_secret_file(file),
        }
    }
}

/// Reads a secret file, dropping the trailing newline that `echo` and editors add but no password contains.
fn read_secret_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|content| content.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))
}

impl fmt::Debug for ClientValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The key is unknown here, so an inline value is treated as a secret; `ClusterConfig`'s Debug shows
            // inline values of keys known to be harmless.
            ClientValue::Plain(_) => f.write_str("Plain(<redacted>)"),
            ClientValue::Env { env } => f.debug_struct("Env").field("env", env).finish(),
            ClientValue::File { file } => f.debug_struct("File").field("file", file).finish(),
        }
    }
}

impl<'de> Deserialize<'de> for ClientValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ClientValueVisitor)
    }
}

/// Accepts any scalar as `Plain`, or a one-key map `{ env: .. }` / `{ file: .. }`.
struct ClientValueVisitor;

impl<'de> Visitor<'de> for ClientValueVisitor {
    type Value = ClientValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean, or { env: VAR_NAME }, or { file: /path }")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ClientValue, E> {
        Ok(ClientValue::Plain(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<ClientValue, E> {
        Ok(ClientValue::Plain(v))
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<ClientValue, E> {
        Ok(ClientValue::Plain(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ClientValue, E> {
        Ok(ClientValue::Plain(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ClientValue, E> {
        Ok(ClientValue::Plain(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ClientValue, E> {
        Ok(ClientValue::Plain(v.to_string()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<ClientValue, E> {
        Ok(ClientValue::Plain(v.to_string()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<ClientValue, E> {
        Ok(ClientValue::Plain(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ClientValue, E> {
        Ok(ClientValue::Plain(v.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClientValue, A::Error> {
        let mut found: Option<ClientValue> = None;
        while let Some(key) = map.next_key::<String>()? {
            let value = match key.as_str() {
                "env" => ClientValue::Env { env: map.next_value()? },
                "file" => ClientValue::File { file: map.next_value()? },
                other => return Err(de::Error::unknown_field(other, &["env", "file"])),
            };
            if found.is_some() {
                return Err(de::Error::custom("use either `env` or `file`, not both"));
            }
            found = Some(value);
        }
        found.ok_or_else(|| de::Error::custom("expected { env: VAR_NAME } or { file: /path }, found an empty map"))
    }
}

/// A resolved client property value that prints as `<redacted>` when it is sensitive.
#[derive(Clone, PartialEq, Eq)]
pub struct Secretish {
    value: String,
    sensitive: bool,
}

impl Secretish {
    /// Wraps `value`; `sensitive` values never appear in `Debug` or `Display`.
    pub fn new(value: impl Into<String>, sensitive: bool) -> Self {
        Secretish { value: value.into(), sensitive }
    }

    /// The real value, for handing to the client library (never to a log).
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether the value is redacted when printed.
    pub fn is_sensitive(&self) -> bool {
        self.sensitive
    }
}

impl fmt::Debug for Secretish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sensitive {
            f.write_str("<redacted>")
        } else {
            fmt::Debug::fmt(&self.value, f)
        }
    }
}

impl fmt::Display for Secretish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sensitive {
            f.write_str("<redacted>")
        } else {
            f.write_str(&self.value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_keys() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.location",
            "ssl.key.pem",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.assertion.private.key.file",
            "SASL.PASSWORD",
        ] {
            assert!(is_sensitive_key(key), "{key}");
        }
        for key in ["security.protocol", "sasl.username", "sasl.mechanism", "ssl.ca.location", "linger.ms"] {
            assert!(!is_sensitive_key(key), "{key}");
        }
    }

    #[test]
    fn secretish_redacts_only_sensitive_values() {
        let secret = Secretish::new("hunter2", true);
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "hunter2");
        let plain = Secretish::new("SASL_SSL", false);
        assert_eq!(format!("{plain:?} {plain}"), "\"SASL_SSL\" SASL_SSL");
    }

    #[test]
    fn client_value_debug_never_shows_inline_values() {
        let shown = format!("{:?}", ClientValue::Plain("hunter2".into()));
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = format!("{:?}", ClientValue::Env { env: "KAFKA_PASSWORD".into() });
        assert!(shown.contains("KAFKA_PASSWORD"), "{shown}");
    }
}

//! Admission: the one decision whether ferry runs a loaded config, shared by `ferry run`, `ferry check-config` and
//! hot reload, so that a config `check-config` accepts is one `run` starts and a reload applies.
//!
//! Beyond what [`Config::from_figment`] checks, admission refuses what `run` would otherwise refuse only later, while
//! building its clients: `env`/`file` secrets that cannot be read, etcd TLS files that cannot be read, client
//! properties librdkafka does not accept, and client properties that would weaken a flow's guarantees without the
//! flow's consent. It connects to
//! nothing: librdkafka only parses the properties (`rd_kafka_conf_set`), it does not create a client.
//!
//! Invariant: every problem is reported at once, at its key path, and no problem shows a secret. The value of a
//! sensitive key or of an `env`/`file` indirection never appears, not even inside librdkafka's own reason, which
//! quotes the value it refused.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use regex::Regex;

use super::error::{ConfigError, ConfigProblem};
use super::secret::{is_sensitive_key, ClientValue};
use super::{ClusterConfig, Config, EtcdConfig, StoreKind};
use crate::kafka::{self, ClientError, Role};

/// Whether admission reads the `env`/`file` secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretCheck {
    /// Read every secret, as `run` does: an unset variable or an unreadable file is a problem.
    Resolve,
    /// Read none (`check-config --no-secrets`, without the pod's environment). librdkafka then checks only the names
    /// of the properties whose values are secrets, not their values.
    Skip,
}

/// A config ferry will run, with the settings that work but deserve the operator's attention.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The config, as given.
    pub config: Config,
    /// Legal but suspicious settings ([`Config::warnings`]), for the caller to show or log.
    pub warnings: Vec<ConfigProblem>,
}

/// The roles ferry builds clients in; librdkafka sees a cluster's properties once per role, on top of its defaults.
const ROLES: [Role; 3] = [Role::Consumer, Role::Producer, Role::Admin];

/// Stands in for a secret that was not (or could not be) read, so that librdkafka still checks the property's name.
const PLACEHOLDER: &str = "unresolved";

/// What a secret value, or the part of it librdkafka quotes, is replaced with.
const REDACTED: &str = "<redacted>";

/// Whether ferry runs `config` (loaded and validated by [`Config::load`] or [`Config::from_figment`]): every problem
/// `run` would meet before replicating, or the config with its warnings.
pub fn admit(config: Config, secrets: SecretCheck) -> Result<Admitted, ConfigError> {
    let mut problems = Vec::new();
    for (alias, cluster) in &config.clusters {
        client_problems(alias, cluster, secrets, &mut problems);
    }
    // Only the etcd store connects to etcd; with the file store the section is ignored (and warned about).
    if let (StoreKind::Etcd, Some(etcd)) = (config.checkpoint.store, &config.checkpoint.etcd) {
        etcd_problems(etcd, secrets, &mut problems);
    }
    problems.extend(super::guarantees::problems(&config, secrets == SecretCheck::Resolve));
    if problems.is_empty() {
        let warnings = config.warnings();
        Ok(Admitted { config, warnings })
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// The etcd password and the TLS files, which `run` reads before its first etcd request. Both come from the pod's
/// Secrets, so neither is read when secrets are skipped.
fn etcd_problems(etcd: &EtcdConfig, secrets: SecretCheck, out: &mut Vec<ConfigProblem>) {
    if secrets == SecretCheck::Skip {
        return;
    }
    if let Err(error) = etcd.resolve_password() {
        out.extend_from_slice(error.problems());
    }
    let Some(tls) = &etcd.tls else {
        return;
    };
    for (field, file) in [("ca_file", &tls.ca_file), ("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
        let Some(path) = file else { continue };
        if let Err(error) = std::fs::read(path) {
            out.push(ConfigProblem::new(
                format!("checkpoint.etcd.tls.{field}"),
                format!("cannot read {}: {error}", path.display()),
            ));
        }
    }
}

/// One cluster's `client` properties: the secrets that cannot be read, then whatever librdkafka refuses, in key order.
fn client_problems(alias: &str, cluster: &ClusterConfig, secrets: SecretCheck, out: &mut Vec<ConfigProblem>) {
    let mut found = Vec::new();
    // The cluster as librdkafka gets it, every value inline, so that building its configs reads no secret again.
    let mut inline = cluster.clone();
    // Keys whose value is a placeholder: librdkafka's verdict on them is about the name only.
    let mut placeholders = BTreeSet::new();
    for (key, value) in &cluster.client {
        let path = format!("clusters.{alias}.client.{key}");
        if key.contains('\0') {
            found.push(ConfigProblem::new(&path, "the property name contains a NUL byte"));
            inline.client.remove(key);
            continue;
        }
        let read = match value {
            ClientValue::Plain(plain) => Some(plain.clone()),
            _ if secrets == SecretCheck::Skip => None,
            _ => match value.resolve() {
                Ok(secret) => Some(secret),
                Err(message) => {
                    found.push(ConfigProblem::new(&path, message));
                    None
                }
            },
        };
        match read {
            Some(text) if !text.contains('\0') => {
                inline.client.insert(key.clone(), ClientValue::Plain(text));
            }
            read => {
                if read.is_some() {
                    found
                        .push(ConfigProblem::new(&path, "the value contains a NUL byte, which librdkafka cannot take"));
                }
                inline.client.insert(key.clone(), ClientValue::Plain(PLACEHOLDER.to_owned()));
                placeholders.insert(key.as_str());
            }
        }
    }
    for role in ROLES {
        librdkafka_problems(alias, cluster, &inline, role, &placeholders, &mut found);
    }
    // Each role sees the same user properties, so most refusals come once per role; librdkafka also reports them in
    // hash order. One of each, sorted by key.
    let mut seen = BTreeSet::new();
    found.retain(|problem| seen.insert((problem.path.clone(), problem.message.clone())));
    found.sort_by(|a, b| a.path.cmp(&b.path));
    out.extend(found);
}

/// What librdkafka refuses of the client config `run` builds for `inline` in `role`, every property, not just the
/// first: `create_native_config` stops at the first refusal, so the refused property is dropped and the rest tried
/// again.
fn librdkafka_problems(
    alias: &str,
    cluster: &ClusterConfig,
    inline: &ClusterConfig,
    role: Role,
    placeholders: &BTreeSet<&str>,
    out: &mut Vec<ConfigProblem>,
) {
    let mut client = match kafka::client_config(alias, inline, role) {
        Ok(client) => client,
        Err(ClientError::Config(error)) => {
            out.extend_from_slice(error.problems());
            return;
        }
        // client_config never returns it; its message would quote the refused value, so it is not shown.
        Err(ClientError::Create { .. }) => {
            out.push(ConfigProblem::new(format!("clusters.{alias}"), format!("cannot build a {role:?} client config")));
            return;
        }
    };
    loop {
        match client.create_native_config() {
            Ok(_) => return,
            Err(KafkaError::ClientConfig(result, description, key, value)) => {
                if client.get(&key).is_none() {
                    // Cannot happen (the key is librdkafka's echo of ours), but retrying without dropping it would
                    // never end.
                    out.push(ConfigProblem::new(format!("clusters.{alias}"), "librdkafka refuses the client config"));
                    return;
                }
                client.remove(&key);
                out.extend(refusal(alias, cluster, placeholders, result, &description, &key, &value));
            }
            Err(KafkaError::Nul(_)) => {
                out.push(ConfigProblem::new(
                    format!("clusters.{alias}"),
                    "a client property contains a NUL byte, which librdkafka cannot take",
                ));
                return;
            }
            Err(error) => {
                out.push(ConfigProblem::new(format!("clusters.{alias}"), format!("librdkafka: {error}")));
                return;
            }
        }
    }
}

/// The problem librdkafka's refusal of `key` makes, at the key the operator wrote: `clusters.<alias>.client.<key>`,
/// `clusters.<alias>.bootstrap_servers`, or the cluster itself for one of ferry's defaults. None for an invalid
/// placeholder, whose real value was not read.
fn refusal(
    alias: &str,
    cluster: &ClusterConfig,
    placeholders: &BTreeSet<&str>,
    result: RDKafkaConfRes,
    description: &str,
    key: &str,
    value: &str,
) -> Option<ConfigProblem> {
    match cluster.client.get(key) {
        Some(_) if placeholders.contains(key) && result == RDKafkaConfRes::RD_KAFKA_CONF_INVALID => None,
        Some(written) => {
            let secret = written.is_indirect() || is_sensitive_key(key);
            Some(ConfigProblem::new(
                format!("clusters.{alias}.client.{key}"),
                format!("rejected by librdkafka: {}", describe_refusal(description, value, secret)),
            ))
        }
        None if key == "bootstrap.servers" => Some(ConfigProblem::new(
            format!("clusters.{alias}.bootstrap_servers"),
            format!("rejected by librdkafka: {}", describe_refusal(description, value, false)),
        )),
        None => Some(ConfigProblem::new(
            format!("clusters.{alias}"),
            format!(
                "librdkafka refuses ferry's own setting {key}={value} (is it older than the librdkafka ferry was \
                 built for?): {}",
                describe_refusal(description, value, false)
            ),
        )),
    }
}

/// librdkafka's descriptions that quote the refused value (`rd_kafka_anyconf_set_prop`), with the value's place
/// replaced: the whole value or one comma-separated token of it in quotes, the value after a colon, or the number
/// parsed from it.
static QUOTING_SHAPES: LazyLock<[(Regex, &str); 3]> = LazyLock::new(|| {
    let shape = |pattern: &str| Regex::new(pattern).expect("a valid regex");
    [
        (
            shape(r#"(?s)^(Invalid|Unsupported) value ".*" (for configuration property "[^"]*".*)$"#),
            "$1 value \"<redacted>\" $2",
        ),
        (shape(r#"(?s)^(Invalid value for configuration property "[^"]*"): .*$"#), "$1: <redacted>"),
        (shape(r#"(?s)^(Configuration property "[^"]*" value) .* (is outside allowed range .*)$"#), "$1 <redacted> $2"),
    ]
});

/// A double-quoted string in a description.
static QUOTED: LazyLock<Regex> = LazyLock::new(|| Regex::new(r#""([^"]*)""#).expect("a valid regex"));

/// What a librdkafka property name looks like; the only thing a value-free description quotes.
static PROPERTY_NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9._]*$").expect("a valid regex"));

/// librdkafka's reason for refusing `value`, fit to print. When the value is `secret`, the places librdkafka's known
/// descriptions quote it read `<redacted>`; any other description that still shows a piece of it is withheld.
pub(crate) fn describe_refusal(description: &str, value: &str, secret: bool) -> String {
    let description = description.trim_end();
    if !secret {
        return description.to_owned();
    }
    for (shape, replacement) in QUOTING_SHAPES.iter() {
        if shape.is_match(description) {
            return shape.replace(description, *replacement).into_owned();
        }
    }
    if shows_part_of(description, value) {
        return format!(
            "the value ({REDACTED}) is refused; librdkafka's reason is withheld because it quotes the value"
        );
    }
    description.to_owned()
}

/// `text` (a librdkafka error) fit to print: each of `secrets` replaced where it appears whole, and the whole text
/// withheld if a piece of one still shows (the same test as for a refused property's reason).
pub(crate) fn redact_secrets<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str> + Clone) -> String {
    let mut redacted = text.to_owned();
    for secret in secrets.clone().into_iter().filter(|secret| !secret.is_empty()) {
        redacted = redacted.replace(secret, REDACTED);
    }
    if secrets.into_iter().filter(|secret| !secret.is_empty()).any(|secret| shows_part_of(&redacted, secret)) {
        return "librdkafka's reason is withheld because it quotes a secret value".to_owned();
    }
    redacted
}

/// Whether `text` may show `value` or a piece of it: a token of it (split at commas, semicolons and spaces, as
/// librdkafka's list properties are) anywhere, or a quoted string that is not a property name.
fn shows_part_of(text: &str, value: &str) -> bool {
    let tokens: Vec<&str> = std::iter::once(value.trim())
        .chain(value.split(|c: char| matches!(c, ',' | ';') || c.is_whitespace()))
        .map(|token| token.trim_matches(|c: char| matches!(c, '+' | '-' | '"' | '\'')))
        .filter(|token| !token.is_empty())
        .collect();
    let quotes_it =
        QUOTED.captures_iter(text).any(|quoted| !PROPERTY_NAME.is_match(&quoted[1]) || tokens.contains(&&quoted[1]));
    // Shorter tokens match ordinary words of any description; they are caught above when quoted.
    quotes_it || tokens.iter().any(|token| token.len() >= 3 && text.contains(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmless_values_keep_librdkafkas_words() {
        let description = "Invalid value \"PLAIN2\" for configuration property \"sasl.mechanisms\"";
        assert_eq!(describe_refusal(description, "PLAIN2", false), description);
        // The range message ends with a newline.
        assert_eq!(
            describe_refusal(
                "Configuration property \"linger.ms\" value -1 is outside allowed range 0..900000\n",
                "-1",
                false
            ),
            "Configuration property \"linger.ms\" value -1 is outside allowed range 0..900000"
        );
    }

    #[test]
    fn quoted_values_are_redacted() {
        assert_eq!(
            describe_refusal(
                "Invalid value \"hunter2\" for configuration property \"sasl.mechanisms\"",
                "hunter2",
                true
            ),
            "Invalid value \"<redacted>\" for configuration property \"sasl.mechanisms\""
        );
        // A list property quotes only the refused token; a token may itself contain the quoting words.
        assert_eq!(
            describe_refusal(
                "Invalid value \"x\" for configuration property \"y\"\" for configuration property \"debug\"",
                "broker,x\" for configuration property \"y\"",
                true
            ),
            "Invalid value \"<redacted>\" for configuration property \"debug\""
        );
        assert_eq!(
            describe_refusal(
                "Unsupported value \"hunter2\" for configuration property \"sasl.mechanisms\": not built with it",
                "hunter2",
                true
            ),
            "Unsupported value \"<redacted>\" for configuration property \"sasl.mechanisms\": not built with it"
        );
    }

    #[test]
    fn trailing_and_parsed_values_are_redacted() {
        assert_eq!(
            describe_refusal(
                "Invalid value for configuration property \"security.protocol\": hunter2 with spaces: and colons",
                "  hunter2 with spaces: and colons",
                true
            ),
            "Invalid value for configuration property \"security.protocol\": <redacted>"
        );
        // librdkafka prints the number it parsed from the value's start.
        assert_eq!(
            describe_refusal(
                "Configuration property \"linger.ms\" value 123456789 is outside allowed range 0..900000\n",
                "123456789secret",
                true
            ),
            "Configuration property \"linger.ms\" value <redacted> is outside allowed range 0..900000"
        );
    }

    #[test]
    fn descriptions_without_the_value_are_kept() {
        for description in [
            "No such configuration property: \"sasl.passwrod\"",
            "Expected bool value for \"enable.ssl.certificate.verification\": true or false",
            "Invalid value for configuration property \"linger.ms\"",
            "Java JAAS configuration is not supported, see https://github.com/confluentinc/librdkafka/wiki/Using-SASL-with-librdkafka for more information.",
        ] {
            let value = "org.apache.kafka.common.security.plain.PlainLoginModule required password=\"hunter2\";";
            assert_eq!(describe_refusal(description, value, true), description);
        }
    }

    #[test]
    fn other_descriptions_showing_the_value_are_withheld() {
        for (description, value) in [
            ("Failed to load plugin \"/run/secrets/hunter2.so\": not found", "/run/secrets/hunter2.so"),
            ("Failed to load plugin \"ab\": not found", "x;ab"),
            ("cannot use hunter2 here", "hunter2"),
            ("cannot use hunter2 here", "s3cr3t, hunter2"),
        ] {
            let shown = describe_refusal(description, value, true);
            assert!(!shown.contains("hunter2") && !shown.contains("\"ab\""), "{shown}");
            assert!(shown.contains("withheld"), "{shown}");
        }
    }
}

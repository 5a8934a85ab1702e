//! The `client` properties that would quietly switch off one of ferry's guarantees, and the per-flow opt-in that
//! accepts the loss (`flows[].allow_unsafe_client_properties`).
//!
//! Invariant: a cluster property that weakens what a flow promises runs only when every flow it affects lists the
//! key; `transactional.id` never runs (ferry owns the transactional ids). The properties are per cluster and the
//! guarantees per flow, so a property counts for the flows that read the cluster (consumer settings) or write to
//! it (producer settings).

use super::error::ConfigProblem;
use super::secret::ClientValue;
use super::Config;

/// Which flows a cluster property affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Flows reading the cluster (its consumer properties).
    Source,
    /// Flows writing to the cluster (its producer properties).
    Target,
}

/// A property ferry sets for a guarantee, the values that keep it, and what is lost otherwise.
struct Guard {
    key: &'static str,
    side: Side,
    /// Values (lower case) that keep the guarantee.
    keeps: &'static [&'static str],
    /// The guarantee lost, as the refusal and the warning say it.
    lost: &'static str,
}

const GUARDS: &[Guard] = &[
    Guard {
        key: "auto.offset.reset",
        side: Side::Source,
        keeps: &["error"],
        lost: "records the source deletes before ferry copies them would be skipped without being counted \
               (ferry_records_lost_total)",
    },
    Guard {
        key: "isolation.level",
        side: Side::Source,
        keeps: &["read_committed"],
        lost: "records of aborted source transactions would be replicated as if committed",
    },
    Guard {
        key: "enable.auto.commit",
        side: Side::Source,
        keeps: &["false"],
        lost: "ferry's consumer would commit offsets of an internal group to the source cluster (ferry keeps its \
               positions itself; committed offsets there mean nothing)",
    },
    Guard {
        key: "enable.idempotence",
        side: Side::Target,
        keeps: &["true"],
        lost: "a retried send could write a record twice or out of order, and positions follow acknowledgements in \
               order",
    },
    Guard {
        key: "acks",
        side: Side::Target,
        keeps: &["all", "-1"],
        lost: "a record the target acknowledged could be lost when its partition leader fails",
    },
];

/// The key no flow may set: exactly-once flows name their transactional producers themselves.
const TRANSACTIONAL_ID: &str = "transactional.id";

/// Keys a flow may list in `allow_unsafe_client_properties`.
pub(crate) fn allowable_keys() -> impl Iterator<Item = &'static str> {
    GUARDS.iter().map(|guard| guard.key)
}

/// The value of a property as written, when it can be known without reading a secret.
fn plain(value: &ClientValue) -> Option<String> {
    match value {
        ClientValue::Plain(text) => Some(text.trim().to_ascii_lowercase()),
        _ => None,
    }
}

/// The value of a property, reading an `env`/`file` indirection when `resolve` is set (its value is not shown).
fn value_of(value: &ClientValue, resolve: bool) -> Option<String> {
    plain(value)
        .or_else(|| resolve.then(|| value.resolve().ok()).flatten().map(|text| text.trim().to_ascii_lowercase()))
}

/// Properties that weaken a flow that has not opted in, each at its key path; `resolve` reads `env`/`file` values
/// (without it, only inline values are judged).
pub(crate) fn problems(config: &Config, resolve: bool) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    for (alias, cluster) in &config.clusters {
        if cluster.client.contains_key(TRANSACTIONAL_ID) {
            out.push(ConfigProblem::new(
                format!("clusters.{alias}.client.{TRANSACTIONAL_ID}"),
                "ferry sets transactional ids itself (one per exactly-once bucket, from \
                 flows[].exactly_once.transactional_id_prefix); on the shared producer it would break every flow \
                 writing to this cluster",
            ));
        }
        for guard in GUARDS {
            let Some(written) = cluster.client.get(guard.key) else { continue };
            let Some(value) = value_of(written, resolve) else { continue };
            if guard.keeps.contains(&value.as_str()) {
                continue;
            }
            let refused: Vec<String> = config
                .flows
                .iter()
                .enumerate()
                .filter(|(_, flow)| match guard.side {
                    Side::Source => flow.source == *alias,
                    Side::Target => flow.target == *alias,
                })
                .filter(|(_, flow)| !flow.allow_unsafe_client_properties.iter().any(|key| key == guard.key))
                .map(|(index, flow)| format!("flows[{index}] ({})", flow.name))
                .collect();
            if refused.is_empty() {
                continue;
            }
            let shown = if written.is_indirect() { String::new() } else { format!("={value}") };
            out.push(ConfigProblem::new(
                format!("clusters.{alias}.client.{}", guard.key),
                format!(
                    "{}{shown} weakens {}: {}; to accept that, list {:?} in each such flow's \
                     allow_unsafe_client_properties",
                    guard.key,
                    refused.join(", "),
                    guard.lost,
                    guard.key
                ),
            ));
        }
    }
    out
}

/// For each flow that accepts a weakening property its cluster sets, which guarantee it gives up.
pub(crate) fn accepted(config: &Config) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    for (index, flow) in config.flows.iter().enumerate() {
        for guard in GUARDS.iter().filter(|guard| flow.allow_unsafe_client_properties.iter().any(|k| k == guard.key)) {
            let alias = match guard.side {
                Side::Source => &flow.source,
                Side::Target => &flow.target,
            };
            let Some(written) = config.clusters.get(alias).and_then(|cluster| cluster.client.get(guard.key)) else {
                continue;
            };
            if plain(written).is_some_and(|value| guard.keeps.contains(&value.as_str())) {
                continue;
            }
            out.push(ConfigProblem::new(
                format!("flows[{index}].allow_unsafe_client_properties"),
                format!("clusters.{alias}.client.{} is accepted: {}", guard.key, guard.lost),
            ));
        }
    }
    out
}

//! Layering (defaults < YAML file < `FERRY_` environment) and extraction of the merged document into [`Config`].
//!
//! Invariant: extraction reports one problem per broken section, cluster, flow and throttle (not just the first
//! thing serde trips over), each at its full key path; nothing is validated semantically until it all parses.

use std::path::Path;

use figment::error::Kind;
use figment::providers::Env;
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;

use super::error::{self, ConfigError, ConfigProblem};
use super::yaml::YamlFile;
use super::Config;

/// Top-level keys of the config document.
const SECTIONS: &[&str] = &["clusters", "checkpoint", "flows", "throttles", "http", "discovery", "metrics"];

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "FERRY_";

/// The environment layer: `FERRY_HTTP__LISTEN=...` sets `http.listen` (`__` separates levels).
///
/// Only variables containing `__` take part, so single-level `FERRY_*` variables stay free for the CLI
/// (`FERRY_CONFIG`, `FERRY_LOG_FORMAT`, ...) instead of failing as unknown config keys. Limits, all from figment:
/// names are lowercased, so a cluster alias is reachable only if it is lowercase and has no `-` (`us_east` yes,
/// `us-east` no, since shells cannot export names with `-`); `.` in a key nests, so librdkafka properties such as
/// `sasl.password` cannot be set this way (use `{ env: VAR }` in the file); list entries (`flows[0]`) cannot be
/// addressed. Values are parsed as scalars: `5s` and `127.0.0.1:9464` stay strings, `10` becomes a number, `true` a
/// boolean, `[a, b]` a list; quote (`'"10"'`) to force a string.
pub fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).filter(|key| key.as_str().contains("__")).split("__")
}

/// The layered figment for a config file already read into `content`.
// Precedence, lowest to highest: built-in defaults (serde `default`s on the config structs, so there is no
// separate defaults provider) < the YAML file < `FERRY_` environment variables.
pub fn layered(path: &Path, content: String) -> Figment {
    Figment::new().merge(YamlFile { path: path.to_path_buf(), content }).merge(env_provider())
}

/// Extracts every section of the merged document, collecting all structural problems.
pub(crate) fn extract(figment: &Figment) -> Result<Config, ConfigError> {
    let root: Dict = figment.extract().map_err(|e| error::from_figment(e, &[]))?;
    let mut problems = Vec::new();

    for key in root.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
        let mut e = figment::Error::from(Kind::UnknownField(key.clone(), SECTIONS));
        e.path = vec![key.clone()];
        e.metadata = figment.find_metadata(key).cloned();
        problems.push(error::problem_from_figment(&e, &[]));
    }

    let clusters = match present(&root, "clusters") {
        None => {
            problems.push(ConfigProblem::new("clusters", "missing required key: define at least one cluster"));
            None
        }
        Some(value) => match value.as_dict() {
            Some(dict) => {
                let mut clusters = std::collections::BTreeMap::new();
                for (alias, value) in dict {
                    if let Some(cluster) = record(figment, value, &["clusters", alias], true, &mut problems) {
                        clusters.insert(alias.clone(), cluster);
                    }
                }
                Some(clusters)
            }
            None => {
                problems.push(wrong_shape(figment, value, &["clusters"], "a map of alias to cluster"));
                None
            }
        },
    };
    let flows = match present(&root, "flows") {
        None => {
            problems.push(ConfigProblem::new("flows", "missing required key: define at least one flow"));
            None
        }
        Some(value) => list(figment, value, "flows", &mut problems),
    };
    let throttles = match present(&root, "throttles") {
        None => Some(Vec::new()),
        Some(value) => list(figment, value, "throttles", &mut problems),
    };
    let checkpoint = section(figment, &root, "checkpoint", &mut problems);
    let http = section(figment, &root, "http", &mut problems);
    let discovery = section(figment, &root, "discovery", &mut problems);
    let metrics = section(figment, &root, "metrics", &mut problems);

    match (clusters, checkpoint, flows, throttles, http, discovery, metrics) {
        (
            Some(clusters),
            Some(checkpoint),
            Some(flows),
            Some(throttles),
            Some(http),
            Some(discovery),
            Some(metrics),
        ) if problems.is_empty() => Ok(Config { clusters, checkpoint, flows, throttles, http, discovery, metrics }),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

/// The value at a top-level key; a YAML `null` (`throttles:` with every entry commented out) counts as absent.
fn present<'a>(root: &'a Dict, key: &str) -> Option<&'a Value> {
    root.get(key).filter(|v| !matches!(v, Value::Empty(..)))
}

/// A defaulted top-level section.
fn section<T: DeserializeOwned + Default>(
    figment: &Figment,
    root: &Dict,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    match present(root, key) {
        None => Some(T::default()),
        Some(value) => record(figment, value, &[key], true, problems),
    }
}

/// A list section whose entries are extracted one by one, so each broken entry is reported.
fn list<T: DeserializeOwned>(
    figment: &Figment,
    value: &Value,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Vec<T>> {
    let Some(items) = value.as_array() else {
        problems.push(wrong_shape(figment, value, &[key], "a list"));
        return None;
    };
    let before = problems.len();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let index = i.to_string();
        if let Some(entry) = record(figment, item, &[key, &index], false, problems) {
            out.push(entry);
        }
    }
    (problems.len() == before).then_some(out)
}

/// Extracts one map-shaped record at `segments`.
///
/// Through `Figment::focus` when the path is all map keys, so errors keep their source (the environment variable);
/// otherwise (list entries, keys containing `.`) from the value itself. Not `extract_inner`: figment 0.10.19 appends
/// the key to the *end* of a nested error's path.
fn record<T: DeserializeOwned>(
    figment: &Figment,
    value: &Value,
    segments: &[&str],
    through_maps: bool,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    if value.as_dict().is_none() {
        problems.push(wrong_shape(figment, value, segments, "a map"));
        return None;
    }
    let focusable = through_maps && segments.iter().all(|s| !s.is_empty() && !s.contains('.'));
    let result = if focusable { figment.focus(&segments.join(".")).extract::<T>() } else { value.deserialize::<T>() };
    result.map_err(|e| problems.extend(e.into_iter().map(|e| error::problem_from_figment(&e, segments)))).ok()
}

/// "expected X, found Y" for a value of the wrong shape, naming its environment variable if it came from one.
fn wrong_shape(figment: &Figment, value: &Value, segments: &[&str], expected: &str) -> ConfigProblem {
    let mut e = figment::Error::from(Kind::InvalidType(value.to_actual(), expected.to_string()));
    e.metadata = figment.get_metadata(value.tag()).cloned();
    error::problem_from_figment(&e, segments)
}

//! Cross-field rules that types alone cannot express.
//!
//! Invariant: every rule runs on every config and reports at the exact key path; nothing stops at the first problem,
//! because an operator fixing a ConfigMap wants the whole list in one pass.

use std::collections::{BTreeMap, BTreeSet};

use super::error::ConfigProblem;
use super::filter::TopicFilter;
use super::secret::ClientValue;
use super::{CheckpointConfig, Config, Delivery, ExactlyOnce, FlowConfig, Naming, StoreKind};

/// Characters allowed in a flow name: it appears in metric labels, etcd keys and CLI flags.
fn is_valid_flow_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Characters allowed in a cluster alias: it prefixes remote topic names as `<alias>.<topic>`, so it must be a legal
/// topic-name fragment without `.` (which would make the prefix ambiguous to parse back).
fn is_valid_alias(alias: &str) -> bool {
    !alias.is_empty() && alias.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// All problems in `config`, in document order.
pub(crate) fn problems(config: &Config) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    clusters(config, &mut out);
    checkpoint(&config.checkpoint, &mut out);
    flows(config, &mut out);
    throttles(config, &mut out);
    if config.discovery.interval.is_zero() {
        out.push(ConfigProblem::new("discovery.interval", "must be greater than 0"));
    }
    out
}

/// Legal settings an operator probably did not mean; for logging at startup.
pub(crate) fn warnings(config: &Config) -> Vec<ConfigProblem> {
    let mut out = super::guarantees::accepted(config);
    for (i, flow) in config.flows.iter().enumerate() {
        if flow.source == flow.target {
            out.push(ConfigProblem::new(
                format!("flows[{i}]"),
                format!(
                    "source and target are both {:?}: topics are copied within one cluster under the \"{}.\" prefix",
                    flow.source, flow.source
                ),
            ));
        }
    }
    if config.checkpoint.store == StoreKind::File && config.checkpoint.etcd.is_some() {
        out.push(ConfigProblem::new(
            "checkpoint.etcd",
            "ignored because checkpoint.store is file (set store: etcd to use it)",
        ));
    }
    out
}

/// The sorted cluster aliases, for "known: ..." hints.
fn known_aliases(config: &Config) -> String {
    config.clusters.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

fn clusters(config: &Config, out: &mut Vec<ConfigProblem>) {
    if config.clusters.is_empty() {
        out.push(ConfigProblem::new("clusters", "at least one cluster is required"));
    }
    for (alias, cluster) in &config.clusters {
        let path = format!("clusters.{alias}");
        if !is_valid_alias(alias) {
            out.push(ConfigProblem::new(
                &path,
                format!(
                    "invalid alias {alias:?}: use letters, digits, '_' and '-' \
                     (the alias becomes the \"<alias>.\" prefix of remote topic names)"
                ),
            ));
        }
        if cluster.bootstrap_servers.trim().is_empty() {
            out.push(ConfigProblem::new(format!("{path}.bootstrap_servers"), "must not be empty"));
        }
        if cluster.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            out.push(ConfigProblem::new(
                format!("{path}.region"),
                "must not be empty (omit it to use the alias as the region)",
            ));
        }
        for (key, value) in &cluster.client {
            let key_path = format!("{path}.client.{key}");
            if key.trim().is_empty() {
                out.push(ConfigProblem::new(&key_path, "property name must not be empty"));
            } else if key == "bootstrap.servers" {
                out.push(ConfigProblem::new(
                    &key_path,
                    format!("set {path}.bootstrap_servers instead of passing it as a client property"),
                ));
            }
            indirection(value, &key_path, out);
        }
    }
}

/// An `env`/`file` indirection must name something.
fn indirection(value: &ClientValue, path: &str, out: &mut Vec<ConfigProblem>) {
    match value {
        ClientValue::Env { env } if env.trim().is_empty() => {
            out.push(ConfigProblem::new(format!("{path}.env"), "environment variable name must not be empty"));
        }
        ClientValue::File { file } if file.as_os_str().is_empty() => {
            out.push(ConfigProblem::new(format!("{path}.file"), "file path must not be empty"));
        }
        _ => {}
    }
}

fn checkpoint(checkpoint: &CheckpointConfig, out: &mut Vec<ConfigProblem>) {
    if checkpoint.interval.is_zero() {
        out.push(ConfigProblem::new("checkpoint.interval", "must be greater than 0"));
    }
    match checkpoint.store {
        StoreKind::File if checkpoint.path.as_os_str().is_empty() => {
            out.push(ConfigProblem::new("checkpoint.path", "must not be empty when checkpoint.store is file"));
        }
        StoreKind::Etcd if checkpoint.etcd.as_ref().is_none_or(|e| e.endpoints.is_empty()) => {
            out.push(ConfigProblem::new(
                "checkpoint.etcd.endpoints",
                "at least one endpoint is required when checkpoint.store is etcd",
            ));
        }
        _ => {}
    }
    let Some(etcd) = &checkpoint.etcd else {
        return;
    };
    for (i, endpoint) in etcd.endpoints.iter().enumerate() {
        if endpoint.trim().is_empty() {
            out.push(ConfigProblem::new(format!("checkpoint.etcd.endpoints[{i}]"), "must not be empty"));
        }
    }
    if !etcd.prefix.starts_with('/') || etcd.prefix.ends_with('/') {
        out.push(ConfigProblem::new(
            "checkpoint.etcd.prefix",
            format!("{:?} must start with '/' and not end with '/' (e.g. /ferry/prod)", etcd.prefix),
        ));
    }
    match (&etcd.username, &etcd.password) {
        (Some(_), None) => out.push(ConfigProblem::new("checkpoint.etcd.password", "required when username is set")),
        (None, Some(_)) => out.push(ConfigProblem::new("checkpoint.etcd.username", "required when password is set")),
        _ => {}
    }
    if let Some(password) = &etcd.password {
        indirection(password, "checkpoint.etcd.password", out);
    }
    if let Some(tls) = &etcd.tls {
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => {
                out.push(ConfigProblem::new("checkpoint.etcd.tls.key_file", "required when cert_file is set"))
            }
            (None, Some(_)) => {
                out.push(ConfigProblem::new("checkpoint.etcd.tls.cert_file", "required when key_file is set"))
            }
            _ => {}
        }
    }
    let ttl = etcd.lease_ttl.as_std();
    if ttl.as_secs() == 0 || ttl.subsec_nanos() != 0 {
        out.push(ConfigProblem::new(
            "checkpoint.etcd.lease_ttl",
            format!(
                "{} is not a whole number of seconds of at least 1s (etcd lease TTLs are whole seconds)",
                etcd.lease_ttl
            ),
        ));
    }
}

fn flows(config: &Config, out: &mut Vec<ConfigProblem>) {
    if config.flows.is_empty() {
        out.push(ConfigProblem::new("flows", "at least one flow is required"));
    }
    let mut first_index_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, flow) in config.flows.iter().enumerate() {
        let path = format!("flows[{i}]");
        if !is_valid_flow_name(&flow.name) {
            out.push(ConfigProblem::new(
                format!("{path}.name"),
                format!("invalid flow name {:?}: use letters, digits, '.', '_' and '-'", flow.name),
            ));
        } else if let Some(first) = first_index_of.get(flow.name.as_str()) {
            out.push(ConfigProblem::new(
                format!("{path}.name"),
                format!("duplicate flow name {:?} (also flows[{first}].name)", flow.name),
            ));
        } else {
            first_index_of.insert(&flow.name, i);
        }
        for (key, alias) in [("source", &flow.source), ("target", &flow.target)] {
            if !config.clusters.contains_key(alias) {
                out.push(ConfigProblem::new(
                    format!("{path}.{key}"),
                    format!("unknown cluster {alias:?} (known: {})", known_aliases(config)),
                ));
            }
        }
        if flow.source == flow.target && flow.naming == Naming::Identity {
            out.push(ConfigProblem::new(
                &path,
                format!(
                    "source and target are both {:?} with identity naming: this would replicate records into the \
                     topics they came from (a loop)",
                    flow.source
                ),
            ));
        }
        if flow.topics.include.is_empty() {
            out.push(ConfigProblem::new(format!("{path}.topics.include"), "at least one regex is required"));
        }
        if let Err(problems) = TopicFilter::new(&format!("{path}.topics"), &flow.topics.include, &flow.topics.exclude) {
            out.extend(problems);
        }
        exactly_once(&flow.exactly_once, &format!("{path}.exactly_once"), out);
        if flow.passthrough {
            passthrough(config, flow, &format!("{path}.passthrough"), out);
        }
        for (index, key) in flow.allow_unsafe_client_properties.iter().enumerate() {
            if !super::guarantees::allowable_keys().any(|allowable| allowable == key) {
                let allowable: Vec<&str> = super::guarantees::allowable_keys().collect();
                out.push(ConfigProblem::new(
                    format!("{path}.allow_unsafe_client_properties[{index}]"),
                    format!("{key:?} is not a property ferry guards (one of: {})", allowable.join(", ")),
                ));
            }
        }
        let sync = &flow.sync_group_offsets;
        let sync_path = format!("{path}.sync_group_offsets");
        if let Err(problems) = TopicFilter::new(&sync_path, &sync.include, &sync.exclude) {
            out.extend(problems);
        }
        if sync.interval.is_zero() {
            out.push(ConfigProblem::new(format!("{sync_path}.interval"), "must be greater than 0"));
        }
        if sync.enabled && sync.include.is_empty() {
            out.push(ConfigProblem::new(
                format!("{sync_path}.include"),
                "at least one regex is required when enabled (\".*\" selects every group)",
            ));
        }
    }
}

/// What batch pass-through cannot give yet is refused, not quietly done another way (ADR 28).
fn passthrough(config: &Config, flow: &FlowConfig, path: &str, out: &mut Vec<ConfigProblem>) {
    if flow.delivery == Delivery::ExactlyOnce {
        out.push(ConfigProblem::new(
            path,
            "pass-through writes with an idempotent producer, not in transactions: it cannot give exactly-once \
             delivery yet (use delivery: at-least-once, or passthrough: false)",
        ));
    }
    if flow.naming == Naming::Identity {
        out.push(ConfigProblem::new(
            path,
            "identity naming marks every record with a provenance header, which a batch copied as bytes cannot carry \
             (use naming: prefix, or passthrough: false)",
        ));
    }
    for alias in [&flow.source, &flow.target] {
        let Some(cluster) = config.clusters.get(alias) else { continue };
        let protocol = match cluster.client.get("security.protocol") {
            None => continue,
            Some(ClientValue::Plain(protocol)) if protocol.eq_ignore_ascii_case("plaintext") => continue,
            Some(ClientValue::Plain(protocol)) => protocol.clone(),
            Some(_) => "from a secret".to_owned(),
        };
        out.push(ConfigProblem::new(
            path,
            format!(
                "cluster {alias:?} sets clusters.{alias}.client.security.protocol ({protocol}): pass-through connects \
                 over plaintext only for now (use passthrough: false for this flow)"
            ),
        ));
    }
}

/// Most buckets a flow may have: each is a transactional producer (and its threads) on whichever member runs it.
const MAX_BUCKETS: u32 = 1024;

fn exactly_once(settings: &ExactlyOnce, path: &str, out: &mut Vec<ConfigProblem>) {
    if !(1..=MAX_BUCKETS).contains(&settings.buckets) {
        out.push(ConfigProblem::new(
            format!("{path}.buckets"),
            format!("must be between 1 and {MAX_BUCKETS} (each bucket is one transactional producer)"),
        ));
    }
    // A transaction stays open at least this long; the broker aborts one older than its transaction timeout
    // (librdkafka's default 60 s), so an interval near it would abort every transaction.
    if settings.commit_interval.is_zero() || settings.commit_interval.as_std() > std::time::Duration::from_secs(30) {
        out.push(ConfigProblem::new(format!("{path}.commit_interval"), "must be greater than 0 and at most 30s"));
    }
    if let Some(prefix) = &settings.transactional_id_prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 200
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            out.push(ConfigProblem::new(
                format!("{path}.transactional_id_prefix"),
                "must be 1 to 200 characters of [A-Za-z0-9._-]",
            ));
        }
    }
}

fn throttles(config: &Config, out: &mut Vec<ConfigProblem>) {
    let mut names: BTreeSet<&str> = config.clusters.keys().map(String::as_str).collect();
    names.extend(config.clusters.values().filter_map(|c| c.region.as_deref()));
    let known = names.iter().copied().collect::<Vec<_>>().join(", ");
    let mut first_index_of: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, throttle) in config.throttles.iter().enumerate() {
        let path = format!("throttles[{i}]");
        for (key, name) in [("from", &throttle.from), ("to", &throttle.to)] {
            if !names.contains(name.as_str()) {
                out.push(ConfigProblem::new(
                    format!("{path}.{key}"),
                    format!("{name:?} matches no cluster region or alias (known: {known})"),
                ));
            }
        }
        if throttle.rate.bytes_per_second() == 0 {
            out.push(ConfigProblem::new(
                format!("{path}.rate"),
                "must be greater than 0 (remove the throttle to replicate unthrottled)",
            ));
        }
        match first_index_of.get(&(throttle.from.as_str(), throttle.to.as_str())) {
            Some(first) => out.push(ConfigProblem::new(
                &path,
                format!("duplicate throttle from {:?} to {:?} (also throttles[{first}])", throttle.from, throttle.to),
            )),
            None => {
                first_index_of.insert((&throttle.from, &throttle.to), i);
            }
        }
    }
}

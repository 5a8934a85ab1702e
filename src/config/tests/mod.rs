//! Tests of the whole pipeline: YAML + environment -> extraction -> validation, with the operator-facing messages.

// `figment::Jail` closures must return figment's own (large) error type.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use figment::providers::Format;
use figment::{Figment, Jail};

use super::*;

mod admission;
mod environment;
mod parsing;
mod validation;

/// Two clusters and one flow: the smallest valid config.
const MINIMAL: &str = r#"
clusters:
  us-east: { bootstrap_servers: "127.0.0.1:19092" }
  eu-west: { bootstrap_servers: "127.0.0.1:29092" }
flows:
  - name: east-to-west
    source: us-east
    target: eu-west
    topics: { include: ["orders\\..*"] }
"#;

/// Parses YAML text without the environment layer.
fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_figment(Figment::from(Yaml::string(yaml)))
}

/// The rendered problem lines of an invalid config.
fn problems(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("expected ConfigError::Invalid, got {other}"),
    }
}

/// Asserts that some problem line starts with `expected` (messages may carry more detail after it).
#[track_caller]
fn assert_problem(lines: &[String], expected: &str) {
    assert!(
        lines.iter().any(|l| l.starts_with(expected)),
        "no problem starting with\n  {expected}\nin\n  {}",
        lines.join("\n  ")
    );
}

/// MINIMAL with `extra` YAML appended at the top level.
fn minimal_plus(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

#[test]
fn defaults_fill_everything_optional() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.checkpoint, CheckpointConfig::default());
    assert_eq!(config.checkpoint.store, StoreKind::File);
    assert_eq!(config.checkpoint.path, PathBuf::from("./ferry-state"));
    assert_eq!(config.checkpoint.interval, Duration::from_secs(5));
    assert_eq!(config.checkpoint.etcd, None);
    assert!(config.throttles.is_empty());
    assert_eq!(config.http.listen, "0.0.0.0:9464".parse().unwrap());
    assert_eq!(config.discovery.interval, Duration::from_secs(30));
    assert!(!config.metrics.per_partition);

    let flow = &config.flows[0];
    assert_eq!(flow.naming, Naming::Prefix);
    assert_eq!(flow.delivery, Delivery::AtLeastOnce);
    assert!(flow.topics.exclude.is_empty());
    assert_eq!(flow.sync_group_offsets, GroupOffsetSync::default());
    assert!(!flow.sync_group_offsets.enabled);
    assert_eq!(flow.sync_group_offsets.include, vec![".*".to_string()]);
    assert_eq!(flow.sync_group_offsets.interval, Duration::from_secs(10));
    assert!(!flow.emit_mm2_checkpoints);

    let cluster = &config.clusters["us-east"];
    assert_eq!(cluster.region, None);
    assert!(cluster.client.is_empty());
    assert_eq!(config.region_of("us-east"), "us-east");
    assert!(config.warnings().is_empty());
}

#[test]
fn etcd_defaults() {
    let config =
        parse(&minimal_plus("checkpoint: { store: etcd, etcd: { endpoints: [\"http://127.0.0.1:2379\"] } }\n"))
            .unwrap();
    let etcd = config.checkpoint.etcd.unwrap();
    assert_eq!(etcd.prefix, "/ferry");
    assert_eq!(etcd.lease_ttl, Duration::from_secs(10));
    assert_eq!((etcd.username, etcd.password, etcd.tls), (None, None, None));
    assert_eq!(config.checkpoint.interval, Duration::from_secs(5), "rest of the section keeps its defaults");
}

/// Path of an example file, relative to the crate root so the test works wherever the crate lives.
fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config-examples").join(name)
}

/// Loads an example under `Jail`'s lock, so FERRY_ variables set by concurrent env tests cannot leak into it.
fn load_example(name: &str) -> Config {
    let mut loaded = None;
    Jail::expect_with(|_| {
        loaded = Some(Config::load(&example(name)).map_err(|e| e.to_string())?);
        Ok(())
    });
    loaded.expect("Jail ran the closure")
}

#[test]
fn quickstart_example_loads() {
    let config = load_example("quickstart.yaml");
    assert_eq!(config.clusters["us-east"].bootstrap_servers, "127.0.0.1:19092");
    assert_eq!(config.clusters["eu-west"].bootstrap_servers, "127.0.0.1:29092");
    assert_eq!(config.checkpoint, CheckpointConfig::default());
    assert_eq!(config.discovery.interval, Duration::from_secs(10));
    assert_eq!(config.http.listen, "127.0.0.1:9464".parse().unwrap());
    let flow = &config.flows[0];
    assert_eq!(
        (flow.name.as_str(), flow.source.as_str(), flow.target.as_str()),
        ("east-to-west", "us-east", "eu-west")
    );
    assert_eq!(flow.topics.include, vec!["orders\\..*".to_string(), "payments".to_string()]);
    assert_eq!(flow.naming, Naming::Prefix);
    let filter = flow.topic_filter().unwrap();
    assert!(filter.matches("orders.created") && filter.matches("payments"));
    assert!(!filter.matches("payments-dlq") && !filter.matches("xorders.created"));
}

#[test]
fn fleet_example_loads_and_runs_with_etcd() {
    let config = load_example("fleet.yaml");
    assert_eq!(config.checkpoint.store, StoreKind::Etcd);
    let etcd = config.checkpoint.etcd.as_ref().expect("etcd section");
    assert_eq!(etcd.prefix, "/ferry/east-to-west");
    assert_eq!(etcd.lease_ttl, Duration::from_secs(10));
    assert_eq!(config.throttles[0].rate.bytes_per_second(), 200 * 1024 * 1024);
    admit(config, SecretCheck::Resolve).expect("a fleet config is runnable");
}

#[test]
fn full_example_round_trips() {
    let path = example("full.yaml");
    let config = load_example("full.yaml");

    let expected = Config {
        clusters: [
            (
                "us-east".to_string(),
                ClusterConfig {
                    bootstrap_servers: "kafka-use1-0.example.net:9093,kafka-use1-1.example.net:9093".into(),
                    region: Some("us-east-1".into()),
                    client: [
                        ("security.protocol", ClientValue::Plain("SASL_SSL".into())),
                        ("sasl.mechanism", ClientValue::Plain("SCRAM-SHA-512".into())),
                        ("sasl.username", ClientValue::Plain("ferry".into())),
                        ("sasl.password", ClientValue::Env { env: "FERRY_US_EAST_SASL_PASSWORD".into() }),
                        ("ssl.ca.location", ClientValue::Plain("/etc/ferry/tls/ca.pem".into())),
                        ("message.max.bytes", ClientValue::Plain("1048576".into())),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                },
            ),
            (
                "eu-west".to_string(),
                ClusterConfig {
                    bootstrap_servers: "kafka-euw1-0.example.net:9093,kafka-euw1-1.example.net:9093".into(),
                    region: Some("eu-west-1".into()),
                    client: [
                        ("security.protocol", ClientValue::Plain("SASL_SSL".into())),
                        ("sasl.mechanism", ClientValue::Plain("SCRAM-SHA-512".into())),
                        ("sasl.username", ClientValue::Plain("ferry".into())),
                        (
                            "sasl.password",
                            ClientValue::File { file: "/etc/ferry/secrets/eu-west-sasl-password".into() },
                        ),
                        ("ssl.ca.location", ClientValue::Plain("/etc/ferry/tls/ca.pem".into())),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                },
            ),
        ]
        .into_iter()
        .collect(),
        checkpoint: CheckpointConfig::default(),
        flows: vec![
            FlowConfig {
                name: "east-to-west".into(),
                source: "us-east".into(),
                target: "eu-west".into(),
                topics: TopicSelection {
                    include: vec!["orders\\..*".into(), "payments".into()],
                    exclude: vec![".*\\.internal".into()],
                },
                naming: Naming::Prefix,
                delivery: Delivery::AtLeastOnce,
                exactly_once: ExactlyOnce::default(),
                sync_group_offsets: GroupOffsetSync {
                    enabled: true,
                    include: vec!["billing-.*".into()],
                    exclude: vec![],
                    interval: Duration::from_secs(10),
                },
                emit_mm2_checkpoints: false,
                allow_unsafe_client_properties: Vec::new(),
                sync_topic_acls: true,
                passthrough: false,
            },
            FlowConfig {
                name: "west-to-east".into(),
                source: "eu-west".into(),
                target: "us-east".into(),
                topics: TopicSelection {
                    include: vec!["orders\\..*".into(), "payments".into()],
                    exclude: vec![".*\\.internal".into()],
                },
                naming: Naming::Prefix,
                delivery: Delivery::ExactlyOnce,
                exactly_once: ExactlyOnce {
                    transactional_id_prefix: Some("ferry-west-to-east".into()),
                    ..ExactlyOnce::default()
                },
                sync_group_offsets: GroupOffsetSync::default(),
                emit_mm2_checkpoints: false,
                allow_unsafe_client_properties: Vec::new(),
                sync_topic_acls: true,
                passthrough: false,
            },
        ],
        throttles: vec![
            ThrottleConfig { from: "us-east-1".into(), to: "eu-west-1".into(), rate: ByteRate(100 << 20) },
            ThrottleConfig { from: "eu-west".into(), to: "us-east".into(), rate: ByteRate(50 << 20) },
        ],
        http: HttpConfig::default(),
        discovery: DiscoveryConfig::default(),
        metrics: MetricsConfig::default(),
    };
    assert_eq!(config, expected);
    assert_eq!(config.region_of("us-east"), "us-east-1");

    // The section-by-section extraction must agree with serde's derive on the whole document.
    let content = std::fs::read_to_string(&path).unwrap();
    let derived: Config = Figment::from(Yaml::string(&content)).extract().unwrap();
    assert_eq!(derived, expected);

    // The commented etcd block is part of the contract too: uncommented, it must load.
    let uncommented: String = content
        .lines()
        .map(|line| match line.strip_prefix("  # ") {
            Some(rest) if rest.starts_with("etcd:") || rest.starts_with("  ") => {
                format!("  {rest}")
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace("store: file", "store: etcd");
    let config = parse(&uncommented).unwrap();
    let etcd = config.checkpoint.etcd.expect("etcd block uncommented");
    assert_eq!(config.checkpoint.store, StoreKind::Etcd);
    assert_eq!(etcd.endpoints.len(), 2);
    assert_eq!(etcd.prefix, "/ferry/prod");
    assert_eq!(etcd.password, Some(ClientValue::Env { env: "FERRY_ETCD_PASSWORD".into() }));
    assert_eq!(etcd.tls.and_then(|t| t.key_file), Some(PathBuf::from("/etc/ferry/etcd/client-key.pem")));
}

//! Cross-field validation: every problem reported at its key path.

use super::*;

#[test]
fn validation_reports_every_problem_at_its_path() {
    let lines = problems(
        r#"
clusters:
  us-east: { bootstrap_servers: "127.0.0.1:19092" }
  eu-west: { bootstrap_servers: " " }
checkpoint:
  interval: 0s
flows:
  - name: loop
    source: us-east
    target: us-east
    naming: identity
    topics: { include: ["orders"] }
  - name: bad-regex
    source: us-east
    target: eu-wst
    topics: { include: ["(", "ok"], exclude: ["["] }
  - name: loop
    source: eu-west
    target: us-east
    topics: { include: [] }
  - name: "has space"
    source: eu-west
    target: us-east
    topics: { include: [".*"] }
    sync_group_offsets: { interval: 0s }
throttles:
  - { from: us-east, to: mars, rate: 0/s }
  - { from: us-east, to: mars, rate: 1MiB/s }
discovery:
  interval: 0ms
"#,
    );
    let expected = [
        "clusters.eu-west.bootstrap_servers: must not be empty",
        "checkpoint.interval: must be greater than 0",
        "flows[0]: source and target are both \"us-east\" with identity naming: this would replicate records into \
         the topics they came from (a loop)",
        "flows[1].target: unknown cluster \"eu-wst\" (known: eu-west, us-east)",
        "flows[1].topics.include[0]: invalid regex \"(\": unclosed group",
        "flows[1].topics.exclude[0]: invalid regex \"[\": ",
        "flows[2].name: duplicate flow name \"loop\" (also flows[0].name)",
        "flows[2].topics.include: at least one regex is required",
        "flows[3].name: invalid flow name \"has space\": use letters, digits, '.', '_' and '-'",
        "flows[3].sync_group_offsets.interval: must be greater than 0",
        "throttles[0].to: \"mars\" matches no cluster region or alias (known: eu-west, us-east)",
        "throttles[0].rate: must be greater than 0",
        "throttles[1].to: \"mars\" matches no cluster region or alias",
        "throttles[1]: duplicate throttle from \"us-east\" to \"mars\" (also throttles[0])",
        "discovery.interval: must be greater than 0",
    ];
    for e in expected {
        assert_problem(&lines, e);
    }
    assert_eq!(lines.len(), expected.len(), "{}", lines.join("\n"));
}

#[test]
fn same_cluster_with_prefix_naming_is_allowed_but_warned() {
    let config = parse(
        r#"
clusters:
  us-east: { bootstrap_servers: "127.0.0.1:19092" }
flows:
  - { name: copy, source: us-east, target: us-east, topics: { include: ["orders"] } }
"#,
    )
    .unwrap();
    let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
    assert_problem(&warnings, "flows[0]: source and target are both \"us-east\"");
}

#[test]
fn empty_clusters_and_flows() {
    let lines = problems("clusters: {}\nflows: []\n");
    assert_problem(&lines, "clusters: at least one cluster is required");
    assert_problem(&lines, "flows: at least one flow is required");

    let lines = problems("# nothing yet\n");
    assert_problem(&lines, "clusters: missing required key");
    assert_problem(&lines, "flows: missing required key");
}

#[test]
fn etcd_store_needs_endpoints() {
    let lines = problems(&minimal_plus("checkpoint: { store: etcd }\n"));
    assert_eq!(lines, ["checkpoint.etcd.endpoints: at least one endpoint is required when checkpoint.store is etcd"]);
    let lines = problems(&minimal_plus("checkpoint: { store: etcd, etcd: { prefix: /ferry/prod } }\n"));
    assert_problem(&lines, "checkpoint.etcd.endpoints: at least one endpoint is required");
}

#[test]
fn etcd_section_rules() {
    let lines = problems(&minimal_plus(
        r#"checkpoint:
  store: etcd
  etcd:
    endpoints: ["http://127.0.0.1:2379", ""]
    prefix: ferry/
    username: ferry
    tls: { cert_file: /c.pem }
    lease_ttl: 1500ms
"#,
    ));
    assert_problem(&lines, "checkpoint.etcd.endpoints[1]: must not be empty");
    assert_problem(&lines, "checkpoint.etcd.prefix: \"ferry/\" must start with '/' and not end with '/'");
    assert_problem(&lines, "checkpoint.etcd.password: required when username is set");
    assert_problem(&lines, "checkpoint.etcd.tls.key_file: required when cert_file is set");
    assert_problem(&lines, "checkpoint.etcd.lease_ttl: 1s 500ms is not a whole number of seconds");
    assert_eq!(lines.len(), 5, "{}", lines.join("\n"));
}

#[test]
fn cluster_rules() {
    let lines = problems(
        r#"
clusters:
  us.east:
    bootstrap_servers: "a:1"
    region: ""
    client: { bootstrap.servers: "b:2", x: { env: "" } }
  eu-west: { bootstrap_servers: "c:3" }
flows:
  - { name: f, source: us.east, target: eu-west, topics: { include: [a] } }
"#,
    );
    assert_problem(&lines, "clusters.us.east: invalid alias \"us.east\"");
    assert_problem(&lines, "clusters.us.east.region: must not be empty");
    assert_problem(&lines, "clusters.us.east.client.bootstrap.servers: set clusters.us.east.bootstrap_servers instead");
    assert_problem(&lines, "clusters.us.east.client.x.env: environment variable name must not be empty");
    assert_eq!(lines.len(), 4, "{}", lines.join("\n"));
}

#[test]
fn unknown_keys_are_rejected_except_in_client() {
    let lines = problems(&minimal_plus("colour: blue\n"));
    assert_eq!(
        lines,
        ["colour: unknown key (expected clusters, checkpoint, flows, throttles, http, discovery or metrics)"]
    );

    let lines = problems(&minimal_plus("http: { listn: \"0.0.0.0:1\" }\n"));
    assert_eq!(lines, ["http.listn: unknown key (expected listen)"]);

    let lines = problems(
        r#"
clusters:
  us-east: { bootstrap_servers: "a:1", bootstrap: "b" }
  eu-west: { bootstrap_servers: "c:3", client: { any.librdkafka.property: 5, other: true } }
checkpoint: { etcd: { endpoints: [x], lease: 5s } }
flows:
  - { name: f, source: us-east, target: eu-west, topics: { include: [a], includes: [b] } }
"#,
    );
    assert_problem(&lines, "clusters.us-east.bootstrap: unknown key (expected bootstrap_servers, region or client)");
    assert_problem(&lines, "checkpoint.etcd.lease: unknown key");
    assert_problem(&lines, "flows[0].topics.includes: unknown key (expected include or exclude)");
    assert_eq!(lines.len(), 3, "client keys pass through: {}", lines.join("\n"));
}

#[test]
fn structural_problems_are_collected_across_sections_and_entries() {
    let lines = problems(
        r#"
clusters:
  us-east: { region: x }
  eu-west: { bootstrap_servers: "c:3" }
checkpoint: { interval: 5 parsecs }
flows:
  - { name: a, source: us-east, target: eu-west, topics: { include: [a] }, naming: prefixx }
  - { name: b, source: us-east, target: eu-west }
  - { name: c, source: us-east, target: eu-west, topics: { include: [a] }, delivery: exactly-once }
  - just a string
throttles: { from: a }
http: { listen: "not an address" }
metrics: { per_partition: maybe }
"#,
    );
    assert_problem(&lines, "clusters.us-east.bootstrap_servers: missing required key");
    assert_problem(&lines, "checkpoint.interval: invalid duration \"5 parsecs\"");
    assert_problem(&lines, "flows[0].naming: unknown value \"prefixx\" (expected prefix or identity)");
    assert_problem(&lines, "flows[1].topics: missing required key");
    assert_problem(&lines, "flows[3]: expected a map, found string \"just a string\"");

    assert_problem(&lines, "throttles: expected a list, found map");
    assert_problem(&lines, "http.listen: invalid address \"not an address\": expected ip:port");
    assert_problem(&lines, "metrics.per_partition: expected a boolean, found string \"maybe\"");
    assert_eq!(lines.len(), 8, "{}", lines.join("\n"));
}

#[test]
fn bad_durations() {
    let lines = problems(&minimal_plus("checkpoint: { interval: 5 parsecs }\n"));
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("checkpoint.interval: invalid duration \"5 parsecs\": "), "{}", lines[0]);

    let lines = problems(&minimal_plus("discovery: { interval: 5 }\n"));
    assert_eq!(
        lines,
        ["discovery.interval: found the number 5 without a unit; expected a duration with a unit, such as 5s, 250ms, \
          2m or 1h30m"]
    );
}

#[test]
fn bad_sizes_and_rates() {
    let lines = problems(&minimal_plus("throttles: [{ from: us-east, to: eu-west, rate: 100MiB }]\n"));
    assert_eq!(lines, ["throttles[0].rate: invalid rate \"100MiB\": expected a size per second, such as 100MiB/s"]);
    let lines = problems(&minimal_plus("throttles: [{ from: us-east, to: eu-west, rate: 1.5MiB/s }]\n"));
    assert_problem(&lines, "throttles[0].rate: invalid rate \"1.5MiB/s\": fractions are not supported");
    let lines = problems(&minimal_plus("throttles: [{ from: us-east, to: eu-west, rate: 100 }]\n"));
    assert_problem(&lines, "throttles[0].rate: found the number 100 without a unit");

    // No config key holds a bare ByteSize yet; check its figment behaviour directly.
    #[derive(Debug, serde::Deserialize)]
    struct Holder {
        #[allow(dead_code)]
        size: ByteSize,
    }
    let ok: Holder = Figment::from(Yaml::string("size: 1000")).extract().unwrap();
    assert_eq!(ok.size, ByteSize(1000));
    let ok: Holder = Figment::from(Yaml::string("size: 512KiB")).extract().unwrap();
    assert_eq!(ok.size, ByteSize(512 * 1024));
    let err = Figment::from(Yaml::string("size: 12 parsecs")).extract::<Holder>().unwrap_err();
    assert!(err.to_string().starts_with("invalid size \"12 parsecs\": unknown unit \"parsecs\""), "{err}");
}

#[test]
fn exactly_once_settings_are_bounded() {
    let lines = problems(
        r#"
clusters:
  us-east: { bootstrap_servers: "a:1" }
  eu-west: { bootstrap_servers: "b:1" }
flows:
  - name: f
    source: us-east
    target: eu-west
    topics: { include: [a] }
    delivery: exactly-once
    exactly_once: { buckets: 0, commit_interval: 0s, transactional_id_prefix: "two words" }
"#,
    );
    assert_problem(&lines, "flows[0].exactly_once.buckets: must be between 1 and 1024");
    assert_problem(&lines, "flows[0].exactly_once.commit_interval: must be greater than 0 and at most 30s");
    assert_problem(&lines, "flows[0].exactly_once.transactional_id_prefix: must be 1 to 200 characters");
    assert_eq!(lines.len(), 3, "{lines:?}");
}

#[test]
fn passthrough_is_refused_where_it_cannot_give_the_flows_guarantees() {
    let lines = problems(
        r#"
clusters:
  us-east: { bootstrap_servers: "a:1" }
  eu-west: { bootstrap_servers: "b:1" }
  secured: { bootstrap_servers: "c:1", client: { security.protocol: SASL_SSL } }
  plain: { bootstrap_servers: "d:1", client: { security.protocol: plaintext } }
flows:
  - { name: eos, source: us-east, target: eu-west, topics: { include: [a] }, passthrough: true, delivery: exactly-once }
  - { name: identity, source: us-east, target: eu-west, topics: { include: [a] }, passthrough: true, naming: identity }
  - { name: sasl, source: secured, target: eu-west, topics: { include: [a] }, passthrough: true }
  - { name: fine, source: plain, target: eu-west, topics: { include: [a] }, passthrough: true }
  - { name: off, source: secured, target: eu-west, topics: { include: [a] }, delivery: exactly-once }
"#,
    );
    assert_problem(
        &lines,
        "flows[0].passthrough: pass-through writes with an idempotent producer, not in transactions",
    );
    assert_problem(&lines, "flows[1].passthrough: identity naming marks every record with a provenance header");
    assert_problem(
        &lines,
        "flows[2].passthrough: cluster \"secured\" sets clusters.secured.client.security.protocol (SASL_SSL): \
         pass-through connects over plaintext only for now",
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
}

//! Admission: what `run`, `check-config` and hot reload refuse, with no secret shown.

use super::*;

/// The problem lines of a config `admit` refuses.
fn refused(config: Config, secrets: SecretCheck) -> Vec<String> {
    match admit(config, secrets) {
        Ok(admitted) => panic!("expected a refusal, got {:?}", admitted.config),
        Err(error) => error.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn examples_are_admitted() {
    admit(load_example("quickstart.yaml"), SecretCheck::Resolve).expect("quickstart runs as it is");
    admit(load_example("fleet.yaml"), SecretCheck::Resolve).expect("the fleet example runs as it is");
    // Its secrets live in the pod (variables and mounted files), so only the rest is checked here.
    admit(load_example("full.yaml"), SecretCheck::Skip).expect("the full example runs given its secrets");
}

#[test]
fn admission_reports_everything_run_would_refuse_at_once() {
    Jail::expect_with(|jail| {
        jail.create_file("ca.pem", "-----BEGIN CERTIFICATE-----\n")?;
        jail.create_file(
            "ferry.yaml",
            r#"
clusters:
  us-east:
    bootstrap_servers: "127.0.0.1:19092"
    client:
      sasl.password: { env: TEST_FERRY_ADMIT_UNSET }
      ssl.key.pem: { file: /nonexistent/ferry/key.pem }
      linger.mss: 5
      enable.idempotence: maybe
  eu-west: { bootstrap_servers: "127.0.0.1:29092" }
checkpoint:
  store: etcd
  etcd:
    endpoints: ["http://127.0.0.1:2379"]
    username: u
    password: { env: TEST_FERRY_ADMIT_UNSET_ETCD }
    tls: { ca_file: ca.pem, cert_file: /nonexistent/ferry/cert.pem, key_file: /nonexistent/ferry/key.pem }
flows:
  - { name: f, source: us-east, target: eu-west, delivery: exactly-once, topics: { include: [a] } }
"#,
        )?;
        let config = Config::load(Path::new("ferry.yaml")).map_err(|e| e.to_string())?;
        let lines = refused(config, SecretCheck::Resolve);
        let expected = [
            "clusters.us-east.client.enable.idempotence: rejected by librdkafka: Expected bool value for \
             \"enable.idempotence\": true or false",
            "clusters.us-east.client.linger.mss: rejected by librdkafka: No such configuration property: \"linger.mss\"",
            "clusters.us-east.client.sasl.password: environment variable TEST_FERRY_ADMIT_UNSET is not set",
            "clusters.us-east.client.ssl.key.pem: cannot read secret file /nonexistent/ferry/key.pem: ",
            "checkpoint.etcd.password: environment variable TEST_FERRY_ADMIT_UNSET_ETCD is not set",
            "checkpoint.etcd.tls.cert_file: cannot read /nonexistent/ferry/cert.pem: No such file or directory",
            "checkpoint.etcd.tls.key_file: cannot read /nonexistent/ferry/key.pem: No such file or directory",
        ];
        assert_eq!(lines.len(), expected.len(), "{}", lines.join("\n"));
        for (line, expected) in lines.iter().zip(expected) {
            assert!(line.starts_with(expected), "{line}\n  does not start with\n{expected}");
        }
        Ok(())
    });
}

#[test]
fn admission_never_shows_a_secret_librdkafka_quotes() {
    Jail::expect_with(|jail| {
        jail.set_env("TEST_FERRY_ADMIT_PROTOCOL", "hunter2-protocol");
        jail.create_file("mechanism", "hunter2-mechanism-from-file\n")?;
        let config = parse(
            r#"
clusters:
  us-east:
    bootstrap_servers: "127.0.0.1:19092"
    client:
      security.protocol: { env: TEST_FERRY_ADMIT_PROTOCOL }
      ssl.endpoint.identification.algorithm: { file: mechanism }
      sasl.jaas.config: "org.apache.kafka.common.security.plain.PlainLoginModule required password=\"hunter2-jaas\";"
      compression.codec: hunter2-not-secret
  eu-west: { bootstrap_servers: "127.0.0.1:29092" }
flows:
  - { name: f, source: us-east, target: eu-west, topics: { include: [a] } }
"#,
        )
        .map_err(|e| e.to_string())?;
        let lines = refused(config, SecretCheck::Resolve);
        let shown = lines.join("\n");
        for secret in ["hunter2-protocol", "hunter2-mechanism", "hunter2-jaas"] {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
        assert_problem(
            &lines,
            "clusters.us-east.client.security.protocol: rejected by librdkafka: Invalid value \"<redacted>\" for \
             configuration property \"security.protocol\"",
        );
        assert_problem(&lines, "clusters.us-east.client.ssl.endpoint.identification.algorithm: rejected by librdkafka");
        assert_problem(&lines, "clusters.us-east.client.sasl.jaas.config: rejected by librdkafka: Java JAAS");
        // A value that is neither sensitive nor indirect is shown: it is what the operator has to fix.
        assert_problem(
            &lines,
            "clusters.us-east.client.compression.codec: rejected by librdkafka: Invalid value \"hunter2-not-secret\"",
        );
        assert_eq!(lines.len(), 4, "{shown}");
        Ok(())
    });
}

#[test]
fn skipped_secrets_are_not_read_but_their_property_names_are_checked() {
    Jail::expect_with(|_| {
        let config = parse(
            r#"
clusters:
  us-east:
    bootstrap_servers: "127.0.0.1:19092"
    client:
      sasl.password: { env: TEST_FERRY_ADMIT_UNSET }
      enable.idempotence: { env: TEST_FERRY_ADMIT_UNSET }
      sasl.passwrod: { file: /nonexistent/ferry/password }
  eu-west: { bootstrap_servers: "127.0.0.1:29092" }
checkpoint:
  store: etcd
  etcd: { endpoints: [x], username: u, password: { env: TEST_FERRY_ADMIT_UNSET_ETCD } }
flows:
  - name: f
    source: us-east
    target: eu-west
    delivery: exactly-once
    topics: { include: [a] }
"#,
        )
        .map_err(|e| e.to_string())?;
        let lines = refused(config, SecretCheck::Skip);
        assert_eq!(
            lines,
            ["clusters.us-east.client.sasl.passwrod: rejected by librdkafka: No such configuration property: \
                 \"sasl.passwrod\"",]
        );
        Ok(())
    });
}

#[test]
fn admission_returns_the_warnings() {
    let config = parse(
        r#"
clusters:
  us-east: { bootstrap_servers: "127.0.0.1:19092" }
checkpoint:
  etcd: { endpoints: [x], username: u, password: { env: TEST_FERRY_ADMIT_UNSET_ETCD }, tls: { ca_file: /nonexistent } }
flows:
  - { name: copy, source: us-east, target: us-east, topics: { include: ["orders"] } }
"#,
    )
    .unwrap();
    // The file store never reads the etcd section, so neither does admission; it is only warned about.
    let admitted = admit(config, SecretCheck::Resolve).expect("warnings do not refuse");
    let warnings: Vec<String> = admitted.warnings.iter().map(ToString::to_string).collect();
    assert_problem(&warnings, "flows[0]: source and target are both \"us-east\"");
    assert_problem(&warnings, "checkpoint.etcd: ignored because checkpoint.store is file");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

/// Two clusters and two flows, east to west and back, with `client` properties for us-east and flow settings
/// appended to the first flow.
fn guarded(us_east_client: &str, first_flow_extra: &str) -> Config {
    parse(&format!(
        r#"
clusters:
  us-east: {{ bootstrap_servers: "a:1", client: {{ {us_east_client} }} }}
  eu-west: {{ bootstrap_servers: "b:1" }}
flows:
  - {{ name: e2w, source: us-east, target: eu-west, topics: {{ include: [a] }} {first_flow_extra} }}
  - {{ name: w2e, source: eu-west, target: us-east, topics: {{ include: [a] }} }}
"#
    ))
    .unwrap()
}

#[test]
fn client_properties_that_weaken_a_guarantee_are_refused_for_the_flows_they_affect() {
    // A consumer setting of us-east weakens the flow reading it (e2w), not the one writing to it.
    let lines = refused(guarded("auto.offset.reset: earliest", ""), SecretCheck::Resolve);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("clusters.us-east.client.auto.offset.reset: auto.offset.reset=earliest weakens flows[0] (e2w): records the source deletes"), "{}", lines[0]);
    assert!(lines[0].contains("allow_unsafe_client_properties"), "{}", lines[0]);
    // A producer setting weakens the flow writing to it (w2e).
    let lines = refused(guarded("acks: 1, isolation.level: read_committed", ""), SecretCheck::Resolve);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("clusters.us-east.client.acks: acks=1 weakens flows[1] (w2e): a record the target acknowledged could be lost"), "{}", lines[0]);
    // The values ferry sets itself are fine, however written.
    admit(
        guarded("acks: -1, enable.idempotence: 'TRUE', isolation.level: read_committed, auto.offset.reset: error", ""),
        SecretCheck::Resolve,
    )
    .expect("the safe values are admitted");
    // transactional.id is never the user's.
    let lines =
        refused(guarded("transactional.id: mine", ", allow_unsafe_client_properties: [acks]"), SecretCheck::Resolve);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("clusters.us-east.client.transactional.id: ferry sets transactional ids itself"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_flow_that_opts_in_runs_and_check_config_says_what_it_gives_up() {
    let config = guarded("isolation.level: read_uncommitted", ", allow_unsafe_client_properties: [isolation.level]");
    let admitted = admit(config, SecretCheck::Resolve).expect("the flow accepts it");
    let warnings: Vec<String> = admitted.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["flows[0].allow_unsafe_client_properties: clusters.us-east.client.isolation.level is accepted: records of \
          aborted source transactions would be replicated as if committed"]
    );
    // Only guarded keys can be listed.
    let lines = problems(
        "clusters: { a: { bootstrap_servers: 'a:1' }, b: { bootstrap_servers: 'b:1' } }\nflows: [ { name: f, source: a, \
         target: b, topics: { include: [x] }, allow_unsafe_client_properties: [linger.ms] } ]",
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0]
            .starts_with("flows[0].allow_unsafe_client_properties[0]: \"linger.ms\" is not a property ferry guards"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_weakening_value_from_a_secret_is_judged_but_not_shown() {
    Jail::expect_with(|jail| {
        jail.set_env("TEST_FERRY_ACKS", "0");
        let lines = refused(guarded("acks: { env: TEST_FERRY_ACKS }", ""), SecretCheck::Resolve);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("clusters.us-east.client.acks: acks weakens flows[1]"), "{}", lines[0]);
        // Without reading secrets the value is unknown: nothing is claimed.
        admit(guarded("acks: { env: TEST_FERRY_ACKS }", ""), SecretCheck::Skip).expect("not judged unread");
        Ok(())
    });
}

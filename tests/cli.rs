//! Bad input: every class of config error exits with code 2 and names the key path, and `check-config` refuses
//! exactly what `run` refuses (each refusal is asserted for both). Needs no cluster: the configs point at ports
//! nothing listens on, and `run` must stop at admission, before it connects to anything.

use std::io::Read as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longer than admission ever takes; a `run` still going after this has accepted a config it should have refused.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs ferry with `args` and then the path of `config` written to a temporary file (also the working directory);
/// `env` sets (`Some`) or removes (`None`) variables. Returns the output and its stderr.
fn ferry_env(args: &[&str], config: &str, env: &[(&str, Option<&str>)]) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.yaml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.args(args).arg(&path).current_dir(dir.path()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > TIMEOUT {
            child.kill().unwrap();
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("{args:?} still running after {TIMEOUT:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

fn ferry(args: &[&str], config: &str) -> (Output, String) {
    ferry_env(args, config, &[])
}

const VALID: &str = r#"clusters:
  us-east: { bootstrap_servers: "127.0.0.1:1" }
  eu-west: { bootstrap_servers: "127.0.0.1:2" }
flows:
  - name: east-to-west
    source: us-east
    target: eu-west
    topics: { include: ["orders\\..*"] }
"#;

fn assert_rejected(config: &str, expected: &[&str]) {
    assert_rejected_env(config, &[], expected);
}

/// Both `check-config` and `run` exit 2 on `config` (under `env`), naming everything `expected`; returns both
/// outputs.
fn assert_rejected_env(config: &str, env: &[(&str, Option<&str>)], expected: &[&str]) -> Vec<Output> {
    let mut outputs = Vec::new();
    for command in [&["check-config"][..], &["run", "--config"][..]] {
        let (output, stderr) = ferry_env(command, config, env);
        assert_eq!(output.status.code(), Some(2), "{command:?} exit code; stderr:\n{stderr}");
        for needle in expected {
            assert!(stderr.contains(needle), "{command:?}: stderr lacks {needle:?}:\n{stderr}");
        }
        outputs.push(output);
    }
    outputs
}

/// VALID with `client` properties (a YAML flow map's inside) for cluster us-east.
fn with_client(properties: &str) -> String {
    VALID.replace(
        r#"us-east: { bootstrap_servers: "127.0.0.1:1" }"#,
        &format!(r#"us-east: {{ bootstrap_servers: "127.0.0.1:1", client: {{ {properties} }} }}"#),
    )
}

/// VALID with the etcd store and this `checkpoint.etcd` section (a YAML flow map's inside).
fn with_etcd(etcd: &str) -> String {
    format!("{VALID}checkpoint:\n  store: etcd\n  etcd: {{ endpoints: [\"http://127.0.0.1:1\"], {etcd} }}\n")
}

#[test]
fn a_valid_config_passes_check_config() {
    let (output, stderr) = ferry(&["check-config"], VALID);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "no warnings");
    assert!(String::from_utf8_lossy(&output.stdout).ends_with(": ok (2 clusters, 1 flows, 0 throttles)\n"));
}

#[test]
fn invalid_yaml_names_the_line() {
    assert_rejected("clusters:\n  us-east: { bootstrap_servers: \"x\"\n flows: [", &["line"]);
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let config = VALID.replace("    target: eu-west\n", "    target: eu-west\n    tagret: eu-west\n");
    assert_rejected(&config, &["flows[0]", "tagret"]);
}

#[test]
fn bad_regexes_name_their_path() {
    let config = VALID.replace(r#"include: ["orders\\..*"]"#, r#"include: ["orders", "(unclosed"]"#);
    assert_rejected(&config, &["flows[0].topics.include[1]", "regex"]);
}

#[test]
fn flows_naming_unknown_clusters_are_rejected() {
    let config = VALID.replace("target: eu-west", "target: eu-wst");
    assert_rejected(&config, &["flows[0].target", "eu-wst"]);
}

#[test]
fn identity_flows_into_their_own_cluster_are_loops() {
    let config = VALID.replace("target: eu-west", "target: us-east\n    naming: identity");
    assert_rejected(&config, &["flows[0]", "loop"]);
}

#[test]
fn a_missing_file_is_a_config_error() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_ferry")).args(["check-config", "/nonexistent/ferry.yaml"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/ferry.yaml"));
}

#[test]
fn exactly_once_is_accepted_and_its_bounds_are_checked() {
    let config = VALID.replace("    target: eu-west\n", "    target: eu-west\n    delivery: exactly-once\n");
    let (output, stderr) = ferry(&["check-config"], &config);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let config =
        config.replace("delivery: exactly-once\n", "delivery: exactly-once\n    exactly_once: { buckets: 0 }\n");
    assert_rejected(&config, &["flows[0].exactly_once.buckets: must be between 1 and 1024"]);
}

#[test]
fn a_client_property_that_weakens_a_guarantee_is_refused_unless_the_flow_accepts_it() {
    let config = with_client("auto.offset.reset: latest");
    assert_rejected(&config, &["clusters.us-east.client.auto.offset.reset", "weakens flows[0] (east-to-west)"]);
    let accepted = config.replace(
        "    target: eu-west\n",
        "    target: eu-west\n    allow_unsafe_client_properties: [auto.offset.reset]\n",
    );
    let (output, stderr) = ferry(&["check-config"], &accepted);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: flows[0].allow_unsafe_client_properties: clusters.us-east.client.auto.offset.reset is accepted: records the source deletes"), "{stderr}");
}

#[test]
fn an_unset_env_secret_is_refused() {
    let config = with_client("sasl.password: { env: CLI_TEST_UNSET_SASL_PASSWORD }");
    assert_rejected_env(
        &config,
        &[("CLI_TEST_UNSET_SASL_PASSWORD", None)],
        &["clusters.us-east.client.sasl.password", "CLI_TEST_UNSET_SASL_PASSWORD is not set"],
    );
}

#[test]
fn a_missing_file_secret_is_refused() {
    let config = with_client("ssl.key.password: { file: /nonexistent/ferry/key-password }");
    assert_rejected(&config, &["clusters.us-east.client.ssl.key.password", "/nonexistent/ferry/key-password"]);
}

#[test]
fn an_unset_etcd_password_is_refused_with_the_etcd_store() {
    let config = with_etcd("username: ferry, password: { env: CLI_TEST_UNSET_ETCD_PASSWORD }");
    assert_rejected_env(
        &config,
        &[("CLI_TEST_UNSET_ETCD_PASSWORD", None)],
        &["checkpoint.etcd.password", "CLI_TEST_UNSET_ETCD_PASSWORD is not set"],
    );
}

#[test]
fn an_unreadable_etcd_tls_file_is_refused() {
    let config = with_etcd("tls: { ca_file: /nonexistent/ferry/etcd-ca.pem }");
    assert_rejected(&config, &["checkpoint.etcd.tls.ca_file", "/nonexistent/ferry/etcd-ca.pem"]);
}

#[test]
fn no_secrets_does_not_read_the_etcd_tls_files_either() {
    // They are mounted from a Secret in the pod; a CI job validating the chart's values does not have them.
    let config = with_etcd("tls: { ca_file: /nonexistent/ferry/etcd-ca.pem }");
    let (output, stderr) = ferry(&["check-config", "--no-secrets"], &config);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("etcd TLS files"), "{stderr}");
}

#[test]
fn an_unknown_librdkafka_property_is_refused() {
    let config = with_client("linger.mss: 5");
    assert_rejected(&config, &["clusters.us-east.client.linger.mss", "No such configuration property"]);
}

#[test]
fn a_refused_secret_value_is_never_shown() {
    // sasl.jaas.config is sensitive (and Java-only: librdkafka refuses any value); a value read from a variable is
    // secret whatever its key, and librdkafka quotes the security.protocol it refuses.
    let config = with_client(
        r#"sasl.jaas.config: "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"ferry\" password=\"hunter2-jaas\";", security.protocol: { env: CLI_TEST_PROTOCOL }"#,
    );
    let outputs = assert_rejected_env(
        &config,
        &[("CLI_TEST_PROTOCOL", Some("hunter2-protocol"))],
        &["clusters.us-east.client.sasl.jaas.config", "clusters.us-east.client.security.protocol", "<redacted>"],
    );
    for output in outputs {
        for stream in [&output.stdout, &output.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(!text.contains("hunter2"), "a secret leaked:\n{text}");
        }
    }
}

#[test]
fn no_secrets_skips_only_reading_secrets_and_says_so() {
    let config = with_client("sasl.password: { env: CLI_TEST_UNSET_SASL_PASSWORD }");
    let env = [("CLI_TEST_UNSET_SASL_PASSWORD", None)];
    let (output, stderr) = ferry_env(&["check-config", "--no-secrets"], &config, &env);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("secrets were not checked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line says so:\n{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(": ok (2 clusters, 1 flows, 0 throttles)"));

    let config = config.replace("    target: eu-west\n", "    target: eu-west\n    exactly_once: { buckets: 0 }\n");
    let (output, stderr) = ferry_env(&["check-config", "--no-secrets"], &config, &env);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("flows[0].exactly_once.buckets"), "{stderr}");
    assert!(!stderr.contains("sasl.password"), "the secret was not read: {stderr}");
}

#[test]
fn warnings_are_printed_and_do_not_fail_check_config() {
    let config = VALID.replace("target: eu-west", "target: us-east");
    let (output, stderr) = ferry(&["check-config"], &config);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: flows[0]: source and target are both \"us-east\""), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(": ok (2 clusters, 1 flows, 0 throttles)"));
}

#[test]
fn one_shot_commands_refuse_what_run_refuses() {
    let config = with_client("sasl.password: { env: CLI_TEST_UNSET_SASL_PASSWORD }");
    let env = [("CLI_TEST_UNSET_SASL_PASSWORD", None)];
    let group = ["--flow", "east-to-west", "--group", "g", "--config"];
    for command in [
        &["plan", "--config"][..],
        &[&["translate"][..], &group[..]].concat(),
        &[&["failover"][..], &group[..]].concat(),
        &[&["failback"][..], &group[..]].concat(),
    ] {
        let (output, stderr) = ferry_env(command, &config, &env);
        assert_eq!(output.status.code(), Some(2), "{command:?} exit code; stderr:\n{stderr}");
        assert!(stderr.contains("clusters.us-east.client.sasl.password"), "{command:?}:\n{stderr}");
    }
}

#[test]
fn one_shot_commands_name_an_unreachable_etcd_and_create_no_local_state() {
    let config = with_etcd("prefix: /ferry/cli-test");
    let group = ["--flow", "east-to-west", "--group", "g", "--config"];
    for command in [&[&["translate"][..], &group[..]].concat(), &[&["failback"][..], &group[..]].concat()] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.yaml");
        std::fs::write(&path, &config).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(command)
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(stderr.contains("etcd") && stderr.contains("http://127.0.0.1:1"), "{command:?}: {stderr}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(left, ["ferry.yaml"], "{command:?} left local state behind");
    }
}

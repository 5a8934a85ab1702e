//! Bad input: every class of config error exits with code 2 and names the key path. Needs no cluster.

use std::process::{Command, Output};

fn ferry(args: &[&str], config: &str) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.yaml");
    std::fs::write(&path, config).unwrap();
    let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    full.push(path.display().to_string());
    let output = Command::new(env!("CARGO_BIN_EXE_ferry")).args(&full).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
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
    for command in [&["check-config"][..], &["run", "--config"][..]] {
        let (output, stderr) = ferry(command, config);
        assert_eq!(output.status.code(), Some(2), "{command:?} exit code; stderr:\n{stderr}");
        for needle in expected {
            assert!(stderr.contains(needle), "{command:?}: stderr lacks {needle:?}:\n{stderr}");
        }
    }
}

#[test]
fn a_valid_config_passes_check_config() {
    let (output, stderr) = ferry(&["check-config"], VALID);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
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
fn run_refuses_contract_settings_this_version_does_not_implement() {
    let config = VALID.replace("    target: eu-west\n", "    target: eu-west\n    delivery: exactly-once\n");
    let (output, stderr) = ferry(&["run", "--config"], &config);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("flows[0].delivery"), "{stderr}");
    let (output, stderr) = ferry(&["check-config"], &config);
    assert_eq!(output.status.code(), Some(0), "check-config validates the contract: {stderr}");
}

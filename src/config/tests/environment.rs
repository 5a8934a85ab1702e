//! `FERRY_` environment overrides and secrets from the environment or files.

use super::*;

#[test]
fn env_overrides_file() {
    Jail::expect_with(|jail| {
        jail.create_file("ferry.yaml", MINIMAL)?;
        jail.set_env("FERRY_HTTP__LISTEN", "127.0.0.1:9000");
        jail.set_env("FERRY_CHECKPOINT__INTERVAL", "2s");
        jail.set_env("FERRY_METRICS__PER_PARTITION", "true");
        // Single-level FERRY_ variables belong to the CLI and must not trip "unknown key".
        jail.set_env("FERRY_CONFIG", "ferry.yaml");
        jail.set_env("FERRY_LOG_FORMAT", "json");
        let config = Config::load(Path::new("ferry.yaml")).map_err(|e| e.to_string())?;
        assert_eq!(config.http.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.checkpoint.interval, Duration::from_secs(2));
        assert!(config.metrics.per_partition);
        assert_eq!(config.checkpoint.path, PathBuf::from("./ferry-state"), "untouched keys keep file/default");
        Ok(())
    });
}

#[test]
fn env_beats_file_value() {
    Jail::expect_with(|jail| {
        jail.create_file("ferry.yaml", &minimal_plus("http: { listen: \"10.0.0.1:1\" }\n"))?;
        jail.set_env("FERRY_HTTP__LISTEN", "10.0.0.2:2");
        let config = Config::load(Path::new("ferry.yaml")).map_err(|e| e.to_string())?;
        assert_eq!(config.http.listen, "10.0.0.2:2".parse().unwrap());
        Ok(())
    });
}

#[test]
fn env_errors_name_the_variable() {
    Jail::expect_with(|jail| {
        jail.create_file("ferry.yaml", MINIMAL)?;
        jail.set_env("FERRY_CHECKPOINT__INTERVAL", "soon");
        jail.set_env("FERRY_HTTP__LISTN", "x");
        let err = Config::load(Path::new("ferry.yaml")).unwrap_err();
        let lines: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        assert_problem(&lines, "checkpoint.interval: invalid duration \"soon\"");
        assert!(
            lines.iter().any(|l| l.ends_with("(from environment variable FERRY_CHECKPOINT__INTERVAL)")),
            "{lines:?}"
        );
        assert_problem(
            &lines,
            "http.listn: unknown key (expected listen) (from environment variable FERRY_HTTP__LISTN)",
        );
        Ok(())
    });
}

#[test]
fn secrets_resolve_from_env_and_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "ferry.yaml",
            r#"
clusters:
  us-east:
    bootstrap_servers: "127.0.0.1:19092"
    client:
      security.protocol: SASL_SSL
      sasl.password: { env: TEST_FERRY_SASL_PASSWORD }
      ssl.key.pem: { file: key.pem }
      linger.ms: 5
  eu-west: { bootstrap_servers: "127.0.0.1:29092" }
flows:
  - { name: f, source: us-east, target: eu-west, topics: { include: [a] } }
"#,
        )?;
        jail.create_file("key.pem", "-----BEGIN KEY-----\n")?;
        jail.set_env("TEST_FERRY_SASL_PASSWORD", "hunter2");
        let config = Config::load(Path::new("ferry.yaml")).map_err(|e| e.to_string())?;
        let properties = config.clusters["us-east"].client_properties("us-east").map_err(|e| e.to_string())?;
        let shown: Vec<(String, String, bool)> =
            properties.iter().map(|(k, v)| (k.clone(), v.expose().to_string(), v.is_sensitive())).collect();
        assert_eq!(
            shown,
            [
                ("bootstrap.servers".to_string(), "127.0.0.1:19092".to_string(), false),
                ("linger.ms".to_string(), "5".to_string(), false),
                ("sasl.password".to_string(), "hunter2".to_string(), true),
                ("security.protocol".to_string(), "SASL_SSL".to_string(), false),
                ("ssl.key.pem".to_string(), "-----BEGIN KEY-----".to_string(), true),
            ]
        );
        assert!(!format!("{properties:?}").contains("hunter2"));
        admit(config, SecretCheck::Resolve).map_err(|e| e.to_string())?;
        Ok(())
    });
}

#[test]
fn missing_secrets_name_their_key() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "ferry.yaml",
            r#"
clusters:
  us-east:
    bootstrap_servers: "127.0.0.1:19092"
    client:
      sasl.password: { env: TEST_FERRY_UNSET_VARIABLE }
      ssl.key.pem: { file: /nonexistent/ferry/key.pem }
  eu-west: { bootstrap_servers: "127.0.0.1:29092" }
checkpoint:
  store: etcd
  etcd: { endpoints: [x], username: u, password: { env: TEST_FERRY_UNSET_ETCD } }
flows:
  - { name: f, source: us-east, target: eu-west, topics: { include: [a] } }
"#,
        )?;
        let config = Config::load(Path::new("ferry.yaml")).map_err(|e| e.to_string())?;
        let err = config.clusters["us-east"].client_properties("us-east").unwrap_err();
        let lines: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            lines[0],
            "clusters.us-east.client.sasl.password: environment variable TEST_FERRY_UNSET_VARIABLE is not set"
        );
        assert!(
            lines[1].starts_with(
                "clusters.us-east.client.ssl.key.pem: cannot read secret file /nonexistent/ferry/key.pem: "
            ),
            "{}",
            lines[1]
        );
        let err = admit(config, SecretCheck::Resolve).unwrap_err();
        assert_eq!(err.problems().len(), 3, "{err}");
        assert_eq!(
            err.problems()[2].to_string(),
            "checkpoint.etcd.password: environment variable TEST_FERRY_UNSET_ETCD is not set"
        );
        Ok(())
    });
}

#[test]
fn debug_output_redacts_secrets() {
    let config = parse(
        r#"
clusters:
  us-east:
    bootstrap_servers: "127.0.0.1:19092"
    client:
      security.protocol: SASL_SSL
      sasl.password: inline-hunter2
      ssl.keystore.password: inline-keystore-secret
      sasl.oauthbearer.config: "clientSecret=inline-oauth"
      sasl.username: { env: FERRY_USER }
  eu-west: { bootstrap_servers: "127.0.0.1:29092" }
checkpoint:
  etcd: { endpoints: [x], username: u, password: inline-etcd-pass }
flows:
  - { name: f, source: us-east, target: eu-west, topics: { include: [a] } }
"#,
    )
    .unwrap();
    for shown in [format!("{config:?}"), format!("{config:#?}")] {
        for secret in ["inline-hunter2", "inline-keystore-secret", "inline-oauth", "inline-etcd-pass"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("SASL_SSL"), "harmless values stay visible: {shown}");
        assert!(shown.contains("FERRY_USER"), "indirection names stay visible: {shown}");
    }
}

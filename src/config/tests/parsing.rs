//! Parsing: topic filters, YAML errors with positions, client values, duplicate keys.

use super::*;

#[test]
fn topic_filters_match_whole_names() {
    let config = parse(
        r#"
clusters:
  a: { bootstrap_servers: "a:1" }
  b: { bootstrap_servers: "b:1" }
flows:
  - name: f
    source: a
    target: b
    topics: { include: ["orders\\..*", "payments"], exclude: ["orders\\.tmp\\..*"] }
"#,
    )
    .unwrap();
    let filter = config.flows[0].topic_filter().unwrap();
    assert!(filter.matches("orders.created"));
    assert!(filter.matches("orders.created.v2"), "`.*` reaches the end of the name");
    assert!(!filter.matches("xorders.created"), "no match in the middle of a name");
    assert!(!filter.matches("orders"), "the dot is required");
    assert!(!filter.matches("ordersXcreated"), "the dot is escaped");
    assert!(filter.matches("payments"));
    assert!(!filter.matches("payments.dlq"), "no prefix match");
    assert!(!filter.matches("orders.tmp.1"), "excluded");
    let groups = config.flows[0].group_filter().unwrap();
    assert!(groups.matches("any-group"), "default group filter is .*");
}

#[test]
fn invalid_yaml_names_file_line_and_column() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "ferry.yaml",
            "clusters:\n  us-east:\n    bootstrap_servers: \"127.0.0.1:19092\n  eu-west: {}\n",
        )?;
        match Config::load(Path::new("ferry.yaml")) {
            Err(ConfigError::Yaml { path, line, column, message }) => {
                assert_eq!(path, PathBuf::from("ferry.yaml"));
                assert!(line >= 3, "points at or after the unterminated string: {line}:{column} {message}");
                assert!(column > 0);
                let shown = Config::load(Path::new("ferry.yaml")).unwrap_err().to_string();
                assert!(
                    shown.starts_with(&format!("invalid YAML in ferry.yaml at line {line}, column {column}: ")),
                    "{shown}"
                );
            }
            other => panic!("expected a YAML error, got {other:?}"),
        }

        jail.create_file("bad-indent.yaml", "http:\n  listen: \"0.0.0.0:1\"\n flows: []\n")?;
        match Config::load(Path::new("bad-indent.yaml")) {
            Err(ConfigError::Yaml { line, column, message, .. }) => {
                assert_eq!((line, column), (3, 2), "{message}");
            }
            other => panic!("expected a YAML error, got {other:?}"),
        }

        jail.create_file("list.yaml", "- a\n- b\n")?;
        let err = Config::load(Path::new("list.yaml")).unwrap_err();
        assert!(matches!(err, ConfigError::Yaml { .. }), "a document that is not a map: {err}");
        Ok(())
    });
}

#[test]
fn unreadable_file_is_a_read_error() {
    let err = Config::load(Path::new("/nonexistent/ferry.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().starts_with("cannot read config file /nonexistent/ferry.yaml: "), "{err}");
}

#[test]
fn client_values_accept_scalars_and_indirections_only() {
    let lines = problems(
        r#"
clusters:
  us-east:
    bootstrap_servers: "a:1"
    client: { a: [1, 2], b: { env: X, file: Y }, c: { secret: Z } }
  eu-west: { bootstrap_servers: "c:3" }
flows:
  - { name: f, source: us-east, target: eu-west, topics: { include: [a] } }
"#,
    );
    // The first bad value aborts that cluster's extraction; its path still names the key.
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("clusters.us-east.client.a: expected a string, number or boolean"), "{lines:?}");

    let lines = problems(
        r#"
clusters:
  us-east: { bootstrap_servers: "a:1", client: { c: { secret: Z } } }
  eu-west: { bootstrap_servers: "a:1", client: { b: { env: X, file: Y } } }
flows:
  - { name: f, source: us-east, target: eu-west, topics: { include: [a] } }
"#,
    );
    assert_problem(&lines, "clusters.us-east.client.c.secret: unknown key (expected env or file)");
    assert_problem(&lines, "clusters.eu-west.client.b: use either `env` or `file`, not both");
}

#[test]
fn duplicate_cluster_alias_is_a_yaml_error() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "ferry.yaml",
            "clusters:\n  a: { bootstrap_servers: x }\n  a: { bootstrap_servers: y }\nflows: []\n",
        )?;
        let err = Config::load(Path::new("ferry.yaml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid YAML in ferry.yaml at line 2, column 3: clusters: duplicate entry with key \"a\""
        );
        Ok(())
    });
}

//! A running ferry's `/metrics` exports every metric the Grafana dashboard and the alert rules name, so they cannot
//! drift apart. The names come from `tests/dashboards/metric_names.rs`, the same extraction `tests/dashboards.rs`
//! checks against the registry. A family without samples yet (an etcd histogram on a file-store member) counts when
//! its `# TYPE` line is there: ferry exports every family it has.

#[path = "../dashboards/metric_names.rs"]
mod metric_names;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;

/// The families of an exposition, by their `# TYPE` lines, and the series names of its samples.
fn exported(exposition: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let families = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let series = exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    (families, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboards_and_alerts_is_scraped() {
    let env = test_env!();
    let base = unique("scrape");
    let state = tempfile::tempdir().unwrap();
    let topic = format!("{base}.orders");
    create_topic(&env.source, &topic, 2, &[]).await;
    let records: Vec<Record> = (0..20).map(|seq| Record::numbered(&topic, 0, seq)).collect();
    produce(&producer(&env.source), &topic, 0, &records).await;

    let flow = unique("scrape");
    let throttle = "throttles:\n  - { from: src, to: dst, rate: 10MiB/s }\n";
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &format!("{base}\\..*"), throttle));
    // Replicating, so the per-task families have series too (the check itself only needs the process up).
    wait_for("the records on the target", Duration::from_secs(90), || {
        (ferry.metric("ferry_records_replicated_total", &[("flow", &flow)])? >= records.len() as f64).then_some(())
    })
    .await;
    let (status, exposition) = ferry.get("/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{exposition}");

    let used = metric_names::used(&repo_root());
    assert!(used.len() >= 20, "the dashboards name metrics: {used:?}");
    let (families, series) = exported(&exposition);
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !metric_names::PROMETHEUS_BUILTINS.contains(&name.as_str()))
        .filter(|(name, _)| {
            !series.contains(*name) && metric_names::family(name, |family| families.contains(family)).is_none()
        })
        .map(|(name, files)| format!("{name} (used in {files:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "a running ferry does not export metrics the dashboards or alerts use: {missing:?}\n/metrics:\n{exposition}\n\
         logs:\n{}",
        ferry.logs()
    );

    // Families without samples are exported as HELP and TYPE lines: a file-store member sends no etcd request.
    assert!(families.contains("ferry_etcd_request_duration_seconds"), "{exposition}");
    assert!(!series.contains("ferry_etcd_request_duration_seconds_bucket"), "no etcd requests with the file store");
    // A file-store member is its own controller: the leader and member alerts stay quiet for it.
    assert_eq!(ferry.metric("ferry_leader", &[]), Some(1.0), "file store: ferry_leader 1\n{exposition}");
    assert_eq!(ferry.metric("ferry_members", &[]), Some(1.0), "file store: ferry_members 1\n{exposition}");
    assert_eq!(ferry.metric("ferry_build_info", &[]), Some(1.0), "{exposition}");

    // The exposition as served is valid: Prometheus' own parser and linter (promtool) accept it.
    promtool_check_metrics(&exposition);
}

/// `promtool check metrics` on an exposition: fails on anything the Prometheus text parser or its linter rejects.
fn promtool_check_metrics(exposition: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool is required (Debian package prometheus, scripts/install-deps): {e}"));
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejects ferry's /metrics:\n{}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Every metric named in the Grafana dashboard and the Prometheus alert rules is one ferry registers, so they
//! cannot drift apart. Checked against `Metrics::names()` (every registered family, with or without series yet), so
//! no Kafka cluster is needed.

use std::collections::BTreeSet;
use std::path::Path;

use ferry::metrics::Metrics;

/// Files whose `ferry_*` names must all exist.
const FILES: &[&str] = &["dashboards/ferry.json", "dashboards/alerts.yaml", "helm/ferry/files/alerts.yaml"];

/// The metric names `text` uses that ferry does not register. Series of a histogram (`_bucket`, `_sum`, `_count`)
/// count as their base name.
fn unknown_metrics(text: &str, registered: &BTreeSet<String>) -> BTreeSet<String> {
    metric_pattern()
        .find_iter(text)
        .map(|m| m.as_str().trim_end_matches('_').to_owned())
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix));
            !registered.contains(name) && !base.is_some_and(|b| registered.contains(b))
        })
        .collect()
}

/// A metric name as dashboards and rules write it.
fn metric_pattern() -> regex::Regex {
    regex::Regex::new(r"\bferry_[a-z_]+").unwrap()
}

fn registered() -> BTreeSet<String> {
    Metrics::new(true).names().into_iter().collect()
}

#[test]
fn dashboards_and_alerts_use_only_registered_metrics() {
    let registered = registered();
    let pattern = metric_pattern();
    let mut used = 0;
    for file in FILES {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .unwrap_or_else(|e| panic!("read {file}: {e}"));
        used += pattern.find_iter(&text).count();
        let unknown = unknown_metrics(&text, &registered);
        assert!(
            unknown.is_empty(),
            "{file} uses metrics ferry does not register: {unknown:?}\nregistered (src/metrics.rs): {registered:?}"
        );
    }
    assert!(used > 20, "the dashboards name ferry metrics ({used} uses found)");
}

#[test]
fn the_check_catches_a_metric_that_does_not_exist() {
    let registered = registered();
    let panel = r#"{"targets": [{"expr": "sum by (flow) (rate(ferry_records_replicated_total[5m]))"},
        {"expr": "histogram_quantile(0.99, sum by (le) (rate(ferry_end_to_end_latency_seconds_bucket[5m])))"},
        {"expr": "sum(ferry_records_dropped_total) + ferry_tasks_count"}]}"#;
    let unknown: Vec<String> = unknown_metrics(panel, &registered).into_iter().collect();
    // ferry_tasks is a gauge: `ferry_tasks_count` maps to it, which is acceptable; a made-up counter is not.
    assert_eq!(unknown, ["ferry_records_dropped_total"]);
}

#[test]
fn names_lists_every_family_the_registry_exposes() {
    let metrics = Metrics::new(false);
    // Give the labelled families one series each where the public API allows it, then compare with the exposition.
    let _task = metrics.task("flow", "topic", 0);
    metrics.ready.set(1);
    metrics.cluster_up.with_label_values(&["a"]).set(1);
    metrics.tasks.with_label_values(&["flow", "running"]).set(1);
    let names: BTreeSet<String> = metrics.names().into_iter().collect();
    let exposed: BTreeSet<String> = metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert!(exposed.len() >= 8, "exposition has families: {exposed:?}");
    assert!(exposed.is_subset(&names), "exposed but missing from names(): {:?}", exposed.difference(&names));
    for name in &names {
        assert!(name.starts_with("ferry_"), "{name} has the ferry_ prefix");
    }
    assert!(names.contains("ferry_end_to_end_latency_seconds"), "{names:?}");
}

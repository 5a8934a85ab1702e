//! Every metric named in the Grafana dashboard and the Prometheus alert rules is one ferry registers (or one
//! Prometheus writes itself, such as `up`), so they cannot drift apart. Checked against `Metrics::names()` (every
//! registered family, with or without series yet), so no Kafka cluster is needed; `tests/e2e/metrics_scrape.rs`
//! checks the same names against a running ferry's `/metrics`. Also: every registered family is exported before it
//! has samples, and the alert rules pass `promtool check rules` and their unit tests.

#[path = "dashboards/metric_names.rs"]
mod metric_names;
#[path = "support/promtool.rs"]
mod promtool;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use ferry::ops::metrics::Metrics;
use metric_names::{family, mentioned, queries, selectors, PROMETHEUS_BUILTINS};

/// Files whose metric names must all exist: the dashboards and the chart's copy of the rules.
const FILES: &[&str] = &["dashboards/ferry.json", "dashboards/alerts.yaml", "helm/ferry/files/alerts.yaml"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn registered() -> BTreeSet<String> {
    Metrics::new(true).names().into_iter().collect()
}

/// The names in `text` (a file named `file`) that are neither a registered family (or one of a histogram's series)
/// nor, where a query selects them, a Prometheus built-in.
fn unknown_metrics(file: &str, text: &str, registered: &BTreeSet<String>) -> BTreeSet<String> {
    let known = |name: &str| family(name, |n| registered.contains(n)).is_some();
    let selected: BTreeSet<String> = queries(file, text).iter().flat_map(|query| selectors(query)).collect();
    let unknown_selected =
        selected.into_iter().filter(|name| !known(name) && !PROMETHEUS_BUILTINS.contains(&name.as_str()));
    let unknown_mentioned = mentioned(text).into_iter().filter(|name| !known(name));
    unknown_selected.chain(unknown_mentioned).collect()
}

#[test]
fn dashboards_and_alerts_use_only_registered_metrics() {
    let registered = registered();
    let mut selected = 0;
    for file in FILES {
        let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let queries = queries(file, &text);
        assert!(queries.len() >= 8, "{file}: found only {} queries", queries.len());
        selected += queries.iter().map(|query| selectors(query).len()).sum::<usize>();
        let unknown = unknown_metrics(file, &text, &registered);
        assert!(
            unknown.is_empty(),
            "{file} uses metrics ferry does not register: {unknown:?}\nregistered (src/ops/metrics.rs): {registered:?}\n\
             Prometheus built-ins allowed in queries: {PROMETHEUS_BUILTINS:?}"
        );
    }
    assert!(selected > 40, "the dashboards' queries select metrics ({selected} selections found)");
    // The coordination metrics have their panels and alerts.
    let used = metric_names::used(root());
    for name in
        ["ferry_leader", "ferry_members", "ferry_owned_tasks", "ferry_assigned_tasks", "ferry_etcd_errors_total"]
    {
        assert!(used.contains_key(name), "{name} is on no dashboard and in no rule");
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // Grafana variables replaced by what they stand for, every query becomes a recording rule that promtool parses.
    let text = std::fs::read_to_string(root().join("dashboards/ferry.json")).unwrap();
    let interval = regex::Regex::new(r"\$__(rate_interval|interval|range)\b").unwrap();
    let variable = regex::Regex::new(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?").unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries("dashboards/ferry.json", &text).iter().enumerate() {
        let promql = variable.replace_all(&interval.replace_all(query, "5m"), ".*").into_owned();
        rules.push_str(&format!("      - record: dashboard:query{i}\n        expr: {}\n", serde_json::json!(promql)));
    }
    if let Err(report) = promtool::check_rules(&rules) {
        panic!("a dashboard query is not valid PromQL:\n{report}\n{rules}");
    }
}

#[test]
fn the_check_catches_a_metric_that_does_not_exist() {
    let registered = registered();
    let panel = r#"{"panels": [{"targets": [
        {"expr": "sum by (flow) (rate(ferry_records_replicated_total{flow=~\"$flow\"}[$__rate_interval]))"},
        {"expr": "histogram_quantile(0.99, sum by (le) (rate(ferry_end_to_end_latency_seconds_bucket[5m])))"},
        {"expr": "sum(ferry_records_dropped_total) + ferry_tasks_count"},
        {"expr": "max by (namespace, job) (up{job=~\"ferry.*\"}) == 0 unless on (job) scrape_duration_secs offset 5m"}
    ]}], "templating": {"list": [{"type": "query", "query": "label_values(ferry_taks{flow=~\"a,b\"}, flow)"}]}}"#;
    let unknown: Vec<String> = unknown_metrics("x.json", panel, &registered).into_iter().collect();
    // ferry_tasks is a gauge: `ferry_tasks_count` maps to it, which is acceptable; a made-up counter is not, nor a
    // misspelt template variable query, nor a Prometheus series that is not on the built-in list. `up` is.
    assert_eq!(unknown, ["ferry_records_dropped_total", "ferry_taks", "scrape_duration_secs"]);
    // Prose names count too: an annotation mentioning a metric that does not exist.
    let rules =
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        annotations:\n          \
                 description: see ferry_leader and ferry_leaders_total\n";
    let unknown: Vec<String> = unknown_metrics("x.yaml", rules, &registered).into_iter().collect();
    assert_eq!(unknown, ["ferry_leaders_total"]);
}

#[test]
fn selectors_skip_labels_functions_keywords_and_variables() {
    let names = |expr: &str| selectors(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            "count by (namespace, job) (ferry_build_info) unless on (namespace, job) \
             (max by (namespace, job) (ferry_leader) == 1) or absent(ferry_leader == 1)"
        ),
        ["ferry_build_info", "ferry_leader"]
    );
    assert_eq!(
        names(
            "sum without (op) (rate(a_total{x=\"}{\", y='z'}[5m:1m] offset 1h)) * on (i) group_left (v) b > bool 0.5e3"
        ),
        ["a_total", "b"]
    );
    assert_eq!(names("topk(5, c) / ignoring (le) d and e{q=\"$flow\"} [${__range}]"), ["c", "d", "e"]);
    assert_eq!(names("sum(x) by (flow) + Inf - NaN"), ["x"]);
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
    let exposed = type_lines(&metrics.render());
    assert!(exposed.len() >= 8, "exposition has families: {exposed:?}");
    assert!(exposed.is_subset(&names), "exposed but missing from names(): {:?}", exposed.difference(&names));
    // Ferry's own families carry its prefix; the process collector's are the standard `process_*` ones.
    for name in &names {
        assert!(name.starts_with("ferry_") || name.starts_with("process_"), "{name} has the ferry_ prefix");
    }
    assert!(
        names.contains("process_cpu_seconds_total") && names.contains("process_resident_memory_bytes"),
        "{names:?}"
    );
    assert!(names.contains("ferry_end_to_end_latency_seconds"), "{names:?}");
}

/// The families of an exposition: the names on its `# TYPE` lines.
fn type_lines(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_registered_family_is_exported_before_it_has_samples() {
    // A fresh registry: most label vectors have no series yet (no etcd request, no throttle share, no task).
    let metrics = Metrics::new(false);
    let text = metrics.render();
    let names: BTreeSet<String> = metrics.names().into_iter().collect();
    let exposed = type_lines(&text);
    assert_eq!(
        exposed, names,
        "every registered family has a # TYPE line (a new label vector must be listed in Metrics::render):\n{text}"
    );
    // An empty family is its HELP and TYPE lines, as the text format writes them; families stay sorted.
    assert!(
        text.contains(
            "# HELP ferry_etcd_errors_total Failed requests to etcd, by operation.\n\
             # TYPE ferry_etcd_errors_total counter\n# HELP"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE ferry_etcd_request_duration_seconds histogram\n"), "{text}");
    let order: Vec<String> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(str::to_owned).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "families in name order");
    // Series that exist are rendered as before, and a family that gains one is not listed twice.
    metrics.etcd_errors.with_label_values(&["put"]).inc();
    let text = metrics.render();
    assert!(text.contains("ferry_etcd_errors_total{op=\"put\"} 1\n"), "{text}");
    assert_eq!(text.matches("# TYPE ferry_etcd_errors_total ").count(), 1, "{text}");
    // And the whole exposition is valid: promtool parses (and lints) it.
    promtool_check_metrics(&text);
}

/// `promtool check metrics` on an exposition: fails on anything the Prometheus text parser or its linter rejects.
fn promtool_check_metrics(exposition: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool is required (Debian package prometheus, scripts/install-deps): {e}"));
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejects the exposition:\n{}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    for args in [&["check", "rules", "alerts.yaml"][..], &["test", "rules", "alerts_test.yaml"][..]] {
        let out =
            Command::new("promtool").args(args).current_dir(root().join("dashboards")).output().unwrap_or_else(|e| {
                panic!("promtool is required (Debian package prometheus, scripts/install-deps): {e}")
            });
        assert!(
            out.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a unit test (promtool only runs the ones that exist).
    let rules = std::fs::read_to_string(root().join("dashboards/alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(root().join("dashboards/alerts_test.yaml")).unwrap();
    let alerts: BTreeSet<&str> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(str::trim).collect();
    assert!(alerts.len() >= 11, "{alerts:?}");
    for alert in alerts {
        assert!(tests.contains(&format!("alertname: {alert}\n")), "{alert} has no unit test in alerts_test.yaml");
    }
}

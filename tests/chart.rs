//! The Helm chart (`helm/ferry`): `helm lint` and `helm template` with the default values and with the
//! production-like `helm/ferry/ci/production-values.yaml`, and assertions on the rendered manifests.
//!
//! helm comes from `scripts/install-helm` (helm on PATH, else built once from its Go module and cached). These tests
//! never skip: without helm they fail and say how to get it. `FERRY_HELM=/path/to/helm` overrides the lookup.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde::Deserialize as _;
use serde_json::Value;

/// A string that must never land in a ConfigMap.
const SECRET: &str = "s3cr3t-ferry-chart-test-7d41c0";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("helm/ferry")
}

fn production_values() -> PathBuf {
    chart().join("ci/production-values.yaml")
}

/// The helm binary: `FERRY_HELM`, else the path `scripts/install-helm` prints. Panics with instructions otherwise.
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(path) = std::env::var_os("FERRY_HELM") {
            return PathBuf::from(path);
        }
        let script = root().join("scripts/install-helm");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("helm is required for the chart tests: cannot run {}: {e}", script.display()));
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !path.is_empty() && Path::new(&path).is_file(),
            "helm is required for the chart tests and scripts/install-helm could not provide it ({}).\n\
             Put helm (v3) on PATH, or install Go and run scripts/install-helm (it builds helm from its Go module and \
             caches it), or set FERRY_HELM=/path/to/helm.\nstderr of scripts/install-helm:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(path)
    })
}

fn run_helm(args: &[&str]) -> Output {
    Command::new(helm())
        .args(args)
        // No user or repository configuration leaks in; helm needs no network for lint or template.
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("ferry-chart-test-helm/config"))
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("ferry-chart-test-helm/cache"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("ferry-chart-test-helm/data"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm().display()))
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "helm {} ({})\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A values file in a temporary directory (kept alive by the returned guard).
fn values_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("values.yaml");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(yaml.as_bytes())).expect("write values file");
    (dir, path)
}

/// `helm template` with the given extra arguments; panics unless it succeeds.
fn template_text(extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", "ferry", chart.to_str().unwrap(), "--namespace", "replication"];
    args.extend_from_slice(extra);
    let out = run_helm(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    String::from_utf8(out.stdout).expect("helm output is UTF-8")
}

/// The rendered manifests, one JSON value per non-empty YAML document.
fn template(extra: &[&str]) -> Vec<Value> {
    parse_documents(&template_text(extra))
}

fn parse_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{text}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected exactly one {kind}, found {}", found.len());
    found[0]
}

fn ferry_container(sts: &Value) -> &Value {
    sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "ferry")
        .expect("a container named ferry")
}

fn default_render() -> Vec<Value> {
    template(&[])
}

fn production_render() -> Vec<Value> {
    template(&["-f", production_values().to_str().unwrap()])
}

#[test]
fn lint_passes_with_default_and_production_values() {
    let chart = chart();
    let production = production_values();
    for args in [
        vec!["lint", "--strict", chart.to_str().unwrap()],
        vec!["lint", "--strict", chart.to_str().unwrap(), "-f", production.to_str().unwrap()],
        vec![
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "--set",
            "prometheusRule.enabled=true,serviceMonitor.enabled=true",
        ],
    ] {
        let out = run_helm(&args);
        assert!(out.status.success(), "{}", describe(&args, &out));
    }
}

#[test]
fn probes_use_healthz_and_readyz_on_the_metrics_port() {
    for (name, docs) in [("default", default_render()), ("production", production_render())] {
        let sts = one(&docs, "StatefulSet");
        let service = one(&docs, "Service");
        let container = ferry_container(sts);
        let metrics_port = &service["spec"]["ports"][0];
        assert_eq!(metrics_port["name"], "http", "{name}: the Service's metrics port");
        let port_number = metrics_port["port"].as_i64().expect("Service port is a number");

        let http = container["ports"]
            .as_array()
            .expect("container ports")
            .iter()
            .find(|p| p["name"] == "http")
            .expect("container port named http");
        assert_eq!(http["containerPort"].as_i64(), Some(port_number), "{name}: container port = Service port");
        assert_eq!(metrics_port["targetPort"], "http", "{name}: the Service targets the container's http port");

        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name}: {probe} path");
            assert_eq!(get["port"], "http", "{name}: {probe} port is the metrics port");
        }
        // ferry itself listens on that port (the chart owns http.listen).
        let listen = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "FERRY_HTTP__LISTEN")
            .expect("FERRY_HTTP__LISTEN is set");
        assert_eq!(listen["value"], format!("0.0.0.0:{port_number}"), "{name}: ferry listens on the metrics port");
    }
}

#[test]
fn config_is_mounted_at_etc_ferry_from_the_configmap() {
    for (name, docs) in [("default", default_render()), ("production", production_render())] {
        let sts = one(&docs, "StatefulSet");
        let configmap = one(&docs, "ConfigMap");
        let container = ferry_container(sts);
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args, ["run", "--config", "/etc/ferry/ferry.yaml"], "{name}: container args");

        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/etc/ferry/ferry.yaml")
            .unwrap_or_else(|| panic!("{name}: nothing mounted at /etc/ferry/ferry.yaml"));
        assert_eq!(mount["subPath"], "ferry.yaml", "{name}: config mount subPath");
        let volume = sts["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the config volume");
        assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"], "{name}: volume is the ConfigMap");
        let config = configmap["data"]["ferry.yaml"].as_str().expect("ConfigMap data ferry.yaml");
        let parsed: Value = serde_norway::from_str(config).expect("the ConfigMap's ferry.yaml is YAML");
        assert!(parsed["flows"].is_array(), "{name}: the config has flows:\n{config}");

        assert_eq!(sts["spec"]["replicas"], 1, "{name}: one member until etcd coordination exists");
    }
}

#[test]
fn no_secret_value_in_any_configmap() {
    let (_dir, values) = values_file(&format!(
        "env:\n  - name: FERRY_US_EAST_SASL_PASSWORD\n    value: {SECRET}\n  - name: FERRY_EU_WEST_SASL_PASSWORD\n    \
         valueFrom: {{ secretKeyRef: {{ name: kafka-eu-west, key: password }} }}\nenvFrom:\n  - secretRef: {{ name: \
         ferry-kafka-credentials }}\nsecretMounts:\n  - name: kafka-tls\n    secretName: ferry-kafka-tls\n    \
         mountPath: /etc/ferry/tls\n"
    ));
    for extra in [
        vec!["-f", values.to_str().unwrap()],
        vec!["-f", production_values().to_str().unwrap(), "-f", values.to_str().unwrap()],
    ] {
        let text = template_text(&extra);
        // The secret was fed in (so the check below means something) ...
        assert!(text.contains(SECRET), "the test secret should appear in the pod spec's env");
        let docs = parse_documents(&text);
        let configmaps = of_kind(&docs, "ConfigMap");
        assert!(!configmaps.is_empty(), "a ConfigMap is rendered");
        // ... and lands in no ConfigMap.
        for cm in configmaps {
            let rendered = serde_json::to_string(cm).unwrap();
            assert!(
                !rendered.contains(SECRET),
                "ConfigMap {} contains a secret value:\n{rendered}",
                cm["metadata"]["name"]
            );
        }
        // Secrets are referenced, never created by the chart.
        assert!(of_kind(&docs, "Secret").is_empty(), "the chart must not render Secrets");
    }
}

#[test]
fn termination_grace_exceeds_ferry_shutdown() {
    for (name, docs) in [("default", default_render()), ("production", production_render())] {
        let sts = one(&docs, "StatefulSet");
        let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().expect("grace period");
        // ferry drains for up to 20 s, then writes the final checkpoint.
        assert!(grace > 30, "{name}: terminationGracePeriodSeconds {grace} is not above 30");
    }
}

#[test]
fn schema_rejects_bad_values_naming_the_field() {
    let chart = chart();
    let cases: &[(&str, &str)] = &[
        ("replicas: 3\n", "replicas"),
        ("replicaCount: 2\n", "replicaCount"),
        ("terminationGracePeriodSeconds: \"45\"\n", "terminationGracePeriodSeconds"),
        ("terminationGracePeriodSeconds: 10\n", "terminationGracePeriodSeconds"),
        ("config: null\n", "config"),
        ("config: \"\"\n", "config"),
        ("service:\n  port: metrics\n", "port"),
        ("logFormat: xml\n", "logFormat"),
        ("image:\n  repository: ferry\n  pullPolicy: Sometimes\n", "pullPolicy"),
        ("persistence:\n  enabled: \"yes\"\n", "enabled"),
        ("secretMounts:\n  - name: tls\n    secretName: t\n    mountPath: /etc/ferry\n", "mountPath"),
        ("podDisruptionBudget:\n  enabled: true\n  maxUnavailable: lots\n", "maxUnavailable"),
        ("serviceMonitor:\n  enabled: 1\n", "enabled"),
    ];
    for (yaml, field) in cases {
        let (_dir, values) = values_file(yaml);
        for verb in ["template", "lint"] {
            let args = if verb == "template" {
                vec!["template", "ferry", chart.to_str().unwrap(), "-f", values.to_str().unwrap()]
            } else {
                vec!["lint", chart.to_str().unwrap(), "-f", values.to_str().unwrap()]
            };
            let out = run_helm(&args);
            let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(!out.status.success(), "values {yaml:?} should be rejected\n{}", describe(&args, &out));
            assert!(
                all.contains(field),
                "the error for values {yaml:?} should name {field:?}\n{}",
                describe(&args, &out)
            );
            // template: "values don't meet the specifications of the schema(s)"; lint: "[ERROR] values.yaml: - at".
            let schema_error = all.contains("schema") || all.contains("[ERROR] values.yaml");
            assert!(schema_error, "values {yaml:?} should fail the schema\n{}", describe(&args, &out));
        }
    }
}

#[test]
fn prometheus_rule_is_dashboards_alerts_yaml() {
    let dashboards = std::fs::read(root().join("dashboards/alerts.yaml")).expect("dashboards/alerts.yaml");
    let copy = std::fs::read(chart().join("files/alerts.yaml")).expect("helm/ferry/files/alerts.yaml");
    assert!(
        dashboards == copy,
        "helm/ferry/files/alerts.yaml differs from dashboards/alerts.yaml: run `cp dashboards/alerts.yaml \
         helm/ferry/files/alerts.yaml` (Helm cannot read files outside the chart, so the chart keeps a copy)"
    );
    let expected: Value = serde_norway::from_slice(&dashboards).expect("dashboards/alerts.yaml is YAML");
    assert!(expected["groups"].as_array().is_some_and(|g| !g.is_empty()), "alerts.yaml has groups");

    // Off by default: the chart does not require the prometheus-operator CRDs.
    let defaults = default_render();
    assert!(of_kind(&defaults, "PrometheusRule").is_empty(), "no PrometheusRule by default");
    assert!(of_kind(&defaults, "ServiceMonitor").is_empty(), "no ServiceMonitor by default");

    for (name, docs) in [
        ("--set prometheusRule.enabled=true", template(&["--set", "prometheusRule.enabled=true"])),
        ("production", production_render()),
    ] {
        let rule = one(&docs, "PrometheusRule");
        assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1", "{name}");
        assert_eq!(
            rule["spec"]["groups"], expected["groups"],
            "{name}: PrometheusRule groups = dashboards/alerts.yaml"
        );
        let keys: Vec<&String> = rule["spec"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["groups"], "{name}: spec holds only the groups");
    }
}

#[test]
fn production_values_render_monitoring_pdb_affinity_and_resources() {
    let docs = production_render();
    let sts = one(&docs, "StatefulSet");
    let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
    let selector = sts["spec"]["selector"]["matchLabels"].as_object().expect("selector");
    for (k, v) in selector {
        assert_eq!(&pod_labels[k], v, "pod labels carry the selector label {k}");
    }

    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(
        pdb["spec"]["maxUnavailable"], 1,
        "one member: a drain may evict it (minAvailable 1 would block drains)"
    );
    assert!(pdb["spec"].get("minAvailable").is_none(), "only one of minAvailable/maxUnavailable");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"].as_object(), Some(selector), "PDB selects the ferry pod");

    let monitor = one(&docs, "ServiceMonitor");
    let service = one(&docs, "Service");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let service_labels = &service["metadata"]["labels"];
    for (k, v) in monitor["spec"]["selector"]["matchLabels"].as_object().expect("ServiceMonitor selector") {
        assert_eq!(&service_labels[k], v, "the ServiceMonitor selects the Service ({k})");
    }
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");

    let pod = &sts["spec"]["template"]["spec"];
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(anti["podAffinityTerm"]["labelSelector"]["matchLabels"].as_object(), Some(selector));

    let container = ferry_container(sts);
    assert!(container["resources"]["requests"]["memory"].is_string(), "memory request set");
    assert!(container["resources"]["limits"]["memory"].is_string(), "memory limit set");

    // Default values: PDB and anti-affinity are on, resources set; "hard" anti-affinity renders the required form.
    let defaults = default_render();
    assert_eq!(one(&defaults, "PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    let default_sts = one(&defaults, "StatefulSet");
    assert!(default_sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());
    assert!(ferry_container(default_sts)["resources"]["limits"]["memory"].is_string());
    let hard = template(&["--set", "podAntiAffinity=hard"]);
    let required = &one(&hard, "StatefulSet")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(required["topologyKey"], "kubernetes.io/hostname");
    let none = template(&["--set", "podAntiAffinity=none,podDisruptionBudget.enabled=false"]);
    assert!(one(&none, "StatefulSet")["spec"]["template"]["spec"].get("affinity").is_none());
    assert!(of_kind(&none, "PodDisruptionBudget").is_empty());
    let min = template(&["--set", "podDisruptionBudget.minAvailable=0"]);
    let min_pdb = one(&min, "PodDisruptionBudget");
    assert_eq!(min_pdb["spec"]["minAvailable"], 0);
    assert!(min_pdb["spec"].get("maxUnavailable").is_none());
}

#[test]
fn every_kind_is_known_and_names_are_consistent() {
    let docs = production_render();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for d in &docs {
        *kinds.entry(d["kind"].as_str().expect("kind").to_owned()).or_default() += 1;
        assert_eq!(d["metadata"]["name"], "ferry", "resource names derive from the release name");
    }
    let expected: BTreeMap<String, usize> =
        ["ConfigMap", "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceMonitor", "StatefulSet"]
            .into_iter()
            .map(|k| (k.to_owned(), 1))
            .collect();
    assert_eq!(kinds, expected, "rendered kinds with the production values");
}

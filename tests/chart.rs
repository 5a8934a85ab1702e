//! The Helm chart (`helm/ferry`): `helm lint` and `helm template` with the default values (file store: one member in
//! a StatefulSet), with the production-like `helm/ferry/ci/production-values.yaml` (etcd store: a Deployment of three
//! members) and with a minimal etcd install, and assertions on the rendered manifests; the rendered ferry config
//! must pass `ferry check-config`. The PrometheusRule is `dashboards/alerts.yaml` with the default values, and every
//! alert's `runbook_url` resolves to a heading of `docs/runbook.md`.
//!
//! helm comes from `scripts/install-helm` (helm on PATH, else built once from its Go module and cached). These tests
//! never skip: without helm they fail and say how to get it. `FERRY_HELM=/path/to/helm` overrides the lookup.

#[path = "support/promtool.rs"]
mod promtool;

use std::collections::{BTreeMap, BTreeSet};
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

/// The oldest Kubernetes the chart supports: Chart.yaml's kubeVersion. helm built from its Go module (as
/// scripts/install-helm builds it) lacks the release build's flags and assumes Kubernetes 1.20, which kubeVersion
/// refuses, so every render and lint names this version; a caller's own `--kube-version` comes later and wins.
const KUBE_VERSION: &str = "1.21.0";

fn run_helm(args: &[&str]) -> Output {
    let kube: &[&str] = match args.first() {
        Some(&"template" | &"lint") => &["--kube-version", KUBE_VERSION],
        _ => &[],
    };
    Command::new(helm())
        .args(args.iter().take(1).chain(kube).chain(args.iter().skip(1)))
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

/// The one workload of a render: the StatefulSet (file store) or the Deployment (etcd store), never both.
fn workload(docs: &[Value]) -> &Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment").collect();
    assert_eq!(found.len(), 1, "expected exactly one StatefulSet or Deployment, found {}", found.len());
    found[0]
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn ferry_container(workload: &Value) -> &Value {
    pod_spec(workload)["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "ferry")
        .expect("a container named ferry")
}

fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"].as_array().expect("env").iter().find(|e| e["name"] == name)
}

fn volume<'a>(workload: &'a Value, name: &Value) -> &'a Value {
    pod_spec(workload)["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| &v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The ferry YAML in the rendered ConfigMap, as text and parsed.
fn rendered_config(docs: &[Value]) -> (String, Value) {
    let text = one(docs, "ConfigMap")["data"]["ferry.yaml"].as_str().expect("ConfigMap data ferry.yaml").to_owned();
    let parsed: Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("the ConfigMap's ferry.yaml is not YAML: {e}\n{text}"));
    (text, parsed)
}

fn default_render() -> Vec<Value> {
    template(&[])
}

fn production_render() -> Vec<Value> {
    template(&["-f", production_values().to_str().unwrap()])
}

/// The smallest etcd install: the default values plus one endpoint.
const MINIMAL_ETCD: &[&str] = &["--set", "checkpoint.store=etcd,checkpoint.etcd.endpoints={http://etcd.platform:2379}"];

/// Every render the assertions below run on: (name, manifests).
fn renders() -> Vec<(&'static str, Vec<Value>)> {
    vec![("default", default_render()), ("production", production_render()), ("minimal etcd", template(MINIMAL_ETCD))]
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
        [vec!["lint", "--strict", chart.to_str().unwrap()], MINIMAL_ETCD.to_vec()].concat(),
    ] {
        let out = run_helm(&args);
        assert!(out.status.success(), "{}", describe(&args, &out));
    }
}

#[test]
fn the_checkpoint_store_decides_statefulset_or_deployment() {
    // File store (the default): one member in a StatefulSet with its PersistentVolumeClaim.
    let docs = default_render();
    assert!(of_kind(&docs, "Deployment").is_empty(), "the file store renders no Deployment");
    let sts = one(&docs, "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 1, "the file store runs one member");
    let claims = sts["spec"]["volumeClaimTemplates"].as_array().expect("a volumeClaimTemplate for the checkpoints");
    assert_eq!(claims[0]["metadata"]["name"], "data");
    let container = ferry_container(sts);
    let data_mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "data").unwrap();
    let (_, config) = rendered_config(&docs);
    assert_eq!(config["checkpoint"]["store"], "file");
    assert_eq!(config["checkpoint"]["path"], data_mount["mountPath"], "the file store writes to the claim");
    assert!(config["checkpoint"].get("etcd").is_none(), "no etcd section with the file store");
    assert!(env_var(container, "FERRY_ETCD_PASSWORD").is_none());

    // etcd store: a Deployment of `replicas` members, nothing on disk.
    for (name, docs, replicas) in [("production", production_render(), 3), ("minimal etcd", template(MINIMAL_ETCD), 1)]
    {
        assert!(of_kind(&docs, "StatefulSet").is_empty(), "{name}: the etcd store renders no StatefulSet");
        let deployment = one(&docs, "Deployment");
        assert_eq!(deployment["apiVersion"], "apps/v1");
        assert_eq!(deployment["spec"]["replicas"], replicas, "{name}: replicas from the values");
        assert!(deployment["spec"].get("volumeClaimTemplates").is_none());
        let update = &deployment["spec"]["strategy"]["rollingUpdate"];
        assert_eq!(update["maxUnavailable"], 0, "{name}: a rollout never runs fewer members than replicas");
        assert_eq!(update["maxSurge"], 1, "{name}");
        let selector = deployment["spec"]["selector"]["matchLabels"].as_object().expect("selector");
        for (k, v) in selector {
            assert_eq!(&deployment["spec"]["template"]["metadata"]["labels"][k], v, "{name}: pod label {k}");
        }
        let volumes = pod_spec(deployment)["volumes"].as_array().unwrap();
        assert!(volumes.iter().all(|v| v["name"] != "data"), "{name}: no checkpoint volume with etcd");
        let (_, config) = rendered_config(&docs);
        assert_eq!(config["checkpoint"]["store"], "etcd", "{name}");
        assert!(config["checkpoint"].get("path").is_none(), "{name}: no file store path with etcd");
        let endpoints = config["checkpoint"]["etcd"]["endpoints"].as_array().expect("endpoints");
        assert!(!endpoints.is_empty(), "{name}: etcd endpoints in the config");
    }

    // The production example's etcd values land in the config, the env and the volumes.
    let docs = production_render();
    let deployment = one(&docs, "Deployment");
    let container = ferry_container(deployment);
    let (_, config) = rendered_config(&docs);
    let etcd = &config["checkpoint"]["etcd"];
    assert_eq!(etcd["endpoints"][2], "https://etcd-2.etcd.platform.svc:2379");
    assert_eq!(etcd["prefix"], "/ferry/prod");
    assert_eq!(etcd["lease_ttl"], "10s");
    assert_eq!(etcd["username"], "ferry");
    assert_eq!(etcd["password"], serde_json::json!({ "env": "FERRY_ETCD_PASSWORD" }), "password is a reference");
    let password = env_var(container, "FERRY_ETCD_PASSWORD").expect("FERRY_ETCD_PASSWORD in the env");
    assert_eq!(password["valueFrom"]["secretKeyRef"], serde_json::json!({ "name": "ferry-etcd", "key": "password" }));
    assert!(password.get("value").is_none(), "the password is never a literal env value");
    let tls_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "etcd-tls")
        .expect("the etcd TLS Secret is mounted");
    assert_eq!(tls_mount["readOnly"], true);
    assert_eq!(volume(deployment, &tls_mount["name"])["secret"]["secretName"], "ferry-etcd-tls");
    let dir = tls_mount["mountPath"].as_str().unwrap();
    for (key, file) in [("ca_file", "ca.crt"), ("cert_file", "tls.crt"), ("key_file", "tls.key")] {
        assert_eq!(etcd["tls"][key], format!("{dir}/{file}"), "{key} is a file of the mounted Secret");
    }
    assert_eq!(config["checkpoint"]["interval"], "5s");
}

#[test]
fn probes_use_healthz_and_readyz_on_the_metrics_port() {
    for (name, docs) in renders() {
        let workload = workload(&docs);
        let service = one(&docs, "Service");
        let container = ferry_container(workload);
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
        let listen = env_var(container, "FERRY_HTTP__LISTEN").expect("FERRY_HTTP__LISTEN is set");
        assert_eq!(listen["value"], format!("0.0.0.0:{port_number}"), "{name}: ferry listens on the metrics port");
        // Members advertise their pod IP (with that port) to each other.
        let pod_ip = env_var(container, "POD_IP").expect("POD_IP is set");
        assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP", "{name}: POD_IP from the pod status");
        // The Service selects the pods.
        for (k, v) in service["spec"]["selector"].as_object().expect("Service selector") {
            assert_eq!(&workload["spec"]["template"]["metadata"]["labels"][k], v, "{name}: Service selects {k}");
        }
    }
}

/// The instructions of the Dockerfile's final stage (the image that runs), as (KEYWORD, arguments): continuation
/// lines joined and comment lines dropped, as Docker's parser does.
fn dockerfile_final_stage() -> Vec<(String, String)> {
    let path = root().join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(char::is_whitespace).unwrap_or((current.as_str(), ""));
                instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    let last_from = instructions.iter().rposition(|(k, _)| k == "FROM").expect("the Dockerfile has a FROM");
    instructions.split_off(last_from)
}

/// The one `keyword` instruction of the final stage, in exec (JSON array) form: the image has no shell to run the
/// shell form.
fn dockerfile_exec_form(stage: &[(String, String)], keyword: &str) -> Vec<String> {
    let found: Vec<&String> = stage.iter().filter(|(k, _)| k == keyword).map(|(_, args)| args).collect();
    assert_eq!(found.len(), 1, "the Dockerfile's final stage should have exactly one {keyword}: {found:?}");
    serde_json::from_str(found[0]).unwrap_or_else(|e| {
        panic!(
            "the Dockerfile's {keyword} {} is not in exec form (a JSON array; the image has no shell): {e}",
            found[0]
        )
    })
}

#[test]
fn the_pod_runs_the_images_entrypoint_and_cmd_as_the_images_user() {
    let stage = dockerfile_final_stage();
    let entrypoint = dockerfile_exec_form(&stage, "ENTRYPOINT");
    let cmd = dockerfile_exec_form(&stage, "CMD");
    let users: Vec<&String> = stage.iter().filter(|(k, _)| k == "USER").map(|(_, args)| args).collect();
    assert_eq!(users.len(), 1, "the Dockerfile's final stage should set USER once: {users:?}");
    let (uid, gid) = users[0].split_once(':').expect("USER is uid:gid");
    for (name, docs) in renders() {
        let workload = workload(&docs);
        let container = ferry_container(workload);
        let strings = |key: &str| -> Vec<String> {
            let list = container[key].as_array().unwrap_or_else(|| panic!("{name}: the ferry container sets {key}"));
            list.iter().map(|v| v.as_str().expect("a string").to_owned()).collect()
        };
        // `command` replaces the image's ENTRYPOINT and `args` its CMD: the pod runs what the image would.
        assert_eq!(strings("command"), entrypoint, "{name}: command = the Dockerfile's ENTRYPOINT");
        assert_eq!(strings("args"), cmd, "{name}: args = the Dockerfile's CMD");
        let security = &pod_spec(workload)["securityContext"];
        assert_eq!(security["runAsUser"].to_string(), uid, "{name}: runAsUser = the Dockerfile's USER");
        assert_eq!(security["runAsGroup"].to_string(), gid, "{name}: runAsGroup = the Dockerfile's USER");
    }
}

#[test]
fn the_default_image_is_the_one_scripts_image_builds() {
    let docs = default_render();
    let image = ferry_container(workload(&docs))["image"].as_str().expect("image").to_owned();
    // scripts/image build tags localhost/ferry:<version in Cargo.toml>; the chart's tag defaults to its appVersion.
    assert_eq!(image, format!("localhost/ferry:{}", env!("CARGO_PKG_VERSION")), "bump appVersion in Chart.yaml");
}

#[test]
fn config_is_mounted_at_etc_ferry_from_the_configmap_and_passes_check_config() {
    for (name, docs) in renders() {
        let workload = workload(&docs);
        let configmap = one(&docs, "ConfigMap");
        let container = ferry_container(workload);
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args, ["run", "--config", "/etc/ferry/config/ferry.yaml"], "{name}: container args");

        // The ConfigMap is mounted as a directory (no subPath), so kubelet refreshes the file when it changes and
        // ferry reloads flows and throttles without a restart.
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/etc/ferry/config")
            .unwrap_or_else(|| panic!("{name}: nothing mounted at /etc/ferry/config"));
        assert!(mount.get("subPath").is_none(), "{name}: a subPath mount never sees ConfigMap updates");
        assert_eq!(mount["readOnly"], true, "{name}: config mount is read-only");
        let config_volume = volume(workload, &mount["name"]);
        assert_eq!(
            config_volume["configMap"]["name"], configmap["metadata"]["name"],
            "{name}: volume is the ConfigMap"
        );
        assert!(configmap["data"]["ferry.yaml"].is_string(), "{name}: the ConfigMap's key is ferry.yaml");
        let (text, config) = rendered_config(&docs);
        assert!(config["flows"].is_array(), "{name}: the config has flows:\n{text}");
        assert_ferry_accepts_config(name, &docs);
    }
}

/// ferry itself accepts the rendered config (the chart's checkpoint section included), given what the pod would
/// have: the etcd TLS files check-config reads (here under a temporary directory; their content does not matter)
/// and the variables below.
fn assert_ferry_accepts_config(name: &str, docs: &[Value]) {
    let (text, config) = rendered_config(docs);
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("etcd-tls");
    std::fs::create_dir(&tls_dir).unwrap();
    for (_, file) in config["checkpoint"]["etcd"]["tls"].as_object().into_iter().flatten() {
        let file = file.as_str().unwrap().strip_prefix("/etc/ferry/etcd-tls/").expect("TLS files in the mount");
        std::fs::write(tls_dir.join(file), "-----BEGIN CERTIFICATE-----\n").unwrap();
    }
    let text = text.replace("/etc/ferry/etcd-tls/", &format!("{}/", tls_dir.display()));
    let path = dir.path().join("ferry.yaml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("check-config")
        .arg(&path)
        // The variables the configs reference with { env: VAR }; their values do not matter here.
        .env("FERRY_US_EAST_SASL_PASSWORD", "x")
        .env("FERRY_EU_WEST_SASL_PASSWORD", "x")
        .env("FERRY_ETCD_PASSWORD", "x")
        .output()
        .expect("run ferry check-config");
    assert!(
        out.status.success(),
        "{name}: ferry check-config refuses the rendered config:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn only_config_changes_ferry_cannot_reload_roll_the_pods() {
    let checksum = |config: &str, extra: &[&str]| {
        let (_dir, values) = values_file(&format!("config: |\n{}", textwrap(config)));
        let docs = template(&[&["-f", values.to_str().unwrap()], extra].concat());
        let annotations = &workload(&docs)["spec"]["template"]["metadata"]["annotations"];
        annotations["checksum/config"].as_str().expect("checksum/config annotation").to_owned()
    };
    let base = "clusters:\n  a: { bootstrap_servers: \"a:9092\" }\n  b: { bootstrap_servers: \"b:9092\" }\n\
                flows:\n  - { name: f, source: a, target: b, topics: { include: [x] } }\n";
    let more_flows = format!("{base}  - {{ name: g, source: b, target: a, topics: {{ include: [y] }} }}\n");
    let throttled = format!("{base}throttles:\n  - {{ from: a, to: b, rate: 1MiB/s }}\n");
    let other_cluster = base.replace("a:9092", "a2:9092");
    let slower_discovery = format!("{base}discovery:\n  interval: 1m\n");
    for store in [&[][..], MINIMAL_ETCD] {
        let before = checksum(base, store);
        // Flows and throttles: the ConfigMap changes, the pods stay (ferry reloads the mounted file).
        assert_eq!(checksum(&more_flows, store), before, "a new flow must not roll the pods");
        assert_eq!(checksum(&throttled, store), before, "a throttle change must not roll the pods");
        // Anything ferry applies only at start rolls them.
        assert_ne!(checksum(&other_cluster, store), before, "a cluster change rolls the pods");
        assert_ne!(checksum(&slower_discovery, store), before, "a discovery change rolls the pods");
        assert_ne!(
            checksum(base, &[store, &["--set", "checkpoint.interval=2s"]].concat()),
            before,
            "a checkpoint change rolls the pods"
        );
        // restartOnConfigChange: every change rolls them.
        let restart = [store, &["--set", "restartOnConfigChange=true"]].concat();
        assert_ne!(checksum(&more_flows, &restart), checksum(base, &restart));
    }
}

/// `text` indented by two spaces, for a YAML block scalar.
fn textwrap(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
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
        [MINIMAL_ETCD, &["-f", values.to_str().unwrap()]].concat(),
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
        // The etcd password, when there is one, is a reference to the environment.
        let (_, config) = rendered_config(&docs);
        if let Some(password) = config["checkpoint"]["etcd"].get("password") {
            assert_eq!(password, &serde_json::json!({ "env": "FERRY_ETCD_PASSWORD" }));
        }
    }
}

#[test]
fn termination_grace_exceeds_ferry_shutdown() {
    for (name, docs) in renders() {
        let grace = pod_spec(workload(&docs))["terminationGracePeriodSeconds"].as_i64().expect("grace period");
        // ferry drains for up to 20 s, then writes the final checkpoint, flushes and releases its tasks.
        assert!(grace >= 45, "{name}: terminationGracePeriodSeconds {grace} is under 45");
    }
}

/// `helm` with each of `verbs` (`template`, `lint`) and `yaml` as a values file must fail; returns the outputs.
fn rejected_by(verbs: &[&str], yaml: &str) -> Vec<String> {
    let chart = chart();
    let (_dir, values) = values_file(yaml);
    verbs
        .iter()
        .map(|verb| {
            let args = if *verb == "template" {
                vec!["template", "ferry", chart.to_str().unwrap(), "-f", values.to_str().unwrap()]
            } else {
                vec!["lint", chart.to_str().unwrap(), "-f", values.to_str().unwrap()]
            };
            let out = run_helm(&args);
            assert!(!out.status.success(), "values {yaml:?} should be rejected\n{}", describe(&args, &out));
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        })
        .collect()
}

/// Schema errors stop both `helm template` (and so install/upgrade) and `helm lint`.
fn rejected(yaml: &str) -> Vec<String> {
    rejected_by(&["template", "lint"], yaml)
}

#[test]
fn schema_rejects_bad_values_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        ("replicaCount: 2\n", "replicaCount"),
        ("replicas: \"3\"\n", "replicas"),
        ("replicas: 0\n", "replicas"),
        // The file store belongs to one process.
        ("replicas: 2\n", "/replicas"),
        ("replicas: 3\ncheckpoint:\n  store: file\n", "/replicas"),
        // The etcd store needs its endpoints (the chart does not ship etcd).
        ("checkpoint:\n  store: etcd\n", "endpoints"),
        ("checkpoint:\n  store: etcd\n  etcd:\n    endpoints: []\n", "endpoints"),
        ("checkpoint:\n  store: memory\n", "store"),
        (
            "checkpoint:\n  store: etcd\n  etcd:\n    endpoints: [\"http://e:2379\"]\n    password: hunter2\n",
            "password",
        ),
        ("checkpoint:\n  store: etcd\n  etcd:\n    endpoints: [\"http://e:2379\"]\n    prefix: /ferry/\n", "prefix"),
        ("checkpoint:\n  interval: 5\n", "interval"),
        ("terminationGracePeriodSeconds: \"45\"\n", "terminationGracePeriodSeconds"),
        ("terminationGracePeriodSeconds: 10\n", "terminationGracePeriodSeconds"),
        ("terminationGracePeriodSeconds: 40\n", "terminationGracePeriodSeconds"),
        ("config: null\n", "config"),
        ("config: \"\"\n", "config"),
        ("service:\n  port: metrics\n", "port"),
        ("logFormat: xml\n", "logFormat"),
        ("image:\n  repository: ferry\n  pullPolicy: Sometimes\n", "pullPolicy"),
        ("persistence:\n  enabled: \"yes\"\n", "enabled"),
        ("secretMounts:\n  - name: tls\n    secretName: t\n    mountPath: /etc/ferry\n", "mountPath"),
        ("secretMounts:\n  - name: tls\n    secretName: t\n    mountPath: /etc/ferry/config\n", "mountPath"),
        ("restartOnConfigChange: \"yes\"\n", "restartOnConfigChange"),
        ("podDisruptionBudget:\n  enabled: true\n  maxUnavailable: lots\n", "maxUnavailable"),
        ("podAntiAffinity: always\n", "podAntiAffinity"),
        ("serviceMonitor:\n  enabled: 1\n", "enabled"),
        ("serviceMonitor:\n  enabled: true\n  relabelings: {}\n", "relabelings"),
        ("image:\n  repository: ferry\n  digest: latest\n", "digest"),
        ("serviceAccount:\n  create: \"yes\"\n", "create"),
        ("serviceAccount:\n  create: true\n  name: Ferry_SA\n", "name"),
        ("startupProbe:\n  enabled: true\n  periodSeconds: 0\n", "periodSeconds"),
        ("startupProbe:\n  path: /readyz\n", "startupProbe"),
        ("checkpoint:\n  etcd:\n    historyRetention: 1 hour\n", "historyRetention"),
        ("extraVolumes:\n  - configMap: { name: x }\n", "name"),
        ("extraVolumeMounts:\n  - name: x\n", "mountPath"),
        ("extraVolumeMounts:\n  - name: x\n    mountPath: /etc/ferry/config\n", "mountPath"),
        ("priorityClassName: 1000\n", "priorityClassName"),
        ("prometheusRule:\n  enabled: true\n  thresholds:\n    etcdErrorRatio: 5\n", "etcdErrorRatio"),
        ("prometheusRule:\n  enabled: true\n  thresholds:\n    replicationLagSeconds: 0\n", "replicationLagSeconds"),
        ("prometheusRule:\n  enabled: true\n  jobSelector: \"\"\n", "jobSelector"),
    ];
    for (yaml, field) in cases {
        for all in rejected(yaml) {
            assert!(all.contains(field), "the error for values {yaml:?} should name {field:?}\n{all}");
            // template: "values don't meet the specifications of the schema(s)"; lint: "[ERROR] values.yaml: - at".
            let schema_error = all.contains("schema") || all.contains("[ERROR] values.yaml");
            assert!(schema_error, "values {yaml:?} should fail the schema\n{all}");
        }
    }
}

#[test]
fn file_store_with_several_replicas_is_refused_saying_why() {
    for all in rejected("replicas: 2\n") {
        // "replicas must be 1, or checkpoint.store must be etcd".
        assert!(all.contains("'/replicas': value must be 1"), "{all}");
        assert!(all.contains("'/checkpoint/store': value must be 'etcd'"), "{all}");
    }
    // With schema validation skipped, the chart itself refuses, in words.
    let chart = chart();
    let args = ["template", "ferry", chart.to_str().unwrap(), "--skip-schema-validation", "--set", "replicas=2"];
    let out = run_helm(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&args, &out));
    assert!(stderr.contains("replicas: 2 members need checkpoint.store: etcd"), "{}", describe(&args, &out));
}

#[test]
fn the_chart_refuses_what_the_schema_cannot_express() {
    let cases: &[(&str, &str)] = &[
        // The chart owns the checkpoint section.
        ("config: |\n  clusters: {}\n  checkpoint:\n    store: file\n", "config: remove its `checkpoint` section"),
        ("config: |\n  clusters: [\n", "config: not valid YAML"),
        (
            "checkpoint:\n  store: etcd\n  etcd:\n    endpoints: [\"http://e:2379\"]\n    username: ferry\n",
            "checkpoint.etcd.password.secretName: required when checkpoint.etcd.username is set",
        ),
        (
            "checkpoint:\n  store: etcd\n  etcd:\n    endpoints: [\"http://e:2379\"]\n    tls:\n      secretName: t\n      \
             key: \"\"\n",
            "checkpoint.etcd.tls: cert and key go together",
        ),
    ];
    // `helm lint` reports a template's `fail` as [INFO] and passes; install, upgrade and template stop.
    for (yaml, message) in cases {
        for all in rejected_by(&["template"], yaml) {
            assert!(all.contains(message), "values {yaml:?} should fail with {message:?}\n{all}");
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
fn pdb_anti_affinity_resources_and_monitoring() {
    for (name, docs) in renders() {
        let workload = workload(&docs);
        let selector = workload["spec"]["selector"]["matchLabels"].as_object().expect("selector");
        // One member at a time: with several members (etcd) the others take over its tasks; with one, a drain is
        // never blocked (minAvailable 1 would block it forever).
        let pdb = one(&docs, "PodDisruptionBudget");
        assert_eq!(pdb["apiVersion"], "policy/v1");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{name}: drains evict one member at a time");
        assert!(pdb["spec"].get("minAvailable").is_none(), "{name}: only one of minAvailable/maxUnavailable");
        assert_eq!(pdb["spec"]["selector"]["matchLabels"].as_object(), Some(selector), "{name}: PDB selects ferry");

        // Preferred anti-affinity on the hostname, against this release's pods.
        let anti =
            &pod_spec(workload)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(anti["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname", "{name}");
        assert_eq!(anti["podAffinityTerm"]["labelSelector"]["matchLabels"].as_object(), Some(selector), "{name}");

        let container = ferry_container(workload);
        assert!(container["resources"]["requests"]["memory"].is_string(), "{name}: memory request set");
        assert!(container["resources"]["limits"]["memory"].is_string(), "{name}: memory limit set");
    }

    let docs = production_render();
    let monitor = one(&docs, "ServiceMonitor");
    let service = one(&docs, "Service");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let service_labels = &service["metadata"]["labels"];
    for (k, v) in monitor["spec"]["selector"]["matchLabels"].as_object().expect("ServiceMonitor selector") {
        assert_eq!(&service_labels[k], v, "the ServiceMonitor selects the Service ({k})");
    }
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let spread = &pod_spec(one(&docs, "Deployment"))["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");

    // "hard" renders the required form, for both workloads; "none" and a disabled PDB render nothing.
    for base in [&[][..], MINIMAL_ETCD] {
        let hard = template(&[base, &["--set", "podAntiAffinity=hard"]].concat());
        let required = &pod_spec(workload(&hard))["affinity"]["podAntiAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(required["topologyKey"], "kubernetes.io/hostname");
        let none = template(&[base, &["--set", "podAntiAffinity=none,podDisruptionBudget.enabled=false"]].concat());
        assert!(pod_spec(workload(&none)).get("affinity").is_none());
        assert!(of_kind(&none, "PodDisruptionBudget").is_empty());
    }
    let min = template(&["--set", "podDisruptionBudget.minAvailable=0"]);
    let min_pdb = one(&min, "PodDisruptionBudget");
    assert_eq!(min_pdb["spec"]["minAvailable"], 0);
    assert!(min_pdb["spec"].get("maxUnavailable").is_none());
}

#[test]
fn every_kind_is_known_and_names_are_consistent() {
    for (name, docs, kinds) in [
        (
            "production",
            production_render(),
            &[
                "ConfigMap",
                "Deployment",
                "PodDisruptionBudget",
                "PrometheusRule",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
            ][..],
        ),
        (
            "default",
            default_render(),
            &["ConfigMap", "PodDisruptionBudget", "Service", "ServiceAccount", "StatefulSet"][..],
        ),
    ] {
        let mut found: BTreeMap<String, usize> = BTreeMap::new();
        for d in &docs {
            *found.entry(d["kind"].as_str().expect("kind").to_owned()).or_default() += 1;
            assert_eq!(d["metadata"]["name"], "ferry", "{name}: resource names derive from the release name");
        }
        let expected: BTreeMap<String, usize> = kinds.iter().map(|k| (k.to_string(), 1)).collect();
        assert_eq!(found, expected, "rendered kinds with the {name} values");
    }
}

/// Chart.yaml, parsed.
fn chart_metadata() -> Value {
    let path = chart().join("Chart.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text).expect("Chart.yaml is YAML")
}

#[test]
fn chart_metadata_and_license_match_the_repository() {
    let meta = chart_metadata();
    let home = meta["home"].as_str().expect("Chart.yaml has home");
    assert!(home.starts_with("https://"), "home is a URL: {home}");
    let sources = meta["sources"].as_array().expect("Chart.yaml has sources");
    assert!(sources.iter().any(|s| s == home), "the repository is among the sources: {sources:?}");
    assert!(meta["kubeVersion"].as_str().is_some_and(|v| v.starts_with(">=")), "Chart.yaml has a kubeVersion floor");

    // kubeVersion is enforced: a cluster below it is refused, the floor itself renders.
    let chart = chart();
    let args = ["template", "ferry", chart.to_str().unwrap(), "--kube-version", "1.20.0"];
    let out = run_helm(&args);
    assert!(!out.status.success(), "{}", describe(&args, &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kubeVersion"), "{}", describe(&args, &out));
    assert!(!default_render().is_empty(), "Kubernetes {KUBE_VERSION} renders");

    // The LICENSE file is the text of the license Cargo.toml declares.
    let license = std::fs::read_to_string(root().join("LICENSE")).expect("a LICENSE file at the repository root");
    match env!("CARGO_PKG_LICENSE") {
        "Apache-2.0" => {
            for line in ["Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE"] {
                assert!(license.contains(line), "LICENSE is not the Apache License 2.0 text: no {line:?}");
            }
        }
        other => panic!("Cargo.toml says license = {other:?}: check LICENSE against it and teach this test"),
    }
}

#[test]
fn the_pods_service_account_is_created_or_named() {
    // Default: the chart creates one named after the release, which mounts no token (ferry never calls the API).
    for (name, docs) in renders() {
        let account = one(&docs, "ServiceAccount");
        assert_eq!(account["metadata"]["name"], "ferry", "{name}");
        assert_eq!(account["automountServiceAccountToken"], false, "{name}");
        let pod = pod_spec(workload(&docs));
        assert_eq!(pod["serviceAccountName"], "ferry", "{name}: the pods use the created account");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
    }
    let (_dir, values) = values_file(
        "serviceAccount:\n  create: true\n  name: replicator\n  annotations:\n    \
         iam.gke.io/gcp-service-account: ferry@project.iam.gserviceaccount.com\n",
    );
    let docs = template(&["-f", values.to_str().unwrap()]);
    let account = one(&docs, "ServiceAccount");
    assert_eq!(account["metadata"]["name"], "replicator");
    assert_eq!(
        account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"],
        "ferry@project.iam.gserviceaccount.com"
    );
    assert_eq!(pod_spec(workload(&docs))["serviceAccountName"], "replicator");

    // create: false renders no account; the pods use the one named, else the namespace's default.
    for (set, expected) in [
        ("serviceAccount.create=false", "default"),
        ("serviceAccount.create=false,serviceAccount.name=shared", "shared"),
    ] {
        for store in [&[][..], MINIMAL_ETCD] {
            let docs = template(&[store, &["--set", set]].concat());
            assert!(of_kind(&docs, "ServiceAccount").is_empty(), "{set}: no ServiceAccount");
            assert_eq!(pod_spec(workload(&docs))["serviceAccountName"], expected, "{set}");
        }
    }
}

#[test]
fn extra_volumes_are_mounted_into_the_ferry_container() {
    let (_dir, values) = values_file(
        "extraVolumes:\n  - name: kafka-ca\n    configMap: { name: kafka-ca-bundle }\nextraVolumeMounts:\n  \
         - name: kafka-ca\n    mountPath: /etc/ferry/kafka-ca\n    readOnly: true\n",
    );
    for (name, store) in [("file store", &[][..]), ("etcd store", MINIMAL_ETCD)] {
        let docs = template(&[store, &["-f", values.to_str().unwrap()]].concat());
        let workload = workload(&docs);
        let extra = volume(workload, &Value::from("kafka-ca"));
        assert_eq!(extra["configMap"]["name"], "kafka-ca-bundle", "{name}");
        let mounts = ferry_container(workload)["volumeMounts"].as_array().expect("volumeMounts");
        let mount = mounts.iter().find(|m| m["name"] == "kafka-ca").unwrap_or_else(|| panic!("{name}: not mounted"));
        assert_eq!(mount["mountPath"], "/etc/ferry/kafka-ca", "{name}");
        assert_eq!(mount["readOnly"], true, "{name}");
        // Added to the chart's own, which stay.
        volume(workload, &Value::from("config"));
        assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/ferry/config"), "{name}: the config is still mounted");
    }
}

#[test]
fn pod_labels_annotations_and_priority_class() {
    let (_dir, values) = values_file(
        "priorityClassName: replication-critical\npodLabels:\n  team: data-platform\n  \
         app.kubernetes.io/name: something-else\npodAnnotations:\n  example.com/owner: data-platform\n  \
         checksum/config: stale\n",
    );
    let defaults = default_render();
    let default_meta = &workload(&defaults)["spec"]["template"]["metadata"];
    assert!(pod_spec(workload(&defaults)).get("priorityClassName").is_none(), "no priority class by default");
    for store in [&[][..], MINIMAL_ETCD] {
        let docs = template(&[store, &["-f", values.to_str().unwrap()]].concat());
        let workload = workload(&docs);
        let meta = &workload["spec"]["template"]["metadata"];
        assert_eq!(pod_spec(workload)["priorityClassName"], "replication-critical");
        assert_eq!(meta["labels"]["team"], "data-platform");
        assert_eq!(meta["annotations"]["example.com/owner"], "data-platform");
        // The chart's own win: the selector still selects the pods, and the checksum still rolls them.
        for (k, v) in workload["spec"]["selector"]["matchLabels"].as_object().expect("selector") {
            assert_eq!(&meta["labels"][k], v, "a pod label must not unselect the pod ({k})");
        }
        let checksum = meta["annotations"]["checksum/config"].as_str().expect("checksum/config");
        assert_ne!(checksum, "stale", "a pod annotation must not replace checksum/config");
        if store.is_empty() {
            assert_eq!(checksum, default_meta["annotations"]["checksum/config"], "the checksum is the chart's");
        }
    }
}

#[test]
fn startup_probe_holds_back_liveness_on_healthz() {
    for (name, docs) in renders() {
        let container = ferry_container(workload(&docs));
        let probe = &container["startupProbe"];
        assert_eq!(probe["httpGet"]["path"], "/healthz", "{name}");
        assert_eq!(probe["httpGet"]["port"], "http", "{name}: on the metrics port");
        assert_eq!(probe["failureThreshold"], 30, "{name}");
        assert_eq!(probe["periodSeconds"], 2, "{name}");
        assert!(probe.get("enabled").is_none(), "{name}: `enabled` is the chart's switch, not a probe field");
    }
    let docs = template(&["--set", "startupProbe.failureThreshold=90,startupProbe.periodSeconds=5"]);
    let probe = &ferry_container(workload(&docs))["startupProbe"];
    assert_eq!((probe["failureThreshold"].as_i64(), probe["periodSeconds"].as_i64()), (Some(90), Some(5)));
    let docs = template(&[MINIMAL_ETCD, &["--set", "startupProbe.enabled=false"]].concat());
    assert!(ferry_container(workload(&docs)).get("startupProbe").is_none(), "startupProbe.enabled=false");
}

#[test]
fn an_image_digest_replaces_the_tag() {
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let docs = template(&["--set", &format!("image.digest={digest},image.tag=9.9.9")]);
    let image = ferry_container(workload(&docs))["image"].as_str().expect("image").to_owned();
    assert_eq!(image, format!("localhost/ferry@{digest}"));
    let docs = template(&["--set", "image.tag=9.9.9"]);
    assert_eq!(ferry_container(workload(&docs))["image"], "localhost/ferry:9.9.9", "without a digest: the tag");
}

#[test]
fn log_level_is_the_containers_rust_log() {
    for (name, docs) in renders() {
        let rust_log = env_var(ferry_container(workload(&docs)), "RUST_LOG").expect("RUST_LOG is set");
        assert_eq!(rust_log["value"], "info", "{name}: the default is ferry's own");
    }
    let (_dir, values) = values_file("logLevel: \"warn,ferry::coordination=debug\"\n");
    for store in [&[][..], MINIMAL_ETCD] {
        let docs = template(&[store, &["-f", values.to_str().unwrap()]].concat());
        let rust_log = env_var(ferry_container(workload(&docs)), "RUST_LOG").expect("RUST_LOG is set");
        assert_eq!(rust_log["value"], "warn,ferry::coordination=debug");
    }
    let docs = template(&["--set", "logLevel="]);
    assert!(env_var(ferry_container(workload(&docs)), "RUST_LOG").is_none(), "an empty logLevel sets no RUST_LOG");
}

#[test]
fn service_monitor_relabelings() {
    let docs = production_render();
    let endpoint = &one(&docs, "ServiceMonitor")["spec"]["endpoints"][0];
    assert!(endpoint.get("relabelings").is_none() && endpoint.get("metricRelabelings").is_none());
    let (_dir, values) = values_file(
        "serviceMonitor:\n  enabled: true\n  relabelings:\n    - sourceLabels: [__meta_kubernetes_pod_node_name]\n      \
         targetLabel: node\n  metricRelabelings:\n    - sourceLabels: [__name__]\n      regex: ferry_end_to_end_.*\n      \
         action: drop\n",
    );
    let docs = template(&["-f", values.to_str().unwrap()]);
    let endpoint = &one(&docs, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "node");
    assert_eq!(endpoint["relabelings"][0]["sourceLabels"][0], "__meta_kubernetes_pod_node_name");
    assert_eq!(endpoint["metricRelabelings"][0]["action"], "drop");
}

#[test]
fn etcd_history_retention_reaches_the_config() {
    for (name, docs) in [("minimal etcd", template(MINIMAL_ETCD)), ("production", production_render())] {
        let (_, config) = rendered_config(&docs);
        assert_eq!(config["checkpoint"]["etcd"]["history_retention"], "1h", "{name}: ferry's default, spelled out");
    }
    // A shared etcd compacted by its operators: ferry's compaction off, and ferry accepts that config.
    let docs = template(&[MINIMAL_ETCD, &["--set", "checkpoint.etcd.historyRetention=0s"]].concat());
    let (_, config) = rendered_config(&docs);
    assert_eq!(config["checkpoint"]["etcd"]["history_retention"], "0s");
    assert_ferry_accepts_config("historyRetention=0s", &docs);
    let docs = template(&[MINIMAL_ETCD, &["--set", "checkpoint.etcd.historyRetention=30m"]].concat());
    assert_eq!(rendered_config(&docs).1["checkpoint"]["etcd"]["history_retention"], "30m");
}

/// The alerting rules of a rules file (`groups` of `rules` with `alert`), keyed by position: (alert name, rule).
fn alerts(rules: &Value) -> Vec<(String, &Value)> {
    let groups = rules["groups"].as_array().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .filter_map(|r| r["alert"].as_str().map(|a| (a.to_owned(), r)))
        .collect()
}

/// GitHub's anchor for a Markdown heading's text: lower case, spaces to `-`, punctuation other than `-` and `_`
/// dropped.
fn github_slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's ATX headings outside code fences, with GitHub's `-1`, `-2` for repeats.
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") || line.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        let text = line.trim_start_matches('#');
        if fenced || text.len() == line.len() || !text.starts_with(' ') {
            continue;
        }
        let slug = github_slug(text);
        let repeats = seen.entry(slug.clone()).or_default();
        anchors.insert(if *repeats == 0 { slug } else { format!("{slug}-{repeats}") });
        *repeats += 1;
    }
    anchors
}

#[test]
fn github_slugs_follow_githubs_rules() {
    assert_eq!(github_slug(" FerryTaskPaused"), "ferrytaskpaused");
    assert_eq!(github_slug(" After a restart"), "after-a-restart");
    assert_eq!(github_slug(" `ferry status`: exit codes (v2)"), "ferry-status-exit-codes-v2");
    let anchors = heading_anchors("# A\n## B b\n```sh\n# not a heading\n```\n#hashtag\n## B b\n");
    assert_eq!(anchors, BTreeSet::from(["a".to_owned(), "b-b".to_owned(), "b-b-1".to_owned()]));
}

#[test]
fn every_alert_links_its_runbook_section() {
    let runbook = std::fs::read_to_string(root().join("docs/runbook.md")).expect("docs/runbook.md");
    let anchors = heading_anchors(&runbook);
    let home = chart_metadata()["home"].as_str().expect("Chart.yaml home").to_owned();
    let prefix = format!("{home}/blob/main/docs/runbook.md#");
    let source: Value =
        serde_norway::from_str(&std::fs::read_to_string(root().join("dashboards/alerts.yaml")).unwrap()).unwrap();
    let docs = production_render();
    let rendered = &one(&docs, "PrometheusRule")["spec"];
    for (name, rules) in [("dashboards/alerts.yaml", &source), ("the rendered PrometheusRule", rendered)] {
        let alerts = alerts(rules);
        assert!(alerts.len() >= 15, "{name}: {} alerts", alerts.len());
        for (alert, rule) in alerts {
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {alert} has no runbook_url annotation"));
            let anchor = url.strip_prefix(&prefix).unwrap_or_else(|| panic!("{name}: {alert}: {url} is not {prefix}…"));
            assert!(anchors.contains(anchor), "{name}: {alert}: no heading of docs/runbook.md has anchor #{anchor}");
            assert_eq!(anchor, github_slug(&alert), "{name}: {alert} links the section named after it");
        }
    }
}

#[test]
fn alert_thresholds_and_the_job_selector_are_values() {
    let source: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart().join("files/alerts.yaml")).unwrap()).unwrap();
    let (_dir, values) = values_file(
        "prometheusRule:\n  enabled: true\n  jobSelector: 'job=\"replication-mirror\"'\n  thresholds:\n    \
         replicationLagSeconds: 900\n    checkpointAgeSeconds: 600\n    etcdErrorRatio: 0.2\n",
    );
    let docs = template(&["-f", values.to_str().unwrap()]);
    let rendered = &one(&docs, "PrometheusRule")["spec"];
    let changed = |alert: &str, expr: &[&str], description: &str| {
        let rules: Vec<&Value> = alerts(rendered).into_iter().filter(|(a, _)| a == alert).map(|(_, r)| r).collect();
        assert!(!rules.is_empty(), "no {alert}");
        for rule in rules {
            let e = rule["expr"].as_str().unwrap();
            assert!(expr.iter().all(|part| e.contains(part)), "{alert}: expr {e:?} should contain {expr:?}");
            let d = rule["annotations"]["description"].as_str().unwrap();
            assert!(d.contains(description), "{alert}: description {d:?} should contain {description:?}");
        }
    };
    changed("FerryReplicationLagHigh", &["(ferry_replication_lag_seconds) > 900"], "(threshold 900s)");
    changed("FerryCheckpointStale", &["(ferry_checkpoint_age_seconds) > 600"], "(threshold 600s)");
    changed("FerryEtcdErrors", &["> 0.2"], "(threshold {{ 0.2 | humanizePercentage }})");
    // FerryDown and FerryMemberDown (reason scrape_failed) select the scrape jobs on `up`.
    let selecting: Vec<String> = alerts(rendered)
        .into_iter()
        .filter(|(_, rule)| rule["expr"].as_str().unwrap().contains("up{job=\"replication-mirror\"}"))
        .map(|(alert, _)| alert)
        .collect();
    assert_eq!(selecting, ["FerryDown", "FerryMemberDown"]);
    let text = serde_json::to_string(rendered).unwrap();
    for default in [".*ferry.*", "> 300", "> 120", "> 0.05", "threshold 300s", "threshold 120s", "{{ 0.05"] {
        assert!(!text.contains(default), "the default {default:?} is left in the rendered rules");
    }

    // Nothing else changes: each rule equals its source with the two fields a value may touch set aside.
    let without = |rule: &Value| {
        let mut rule = rule.clone();
        rule.as_object_mut().unwrap().remove("expr");
        rule["annotations"].as_object_mut().unwrap().remove("description");
        rule
    };
    let (source, rendered) = (alerts(&source), alerts(rendered));
    assert_eq!(source.len(), rendered.len());
    for ((alert, a), (_, b)) in source.iter().zip(&rendered) {
        assert_eq!(without(a), without(b), "{alert}");
        let untouched =
            !["FerryReplicationLagHigh", "FerryCheckpointStale", "FerryEtcdErrors", "FerryDown", "FerryMemberDown"]
                .contains(&alert.as_str());
        if untouched {
            assert_eq!(a, b, "{alert} has no threshold value");
        }
    }

    // The substituted rules are still valid rules (JSON is YAML).
    let rules = serde_json::to_string(&one(&docs, "PrometheusRule")["spec"]).unwrap();
    if let Err(report) = promtool::check_rules(&rules) {
        panic!("promtool rejects the rendered rules:\n{report}\n{rules}");
    }
}

/// A copy of the chart in a temporary directory, for renders of a changed chart file.
fn chart_copy() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&chart(), &dir.path().join("ferry"));
    dir
}

#[test]
fn rules_that_no_longer_hold_a_values_literal_fail_the_render() {
    let rules = std::fs::read_to_string(chart().join("files/alerts.yaml")).unwrap();
    for (from, to, message) in [
        ("(ferry_replication_lag_seconds) > 300", "(ferry_replication_lag_seconds) > 240", "no longer holds"),
        ("(threshold 120s)", "(threshold 2m)", "no longer holds"),
        ("alert: FerryEtcdErrors", "alert: FerryEtcdFailures", "a threshold value applies to is missing"),
        ("job=~\".*ferry.*\"", "job=~\"ferry.*\"", "which prometheusRule.jobSelector replaces"),
    ] {
        assert!(rules.contains(from), "files/alerts.yaml has no {from:?}: update this test");
        let copy = chart_copy();
        let chart = copy.path().join("ferry");
        std::fs::write(chart.join("files/alerts.yaml"), rules.replace(from, to)).unwrap();
        let args = ["template", "ferry", chart.to_str().unwrap(), "--set", "prometheusRule.enabled=true"];
        let out = run_helm(&args);
        assert!(!out.status.success(), "{from:?} -> {to:?} should fail the render\n{}", describe(&args, &out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(message), "{}", describe(&args, &out));
    }
}

#[test]
fn the_grafana_dashboard_configmap_carries_the_dashboard_for_the_sidecar() {
    let dashboard = std::fs::read(root().join("dashboards/ferry.json")).expect("dashboards/ferry.json");
    let copy =
        std::fs::read(chart().join("files/ferry-dashboard.json")).expect("helm/ferry/files/ferry-dashboard.json");
    assert!(
        dashboard == copy,
        "helm/ferry/files/ferry-dashboard.json differs from dashboards/ferry.json: run `cp dashboards/ferry.json \
         helm/ferry/files/ferry-dashboard.json` (Helm cannot read files outside the chart)"
    );
    let configmaps = |docs: &[Value]| -> Vec<Value> {
        of_kind(docs, "ConfigMap")
            .into_iter()
            .filter(|cm| cm["metadata"]["name"].as_str().is_some_and(|name| name.ends_with("-dashboard")))
            .cloned()
            .collect()
    };
    assert!(configmaps(&default_render()).is_empty(), "no dashboard ConfigMap by default");
    let docs = template(&["--set", "grafanaDashboard.enabled=true"]);
    let found = configmaps(&docs);
    assert_eq!(found.len(), 1, "one dashboard ConfigMap");
    assert_eq!(found[0]["metadata"]["labels"]["grafana_dashboard"], "1", "the sidecar's label");
    let embedded: serde_json::Value =
        serde_json::from_str(found[0]["data"]["ferry.json"].as_str().expect("data ferry.json")).expect("JSON");
    let original: serde_json::Value = serde_json::from_slice(&dashboard).unwrap();
    assert_eq!(embedded, original, "the ConfigMap holds the dashboard unchanged");
}

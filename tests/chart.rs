//! The Helm chart (`helm/ferry`): `helm lint` and `helm template` with the default values (file store: one member in
//! a StatefulSet), with the production-like `helm/ferry/ci/production-values.yaml` (etcd store: a Deployment of three
//! members) and with a minimal etcd install, and assertions on the rendered manifests; the rendered ferry config
//! must pass `ferry check-config`.
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

        // ferry itself accepts the rendered config (the chart's checkpoint section included), given what the pod
        // would have: the etcd TLS files check-config reads (here under the temporary directory; their content does
        // not matter) and the variables below.
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("etcd-tls");
        std::fs::create_dir(&tls_dir).unwrap();
        for (_, file) in config["checkpoint"]["etcd"]["tls"].as_object().into_iter().flatten() {
            let name = file.as_str().unwrap().strip_prefix("/etc/ferry/etcd-tls/").expect("TLS files in the mount");
            std::fs::write(tls_dir.join(name), "-----BEGIN CERTIFICATE-----\n").unwrap();
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
            &["ConfigMap", "Deployment", "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceMonitor"][..],
        ),
        ("default", default_render(), &["ConfigMap", "PodDisruptionBudget", "Service", "StatefulSet"][..]),
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

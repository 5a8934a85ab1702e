//! Tests of the config watcher: symlink swaps as kubelet does them, invalid versions, environment overrides.

use std::future::Future;
use std::os::unix::fs::symlink;

use figment::providers::Format;
use figment::{Figment, Jail};
use tokio::time::{sleep, timeout};

use super::*;
use crate::config::{Yaml, ENV_PREFIX};

const POLL: Duration = Duration::from_millis(50);
/// Long enough for several polls; a test waiting for something that never comes fails after it.
const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen: a handful of polls.
const QUIET: Duration = Duration::from_millis(400);

const BASE: &str = r#"
clusters:
  us-east: { bootstrap_servers: "127.0.0.1:19092", region: us-east }
  eu-west: { bootstrap_servers: "127.0.0.1:29092", region: eu-west }
flows:
  - name: east-to-west
    source: us-east
    target: eu-west
    topics: { include: ["orders\\..*"] }
throttles:
  - { from: us-east, to: eu-west, rate: 100MiB/s }
"#;

/// BASE plus a flow and a tighter throttle.
const GROWN: &str = r#"
clusters:
  us-east: { bootstrap_servers: "127.0.0.1:19092", region: us-east }
  eu-west: { bootstrap_servers: "127.0.0.1:29092", region: eu-west }
flows:
  - name: east-to-west
    source: us-east
    target: eu-west
    topics: { include: ["orders\\..*"] }
  - name: payments
    source: us-east
    target: eu-west
    topics: { include: ["payments"] }
throttles:
  - { from: us-east, to: eu-west, rate: 50MiB/s }
"#;

/// Parses YAML without the environment layer.
fn parse(yaml: &str) -> Config {
    match Config::from_figment(Figment::from(Yaml::string(yaml))) {
        Ok(config) => config,
        Err(error) => panic!("test config is invalid: {error}"),
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A directory laid out like a mounted ConfigMap: `..data -> ..<stamp>`, `config.yaml -> ..data/config.yaml`.
struct ConfigMap {
    dir: tempfile::TempDir,
    generation: u32,
}

impl ConfigMap {
    fn new(yaml: &str) -> Self {
        let mut map = ConfigMap { dir: tempfile::tempdir().unwrap(), generation: 0 };
        map.publish(yaml);
        symlink("..data/config.yaml", map.path()).unwrap();
        map
    }

    /// The path ferry is given.
    fn path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// What kubelet's atomic writer does: a new timestamped dir, a temporary `..data_tmp` symlink to it renamed
    /// over `..data`, then the old dir removed.
    fn publish(&mut self, yaml: &str) {
        let old = self.stamp();
        self.generation += 1;
        let stamp = self.stamp();
        std::fs::create_dir(self.dir.path().join(&stamp)).unwrap();
        std::fs::write(self.dir.path().join(&stamp).join("config.yaml"), yaml).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        if self.generation > 1 {
            std::fs::remove_dir_all(self.dir.path().join(old)).unwrap();
        }
    }

    fn stamp(&self) -> String {
        format!("..2026_11_27_15_00_{:02}.{:03}", self.generation, self.generation)
    }
}

/// A watcher of `map` started on `yaml` (loaded as `ferry run` would), polling every 50 ms.
fn watcher(map: &ConfigMap) -> (ConfigWatcher, Metrics) {
    let current = match Config::load(&map.path()) {
        Ok(config) => config,
        Err(error) => panic!("start config is invalid: {error}"),
    };
    let metrics = Metrics::new(false);
    (ConfigWatcher::new(map.path(), Arc::new(current), metrics.clone()).with_interval(POLL), metrics)
}

/// Starts `watcher` in the background; the receiver gets its reloads, the token stops it.
fn spawn(watcher: ConfigWatcher) -> (mpsc::Receiver<Reload>, CancellationToken) {
    let (tx, rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    tokio::spawn(watcher.run(tx, shutdown.clone()));
    (rx, shutdown)
}

async fn next_reload(rx: &mut mpsc::Receiver<Reload>) -> Reload {
    match timeout(WAIT, rx.recv()).await {
        Ok(Some(reload)) => reload,
        Ok(None) => panic!("watcher stopped"),
        Err(_) => panic!("no reload within {WAIT:?}"),
    }
}

async fn assert_no_reload(rx: &mut mpsc::Receiver<Reload>) {
    if let Ok(Some(reload)) = timeout(QUIET, rx.recv()).await {
        panic!("unexpected reload: {:?}", reload.change);
    }
}

fn count(metrics: &Metrics, result: &str) -> u64 {
    metrics.config_reloads.with_label_values(&[result]).get()
}

/// Waits (bounded) until the `result` counter reaches `n`.
async fn wait_for_count(metrics: &Metrics, result: &str, n: u64) {
    let reached = timeout(WAIT, async {
        while count(metrics, result) < n {
            sleep(POLL / 2).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "config_reloads{{result={result:?}}} stayed at {}", count(metrics, result));
}

/// Removes every `FERRY_` variable for the life of `jail` (which restores them), so a developer's or CI's own
/// settings cannot change what the tests load.
fn scrub_ferry_env(jail: &mut Jail) {
    let ferry_vars: Vec<String> = std::env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| key.starts_with(ENV_PREFIX))
        .collect();
    for key in ferry_vars {
        // set_env records the original value for Jail to restore on exit; then it is removed for real.
        jail.set_env(&key, "");
        std::env::remove_var(&key);
    }
}

/// Runs `body` under figment's `Jail` lock without `FERRY_` variables (the config tests set such variables under
/// the same lock, and the watcher layers the environment exactly as `ferry run` does), on a runtime whose clock is
/// paused: it jumps from one timer to the next whenever nothing else can run, so polls, waits for a reload and
/// waits for the absence of one take no real time and do not depend on the machine's load.
fn isolated_env(body: impl Future<Output = ()>) {
    Jail::expect_with(|jail| {
        scrub_ferry_env(jail);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(body);
        Ok(())
    });
}

#[test]
fn symlink_swap_adding_a_flow_and_changing_a_throttle_sends_one_reload() {
    isolated_env(async {
        let mut map = ConfigMap::new(BASE);
        let (watcher, metrics) = watcher(&map);
        let (mut rx, shutdown) = spawn(watcher);
        assert_no_reload(&mut rx).await;

        map.publish(GROWN);
        let reload = next_reload(&mut rx).await;
        assert_eq!(
            reload.change,
            ConfigChange { added_flows: names(&["payments"]), throttles_changed: true, ..ConfigChange::default() }
        );
        assert_eq!(*reload.config, parse(GROWN));
        assert_no_reload(&mut rx).await;
        // Counted after the send completes, so by now at the latest.
        assert_eq!((count(&metrics, "applied"), count(&metrics, "rejected")), (1, 0));
        shutdown.cancel();
    });
}

#[test]
fn invalid_yaml_is_rejected_once_then_a_fix_applies() {
    isolated_env(async {
        let mut map = ConfigMap::new(BASE);
        let (watcher, metrics) = watcher(&map);
        let broken = BASE.replace("flows:", "flows: [");
        let error = match watcher.check(broken.as_bytes()) {
            Err(error) => error.to_string(),
            Ok(reload) => panic!("broken YAML accepted: {reload:?}"),
        };
        assert!(error.starts_with(&format!("invalid YAML in {} at line ", map.path().display())), "{error}");

        let (mut rx, shutdown) = spawn(watcher);
        map.publish(&broken);
        wait_for_count(&metrics, "rejected", 1).await;
        assert_no_reload(&mut rx).await;
        assert_eq!(count(&metrics, "rejected"), 1, "the same bad content is reported once");

        map.publish(GROWN);
        let reload = next_reload(&mut rx).await;
        assert_eq!(reload.change.added_flows, names(&["payments"]));
        // Counted just after the send completes.
        wait_for_count(&metrics, "applied", 1).await;
        assert_eq!(count(&metrics, "rejected"), 1);
        shutdown.cancel();
    });
}

#[test]
fn unknown_cluster_is_rejected_with_its_key_path() {
    isolated_env(async {
        let mut map = ConfigMap::new(BASE);
        let (watcher, metrics) = watcher(&map);
        let bad = GROWN.replace("  - name: payments\n    source: us-east", "  - name: payments\n    source: ap-south");
        let error = match watcher.check(bad.as_bytes()) {
            Err(error) => error,
            Ok(reload) => panic!("unknown cluster accepted: {reload:?}"),
        };
        let lines: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("flows[1].source: unknown cluster \"ap-south\""), "{lines:?}");

        let (mut rx, shutdown) = spawn(watcher);
        map.publish(&bad);
        wait_for_count(&metrics, "rejected", 1).await;
        assert_no_reload(&mut rx).await;
        shutdown.cancel();
    });
}

#[test]
fn exactly_once_settings_are_checked_like_at_start() {
    isolated_env(async {
        let map = ConfigMap::new(BASE);
        let (watcher, _) = watcher(&map);
        let eos =
            BASE.replace("    topics:", "    delivery: exactly-once\n    exactly_once: { buckets: 5000 }\n    topics:");
        match watcher.check(eos.as_bytes()) {
            Err(error) => assert!(error.to_string().starts_with("flows[0].exactly_once.buckets: must be"), "{error}"),
            Ok(reload) => panic!("5000 buckets accepted: {reload:?}"),
        }
        let eos = BASE.replace("    topics:", "    delivery: exactly-once\n    topics:");
        let reload = watcher.check(eos.as_bytes()).expect("exactly-once is accepted").expect("a change");
        assert_eq!(reload.change.changed_flows.len(), 1, "applied live, by restarting the flow's tasks: {reload:?}");
    });
}

#[test]
fn secrets_and_client_properties_are_checked_like_at_start() {
    isolated_env(async {
        let map = ConfigMap::new(BASE);
        let (watcher, _) = watcher(&map);
        let bad = BASE.replace(
            "region: us-east }",
            "region: us-east, client: { linger.mss: 5, sasl.password: { env: TEST_FERRY_RELOAD_UNSET } } }",
        );
        let error = match watcher.check(bad.as_bytes()) {
            Err(error) => error,
            Ok(reload) => panic!("unknown property and unset secret accepted: {reload:?}"),
        };
        let lines: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "clusters.us-east.client.linger.mss: rejected by librdkafka: No such configuration property: \
                     \"linger.mss\"",
                "clusters.us-east.client.sasl.password: environment variable TEST_FERRY_RELOAD_UNSET is not set",
            ]
        );
    });
}

#[test]
fn a_reload_carries_the_warnings_of_its_config() {
    let map = ConfigMap::new(BASE);
    let watcher = ConfigWatcher::new(map.path(), Arc::new(parse(BASE)), Metrics::new(false));
    Jail::expect_with(|jail| {
        scrub_ferry_env(jail);
        let copy = GROWN.replace(
            "payments\n    source: us-east\n    target: eu-west",
            "payments\n    source: us-east\n    target: us-east",
        );
        let reload = match watcher.check(copy.as_bytes()) {
            Ok(Some(reload)) => reload,
            other => panic!("expected a reload, got {other:?}"),
        };
        let warnings: Vec<String> = reload.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("flows[1]: source and target are both \"us-east\""), "{warnings:?}");
        Ok(())
    });
}

#[test]
fn identical_content_sends_nothing() {
    isolated_env(async {
        let mut map = ConfigMap::new(BASE);
        let (watcher, metrics) = watcher(&map);
        let (mut rx, shutdown) = spawn(watcher);

        // Same bytes through a new swap, then the target file touched in place.
        map.publish(BASE);
        let target = map.dir.path().join("..data").join("config.yaml");
        std::fs::write(&target, BASE).unwrap();
        assert_no_reload(&mut rx).await;
        // Different bytes, same config.
        map.publish(&format!("# only a comment\n{BASE}"));
        assert_no_reload(&mut rx).await;
        assert_eq!((count(&metrics, "applied"), count(&metrics, "rejected")), (0, 0));
        shutdown.cancel();
    });
}

#[test]
fn a_vanished_file_is_not_a_reload() {
    isolated_env(async {
        let mut map = ConfigMap::new(BASE);
        let (watcher, metrics) = watcher(&map);
        let (mut rx, shutdown) = spawn(watcher);

        std::fs::remove_file(map.dir.path().join("..data")).unwrap();
        assert_no_reload(&mut rx).await;
        map.publish(BASE);
        assert_no_reload(&mut rx).await;
        assert_eq!((count(&metrics, "applied"), count(&metrics, "rejected")), (0, 0));

        map.publish(GROWN);
        assert_eq!(next_reload(&mut rx).await.change.added_flows, names(&["payments"]));
        shutdown.cancel();
    });
}

#[test]
fn a_change_made_before_the_watcher_started_is_picked_up() {
    isolated_env(async {
        let mut map = ConfigMap::new(BASE);
        let current = Arc::new(parse(BASE));
        map.publish(GROWN);
        let watcher = ConfigWatcher::new(map.path(), current, Metrics::new(false)).with_interval(POLL);
        let (mut rx, shutdown) = spawn(watcher);
        assert_eq!(next_reload(&mut rx).await.change.added_flows, names(&["payments"]));
        shutdown.cancel();
    });
}

#[test]
fn environment_overrides_apply_on_reload() {
    let map = ConfigMap::new(BASE);
    let watcher = ConfigWatcher::new(map.path(), Arc::new(parse(BASE)), Metrics::new(false));
    Jail::expect_with(|jail| {
        scrub_ferry_env(jail);
        jail.set_env("FERRY_HTTP__LISTEN", "127.0.0.1:9999");
        let reload = match watcher.check(BASE.as_bytes()) {
            Ok(Some(reload)) => reload,
            other => panic!("expected a reload, got {other:?}"),
        };
        assert_eq!(reload.config.http.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(reload.change.needs_restart, names(&["http.listen"]));
        Ok(())
    });
}

#[test]
fn between_equal_configs_is_empty() {
    let change = ConfigChange::between(&parse(BASE), &parse(BASE));
    assert!(change.is_empty(), "{change:?}");
}

#[test]
fn between_reports_added_removed_and_changed_flows() {
    let old = parse(GROWN);
    let new = parse(
        &GROWN
            .replace("name: payments", "name: refunds")
            .replace("include: [\"orders\\\\..*\"]", "include: [\"orders\\\\..*\"], exclude: [\"orders.tmp\"]"),
    );
    let change = ConfigChange::between(&old, &new);
    assert_eq!(
        change,
        ConfigChange {
            added_flows: names(&["refunds"]),
            removed_flows: names(&["payments"]),
            changed_flows: names(&["east-to-west"]),
            ..ConfigChange::default()
        }
    );
    assert!(!change.is_empty());
}

#[test]
fn between_reports_throttle_changes() {
    let old = parse(BASE);
    let tighter = parse(&BASE.replace("100MiB/s", "10MiB/s"));
    assert_eq!(
        ConfigChange::between(&old, &tighter),
        ConfigChange { throttles_changed: true, ..ConfigChange::default() }
    );
    let unthrottled = parse(&BASE.replace("throttles:\n  - { from: us-east, to: eu-west, rate: 100MiB/s }\n", ""));
    assert!(ConfigChange::between(&old, &unthrottled).throttles_changed);
    // Moving a cluster to another region changes the budget its flows draw from, without a restart.
    let moved = parse(&BASE.replace("region: eu-west", "region: eu-central"));
    assert_eq!(
        ConfigChange::between(&old, &moved),
        ConfigChange { throttles_changed: true, ..ConfigChange::default() }
    );
}

#[test]
fn between_requires_a_restart_for_a_changed_cluster_connection() {
    let old = parse(BASE);
    let moved = parse(&BASE.replace("127.0.0.1:29092", "10.0.0.7:29092"));
    assert_eq!(
        ConfigChange::between(&old, &moved),
        ConfigChange { needs_restart: names(&["clusters.eu-west"]), ..ConfigChange::default() }
    );
    let tls = parse(&BASE.replace("region: us-east }", "region: us-east, client: { security.protocol: SSL } }"));
    assert_eq!(ConfigChange::between(&old, &tls).needs_restart, names(&["clusters.us-east"]));
}

#[test]
fn between_allows_new_clusters_for_new_flows() {
    let old = parse(BASE);
    let new = parse(
            &BASE.replace("flows:", "  ap-south: { bootstrap_servers: \"127.0.0.1:39092\" }\nflows:").replace(
                "throttles:",
                "  - name: east-to-south\n    source: us-east\n    target: ap-south\n    topics: { include: [\"orders\"] }\nthrottles:",
            ),
        );
    assert_eq!(
        ConfigChange::between(&old, &new),
        ConfigChange { added_flows: names(&["east-to-south"]), ..ConfigChange::default() }
    );
}

#[test]
fn between_lists_settings_that_need_a_restart() {
    let old = parse(BASE);
    let new = parse(&format!(
        "{BASE}checkpoint: {{ path: /var/lib/ferry, interval: 2s }}\nhttp: {{ listen: \"127.0.0.1:9465\" }}\n\
             discovery: {{ interval: 5s }}\nmetrics: {{ per_partition: true }}\n"
    ));
    assert_eq!(
        ConfigChange::between(&old, &new),
        ConfigChange {
            needs_restart: names(&["checkpoint", "http.listen", "discovery.interval", "metrics.per_partition"]),
            ..ConfigChange::default()
        }
    );
}

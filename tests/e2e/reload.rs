//! Hot reload of a running ferry through a Kubernetes-style ConfigMap update (a symlink swap): a flow added, an
//! invalid config ignored while replication goes on, a flow removed.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// A ConfigMap volume: `..data` points at a timestamped directory, `ferry.yaml` points into `..data`.
struct ConfigMapDir {
    root: tempfile::TempDir,
    version: u32,
}

impl ConfigMapDir {
    fn new(content: &str) -> Self {
        let mut dir = ConfigMapDir { root: tempfile::tempdir().unwrap(), version: 0 };
        dir.publish(content);
        std::os::unix::fs::symlink("..data/ferry.yaml", dir.root.path().join("ferry.yaml")).unwrap();
        dir
    }

    fn path(&self) -> std::path::PathBuf {
        self.root.path().join("ferry.yaml")
    }

    /// Writes a new version and swaps `..data` to it atomically, as the kubelet does.
    fn publish(&mut self, content: &str) {
        self.version += 1;
        let versioned = format!("..2026_11_27_00_00_{:02}.{}", self.version, std::process::id());
        std::fs::create_dir(self.root.path().join(&versioned)).unwrap();
        std::fs::write(self.root.path().join(&versioned).join("ferry.yaml"), content).unwrap();
        let temporary = self.root.path().join("..data_tmp");
        std::os::unix::fs::symlink(&versioned, &temporary).unwrap();
        std::fs::rename(&temporary, self.root.path().join("..data")).unwrap();
    }
}

fn flow(name: &str, topic: &str) -> String {
    format!("  - name: {name}\n    source: src\n    target: dst\n    topics: {{ include: ['{topic}'] }}\n")
}

fn replicated(env: &TestEnv, topic: &str) -> i64 {
    end_offset(&env.target, &format!("src.{topic}"), 0)
}

async fn feed(env: &TestEnv, topic: &str, from: u64, count: u64) {
    let records: Vec<Record> = (from..from + count).map(|seq| Record::numbered(topic, 0, seq)).collect();
    produce(&producer(&env.source), topic, 0, &records).await;
}

fn config(env: &TestEnv, state: &Path, flows: &str) -> String {
    // The common config's first flow is replaced wholesale: `flows` lists every flow of this version.
    let base = crate::common::config(env, state, "unused", "unused", "");
    let head = base.split("flows:").next().unwrap();
    format!("{head}flows:\n{flows}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_adds_and_removes_flows_and_an_invalid_one_is_ignored() {
    let env = test_env!();
    let state = tempfile::tempdir().unwrap();
    let (topic_a, topic_b) = (unique("reload-a"), unique("reload-b"));
    let (flow_a, flow_b) = (unique("ra"), unique("rb"));
    create_topic(&env.source, &topic_a, 1, &[]).await;
    create_topic(&env.source, &topic_b, 1, &[]).await;
    feed(&env, &topic_a, 0, 100).await;
    feed(&env, &topic_b, 0, 100).await;

    let mut volume = ConfigMapDir::new(&config(&env, state.path(), &flow(&flow_a, &topic_a)));
    let ferry = Ferry::start_with(volume.path(), free_port(), &[]);
    wait_for("flow A replicating", Duration::from_secs(60), || (replicated(&env, &topic_a) == 100).then_some(())).await;
    assert!(replicated(&env, &topic_b) <= 0, "flow B is not configured yet");

    // Add flow B.
    volume.publish(&config(&env, state.path(), &format!("{}{}", flow(&flow_a, &topic_a), flow(&flow_b, &topic_b))));
    wait_for("the added flow B replicating", Duration::from_secs(30), || {
        (replicated(&env, &topic_b) == 100).then_some(())
    })
    .await;

    // An invalid version is logged with its problem and ignored; both flows keep running.
    volume.publish("flows: [\n  this is not yaml");
    wait_for("the invalid config rejected", Duration::from_secs(15), || {
        (ferry.metric("ferry_config_reloads_total", &[("result", "rejected")]) == Some(1.0)).then_some(())
    })
    .await;
    assert!(ferry.logs().contains("ferry.yaml"), "the rejection names the file:\n{}", ferry.logs());
    feed(&env, &topic_a, 100, 50).await;
    feed(&env, &topic_b, 100, 50).await;
    wait_for("both flows still replicating", Duration::from_secs(30), || {
        (replicated(&env, &topic_a) == 150 && replicated(&env, &topic_b) == 150).then_some(())
    })
    .await;

    // Remove flow A: its topic is no longer replicated, B still is.
    volume.publish(&config(&env, state.path(), &flow(&flow_b, &topic_b)));
    wait_for("flow A's tasks stopped", Duration::from_secs(30), || {
        let body = ferry.get("/status")?.1;
        (!body.contains(&flow_a)).then_some(())
    })
    .await;
    feed(&env, &topic_a, 150, 50).await;
    feed(&env, &topic_b, 150, 50).await;
    wait_for("flow B replicating after the removal", Duration::from_secs(30), || {
        (replicated(&env, &topic_b) == 200).then_some(())
    })
    .await;
    // Flow B replicated records produced after A's removal; A's, produced at the same time, must not have moved.
    assert_eq!(replicated(&env, &topic_a), 150, "the removed flow A must not replicate anymore");
    assert_eq!(ferry.metric("ferry_config_reloads_total", &[("result", "applied")]), Some(2.0));
    assert_eq!(ferry.get("/healthz").map(|(code, _)| code), Some(200), "no restart happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_delivery_modes_live_loses_nothing_and_writes_nothing_twice() {
    let env = test_env!();
    let topic = unique("switch");
    let flow_name = unique("switch");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[]).await;
    let at_least_once = config(&env, state.path(), &flow(&flow_name, &topic));
    let exactly_once =
        config(&env, state.path(), &format!("{}{}", flow(&flow_name, &topic), crate::common::EXACTLY_ONCE));
    let mut volume = ConfigMapDir::new(&at_least_once);
    let ferry = Ferry::start_with(volume.path(), free_port(), &[]);
    let records: Vec<Record> = (0..6_000).map(|seq| Record::numbered(&topic, 0, seq)).collect();
    let feeder = crate::common::feed_slowly(
        producer(&env.source),
        topic.clone(),
        vec![records.clone()],
        30,
        Duration::from_millis(200),
    );
    wait_for("replicating at least once", Duration::from_secs(60), || (replicated(&env, &topic) > 500).then_some(()))
        .await;
    volume.publish(&exactly_once);
    wait_for("transactions committed after the switch", Duration::from_secs(60), || {
        (ferry.metric("ferry_transactions_total", &[("flow", &flow_name), ("result", "committed")])? > 0.0)
            .then_some(())
    })
    .await;
    volume.publish(&at_least_once);
    wait_for("the switch back applied", Duration::from_secs(60), || {
        (ferry.logs().matches("delivery settings change").count() == 2).then_some(())
    })
    .await;
    feeder.await.unwrap();
    crate::common::wait_exactly_once(&env.target, &format!("src.{topic}"), &[records], Duration::from_secs(60)).await;
    assert_eq!(ferry.metric("ferry_config_reloads_total", &[("result", "applied")]), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_naming_change_fills_the_new_target_topic_from_the_source_beginning() {
    let env = test_env!();
    let topic = unique("renamed");
    let flow_name = unique("renamed");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[]).await;
    let prefixed = config(&env, state.path(), &flow(&flow_name, &topic));
    let identity = config(&env, state.path(), &format!("{}    naming: identity\n", flow(&flow_name, &topic)));
    let mut volume = ConfigMapDir::new(&prefixed);
    let ferry = Ferry::start_with(volume.path(), free_port(), &[]);
    feed(&env, &topic, 0, 300).await;
    wait_for("replicated under the prefix", Duration::from_secs(60), || {
        (replicated(&env, &topic) == 300).then_some(())
    })
    .await;

    volume.publish(&identity);
    feed(&env, &topic, 300, 100).await;
    wait_for("the identity-named topic filled", Duration::from_secs(60), || {
        (end_offset(&env.target, &topic, 0) >= 400).then_some(())
    })
    .await;
    // The new target topic gets every record, from the source's first: its position did not carry over.
    let copied: Vec<String> = read_partition(&env.target, &topic, 0).into_iter().map(|(_, r)| r.id()).collect();
    let source: Vec<String> = read_partition(&env.source, &topic, 0).into_iter().map(|(_, r)| r.id()).collect();
    assert_eq!(copied.len(), 400, "{}", ferry.logs());
    assert_eq!(copied, source);
    // The old target topic may have taken records while the change went through; never out of order or twice.
    let old: Vec<String> =
        read_partition(&env.target, &format!("src.{topic}"), 0).into_iter().map(|(_, r)| r.id()).collect();
    assert_eq!(old, source[..old.len()], "the old target topic holds a prefix of the source");
    assert!(ferry.logs().contains("writes to another target now"), "{}", ferry.logs());
}

//! Many members coordinated through real etcd: balanced assignment, kill -9 of a member and of the leader, a member
//! joining, a member frozen past its lease, and etcd stopped for 30 s. (The fleet-wide throttle has its own test
//! binary, `tests/throttle.rs`, so its rate measurement does not share the machine with these.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_moves_tasks_of_a_killed_member_and_a_killed_leader_without_loss() {
    let env = test_env!();
    let etcd = etcd_endpoint!();
    let started_at = current_revision(&etcd).await;
    const PARTITIONS: i32 = 12;
    let (topic, flow, prefix) = (unique("fleet"), unique("fleet"), format!("/{}", unique("ferry-fleet")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    feed(&producer, &topic, PARTITIONS, 0, 1_000, 1, Duration::ZERO).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, fleet_config(&env, &etcd, &prefix, &flow, &topic, "")).unwrap();
    let mut members: Vec<Option<Ferry>> =
        (0..3).map(|_| Some(Ferry::start_with(config.clone(), free_port(), &[]))).collect();
    let alive =
        |members: &Vec<Option<Ferry>>| -> Vec<usize> { (0..members.len()).filter(|i| members[*i].is_some()).collect() };
    {
        let all: Vec<&Ferry> = members.iter().flatten().collect();
        let counts = wait_balanced("12 tasks balanced over 3 members", &all, 12, Duration::from_secs(60)).await;
        assert_eq!(counts, vec![4, 4, 4]);
    }
    let feeder = feed(&producer, &topic, PARTITIONS, 1_000, 3_000, 30, Duration::from_millis(300));

    // kill -9 of a member that is not the leader.
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        alive(&members).into_iter().find(|i| is_leader(members[*i].as_ref().unwrap()))
    })
    .await;
    let victim = alive(&members).into_iter().find(|i| *i != leader).unwrap();
    members[victim].take().unwrap().kill9();
    let killed_at = Instant::now();
    {
        let survivors: Vec<&Ferry> = members.iter().flatten().collect();
        wait_balanced("the killed member's tasks owned by the survivors", &survivors, 12, Duration::from_secs(60))
            .await;
    }
    let moved_after = killed_at.elapsed();
    assert!(
        moved_after <= Duration::from_secs(TTL_SECONDS + 5),
        "the killed member's tasks moved after {moved_after:?}, more than TTL + 5 s"
    );

    // kill -9 of the leader.
    members[leader].take().unwrap().kill9();
    let killed_at = Instant::now();
    let survivor = alive(&members)[0];
    wait_for("a new leader", Duration::from_secs(60), || is_leader(members[survivor].as_ref().unwrap()).then_some(()))
        .await;
    let elected_after = killed_at.elapsed();
    wait_for("every task owned by the last member", Duration::from_secs(60), || {
        (owned(members[survivor].as_ref().unwrap()) == Some(12)).then_some(())
    })
    .await;
    assert!(
        elected_after <= Duration::from_secs(TTL_SECONDS + 5),
        "a new leader took {elected_after:?}, more than TTL + 5 s"
    );

    feeder.await.unwrap();
    wait_replicated(&env, &topic, PARTITIONS, Duration::from_secs(120)).await;
    let duplicates = assert_nothing_lost(&env, &topic, PARTITIONS);

    let changes = history(&etcd, &prefix, started_at).await;
    let takes = assert_one_owner_at_a_time(&changes);
    // 12 at start, the killed member's 4, then the killed leader's 6.
    assert!(takes >= 12 + 4 + 6, "ownership history shows only {takes} takes");
    // No assignment written after the new leadership began carries another leader's name.
    let mut client = etcd_client::Client::connect([etcd.as_str()], None).await.unwrap();
    let leader_kv = client.get(format!("{prefix}/leader"), None).await.unwrap().kvs()[0].clone();
    let (new_leader, elected_at) =
        (String::from_utf8_lossy(leader_kv.value()).into_owned(), leader_kv.create_revision());
    for change in changes.iter().filter(|c| c.put && c.key.contains("/assignments/") && c.revision > elected_at) {
        let work: serde_json::Value = serde_json::from_str(&change.value).unwrap();
        assert_eq!(work["leader"], new_leader.as_str(), "an assignment by a deposed leader landed: {change:?}");
    }
    eprintln!("fleet kill test: tasks moved after {moved_after:?}, new leader after {elected_after:?}, {duplicates} duplicates");
    report_fault(
        &format!(
            "a fleet member, then the leader, killed (SIGKILL) under load (lease TTL {TTL_SECONDS} s; until their \
             tasks run elsewhere, the last of the two)"
        ),
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::After(moved_after.max(elected_after)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_takes_a_third_of_the_tasks_and_no_task_is_owned_twice() {
    let env = test_env!();
    let etcd = etcd_endpoint!();
    let started_at = current_revision(&etcd).await;
    const PARTITIONS: i32 = 12;
    let (topic, flow, prefix) = (unique("join"), unique("join"), format!("/{}", unique("ferry-join")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, fleet_config(&env, &etcd, &prefix, &flow, &topic, "")).unwrap();
    let first = Ferry::start_with(config.clone(), free_port(), &[]);
    let second = Ferry::start_with(config.clone(), free_port(), &[]);
    assert_eq!(
        wait_balanced("12 tasks over 2 members", &[&first, &second], 12, Duration::from_secs(60)).await,
        vec![6, 6]
    );
    let feeder = feed(&producer, &topic, PARTITIONS, 0, 2_000, 20, Duration::from_millis(300));
    let moved_before: f64 = [&first, &second].iter().filter_map(|m| m.metric("ferry_moved_tasks_total", &[])).sum();

    let before_join = current_revision(&etcd).await;
    let third = Ferry::start_with(config.clone(), free_port(), &[]);
    let counts =
        wait_balanced("12 tasks over 3 members", &[&first, &second, &third], 12, Duration::from_secs(60)).await;
    assert_eq!(counts, vec![4, 4, 4]);
    let moved: f64 =
        [&first, &second, &third].iter().filter_map(|m| m.metric("ferry_moved_tasks_total", &[])).sum::<f64>()
            - moved_before;
    assert_eq!(moved, 4.0, "adding a third member to 12 tasks should move exactly 4");

    // `ferry status` asked of one member shows the leader, every member with its tasks, and the fleet's lag.
    let status = wait_for("ferry status listing three members", Duration::from_secs(15), || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["status", "--url", &third.http])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let member_rows = text.lines().filter(|line| line.split_whitespace().nth(2) == Some("4")).count();
        (output.status.success() && member_rows == 3).then_some(text)
    })
    .await;
    let leader = status.lines().find_map(|line| line.strip_prefix("leader: ")).expect("a leader line").to_owned();
    assert!(
        status.lines().any(|line| line.starts_with(&leader) && line.contains(" * ")),
        "the leader is marked in the member table:\n{status}"
    );
    let topic_row = status.lines().find(|line| line.contains(&topic)).expect("a lag row for the topic");
    assert_eq!(topic_row.split_whitespace().nth(2), Some("12"), "all 12 tasks' lag, from every member:\n{status}");

    feeder.await.unwrap();
    wait_replicated(&env, &topic, PARTITIONS, Duration::from_secs(120)).await;
    let duplicates = assert_nothing_lost(&env, &topic, PARTITIONS);
    assert_eq!(duplicates, 0, "a graceful hand-over checkpoints before releasing, so nothing is sent twice");
    let changes = history(&etcd, &prefix, started_at).await;
    assert_one_owner_at_a_time(&changes);
    let takes_after_join =
        changes.iter().filter(|c| c.put && c.key.contains("/owners/") && c.revision > before_join).count();
    assert_eq!(takes_after_join, 4, "the join moved exactly 4 tasks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_frozen_past_its_lease_stops_its_tasks_and_rejoins() {
    let env = test_env!();
    let etcd = etcd_endpoint!();
    let started_at = current_revision(&etcd).await;
    const PARTITIONS: i32 = 6;
    let (topic, flow, prefix) = (unique("frozen"), unique("frozen"), format!("/{}", unique("ferry-frozen")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, fleet_config(&env, &etcd, &prefix, &flow, &topic, "")).unwrap();
    let first = Ferry::start_with(config.clone(), free_port(), &[]);
    let second = Ferry::start_with(config.clone(), free_port(), &[]);
    wait_balanced("6 tasks over 2 members", &[&first, &second], 6, Duration::from_secs(60)).await;
    let feeder = feed(&producer, &topic, PARTITIONS, 0, 2_000, 20, Duration::from_millis(500));

    // Frozen (as in a long GC pause or a network partition) past its lease: the other member takes everything.
    first.signal("STOP");
    wait_for("the frozen member's tasks taken over", Duration::from_secs(TTL_SECONDS + 15), || {
        (owned(&second) == Some(6)).then_some(())
    })
    .await;
    first.signal("CONT");
    let thawed = Instant::now();
    // Back, it learns its lease is gone, stops what it ran, and rejoins as a new member with a fair share.
    wait_balanced("6 tasks over 2 members again", &[&first, &second], 6, Duration::from_secs(60)).await;
    let rebalanced = thawed.elapsed();
    assert!(first.logs().contains("lease expired"), "the member must say why it stopped:\n{}", first.logs());

    feeder.await.unwrap();
    wait_replicated(&env, &topic, PARTITIONS, Duration::from_secs(120)).await;
    let duplicates = assert_nothing_lost(&env, &topic, PARTITIONS);
    assert_one_owner_at_a_time(&history(&etcd, &prefix, started_at).await);
    eprintln!("frozen member test: {duplicates} duplicates");
    report_fault(
        "a fleet member frozen (SIGSTOP) past its lease, then thawed (until the fleet is balanced again)",
        "at-least-once",
        "0",
        duplicates as u64,
        Recovery::After(rebalanced),
    );
}

/// An etcd of the test's own, so stopping it disturbs no other test.
struct EtcdNode {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdNode {
    fn start_new() -> Self {
        // In memory when the machine has a tmpfs: etcd's fsyncs must not wait behind Kafka's disk writes.
        let dir = if Path::new("/dev/shm").is_dir() { tempfile::tempdir_in("/dev/shm") } else { tempfile::tempdir() };
        let mut node = EtcdNode { dir: dir.unwrap(), client_port: free_port(), peer_port: free_port(), child: None };
        node.start();
        node
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn start(&mut self) {
        let (client, peer) = (self.endpoint(), format!("http://127.0.0.1:{}", self.peer_port));
        let child = Command::new("etcd")
            .args(["--name", "fleet-test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("fleet-test={peer}"), "--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server) on PATH");
        self.child = Some(child);
        let health = format!("{}/health", self.endpoint());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ureq::get(&health).call().is_ok_and(|r| r.into_string().unwrap_or_default().contains("true")) {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn stored_offsets(endpoint: &str, prefix: &str, flow: &str) -> i64 {
    let config: ferry::config::EtcdConfig =
        serde_json::from_value(serde_json::json!({ "endpoints": [endpoint], "prefix": prefix })).unwrap();
    let metrics = ferry::ops::metrics::Metrics::new(false);
    let etcd = ferry::coordination::etcd::Etcd::connect(&config, &metrics).await.unwrap();
    let store = ferry::checkpoint::EtcdStore::new(etcd, "test-reader");
    use ferry::checkpoint::CheckpointStore;
    store.load(flow).await.unwrap().values().map(|checkpoint| checkpoint.position.next_source_offset).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_continues_while_etcd_is_stopped_for_30_s() {
    let env = test_env!();
    let mut etcd = EtcdNode::start_new();
    const PARTITIONS: i32 = 4;
    let (topic, flow, prefix) = (unique("etcd-down"), unique("etcd-down"), "/ferry-etcd-down".to_owned());
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let dir = tempfile::tempdir().unwrap();
    let config: PathBuf = dir.path().join("ferry.yaml");
    std::fs::write(&config, fleet_config(&env, &etcd.endpoint(), &prefix, &flow, &topic, "")).unwrap();
    let members: Vec<Ferry> = (0..2).map(|_| Ferry::start_with(config.clone(), free_port(), &[])).collect();
    let refs: Vec<&Ferry> = members.iter().collect();
    wait_balanced("4 tasks over 2 members", &refs, 4, Duration::from_secs(60)).await;
    let feeder = feed(&producer, &topic, PARTITIONS, 0, 4_000, 40, Duration::from_millis(1_000));
    wait_for("checkpoints in etcd", Duration::from_secs(30), || {
        let stored = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(stored_offsets(&etcd.endpoint(), &prefix, &flow))
        });
        (stored > 0).then_some(())
    })
    .await;

    etcd.stop();
    let replicated_at_stop = replicated_records(&env, &topic, PARTITIONS);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let replicated_during = replicated_records(&env, &topic, PARTITIONS) - replicated_at_stop;
    assert!(replicated_during > 1_000, "only {replicated_during} records replicated while etcd was down");
    assert!(members.iter().all(|m| m.get("/healthz").is_some()), "a member died while etcd was down");
    etcd.start();
    let restarted = Instant::now();

    feeder.await.unwrap();
    wait_replicated(&env, &topic, PARTITIONS, Duration::from_secs(120)).await;
    let source_total: i64 = (0..PARTITIONS).map(|p| end_offset(&env.source, &topic, p)).sum();
    wait_for("checkpoints caught up after etcd came back", Duration::from_secs(60), || {
        let stored = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(stored_offsets(&etcd.endpoint(), &prefix, &flow))
        });
        (stored == source_total).then_some(())
    })
    .await;
    let checkpointed = restarted.elapsed();
    assert_eq!(members.iter().filter_map(owned).sum::<i64>(), 4, "the members kept their tasks through the outage");
    let duplicates = assert_nothing_lost(&env, &topic, PARTITIONS);
    assert_eq!(duplicates, 0, "no member restarted, so nothing was sent twice");
    report_fault(
        "etcd stopped for 30 s under a 2-member fleet (replication goes on; until checkpoints caught up)",
        "at-least-once",
        "0",
        0,
        Recovery::After(checkpointed),
    );
}

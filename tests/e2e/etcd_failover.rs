//! Consumer failover and failback in the production shape: three members checkpointing in etcd, the one-shot
//! commands run from a directory without any local state. A group reads part of a topic on the source, fails over,
//! reads more on the target, fails back, and reads the rest on the source: exactly the source, nothing twice,
//! nothing missed, also for a topic of the target's own that the reverse flow replicates. With the source cluster
//! stopped, failover uses the offsets the fleet's group sync stored in etcd.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ferry::checkpoint::{Access, CheckpointStore};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::common::*;
use crate::fleet_support::*;

/// Runs a one-shot ferry command from `cwd`, which holds no ferry state.
fn one_shot(cwd: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry")).current_dir(cwd).args(args).arg("--config").arg(config).output().unwrap()
}

fn assert_success(what: &str, output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{what} failed:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The checkpoint store of `config`, opened as the one-shot commands open it.
async fn stored(config: &Path) -> std::sync::Arc<dyn CheckpointStore> {
    let config = ferry::config::Config::load(config).unwrap();
    let metrics = ferry::ops::metrics::Metrics::new(false);
    ferry::checkpoint::open(&config.checkpoint, Access::ReadOnly, &metrics).await.unwrap().store
}

/// Waits until every task of `flow` over `topic`'s `partitions` is checkpointed at `end` in the store.
async fn wait_checkpointed(config: &Path, flow: &str, topic: &str, partitions: i32, end: i64) {
    let store = stored(config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let positions: BTreeMap<i32, i64> = store
            .load(flow)
            .await
            .unwrap()
            .into_iter()
            .filter(|(key, _)| key.topic == topic)
            .map(|(key, checkpoint)| (key.partition, checkpoint.position.next_source_offset))
            .collect();
        if (0..partitions).all(|p| positions.get(&p) == Some(&end)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "flow {flow} not checkpointed at {end}: {positions:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the next `count` records of one partition as `group` does (from its committed offset, else the start),
/// then commits after the last one: what a consumer of the group does. Returns the records' ids.
fn read_as_group(bootstrap: &str, group: &str, topic: &str, partition: i32, count: usize) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Stored).unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut records, mut next) = (Vec::new(), None);
    while records.len() < count {
        assert!(std::time::Instant::now() < deadline, "{group} read only {} of {count} on {topic}", records.len());
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.unwrap();
            let headers = message.headers().expect("every test record has headers");
            let id = headers.iter().find(|header| header.key == "id").and_then(|header| header.value).unwrap();
            records.push(String::from_utf8(id.to_vec()).unwrap());
            next = Some(message.offset() + 1);
        }
    }
    let mut commit = TopicPartitionList::new();
    commit.add_partition_offset(topic, partition, Offset::Offset(next.unwrap())).unwrap();
    consumer.commit(&commit, CommitMode::Sync).unwrap();
    drop((assignment, commit));
    records
}

/// The ids of `topic`'s records in `partition` at or after the group's committed offset there.
fn ids_from_committed(bootstrap: &str, group: &str, topic: &str, partition: i32) -> Vec<String> {
    let from = committed(bootstrap, group, topic, partition + 1)[partition as usize]
        .unwrap_or_else(|| panic!("{group} has no committed offset on {topic}[{partition}]"));
    read_partition(bootstrap, topic, partition)
        .into_iter()
        .filter(|(offset, _)| *offset >= from)
        .map(|(_, r)| r.id())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_fails_over_and_back_through_a_fleet_on_etcd_with_nothing_redelivered_or_skipped() {
    let env = test_env!();
    let etcd = etcd_endpoint!();
    const ORDERS_PARTITIONS: i32 = 3;
    const PAYMENTS_PARTITIONS: i32 = 2;
    let (orders, payments) = (unique("orders"), unique("payments"));
    let (east, west) = (unique("east"), unique("west"));
    let prefix = format!("/{}", unique("ferry-dr"));
    create_topic(&env.source, &orders, ORDERS_PARTITIONS, &[]).await;
    create_topic(&env.target, &payments, PAYMENTS_PARTITIONS, &[]).await;
    let (source_producer, target_producer) = (producer(&env.source), producer(&env.target));
    feed(&source_producer, &orders, ORDERS_PARTITIONS, 0, 300, 1, Duration::ZERO).await.unwrap();
    feed(&target_producer, &payments, PAYMENTS_PARTITIONS, 0, 200, 1, Duration::ZERO).await.unwrap();

    // The reverse flow replicates the target's own topic back to the source cluster as `dst.<payments>`.
    let reverse =
        format!("  - name: {west}\n    source: dst\n    target: src\n    topics: {{ include: ['{payments}'] }}\n");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, fleet_config(&env, &etcd, &prefix, &east, &orders, &reverse)).unwrap();
    let members: Vec<Ferry> = (0..3).map(|_| Ferry::start_with(config.clone(), free_port(), &[])).collect();
    wait_checkpointed(&config, &east, &orders, ORDERS_PARTITIONS, 300).await;
    wait_checkpointed(&config, &west, &payments, PAYMENTS_PARTITIONS, 200).await;
    // The fleet may still be settling (a member joining late takes tasks over): wait for every task to have one owner.
    let tasks = i64::from(ORDERS_PARTITIONS + PAYMENTS_PARTITIONS);
    wait_for("every task owned by one member", Duration::from_secs(60), || {
        (members.iter().filter_map(owned).sum::<i64>() == tasks).then_some(())
    })
    .await;

    // The one-shot commands run where no member ever ran: no local state, and they must create none.
    let cwd = tempfile::tempdir().unwrap();
    let group = unique("billing");
    let remote_orders = format!("src.{orders}");
    let remote_payments = format!("dst.{payments}");

    // 1. On the source, the group reads an uneven part of each partition.
    let read_first = [57, 123, 200];
    let mut read: Vec<Vec<String>> = (0..ORDERS_PARTITIONS)
        .map(|p| read_as_group(&env.source, &group, &orders, p, read_first[p as usize]))
        .collect();

    // 2. Failover: the target resumes exactly after what the group read.
    let translated = one_shot(cwd.path(), &config, &["translate", "--flow", &east, "--group", &group]);
    let table = assert_success("translate", &translated);
    for column in
        ["TOPIC", "PARTITION", "SOURCE_OFFSET", "TARGET_TOPIC", "TARGET_OFFSET", "NOT_REPLICATED", "MAY_REDELIVER"]
    {
        assert!(table.lines().next().unwrap().contains(column), "translate's header lacks {column}:\n{table}");
    }
    let stdout =
        assert_success("failover", &one_shot(cwd.path(), &config, &["failover", "--flow", &east, "--group", &group]));
    assert!(stdout.contains("committed 3 offsets"), "{stdout}");
    let source_ids: Vec<Vec<String>> = (0..ORDERS_PARTITIONS)
        .map(|p| read_partition(&env.source, &orders, p).into_iter().map(|(_, r)| r.id()).collect())
        .collect();
    for partition in 0..ORDERS_PARTITIONS {
        let rest = ids_from_committed(&env.target, &group, &remote_orders, partition);
        assert_eq!(
            rest,
            source_ids[partition as usize][read[partition as usize].len()..],
            "failover, partition {partition}:\n{stdout}"
        );
    }

    // 3. On the target, the group reads further, and also part of the target's own topic.
    for partition in 0..ORDERS_PARTITIONS {
        let more = [100, 50, 60][partition as usize];
        read[partition as usize].extend(read_as_group(&env.target, &group, &remote_orders, partition, more));
    }
    let read_payments: Vec<Vec<String>> = [80, 150]
        .iter()
        .enumerate()
        .map(|(p, n)| read_as_group(&env.target, &group, &payments, p as i32, *n))
        .collect();

    // 4. Failback: a dry run commits nothing, then the group moves back whole (5 partitions over two topics).
    let before = committed(&env.source, &group, &orders, ORDERS_PARTITIONS);
    let dry = assert_success(
        "failback --dry-run",
        &one_shot(cwd.path(), &config, &["failback", "--dry-run", "--flow", &east, "--group", &group]),
    );
    assert!(dry.contains("MAY_REDELIVER") && dry.contains(&west), "{dry}");
    assert_eq!(committed(&env.source, &group, &orders, ORDERS_PARTITIONS), before, "a dry run committed");
    let stdout =
        assert_success("failback", &one_shot(cwd.path(), &config, &["failback", "--flow", &east, "--group", &group]));
    assert!(stdout.contains("committed 5 offsets"), "{stdout}");

    // 5. Back on the source, the group reads exactly the rest: every record once, in order.
    for partition in 0..ORDERS_PARTITIONS {
        let mut all = read[partition as usize].clone();
        all.extend(ids_from_committed(&env.source, &group, &orders, partition));
        assert_eq!(all, source_ids[partition as usize], "failback, partition {partition}:\n{stdout}");
    }
    for partition in 0..PAYMENTS_PARTITIONS {
        let payments_ids: Vec<String> =
            read_partition(&env.target, &payments, partition).into_iter().map(|(_, r)| r.id()).collect();
        let rest = ids_from_committed(&env.source, &group, &remote_payments, partition);
        assert_eq!(
            rest,
            payments_ids[read_payments[partition as usize].len()..],
            "reverse flow, partition {partition}:\n{stdout}"
        );
    }
    assert!(!cwd.path().join("ferry-state").exists(), "a one-shot command created a local state directory");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "a one-shot command left files behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_source_cluster_stopped_failover_uses_the_offsets_the_fleet_synced_into_etcd() {
    let env = test_env!();
    let etcd = etcd_endpoint!();
    let source = KafkaNode::new(&env);
    source.start();
    let (topic, flow, groups) = (unique("synced"), unique("synced"), unique("app"));
    let prefix = format!("/{}", unique("ferry-synced"));
    create_topic(&source.bootstrap(), &topic, 2, &[]).await;
    feed(&producer(&source.bootstrap()), &topic, 2, 0, 100, 1, Duration::ZERO).await.unwrap();
    let sync = format!("    sync_group_offsets: {{ enabled: true, include: ['{groups}-.*'], interval: 1s }}\n");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    let text = fleet_config(&env, &etcd, &prefix, &flow, &topic, &sync).replace(&env.source, &source.bootstrap());
    std::fs::write(&config, text).unwrap();
    let members: Vec<Ferry> = (0..3).map(|_| Ferry::start_with(config.clone(), free_port(), &[])).collect();
    wait_checkpointed(&config, &flow, &topic, 2, 100).await;
    let source_ids: Vec<Vec<String>> = (0..2)
        .map(|p| read_partition(&source.bootstrap(), &topic, p).into_iter().map(|(_, r)| r.id()).collect())
        .collect();

    let group = format!("{groups}-reports");
    commit(&source.bootstrap(), &group, &topic, &[55, 66]);
    let store = stored(&config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let synced = store.load_group_offsets(&flow).await.unwrap().remove(&group);
        let offsets: Option<Vec<i64>> =
            synced.map(|synced| synced.partitions.iter().map(|p| p.source_offset).collect());
        if offsets == Some(vec![55, 66]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the fleet did not store the group's offsets: {offsets:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The fleet stops (no sync can commit anything any more) and the group's target offsets are reset, so what
    // the target holds afterwards is what failover committed.
    for member in members {
        let (status, _, logs) = member.terminate(Duration::from_secs(40));
        assert!(status.success(), "{logs}");
    }
    let remote = format!("src.{topic}");
    commit(&env.target, &group, &remote, &[0, 0]);
    source.stop();

    let cwd = tempfile::tempdir().unwrap();
    let stdout =
        assert_success("failover", &one_shot(cwd.path(), &config, &["failover", "--flow", &flow, "--group", &group]));
    assert!(stdout.contains("source cluster unreachable: using the group offsets ferry synced"), "{stdout}");
    assert!(stdout.contains("committed 2 offsets"), "{stdout}");
    for (partition, position) in [55_usize, 66].into_iter().enumerate() {
        let rest = ids_from_committed(&env.target, &group, &remote, partition as i32);
        assert_eq!(rest, source_ids[partition][position..], "partition {partition}:\n{stdout}");
    }
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "a one-shot command left files behind");
}

//! Exactly-once delivery against the real brokers: whatever is killed or stopped, a read_committed consumer of the
//! target sees every source record once, in order.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_then_restart_delivers_every_record_exactly_once() {
    const PARTITIONS: i32 = 3;
    const PER_PARTITION: u64 = 20_000;
    let env = test_env!();
    let topic = unique("eos-kill");
    let flow = unique("eosk");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let all: Vec<Vec<Record>> =
        (0..PARTITIONS).map(|p| (0..PER_PARTITION).map(|seq| Record::numbered(&topic, p, seq)).collect()).collect();
    for (partition, records) in all.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[..records.len() / 4]).await;
    }
    let config_text = config(&env, state.path(), &flow, &topic, EXACTLY_ONCE);
    let ferry = Ferry::start(state.path(), &config_text);
    let target_topic = format!("src.{topic}");
    wait_for("replication under way", Duration::from_secs(60), || {
        (end_offset(&env.target, &target_topic, 0) > 1_000).then_some(())
    })
    .await;
    let rest: Vec<Vec<Record>> = all.iter().map(|records| records[records.len() / 4..].to_vec()).collect();
    let feeder = feed_slowly(producer.clone(), topic.clone(), rest, 10, Duration::from_millis(150));
    tokio::time::sleep(Duration::from_millis(900)).await;
    ferry.kill9();

    let ferry = Ferry::start_with(state.path().join("ferry.yaml"), free_port(), &[]);
    let restarted = std::time::Instant::now();
    feeder.await.unwrap();
    wait_for("every source record committed on the target", Duration::from_secs(120), || {
        let positions = stored_positions(state.path(), &flow);
        ((0..PARTITIONS).all(|p| positions.get(&(topic.clone(), p)) == Some(&(PER_PARTITION as i64)))).then_some(())
    })
    .await;
    let recovered = restarted.elapsed();
    for (partition, expected) in all.iter().enumerate() {
        assert_exactly_once(&env.target, &target_topic, partition as i32, expected);
    }
    // The position of record: the flow's group on the target holds each partition's next source offset.
    let positions = committed(&env.target, &format!("ferry-{flow}"), &target_topic, PARTITIONS);
    assert_eq!(positions, vec![Some(PER_PARTITION as i64); PARTITIONS as usize]);
    assert_eq!(ferry.metric("ferry_duplicates_total", &[("flow", &flow)]).unwrap_or(0.0), 0.0);
    let logs = ferry.logs();
    assert!(logs.contains("transactional producer ready"), "{logs}");
    report_fault(
        "ferry killed (SIGKILL) mid-stream and restarted (until every record is committed)",
        "exactly-once",
        "0",
        0,
        Recovery::After(recovered),
    );
}

/// The numbered records `from..to` of every partition.
fn numbered(topic: &str, partitions: i32, from: u64, to: u64) -> Vec<Vec<Record>> {
    (0..partitions).map(|p| (from..to).map(|seq| Record::numbered(topic, p, seq)).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_member_killed_and_a_zombie_woken_up_deliver_exactly_once_and_the_zombie_is_fenced() {
    use crate::fleet_support::*;
    const PARTITIONS: i32 = 6;
    let env = test_env!();
    let etcd = etcd_endpoint!();
    let (topic, flow, prefix) = (unique("eos-fleet"), unique("eosf"), format!("/{}", unique("ferry-eos")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    let all = numbered(&topic, PARTITIONS, 0, 4_000);
    let first: Vec<Vec<Record>> = all.iter().map(|records| records[..1_000].to_vec()).collect();
    for (partition, records) in first.iter().enumerate() {
        produce(&producer, &topic, partition as i32, records).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    // Commits far apart: whenever the zombie is frozen, its open transactions hold records, so waking up it has
    // something to commit (and is fenced) rather than nothing to do.
    let rare_commits = "    delivery: exactly-once\n    exactly_once: { buckets: 4, commit_interval: 30s }\n";
    std::fs::write(&config, fleet_config(&env, &etcd, &prefix, &flow, &topic, rare_commits)).unwrap();
    let mut members: Vec<Option<Ferry>> =
        (0..3).map(|_| Some(Ferry::start_with(config.clone(), free_port(), &[]))).collect();
    let owned_total = |members: &[Option<Ferry>]| -> Option<i64> { members.iter().flatten().map(owned).sum() };
    let owners = |members: &[Option<Ferry>]| -> Vec<usize> {
        (0..members.len()).filter(|i| members[*i].as_ref().and_then(owned).is_some_and(|n| n > 0)).collect()
    };
    wait_for("every task owned, by at least two members", Duration::from_secs(60), || {
        (owned_total(&members) == Some(i64::from(PARTITIONS)) && owners(&members).len() >= 2).then_some(())
    })
    .await;
    let rest: Vec<Vec<Record>> = all.iter().map(|records| records[1_000..].to_vec()).collect();
    // Records keep arriving for 30 s, through the kill and the freeze below.
    let feeder = feed_slowly(producer.clone(), topic.clone(), rest, 60, Duration::from_millis(500));

    // kill -9 of a member running tasks that is not the leader.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let not_leader = |members: &[Option<Ferry>], i: &usize| !is_leader(members[*i].as_ref().unwrap());
    let victim = owners(&members).into_iter().find(|i| not_leader(&members, i)).expect("a non-leader owner");
    members[victim].take().unwrap().kill9();
    wait_for("the killed member's buckets taken over", Duration::from_secs(TTL_SECONDS + 30), || {
        (owned_total(&members) == Some(i64::from(PARTITIONS))).then_some(())
    })
    .await;

    // A member frozen past its lease while it replicates: the other takes its buckets and fences its producers.
    // Frozen only once the assignment has settled, so it is frozen with buckets it runs, not ones it is taking up.
    let mut last_counts = Vec::new();
    let mut stable_since = std::time::Instant::now();
    wait_for("both survivors running tasks, the assignment settled", Duration::from_secs(60), || {
        let counts: Vec<Option<i64>> = members.iter().flatten().map(owned).collect();
        if counts != last_counts {
            (last_counts, stable_since) = (counts, std::time::Instant::now());
        }
        (owners(&members).len() == 2 && stable_since.elapsed() >= Duration::from_secs(3)).then_some(())
    })
    .await;
    let zombie = owners(&members).into_iter().find(|i| not_leader(&members, i)).expect("a non-leader owner");
    let other = owners(&members).into_iter().find(|i| *i != zombie).unwrap();
    members[zombie].as_ref().unwrap().signal("STOP");
    wait_for("the frozen member's buckets taken over", Duration::from_secs(TTL_SECONDS + 30), || {
        (members[other].as_ref().and_then(owned) == Some(i64::from(PARTITIONS))).then_some(())
    })
    .await;
    let (zombie, other) = (members[zombie].as_ref().unwrap(), members[other].as_ref().unwrap());
    zombie.signal("CONT");
    let thawed = std::time::Instant::now();
    // Woken up, it still holds open transactions the other member's producers fenced: its late commit fails. (When
    // it rejoins and takes buckets back, its new producers fence the other member's in turn.)
    let fenced = |member: &Ferry| member.metric("ferry_producers_fenced_total", &[("flow", &flow)]).unwrap_or(0.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while fenced(zombie) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the woken member was not fenced (the other member was fenced {} times):\n{}",
            fenced(other),
            zombie.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(zombie.logs().contains("was fenced"), "the zombie must say it was fenced:\n{}", zombie.logs());

    let fenced_after = thawed.elapsed();
    feeder.await.unwrap();
    wait_exactly_once(&env.target, &format!("src.{topic}"), &all, Duration::from_secs(120)).await;
    report_fault(
        &format!(
            "a fleet member killed (SIGKILL), then another frozen (SIGSTOP) past its lease and thawed: a zombie \
             (lease TTL {TTL_SECONDS} s; until the zombie is fenced)"
        ),
        "exactly-once",
        "0",
        0,
        Recovery::After(fenced_after),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_broker_stopped_for_30_s_mid_stream_still_gets_every_record_once() {
    const PARTITIONS: i32 = 2;
    let env = test_env!();
    let node = KafkaNode::new(&env);
    node.start();
    let target = node.bootstrap();
    let (topic, flow) = (unique("eos-outage"), unique("eoso"));
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let config_text = config(&env, state.path(), &flow, &topic, EXACTLY_ONCE).replace(&env.target, &target);
    let ferry = Ferry::start(state.path(), &config_text);
    let target_topic = format!("src.{topic}");
    let producer = producer(&env.source);
    let all = numbered(&topic, PARTITIONS, 0, 6_000);
    let feeder = feed_slowly(producer.clone(), topic.clone(), all.clone(), 40, Duration::from_millis(250));
    wait_for("replication under way", Duration::from_secs(60), || {
        (end_offset(&target, &target_topic, 0) > 500).then_some(())
    })
    .await;
    node.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    node.start();
    let restarted = std::time::Instant::now();
    feeder.await.unwrap();
    wait_exactly_once(&target, &target_topic, &all, Duration::from_secs(180)).await;
    report_fault(
        "the whole target cluster stopped for 30 s mid-stream",
        "exactly-once",
        "0",
        0,
        Recovery::After(restarted.elapsed()),
    );
    let committed = ferry.metric("ferry_transactions_total", &[("flow", &flow), ("result", "committed")]);
    assert!(committed.unwrap_or(0.0) > 0.0, "{}", ferry.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_exact_across_the_commit_markers_of_many_transactions() {
    let env = test_env!();
    let (topic, flow) = (unique("eos-markers"), unique("eosm"));
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[]).await;
    let _ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, EXACTLY_ONCE));
    let all = numbered(&topic, 1, 0, 600);
    // Slower than the commit interval: the records land in many transactions, each leaving a commit marker.
    feed_slowly(producer(&env.source), topic.clone(), all.clone(), 15, Duration::from_millis(300)).await.unwrap();
    let target_topic = format!("src.{topic}");
    wait_exactly_once(&env.target, &target_topic, &all, Duration::from_secs(60)).await;
    wait_for("the last transaction checkpointed", Duration::from_secs(30), || {
        (stored_positions(state.path(), &flow).get(&(topic.clone(), 0)) == Some(&600)).then_some(())
    })
    .await;
    let markers = end_offset(&env.target, &target_topic, 0) - 600;
    assert!(markers >= 5, "only {markers} commit markers: the test needs records spread over transactions");
    let target_offsets: Vec<i64> = read_partition(&env.target, &target_topic, 0).into_iter().map(|(o, _)| o).collect();
    // Source positions just after a marker's gap, on both sides of it, and spread over the whole partition.
    let after_gaps: Vec<i64> = (1..target_offsets.len())
        .filter(|i| target_offsets[*i] > target_offsets[*i - 1] + 1)
        .take(4)
        .flat_map(|i| [i as i64 - 1, i as i64])
        .collect();
    let mut positions: Vec<i64> = after_gaps.into_iter().chain((0..=600).step_by(199)).collect();
    positions.sort_unstable();
    positions.dedup();
    for position in positions {
        crate::failover::fail_over_and_compare(&env, state.path(), &flow, &topic, &[position]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_host_transactions_pauses_the_tasks_naming_flow_and_cluster_and_never_falls_back() {
    let env = test_env!();
    // One broker cannot meet a transaction log replicated three times: the target refuses every transaction.
    let node = KafkaNode::with_properties(&env, "transaction.state.log.replication.factor=3");
    node.start();
    let target = node.bootstrap();
    let (topic, flow) = (unique("eos-refused"), unique("eosr"));
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[]).await;
    produce(&producer(&env.source), &topic, 0, &numbered(&topic, 1, 0, 100)[0]).await;
    let config_text = config(&env, state.path(), &flow, &topic, EXACTLY_ONCE).replace(&env.target, &target);
    let ferry = Ferry::start(state.path(), &config_text);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some((_, body)) = ferry.get("/status").filter(|(_, body)| body.contains("refused to start transactions"))
        {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "no paused task with the reason; logs:\n{}", ferry.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(status.contains(&flow) && status.contains("dst"), "the reason names flow and cluster: {status}");
    let logs = ferry.logs();
    let line = logs.lines().find(|line| line.contains("refused to start transactions")).expect("logged");
    assert!(line.contains(&flow) && line.contains("target cluster dst"), "{line}");
    assert!(status.contains("__transaction_state"), "the reason says what to check: {status}");
    // Not a single record went over without a transaction.
    let target_topic = format!("src.{topic}");
    assert!(end_offset(&target, &target_topic, 0) <= 0, "records reached the target outside a transaction");
    assert_eq!(ferry.metric("ferry_records_replicated_total", &[("flow", &flow)]).unwrap_or(0.0), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_sync_and_mm2_checkpoints_translate_exactly_across_commit_markers() {
    let env = test_env!();
    let (topic, flow, group) = (unique("eos-groups"), unique("eosg"), unique("eos-reader"));
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[]).await;
    let extra = format!(
        "{EXACTLY_ONCE}    sync_group_offsets: {{ enabled: true, include: ['{group}'], interval: 1s }}\n    \
         emit_mm2_checkpoints: true\n"
    );
    let _ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, &extra));
    let all = numbered(&topic, 1, 0, 500);
    feed_slowly(producer(&env.source), topic.clone(), all.clone(), 10, Duration::from_millis(300)).await.unwrap();
    let target_topic = format!("src.{topic}");
    wait_exactly_once(&env.target, &target_topic, &all, Duration::from_secs(60)).await;
    assert!(end_offset(&env.target, &target_topic, 0) - 500 >= 3, "the records must span several transactions");

    let position = 450;
    commit(&env.source, &group, &topic, &[position]);
    let synced = wait_for("the group synced to the target", Duration::from_secs(30), || {
        committed(&env.target, &group, &target_topic, 1)[0]
    })
    .await;
    let resumed: Vec<Record> = read_partition(&env.target, &target_topic, 0)
        .into_iter()
        .filter(|(offset, _)| *offset >= synced)
        .map(|(_, record)| record)
        .collect();
    assert_eq!(resumed, all[0][position as usize..], "a group resuming at {synced} re-reads or skips records");

    let lib = env.kafka_lib.clone();
    let expected = format!("{target_topic} 0 {synced}\n");
    wait_for("MM2's translateOffsets to agree", Duration::from_secs(90), || {
        let output = std::process::Command::new("java")
            .args(["-Xmx256m", "-cp", &format!("{lib}/*")])
            .arg(repo_root().join("tests/java/Mm2TranslateOffsets.java"))
            .args([&env.target, "src", &group])
            .output()
            .unwrap();
        (String::from_utf8_lossy(&output.stdout) == expected).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_position_committed_in_the_transaction_wins_over_a_checkpoint_that_lags_behind_it() {
    let env = test_env!();
    let (topic, flow) = (unique("eos-lagging"), unique("eosl"));
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 1, &[]).await;
    let all = numbered(&topic, 1, 0, 2_000);
    produce(&producer(&env.source), &topic, 0, &all[0][..1_000]).await;
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, EXACTLY_ONCE));
    wait_for("the first half checkpointed", Duration::from_secs(60), || {
        (stored_positions(state.path(), &flow).get(&(topic.clone(), 0)) == Some(&1_000)).then_some(())
    })
    .await;
    let (status, _, _) = ferry.terminate(Duration::from_secs(30));
    assert!(status.success());
    // A crash right after a commit leaves the store behind the target: simulate it by winding the store back.
    let file = state.path().join(format!("{flow}.json"));
    let stored = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, stored.replace("\"next_source_offset\":1000", "\"next_source_offset\":400")).unwrap();
    assert_eq!(stored_positions(state.path(), &flow).get(&(topic.clone(), 0)), Some(&400), "{stored}");

    produce(&producer(&env.source), &topic, 0, &all[0][1_000..]).await;
    let ferry = Ferry::start_with(state.path().join("ferry.yaml"), free_port(), &[]);
    wait_exactly_once(&env.target, &format!("src.{topic}"), &all, Duration::from_secs(60)).await;
    assert!(ferry.logs().contains("the target's committed transactions reach past the checkpoint"), "{}", ferry.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_aborts_its_transaction_pauses_its_task_and_the_bucket_still_delivers_exactly_once() {
    use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
    let env = test_env!();
    let (topic, flow) = (unique("eos-refused-record"), unique("eosrr"));
    let state = tempfile::tempdir().unwrap();
    let target_topic = format!("src.{topic}");
    create_topic(&env.source, &topic, 2, &[]).await;
    // A target-only config, which topic sync leaves alone: the target refuses records older than an hour.
    create_topic(&env.target, &target_topic, 2, &[("message.timestamp.before.max.ms", "3600000")]).await;
    let mut all = numbered(&topic, 2, 0, 400);
    let two_days_ago = match all[0][100].timestamp {
        rdkafka::Timestamp::CreateTime(millis) => millis - 2 * 24 * 3600 * 1000,
        other => panic!("numbered records carry a create time, not {other:?}"),
    };
    all[0][100].timestamp = rdkafka::Timestamp::CreateTime(two_days_ago);
    let producer = producer(&env.source);
    for (partition, records) in all.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[..200]).await;
    }
    // One bucket: both partitions share every transaction, so the refusal aborts partition 1's records too.
    let extra = "    delivery: exactly-once\n    exactly_once: { buckets: 1, commit_interval: 200ms }\n";
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, extra));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !ferry.get("/status").is_some_and(|(_, body)| body.contains("refused source offset 100")) {
        assert!(
            std::time::Instant::now() < deadline,
            "partition 0 not paused at the refused record:\n{}",
            ferry.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for("an aborted transaction", Duration::from_secs(30), || {
        (ferry.metric("ferry_transactions_total", &[("flow", &flow), ("result", "aborted")])? >= 1.0).then_some(())
    })
    .await;
    for (partition, records) in all.iter().enumerate() {
        produce(&producer, &topic, partition as i32, &records[200..]).await;
    }
    // Partition 1 gets everything exactly once although its transactions were aborted with partition 0's.
    let partition_1 = std::slice::from_ref(&all[1]);
    wait_for("partition 1 complete", Duration::from_secs(60), || {
        (read_partition(&env.target, &target_topic, 1).len() == 400).then_some(())
    })
    .await;
    assert_exactly_once(&env.target, &target_topic, 1, &partition_1[0]);
    // Partition 0 holds nothing past the refused record.
    let before_refusal = read_partition(&env.target, &target_topic, 0).len();
    assert!(before_refusal <= 100, "{before_refusal} records of partition 0 committed past the refused one");

    let lifted = AlterConfig::new(ResourceSpecifier::Topic(&target_topic))
        .set("message.timestamp.before.max.ms", "9223372036854775807");
    for result in admin(&env.target).alter_configs([&lifted], &AdminOptions::new()).await.expect("alter configs") {
        result.expect("limit lifted");
    }
    wait_exactly_once(&env.target, &target_topic, &all, Duration::from_secs(120)).await;
}

//! Checkpoint data in etcd that cannot be read holds back only the task it belongs to: that task waits, named with
//! the etcd key and the reason in the log and on `/readyz`, while the rest of its flow replicates. Starting it from
//! scratch instead would replicate its partition again from the beginning (or skip it, with `initial_position:
//! end`). Once the key is repaired or deleted, the task starts without a restart.

use std::time::Duration;

use crate::common::*;
use crate::fleet_support::*;

const PARTITIONS: i32 = 3;
const RECORDS: u64 = 50;
const DAMAGED: i32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_entry_holds_back_only_its_task() {
    let env = test_env!();
    let etcd = etcd_endpoint!();
    let (topic, flow, prefix) = (unique("damaged"), unique("damaged"), format!("/{}", unique("ferry-damaged")));
    create_topic(&env.source, &topic, PARTITIONS, &[]).await;
    let producer = producer(&env.source);
    for partition in 0..PARTITIONS {
        let records: Vec<Record> = (0..RECORDS).map(|seq| Record::numbered(&topic, partition, seq)).collect();
        produce(&producer, &topic, partition, &records).await;
    }
    // A chunk of another member whose entry for one partition no version of ferry wrote.
    let ghost_key = format!("{prefix}/checkpoints/{flow}/ghost/0000");
    let chunk = serde_json::json!({
        "version": 1,
        "member": "ghost",
        "tasks": [{"topic": topic, "partition": DAMAGED, "next_source_offset": "twelve", "written_at_ms": 1}],
    });
    let mut client = etcd_client::Client::connect([etcd.as_str()], None).await.unwrap();
    client.put(ghost_key.as_str(), serde_json::to_vec(&chunk).unwrap(), None).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, fleet_config(&env, &etcd, &prefix, &flow, &topic, "")).unwrap();
    let ferry = Ferry::start_with(config, free_port(), &[]);

    let remote = format!("src.{topic}");
    wait_for("the undamaged partitions replicated", Duration::from_secs(60), || {
        (0..PARTITIONS)
            .filter(|partition| *partition != DAMAGED)
            .all(|partition| end_offset(&env.target, &remote, partition) == RECORDS as i64)
            .then_some(())
    })
    .await;
    let reason = wait_for("/readyz naming the damaged checkpoint", Duration::from_secs(30), || {
        let (code, body) = ferry.get("/readyz")?;
        (code == 503 && body.contains("damaged")).then_some(body)
    })
    .await;
    assert!(
        reason.contains("1 assigned tasks wait") && reason.contains(&ghost_key),
        "/readyz says how many tasks wait and why: {reason}"
    );
    let logs = ferry.logs();
    let logged = logs.lines().find(|line| line.contains("its stored checkpoint cannot be read")).unwrap_or_else(|| {
        panic!("no log line names the damaged checkpoint:\n{logs}");
    });
    assert!(logged.contains(&ghost_key) && logged.contains(&format!("{topic}/{DAMAGED}")), "{logged}");
    assert_eq!(
        end_offset(&env.target, &remote, DAMAGED),
        0,
        "the task of the damaged entry must not start from scratch"
    );

    report_fault(
        "a damaged checkpoint entry in etcd (its task waits, naming the key; the rest of the flow runs)",
        "at-least-once",
        "0",
        0,
        Recovery::Operator,
    );
    client.delete(ghost_key.as_str(), None).await.unwrap();
    wait_for("the held-back partition replicated once its key is gone", Duration::from_secs(60), || {
        (end_offset(&env.target, &remote, DAMAGED) == RECORDS as i64).then_some(())
    })
    .await;
    wait_for("ferry ready", Duration::from_secs(30), || (ferry.get("/readyz")?.0 == 200).then_some(())).await;
    for partition in 0..PARTITIONS {
        let ids: Vec<String> =
            read_partition(&env.target, &remote, partition).into_iter().map(|(_, r)| r.id()).collect();
        let expected: Vec<String> = (0..RECORDS).map(|seq| Record::numbered(&topic, partition, seq).id()).collect();
        assert_eq!(ids, expected, "partition {partition}");
    }
}

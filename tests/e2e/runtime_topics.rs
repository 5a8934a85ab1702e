//! Topics created and partitions added while ferry runs are replicated; remote topics are never re-replicated.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_partitions_added_at_runtime_are_replicated() {
    let env = test_env!();
    let base = unique("rt");
    let flow = unique("rtf");
    let state = tempfile::tempdir().unwrap();
    let ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &format!("(dst\\.)?{base}-.*"), ""));
    wait_for("ferry ready", Duration::from_secs(60), || (ferry.get("/readyz")?.0 == 200).then_some(())).await;

    let topic = format!("{base}-new");
    create_topic(&env.source, &topic, 2, &[("retention.ms", "3600000")]).await;
    let producer = producer(&env.source);
    for partition in 0..2 {
        let records: Vec<Record> = (0..50).map(|seq| Record::numbered(&topic, partition, seq)).collect();
        produce(&producer, &topic, partition, &records).await;
    }
    let target_topic = format!("src.{topic}");
    wait_for("the new topic replicated", Duration::from_secs(60), || {
        ((0..2).all(|p| end_offset(&env.target, &target_topic, p) == 50)).then_some(())
    })
    .await;

    add_partitions(&env.source, &topic, 4).await;
    wait_for("the target topic grown to 4 partitions", Duration::from_secs(60), || {
        (partition_count(&env.target, &target_topic) == 4).then_some(())
    })
    .await;
    // A fresh producer: the first one's cached metadata still says 2 partitions.
    let producer = super::common::producer(&env.source);
    for partition in 2..4 {
        let records: Vec<Record> = (0..20).map(|seq| Record::numbered(&topic, partition, seq)).collect();
        produce(&producer, &topic, partition, &records).await;
    }
    wait_for("records of the new partitions replicated", Duration::from_secs(60), || {
        ((2..4).all(|p| end_offset(&env.target, &target_topic, p) == 20)).then_some(())
    })
    .await;
    let replicated: Vec<Record> = read_partition(&env.target, &target_topic, 3).into_iter().map(|(_, r)| r).collect();
    let expected: Vec<Record> = (0..20).map(|seq| Record::numbered(&topic, 3, seq)).collect();
    assert_eq!(replicated, expected);

    // A topic that already carries a cluster alias prefix is a remote topic: prefix naming never replicates it.
    // The include pattern matches it too, so only the naming rule keeps it back. A matching topic created with it
    // shows when discovery has looked at both.
    let remote_looking = format!("dst.{base}-loop");
    let witness = format!("{base}-witness");
    create_topic(&env.source, &remote_looking, 1, &[]).await;
    create_topic(&env.source, &witness, 1, &[]).await;
    wait_for("discovery to pick up the topics created together", Duration::from_secs(60), || {
        (partition_count(&env.target, &format!("src.{witness}")) == 1).then_some(())
    })
    .await;
    assert_eq!(partition_count(&env.target, &format!("src.{remote_looking}")), 0);
}

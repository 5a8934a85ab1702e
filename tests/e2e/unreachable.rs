//! A source cluster that is down at start: ferry keeps retrying, is not ready, names the cluster, and starts
//! replicating once the cluster comes up, without a restart.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_starts_when_an_unreachable_source_comes_up() {
    let env = test_env!();
    let node = KafkaNode::new(&env);
    let late_source = node.bootstrap();
    let flow = unique("late");
    let topic = unique("late");
    let state = tempfile::tempdir().unwrap();
    let config_text = format!(
        r#"clusters:
  late-east:
    bootstrap_servers: "{late_source}"
  dst:
    bootstrap_servers: "{target}"
checkpoint: {{ store: file, path: "{state}", interval: 1s }}
discovery: {{ interval: 2s }}
flows:
  - name: {flow}
    source: late-east
    target: dst
    topics: {{ include: ["{topic}"] }}
"#,
        target = env.target,
        state = state.path().display(),
    );
    let ferry = Ferry::start(state.path(), &config_text);
    wait_for("ferry's HTTP endpoint", Duration::from_secs(30), || ferry.get("/healthz")).await;
    wait_for("the unreachable source reported", Duration::from_secs(30), || {
        (ferry.metric("ferry_cluster_up", &[("cluster", "late-east")]).is_some() && ferry.logs().contains("late-east"))
            .then_some(())
    })
    .await;
    let (code, body) = ferry.get("/readyz").unwrap();
    assert_eq!(code, 503, "not ready while the source is down: {body}");
    assert!(ferry.logs().contains("late-east"), "logs name the unreachable cluster:\n{}", ferry.logs());
    assert_eq!(ferry.metric("ferry_cluster_up", &[("cluster", "late-east")]), Some(0.0));

    node.start();
    let started = std::time::Instant::now();
    create_topic(&late_source, &topic, 1, &[]).await;
    let records: Vec<Record> = (0..100).map(|seq| Record::numbered(&topic, 0, seq)).collect();
    produce(&producer(&late_source), &topic, 0, &records).await;

    let target_topic = format!("late-east.{topic}");
    wait_for("records from the late source on the target", Duration::from_secs(90), || {
        (end_offset(&env.target, &target_topic, 0) == 100).then_some(())
    })
    .await;
    let replicated: Vec<Record> = read_partition(&env.target, &target_topic, 0).into_iter().map(|(_, r)| r).collect();
    assert_eq!(replicated, records);
    wait_for("ferry ready", Duration::from_secs(30), || (ferry.get("/readyz")?.0 == 200).then_some(())).await;
    report_fault(
        "the source cluster unreachable when ferry starts, then started (until its records are on the target)",
        "at-least-once",
        "0",
        0,
        Recovery::After(started.elapsed()),
    );
}

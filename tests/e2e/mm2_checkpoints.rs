//! MM2-compatible checkpoints: MirrorMaker 2's own `RemoteClusterUtils.translateOffsets`, run from the dev env's
//! jars, reads ferry's checkpoint records and gets ferry's translation.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrormaker_tooling_reads_ferrys_checkpoints() {
    let env = test_env!();
    let topic = unique("mm2ckpt");
    let flow = unique("mm2");
    let group = unique("mm2-reader");
    let state = tempfile::tempdir().unwrap();
    create_topic(&env.source, &topic, 2, &[]).await;
    let producer = producer(&env.source);
    for partition in 0..2 {
        let records: Vec<Record> = (0..50).map(|seq| Record::numbered(&topic, partition, seq)).collect();
        produce(&producer, &topic, partition, &records).await;
    }
    commit(&env.source, &group, &topic, &[20, 35]);
    // Only checkpoints, no offset commits: MM2 tooling is the consumer of this output.
    let extra = format!(
        "    sync_group_offsets: {{ enabled: false, include: ['{group}'], interval: 1s }}\n    emit_mm2_checkpoints: true\n"
    );
    let _ferry = Ferry::start(state.path(), &config(&env, state.path(), &flow, &topic, &extra));
    let target_topic = format!("src.{topic}");
    let expected = format!("{target_topic} 0 20\n{target_topic} 1 35\n");
    let lib = env.kafka_lib.clone();
    let translated = wait_for("MM2's translateOffsets to see ferry's checkpoints", Duration::from_secs(90), || {
        let output = Command::new("java")
            .args(["-Xmx256m", "-cp", &format!("{lib}/*")])
            .arg(repo_root().join("tests/java/Mm2TranslateOffsets.java"))
            .args([&env.target, "src", &group])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        (stdout == expected).then_some(stdout)
    })
    .await;
    assert_eq!(translated, expected);
    assert_eq!(committed(&env.target, &group, &target_topic, 2), [None, None], "sync disabled: nothing committed");
}

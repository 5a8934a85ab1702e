//! What the command line tells scripts and probes: `ferry status` exit codes (0 ok, 3 degraded, 4 partial, 1 the
//! asked member unreachable), `-o json` / `--format json` as one JSON document on stdout for every command that has
//! it, and `ferry version`. Needs no cluster: `status` reads canned `/status` answers from a tiny HTTP server in the
//! test (or the real endpoint served in-process), and translate/failover fall back to a file store's synced offsets
//! when the source does not answer.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::sync::{Arc, RwLock};

use ferry::checkpoint::{Checkpoint, CheckpointStore, FileStore, GroupOffsets, SyncedOffset, TaskKey};
use ferry::ops::http::{BuildInfo, FleetMember, FleetStatus, HttpState, Status, StatusReport};
use ferry::replication::lag::TaskLag;
use ferry::replication::progress::Position;
use serde_json::Value;

/// Answers every HTTP request on `listener` with `body`, one response per connection, until the test process ends.
fn serve(listener: TcpListener, body: String) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // The request is a GET without a body: read up to the blank line ending its headers.
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|read| read == 1) {
                request.push(byte[0]);
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// An address nothing listens on: connections to it are refused.
fn refused() -> SocketAddr {
    listener().local_addr().unwrap()
}

fn ferry(args: &[&str]) -> (Output, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// `ferry status --url url` and `extra` arguments: its exit code, stdout and stderr.
fn status(url: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let (output, stdout, stderr) = ferry(&[&["status", "--url", url][..], extra].concat());
    (output.status.code(), stdout, stderr)
}

/// The READY column of member `id` in the member table of `status`'s text.
fn ready_column<'a>(stdout: &'a str, id: &str) -> &'a str {
    let row = stdout.lines().find(|line| line.starts_with(&format!("{id} "))).unwrap_or_else(|| panic!("{stdout}"));
    // LEADER is empty except on the leader, so READY counts from the end: READY VERSION.
    let columns: Vec<&str> = row.split_whitespace().collect();
    columns[columns.len() - 2]
}

fn task(topic: &str, partition: i32, lag: i64, pause_reason: Option<&str>) -> TaskLag {
    TaskLag {
        flow: "east-to-west".to_owned(),
        topic: topic.to_owned(),
        partition,
        next_source_offset: 100,
        source_end_offset: Some(100 + lag),
        lag_records: Some(lag),
        lag_seconds: 0.5,
        paused: pause_reason.is_some(),
        pause_reason: pause_reason.map(str::to_owned),
    }
}

/// A member's `/status` body, as the member's own types serialize it.
fn status_body(ready: bool, tasks: Vec<TaskLag>, fleet: Option<FleetStatus>) -> String {
    let not_ready_reason = (!ready).then(|| "cluster us-east: all brokers down".to_owned());
    let status = Status { ready, not_ready_reason, tasks, fleet };
    serde_json::to_string(&StatusReport { status, build: Some(BuildInfo::current()) }).unwrap()
}

/// A lone member (file store, no fleet) answering with `tasks`; its address.
fn lone_member(ready: bool, tasks: Vec<TaskLag>) -> String {
    let listener = listener();
    let address = listener.local_addr().unwrap();
    serve(listener, status_body(ready, tasks, None));
    format!("http://{address}")
}

/// A member of a fleet: whether it is ready and its tasks, or `None` when it refuses connections.
type Answer = Option<(bool, Vec<TaskLag>)>;

/// A fleet of members `m0` (the leader, the one asked), `m1`, ..., each listing all of them and answering its
/// own; returns m0's address.
fn fleet(answers: Vec<Answer>) -> String {
    let listeners: Vec<Option<TcpListener>> =
        answers.iter().map(|answer| answer.as_ref().map(|_| listener())).collect();
    let members: Vec<FleetMember> = listeners
        .iter()
        .enumerate()
        .map(|(i, listener)| FleetMember {
            id: format!("m{i}"),
            // Members advertise host:port, without a scheme.
            http: listener.as_ref().map_or_else(refused, |listener| listener.local_addr().unwrap()).to_string(),
            assigned_tasks: 2,
        })
        .collect();
    let asked = format!("http://{}", members[0].http);
    for (i, (listener, answer)) in listeners.into_iter().zip(answers).enumerate() {
        let (Some(listener), Some((ready, tasks))) = (listener, answer) else { continue };
        let fleet = FleetStatus { member: format!("m{i}"), leader: Some("m0".to_owned()), members: members.clone() };
        serve(listener, status_body(ready, tasks, Some(fleet)));
    }
    asked
}

fn healthy(topic: &str) -> Answer {
    Some((true, vec![task(topic, 0, 3, None), task(topic, 1, 4, None)]))
}

#[test]
fn a_healthy_fleet_exits_0_with_every_members_lag() {
    let url = fleet(vec![healthy("orders"), healthy("orders"), healthy("payments")]);
    let (code, stdout, stderr) = status(&url, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stderr, "");
    assert!(stdout.starts_with("ready: yes\n"), "{stdout}");
    assert!(stdout.contains(&format!("build: {} (commit ", env!("CARGO_PKG_VERSION"))), "{stdout}");
    let rows: Vec<Vec<&str>> = stdout.lines().map(|line| line.split_whitespace().collect()).collect();
    let member = |id: &str| rows.iter().find(|row| row.first() == Some(&id)).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(member("m0")[2..6], ["2", "*", "yes", env!("CARGO_PKG_VERSION")], "{stdout}");
    assert_eq!(member("m2")[2..5], ["2", "yes", env!("CARGO_PKG_VERSION")], "{stdout}");
    // FLOW TOPIC TASKS PAUSED LAG_RECORDS: orders from m0 and m1, payments from m2.
    let topic = |name: &str| rows.iter().find(|row| row.get(1) == Some(&name)).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(topic("orders")[2..5], ["4", "0", "14"], "{stdout}");
    assert_eq!(topic("payments")[2..5], ["2", "0", "7"], "{stdout}");
    assert!(!stdout.contains("partial"), "{stdout}");
}

#[test]
fn a_paused_task_exits_3_and_is_named() {
    let url =
        lone_member(true, vec![task("orders", 0, 0, None), task("orders", 1, 9, Some("target refused: too large"))]);
    let (code, stdout, stderr) = status(&url, &[]);
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert!(stdout.starts_with("ready: yes\n"), "{stdout}");
    assert!(stderr.contains("1 task(s) paused: east-to-west/orders/1 (target refused: too large)"), "{stderr}");
}

#[test]
fn a_member_not_ready_exits_3_and_is_named() {
    let url = fleet(vec![healthy("orders"), Some((false, Vec::new())), healthy("orders")]);
    let (code, stdout, stderr) = status(&url, &[]);
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert_eq!(ready_column(&stdout, "m1"), "no", "{stdout}");
    assert!(stderr.contains("m1 is not ready (cluster us-east: all brokers down)"), "{stderr}");
    assert!(!stderr.contains("partial"), "{stderr}");

    // The asked member itself, alone.
    let url = lone_member(false, Vec::new());
    let (code, stdout, stderr) = status(&url, &[]);
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert!(stdout.starts_with("ready: no (cluster us-east: all brokers down)\n"), "{stdout}");
    assert!(stderr.contains(&format!("{url} is not ready (cluster us-east: all brokers down)")), "{stderr}");
}

#[test]
fn an_unreachable_member_exits_4_and_says_the_totals_are_partial() {
    // m1 also has a paused task: partial outranks degraded, and both are said.
    let paused = Some((true, vec![task("orders", 2, 1, Some("waiting"))]));
    let url = fleet(vec![healthy("orders"), paused, None]);
    let (code, stdout, stderr) = status(&url, &[]);
    assert_eq!(code, Some(4), "{stdout}{stderr}");
    assert_eq!(ready_column(&stdout, "m2"), "unreachable", "{stdout}");
    assert!(stdout.contains("fleet totals are partial"), "{stdout}");
    assert!(stderr.contains("fleet totals are partial: 1 of 3 members could not be reached: m2 ("), "{stderr}");
    assert!(stderr.contains("Connection refused") || stderr.contains("connection refused"), "{stderr}");
    assert!(stderr.contains("1 task(s) paused"), "{stderr}");
    let orders = stdout.lines().find(|line| line.contains(" orders ")).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(orders.split_whitespace().collect::<Vec<_>>()[2..4], ["3", "1"], "m0's and m1's tasks: {stdout}");
}

#[test]
fn an_unreachable_asked_member_is_a_runtime_failure() {
    let url = format!("http://{}", refused());
    let (code, stdout, stderr) = status(&url, &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains(&format!("cannot reach ferry at {url}/status")), "{stderr}");
}

#[test]
fn status_json_is_one_document_with_the_verdict() {
    let url = fleet(vec![healthy("orders"), Some((true, vec![task("orders", 2, 1, Some("waiting"))])), None]);
    for flag in [&["-o", "json"][..], &["--format", "json"][..], &["--format=json"][..]] {
        let (code, stdout, stderr) = status(&url, flag);
        assert_eq!(code, Some(4), "{flag:?}: {stderr}");
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{flag:?}: {error}: {stdout}"));
        assert_eq!(report["health"], "partial");
        assert_eq!(report["member"], "m0");
        assert_eq!(report["leader"], "m0");
        assert_eq!(report["build"]["version"], env!("CARGO_PKG_VERSION"));
        let members = report["members"].as_array().unwrap();
        assert_eq!(
            members.iter().map(|member| member["ready"].clone()).collect::<Vec<_>>(),
            [true.into(), true.into(), Value::Null]
        );
        assert!(members[2]["error"].as_str().is_some_and(|error| error.contains("cannot reach")), "{stdout}");
        assert_eq!(report["topics"][0]["tasks"], 3);
        assert_eq!(report["topics"][0]["paused"], 1);
        assert_eq!(report["tasks"].as_array().unwrap().len(), 3);
        assert!(stderr.contains("fleet totals are partial"), "{stderr}");
    }
    let (code, stdout, _) = status(&fleet(vec![healthy("orders")]), &["-o", "json"]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["health"], "ok");
}

#[test]
fn status_reads_a_member_that_predates_the_build_field() {
    let listener = listener();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let body = r#"{"ready":true,"not_ready_reason":null,"tasks":[{"flow":"f","topic":"t","partition":0,
        "next_source_offset":5,"source_end_offset":5,"lag_records":0,"lag_seconds":0.0,"paused":false}]}"#;
    serve(listener, body.to_owned());
    let (code, stdout, stderr) = status(&url, &["-o", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["build"], Value::Null);
    assert_eq!(report["topics"][0]["lag_records"], 0);
}

/// The real endpoint, served in-process: `/status` carries the build, `ferry_build_info` its labels, and
/// `ferry status` reads both the verdict and the build from it.
#[tokio::test(flavor = "multi_thread")]
async fn the_real_endpoint_carries_the_build() {
    let metrics = ferry::ops::metrics::Metrics::new(false);
    let shared = Arc::new(RwLock::new(Status { ready: true, ..Status::default() }));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let state = HttpState { metrics, status: shared.clone() };
    let (address, server) =
        ferry::ops::http::serve("127.0.0.1:0".parse().unwrap(), state, shutdown.clone()).await.unwrap();
    let url = format!("http://{address}");
    let build = BuildInfo::current();

    let get = |path: &str| ureq::get(&format!("{url}{path}")).call().unwrap().into_string().unwrap();
    let body = tokio::task::block_in_place(|| get("/status"));
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["build"], serde_json::to_value(&build).unwrap(), "{body}");
    let exposition = tokio::task::block_in_place(|| get("/metrics"));
    let series = format!(
        "ferry_build_info{{commit=\"{}\",librdkafka=\"{}\",version=\"{}\"}} 1",
        build.commit, build.librdkafka, build.version
    );
    assert!(exposition.contains(&series), "{series} not in:\n{exposition}");

    let (code, stdout, stderr) = tokio::task::block_in_place(|| status(&url, &[]));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout
            .contains(&format!("build: {} (commit {}, librdkafka {})", build.version, build.commit, build.librdkafka)),
        "{stdout}"
    );
    shared.write().unwrap().ready = false;
    let (code, _, stderr) = tokio::task::block_in_place(|| status(&url, &[]));
    assert_eq!(code, Some(3), "{stderr}");
    shutdown.cancel();
    server.await.unwrap();
}

#[test]
fn version_prints_cargo_version_git_commit_and_librdkafka() {
    let (output, stdout, stderr) = ferry(&["version"]);
    assert!(output.status.success(), "{stderr}");
    let commit = expected_commit();
    let librdkafka = rdkafka::util::get_rdkafka_version().1;
    assert_eq!(stdout, format!("ferry {}\ncommit: {commit}\nlibrdkafka: {librdkafka}\n", cargo_toml_version()));

    let (output, stdout, stderr) = ferry(&["version", "-o", "json"]);
    assert!(output.status.success(), "{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({ "version": cargo_toml_version(), "commit": commit, "librdkafka": librdkafka })
    );
}

/// The `version` line of Cargo.toml's `[package]`, read from the file rather than from cargo's variables.
fn cargo_toml_version() -> String {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let line = manifest.lines().find(|line| line.starts_with("version = ")).unwrap();
    line.trim_start_matches("version = ").trim_matches('"').to_owned()
}

/// The commit build.rs should have stamped: `FERRY_GIT_COMMIT` when the build set it, HEAD in a git checkout,
/// `unknown` otherwise.
fn expected_commit() -> String {
    if let Ok(commit) = std::env::var("FERRY_GIT_COMMIT") {
        return commit;
    }
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success());
    match head {
        Some(output) => {
            let commit = String::from_utf8(output.stdout).unwrap().trim().to_owned();
            assert!(commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()), "{commit}");
            commit
        }
        None => "unknown".to_owned(),
    }
}

/// A config whose clusters do not answer, with a file store at `state` holding one checkpoint of flow
/// east-to-west and group g's synced offsets: translate and failover fall back to those after the source's
/// request timeout.
fn synced_store(dir: &std::path::Path) -> std::path::PathBuf {
    let state = dir.join("state");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = FileStore::open(&state).unwrap();
        let key = TaskKey { topic: "orders".to_owned(), partition: 0 };
        let checkpoint = Checkpoint { position: Position::starting_at(0), written_at_ms: 1 };
        store.save("east-to-west", &[(key, checkpoint)]).await.unwrap();
        let synced = SyncedOffset {
            topic: "orders".to_owned(),
            partition: 0,
            source_offset: 40,
            target_offset: 38,
            not_yet_replicated: 2,
            may_redeliver: 0,
        };
        let offsets = GroupOffsets { synced_at_ms: ferry::clock::now_ms() - 60_000, partitions: vec![synced] };
        store.save_group_offsets("east-to-west", "g", &offsets).await.unwrap();
    });
    let config = format!(
        "clusters:\n  us-east: {{ bootstrap_servers: \"{}\" }}\n  eu-west: {{ bootstrap_servers: \"{}\" }}\n\
         checkpoint: {{ store: file, path: {} }}\n\
         flows:\n  - {{ name: east-to-west, source: us-east, target: eu-west, topics: {{ include: [orders] }} }}\n",
        refused(),
        refused(),
        state.display()
    );
    let path = dir.join("ferry.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn translate_and_failover_json_are_one_document_each() {
    let dir = tempfile::tempdir().unwrap();
    let config = synced_store(dir.path());
    let config = config.to_str().unwrap();
    let group = ["--config", config, "--flow", "east-to-west", "--group", "g"];
    // Both wait out the source's request timeout: side by side.
    let translate = std::thread::spawn({
        let args =
            [&["translate"][..], &group, &["-o", "json"]].concat().iter().map(|s| s.to_string()).collect::<Vec<_>>();
        move || ferry(&args.iter().map(String::as_str).collect::<Vec<_>>())
    });
    let (output, stdout, stderr) = ferry(&[&["failover"][..], &group, &["--dry-run", "--format", "json"]].concat());
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let failover: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"));
    assert_eq!(failover["flow"], "east-to-west");
    assert_eq!(failover["group"], "g");
    assert_eq!(failover["dry_run"], true);
    assert_eq!(failover["committed"], Value::Null);
    assert!(failover["synced_at_ms"].is_i64(), "{stdout}");
    assert_eq!(failover["rows"][0]["target_offset"], 38, "{stdout}");

    let (output, stdout, stderr) = translate.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    // An array of rows, as scripts read it; the note that the offsets are synced ones goes to stderr.
    let rows: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"));
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{stdout}");
    assert_eq!(rows[0]["source_offset"], 40);
    // At least the 60 s the store says, plus however long the source took to time out.
    let age = stderr
        .lines()
        .find_map(|line| line.strip_prefix("note: source cluster unreachable: using the group offsets ferry synced "))
        .and_then(|rest| rest.split_once(" s ago"))
        .and_then(|(age, _)| age.parse::<u64>().ok());
    assert!(age.is_some_and(|age| age >= 60), "{stderr}");
}

#[test]
fn every_command_with_output_takes_the_same_flag() {
    // plan and failback need clusters that answer; that they accept the flag shows as reaching the config check
    // (exit 2 naming the key path) instead of clap refusing the argument.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, "clusters: {}\nflows: []\ntagret: x\n").unwrap();
    let config = config.to_str().unwrap();
    let group = ["--config", config, "--flow", "f", "--group", "g"];
    for command in [
        &["plan", "--config", config][..],
        &[&["translate"][..], &group].concat(),
        &[&["failover"][..], &group].concat(),
        &[&["failback"][..], &group].concat(),
    ] {
        for flag in [&["-o", "json"][..], &["--format", "json"], &["-o", "text"], &["--format", "table"]] {
            let (output, stdout, stderr) = ferry(&[command, flag].concat());
            assert_eq!(output.status.code(), Some(2), "{command:?} {flag:?}: {stderr}");
            assert!(stderr.contains("tagret"), "{command:?} {flag:?}: {stderr}");
            assert_eq!(stdout, "", "{command:?} {flag:?}");
        }
        let (output, _, stderr) = ferry(&[command, &["-o", "yaml"]].concat());
        assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
        assert!(
            stderr.contains("invalid value 'yaml'") && stderr.contains("[possible values: text, json]"),
            "{stderr}"
        );
    }
    for command in ["status", "version"] {
        let (output, stdout, _) = ferry(&[command, "--help"]);
        assert!(output.status.success());
        assert!(stdout.contains("-o, --format <FORMAT>"), "{command}: {stdout}");
    }
}

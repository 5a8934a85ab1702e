//! Tiny runs of `scripts/bench` against the shared test environment, so the benchmark script cannot rot.
//!
//! They assert only that the script runs the replicators to the end and writes a well-formed table and JSON report;
//! never anything about performance (docs/benchmarks.md has the real numbers).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const REPLICATORS: [&str; 3] = ["ferry", "mm2", "raw"];

#[macro_use]
#[path = "support/dev_env.rs"]
mod dev_env;

/// Runs `scripts/bench` with the tiny settings and `args` into `out`; the table's lines and the JSON report.
fn run_bench(args: &[&str], out: &Path) -> (String, serde_json::Value) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench");
    let mut child = Command::new(script)
        .args(["--records", "5000", "--sizes", "100", "--partitions", "2"])
        .args(["--latency-rate", "1000", "--latency-seconds", "2", "--drain-timeout", "150", "--debug"])
        .args(["--ferry-bin", env!("CARGO_BIN_EXE_ferry")])
        .args(args)
        .arg("--out")
        .arg(out)
        .spawn()
        .expect("scripts/bench starts");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // SIGTERM lets the script stop the replicators (and the proxy and cluster) it started.
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
            panic!("scripts/bench did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "scripts/bench failed: {status}");
    let table = std::fs::read_to_string(out.join("bench.txt")).expect("bench.txt written");
    let json = serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).expect("bench.json written"))
        .expect("bench.json is JSON");
    (table, json)
}

/// Every result stopped cleanly and has the drain's and the latency phase's figures.
fn assert_complete(result: &serde_json::Value, replicator: &str) {
    assert_eq!(result["replicator"], replicator);
    assert_eq!(result["clean_exit"], true, "{replicator} stopped cleanly: {result:#}");
    for key in ["records_per_second", "mb_per_second", "peak_rss_mib", "drain_seconds"] {
        assert!(result[key].as_f64().is_some_and(|v| v > 0.0), "{replicator} {key}: {result:#}");
    }
    // A tiny drain may take less CPU than the kernel's 10 ms accounting tick.
    assert!(result["cpu_seconds_per_million"].as_f64().is_some_and(|v| v >= 0.0), "{replicator}: {result:#}");
    assert_eq!(result["latency_records"], 2000, "{replicator}: {result:#}");
    // The split into source part and hop needs records paired across the clusters (-1 if none were).
    for key in ["p99_ms", "source_p99_ms", "hop_p99_ms"] {
        assert!(result[key].as_i64().is_some_and(|v| v >= 0), "{replicator} {key}: {result:#}");
    }
    assert!(result["load_1m"].as_f64().is_some(), "{replicator}: {result:#}");
}

#[test]
fn the_benchmark_script_runs_every_replicator_and_writes_a_well_formed_table() {
    dev_env_vars!("FERRY_TEST_SOURCE_BOOTSTRAP", "FERRY_TEST_TARGET_BOOTSTRAP", "FERRY_TEST_KAFKA_LIB");
    let out = tempfile::tempdir().unwrap();
    let (table, json) = run_bench(&[], out.path());
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(header[..4], ["REPLICATOR", "SIZE", "RECORDS", "CODEC"], "{table}");
    for (line, replicator) in lines[2..5].iter().zip(REPLICATORS) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), header.len(), "row {line:?} of\n{table}");
        assert_eq!(cells[..4], [replicator, "100B", "5000", "none"], "{table}");
    }
    assert!(table.contains("ferry/MM2 records per CPU-second"), "{table}");
    assert!(table.contains("ferry/raw records per second"), "{table}");
    assert!(table.contains("| load "), "a verdict line shows the load average:\n{table}");

    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{json:#}");
    for (result, replicator) in results.iter().zip(REPLICATORS) {
        assert_complete(result, replicator);
    }
    assert!(json["ratios"][0]["ferry_mm2_records_per_cpu_second"].as_f64().is_some(), "{json:#}");
}

/// `--compression` and `--wan` together: an lz4 source, the target behind Toxiproxy, each replicator at 0 ms and at
/// 20 ms (MM2 left out: its JVM start would double the test's time).
#[test]
fn the_benchmark_script_runs_a_compressed_source_over_a_long_link() {
    dev_env_vars!("FERRY_TEST_SOURCE_BOOTSTRAP", "FERRY_TEST_TARGET_BOOTSTRAP", "FERRY_TEST_KAFKA_LIB");
    let out = tempfile::tempdir().unwrap();
    let (table, json) = run_bench(&["--compression", "lz4", "--wan", "20", "--replicators", "ferry,raw"], out.path());
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(header[..5], ["REPLICATOR", "SIZE", "RECORDS", "CODEC", "RTT_MS"], "{table}");
    let expected = [("ferry", "0"), ("raw", "0"), ("ferry", "20"), ("raw", "20")];
    for (line, (replicator, rtt)) in lines[2..6].iter().zip(expected) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), header.len(), "row {line:?} of\n{table}");
        assert_eq!(cells[..5], [replicator, "100B", "5000", "lz4", rtt], "{table}");
    }
    assert!(table.contains("ratios, 100 B records, lz4, RTT 20 ms"), "{table}");
    assert!(table.contains("ferry records/s, this RTT / 0 ms"), "{table}");

    assert_eq!(json["meta"]["payload"], "text", "a compressed run defaults to compressible values: {json:#}");
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "{json:#}");
    for (result, (replicator, rtt)) in results.iter().zip(expected) {
        assert_complete(result, replicator);
        assert_eq!(result["codec"], "lz4", "{result:#}");
        assert_eq!(result["rtt_ms"].to_string(), rtt, "{result:#}");
    }
    let at_20 = json["ratios"].as_array().unwrap().iter().find(|entry| entry["rtt_ms"] == 20).expect("RTT 20 ratios");
    assert!(at_20["raw_loopback_records_per_second"].as_f64().is_some(), "{json:#}");
}

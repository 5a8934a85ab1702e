//! A tiny run of `scripts/bench` against the shared test environment, so the benchmark script cannot rot.
//!
//! It asserts only that the script runs ferry, MirrorMaker 2 and the raw pipe to the end and writes a well-formed
//! table and JSON report; never anything about performance (docs/benchmarks.md has the real numbers).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const REPLICATORS: [&str; 3] = ["ferry", "mm2", "raw"];

#[macro_use]
#[path = "support/dev_env.rs"]
mod dev_env;

#[test]
fn the_benchmark_script_runs_every_replicator_and_writes_a_well_formed_table() {
    dev_env_vars!("FERRY_TEST_SOURCE_BOOTSTRAP", "FERRY_TEST_TARGET_BOOTSTRAP", "FERRY_TEST_KAFKA_LIB");
    let out = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench");
    let mut child = Command::new(script)
        .args(["--records", "5000", "--sizes", "100", "--partitions", "2"])
        .args(["--latency-rate", "1000", "--latency-seconds", "2", "--drain-timeout", "150", "--debug"])
        .args(["--ferry-bin", env!("CARGO_BIN_EXE_ferry")])
        .arg("--out")
        .arg(out.path())
        .spawn()
        .expect("scripts/bench starts");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // SIGTERM lets the script stop the replicators it started.
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
            panic!("scripts/bench did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "scripts/bench failed: {status}");

    let table = std::fs::read_to_string(out.path().join("bench.txt")).expect("bench.txt written");
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(header[..3], ["REPLICATOR", "SIZE", "RECORDS"], "{table}");
    for (line, replicator) in lines[2..5].iter().zip(REPLICATORS) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), header.len(), "row {line:?} of\n{table}");
        assert_eq!(cells[..3], [replicator, "100B", "5000"], "{table}");
    }
    assert!(table.contains("ferry/MM2 records per CPU-second"), "{table}");
    assert!(table.contains("ferry/raw records per second"), "{table}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("bench.json")).expect("bench.json written"))
            .expect("bench.json is JSON");
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{json:#}");
    for (result, replicator) in results.iter().zip(REPLICATORS) {
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
    }
    assert!(json["ratios"][0]["ferry_mm2_records_per_cpu_second"].as_f64().is_some(), "{json:#}");
}

//! promtool (Debian package `prometheus`, installed by `scripts/install-deps`) for the tests that check Prometheus
//! rules: the chart's rendered PrometheusRule and the dashboard's queries.

use std::process::Command;

/// `promtool check rules` on the text of a rules file; Err holds promtool's report when it refuses them.
pub fn check_rules(rules: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, rules).expect("write the rules file");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("promtool is required (Debian package prometheus, scripts/install-deps): {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

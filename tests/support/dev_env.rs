//! Whether the test environment (`scripts/dev-env up`: two real Kafka clusters and etcd) is there, shared by every
//! test binary that needs it.
//!
//! Invariant: a test that needs the environment either gets every variable it asks for, or is skipped with one line
//! on stderr saying how to start it; under `FERRY_TEST_REQUIRE_ENV=1` (set by `scripts/test`, so CI can never pass
//! by skipping) a missing variable fails the test instead.

use std::io::Write;

/// The hint every message about a missing environment gives.
const HOW_TO_START: &str = "start it with `eval \"$(scripts/dev-env up)\"`, or run the whole suite with `scripts/test`";

/// The variables' values, or `None` after saying on stderr that `test` is skipped.
pub fn vars<const N: usize>(test: &str, names: [&str; N]) -> Option<[String; N]> {
    let missing: Vec<&str> =
        names.iter().copied().filter(|name| std::env::var(name).map_or(true, |v| v.is_empty())).collect();
    if missing.is_empty() {
        return Some(names.map(|name| std::env::var(name).unwrap()));
    }
    let what = format!("{} not set: the test environment is not up; {HOW_TO_START}", missing.join(", "));
    if std::env::var_os("FERRY_TEST_REQUIRE_ENV").is_some_and(|v| v == "1") {
        panic!("{test}: {what} (FERRY_TEST_REQUIRE_ENV=1: a missing environment is a failure)");
    }
    // Straight to stderr: the test harness captures `eprintln!` of passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {what}");
    None
}

/// The values of the named variables, or returns from the calling test after saying it is skipped.
#[allow(unused_macros)]
macro_rules! dev_env_vars {
    ($($name:expr),+ $(,)?) => {
        match crate::dev_env::vars(
            std::thread::current().name().unwrap_or("a test"),
            [$($name),+],
        ) {
            Some(values) => values,
            None => return,
        }
    };
}

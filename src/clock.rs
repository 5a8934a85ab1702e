//! Wall-clock time as Kafka and ferry's records carry it: milliseconds since the Unix epoch.
//!
//! Invariant: never used to measure durations (that is `tokio::time::Instant`'s job); only to stamp and compare with
//! record timestamps and stored times, which are wall-clock by nature.

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

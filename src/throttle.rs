//! Bandwidth throttles: byte-rate budgets per region pair, one more readiness gate before a task produces.
//!
//! Invariant: a throttle delays records, it never drops them; a record larger than the burst is paced through
//! in burst-sized slices.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A byte-rate limit shared by every task of one region pair on this member. Its rate can change while tasks wait
/// on it: with coordination the controller hands each member a share of the fleet-wide budget, and a config
/// reload may change the budget itself.
#[derive(Debug)]
pub struct Throttle {
    limiter: RwLock<Arc<Limiter>>,
    wait_seconds: prometheus::Counter,
}

#[derive(Debug)]
struct Limiter {
    limiter: DefaultDirectRateLimiter,
    burst: NonZeroU32,
    bytes_per_second: u64,
}

impl Limiter {
    fn new(bytes_per_second: u64) -> Self {
        let rate = u32::try_from(bytes_per_second.max(1)).unwrap_or(u32::MAX);
        // A tenth of a second of budget: smooth enough to hold the rate over short windows, large enough that
        // ordinary batches need one permit.
        let burst = NonZeroU32::new((rate / 10).max(16 * 1024).min(rate)).unwrap_or(NonZeroU32::MIN);
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(burst));
        Self { limiter, burst, bytes_per_second }
    }
}

impl Throttle {
    /// A throttle of `bytes_per_second` (at least 1), counting its waits in `wait_seconds`.
    pub fn new(bytes_per_second: u64, wait_seconds: prometheus::Counter) -> Self {
        Self { limiter: RwLock::new(Arc::new(Limiter::new(bytes_per_second))), wait_seconds }
    }

    /// The current rate.
    pub fn bytes_per_second(&self) -> u64 {
        self.current().bytes_per_second
    }

    /// Changes the rate; waits already in progress finish at the old rate (at most one burst), later ones use the
    /// new one.
    pub fn set_rate(&self, bytes_per_second: u64) {
        if self.bytes_per_second() == bytes_per_second.max(1) {
            return;
        }
        *self.limiter.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Arc::new(Limiter::new(bytes_per_second));
    }

    fn current(&self) -> Arc<Limiter> {
        self.limiter.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: usize) {
        let started = Instant::now();
        let mut remaining = u32::try_from(bytes).unwrap_or(u32::MAX);
        loop {
            // Re-read per slice so a new rate applies to a large record already waiting.
            let limiter = self.current();
            let Some(slice) = NonZeroU32::new(remaining.min(limiter.burst.get())) else { break };
            // A slice never exceeds the burst, so the limiter cannot answer InsufficientCapacity.
            let _ = limiter.limiter.until_n_ready(slice).await;
            remaining -= slice.get();
        }
        self.wait_seconds.inc_by(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_bytes_to_the_rate_and_passes_records_larger_than_the_burst() {
        let counter = prometheus::Counter::new("wait", "wait").unwrap();
        let throttle = Throttle::new(1024 * 1024, counter.clone());
        let started = Instant::now();
        // The first burst (~100 KiB) is free; the remaining ~400 KiB must take ~0.4 s at 1 MiB/s.
        throttle.acquire(500 * 1024).await;
        let elapsed = started.elapsed().as_secs_f64();
        assert!(elapsed > 0.3, "500 KiB at 1 MiB/s passed in {elapsed:.3}s");
        assert!(counter.get() > 0.3);
    }

    #[tokio::test]
    async fn a_new_rate_applies_to_the_next_acquire() {
        let counter = prometheus::Counter::new("wait", "wait").unwrap();
        let throttle = Throttle::new(64 * 1024, counter);
        throttle.set_rate(10 * 1024 * 1024);
        assert_eq!(throttle.bytes_per_second(), 10 * 1024 * 1024);
        let started = Instant::now();
        // At the old 64 KiB/s this would take over 6 s; at 10 MiB/s well under one.
        throttle.acquire(500 * 1024).await;
        assert!(started.elapsed().as_secs_f64() < 1.0);
    }
}

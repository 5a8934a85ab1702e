//! Bandwidth throttles: byte-rate budgets per region pair, one more readiness gate before a task produces.
//!
//! Invariant: a throttle delays records, it never drops them; a record larger than the burst is paced through
//! in burst-sized slices.
//!
//! The rate limiter runs on tokio's clock: a budget that is not binding costs one synchronous check per record (no
//! timer), a wait is a tokio sleep, and tests pace records on paused time.

use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::ops::metrics::ThrottleMetrics;

/// governor's view of tokio's clock.
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

/// A tokio instant as governor measures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TokioInstant(Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    fn add(self, duration: Nanos) -> Self {
        TokioInstant(self.0 + Duration::from(duration))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        self.0.checked_sub(duration.into()).map_or(*self, TokioInstant)
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

type TokioRateLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// A byte-rate limit shared by every task of one region pair on this member. Its rate can change while tasks wait
/// on it: with coordination the controller hands each member a share of the fleet-wide budget, and a config
/// reload may change the budget itself.
#[derive(Debug)]
pub struct Throttle {
    limiter: RwLock<Arc<Limiter>>,
    metrics: ThrottleMetrics,
}

#[derive(Debug)]
struct Limiter {
    limiter: TokioRateLimiter,
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
        let limiter = RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), TokioClock);
        Self { limiter, burst, bytes_per_second }
    }
}

impl Throttle {
    /// A throttle of `bytes_per_second` (at least 1), publishing its rate and counting its waits in `metrics`.
    pub fn new(bytes_per_second: u64, metrics: ThrottleMetrics) -> Self {
        let limiter = Limiter::new(bytes_per_second);
        metrics.rate_bytes.set(i64::try_from(limiter.bytes_per_second).unwrap_or(i64::MAX));
        Self { limiter: RwLock::new(Arc::new(limiter)), metrics }
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
        let limiter = Limiter::new(bytes_per_second);
        self.metrics.rate_bytes.set(i64::try_from(limiter.bytes_per_second).unwrap_or(i64::MAX));
        *self.limiter.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(limiter);
    }

    fn current(&self) -> Arc<Limiter> {
        self.limiter.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: usize) {
        let mut remaining = u32::try_from(bytes).unwrap_or(u32::MAX);
        let mut waited = Duration::ZERO;
        loop {
            // Re-read per slice so a new rate applies to a large record already waiting.
            let limiter = self.current();
            let Some(slice) = NonZeroU32::new(remaining.min(limiter.burst.get())) else { break };
            match limiter.limiter.check_n(slice) {
                Ok(Ok(())) => remaining -= slice.get(),
                Ok(Err(not_until)) => {
                    let asleep = Instant::now();
                    tokio::time::sleep(not_until.wait_time_from(TokioInstant(asleep))).await;
                    waited += asleep.elapsed();
                }
                // A slice never exceeds the burst.
                Err(_) => unreachable!("a slice of at most the burst always fits the quota"),
            }
        }
        if !waited.is_zero() {
            self.metrics.wait_seconds.inc_by(waited.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_test::task::spawn;
    use tokio_test::{assert_pending, assert_ready};

    use super::*;

    fn throttle(bytes_per_second: u64) -> (Throttle, prometheus::Counter) {
        let metrics = crate::ops::metrics::Metrics::new(false).throttle("a", "b");
        let waited = metrics.wait_seconds.clone();
        (Throttle::new(bytes_per_second, metrics), waited)
    }

    #[tokio::test(start_paused = true)]
    async fn paces_bytes_to_the_rate_and_passes_records_larger_than_the_burst() {
        let (throttle, waited) = throttle(1024 * 1024);
        // Paused time advances exactly to each wake-up. The first burst (102.4 KiB, a tenth of a second) is free;
        // the remaining 397.6 KiB take 0.388 s at 1 MiB/s.
        let started = Instant::now();
        throttle.acquire(500 * 1024).await;
        let elapsed = started.elapsed().as_secs_f64();
        assert!((0.385..=0.392).contains(&elapsed), "500 KiB at 1 MiB/s passed in {elapsed:.4} s");
        assert!((waited.get() - elapsed).abs() < 1e-6, "counted {} s of waiting for {elapsed} s", waited.get());
    }

    #[tokio::test(start_paused = true)]
    async fn within_the_budget_nothing_waits() {
        let (throttle, waited) = throttle(1024 * 1024);
        let mut acquire = spawn(throttle.acquire(50 * 1024));
        assert_ready!(acquire.poll());
        assert_eq!(waited.get(), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_to_a_record_already_waiting() {
        let (throttle, _) = throttle(64 * 1024);
        // At 64 KiB/s (bursts of 16 KiB) 500 KiB take 7.6 s. The first slice passes, the second waits 0.25 s;
        // the rate rises to 10 MiB/s meanwhile, and the rest passes as soon as that wait ends.
        let mut acquire = spawn(throttle.acquire(500 * 1024));
        assert_pending!(acquire.poll());
        throttle.set_rate(10 * 1024 * 1024);
        assert_eq!(throttle.bytes_per_second(), 10 * 1024 * 1024);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_pending!(acquire.poll(), "the wait in progress ends at the old rate");
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_ready!(acquire.poll(), "the rest did not pass at the new rate");
    }
}

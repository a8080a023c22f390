//! Admission control for connect storms: a push notification can send tens
//! of thousands of readers to one node within seconds. WebSocket handshakes
//! past `max-handshakes-per-second` (with `handshake-burst` saved up) are
//! answered 503 with `Retry-After`, so the node stays responsive for the
//! readers it already has. The limiter is `governor`'s direct GCRA limiter:
//! one atomic, correct under concurrency, nothing per client.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// The default `max-handshakes-per-second`.
pub const DEFAULT_HANDSHAKES_PER_SECOND: u32 = 5000;
/// The default `handshake-burst`: DESIGN's storm of 10,000 connections at
/// once is admitted whole.
pub const DEFAULT_HANDSHAKE_BURST: u32 = 10_000;

/// Admits WebSocket handshakes at a bounded rate (`None`: no limit).
#[derive(Debug)]
pub struct HandshakeLimiter {
    limiter: Option<DefaultDirectRateLimiter>,
}

impl HandshakeLimiter {
    /// `per_second` handshakes a second on average, `burst` at once; a
    /// `per_second` of 0 admits every handshake.
    pub fn new(per_second: u32, burst: u32) -> HandshakeLimiter {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        HandshakeLimiter { limiter }
    }

    /// Takes one handshake's place, or says how long until one is free.
    pub fn check(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// `Retry-After` seconds for a wait: whole seconds, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = HandshakeLimiter::new(1, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check(), Ok(()));
        }
        let wait = limiter.check().unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(HandshakeLimiter::new(0, 0).check().is_ok());
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(300)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), 2);
    }
}

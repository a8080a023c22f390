//! Dialling a subscribed connection and timing it: the one way every
//! scenario opens a connection (the checking subscribers, the storm, the
//! churn), so each reports its setups the same way.

use super::lock;
use crate::conn::{Dialer, Session};
use crate::stats::{new_histogram, record_ns, HistData};
use crate::sys::now_ns;
use crate::wire::Failures;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The key under which [`SetupLog::dial_retrying`] counts retries.
pub const RETRIED: &str = "refused with 503, retried";

/// The setups of one group of connections: how long each took, why the
/// others failed, and when the last one ended.
pub struct SetupLog {
    record: Mutex<Record>,
    /// CLOCK_MONOTONIC ns at which the latest setup (ok or not) ended.
    last_done_ns: AtomicU64,
}

struct Record {
    latency: Histogram<u64>,
    failures: Failures,
}

impl SetupLog {
    /// A log of setups that start no earlier than `start_ns`.
    pub fn new(start_ns: u64) -> SetupLog {
        SetupLog {
            record: Mutex::new(Record {
                latency: new_histogram(),
                failures: Failures::new(),
            }),
            last_done_ns: AtomicU64::new(start_ns),
        }
    }

    /// Opens connection `index` of the run, CONNECTs and SUBSCRIBEs to
    /// `destination` with a RECEIPT (all within the dialer's timeout), and
    /// records the time that took or, on failure, its cause.
    pub async fn dial(&self, dialer: &Dialer, index: u64, destination: &str) -> Option<Session> {
        let began = now_ns();
        let result = dialer.open_subscribed(index, destination).await;
        let ended = now_ns();
        self.last_done_ns.fetch_max(ended, Ordering::Relaxed);
        let mut record = lock(&self.record);
        match result {
            Ok(session) => {
                record_ns(&mut record.latency, ended - began);
                Some(session)
            }
            Err(error) => {
                *record.failures.entry(error.cause()).or_default() += 1;
                None
            }
        }
    }

    /// Like [`SetupLog::dial`], but a setup refused with a 503 handshake
    /// (admission control) is tried again after a jittered, doubling backoff
    /// (0.5-1 s, at most 8 s), until `retry_for_ms` after its first try. The
    /// time recorded runs from the first try; each retry is counted under
    /// `"refused with 503, retried"`, apart from the final outcome.
    pub async fn dial_retrying(
        &self,
        dialer: &Dialer,
        index: u64,
        destination: &str,
        retry_for_ms: u64,
    ) -> Option<Session> {
        let began = now_ns();
        let give_up = began + retry_for_ms * 1_000_000;
        let mut backoff_ms = 500u64;
        loop {
            let result = dialer.open_subscribed(index, destination).await;
            let ended = now_ns();
            let refused = matches!(&result, Err(error) if error.cause().contains("503"));
            if refused && ended < give_up {
                *lock(&self.record)
                    .failures
                    .entry(RETRIED.to_owned())
                    .or_default() += 1;
                // Equal jitter: half the backoff, plus up to the other half.
                let jitter = (index.wrapping_mul(2_654_435_761) ^ ended) % (backoff_ms / 2 + 1);
                tokio::time::sleep(std::time::Duration::from_millis(backoff_ms / 2 + jitter)).await;
                backoff_ms = (backoff_ms * 2).min(8_000);
                continue;
            }
            self.last_done_ns.fetch_max(ended, Ordering::Relaxed);
            let mut record = lock(&self.record);
            return match result {
                Ok(session) => {
                    record_ns(&mut record.latency, ended - began);
                    Some(session)
                }
                Err(error) => {
                    *record.failures.entry(error.cause()).or_default() += 1;
                    None
                }
            };
        }
    }

    /// Setup latencies so far.
    pub fn latency(&self) -> HistData {
        HistData::from_hist(&lock(&self.record).latency)
    }

    /// Failures so far, by cause.
    pub fn failures(&self) -> Failures {
        lock(&self.record).failures.clone()
    }

    /// Seconds from `start_ns` to the end of the latest setup.
    pub fn secs_until_last_done(&self, start_ns: u64) -> f64 {
        (self.last_done_ns.load(Ordering::Relaxed) - start_ns) as f64 / 1e9
    }
}

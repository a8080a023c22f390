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

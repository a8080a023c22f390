//! The worker's share of the churn: subscribed connections opened open-loop
//! at `rate` per second for `duration_ms`, each closed `hold_ms` later
//! (DISCONNECT with a receipt, or every `abrupt_every`-th just dropped), at
//! most `max_open` open at once (a connect due beyond that is skipped).

use super::setup::SetupLog;
use super::{lock, WorkerState};
use crate::conn::Dialer;
use crate::sys::{due_ns, now_ns, sleep_until_ns};
use crate::wire::{ActivityResult, ChurnSpec, Failures};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How the churn's connections ended.
#[derive(Default)]
struct Closes {
    /// Closed as planned (with or without RECEIPT).
    ok: AtomicU64,
    /// Of `ok`: DISCONNECTs answered by a close without RECEIPT.
    without_receipt: AtomicU64,
    failures: Mutex<Failures>,
    open_now: AtomicU64,
    peak_open: AtomicU64,
}

pub(super) async fn run(
    spec: ChurnSpec,
    prefix: String,
    dialer: Arc<Dialer>,
    state: Arc<WorkerState>,
) -> ActivityResult {
    let start = now_ns();
    let end = start + spec.duration_ms * 1_000_000;
    let open_slots = Arc::new(Semaphore::new(spec.max_open.max(1)));
    let setups = Arc::new(SetupLog::new(start));
    let closes = Arc::new(Closes::default());
    let mut connections = JoinSet::new();
    let (mut attempted, mut skipped) = (0u64, 0u64);
    let hold = Duration::from_millis(spec.hold_ms);
    for k in 0.. {
        let due = due_ns(start, k, spec.rate);
        if due >= end {
            break;
        }
        sleep_until_ns(due).await;
        while connections.try_join_next().is_some() {}
        let Ok(slot) = open_slots.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        attempted += 1;
        let (dialer, setups, closes, state) = (
            dialer.clone(),
            setups.clone(),
            closes.clone(),
            state.clone(),
        );
        let index = spec.first_conn + k;
        let destination = format!("{prefix}churn.{}", index % spec.destinations.max(1) as u64);
        let abrupt = spec.abrupt_every > 0 && k % spec.abrupt_every == spec.abrupt_every - 1;
        connections.spawn(async move {
            let _slot = slot;
            let session = setups.dial(&dialer, index, &destination).await;
            state.counters.count_activity_setup(session.is_some());
            let Some(session) = session else {
                return;
            };
            let open = closes.open_now.fetch_add(1, Ordering::Relaxed) + 1;
            closes.peak_open.fetch_max(open, Ordering::Relaxed);
            tokio::time::sleep(hold).await;
            let closed = if abrupt {
                drop(session);
                Ok(true)
            } else {
                session.disconnect(dialer.timeout).await
            };
            closes.open_now.fetch_sub(1, Ordering::Relaxed);
            state.counters.open.fetch_sub(1, Ordering::Relaxed);
            match closed {
                Ok(receipt) => {
                    closes.ok.fetch_add(1, Ordering::Relaxed);
                    if !receipt {
                        closes.without_receipt.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(error) => {
                    *lock(&closes.failures).entry(error.cause()).or_default() += 1;
                }
            }
        });
    }
    while connections.join_next().await.is_some() {}
    let close_failures = lock(&closes.failures).clone();
    ActivityResult {
        attempted,
        ok: state.counters.activity_ok.load(Ordering::Relaxed),
        failures: setups.failures(),
        setup: setups.latency(),
        elapsed_secs: setups.secs_until_last_done(start),
        closed_ok: closes.ok.load(Ordering::Relaxed),
        closed_without_receipt: closes.without_receipt.load(Ordering::Relaxed),
        close_failures,
        skipped_at_limit: skipped,
        peak_open: closes.peak_open.load(Ordering::Relaxed),
    }
}

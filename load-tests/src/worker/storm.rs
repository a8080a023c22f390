//! The worker's share of a connect storm: `count` subscribed connections
//! started open-loop at `rate` per second, at most `concurrency` setups in
//! flight, each held (and read) until the worker stops.

use super::setup::SetupLog;
use super::{subscriber, WorkerState};
use crate::conn::Dialer;
use crate::sys::{due_ns, now_ns, sleep_until_ns};
use crate::wire::{ActivityResult, StormSpec};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub(super) async fn run(
    spec: StormSpec,
    prefix: String,
    dialer: Arc<Dialer>,
    state: Arc<WorkerState>,
    stop: watch::Receiver<bool>,
) -> ActivityResult {
    let start = now_ns();
    let retry_refused_ms = spec.retry_refused_ms;
    let in_flight = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let setups = Arc::new(SetupLog::new(start));
    let mut dialing = JoinSet::new();
    let mut holders = JoinSet::new();
    let mut hold = |session| {
        holders.spawn(subscriber::read(
            session,
            None,
            0,
            state.clone(),
            stop.clone(),
        ));
    };
    for k in 0..spec.count {
        sleep_until_ns(due_ns(start, k, spec.rate)).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let index = spec.first_conn + k;
        let destination = format!("{prefix}storm.{}", index % spec.destinations.max(1) as u64);
        let (dialer, setups, state) = (dialer.clone(), setups.clone(), state.clone());
        dialing.spawn(async move {
            let session = setups
                .dial_retrying(&dialer, index, &destination, retry_refused_ms)
                .await;
            drop(permit);
            state.counters.count_activity_setup(session.is_some());
            session
        });
        while let Some(done) = dialing.try_join_next() {
            if let Ok(Some(session)) = done {
                hold(session);
            }
        }
    }
    while let Some(done) = dialing.join_next().await {
        if let Ok(Some(session)) = done {
            hold(session);
        }
    }
    // The held connections live until Stop: detach them.
    holders.detach_all();
    let ok = state.counters.activity_ok.load(Ordering::Relaxed);
    ActivityResult {
        attempted: spec.count,
        ok,
        failures: setups.failures(),
        setup: setups.latency(),
        elapsed_secs: setups.secs_until_last_done(start),
        peak_open: ok,
        ..Default::default()
    }
}

//! A worker holds connections: the long-lived subscribers that check every
//! message they get, and the storm or churn activity. One worker runs in the
//! coordinator's process when the run fits in one process's file limit;
//! above that, each worker is a child process (`stompede-load worker`,
//! `stdio.rs`). What it is told and what it answers: `wire.rs`.
//!
//! - `setup.rs`: dial a subscribed connection and time it;
//! - `subscriber.rs`: read a connection, checking each message;
//! - `sequence.rs`: the checks (lost, duplicated, reordered, misrouted);
//! - `storm.rs`, `churn.rs`: the activities `Command::Start` begins.

mod churn;
pub mod failover;
mod sequence;
mod setup;
mod stdio;
mod storm;
mod subscriber;

pub use stdio::process_main;

use crate::conn::Dialer;
use crate::stats::{HistData, ShardedHistogram};
use crate::sys::{now_ns, self_cpu_secs, self_rss_bytes};
use crate::target::Target;
use crate::wire::{ActivityResult, Command, Event, Final, Progress, Ready, StepResult, WorkerSpec};
use sequence::SequenceTracker;
use setup::SetupLog;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// How often a worker sends its running totals.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Latency histogram shards (each subscriber always records into one).
const LATENCY_SHARDS: usize = 32;
/// How long `Stop` waits for the connections to close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// `Subscriber::died_in_step` of a connection that has not ended.
const NOT_DIED: u64 = u64::MAX;

/// Locks a mutex, even if a task panicked while holding it: every value
/// behind these locks is a count, still worth reporting.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One long-lived checking subscriber.
struct Subscriber {
    /// The destination index it subscribes to.
    dest: u32,
    tracker: Mutex<SequenceTracker>,
    alive: AtomicBool,
    /// The step during which the connection ended, or `NOT_DIED`.
    died_in_step: AtomicU64,
}

impl Subscriber {
    fn new(dest: u32) -> Subscriber {
        Subscriber {
            dest,
            tracker: Mutex::new(SequenceTracker::default()),
            alive: AtomicBool::new(false),
            died_in_step: AtomicU64::new(NOT_DIED),
        }
    }

    /// Whether it counts in `step`: `None` if it never connected or ended
    /// before the step; otherwise whether it ended during the step.
    fn disconnected_in(&self, step: u32) -> Option<bool> {
        if self.alive.load(Ordering::Relaxed) {
            return Some(false);
        }
        let died = self.died_in_step.load(Ordering::Relaxed);
        if died == NOT_DIED || died < u64::from(step) {
            return None;
        }
        Some(true)
    }
}

/// The worker's running totals (sent as `Progress`, and some in `Final`).
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    step_received: AtomicU64,
    open: AtomicU64,
    dropped: AtomicU64,
    stale: AtomicU64,
    untracked: AtomicU64,
    non_load: AtomicU64,
    /// The step whose messages are being counted; earlier ones are stale.
    current_step: AtomicU64,
    activity_ok: AtomicU64,
    activity_failed: AtomicU64,
}

impl Counters {
    fn progress(&self) -> Progress {
        Progress {
            received: self.received.load(Ordering::Relaxed),
            step_received: self.step_received.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            activity_ok: self.activity_ok.load(Ordering::Relaxed),
            activity_failed: self.activity_failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            cpu_secs: self_cpu_secs(),
        }
    }

    /// Counts one storm or churn setup, and the connection open if it is.
    fn count_activity_setup(&self, ok: bool) {
        if ok {
            self.activity_ok.fetch_add(1, Ordering::Relaxed);
            self.open.fetch_add(1, Ordering::Relaxed);
        } else {
            self.activity_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What every task of a worker shares.
struct WorkerState {
    counters: Counters,
    /// Publish-to-receive latency of the current step.
    latency: ShardedHistogram,
}

/// Runs a worker until `Stop` (or until the command channel closes).
pub async fn run(
    spec: WorkerSpec,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) {
    if let Err(error) = run_inner(spec, &mut commands, &events).await {
        let _ = events.send(Event::Fatal(error));
    }
}

fn send(events: &mpsc::UnboundedSender<Event>, event: Event) -> Result<(), String> {
    events
        .send(event)
        .map_err(|_| "coordinator gone".to_string())
}

async fn run_inner(
    spec: WorkerSpec,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(), String> {
    let targets = Target::parse_all(&spec.urls, "ws")?;
    if targets.is_empty() {
        return Err("a worker needs at least one URL".into());
    }
    let dialer = Dialer::new(
        targets,
        spec.creds.clone(),
        Duration::from_millis(spec.setup_timeout_ms),
    );
    let state = Arc::new(WorkerState {
        counters: Counters::default(),
        latency: ShardedHistogram::new(LATENCY_SHARDS),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = JoinSet::new();

    let progress = {
        let (state, events) = (state.clone(), events.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                if events
                    .send(Event::Progress(state.counters.progress()))
                    .is_err()
                {
                    break;
                }
            }
        })
    };

    // Long-lived checking subscribers, `subscribe_concurrency` setups at once.
    let subscribers: Vec<Arc<Subscriber>> = spec
        .subscribers
        .iter()
        .map(|&dest| Arc::new(Subscriber::new(dest)))
        .collect();
    let started = now_ns();
    let setups = Arc::new(SetupLog::new(started));
    let in_flight = Arc::new(Semaphore::new(spec.subscribe_concurrency.max(1)));
    let mut dialing = JoinSet::new();
    for (position, subscriber) in subscribers.iter().enumerate() {
        let (in_flight, dialer, setups) = (in_flight.clone(), dialer.clone(), setups.clone());
        let (subscriber, state) = (subscriber.clone(), state.clone());
        let index = spec.first_conn + position as u64;
        let destination = format!("{}{}", spec.dest_prefix, subscriber.dest);
        dialing.spawn(async move {
            let _permit = in_flight.acquire().await.ok()?;
            let session = setups.dial(&dialer, index, &destination).await?;
            subscriber.alive.store(true, Ordering::Relaxed);
            state.counters.open.fetch_add(1, Ordering::Relaxed);
            Some((session, subscriber, position))
        });
    }
    while let Some(done) = dialing.join_next().await {
        if let Ok(Some((session, subscriber, position))) = done {
            holders.spawn(subscriber::read(
                session,
                Some(subscriber),
                position,
                state.clone(),
                stop_rx.clone(),
            ));
        }
    }
    let mut per_dest = vec![0u64; spec.destinations as usize];
    let mut per_node = vec![0u64; dialer.targets.len()];
    for (position, subscriber) in subscribers.iter().enumerate() {
        if subscriber.alive.load(Ordering::Relaxed) {
            if let Some(count) = per_dest.get_mut(subscriber.dest as usize) {
                *count += 1;
            }
            per_node[dialer.node_of(spec.first_conn + position as u64)] += 1;
        }
    }
    let ready = Ready {
        subscribed: per_dest.iter().sum(),
        per_dest,
        per_node,
        failures: setups.failures(),
        setup: setups.latency(),
        setup_secs: (now_ns() - started) as f64 / 1e9,
    };
    send(events, Event::Ready(ready))?;

    let mut activity: Option<tokio::task::JoinHandle<ActivityResult>> = None;
    loop {
        // Cancel safety: `recv` and awaiting a JoinHandle by reference both
        // lose nothing when the other branch wins.
        let command = tokio::select! {
            command = commands.recv() => command,
            done = async { activity.as_mut().expect("guarded").await }, if activity.is_some() => {
                activity = None;
                let result = done.map_err(|e| format!("activity task failed: {e}"))?;
                send(events, Event::ActivityDone(Box::new(result)))?;
                continue;
            }
        };
        match command {
            Some(Command::Start) => {
                let (dialer, state) = (dialer.clone(), state.clone());
                let prefix = spec.dest_prefix.clone();
                if let Some(storm) = spec.storm.clone() {
                    let stop = stop_rx.clone();
                    activity = Some(tokio::spawn(storm::run(storm, prefix, dialer, state, stop)));
                } else if let Some(churn) = spec.churn.clone() {
                    activity = Some(tokio::spawn(churn::run(churn, prefix, dialer, state)));
                } else {
                    send(events, Event::ActivityDone(Box::default()))?;
                }
            }
            Some(Command::Collect { step, expected }) => {
                let result = collect_step(step, &expected, &subscribers, &state);
                send(events, Event::Step(Box::new(result)))?;
            }
            Some(Command::Stop) | None => break,
        }
    }
    let _ = stop_tx.send(true);
    if let Some(activity) = activity.take() {
        activity.abort();
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while holders.join_next().await.is_some() {}
    })
    .await;
    progress.abort();
    let counters = &state.counters;
    let last = Final {
        cpu_secs: self_cpu_secs(),
        rss_bytes: self_rss_bytes(),
        stale: counters.stale.load(Ordering::Relaxed),
        untracked: counters.untracked.load(Ordering::Relaxed),
        non_load_messages: counters.non_load.load(Ordering::Relaxed),
    };
    let _ = events.send(Event::Final(last));
    Ok(())
}

/// Ends `step`: every subscriber's tally against `expected` (messages
/// published per destination), summed, and the step's latencies.
fn collect_step(
    step: u32,
    expected: &[u64],
    subscribers: &[Arc<Subscriber>],
    state: &WorkerState,
) -> StepResult {
    let counters = &state.counters;
    // Messages of this step that arrive from now on are stale.
    counters
        .current_step
        .store(u64::from(step) + 1, Ordering::Relaxed);
    let mut result = StepResult {
        step,
        ..Default::default()
    };
    for subscriber in subscribers {
        let Some(disconnected) = subscriber.disconnected_in(step) else {
            continue;
        };
        let want = expected.get(subscriber.dest as usize).copied().unwrap_or(0);
        let tally = lock(&subscriber.tracker).finish_step(step, want);
        result.count_subscriber(&tally, disconnected);
    }
    result.latency = HistData::from_hist(&state.latency.take());
    counters.step_received.store(0, Ordering::Relaxed);
    result
}

//! A worker holds connections: the long-lived subscribers that check every
//! message they get, and the storm or churn activity. One worker runs in the
//! coordinator's process when the run fits in one process's file limit;
//! above that, each worker is a child process (`stompede-load worker`)
//! speaking JSON lines: the spec and commands on stdin, events on stdout.

use crate::conn::{Dialer, Session};
use crate::frames::{parse_body, Credentials, Incoming, Stamp};
use crate::stats::{new_histogram, record_ns, HistData, ShardedHistogram};
use crate::sys::{now_ns, self_cpu_secs, self_rss_bytes};
use crate::target::Target;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// Sequence numbers above this are not tracked (bounds a subscriber's
/// bitmap to 8 MiB); such messages count as `untracked`.
const MAX_TRACKED_SEQ: u64 = 1 << 26;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    pub url: String,
    pub creds: Credentials,
    pub setup_timeout_ms: u64,
    pub dest_prefix: String,
    /// Number of fan-out destinations (sizes the per-destination arrays).
    pub destinations: u32,
    /// Global index of this worker's first subscriber: picks source
    /// addresses and subscription ids.
    pub first_conn: u64,
    /// The destination index of each long-lived, checking subscriber.
    pub subscribers: Vec<u32>,
    /// Most subscriber setups in flight at once.
    pub subscribe_concurrency: usize,
    pub storm: Option<StormSpec>,
    pub churn: Option<ChurnSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormSpec {
    pub count: u64,
    /// Connections started per second (open loop).
    pub rate: f64,
    pub concurrency: usize,
    /// Storm connections subscribe to `{prefix}storm.{i % destinations}`.
    pub destinations: u32,
    pub first_conn: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnSpec {
    /// Connections opened (and later closed) per second.
    pub rate: f64,
    pub duration_ms: u64,
    /// How long each connection stays subscribed.
    pub hold_ms: u64,
    pub destinations: u32,
    pub first_conn: u64,
    /// Every n-th connection drops its socket without DISCONNECT (0: never).
    pub abrupt_every: u64,
    /// Most connections open at once in this worker.
    pub max_open: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Begin the storm or churn.
    Start,
    /// Report the step's checks, given how many messages were published to
    /// each destination in it, and reset for the next step.
    Collect { step: u32, expected: Vec<u64> },
    /// Close everything and report the final figures.
    Stop,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ready {
    pub subscribed: u64,
    /// Subscribed connections per destination.
    pub per_dest: Vec<u64>,
    pub failures: BTreeMap<String, u64>,
    pub setup: HistData,
    pub setup_secs: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgressData {
    pub received: u64,
    pub step_received: u64,
    pub open: u64,
    pub activity_ok: u64,
    pub activity_failed: u64,
    pub dropped: u64,
    /// CPU seconds this worker's process has used so far.
    pub cpu_secs: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepResult {
    pub step: u32,
    pub subscribers: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub misrouted: u64,
    pub subs_with_loss: u64,
    pub subs_with_dups: u64,
    pub subs_with_reorder: u64,
    /// Subscribers whose connection ended during the step.
    pub subs_disconnected: u64,
    pub latency: HistData,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActivityResult {
    pub attempted: u64,
    pub ok: u64,
    pub failures: BTreeMap<String, u64>,
    pub setup: HistData,
    /// From Start until the last setup finished.
    pub elapsed_secs: f64,
    pub closed_ok: u64,
    /// Of `closed_ok`: DISCONNECTs the broker answered by closing, without RECEIPT.
    pub closed_without_receipt: u64,
    pub close_failures: BTreeMap<String, u64>,
    pub skipped_at_limit: u64,
    pub peak_open: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Final {
    pub cpu_secs: f64,
    pub rss_bytes: u64,
    /// Messages that arrived after their step had been collected.
    pub stale: u64,
    pub untracked: u64,
    pub non_load_messages: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    Ready(Ready),
    Progress(ProgressData),
    Step(StepResult),
    ActivityDone(ActivityResult),
    Final(Final),
    Fatal(String),
}

/// What one checking subscriber has seen in the current step.
#[derive(Default)]
struct Tracker {
    step: u32,
    seen: Vec<u64>,
    distinct: u64,
    /// One past the highest sequence number seen.
    high: u64,
    duplicated: u64,
    reordered: u64,
    misrouted: u64,
}

struct Sub {
    dest: u32,
    tracker: Mutex<Tracker>,
    alive: std::sync::atomic::AtomicBool,
    /// The step during which the connection ended, if it did.
    died_in_step: AtomicU64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    step_received: AtomicU64,
    open: AtomicU64,
    dropped: AtomicU64,
    stale: AtomicU64,
    untracked: AtomicU64,
    non_load: AtomicU64,
    current_step: AtomicU64,
    activity_ok: AtomicU64,
    activity_failed: AtomicU64,
}

struct Shared {
    counters: Counters,
    latency: ShardedHistogram,
}

/// Runs a worker until `Stop` (or until the command channel closes).
pub async fn run(
    spec: WorkerSpec,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) {
    if let Err(e) = run_inner(spec, &mut cmds, &events).await {
        let _ = events.send(Event::Fatal(e));
    }
}

async fn run_inner(
    spec: WorkerSpec,
    cmds: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(), String> {
    let target = Target::parse(&spec.url, "ws")?;
    let dialer = Dialer::new(
        target,
        spec.creds.clone(),
        Duration::from_millis(spec.setup_timeout_ms),
    );
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        latency: ShardedHistogram::new(32),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = JoinSet::new();

    // Progress every 250 ms until the worker ends.
    let progress = {
        let shared = shared.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let c = &shared.counters;
                let p = ProgressData {
                    received: c.received.load(Ordering::Relaxed),
                    step_received: c.step_received.load(Ordering::Relaxed),
                    open: c.open.load(Ordering::Relaxed),
                    activity_ok: c.activity_ok.load(Ordering::Relaxed),
                    activity_failed: c.activity_failed.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    cpu_secs: self_cpu_secs(),
                };
                if events.send(Event::Progress(p)).is_err() {
                    break;
                }
            }
        })
    };

    // Long-lived checking subscribers.
    let subs: Vec<Arc<Sub>> = spec
        .subscribers
        .iter()
        .map(|&dest| {
            Arc::new(Sub {
                dest,
                tracker: Mutex::new(Tracker::default()),
                alive: false.into(),
                died_in_step: AtomicU64::new(u64::MAX),
            })
        })
        .collect();
    let started = now_ns();
    let setup_hist = Arc::new(Mutex::new(new_histogram()));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    {
        let sem = Arc::new(Semaphore::new(spec.subscribe_concurrency.max(1)));
        let mut setups = JoinSet::new();
        for (i, sub) in subs.iter().enumerate() {
            let (sem, dialer, sub, shared) =
                (sem.clone(), dialer.clone(), sub.clone(), shared.clone());
            let (setup_hist, failures) = (setup_hist.clone(), failures.clone());
            let index = spec.first_conn + i as u64;
            let destination = format!("{}{}", spec.dest_prefix, sub.dest);
            let stop_rx = stop_rx.clone();
            setups.spawn(async move {
                let _permit = sem.acquire().await.ok()?;
                let t0 = now_ns();
                match dialer.open_subscribed(index, &destination).await {
                    Ok(session) => {
                        record_ns(
                            &mut setup_hist.lock().unwrap_or_else(|e| e.into_inner()),
                            now_ns() - t0,
                        );
                        sub.alive.store(true, Ordering::Relaxed);
                        shared.counters.open.fetch_add(1, Ordering::Relaxed);
                        Some((session, sub, i, stop_rx))
                    }
                    Err(e) => {
                        *failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(e.cause())
                            .or_default() += 1;
                        None
                    }
                }
            });
        }
        while let Some(r) = setups.join_next().await {
            if let Ok(Some((session, sub, i, stop_rx))) = r {
                holders.spawn(subscriber_loop(
                    session,
                    Some(sub),
                    i,
                    shared.clone(),
                    stop_rx,
                ));
            }
        }
    }
    let mut per_dest = vec![0u64; spec.destinations as usize];
    for s in &subs {
        if s.alive.load(Ordering::Relaxed) {
            if let Some(n) = per_dest.get_mut(s.dest as usize) {
                *n += 1;
            }
        }
    }
    let ready = Ready {
        subscribed: per_dest.iter().sum(),
        per_dest,
        failures: failures.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        setup: HistData::from_hist(&setup_hist.lock().unwrap_or_else(|e| e.into_inner())),
        setup_secs: (now_ns() - started) as f64 / 1e9,
    };
    events
        .send(Event::Ready(ready))
        .map_err(|_| "coordinator gone")?;

    let mut activity: Option<tokio::task::JoinHandle<ActivityResult>> = None;
    loop {
        // Cancel safety: `recv` and awaiting a JoinHandle by reference both
        // lose nothing when the other branch wins.
        let cmd = tokio::select! {
            cmd = cmds.recv() => cmd,
            res = async { activity.as_mut().expect("guarded").await }, if activity.is_some() => {
                activity = None;
                let res = res.map_err(|e| format!("activity task failed: {e}"))?;
                events.send(Event::ActivityDone(res)).map_err(|_| "coordinator gone")?;
                continue;
            }
        };
        match cmd {
            Some(Command::Start) => {
                let (dialer, shared, stop_rx) = (dialer.clone(), shared.clone(), stop_rx.clone());
                if let Some(storm) = spec.storm.clone() {
                    let prefix = spec.dest_prefix.clone();
                    activity = Some(tokio::spawn(run_storm(
                        storm, prefix, dialer, shared, stop_rx,
                    )));
                } else if let Some(churn) = spec.churn.clone() {
                    let prefix = spec.dest_prefix.clone();
                    activity = Some(tokio::spawn(run_churn(churn, prefix, dialer, shared)));
                } else {
                    events
                        .send(Event::ActivityDone(ActivityResult::default()))
                        .map_err(|_| "coordinator gone")?;
                }
            }
            Some(Command::Collect { step, expected }) => {
                let r = collect(step, &expected, &subs, &shared);
                events
                    .send(Event::Step(r))
                    .map_err(|_| "coordinator gone")?;
            }
            Some(Command::Stop) | None => break,
        }
    }
    let _ = stop_tx.send(true);
    if let Some(a) = activity.take() {
        a.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while holders.join_next().await.is_some() {}
    })
    .await;
    progress.abort();
    let c = &shared.counters;
    let fin = Final {
        cpu_secs: self_cpu_secs(),
        rss_bytes: self_rss_bytes(),
        stale: c.stale.load(Ordering::Relaxed),
        untracked: c.untracked.load(Ordering::Relaxed),
        non_load_messages: c.non_load.load(Ordering::Relaxed),
    };
    let _ = events.send(Event::Final(fin));
    Ok(())
}

fn collect(step: u32, expected: &[u64], subs: &[Arc<Sub>], shared: &Shared) -> StepResult {
    let c = &shared.counters;
    // Messages of this step that arrive from now on are stale.
    c.current_step.store(step as u64 + 1, Ordering::Relaxed);
    let mut r = StepResult {
        step,
        ..Default::default()
    };
    for s in subs {
        let died = s.died_in_step.load(Ordering::Relaxed);
        let alive = s.alive.load(Ordering::Relaxed);
        if !alive && died == u64::MAX {
            continue; // never connected
        }
        if !alive && died < step as u64 {
            continue; // gone before this step
        }
        r.subscribers += 1;
        if !alive {
            r.subs_disconnected += 1;
        }
        let mut t = s.tracker.lock().unwrap_or_else(|e| e.into_inner());
        let want = expected.get(s.dest as usize).copied().unwrap_or(0);
        let lost = want.saturating_sub(t.distinct);
        r.expected += want;
        r.received += t.distinct;
        r.lost += lost;
        r.duplicated += t.duplicated;
        r.reordered += t.reordered;
        r.misrouted += t.misrouted;
        r.subs_with_loss += (lost > 0) as u64;
        r.subs_with_dups += (t.duplicated > 0) as u64;
        r.subs_with_reorder += (t.reordered > 0) as u64;
        *t = Tracker {
            step: step + 1,
            seen: std::mem::take(&mut t.seen),
            ..Default::default()
        };
        t.seen.iter_mut().for_each(|w| *w = 0);
    }
    r.latency = HistData::from_hist(&shared.latency.take());
    c.step_received.store(0, Ordering::Relaxed);
    r
}

/// Reads a connection until stop or close. With a `Sub`, every message is
/// checked (sequence, destination) and its latency recorded; without one
/// (storm connections) messages are only counted.
async fn subscriber_loop(
    mut session: Session,
    sub: Option<Arc<Sub>>,
    key: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let c = &shared.counters;
    let mut stopped = false;
    loop {
        // Cancel safety: `changed` and `StreamExt::next` lose nothing when
        // the other branch wins.
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => { stopped = true; break; }
            msg = session.ws.next() => msg,
        };
        let data = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => t.into(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        session.inbox.push_bytes(data);
        let now = now_ns();
        let mut n = 0u64;
        let mut tracker = sub
            .as_ref()
            .map(|s| s.tracker.lock().unwrap_or_else(|e| e.into_inner()));
        let mut hist = sub.as_ref().map(|_| {
            shared
                .latency
                .shard(key)
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        });
        let mut fatal = false;
        loop {
            match session.inbox.next() {
                Ok(Some(Incoming::Message(body))) => {
                    n += 1;
                    let (Some(t), Some(h), Some(s)) =
                        (tracker.as_deref_mut(), hist.as_deref_mut(), sub.as_ref())
                    else {
                        continue;
                    };
                    match parse_body(&body) {
                        Some(stamp) => match check(t, s.dest, &stamp, c) {
                            Checked::New => record_ns(h, now.saturating_sub(stamp.sent_ns)),
                            Checked::Other => {}
                        },
                        None => {
                            c.non_load.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(Some(Incoming::Other(_))) => {
                    // ERROR (or anything else unexpected mid-stream): the
                    // broker closes after ERROR; treat it as the end.
                    fatal = true;
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    fatal = true;
                    break;
                }
            }
        }
        drop(tracker);
        drop(hist);
        c.received.fetch_add(n, Ordering::Relaxed);
        c.step_received.fetch_add(n, Ordering::Relaxed);
        if fatal {
            break;
        }
    }
    c.open.fetch_sub(1, Ordering::Relaxed);
    if !stopped {
        c.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = &sub {
            s.alive.store(false, Ordering::Relaxed);
            s.died_in_step
                .store(c.current_step.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

enum Checked {
    New,
    Other,
}

#[inline]
fn check(t: &mut Tracker, dest: u32, s: &Stamp, c: &Counters) -> Checked {
    if s.dest != dest {
        t.misrouted += 1;
        return Checked::Other;
    }
    if s.step != t.step {
        if s.step < t.step {
            c.stale.fetch_add(1, Ordering::Relaxed);
            return Checked::Other;
        }
        // A later step before this one was collected: start over.
        *t = Tracker {
            step: s.step,
            ..Default::default()
        };
    }
    if s.seq >= MAX_TRACKED_SEQ {
        c.untracked.fetch_add(1, Ordering::Relaxed);
        return Checked::Other;
    }
    let (word, bit) = ((s.seq / 64) as usize, 1u64 << (s.seq % 64));
    if word >= t.seen.len() {
        t.seen.resize((word + 1).max(t.seen.len() * 2), 0);
    }
    if t.seen[word] & bit != 0 {
        t.duplicated += 1;
        return Checked::Other;
    }
    t.seen[word] |= bit;
    t.distinct += 1;
    if s.seq + 1 < t.high {
        t.reordered += 1;
    } else {
        t.high = s.seq + 1;
    }
    Checked::New
}

/// Open-loop pacing: the time the `k`-th of something is due.
fn due_ns(start: u64, k: u64, rate: f64) -> u64 {
    start + (k as f64 * 1e9 / rate) as u64
}

async fn sleep_until_ns(t: u64) {
    let now = now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

async fn run_storm(
    spec: StormSpec,
    prefix: String,
    dialer: Arc<Dialer>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> ActivityResult {
    let start = now_ns();
    let sem = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let hist = Arc::new(Mutex::new(new_histogram()));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let last_done = Arc::new(AtomicU64::new(start));
    let mut set = JoinSet::new();
    let mut holders = JoinSet::new();
    for k in 0..spec.count {
        sleep_until_ns(due_ns(start, k, spec.rate)).await;
        let permit = match sem.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => break,
        };
        let (dialer, hist, failures, shared2, last_done) = (
            dialer.clone(),
            hist.clone(),
            failures.clone(),
            shared.clone(),
            last_done.clone(),
        );
        let destination = format!(
            "{prefix}storm.{}",
            (spec.first_conn + k) % spec.destinations.max(1) as u64
        );
        let index = spec.first_conn + k;
        set.spawn(async move {
            let shared = shared2;
            let t0 = now_ns();
            let r = dialer.open_subscribed(index, &destination).await;
            drop(permit);
            let t1 = now_ns();
            last_done.fetch_max(t1, Ordering::Relaxed);
            match r {
                Ok(s) => {
                    record_ns(&mut hist.lock().unwrap_or_else(|e| e.into_inner()), t1 - t0);
                    shared.counters.activity_ok.fetch_add(1, Ordering::Relaxed);
                    shared.counters.open.fetch_add(1, Ordering::Relaxed);
                    Some(s)
                }
                Err(e) => {
                    shared
                        .counters
                        .activity_failed
                        .fetch_add(1, Ordering::Relaxed);
                    *failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(e.cause())
                        .or_default() += 1;
                    None
                }
            }
        });
        while let Some(r) = set.try_join_next() {
            if let Ok(Some(s)) = r {
                holders.spawn(subscriber_loop(s, None, 0, shared.clone(), stop.clone()));
            }
        }
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Some(s)) = r {
            holders.spawn(subscriber_loop(s, None, 0, shared.clone(), stop.clone()));
        }
    }
    // The held connections live until Stop: detach them.
    holders.detach_all();
    let ok = shared.counters.activity_ok.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let setup = HistData::from_hist(&hist.lock().unwrap_or_else(|e| e.into_inner()));
    ActivityResult {
        attempted: spec.count,
        ok,
        failures,
        setup,
        elapsed_secs: (last_done.load(Ordering::Relaxed) - start) as f64 / 1e9,
        peak_open: ok,
        ..Default::default()
    }
}

async fn run_churn(
    spec: ChurnSpec,
    prefix: String,
    dialer: Arc<Dialer>,
    shared: Arc<Shared>,
) -> ActivityResult {
    let start = now_ns();
    let end = start + spec.duration_ms * 1_000_000;
    let sem = Arc::new(Semaphore::new(spec.max_open.max(1)));
    let hist = Arc::new(Mutex::new(new_histogram()));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let close_failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let closed_ok = Arc::new(AtomicU64::new(0));
    let no_receipt = Arc::new(AtomicU64::new(0));
    let last_setup = Arc::new(AtomicU64::new(start));
    let open_now = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    let (mut attempted, mut skipped) = (0u64, 0u64);
    let hold = Duration::from_millis(spec.hold_ms);
    for k in 0.. {
        let due = due_ns(start, k, spec.rate);
        if due >= end {
            break;
        }
        sleep_until_ns(due).await;
        while set.try_join_next().is_some() {}
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        attempted += 1;
        let (dialer, hist, failures, close_failures, closed_ok, shared) = (
            dialer.clone(),
            hist.clone(),
            failures.clone(),
            close_failures.clone(),
            closed_ok.clone(),
            shared.clone(),
        );
        let (open_now, peak, no_receipt, last_setup) = (
            open_now.clone(),
            peak.clone(),
            no_receipt.clone(),
            last_setup.clone(),
        );
        let index = spec.first_conn + k;
        let destination = format!("{prefix}churn.{}", index % spec.destinations.max(1) as u64);
        let abrupt = spec.abrupt_every > 0 && k % spec.abrupt_every == spec.abrupt_every - 1;
        set.spawn(async move {
            let _permit = permit;
            let t0 = now_ns();
            let r = dialer.open_subscribed(index, &destination).await;
            let t1 = now_ns();
            last_setup.fetch_max(t1, Ordering::Relaxed);
            match r {
                Ok(s) => {
                    record_ns(&mut hist.lock().unwrap_or_else(|e| e.into_inner()), t1 - t0);
                    shared.counters.activity_ok.fetch_add(1, Ordering::Relaxed);
                    let n = open_now.fetch_add(1, Ordering::Relaxed) + 1;
                    peak.fetch_max(n, Ordering::Relaxed);
                    shared.counters.open.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(hold).await;
                    let r = if abrupt {
                        drop(s);
                        Ok(true)
                    } else {
                        s.disconnect(dialer.timeout).await
                    };
                    open_now.fetch_sub(1, Ordering::Relaxed);
                    shared.counters.open.fetch_sub(1, Ordering::Relaxed);
                    match r {
                        Ok(receipt) => {
                            closed_ok.fetch_add(1, Ordering::Relaxed);
                            if !receipt {
                                no_receipt.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            *close_failures
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .entry(e.cause())
                                .or_default() += 1;
                        }
                    }
                }
                Err(e) => {
                    shared
                        .counters
                        .activity_failed
                        .fetch_add(1, Ordering::Relaxed);
                    *failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(e.cause())
                        .or_default() += 1;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let setup = HistData::from_hist(&hist.lock().unwrap_or_else(|e| e.into_inner()));
    let close_failures = close_failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let r = ActivityResult {
        attempted,
        ok: shared.counters.activity_ok.load(Ordering::Relaxed),
        failures,
        setup,
        elapsed_secs: (last_setup.load(Ordering::Relaxed) - start) as f64 / 1e9,
        closed_ok: closed_ok.load(Ordering::Relaxed),
        closed_without_receipt: no_receipt.load(Ordering::Relaxed),
        close_failures,
        skipped_at_limit: skipped,
        peak_open: peak.load(Ordering::Relaxed),
    };
    r
}

/// `stompede-load worker`: reads the spec (one JSON line) and then commands
/// from stdin, writes events to stdout, one JSON line each.
pub fn process_main() -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading the worker spec: {e}"))?;
    let spec: WorkerSpec =
        serde_json::from_str(&line).map_err(|e| format!("bad worker spec: {e}"))?;
    let rt = crate::runtime()?;
    rt.block_on(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<Command>(&l) {
                    Ok(c) => {
                        if cmd_tx.send(c).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("worker: bad command {l:?}: {e}"),
                }
            }
            // stdin closed: the coordinator is gone; dropping cmd_tx stops us.
        });
        tokio::spawn(run(spec, cmd_rx, ev_tx));
        let mut out = tokio::io::stdout();
        while let Some(ev) = ev_rx.recv().await {
            let end = matches!(ev, Event::Final(_) | Event::Fatal(_));
            let mut s =
                serde_json::to_string(&ev).unwrap_or_else(|e| format!("{{\"Fatal\":\"{e}\"}}"));
            s.push('\n');
            if out.write_all(s.as_bytes()).await.is_err() || out.flush().await.is_err() || end {
                break;
            }
        }
    });
    Ok(())
}

//! The `failover` scenario's readers, in a child process
//! (`stompede-load failover-worker`, driven by `scenario/failover.rs` over
//! stdin/stdout, one JSON line each way per message).
//!
//! Each reader is one connection subscribed to one destination. When its
//! connection ends (its node was killed) it comes back the way the example
//! comment page does (`examples/comment-page/app.js`): it waits stompjs'
//! `reconnectDelay` (100 ms) plus the page's first backoff (0.5-1 s, equal
//! jitter), connects to another node than the one it lost, and SUBSCRIBEs
//! with `x-since-offset`/`x-since-epoch` from the last MESSAGE it saw and a
//! `receipt`; a failed try (refused with 503 by admission control, a
//! timeout, anything) waits twice as long (equal jitter, capped) and tries
//! the next node. It has resumed when the RECEIPT comes (the broker sends
//! the messages from history before it), and the RECEIPT says whether
//! history covered the gap (`x-recovered`).
//!
//! Every MESSAGE's `x-offset` is checked as it arrives: the next one
//! expected is one more than the last (a lower one is a duplicate, a higher
//! one a gap of that many). At the end (`Finish`, given the offsets the
//! destinations started from and ended at) each reader must have had every
//! offset in between exactly once.

use crate::conn::{Dialer, Ws};
use crate::frames::{parse_body, Credentials};
use crate::stats::{new_histogram, record_ns, HistData};
use crate::sys::{now_ns, self_cpu_secs, self_rss_bytes};
use crate::target::Target;
use crate::wire::{to_line, Failures};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stompede_protocol::{encode, Command as StompCommand, Frame, Version};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::lock;

/// How often the worker sends its running totals.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long the connections get to close at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Live latencies are kept per this much of publishing time (by the
/// message's stamp), so that the coordinator can tell before, during and
/// after the failover apart.
pub const LATENCY_BIN_NS: u64 = 500_000_000;
/// Latency shards (a reader always uses the same one).
const LATENCY_SHARDS: usize = 4;

/// What a failover worker holds (its first line on stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverSpec {
    pub worker: usize,
    /// Every node's WebSocket URL (the scenario's `--url`s).
    pub urls: Vec<String>,
    pub creds: Credentials,
    pub dest_prefix: String,
    pub destinations: u32,
    /// The run-wide index of this worker's first reader: reader `i` starts
    /// on node `i % urls`, subscribed to destination `(i / urls) % destinations`.
    pub first_reader: u64,
    pub readers: u64,
    /// Most ms one try (TCP, handshake, CONNECT, SUBSCRIBE, replay, RECEIPT) may take.
    pub setup_timeout_ms: u64,
    /// Initial setups in flight at once.
    pub setup_concurrency: usize,
    /// After a drop: this long first (stompjs' `reconnectDelay`) ...
    pub reconnect_delay_ms: u64,
    /// ... then `backoff_ms / 2` plus up to as much again; doubling per failed try ...
    pub backoff_ms: u64,
    /// ... up to this.
    pub backoff_cap_ms: u64,
    /// A reader gives up this long after its drop.
    pub retry_for_ms: u64,
}

/// Coordinator to failover worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FailoverCommand {
    /// Publishing has stopped: wait (at most `drain_ms`) until every reader
    /// has offset `last[d]`, then check and report. `start[d]` is the
    /// offset destination `d` had before publishing began, `epoch[d]` its
    /// epoch at the end; `kill_ns` when the node was killed (CLOCK_MONOTONIC).
    Finish {
        start: Vec<u64>,
        last: Vec<u64>,
        epoch: Vec<Option<String>>,
        kill_ns: u64,
        drain_ms: u64,
    },
}

/// Failover worker to coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FailoverEvent {
    Ready(FailoverReady),
    Progress(FailoverProgress),
    Done(Box<FailoverResult>),
    Fatal(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverReady {
    pub subscribed: u64,
    /// Subscribed readers per node (`urls`' order).
    pub per_node: Vec<u64>,
    pub failures: Failures,
    pub setup: HistData,
    pub setup_secs: f64,
}

/// Running totals, every 250 ms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverProgress {
    /// Readers connected and subscribed now.
    pub up: u64,
    /// Readers whose connection has ended at least once.
    pub dropped: u64,
    /// Resumes done (RECEIPT of a resuming SUBSCRIBE).
    pub resumed: u64,
    /// Readers that stopped trying.
    pub gave_up: u64,
    pub received: u64,
    pub cpu_secs: f64,
}

/// A worker's readers, checked, at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverResult {
    pub readers: u64,
    /// Readers whose connection ended at least once, and drops in all.
    pub dropped_readers: u64,
    pub drops: u64,
    /// Resumes by the RECEIPT's `x-recovered`.
    pub recovered_true: u64,
    pub recovered_false: u64,
    /// A RECEIPT without `x-recovered` (should not happen to a resume).
    pub recovered_missing: u64,
    /// Readers that dropped and were not subscribed again at the end.
    pub not_resumed: u64,
    pub gave_up: u64,
    /// Readers that had every offset from start+1 to last exactly once.
    pub complete: u64,
    /// Offsets never received (gaps, a late first one, a missing tail), in all.
    pub missed: u64,
    pub duplicated: u64,
    pub readers_missing: u64,
    pub readers_duplicated: u64,
    /// Readers that saw another epoch than the destination's at the end.
    pub other_epoch: u64,
    /// MESSAGEs a resuming reader got before its RECEIPT (from history).
    pub replayed: u64,
    pub received: u64,
    /// Reconnect tries (each: TCP + handshake + CONNECT + SUBSCRIBE), and
    /// the failed ones by cause.
    pub tries: u64,
    pub failures: Failures,
    /// From the kill to each resuming reader's RECEIPT (us).
    pub since_kill: HistData,
    /// From each reader's drop to its RECEIPT (us).
    pub since_drop: HistData,
    /// The replay: from sending the resuming SUBSCRIBE to its RECEIPT (us).
    pub subscribe_to_receipt: HistData,
    /// Publish-to-receive latency of the messages replayed from history (us).
    pub replayed_latency: HistData,
    /// Publish-to-receive latency of live messages, one histogram per
    /// `LATENCY_BIN_NS` of stamp time from `latency_t0_ns` on.
    pub live_latency: Vec<HistData>,
    pub latency_t0_ns: u64,
    /// CLOCK_MONOTONIC ns of the last resume's RECEIPT (0: none).
    pub last_resume_ns: u64,
    /// Where the readers are at the end, per node.
    pub per_node_end: Vec<u64>,
    pub cpu_secs: f64,
    pub rss_bytes: u64,
}

/// One reader's view of its destination.
#[derive(Default)]
struct Track {
    /// The first and the last offset received (0: none yet).
    first: u64,
    last: u64,
    epoch: Option<String>,
    epoch_changes: u64,
    gaps: u64,
    dups: u64,
    received: u64,
    replayed: u64,
    node: usize,
    up: bool,
    drops: u64,
    drop_ns: u64,
    /// The last resume: when its RECEIPT came, and what it said.
    resumed_ns: u64,
    resumes: u64,
    gave_up: bool,
}

impl Track {
    fn message(&mut self, offset: Option<u64>, epoch: Option<&[u8]>) {
        self.received += 1;
        if let Some(epoch) = epoch {
            if self.epoch.as_deref().map(str::as_bytes) != Some(epoch) {
                if self.epoch.is_some() {
                    self.epoch_changes += 1;
                }
                self.epoch = Some(unescape(&String::from_utf8_lossy(epoch)));
            }
        }
        let Some(offset) = offset else {
            return;
        };
        if self.first == 0 {
            self.first = offset;
            self.last = offset;
        } else if offset <= self.last {
            self.dups += 1;
        } else {
            self.gaps += offset - self.last - 1;
            self.last = offset;
        }
    }
}

struct Reader {
    index: u64,
    dest: u32,
    track: Mutex<Track>,
}

#[derive(Default)]
struct Counters {
    up: AtomicU64,
    dropped: AtomicU64,
    resumed: AtomicU64,
    gave_up: AtomicU64,
    received: AtomicU64,
    tries: AtomicU64,
}

/// Live latencies binned by the time a message was due to be published.
struct Binned {
    t0_ns: u64,
    shards: Vec<Mutex<Vec<hdrhistogram::Histogram<u64>>>>,
}

impl Binned {
    fn record(&self, shard: u64, sent_ns: u64, arrived_ns: u64) {
        let bin = (sent_ns.saturating_sub(self.t0_ns) / LATENCY_BIN_NS) as usize;
        // Bounded: an hour of bins.
        if bin > 7200 {
            return;
        }
        let mut bins = lock(&self.shards[shard as usize % self.shards.len()]);
        while bins.len() <= bin {
            bins.push(bin_histogram());
        }
        record_ns(&mut bins[bin], arrived_ns.saturating_sub(sent_ns));
    }

    fn merged(&self) -> Vec<HistData> {
        let mut all: Vec<hdrhistogram::Histogram<u64>> = Vec::new();
        for shard in &self.shards {
            for (i, h) in lock(shard).iter().enumerate() {
                while all.len() <= i {
                    all.push(bin_histogram());
                }
                let _ = all[i].add(h);
            }
        }
        all.iter().map(HistData::from_hist).collect()
    }
}

/// Two significant figures: a bin's histogram stays a few KiB.
fn bin_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 2).expect("static bounds")
}

struct Ctx {
    live: Binned,
    replayed_latency: Mutex<hdrhistogram::Histogram<u64>>,
    spec: FailoverSpec,
    dialer: Arc<Dialer>,
    counters: Counters,
    failures: Mutex<Failures>,
    since_drop: Mutex<hdrhistogram::Histogram<u64>>,
    subscribe_to_receipt: Mutex<hdrhistogram::Histogram<u64>>,
    recovered: Mutex<[u64; 3]>,
}

/// A connection with its subscription in place.
struct Conn {
    ws: Ws,
    buf: BytesMut,
}

/// `stompede-load failover-worker`: reads the spec and commands from
/// stdin, writes events to stdout.
pub fn process_main() -> Result<(), String> {
    let spec: FailoverSpec = super::stdio::read_spec("failover worker")?;
    let runtime = crate::runtime()?;
    runtime.block_on(async move {
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (event_tx, mut event_rx) = mpsc::unbounded_channel();
        tokio::spawn(super::stdio::forward_commands::<FailoverCommand>(
            command_tx,
            "failover worker",
        ));
        let worker = tokio::spawn(run(spec, command_rx, event_tx));
        let mut stdout = tokio::io::stdout();
        while let Some(event) = event_rx.recv().await {
            let last = matches!(event, FailoverEvent::Done(_) | FailoverEvent::Fatal(_));
            let line = to_line(&event).unwrap_or_else(|e| format!("{{\"Fatal\":\"{e}\"}}\n"));
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.flush().await.is_err()
                || last
            {
                break;
            }
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, worker).await;
    });
    // The stdin reader may still be blocked in read(2): do not wait for it.
    runtime.shutdown_background();
    Ok(())
}

async fn run(
    spec: FailoverSpec,
    commands: mpsc::UnboundedReceiver<FailoverCommand>,
    events: mpsc::UnboundedSender<FailoverEvent>,
) {
    if let Err(error) = run_inner(spec, commands, &events).await {
        let _ = events.send(FailoverEvent::Fatal(error));
    }
}

async fn run_inner(
    spec: FailoverSpec,
    mut commands: mpsc::UnboundedReceiver<FailoverCommand>,
    events: &mpsc::UnboundedSender<FailoverEvent>,
) -> Result<(), String> {
    let targets = Target::parse_all(&spec.urls, "ws")?;
    if targets.is_empty() || spec.destinations == 0 {
        return Err("a failover worker needs URLs and destinations".into());
    }
    let nodes = targets.len();
    let dialer = Dialer::new(
        targets,
        spec.creds.clone(),
        Duration::from_millis(spec.setup_timeout_ms),
    );
    let ctx = Arc::new(Ctx {
        live: Binned {
            t0_ns: now_ns(),
            shards: (0..LATENCY_SHARDS)
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        },
        replayed_latency: Mutex::new(new_histogram()),
        spec: spec.clone(),
        dialer,
        counters: Counters::default(),
        failures: Mutex::new(Failures::new()),
        since_drop: Mutex::new(new_histogram()),
        subscribe_to_receipt: Mutex::new(new_histogram()),
        recovered: Mutex::new([0; 3]),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    let progress = {
        let (ctx, events) = (ctx.clone(), events.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                let c = &ctx.counters;
                let p = FailoverProgress {
                    up: c.up.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    resumed: c.resumed.load(Ordering::Relaxed),
                    gave_up: c.gave_up.load(Ordering::Relaxed),
                    received: c.received.load(Ordering::Relaxed),
                    cpu_secs: self_cpu_secs(),
                };
                if events.send(FailoverEvent::Progress(p)).is_err() {
                    break;
                }
            }
        })
    };

    // The initial subscriptions, `setup_concurrency` at once.
    let readers: Vec<Arc<Reader>> = (0..spec.readers)
        .map(|k| {
            let index = spec.first_reader + k;
            Arc::new(Reader {
                index,
                dest: ((index / nodes as u64) % u64::from(spec.destinations)) as u32,
                track: Mutex::new(Track {
                    node: (index % nodes as u64) as usize,
                    ..Track::default()
                }),
            })
        })
        .collect();
    let started = now_ns();
    let setup_latency = Arc::new(Mutex::new(new_histogram()));
    let setup_failures = Arc::new(Mutex::new(Failures::new()));
    let in_flight = Arc::new(Semaphore::new(spec.setup_concurrency.max(1)));
    let mut dialing = JoinSet::new();
    for reader in &readers {
        let (reader, ctx, in_flight) = (reader.clone(), ctx.clone(), in_flight.clone());
        let (latency, failures) = (setup_latency.clone(), setup_failures.clone());
        dialing.spawn(async move {
            let _permit = in_flight.acquire().await.ok()?;
            let node = lock(&reader.track).node;
            let began = now_ns();
            match subscribe(&ctx, &reader, node, 0, None).await {
                Ok((conn, _)) => {
                    record_ns(&mut lock(&latency), now_ns() - began);
                    lock(&reader.track).up = true;
                    ctx.counters.up.fetch_add(1, Ordering::Relaxed);
                    Some((reader, conn))
                }
                Err(cause) => {
                    *lock(&failures).entry(cause).or_default() += 1;
                    None
                }
            }
        });
    }
    let mut lives = JoinSet::new();
    let mut per_node = vec![0u64; nodes];
    while let Some(done) = dialing.join_next().await {
        if let Ok(Some((reader, conn))) = done {
            per_node[lock(&reader.track).node] += 1;
            lives.spawn(life(reader, conn, ctx.clone(), stop_rx.clone()));
        }
    }
    let ready = FailoverReady {
        subscribed: per_node.iter().sum(),
        per_node,
        failures: lock(&setup_failures).clone(),
        setup: HistData::from_hist(&lock(&setup_latency)),
        setup_secs: (now_ns() - started) as f64 / 1e9,
    };
    events
        .send(FailoverEvent::Ready(ready))
        .map_err(|_| "coordinator gone")?;

    let Some(FailoverCommand::Finish {
        start,
        last,
        epoch,
        kill_ns,
        drain_ms,
    }) = commands.recv().await
    else {
        // The coordinator is gone: stop.
        let _ = stop_tx.send(true);
        return Ok(());
    };
    // Wait until every reader that is up has the last offset of its destination.
    let deadline = now_ns() + drain_ms * 1_000_000;
    loop {
        let behind = readers.iter().any(|reader| {
            let track = lock(&reader.track);
            let want = last.get(reader.dest as usize).copied().unwrap_or(0);
            track.up && track.last < want
        });
        if !behind || now_ns() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = finish(&ctx, &readers, &start, &last, &epoch, kill_ns, nodes);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while lives.join_next().await.is_some() {}
    })
    .await;
    progress.abort();
    let mut result = result;
    result.cpu_secs = self_cpu_secs();
    result.rss_bytes = self_rss_bytes();
    events
        .send(FailoverEvent::Done(Box::new(result)))
        .map_err(|_| "coordinator gone")?;
    Ok(())
}

/// Every reader checked against the destinations' start and last offsets.
fn finish(
    ctx: &Ctx,
    readers: &[Arc<Reader>],
    start: &[u64],
    last: &[u64],
    epoch: &[Option<String>],
    kill_ns: u64,
    nodes: usize,
) -> FailoverResult {
    let mut result = FailoverResult {
        readers: readers.len() as u64,
        per_node_end: vec![0; nodes],
        ..Default::default()
    };
    let mut since_kill = new_histogram();
    for reader in readers {
        let track = lock(&reader.track);
        let d = reader.dest as usize;
        let (from, to) = (
            start.get(d).copied().unwrap_or(0),
            last.get(d).copied().unwrap_or(0),
        );
        // Missed: what is not there between from+1 and to.
        let mut missed = track.gaps;
        if track.first == 0 {
            missed += to - from.min(to);
        } else {
            missed += track.first.saturating_sub(from + 1);
            missed += to.saturating_sub(track.last);
        }
        result.missed += missed;
        result.duplicated += track.dups;
        result.readers_missing += u64::from(missed > 0);
        result.readers_duplicated += u64::from(track.dups > 0);
        let want_epoch = epoch.get(d).cloned().flatten();
        let other_epoch =
            track.epoch_changes > 0 || (want_epoch.is_some() && track.epoch != want_epoch);
        result.other_epoch += u64::from(other_epoch);
        result.complete += u64::from(missed == 0 && track.dups == 0 && !other_epoch);
        result.replayed += track.replayed;
        result.received += track.received;
        result.drops += track.drops;
        result.gave_up += u64::from(track.gave_up);
        if track.drops > 0 {
            result.dropped_readers += 1;
            if !track.up {
                result.not_resumed += 1;
            }
        }
        if track.up {
            result.per_node_end[track.node] += 1;
        }
        if track.resumes > 0 && track.resumed_ns > 0 {
            record_ns(&mut since_kill, track.resumed_ns.saturating_sub(kill_ns));
            result.last_resume_ns = result.last_resume_ns.max(track.resumed_ns);
        }
    }
    let recovered = *lock(&ctx.recovered);
    result.recovered_true = recovered[0];
    result.recovered_false = recovered[1];
    result.recovered_missing = recovered[2];
    result.tries = ctx.counters.tries.load(Ordering::Relaxed);
    result.failures = lock(&ctx.failures).clone();
    result.since_kill = HistData::from_hist(&since_kill);
    result.since_drop = HistData::from_hist(&lock(&ctx.since_drop));
    result.subscribe_to_receipt = HistData::from_hist(&lock(&ctx.subscribe_to_receipt));
    result.replayed_latency = HistData::from_hist(&lock(&ctx.replayed_latency));
    result.live_latency = ctx.live.merged();
    result.latency_t0_ns = ctx.live.t0_ns;
    result
}

/// A reader from its first subscription on: reads until its connection
/// ends, then resumes elsewhere, until `stop`.
async fn life(reader: Arc<Reader>, conn: Conn, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let mut conn = Some(conn);
    let mut rng = Jitter::new(reader.index);
    loop {
        let Some(mut current) = conn.take() else {
            return;
        };
        if read_until_end(&reader, &mut current, &ctx, &mut stop).await {
            let _ = current.ws.close(None).await;
            return;
        }
        drop(current);
        // Dropped.
        let (lost_node, first_drop) = {
            let mut track = lock(&reader.track);
            track.up = false;
            track.drops += 1;
            track.drop_ns = now_ns();
            (track.node, track.drops == 1)
        };
        ctx.counters.up.fetch_sub(1, Ordering::Relaxed);
        if first_drop {
            ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let spec = &ctx.spec;
        let give_up = now_ns() + spec.retry_for_ms * 1_000_000;
        let mut backoff = spec.backoff_ms.max(2);
        let mut wait = spec.reconnect_delay_ms + rng.equal(backoff);
        let nodes = ctx.dialer.targets.len();
        let others: Vec<usize> = (0..nodes)
            .filter(|&n| n != lost_node || nodes == 1)
            .collect();
        let mut attempt = 0u64;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
            let node =
                others[((reader.index / nodes as u64 + attempt) % others.len() as u64) as usize];
            attempt += 1;
            ctx.counters.tries.fetch_add(1, Ordering::Relaxed);
            let since = {
                let track = lock(&reader.track);
                track.epoch.clone().map(|epoch| (track.last, epoch))
            };
            match subscribe(&ctx, &reader, node, attempt, since).await {
                Ok((fresh, recovered)) => {
                    let now = now_ns();
                    {
                        let mut track = lock(&reader.track);
                        record_ns(&mut lock(&ctx.since_drop), now - track.drop_ns);
                        track.node = node;
                        track.up = true;
                        track.resumed_ns = now;
                        track.resumes += 1;
                    }
                    lock(&ctx.recovered)[match recovered {
                        Some(true) => 0,
                        Some(false) => 1,
                        None => 2,
                    }] += 1;
                    ctx.counters.up.fetch_add(1, Ordering::Relaxed);
                    ctx.counters.resumed.fetch_add(1, Ordering::Relaxed);
                    conn = Some(fresh);
                    break;
                }
                Err(cause) => {
                    *lock(&ctx.failures).entry(cause).or_default() += 1;
                    if now_ns() >= give_up {
                        lock(&reader.track).gave_up = true;
                        ctx.counters.gave_up.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    backoff = (backoff * 2).min(spec.backoff_cap_ms.max(2));
                    wait = rng.equal(backoff);
                }
            }
        }
    }
}

/// Reads MESSAGEs until the connection ends (`false`) or `stop` (`true`).
async fn read_until_end(
    reader: &Reader,
    conn: &mut Conn,
    ctx: &Ctx,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => return true,
            message = conn.ws.next() => message,
        };
        let payload: Bytes = match message {
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Text(text))) => text.into(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
            Some(Ok(_)) => continue,
        };
        conn.buf.extend_from_slice(&payload);
        let arrived_ns = now_ns();
        let mut track = lock(&reader.track);
        let mut messages = 0;
        loop {
            match next_frame(&mut conn.buf) {
                Ok(Some(frame)) if frame.command == "MESSAGE" => {
                    messages += 1;
                    track.message(frame.offset, frame.epoch.as_deref());
                    if let Some(sent_ns) = frame.sent_ns {
                        ctx.live.record(reader.index, sent_ns, arrived_ns);
                    }
                }
                // ERROR (or anything unexpected): the broker closes after it.
                Ok(Some(_)) | Err(_) => {
                    drop(track);
                    ctx.counters.received.fetch_add(messages, Ordering::Relaxed);
                    return false;
                }
                Ok(None) => break,
            }
        }
        drop(track);
        ctx.counters.received.fetch_add(messages, Ordering::Relaxed);
    }
}

/// Connects to `node`, CONNECTs, SUBSCRIBEs (resuming after `since`, an
/// offset and its epoch, when given) with a receipt and reads until the
/// RECEIPT, taking the MESSAGEs before it (the replay) into the reader's
/// track. All within the setup timeout. The answer: the connection and
/// the RECEIPT's `x-recovered`.
async fn subscribe(
    ctx: &Ctx,
    reader: &Reader,
    node: usize,
    attempt: u64,
    since: Option<(u64, String)>,
) -> Result<(Conn, Option<bool>), String> {
    let resuming = since.is_some();
    let attempt_fut = async {
        let session = ctx
            .dialer
            .open_on(node, reader.index + attempt * 1_000_003)
            .await
            .map_err(|e| e.cause())?;
        let mut conn = Conn {
            ws: session.ws,
            buf: BytesMut::new(),
        };
        let receipt = format!("r{attempt}");
        let mut frame = Frame::new(StompCommand::Subscribe)
            .header("id", "1")
            .header(
                "destination",
                format!("{}{}", ctx.spec.dest_prefix, reader.dest),
            )
            .header("ack", "auto")
            .header("receipt", receipt.as_str());
        if let Some((offset, epoch)) = &since {
            frame = frame
                .header("x-since-offset", offset.to_string())
                .header("x-since-epoch", epoch.as_str());
        }
        let mut out = BytesMut::new();
        encode(&frame, Version::V1_2, &mut out);
        let sent_ns = now_ns();
        conn.ws
            .send(Message::Binary(out.freeze()))
            .await
            .map_err(|e| format!("websocket send: {e}"))?;
        let mut replayed = 0u64;
        loop {
            loop {
                match next_frame(&mut conn.buf).map_err(|e| format!("bad frame: {e}"))? {
                    Some(f) if f.command == "MESSAGE" => {
                        replayed += 1;
                        let mut track = lock(&reader.track);
                        track.message(f.offset, f.epoch.as_deref());
                        if resuming {
                            track.replayed += 1;
                            if let Some(sent_ns) = f.sent_ns {
                                record_ns(
                                    &mut lock(&ctx.replayed_latency),
                                    now_ns().saturating_sub(sent_ns),
                                );
                            }
                        }
                    }
                    Some(f) if f.command == "RECEIPT" && f.receipt.as_deref() == Some(&receipt) => {
                        ctx.counters.received.fetch_add(replayed, Ordering::Relaxed);
                        if resuming {
                            record_ns(&mut lock(&ctx.subscribe_to_receipt), now_ns() - sent_ns);
                        }
                        return Ok((conn, f.recovered));
                    }
                    Some(f) if f.command == "ERROR" => {
                        return Err(format!("STOMP ERROR: {}", f.message.unwrap_or_default()))
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            match conn.ws.next().await {
                Some(Ok(Message::Binary(b))) => conn.buf.extend_from_slice(&b),
                Some(Ok(Message::Text(t))) => conn.buf.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Close(_))) | None => {
                    return Err("closed by broker during setup".into())
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("websocket: {e}")),
            }
        }
    };
    match tokio::time::timeout(
        Duration::from_millis(ctx.spec.setup_timeout_ms),
        attempt_fut,
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err("timeout (setup, replay or RECEIPT)".into()),
    }
}

/// The parts of a frame this worker looks at.
#[derive(Debug, Default, PartialEq)]
struct RawFrame {
    command: &'static str,
    offset: Option<u64>,
    /// As sent (escaped, which the broker's epochs never need).
    epoch: Option<Bytes>,
    receipt: Option<String>,
    recovered: Option<bool>,
    message: Option<String>,
    /// A MESSAGE's stamp: when it was due to be published.
    sent_ns: Option<u64>,
}

/// Takes the next whole frame off `buf` (`Ok(None)`: more bytes needed).
/// Frames end at the first NUL after the headers (the load's bodies, and
/// the broker's RECEIPT and ERROR bodies, hold none); heart-beat newlines
/// between frames are skipped.
fn next_frame(buf: &mut BytesMut) -> Result<Option<RawFrame>, String> {
    while buf.first() == Some(&b'\n') || buf.starts_with(b"\r\n") {
        let skip = if buf[0] == b'\n' { 1 } else { 2 };
        let _ = buf.split_to(skip);
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let Some(head_end) = memchr::memmem::find(buf, b"\n\n")
        .map(|i| (i, 2))
        .or_else(|| memchr::memmem::find(buf, b"\r\n\r\n").map(|i| (i, 4)))
    else {
        return Ok(None);
    };
    let body_start = head_end.0 + head_end.1;
    let Some(nul) = memchr::memchr(0, &buf[body_start..]) else {
        return Ok(None);
    };
    let whole = buf.split_to(body_start + nul + 1).freeze();
    let head = std::str::from_utf8(&whole[..head_end.0]).map_err(|e| e.to_string())?;
    let mut lines = head.lines();
    let mut frame = RawFrame {
        command: match lines.next().unwrap_or("").trim_end_matches('\r') {
            "MESSAGE" => "MESSAGE",
            "RECEIPT" => "RECEIPT",
            "ERROR" => "ERROR",
            "CONNECTED" => "CONNECTED",
            _ => "other",
        },
        ..RawFrame::default()
    };
    if frame.command == "MESSAGE" {
        frame.sent_ns = parse_body(&whole[body_start..body_start + nul]).map(|s| s.sent_ns);
    }
    for line in lines {
        let Some((name, value)) = line.trim_end_matches('\r').split_once(':') else {
            continue;
        };
        // The first of a repeated header wins (STOMP 1.2).
        match name {
            "x-offset" if frame.offset.is_none() => frame.offset = value.parse().ok(),
            "x-epoch" if frame.epoch.is_none() => {
                frame.epoch = Some(whole.slice_ref(value.as_bytes()))
            }
            "receipt-id" if frame.receipt.is_none() => frame.receipt = Some(unescape(value)),
            "x-recovered" if frame.recovered.is_none() => frame.recovered = Some(value == "true"),
            "message" if frame.message.is_none() => frame.message = Some(unescape(value)),
            _ => {}
        }
    }
    Ok(Some(frame))
}

/// STOMP 1.2 header value escapes undone.
fn unescape(value: &str) -> String {
    if !value.contains('\\') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// A small xorshift generator for the backoff's jitter (no dependency).
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        Jitter((seed ^ now_ns()).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Equal jitter: half of `ms`, plus up to the other half.
    fn equal(&mut self, ms: u64) -> u64 {
        ms / 2 + self.next() % (ms / 2 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_apart() {
        let mut buf = BytesMut::from(
            &b"\nMESSAGE\ndestination:/topic/a\nx-offset:7\nx-epoch:ab\\c1\nx-offset:9\n\nbody\0RECEIPT\nreceipt-id:r1\nx-recovered:true\n\n\0MESS"[..],
        );
        let m = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            (m.command, m.offset, m.epoch.as_deref()),
            ("MESSAGE", Some(7), Some(&b"ab\\c1"[..]))
        );
        let r = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            (r.command, r.receipt.as_deref(), r.recovered),
            ("RECEIPT", Some("r1"), Some(true))
        );
        assert_eq!(next_frame(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"MESS");
    }

    #[test]
    fn offsets_are_checked() {
        let mut t = Track::default();
        for offset in [3, 4, 4, 7, 8] {
            t.message(Some(offset), Some(b"e"));
        }
        assert_eq!((t.first, t.last, t.gaps, t.dups), (3, 8, 2, 1));
        t.message(Some(9), Some(b"a\\cb"));
        assert_eq!(t.epoch_changes, 1);
        assert_eq!(t.epoch.as_deref(), Some("a:b"));
    }

    #[test]
    fn jitter_stays_in_its_half() {
        let mut j = Jitter::new(5);
        for _ in 0..1000 {
            let w = j.equal(1000);
            assert!((500..=1000).contains(&w));
        }
    }
}

//! The memory engine's history: each destination's offset counter, its
//! epoch, and its last `history-size` messages, for resume (`x-since-offset`)
//! and catch-up (`x-history`).
//!
//! - **Offsets**: a destination's messages are numbered 1, 2, 3, ... where
//!   they are published. The offset is assigned, the message stored and
//!   fanned out under the destination's own lock, so every reader sees a
//!   destination's messages in offset order, and a subscription registered
//!   under the same lock gets exactly the messages after the history it was
//!   given: no gap, no duplicate.
//! - **Epochs** name one continuous history. A destination's epoch is made
//!   when its log is created (this process's boot id and a counter), so a
//!   restart, or a log forgotten under `history-max-bytes`, gives it a new
//!   one, and offsets of the old history are never taken for the new one's.
//! - **Bounds**: `history-size` messages per destination, dropped
//!   `history-ttl` after the destination's last publish (the counter and the
//!   epoch stay), and `history-max-bytes` in all: past it whole destinations
//!   (counter and epoch included) are forgotten, least recently published
//!   first, and counted in `history_evicted_destinations_total`.
//!
//! Locks: a log's mutex is taken before `by_publish`'s, never the other way
//! round; neither is held across an `.await` (nothing here awaits).

use dashmap::DashMap;
use prometheus::{IntCounter, IntGauge};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use stompede_protocol::PreparedMessage;

/// What one destination's log costs besides its messages: the map entry,
/// the log itself, its place in `by_publish`, the epoch (the destination's
/// name is added to it).
const LOG_OVERHEAD_BYTES: usize = 256;
/// What one stored message costs besides its body and headers: its slot in
/// the log and the shared message's own bookkeeping.
const MESSAGE_OVERHEAD_BYTES: usize = 96;
/// Most logs one sweep looks at (see [`History::sweep`]), so a sweep is short.
const SWEEP_BATCH: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct HistorySettings {
    /// `history-size`: messages kept per destination.
    pub size: usize,
    /// `history-ttl`: how long messages are kept after the last publish.
    pub ttl: Duration,
    /// `history-max-bytes`: the bound on everything here.
    pub max_bytes: usize,
}

/// Where a destination's history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    /// The offset of the destination's last message (0: none yet).
    pub offset: u64,
}

/// What a new subscription asks of the history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayRequest {
    /// `x-since-epoch` and `x-since-offset`: every message after this one.
    pub since: Option<(String, u64)>,
    /// `x-history`: the last this many messages (clamped to `history-size`);
    /// when `since` is given too, only if it cannot be served.
    pub last: usize,
}

impl ReplayRequest {
    /// Whether it asks for anything from history.
    pub fn wants_history(&self) -> bool {
        self.since.is_some() || self.last > 0
    }
}

/// What the history gave a new subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub position: Position,
    /// Whether a `since` request was served in full (`None`: none was made).
    pub recovered: Option<bool>,
    /// How many messages were replayed.
    pub replayed: usize,
}

/// A destination's messages from `after + 1` on, or why they cannot be had.
#[derive(Debug)]
pub enum Since {
    /// Every message after the offset, oldest first (maybe none).
    Covered(Vec<Arc<PreparedMessage>>),
    /// The epoch differs, or some of those messages are gone.
    Lost,
}

#[derive(Debug)]
struct Stored {
    offset: u64,
    message: Arc<PreparedMessage>,
    cost: usize,
}

#[derive(Debug)]
struct Log {
    destination: Arc<str>,
    epoch: Arc<str>,
    latest: u64,
    messages: VecDeque<Stored>,
    /// What this log costs `history-max-bytes`, its overhead included.
    bytes: usize,
    last_publish: Instant,
    /// Its key in `by_publish`.
    published_seq: u64,
    /// Set once the log is forgotten: whoever still holds it looks again.
    forgotten: bool,
}

impl Log {
    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.latest,
        }
    }

    /// Drops the messages if the last publish is older than `ttl`; returns
    /// the bytes freed.
    fn expire(&mut self, now: Instant, ttl: Duration) -> usize {
        if self.messages.is_empty() || now.saturating_duration_since(self.last_publish) < ttl {
            return 0;
        }
        let freed: usize = self.messages.iter().map(|stored| stored.cost).sum();
        self.messages = VecDeque::new();
        self.bytes -= freed;
        freed
    }

    fn since(&self, epoch: &str, after: u64) -> Since {
        if epoch != &*self.epoch || after > self.latest {
            return Since::Lost;
        }
        if after == self.latest {
            return Since::Covered(Vec::new());
        }
        match self.messages.front() {
            Some(oldest) if oldest.offset <= after + 1 => {
                let skip = (after + 1 - oldest.offset) as usize;
                Since::Covered(
                    self.messages
                        .iter()
                        .skip(skip)
                        .map(|stored| stored.message.clone())
                        .collect(),
                )
            }
            _ => Since::Lost,
        }
    }

    fn last(&self, count: usize) -> Vec<Arc<PreparedMessage>> {
        let skip = self.messages.len().saturating_sub(count);
        self.messages
            .iter()
            .skip(skip)
            .map(|stored| stored.message.clone())
            .collect()
    }
}

pub struct History {
    settings: HistorySettings,
    logs: DashMap<Arc<str>, Arc<Mutex<Log>>>,
    /// Destinations by their last publish (or creation), oldest first.
    by_publish: Mutex<BTreeMap<u64, Arc<str>>>,
    next_publish_seq: AtomicU64,
    /// Logs up to this `published_seq` have had their messages expired.
    swept_up_to: AtomicU64,
    bytes: AtomicUsize,
    /// Epochs are `{boot}.{n}`: unique across restarts and logs.
    boot: String,
    next_epoch: AtomicU64,
    metrics: HistoryMetrics,
}

/// The metrics the history moves (clones share the registered ones).
#[derive(Clone)]
pub struct HistoryMetrics {
    pub bytes: IntGauge,
    pub destinations: IntGauge,
    pub evictions: IntCounter,
}

impl HistoryMetrics {
    pub fn of(metrics: &crate::metrics::Metrics) -> HistoryMetrics {
        HistoryMetrics {
            bytes: metrics.history_bytes.clone(),
            destinations: metrics.history_destinations.clone(),
            evictions: metrics.history_evictions.clone(),
        }
    }
}

/// How often messages past `history-ttl` are looked for (at most): a tenth
/// of the TTL, so they are dropped within about 1.1 TTLs.
const SWEEPS_PER_TTL: u32 = 10;

impl History {
    pub fn new(settings: HistorySettings, boot: String, metrics: HistoryMetrics) -> History {
        History {
            settings,
            logs: DashMap::new(),
            by_publish: Mutex::new(BTreeMap::new()),
            next_publish_seq: AtomicU64::new(1),
            swept_up_to: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            boot,
            next_epoch: AtomicU64::new(1),
            metrics,
        }
    }

    /// A history whose sweeper runs on the current tokio runtime (without
    /// one, as in unit tests, messages past the TTL are dropped only when
    /// their destination is used); the sweeper stops once it is dropped.
    pub fn start(settings: HistorySettings, boot: String, metrics: HistoryMetrics) -> Arc<History> {
        let history = Arc::new(History::new(settings, boot, metrics));
        let period = settings.ttl / SWEEPS_PER_TTL;
        let sweeping = Arc::downgrade(&history);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let Some(history) = sweeping.upgrade() else {
                        break;
                    };
                    history.sweep(Instant::now());
                }
            });
        }
        history
    }

    pub fn settings(&self) -> &HistorySettings {
        &self.settings
    }

    /// Publishes one message to `destination`: assigns the next offset,
    /// `build`s the message for it, stores it and hands it to `deliver`, all
    /// under the destination's lock, so that offsets and deliveries keep one
    /// order. `deliver` must not wait for anything.
    pub fn publish<R>(
        &self,
        destination: &str,
        build: impl FnOnce(&Position) -> Arc<PreparedMessage>,
        deliver: impl FnOnce(&Arc<PreparedMessage>) -> R,
    ) -> R {
        let now = Instant::now();
        let result = self.with_log(destination, |log| {
            let freed = log.expire(now, self.settings.ttl);
            self.sub_bytes(freed);
            log.latest += 1;
            let message = build(&log.position());
            self.store(log, &message, now);
            deliver(&message)
        });
        self.evict_past_budget(destination);
        result
    }

    /// Registers a subscription and answers what it asked for: `register`
    /// runs under the destination's lock with the messages to replay
    /// (oldest first), so no publish falls between them and the live
    /// messages the subscription gets.
    pub fn subscribe(
        &self,
        destination: &str,
        request: &ReplayRequest,
        register: impl FnOnce(&[Arc<PreparedMessage>]),
    ) -> Replay {
        let now = Instant::now();
        let replay = self.with_log(destination, |log| {
            let freed = log.expire(now, self.settings.ttl);
            self.sub_bytes(freed);
            let mut recovered = None;
            let mut messages = Vec::new();
            if let Some((epoch, after)) = &request.since {
                match log.since(epoch, *after) {
                    Since::Covered(since) => {
                        recovered = Some(true);
                        messages = since;
                    }
                    Since::Lost => recovered = Some(false),
                }
            }
            if recovered != Some(true) && request.last > 0 {
                messages = log.last(request.last.min(self.settings.size));
            }
            register(&messages);
            Replay {
                position: log.position(),
                recovered,
                replayed: messages.len(),
            }
        });
        // A new log may have pushed the history past its budget.
        self.evict_past_budget(destination);
        replay
    }

    /// Records a message numbered elsewhere (the redis engine keeps what its
    /// node received, to serve resumes without a Redis read) and hands it
    /// to `deliver`, both under the destination's lock. A message that does
    /// not follow the last one (another epoch, a skipped offset) starts the
    /// destination's log again from itself.
    pub fn append<R>(
        &self,
        destination: &str,
        position: &Position,
        message: &Arc<PreparedMessage>,
        deliver: impl FnOnce(&Arc<PreparedMessage>) -> R,
    ) -> R {
        let now = Instant::now();
        let result = self.with_log(destination, |log| {
            let mut freed = log.expire(now, self.settings.ttl);
            let follows = *log.epoch == *position.epoch && position.offset == log.latest + 1;
            if !follows {
                let dropped: usize = log.messages.iter().map(|stored| stored.cost).sum();
                log.messages = VecDeque::new();
                log.bytes -= dropped;
                freed += dropped;
                log.epoch = position.epoch.clone();
            }
            self.sub_bytes(freed);
            log.latest = position.offset;
            self.store(log, message, now);
            deliver(message)
        });
        self.evict_past_budget(destination);
        result
    }

    /// Like [`subscribe`](Self::subscribe), but only when this log can
    /// answer the request in full (a resume it covers, or as many of the
    /// last messages as asked); never makes a log. `None`: ask elsewhere
    /// (the redis engine reads Redis), and `register` was not called.
    pub fn subscribe_covered(
        &self,
        destination: &str,
        request: &ReplayRequest,
        register: impl FnOnce(&[Arc<PreparedMessage>]),
    ) -> Option<Replay> {
        let log = self.logs.get(destination).map(|log| log.clone())?;
        let mut log = lock(&log);
        if log.forgotten {
            return None;
        }
        let freed = log.expire(Instant::now(), self.settings.ttl);
        self.sub_bytes(freed);
        let (messages, recovered) = match &request.since {
            Some((epoch, after)) => match log.since(epoch, *after) {
                Since::Covered(messages) => (messages, Some(true)),
                Since::Lost => return None,
            },
            None => {
                let wanted = request.last.min(self.settings.size);
                let from_the_start = log
                    .messages
                    .front()
                    .is_some_and(|oldest| oldest.offset == 1);
                if log.messages.len() < wanted && !from_the_start {
                    return None;
                }
                (log.last(wanted), None)
            }
        };
        register(&messages);
        Some(Replay {
            position: log.position(),
            recovered,
            replayed: messages.len(),
        })
    }

    /// Forgets `destination`'s log (the redis engine stopped listening to
    /// it, so it would go stale).
    pub fn forget(&self, destination: &str) {
        let Some(log) = self.logs.get(destination).map(|log| log.clone()) else {
            return;
        };
        let mut log = lock(&log);
        if !log.forgotten {
            self.drop_log(&mut log);
        }
    }

    /// For the HTTP API: the messages of `destination` after `after` (in
    /// `epoch`, default the current one), or without `after` its last ones;
    /// at most `limit`, oldest first. `None` for a destination with no log.
    pub fn read(
        &self,
        destination: &str,
        epoch: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> (Option<Position>, Since) {
        let Some(log) = self.logs.get(destination).map(|log| log.clone()) else {
            return (None, Since::Lost);
        };
        let mut log = lock(&log);
        if log.forgotten {
            return (None, Since::Lost);
        }
        let freed = log.expire(Instant::now(), self.settings.ttl);
        self.sub_bytes(freed);
        let since = match after {
            None => Since::Covered(log.last(limit)),
            Some(after) => match log.since(epoch.unwrap_or(&log.epoch), after) {
                Since::Covered(mut messages) => {
                    messages.truncate(limit);
                    Since::Covered(messages)
                }
                Since::Lost => Since::Lost,
            },
        };
        (Some(log.position()), since)
    }

    /// Runs `f` on `destination`'s log, made if there is none (with a new epoch).
    fn with_log<R>(&self, destination: &str, f: impl FnOnce(&mut Log) -> R) -> R {
        loop {
            let (log, created) = match self.logs.get(destination) {
                Some(log) => (log.clone(), false),
                None => {
                    let mut created = false;
                    let name: Arc<str> = Arc::from(destination);
                    let log = self
                        .logs
                        .entry(name.clone())
                        .or_insert_with(|| {
                            created = true;
                            self.new_log(&name)
                        })
                        .clone();
                    (log, created)
                }
            };
            let mut guard = lock(&log);
            if guard.forgotten {
                // Evicted between the lookup and the lock: take the new one.
                continue;
            }
            if created {
                self.republished(&mut guard);
            }
            return f(&mut guard);
        }
    }

    fn new_log(&self, destination: &Arc<str>) -> Arc<Mutex<Log>> {
        let epoch = format!("{}.{}", self.boot, self.next_epoch.fetch_add(1, Relaxed));
        let bytes = LOG_OVERHEAD_BYTES + 2 * destination.len() + epoch.len();
        self.add_bytes(bytes);
        self.metrics.destinations.inc();
        Arc::new(Mutex::new(Log {
            destination: destination.clone(),
            epoch: Arc::from(epoch),
            latest: 0,
            messages: VecDeque::new(),
            bytes,
            last_publish: Instant::now(),
            published_seq: 0,
            forgotten: false,
        }))
    }

    /// Keeps `message` (at `log.latest`) within `history-size`, and moves the
    /// log to the newest end of `by_publish`.
    fn store(&self, log: &mut Log, message: &Arc<PreparedMessage>, now: Instant) {
        if self.settings.size > 0 {
            let cost = stored_cost(message);
            log.messages.push_back(Stored {
                offset: log.latest,
                message: message.clone(),
                cost,
            });
            log.bytes += cost;
            self.add_bytes(cost);
            let mut freed = 0;
            while log.messages.len() > self.settings.size {
                let dropped = log.messages.pop_front().expect("not empty");
                log.bytes -= dropped.cost;
                freed += dropped.cost;
            }
            self.sub_bytes(freed);
        }
        log.last_publish = now;
        self.republished(log);
    }

    /// Removes a log from the map and from `by_publish` (its lock is held),
    /// and gives back what it cost.
    fn drop_log(&self, log: &mut Log) {
        log.forgotten = true;
        self.logs.remove(&log.destination);
        lock(&self.by_publish).remove(&log.published_seq);
        self.sub_bytes(log.bytes);
        self.metrics.destinations.dec();
    }

    /// Moves `log` to the newest end of `by_publish` (its lock is held).
    fn republished(&self, log: &mut Log) {
        let seq = self.next_publish_seq.fetch_add(1, Relaxed);
        let mut by_publish = lock(&self.by_publish);
        by_publish.remove(&log.published_seq);
        by_publish.insert(seq, log.destination.clone());
        log.published_seq = seq;
    }

    /// Forgets the least recently published destinations (never `keep`)
    /// until the history fits `history-max-bytes`.
    fn evict_past_budget(&self, keep: &str) {
        while self.bytes.load(Relaxed) > self.settings.max_bytes {
            let oldest = {
                let by_publish = lock(&self.by_publish);
                by_publish
                    .iter()
                    .find(|(_, destination)| &***destination != keep)
                    .map(|(seq, destination)| (*seq, destination.clone()))
            };
            let Some((seq, destination)) = oldest else {
                return;
            };
            let Some(log) = self.logs.get(&destination).map(|log| log.clone()) else {
                lock(&self.by_publish).remove(&seq);
                continue;
            };
            let mut log = lock(&log);
            if log.forgotten || log.published_seq != seq {
                // Published again meanwhile: no longer the oldest.
                continue;
            }
            self.drop_log(&mut log);
            self.metrics.evictions.inc();
        }
    }

    /// Drops the messages of destinations whose last publish is older than
    /// `history-ttl` (their counters and epochs stay); looks at most at
    /// `SWEEP_BATCH` logs. Called on an interval by the memory engine.
    pub fn sweep(&self, now: Instant) {
        let candidates: Vec<(u64, Arc<str>)> = {
            let by_publish = lock(&self.by_publish);
            let from = self.swept_up_to.load(Relaxed) + 1;
            by_publish
                .range(from..)
                .take(SWEEP_BATCH)
                .map(|(seq, destination)| (*seq, destination.clone()))
                .collect()
        };
        for (seq, destination) in candidates {
            let Some(log) = self.logs.get(&destination).map(|log| log.clone()) else {
                continue;
            };
            let mut log = lock(&log);
            if log.forgotten {
                continue;
            }
            if log.published_seq == seq
                && now.saturating_duration_since(log.last_publish) < self.settings.ttl
            {
                // The rest were published later still.
                return;
            }
            let freed = log.expire(now, self.settings.ttl);
            self.sub_bytes(freed);
            self.swept_up_to.fetch_max(seq, Relaxed);
        }
    }
}

impl History {
    fn add_bytes(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Relaxed);
        self.metrics.bytes.add(bytes as i64);
    }

    fn sub_bytes(&self, bytes: usize) {
        if bytes > 0 {
            self.bytes.fetch_sub(bytes, Relaxed);
            self.metrics.bytes.sub(bytes as i64);
        }
    }
}

fn stored_cost(message: &PreparedMessage) -> usize {
    message.body().len() + 2 * message.headers().byte_len() + MESSAGE_OVERHEAD_BYTES
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

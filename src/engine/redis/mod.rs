//! The Redis engine: several stompede nodes acting as one broker.
//!
//! - **Publishing**: one Lua script call (one round trip) checks the
//!   idempotency key and PUBLISHes the message to each destination's channel.
//!   A node delivers its own publishes when they come back from Redis, like
//!   everyone else's, so every reader of a destination sees one order.
//! - **Interest**: a node subscribes to a destination's channel only while it
//!   has local subscribers. SUBSCRIBE and UNSUBSCRIBE go out from one task,
//!   which takes every destination waiting at that moment into one command,
//!   so 10,000 readers arriving on a new destination cause one SUBSCRIBE. A
//!   destination whose last reader left stays subscribed for
//!   `interest-linger`, so one that flaps costs nothing.
//! - **Counts**: each node writes, every `reader-count-interval`, the counts
//!   that changed into its own hash (`readers:NODE`), which expires as a whole
//!   after three intervals without a report; live nodes are a sorted set
//!   scored by their last report. No Redis call per reader join or leave.
//! - **Faults**: the node starts and serves readers without Redis; publishes
//!   answer 503 until it is back. The links reconnect with exponential backoff
//!   and jitter; then every destination is subscribed again and every count
//!   reported again (Redis may have lost them).
//! - **Slot moves** (Redis Cluster): when a slot moves to another master
//!   (resharding, failover) its old owner drops this node's subscriptions to
//!   the slot's channels and pushes a `sunsubscribe`. fred 10 swallows that
//!   push (`router/responses.rs`, "Dropping unused subscription response")
//!   and resubscribes only after a reconnect, so the engine notices the move
//!   itself: it reads the slot map (CLUSTER SLOTS) every
//!   `CLUSTER_CHECK_INTERVAL`, and at once when a publish met a MOVED, and
//!   compares it with the previous read. The destinations of a slot whose
//!   master changed are a gap (`engine_subscriptions_lost_total`),
//!   unconfirmed, and subscribed again (fred follows the MOVED to the new owner).
//!
//! Keys and channels (PREFIX is `redis-key-prefix`; the destination sits in
//! `{...}`, a hash tag, so its keys share its Redis Cluster slot):
//! `PREFIX{D}` channel of destination D, `PREFIX{D}idem:KEY` idempotency key,
//! `PREFIX{D}meta` hash with D's `epoch` and latest `offset`, `PREFIX{D}log`
//! list of D's last `history-size` messages,
//! `PREFIXreaders:NODE` hash destination -> readers on NODE,
//! `PREFIXnodes` sorted set NODE -> last report (ms).

mod history;
mod receive;
pub mod tls;
mod wire;

pub use history::{HistoryRead, Read};

use super::{Confirmation, EngineError, EngineStatus, Publication, Published};
use crate::config::Config;
use crate::history::{History, HistoryMetrics, HistorySettings};
use crate::hub::Hub;
use crate::metrics::Metrics;
use dashmap::DashMap;
use fred::interfaces::KeysInterface;
use fred::interfaces::{ClientLike, ClusterInterface, EventInterface, HashesInterface};
use fred::interfaces::{PubsubInterface, SortedSetsInterface};
use fred::prelude::{Builder, Client, ReconnectPolicy};
use fred::types::scripts::Script;
use fred::types::Value;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Most destinations in one SUBSCRIBE, UNSUBSCRIBE or HSET command.
const MAX_CHANNELS_PER_COMMAND: usize = 1000;
/// How long the interest task waits, once woken, for more destinations to
/// come before it sends its SUBSCRIBE: a crowd of readers of many new
/// destinations then costs a few commands, not one per destination. It
/// delays a first reader's RECEIPT by as much.
const INTEREST_GATHER: Duration = Duration::from_millis(2);
/// How soon the interest task looks again when the pub/sub link is down or a
/// SUBSCRIBE failed.
const INTEREST_RETRY: Duration = Duration::from_millis(100);
/// A node that has not reported its counts for this many intervals is dead.
const LIVENESS_INTERVALS: u32 = 3;
/// On a Redis Cluster, how often a node reads the slot map (one CLUSTER
/// SLOTS) to find the slots that moved away from the master its
/// subscriptions are on. It also looks at once when a publish of its own met
/// a MOVED. A moved slot's destinations hear nothing for up to about this long.
const CLUSTER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Checks the idempotency key (if any), then, for each destination, gives the
/// message the destination's next offset, keeps it in the destination's
/// history and publishes it, all in one step (so offsets, history and the
/// channel keep one order). KEYS: per destination its channel, `meta` hash
/// (`epoch`, `offset`: one key, so neither is kept without the other) and
/// `log` list (all in one hash slot on a Redis Cluster), then the
/// idempotency key when ARGV[4] is '1'. ARGV: [1] window (ms), [2] message
/// id, [3] payload (version 1), [4] '1' with an idempotency key, [5]
/// `PUBLISH` or `SPUBLISH`, [6] `history-size`, [7] `history-ttl` (ms), [8]
/// `history-epoch-ttl` (ms). A destination without an epoch (new, or lost by
/// Redis) starts a new history named by this message's id, unique in the
/// cluster. Returns the message id, or the first one's for a key seen
/// within the window.
const PUBLISH_SCRIPT: &str = r#"
local keys = #KEYS
if ARGV[4] == '1' then
  keys = keys - 1
  local first = redis.call('GET', KEYS[#KEYS])
  if first then return first end
  redis.call('SET', KEYS[#KEYS], ARGV[2], 'PX', ARGV[1])
end
local size = tonumber(ARGV[6])
for i = 1, keys, 3 do
  local channel, meta, log = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = ARGV[2]
    redis.call('DEL', meta, log)
    redis.call('HSET', meta, 'epoch', epoch)
  end
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  local payload = '\2' .. offset .. ':' .. epoch .. '\n' .. ARGV[3]
  if size > 0 then
    redis.call('RPUSH', log, payload)
    redis.call('LTRIM', log, -size, -1)
    redis.call('PEXPIRE', log, ARGV[7])
  end
  redis.call('PEXPIRE', meta, ARGV[8])
  redis.call(ARGV[5], channel, payload)
end
return ARGV[2]
"#;

/// The Redis engine's settings (see the README's settings table).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub node_id: String,
    pub key_prefix: String,
    pub command_timeout: Duration,
    pub reconnect_max_delay: Duration,
    pub input_queue: usize,
    pub max_queued_commands: usize,
    pub count_interval: Duration,
    pub interest_linger: Duration,
    pub idempotency_window: Duration,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub history_epoch_ttl: Duration,
    pub history_max_bytes: usize,
    /// For `rediss://`: the CA, client certificate and key files.
    pub tls: tls::TlsFiles,
}

impl RedisSettings {
    pub fn new(config: &Config, node_id: &str) -> RedisSettings {
        RedisSettings {
            url: config.redis_url.clone(),
            node_id: node_id.to_owned(),
            key_prefix: config.redis_key_prefix.clone(),
            command_timeout: config.redis_command_timeout,
            reconnect_max_delay: config.redis_reconnect_max_delay,
            input_queue: config.redis_input_queue,
            max_queued_commands: config.redis_max_queued_commands,
            count_interval: config.reader_count_interval,
            interest_linger: config.interest_linger,
            idempotency_window: config.idempotency_window,
            history_size: config.history_size,
            history_ttl: config.history_ttl,
            history_epoch_ttl: config.history_epoch_ttl,
            history_max_bytes: config.history_max_bytes,
            tls: config.redis_tls_files(),
        }
    }

    fn channel(&self, destination: &str) -> String {
        format!("{}{{{destination}}}", self.key_prefix)
    }

    /// The destination of a channel this node subscribed to.
    fn destination<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.key_prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix('}')
    }

    fn idempotency_key(&self, destination: &str, key: &str) -> String {
        format!("{}{{{destination}}}idem:{key}", self.key_prefix)
    }

    /// A destination's history: `meta` (its epoch and latest offset) and `log` (its messages).
    fn meta_key(&self, destination: &str) -> String {
        format!("{}{{{destination}}}meta", self.key_prefix)
    }

    fn log_key(&self, destination: &str) -> String {
        format!("{}{{{destination}}}log", self.key_prefix)
    }

    fn readers_key(&self, node: &str) -> String {
        format!("{}readers:{node}", self.key_prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.key_prefix)
    }

    fn liveness(&self) -> Duration {
        self.count_interval * LIVENESS_INTERVALS
    }
}

/// This node's Redis subscription to one destination's channel.
enum Interest {
    /// A SUBSCRIBE is due or in flight; these wait for its confirmation.
    Pending(Vec<oneshot::Sender<()>>),
    Subscribed,
    /// No local reader since the instant given; UNSUBSCRIBE after `interest-linger`.
    Lingering(Instant),
    /// An UNSUBSCRIBE is in flight; these arrived meanwhile and wait for a new SUBSCRIBE.
    Unsubscribing(Vec<oneshot::Sender<()>>),
}

pub struct RedisEngine {
    shared: Arc<Shared>,
    /// Where fred's connection tasks run (see `redis_io_runtime`).
    io: Option<tokio::runtime::Runtime>,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        if let Some(io) = self.io.take() {
            // Dropping a runtime may block, which is not allowed on a tokio worker.
            io.shutdown_background();
        }
    }
}

/// fred's connection tasks (the socket reads and writes of both Redis
/// clients, reconnects) run on a runtime of their own, one thread named
/// `stompede-redis`, not on the broker's workers. On the broker's workers a
/// Redis reply waits in the run queue behind every writer task the last
/// fan-out woke (5,000 for 5,000 readers), so each publish's round trip grew
/// with the fan-out and, since a connection's HTTP requests are answered in
/// order, capped the publishes per connection (measured: 11 ms per publish
/// round trip at 5,000 readers, 76-96 publishes/s; 6 ms and 143-151/s with
/// this runtime, load-tests/RESULTS.md). A task woken from another thread is
/// taken from the workers' shared queue within a few dozen polls instead.
fn redis_io_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("stompede-redis")
        .enable_all()
        .build()
        .expect("a one-thread tokio runtime can be built")
}

struct Shared {
    hub: Arc<Hub>,
    settings: RedisSettings,
    /// Publishes, scripts and counts (one multiplexed, pipelined connection).
    commands: Client,
    /// SUBSCRIBE and UNSUBSCRIBE only: a dedicated connection (on a Redis
    /// Cluster, one per master, with SSUBSCRIBE and SUNSUBSCRIBE).
    pubsub: Client,
    /// Whether `redis-url` names a Redis Cluster (`redis-cluster://`).
    clustered: bool,
    /// Why the engine cannot work at all (the TLS setup failed), for `/readyz`.
    setup_error: Option<String>,
    /// The last error either link reported, for `/readyz` while down.
    last_error: Mutex<Option<String>>,
    publish_script: Script,
    history_script: Script,
    /// What this node received of each destination it listens to (the last
    /// `history-size` messages, within `history-max-bytes`), so that a
    /// resume it covers needs no Redis read: a crowd of readers resuming
    /// on this node costs a read per destination, not per reader.
    local: Arc<History>,
    /// One entry per destination this node is (or is becoming) subscribed to;
    /// bounded by the registry's destinations plus the lingering ones.
    interest: DashMap<Arc<str>, Interest>,
    /// Destinations whose interest changed, for the interest task; touched
    /// only on a change (a first reader, a last one leaving), not per SUBSCRIBE.
    interest_changed: Mutex<HashSet<Arc<str>>>,
    wake_interest: Notify,
    /// Set once the pub/sub link is back and subscribed again: the receive
    /// task reads what each destination missed meanwhile (see `receive`).
    fill_gaps: Notify,
    /// Destinations whose local count changed since the last report.
    counts_changed: DashMap<Arc<str>, ()>,
    /// Set when Redis may have lost this node's counts (at start, after a
    /// reconnect or a failed report): the next report writes them all.
    report_all: AtomicBool,
    /// Other nodes' readers of a destination and when they were read, for
    /// `cluster_counts`; entries older than an interval are dropped by the
    /// report task, so it holds what was asked for within one interval.
    count_cache: DashMap<Arc<str>, (Instant, usize)>,
    /// Nodes that reported within the liveness bound, this one excluded.
    other_live_nodes: RwLock<Vec<String>>,
    stop: CancellationToken,
}

impl RedisEngine {
    /// Builds the clients and starts the engine's tasks; does not wait for
    /// Redis (a node starts, and serves readers, while Redis is down).
    pub fn start(hub: Arc<Hub>, settings: RedisSettings) -> RedisEngine {
        let mut config =
            fred::types::config::Config::from_url(&tls::without_tls_scheme(&settings.url))
                .expect("redis-url was checked when the settings were read");
        let mut setup_error = None;
        if tls::url_uses_tls(&settings.url) {
            config.tls = Some(tls::config(&settings.tls).unwrap_or_else(|error| {
                // Checked when the settings were read, so only a file changed
                // since: trust nothing (every handshake fails, the engine stays
                // down and says why) rather than talk to Redis in the clear.
                tracing::error!(%error, "redis TLS setup failed: the engine stays down");
                setup_error = Some(error);
                tls::trusting_nothing()
            }));
        }
        // The first connection retries like any other: a node starts without Redis.
        config.fail_fast = false;
        let max_delay = settings
            .reconnect_max_delay
            .as_millis()
            .min(u32::MAX as u128) as u32;
        let builder = {
            let mut builder = Builder::from_config(config);
            builder
                .with_performance_config(|performance| {
                    performance.default_command_timeout = settings.command_timeout;
                    performance.broadcast_channel_capacity = settings.input_queue;
                })
                .with_connection_config(|connection| {
                    connection.connection_timeout = settings.command_timeout;
                    connection.internal_command_timeout = settings.command_timeout;
                    // A command is tried once: a publish that failed answers 503
                    // instead of being replayed later, perhaps twice.
                    connection.max_command_attempts = 1;
                    // fred's own queue is unbounded by default; past this a
                    // command fails at once (a publish answers 503).
                    connection.max_command_buffer_len = settings.max_queued_commands;
                    connection.tcp.nodelay = Some(true);
                })
                // Retries forever, 100 ms doubling up to the cap, with fred's jitter.
                .set_policy(ReconnectPolicy::new_exponential(
                    0,
                    100,
                    max_delay.max(100),
                    2,
                ));
            builder
        };
        let local = History::start(
            HistorySettings {
                size: settings.history_size,
                ttl: settings.history_ttl,
                max_bytes: settings.history_max_bytes,
            },
            settings.node_id.clone(),
            HistoryMetrics::of(hub.metrics()),
        );
        let commands = builder.build().expect("a client from a checked config");
        let pubsub = builder.build().expect("a client from a checked config");
        let shared = Arc::new(Shared {
            hub,
            settings,
            clustered: commands.is_clustered(),
            setup_error,
            last_error: Mutex::new(None),
            commands,
            pubsub,
            publish_script: Script::from_lua(PUBLISH_SCRIPT),
            history_script: history::script(),
            local,
            interest: DashMap::new(),
            interest_changed: Mutex::new(HashSet::new()),
            wake_interest: Notify::new(),
            fill_gaps: Notify::new(),
            counts_changed: DashMap::new(),
            report_all: AtomicBool::new(true),
            count_cache: DashMap::new(),
            other_live_nodes: RwLock::new(Vec::new()),
            stop: CancellationToken::new(),
        });
        shared.metrics().engine_up.set(0);
        // Each task is one per engine (not per message or reader) and ends on `stop`.
        tokio::spawn(shared.clone().receive_messages());
        tokio::spawn(shared.clone().manage_interest());
        tokio::spawn(shared.clone().report_counts());
        tokio::spawn(shared.clone().watch_links());
        if shared.clustered {
            tokio::spawn(shared.clone().watch_slots());
        }
        let io = redis_io_runtime();
        {
            // fred spawns its connection tasks on the runtime it is called in.
            let _inside = io.enter();
            // The connection tasks run until `quit`; their handles are not needed.
            drop(shared.commands.connect());
            drop(shared.pubsub.connect());
        }
        tracing::info!(node = shared.settings.node_id, url = %redacted(&shared.settings.url), "redis engine starting");
        RedisEngine {
            shared,
            io: Some(io),
        }
    }

    pub async fn publish(&self, publication: &Publication) -> Result<Published, EngineError> {
        self.shared.publish(publication).await
    }

    pub fn interest(&self, destination: &str) -> Confirmation {
        self.shared.interest(destination)
    }

    pub fn history_size(&self) -> usize {
        self.shared.settings.history_size
    }

    /// What this node received (see `Shared::local`).
    pub fn local_history(&self) -> &History {
        &self.shared.local
    }

    /// Whether this node's Redis subscription to `destination` is confirmed
    /// (then what it received since is continuous, gaps filled from history).
    pub fn is_listening(&self, destination: &str) -> bool {
        matches!(
            self.shared.interest.get(destination).as_deref(),
            Some(Interest::Subscribed)
        )
    }

    /// Reads `destination`'s history from Redis (one round trip).
    pub async fn read_history(
        &self,
        destination: &str,
        read: Read<'_>,
    ) -> Result<HistoryRead, EngineError> {
        self.shared.read_history(destination, read).await
    }

    pub fn interest_lost(&self, destination: &str) {
        self.shared.interest_lost(destination)
    }

    pub fn count_changed(&self, destination: &str) {
        self.shared
            .counts_changed
            .insert(Arc::from(destination), ());
    }

    pub async fn subscriber_count(&self, destination: &str) -> Result<usize, EngineError> {
        let counts = self.shared.cluster_counts(&[destination]).await?;
        Ok(counts + self.shared.hub.subscriber_count(destination))
    }

    pub fn status(&self) -> EngineStatus {
        self.shared.status()
    }

    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        // Leave the cluster at once rather than after the liveness bound.
        let shared = &self.shared;
        let readers = shared.settings.readers_key(&shared.settings.node_id);
        let _ = tokio::time::timeout(shared.settings.command_timeout, async {
            let _: Result<(), _> = shared.commands.del(readers).await;
            let _: Result<(), _> = shared
                .commands
                .zrem(shared.settings.nodes_key(), shared.settings.node_id.clone())
                .await;
        })
        .await;
        let _ = shared.pubsub.quit().await;
        let _ = shared.commands.quit().await;
    }
}

impl Shared {
    fn metrics(&self) -> &Metrics {
        self.hub.metrics()
    }

    /// `destinations` grouped by their channel's hash slot on a Redis
    /// Cluster (a command may only touch one slot); one group otherwise.
    fn by_slot<'a>(&self, destinations: &[&'a str]) -> Vec<Vec<&'a str>> {
        if !self.clustered {
            return vec![destinations.to_vec()];
        }
        let mut groups: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
        for destination in destinations {
            let slot = fred::util::redis_keyslot(self.settings.channel(destination).as_bytes());
            groups.entry(slot).or_default().push(destination);
        }
        groups.into_values().collect()
    }

    /// The SUBSCRIBE or UNSUBSCRIBE commands `destinations` need: per hash
    /// slot, at most `MAX_CHANNELS_PER_COMMAND` each, with their channels.
    fn commands_for(&self, destinations: &[Arc<str>]) -> Vec<(Vec<Arc<str>>, Vec<String>)> {
        let names: Vec<&str> = destinations.iter().map(|d| &**d).collect();
        let mut commands = Vec::new();
        for group in self.by_slot(&names) {
            for chunk in group.chunks(MAX_CHANNELS_PER_COMMAND) {
                let channels = chunk.iter().map(|d| self.settings.channel(d)).collect();
                commands.push((chunk.iter().map(|d| Arc::from(*d)).collect(), channels));
            }
        }
        commands
    }

    fn is_up(&self) -> bool {
        self.commands.is_connected() && self.pubsub.is_connected()
    }

    fn status(&self) -> EngineStatus {
        let link = |client: &Client| format!("{:?}", client.state()).to_lowercase();
        let up = self.is_up();
        let mut detail = format!(
            "commands {}, pubsub {} ({})",
            link(&self.commands),
            link(&self.pubsub),
            redacted(&self.settings.url)
        );
        if let Some(error) = &self.setup_error {
            detail.push_str(&format!("; TLS setup failed: {error}"));
        } else if !up {
            if let Some(error) = &*self.last_error.lock().unwrap_or_else(|p| p.into_inner()) {
                detail.push_str(&format!("; last error: {error}"));
            }
        }
        EngineStatus {
            engine: "redis",
            up,
            detail,
        }
    }

    fn unavailable(&self, reason: impl Into<String>) -> EngineError {
        EngineError::Unavailable {
            engine: "redis",
            reason: reason.into(),
        }
    }

    /// Runs one Redis operation within `redis-command-timeout`, timed in the
    /// round-trip histogram.
    async fn timed<T>(
        &self,
        operation: &str,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, EngineError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.settings.command_timeout, call).await;
        self.metrics()
            .engine_roundtrip
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.unavailable(error.to_string())),
            Err(_) => Err(self.unavailable(format!(
                "no answer within {:?} (redis-command-timeout)",
                self.settings.command_timeout
            ))),
        }
    }

    async fn publish(&self, publication: &Publication) -> Result<Published, EngineError> {
        if !self.commands.is_connected() {
            return Err(
                self.unavailable(format!("not connected to {}", redacted(&self.settings.url)))
            );
        }
        let payload = Value::Bytes(wire::encode(
            &publication.message_id,
            &publication.headers,
            &publication.body,
        ));
        // One script call per hash slot (all at once: fred pipelines them),
        // since a script may only touch keys of one slot on a Redis Cluster.
        let destinations: Vec<&str> = publication
            .destinations
            .iter()
            .map(String::as_str)
            .collect();
        let calls = self.by_slot(&destinations).into_iter().map(|group| {
            let mut keys: Vec<String> = group
                .iter()
                .flat_map(|d| {
                    [
                        self.settings.channel(d),
                        self.settings.meta_key(d),
                        self.settings.log_key(d),
                    ]
                })
                .collect();
            if let Some(key) = &publication.idempotency_key {
                keys.push(self.settings.idempotency_key(group[0], key));
            }
            let args: Vec<Value> = vec![
                (self.settings.idempotency_window.as_millis() as i64).into(),
                publication.message_id.as_str().into(),
                payload.clone(),
                if publication.idempotency_key.is_some() {
                    "1"
                } else {
                    "0"
                }
                .into(),
                if self.clustered {
                    "SPUBLISH"
                } else {
                    "PUBLISH"
                }
                .into(),
                (self.settings.history_size as i64).into(),
                (self.settings.history_ttl.as_millis() as i64).into(),
                (self.settings.history_epoch_ttl.as_millis() as i64).into(),
            ];
            async move {
                let call = self.publish_script.evalsha_with_reload::<String, _, _>(
                    &self.commands,
                    keys,
                    args,
                );
                (group, self.timed("publish", call).await)
            }
        });
        // They and the count go out together on the one connection: about one round trip.
        let (results, others) = tokio::join!(
            futures_util::future::join_all(calls),
            self.cluster_counts(&destinations),
        );
        let mut message_id = None;
        let mut failed = Vec::new();
        for (group, result) in results {
            match result {
                Ok(id) => message_id = message_id.or(Some(id)),
                Err(error) => failed.push(format!("{} ({error})", group.join(", "))),
            }
        }
        if !failed.is_empty() {
            // A retry with the same Idempotency-Key publishes only what failed.
            return Err(self.unavailable(format!("not published to {}", failed.join("; "))));
        }
        let message_id = message_id.unwrap_or_else(|| publication.message_id.clone());
        self.metrics().engine_publishes.inc();
        let local: usize = destinations
            .iter()
            .map(|d| self.hub.subscriber_count(d))
            .sum();
        // A count that failed does not fail a publish that Redis took.
        Ok(Published {
            message_id,
            subscribers: local + others.unwrap_or(0),
        })
    }

    /// Readers of `destinations` on the other live nodes, as they last reported.
    async fn cluster_counts(&self, destinations: &[&str]) -> Result<usize, EngineError> {
        let nodes = self
            .other_live_nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if nodes.is_empty() || destinations.is_empty() {
            return Ok(0);
        }
        // What was read within the last interval is reused: counts are that
        // old anyway, and a hot destination then costs one HMGET per node per
        // interval instead of one per publish.
        let fresh = |at: &Instant| at.elapsed() < self.settings.count_interval;
        let mut total = 0;
        let mut missing = Vec::new();
        for destination in destinations {
            match self.count_cache.get(*destination) {
                Some(entry) if fresh(&entry.0) => total += entry.1,
                _ => missing.push(destination.to_string()),
            }
        }
        if missing.is_empty() {
            return Ok(total);
        }
        let pipeline = self.commands.pipeline();
        for node in &nodes {
            let _: () = pipeline
                .hmget(self.settings.readers_key(node), missing.clone())
                .await
                .map_err(|e| self.unavailable(e.to_string()))?;
        }
        let replies: Value = self.timed("count", pipeline.all()).await?;
        let now = Instant::now();
        for (destination, count) in missing
            .into_iter()
            .zip(counts_per_field(replies, nodes.len()))
        {
            total += count;
            self.count_cache
                .insert(Arc::from(destination), (now, count));
        }
        Ok(total)
    }

    // ---- interest --------------------------------------------------------

    fn interest(&self, destination: &str) -> Confirmation {
        if let Some(entry) = self.interest.get(destination) {
            if matches!(*entry, Interest::Subscribed) {
                return Confirmation::ready();
            }
        }
        let mut entry = self
            .interest
            .entry(Arc::from(destination))
            .or_insert_with(|| Interest::Pending(Vec::new()));
        let waiters = match &mut *entry {
            Interest::Subscribed => return Confirmation::ready(),
            Interest::Lingering(_) => {
                // Still subscribed in Redis: nothing to do.
                *entry = Interest::Subscribed;
                return Confirmation::ready();
            }
            Interest::Pending(waiters) | Interest::Unsubscribing(waiters) => waiters,
        };
        let (confirm, confirmed) = oneshot::channel();
        waiters.push(confirm);
        let first = waiters.len() == 1;
        drop(entry);
        if first {
            self.mark_interest_changed(destination);
        }
        Confirmation(Some(confirmed))
    }

    fn interest_lost(&self, destination: &str) {
        if let Some(mut entry) = self.interest.get_mut(destination) {
            if matches!(*entry, Interest::Subscribed) {
                *entry = Interest::Lingering(Instant::now());
                drop(entry);
                self.mark_interest_changed(destination);
            }
        }
    }

    fn mark_interest_changed(&self, destination: &str) {
        self.interest_changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Arc::from(destination));
        self.wake_interest.notify_one();
    }

    /// The one task that sends SUBSCRIBE and UNSUBSCRIBE: each round takes
    /// every destination that changed meanwhile into one command.
    async fn manage_interest(self: Arc<Self>) {
        let mut lingering: VecDeque<(Instant, Arc<str>)> = VecDeque::new();
        loop {
            let next_linger = lingering
                .front()
                .map(|(since, _)| *since + self.settings.interest_linger);
            // Cancel safety: `notified`, `cancelled` and `sleep` lose nothing when dropped.
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.wake_interest.notified() => {
                    // Let the readers arriving together gather into one command.
                    tokio::time::sleep(INTEREST_GATHER).await;
                }
                _ = sleep_until_or_forever(next_linger) => {}
            }
            if !self.pubsub.is_connected() {
                // Look again shortly: what changed stays in `interest_changed`.
                tokio::time::sleep(INTEREST_RETRY).await;
                self.wake_interest.notify_one();
                continue;
            }
            let changed: Vec<Arc<str>> = std::mem::take(
                &mut *self
                    .interest_changed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            )
            .into_iter()
            .collect();
            let now = Instant::now();
            let mut to_subscribe = Vec::new();
            for destination in changed {
                match self.interest.get(&destination).as_deref() {
                    Some(Interest::Pending(_)) => to_subscribe.push(destination),
                    Some(Interest::Lingering(since)) => lingering.push_back((*since, destination)),
                    _ => {}
                }
            }
            let mut to_unsubscribe = Vec::new();
            while let Some((since, _)) = lingering.front() {
                if *since + self.settings.interest_linger > now {
                    break;
                }
                let (since, destination) = lingering.pop_front().expect("not empty");
                if let Some(mut entry) = self.interest.get_mut(&destination) {
                    let still = matches!(*entry, Interest::Lingering(s) if s == since);
                    if still && self.hub.subscriber_count(&destination) == 0 {
                        *entry = Interest::Unsubscribing(Vec::new());
                        to_unsubscribe.push(destination);
                    }
                }
            }
            self.subscribe(to_subscribe).await;
            self.unsubscribe(to_unsubscribe).await;
        }
    }

    /// SUBSCRIBEs `destinations` (in as few commands as the chunk size allows)
    /// and wakes whoever waits for them.
    async fn subscribe(&self, destinations: Vec<Arc<str>>) {
        for (chunk, channels) in self.commands_for(&destinations) {
            self.metrics().engine_subscribe_commands.inc();
            tracing::debug!(channels = channels.len(), "redis SUBSCRIBE");
            let command = async {
                if self.clustered {
                    self.pubsub.ssubscribe(channels).await
                } else {
                    self.pubsub.subscribe(channels).await
                }
            };
            match self.timed("subscribe", command).await {
                Ok(()) => {
                    self.metrics()
                        .engine_interest_subscribes
                        .inc_by(chunk.len() as u64);
                    for destination in &chunk {
                        self.confirm(destination);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, destinations = chunk.len(), "redis SUBSCRIBE failed; retrying");
                    self.interest_changed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(chunk);
                    tokio::time::sleep(INTEREST_RETRY).await;
                    self.wake_interest.notify_one();
                }
            }
        }
    }

    /// `destinations` are no longer (surely) subscribed in Redis: each is
    /// unconfirmed until the interest task has subscribed it again (one whose
    /// SUBSCRIBE is due or in flight is sent again too, as that one may reach
    /// a master that just lost the slot). Returns how many were subscribed.
    fn unconfirm(&self, destinations: &[Arc<str>]) -> usize {
        let mut again = Vec::new();
        let mut were_subscribed = 0;
        for destination in destinations {
            if let Some(mut entry) = self.interest.get_mut(destination) {
                match *entry {
                    Interest::Subscribed | Interest::Lingering(_) => {
                        *entry = Interest::Pending(Vec::new());
                        were_subscribed += 1;
                    }
                    Interest::Pending(_) => {}
                    // Its UNSUBSCRIBE decides what comes next.
                    Interest::Unsubscribing(_) => continue,
                }
                again.push(destination.clone());
            }
        }
        self.interest_changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(again);
        self.wake_interest.notify_one();
        were_subscribed
    }

    /// The subscription to `destination` is confirmed: wake its waiters, and
    /// start lingering if its readers left meanwhile.
    fn confirm(&self, destination: &Arc<str>) {
        let Some(mut entry) = self.interest.get_mut(destination) else {
            return;
        };
        if let Interest::Pending(waiters) = std::mem::replace(&mut *entry, Interest::Subscribed) {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        if self.hub.subscriber_count(destination) == 0 {
            *entry = Interest::Lingering(Instant::now());
            drop(entry);
            self.mark_interest_changed(destination);
        }
    }

    async fn unsubscribe(&self, destinations: Vec<Arc<str>>) {
        for (chunk, channels) in self.commands_for(&destinations) {
            let command = async {
                if self.clustered {
                    self.pubsub.sunsubscribe(channels).await
                } else {
                    self.pubsub.unsubscribe(channels).await
                }
            };
            if let Err(error) = self.timed("unsubscribe", command).await {
                // Harmless: extra messages are fanned out to nobody; the next
                // reconnect (which subscribes only what has readers) cleans up.
                tracing::debug!(%error, "redis UNSUBSCRIBE failed");
            }
            self.metrics()
                .engine_interest_unsubscribes
                .inc_by(chunk.len() as u64);
            for destination in &chunk {
                let Some(mut entry) = self.interest.get_mut(destination) else {
                    continue;
                };
                match std::mem::replace(&mut *entry, Interest::Pending(Vec::new())) {
                    Interest::Unsubscribing(waiters) if waiters.is_empty() => {
                        drop(entry);
                        self.interest.remove_if(destination, |_, interest| {
                            matches!(interest, Interest::Pending(waiters) if waiters.is_empty())
                        });
                        // Not listening any more: what it holds would go stale.
                        self.local.forget(destination);
                    }
                    Interest::Unsubscribing(waiters) => {
                        // Readers came back during the UNSUBSCRIBE: subscribe again.
                        *entry = Interest::Pending(waiters);
                        drop(entry);
                        self.mark_interest_changed(destination);
                    }
                    other => *entry = other,
                }
            }
        }
    }

    // ---- counts ----------------------------------------------------------

    /// Every `reader-count-interval`: this node's changed counts, its
    /// liveness, and the list of live nodes.
    async fn report_counts(self: Arc<Self>) {
        self.report_all.store(true, Relaxed);
        let mut ticks = tokio::time::interval(self.settings.count_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Cancel safety: `tick` and `cancelled` lose nothing when dropped.
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let interval = self.settings.count_interval;
            self.count_cache
                .retain(|_, (read_at, _)| read_at.elapsed() < interval);
            if !self.commands.is_connected() {
                self.report_all.store(true, Relaxed);
                continue;
            }
            let changed: Vec<Arc<str>> = if self.report_all.swap(false, Relaxed) {
                self.counts_changed.clear();
                self.hub.destinations()
            } else {
                let keys: Vec<Arc<str>> = self
                    .counts_changed
                    .iter()
                    .map(|e| e.key().clone())
                    .collect();
                for key in &keys {
                    self.counts_changed.remove(key);
                }
                keys
            };
            if let Err(error) = self.report(&changed).await {
                tracing::debug!(%error, "reader count report failed; reporting everything next time");
                self.report_all.store(true, Relaxed);
            }
        }
    }

    async fn report(&self, changed: &[Arc<str>]) -> Result<(), EngineError> {
        let settings = &self.settings;
        let readers = settings.readers_key(&settings.node_id);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as f64)
            .unwrap_or_default();
        let dead_before = now_ms - settings.liveness().as_millis() as f64;
        let error = |e: fred::error::Error| self.unavailable(e.to_string());
        let pipeline = self.commands.pipeline();
        for chunk in changed.chunks(MAX_CHANNELS_PER_COMMAND) {
            let (mut present, mut gone) = (Vec::new(), Vec::new());
            for destination in chunk {
                match self.hub.subscriber_count(destination) {
                    0 => gone.push(destination.to_string()),
                    count => present.push((destination.to_string(), count as i64)),
                }
            }
            if !present.is_empty() {
                let _: () = pipeline
                    .hset(readers.clone(), present)
                    .await
                    .map_err(error)?;
            }
            if !gone.is_empty() {
                let _: () = pipeline.hdel(readers.clone(), gone).await.map_err(error)?;
            }
        }
        let liveness_ms = settings.liveness().as_millis() as i64;
        let _: () = pipeline
            .pexpire(readers.clone(), liveness_ms, None)
            .await
            .map_err(error)?;
        let nodes = settings.nodes_key();
        let _: () = pipeline
            .zadd(
                nodes.clone(),
                None,
                None,
                false,
                false,
                (now_ms, settings.node_id.clone()),
            )
            .await
            .map_err(error)?;
        let _: () = pipeline
            .zremrangebyscore(nodes.clone(), f64::NEG_INFINITY, dead_before)
            .await
            .map_err(error)?;
        let _: () = pipeline
            .zrangebyscore(nodes, dead_before, f64::INFINITY, false, None)
            .await
            .map_err(error)?;
        let replies: Vec<Value> = self.timed("report", pipeline.all()).await?;
        let live: Vec<String> = match replies.last() {
            Some(Value::Array(nodes)) => nodes.iter().filter_map(Value::as_string).collect(),
            // One live node comes back without the enclosing array.
            Some(node) => node.as_string().into_iter().collect(),
            None => Vec::new(),
        };
        let live = live
            .into_iter()
            .filter(|node| *node != settings.node_id)
            .collect();
        tracing::trace!(?live, "live nodes");
        *self
            .other_live_nodes
            .write()
            .unwrap_or_else(|p| p.into_inner()) = live;
        Ok(())
    }

    // ---- the links -------------------------------------------------------

    /// Follows the links' state: the `engine_up` metric and log lines, and
    /// after a reconnect, every destination subscribed again.
    async fn watch_links(self: Arc<Self>) {
        let mut reconnects = self.pubsub.reconnect_rx();
        let mut command_reconnects = self.commands.reconnect_rx();
        let mut errors = self.pubsub.error_rx();
        let mut command_errors = self.commands.error_rx();
        let (mut was_up, mut connected_before, mut was_listening) = (false, false, false);
        let mut check = tokio::time::interval(Duration::from_millis(250));
        loop {
            // Cancel safety: broadcast `recv`, `tick` and `cancelled` lose nothing when dropped.
            let mut link_error = false;
            let resubscribe = tokio::select! {
                _ = self.stop.cancelled() => return,
                reconnected = reconnects.recv() => reconnected.is_ok(),
                _ = command_reconnects.recv() => {
                    // Redis may have lost every count (a restart without persistence).
                    self.report_all.store(true, Relaxed);
                    false
                }
                error = errors.recv() => {
                    if let Ok((error, _)) = error {
                        self.link_error(error.to_string());
                    }
                    // The pub/sub client may still call itself connected for a moment.
                    link_error = true;
                    false
                }
                error = command_errors.recv() => {
                    if let Ok((error, _)) = error {
                        self.link_error(error.to_string());
                    }
                    false
                }
                _ = check.tick() => false,
            };
            let up = self.is_up();
            let listening = self.pubsub.is_connected();
            // Unconfirmed as soon as the link is known to be in trouble, so
            // that no SUBSCRIBE is confirmed by a subscription Redis has lost;
            // a link that came back before this task saw it down was down too.
            if (was_listening && !listening) || link_error || (resubscribe && connected_before) {
                self.interest_unconfirmed();
            }
            was_listening = listening;
            if up != was_up {
                self.metrics().engine_up.set(up as i64);
                if up {
                    tracing::info!(node = self.settings.node_id, "redis engine up");
                } else {
                    tracing::warn!(
                        node = self.settings.node_id,
                        status = self.status().detail,
                        "redis engine down: publishes answer 503"
                    );
                }
                was_up = up;
            }
            if resubscribe {
                // The pub/sub link (re)connected: the first time is the start.
                if connected_before {
                    self.metrics().engine_reconnects.inc();
                }
                let reconnected = connected_before;
                connected_before = true;
                self.resubscribe_all().await;
                if reconnected {
                    // What was published while the link was down is in history.
                    self.fill_gaps.notify_one();
                }
            }
        }
    }

    /// On a Redis Cluster: every `CLUSTER_CHECK_INTERVAL`, and whenever the
    /// commands client saw the slot map change (a publish met a MOVED), reads
    /// the slot map and subscribes again the destinations of every slot whose
    /// master changed since the last read. (fred's own `sync_cluster` is not
    /// used for this: it opens a new connection each time.)
    async fn watch_slots(self: Arc<Self>) {
        let mut publisher_saw_change = self.commands.cluster_change_rx();
        let mut ticks = tokio::time::interval(CLUSTER_CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<SlotMap> = None;
        loop {
            // Cancel safety: broadcast `recv`, `tick` and `cancelled` lose nothing when dropped.
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = ticks.tick() => {}
                _ = publisher_saw_change.recv() => {}
            }
            if !self.commands.is_connected() {
                continue;
            }
            let read = self.timed("cluster_slots", self.commands.cluster_slots::<Value>());
            let map = match read.await.map(SlotMap::from_reply) {
                Ok(Some(map)) => map,
                Ok(None) => {
                    tracing::warn!("cannot read the CLUSTER SLOTS reply");
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%error, "reading the redis cluster slot map failed");
                    continue;
                }
            };
            // The first time, against the map fred routed the SSUBSCRIBEs
            // made so far by; then against the previous read (fred's map may
            // have followed a MOVED since, which moves no subscription).
            let before = last.take().or_else(|| {
                let routing = self.pubsub.cached_cluster_state()?;
                SlotMap::from_ranges(
                    routing
                        .slots()
                        .iter()
                        .map(|range| (range.start.into(), range.end.into(), range.id.to_string())),
                )
            });
            if let Some(before) = before {
                let moved = before.moved_slots(&map);
                if !moved.is_empty() {
                    self.resubscribe_moved_slots(&moved);
                }
            }
            last = Some(map);
        }
    }

    /// `moved` slots have another master now: the old one dropped this
    /// node's subscriptions to their channels (and pushed a `sunsubscribe`
    /// that fred does not pass on). Their destinations are a gap, counted,
    /// unconfirmed and subscribed again.
    fn resubscribe_moved_slots(&self, moved: &HashSet<u16>) {
        let destinations: Vec<Arc<str>> = self
            .interest
            .iter()
            .filter(|entry| {
                let channel = self.settings.channel(entry.key());
                moved.contains(&fred::util::redis_keyslot(channel.as_bytes()))
            })
            .map(|entry| entry.key().clone())
            .collect();
        if destinations.is_empty() {
            return;
        }
        let lost = self.unconfirm(&destinations);
        self.metrics().engine_subscriptions_lost.inc_by(lost as u64);
        tracing::warn!(
            slots = moved.len(),
            destinations = lost,
            "redis cluster slots moved to another master: subscribing again (what was published meanwhile is a gap)"
        );
    }

    /// Keeps a link's error for `/readyz` while the engine is down, and logs
    /// it when it is not the one before (a retry failing the same way, such
    /// as a TLS certificate that is not trusted, is logged once).
    fn link_error(&self, error: String) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(error.as_str()) {
            tracing::warn!(%error, node = self.settings.node_id, "redis link error");
            *last = Some(error);
        }
    }

    /// The pub/sub link dropped: every subscription is unconfirmed until it
    /// is made again, so that no RECEIPT promises what Redis may not deliver
    /// (a message published elsewhere before this node subscribes again).
    /// The interest task subscribes them all again once the link is back.
    fn interest_unconfirmed(&self) {
        let mut unconfirmed = Vec::new();
        for mut entry in self.interest.iter_mut() {
            if matches!(*entry, Interest::Subscribed | Interest::Lingering(_)) {
                *entry = Interest::Pending(Vec::new());
                unconfirmed.push(entry.key().clone());
            }
        }
        self.interest_changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(unconfirmed);
        self.wake_interest.notify_one();
    }

    /// After the pub/sub link came back: subscribe again to everything this
    /// node has (or waits for) interest in, and wake the waiters.
    async fn resubscribe_all(&self) {
        let destinations: Vec<Arc<str>> = self
            .interest
            .iter()
            .filter(|entry| !matches!(entry.value(), Interest::Unsubscribing(_)))
            .map(|entry| entry.key().clone())
            .collect();
        if !destinations.is_empty() {
            tracing::info!(
                destinations = destinations.len(),
                "redis pub/sub link back: subscribing again"
            );
        }
        self.subscribe(destinations).await;
    }
}

/// Redis Cluster's hash slots.
const SLOTS: usize = 16384;

/// Which master owns each hash slot, as CLUSTER SLOTS said.
#[derive(Debug, PartialEq, Eq)]
struct SlotMap {
    /// The masters' node ids.
    masters: Vec<String>,
    /// Per slot, an index into `masters` (`u16::MAX`: no owner).
    owners: Box<[u16]>,
}

impl SlotMap {
    /// Reads a CLUSTER SLOTS reply: `[[start, end, [host, port, id, ...],
    /// replicas...], ...]`. None if it is not one.
    fn from_reply(reply: Value) -> Option<SlotMap> {
        let Value::Array(replies) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(replies.len());
        for range in replies {
            let Value::Array(range) = range else {
                return None;
            };
            let (start, end) = (range.first()?.as_u64()?, range.get(1)?.as_u64()?);
            let Value::Array(master) = range.get(2)? else {
                return None;
            };
            // The node id (Redis 4 and later), else the address.
            let id = match master.get(2).and_then(Value::as_string) {
                Some(id) => id,
                None => format!(
                    "{}:{}",
                    master.first()?.as_string()?,
                    master.get(1)?.as_u64()?
                ),
            };
            ranges.push((start, end, id));
        }
        SlotMap::from_ranges(ranges)
    }

    /// Slot ranges `start..=end` and their master's id; None past the last slot.
    fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64, String)>) -> Option<SlotMap> {
        let mut map = SlotMap {
            masters: Vec::new(),
            owners: vec![u16::MAX; SLOTS].into_boxed_slice(),
        };
        for (start, end, id) in ranges {
            let index = match map.masters.iter().position(|known| *known == id) {
                Some(index) => index,
                None => {
                    map.masters.push(id);
                    map.masters.len() - 1
                }
            };
            let slots = map.owners.get_mut(start as usize..=end as usize)?;
            slots.fill(index as u16);
        }
        Some(map)
    }

    fn owner(&self, slot: usize) -> Option<&str> {
        let index = *self.owners.get(slot)?;
        self.masters.get(index as usize).map(String::as_str)
    }

    /// The slots whose master is another one in `now` (or none, or a new one).
    fn moved_slots(&self, now: &SlotMap) -> HashSet<u16> {
        (0..SLOTS)
            .filter(|slot| self.owner(*slot) != now.owner(*slot))
            .map(|slot| slot as u16)
            .collect()
    }
}

/// The readers of each field of one HMGET sent to each of `nodes` nodes,
/// added up over the nodes. fred returns a one-command pipeline's reply, and
/// a one-field HMGET's, without the enclosing array: both are undone here.
fn counts_per_field(reply: Value, nodes: usize) -> Vec<usize> {
    let unwrap = |value: Value, expected: usize| match value {
        Value::Array(values) if expected > 1 || values.len() == 1 => values,
        other => vec![other],
    };
    let mut totals: Vec<usize> = Vec::new();
    for node_reply in unwrap(reply, nodes) {
        for (field, value) in unwrap(node_reply, usize::MAX).iter().enumerate() {
            if totals.len() <= field {
                totals.resize(field + 1, 0);
            }
            totals[field] += sum_counts(value);
        }
    }
    totals
}

/// Every count in a reply of HMGETs, nested or not (nil is 0).
fn sum_counts(reply: &Value) -> usize {
    match reply {
        Value::Array(replies) => replies.iter().map(sum_counts).sum(),
        Value::Bytes(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(0),
        other => other.as_u64().unwrap_or(0) as usize,
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The URL without its password, for logs and `/readyz`.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_a_destination_in_one_hash_slot() {
        let settings = RedisSettings {
            url: String::new(),
            node_id: "n1".into(),
            key_prefix: "sp:".into(),
            command_timeout: Duration::from_secs(1),
            reconnect_max_delay: Duration::from_secs(1),
            input_queue: 1,
            max_queued_commands: 1,
            count_interval: Duration::from_secs(1),
            interest_linger: Duration::ZERO,
            idempotency_window: Duration::from_secs(1),
            history_size: 1,
            history_ttl: Duration::from_secs(1),
            history_epoch_ttl: Duration::from_secs(1),
            history_max_bytes: 1,
            tls: tls::TlsFiles::default(),
        };
        let channel = settings.channel("/topic/comments.42");
        assert_eq!(channel, "sp:{/topic/comments.42}");
        assert_eq!(settings.destination(&channel), Some("/topic/comments.42"));
        assert_eq!(settings.destination("other:{/topic/a}"), None);
        assert_eq!(
            settings.idempotency_key("/topic/a", "k"),
            "sp:{/topic/a}idem:k"
        );
        assert_eq!(settings.readers_key("n1"), "sp:readers:n1");
        // A destination's history keys share its slot with its channel.
        let slot = |key: &str| fred::util::redis_keyslot(key.as_bytes());
        assert_eq!(
            slot(&settings.meta_key("/topic/a")),
            slot(&settings.channel("/topic/a"))
        );
        assert_eq!(
            slot(&settings.log_key("/topic/a")),
            slot(&settings.channel("/topic/a"))
        );
    }

    #[test]
    fn counts_are_read_per_field_however_fred_nests_the_replies() {
        let count = |n: i64| Value::Bytes(n.to_string().into());
        let array = |values: Vec<Value>| Value::Array(values);
        // One node, one field: the bare value.
        assert_eq!(counts_per_field(count(3), 1), [3]);
        // One node, two fields.
        assert_eq!(
            counts_per_field(array(vec![count(3), Value::Null]), 1),
            [3, 0]
        );
        // Two nodes, one field each.
        assert_eq!(counts_per_field(array(vec![count(3), count(4)]), 2), [7]);
        // Two nodes, two fields.
        let reply = array(vec![
            array(vec![count(1), count(2)]),
            array(vec![count(10), Value::Null]),
        ]);
        assert_eq!(counts_per_field(reply, 2), [11, 2]);
    }

    #[test]
    fn a_slot_moved_between_two_cluster_slots_replies_is_found() {
        let node =
            |port: i64, id: &str| Value::Array(vec!["127.0.0.1".into(), port.into(), id.into()]);
        let range = |start: i64, end: i64, master: Value| {
            Value::Array(vec![start.into(), end.into(), master])
        };
        let before = SlotMap::from_reply(Value::Array(vec![
            range(0, 8191, node(7000, "a")),
            range(8192, 16383, node(7001, "b")),
        ]))
        .unwrap();
        let after = SlotMap::from_reply(Value::Array(vec![
            range(0, 8191, node(7000, "a")),
            range(8192, 8192, node(7000, "a")),
            range(8193, 16383, node(7001, "b")),
        ]))
        .unwrap();
        assert_eq!(before.owner(8192), Some("b"));
        assert_eq!(before.moved_slots(&before), HashSet::new());
        assert_eq!(before.moved_slots(&after), HashSet::from([8192]));
        let too_far = Value::Array(vec![range(0, 20000, node(1, "x"))]);
        assert!(SlotMap::from_reply(too_far).is_none());
        assert!(SlotMap::from_reply("nonsense".into()).is_none());
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}

//! The shared state of one broker, passed around by `Arc`: the settings, the
//! registry, the metrics, admission (session slots) and shutdown. Callers get
//! methods that say what they may do, not the fields.

use crate::admission::HandshakeLimiter;
use crate::auth::AuthPolicy;
use crate::config::{Config, EngineKind};
use crate::engine::{self, Engine, EngineError, EngineStatus, HistoryPage, Publication};
use crate::engine::{Confirmation, Subscribed};
use crate::fanout::{EPOCH_HEADER, OFFSET_HEADER};
use crate::history::{HistorySettings, Position, ReplayRequest};
use crate::hub::Hub;
use crate::ip_limit::{is_loopback, ClientNet, IpLimiter, IpSlot};
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox};
use crate::registry::{Subscriber, SubscriberKey};
use bytes::Bytes;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use stompede_protocol::{Headers, PreparedMessage};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

pub struct Broker {
    config: Config,
    auth: AuthPolicy,
    /// This node's subscribers and the local fan-out.
    hub: Arc<Hub>,
    /// Where publishes go (memory or Redis).
    engine: Engine,
    /// Cancelled when the broker starts shutting down.
    shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Open WebSocket sessions (bounded by `max-connections`).
    sessions: AtomicUsize,
    /// Open WebSocket sessions per client IP (bounded by `max-connections-per-ip`).
    sessions_per_ip: Arc<IpLimiter>,
    /// WebSocket handshakes per second (`max-handshakes-per-second`).
    handshakes: HandshakeLimiter,
    next_connection_id: AtomicU64,
    next_message_id: AtomicU64,
    /// Names this node in logs, in `/readyz` and in message ids.
    node_id: String,
    /// Distinguishes message ids across restarts of a node that keeps its `node-id`.
    boot_id: String,
}

pub use engine::Published;

/// What a session's frame left for its connection to finish before the
/// frame's replies go out and the next frame is handled: subscriptions to
/// confirm and messages to publish, in order.
#[derive(Debug, Default)]
pub struct Pending {
    pub confirmations: Vec<Confirmation>,
    /// Subscriptions whose history is to be read once confirmed (redis engine).
    pub resumes: Vec<Resume>,
    pub publications: Vec<Publication>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.confirmations.iter().all(Confirmation::is_ready)
            && self.resumes.is_empty()
            && self.publications.is_empty()
    }
}

/// A new subscription whose live messages are held in its outbox until its
/// history is read (redis engine: after its channel subscription is confirmed).
#[derive(Debug)]
pub struct Resume {
    pub destination: Arc<str>,
    pub request: ReplayRequest,
    pub outbox: Arc<Outbox>,
    pub subscription: Arc<str>,
    pub ack: bool,
}

/// Headers a frame's finished work adds to its RECEIPT.
pub type ReceiptHeaders = Vec<(&'static str, String)>;

/// Why a new WebSocket session is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmissionRefusal {
    ShuttingDown,
    /// `max-connections` sessions are open.
    AtCapacity,
    /// `max-connections-per-ip` sessions are open from this address.
    TooManyFromIp {
        /// The address, or for IPv6 its network (`ipv6-prefix-length`).
        ip: ClientNet,
        limit: usize,
    },
}

impl std::fmt::Display for AdmissionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdmissionRefusal::ShuttingDown => write!(f, "server is shutting down"),
            AdmissionRefusal::AtCapacity => write!(f, "connection limit reached; try again later"),
            AdmissionRefusal::TooManyFromIp { ip, limit } => write!(
                f,
                "too many connections from {ip}: at most {limit} (max-connections-per-ip)"
            ),
        }
    }
}

impl Broker {
    pub fn new(config: Config) -> Broker {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis())
            .unwrap_or_default();
        let hub = Arc::new(Hub::new(config.slow_consumer));
        let node_id = config.node_id.clone().unwrap_or_else(random_node_id);
        let engine = match config.engine {
            EngineKind::Memory => Engine::memory(
                hub.clone(),
                engine::memory::IdempotencySettings {
                    window: config.idempotency_window,
                    max_keys: config.idempotency_keys_max,
                },
                HistorySettings {
                    size: config.history_size,
                    ttl: config.history_ttl,
                    max_bytes: config.history_max_bytes,
                },
                format!("{node_id}-{boot:x}"),
            ),
            EngineKind::Redis => Engine::Redis(engine::redis::RedisEngine::start(
                hub.clone(),
                engine::redis::RedisSettings::new(&config, &node_id),
            )),
        };
        let sessions_per_ip = Arc::new(IpLimiter::new(config.ipv6_prefix_length));
        let handshakes =
            HandshakeLimiter::new(config.max_handshakes_per_second, config.handshake_burst);
        Broker {
            auth: config.auth_policy(),
            config,
            hub,
            engine,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            sessions: AtomicUsize::new(0),
            sessions_per_ip,
            handshakes,
            next_connection_id: AtomicU64::new(1),
            next_message_id: AtomicU64::new(1),
            node_id,
            boot_id: format!("{boot:x}"),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn engine_status(&self) -> EngineStatus {
        self.engine.status()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Who may connect and call the API.
    pub fn auth(&self) -> &AuthPolicy {
        &self.auth
    }

    pub fn metrics(&self) -> &Metrics {
        self.hub.metrics()
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Relaxed)
    }

    /// A message for `destinations` (validated, sorted, deduplicated), with a
    /// new cluster-wide message id.
    pub fn publication(
        &self,
        destinations: Vec<String>,
        headers: Headers,
        body: Bytes,
        idempotency_key: Option<String>,
    ) -> Publication {
        let sequence = self.next_message_id.fetch_add(1, Relaxed);
        Publication {
            message_id: format!("{}-{}-{sequence}", self.node_id, self.boot_id),
            destinations,
            headers,
            body,
            idempotency_key,
        }
    }

    /// Publishes through the engine: to every subscriber on every node. The
    /// body is shared, not copied; each destination gets its own encoding
    /// because the `destination` header differs.
    pub async fn publish(&self, publication: &Publication) -> Result<Published, EngineError> {
        let published = self.engine.publish(publication).await?;
        self.metrics().messages_published.inc();
        Ok(published)
    }

    /// Finishes what a session's frame left pending, in order; answers what
    /// the frame's RECEIPT should add.
    pub async fn complete(&self, pending: Pending) -> Result<ReceiptHeaders, EngineError> {
        for confirmation in pending.confirmations {
            confirmation.wait().await;
        }
        let mut headers = ReceiptHeaders::new();
        for resume in pending.resumes {
            headers.extend(self.resume(resume).await);
        }
        for publication in &pending.publications {
            self.publish(publication).await?;
        }
        Ok(headers)
    }

    /// Reads a new subscription's history and queues it, then the live
    /// messages held back meanwhile (without those the history had). A
    /// failed read (Redis unreachable) is not recovered, never an error: the
    /// subscription goes on with the live stream.
    async fn resume(&self, resume: Resume) -> ReceiptHeaders {
        let metrics = self.metrics();
        let resumed = match self
            .engine
            .resume(&resume.destination, &resume.request)
            .await
        {
            Ok(resumed) => resumed,
            Err(error) => {
                tracing::debug!(%error, destination = &*resume.destination, "history not read");
                crate::engine::Resumed {
                    recovered: resume.request.since.as_ref().map(|_| false),
                    ..Default::default()
                }
            }
        };
        let up_to = resumed
            .position
            .as_ref()
            .map(|position| (&position.epoch, position.offset));
        let (replayed, duplicates) = resume.outbox.release(
            &resume.subscription,
            replayed_deliveries(&resumed.messages, &resume.subscription, resume.ack),
            up_to,
        );
        metrics
            .outbound_queued
            .add(replayed as i64 - duplicates as i64);
        metrics.history_replayed.inc_by(replayed as u64);
        self.count_resume(resumed.recovered);
        receipt_headers(resumed.position.as_ref(), resumed.recovered)
    }

    fn count_resume(&self, recovered: Option<bool>) {
        if let Some(recovered) = recovered {
            let label = if recovered { "true" } else { "false" };
            self.metrics().resumes.with_label_values(&[label]).inc();
        }
    }

    /// Adds one subscription (the session has checked it may), with the
    /// messages from history it asked for queued before the live ones. The
    /// confirmation resolves once every later publish, on any node, reaches it.
    pub fn subscribe(
        &self,
        destination: &str,
        key: SubscriberKey,
        subscriber: Subscriber,
        request: &ReplayRequest,
    ) -> Subscribed {
        let outbox = subscriber.outbox.clone();
        let (subscription, ack) = (subscriber.subscription.clone(), subscriber.ack);
        let hold = || outbox.hold(&subscription);
        let mut subscribed = self
            .engine
            .subscribe(destination, request, hold, |replayed| {
                self.hub.subscribe(destination, key, subscriber);
                let queued =
                    outbox.push_replayed(replayed_deliveries(replayed, &subscription, ack));
                self.metrics().outbound_queued.add(queued as i64);
                self.metrics().history_replayed.inc_by(queued as u64);
            });
        self.count_resume(subscribed.recovered);
        self.engine.count_changed(destination);
        if subscribed.reads_later {
            subscribed.resume = Some(Resume {
                destination: Arc::from(destination),
                request: request.clone(),
                outbox,
                subscription,
                ack,
            });
        }
        subscribed
    }

    /// A destination's history for the HTTP API.
    pub async fn history(
        &self,
        destination: &str,
        epoch: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        self.engine.history(destination, epoch, after, limit).await
    }

    /// Removes one subscription.
    pub fn unsubscribe(&self, destination: &str, key: SubscriberKey) {
        if self.hub.unsubscribe(destination, key) {
            self.engine.interest_lost(destination);
        }
        self.engine.count_changed(destination);
    }

    /// Subscribers of `destination` on this node.
    pub fn subscriber_count(&self, destination: &str) -> usize {
        self.hub.subscriber_count(destination)
    }

    /// Readers of `destination` on every node (for the Redis engine: as last
    /// reported, see `reader-count-interval`).
    pub async fn cluster_subscriber_count(&self, destination: &str) -> Result<usize, EngineError> {
        self.engine.subscriber_count(destination).await
    }

    /// Destinations with at least one subscriber on this node.
    pub fn destination_count(&self) -> usize {
        self.hub.destination_count()
    }

    /// Takes one of `max-handshakes-per-second`, or says how long until one is free.
    pub fn admit_handshake(&self) -> Result<(), Duration> {
        self.handshakes.check()
    }

    /// Reserves a session slot for a client at `peer`: one of
    /// `max-connections`, and one of its address's `max-connections-per-ip`
    /// (loopback exempt when `per-ip-limit-exempts-loopback`).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<SessionSlot, AdmissionRefusal> {
        if self.is_shutting_down() {
            return Err(AdmissionRefusal::ShuttingDown);
        }
        let config = &self.config;
        let limit = config.max_connections_per_ip;
        let exempt = limit == 0 || (config.per_ip_limit_exempts_loopback && is_loopback(peer));
        let ip_slot = if exempt {
            None
        } else {
            let ip = self.sessions_per_ip.client(peer);
            Some(
                self.sessions_per_ip
                    .try_acquire(peer, limit)
                    .ok_or(AdmissionRefusal::TooManyFromIp { ip, limit })?,
            )
        };
        let mut open = self.sessions.load(Relaxed);
        loop {
            if open >= config.max_connections {
                return Err(AdmissionRefusal::AtCapacity);
            }
            match self
                .sessions
                .compare_exchange_weak(open, open + 1, Relaxed, Relaxed)
            {
                Ok(_) => {
                    self.metrics().connections.inc();
                    return Ok(SessionSlot {
                        broker: self.clone(),
                        _ip_slot: ip_slot,
                    });
                }
                Err(now) => open = now,
            }
        }
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.load(Relaxed)
    }

    /// Sessions open from `ip` (counted only for addresses the per-IP limit applies to).
    pub fn sessions_from(&self, ip: IpAddr) -> usize {
        self.sessions_per_ip.open(ip)
    }

    pub fn is_at_capacity(&self) -> bool {
        self.open_sessions() >= self.config.max_connections
    }

    /// Runs a connection's task; shutdown waits for it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Resolves once shutdown has begun.
    pub fn shutting_down(&self) -> WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// Tells every session and the accept loop to stop.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits up to `grace` for every connection task, then stops the
    /// engine; returns whether all connections ended.
    pub async fn wait_for_connections(&self, grace: Duration) -> bool {
        self.tasks.close();
        let all_ended = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        self.engine.shutdown().await;
        all_ended
    }
}

/// Holds one of the `max-connections` slots and, unless exempt, one of its
/// address's `max-connections-per-ip`; gives both back when dropped.
pub struct SessionSlot {
    broker: Arc<Broker>,
    _ip_slot: Option<IpSlot>,
}

impl SessionSlot {
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.broker.sessions.fetch_sub(1, Relaxed);
        self.broker.metrics().connections.dec();
    }
}

/// A node id for a node that was given none: 8 random hex digits (from the
/// standard library's randomly seeded hasher, so no RNG dependency).
fn random_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:08x}", hasher.finish() as u32)
}

/// Messages from history as deliveries to one subscription, oldest first.
fn replayed_deliveries<'a>(
    messages: &'a [Arc<PreparedMessage>],
    subscription: &'a Arc<str>,
    ack: bool,
) -> impl Iterator<Item = Delivery> + 'a {
    let now = std::time::Instant::now();
    messages
        .iter()
        .map(move |message| Delivery::new(message.clone(), subscription.clone(), ack, now))
}

/// What a SUBSCRIBE's RECEIPT says of the destination's history.
pub fn receipt_headers(position: Option<&Position>, recovered: Option<bool>) -> ReceiptHeaders {
    let mut headers = ReceiptHeaders::new();
    if let Some(position) = position {
        headers.push((EPOCH_HEADER, position.epoch.to_string()));
        headers.push((OFFSET_HEADER, position.offset.to_string()));
    }
    if let Some(recovered) = recovered {
        headers.push((RECOVERED_HEADER, recovered.to_string()));
    }
    headers
}

/// The RECEIPT header answering a resume.
pub const RECOVERED_HEADER: &str = "x-recovered";

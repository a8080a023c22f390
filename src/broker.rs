//! The shared state of one broker, passed around by `Arc`: the settings, the
//! registry, the metrics, admission (session slots) and shutdown. Callers get
//! methods that say what they may do, not the fields.

use crate::admission::HandshakeLimiter;
use crate::auth::AuthPolicy;
use crate::config::Config;
use crate::fanout;
use crate::ip_limit::{is_loopback, ClientNet, IpLimiter, IpSlot};
use crate::metrics::Metrics;
use crate::registry::{Registry, Subscriber, SubscriberKey};
use bytes::Bytes;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use stompede_protocol::Headers;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

pub struct Broker {
    config: Config,
    auth: AuthPolicy,
    registry: Registry,
    metrics: Metrics,
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
    /// Distinguishes message ids across restarts.
    boot_id: String,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub message_id: String,
    /// Subscribers of the destination(s) when the message was queued.
    pub subscribers: usize,
}

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
        let sessions_per_ip = Arc::new(IpLimiter::new(config.ipv6_prefix_length));
        let handshakes =
            HandshakeLimiter::new(config.max_handshakes_per_second, config.handshake_burst);
        Broker {
            auth: config.auth_policy(),
            config,
            registry: Registry::new(),
            metrics: Metrics::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            sessions: AtomicUsize::new(0),
            sessions_per_ip,
            handshakes,
            next_connection_id: AtomicU64::new(1),
            next_message_id: AtomicU64::new(1),
            boot_id: format!("{boot:x}"),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Who may connect and call the API.
    pub fn auth(&self) -> &AuthPolicy {
        &self.auth
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Relaxed)
    }

    /// Publishes one message to each destination (already validated). The
    /// body is shared, not copied; each destination gets its own encoding
    /// because the `destination` header differs.
    pub fn publish(&self, destinations: &[&str], headers: &Headers, body: Bytes) -> Published {
        let message_id = format!(
            "{}-{}",
            self.boot_id,
            self.next_message_id.fetch_add(1, Relaxed)
        );
        let mut subscribers = 0;
        for destination in destinations {
            let message = Arc::new(fanout::prepare(
                destination,
                &message_id,
                headers,
                body.clone(),
            ));
            subscribers += fanout::deliver(
                &self.registry,
                destination,
                &message,
                self.config.slow_consumer,
                &self.metrics,
            );
        }
        self.metrics.messages_published.inc();
        Published {
            message_id,
            subscribers,
        }
    }

    /// Adds one subscription (the session has checked it may).
    pub fn subscribe(&self, destination: &str, key: SubscriberKey, subscriber: Subscriber) {
        self.registry.subscribe(destination, key, subscriber);
    }

    /// Removes one subscription.
    pub fn unsubscribe(&self, destination: &str, key: SubscriberKey) {
        self.registry.unsubscribe(destination, key);
    }

    /// Subscribers of `destination` on this node.
    pub fn subscriber_count(&self, destination: &str) -> usize {
        self.registry.subscriber_count(destination)
    }

    /// Destinations with at least one subscriber on this node.
    pub fn destination_count(&self) -> usize {
        self.registry.destination_count()
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
                    self.metrics.connections.inc();
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

    /// Waits up to `grace` for every connection task; returns whether all ended.
    pub async fn wait_for_connections(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
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
        self.broker.metrics.connections.dec();
    }
}

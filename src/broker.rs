//! The shared state of one broker, passed around by `Arc`.

use crate::config::Config;
use crate::fanout;
use crate::ip_limit::IpLimiter;
use crate::metrics::Metrics;
use crate::registry::Registry;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use stompede_protocol::Headers;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Broker {
    pub config: Config,
    pub registry: Registry,
    pub metrics: Metrics,
    /// Cancelled when the broker starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Open WebSocket sessions (bounded by `max-connections`).
    sessions: AtomicUsize,
    /// Open WebSocket sessions per client IP (bounded by `max-connections-per-ip`).
    pub sessions_per_ip: Arc<IpLimiter>,
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

impl Broker {
    pub fn new(config: Config) -> Broker {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis())
            .unwrap_or_default();
        Broker {
            config,
            registry: Registry::new(),
            metrics: Metrics::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            sessions: AtomicUsize::new(0),
            sessions_per_ip: Arc::default(),
            next_connection_id: AtomicU64::new(1),
            next_message_id: AtomicU64::new(1),
            boot_id: format!("{boot:x}"),
        }
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

    /// Reserves a session slot, or `None` at `max-connections`.
    pub fn try_open_session(self: &Arc<Self>) -> Option<SessionSlot> {
        let mut open = self.sessions.load(Relaxed);
        loop {
            if open >= self.config.max_connections {
                return None;
            }
            match self
                .sessions
                .compare_exchange_weak(open, open + 1, Relaxed, Relaxed)
            {
                Ok(_) => {
                    self.metrics.connections.inc();
                    return Some(SessionSlot {
                        broker: self.clone(),
                    });
                }
                Err(now) => open = now,
            }
        }
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.load(Relaxed)
    }

    pub fn is_at_capacity(&self) -> bool {
        self.open_sessions() >= self.config.max_connections
    }
}

/// Holds one of the `max-connections` slots; gives it back when dropped.
pub struct SessionSlot {
    broker: Arc<Broker>,
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

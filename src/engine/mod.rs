//! The engine seam: where a publish goes, and how this node learns of
//! messages published anywhere. Sessions, the registry and the writers do not
//! know which engine runs.
//!
//! - [`memory`]: one process; a publish is fanned out locally at once.
//! - [`redis`]: several nodes on Redis. A publish goes to Redis (one script
//!   call); each node that has local subscribers of the destination listens
//!   to its channel and fans the message out locally, its own publishes
//!   included, so every reader sees one order.
//!
//! The broker calls [`Engine::interest`] on every SUBSCRIBE and
//! [`Engine::interest_lost`] when a destination loses its last local
//! subscriber; the Redis engine turns those into coalesced SUBSCRIBE and
//! UNSUBSCRIBE commands.

pub mod memory;
pub mod redis;

use crate::history::{HistorySettings, Position, ReplayRequest, Since};
use crate::hub::Hub;
use bytes::Bytes;
use std::sync::Arc;
use stompede_protocol::Headers;
use stompede_protocol::PreparedMessage;
use tokio::sync::oneshot;

/// One message for one or more destinations.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Unique across the cluster (the node id is part of it).
    pub message_id: String,
    /// Validated, sorted and without duplicates.
    pub destinations: Vec<String>,
    pub headers: Headers,
    pub body: Bytes,
    /// A publish with the same key within `idempotency-window` is answered
    /// like the first and not delivered again.
    pub idempotency_key: Option<String>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message's id; for a retry with a known idempotency key, the first's.
    pub message_id: String,
    /// Readers of the destination(s), cluster-wide.
    pub subscribers: usize,
}

/// Why the engine could not take a publish or answer a count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("the {engine} engine is unavailable: {reason}")]
    Unavailable {
        engine: &'static str,
        reason: String,
    },
}

/// Resolves once this node receives every message published to a
/// destination from now on (for the Redis engine: its channel subscription
/// is confirmed).
#[derive(Debug, Default)]
pub struct Confirmation(Option<oneshot::Receiver<()>>);

impl Confirmation {
    pub fn ready() -> Confirmation {
        Confirmation(None)
    }

    pub fn is_ready(&self) -> bool {
        self.0.is_none()
    }

    /// Cancel safe: dropping it loses nothing but the wait.
    pub async fn wait(self) {
        if let Some(receiver) = self.0 {
            // A dropped sender means the engine is shutting down: stop waiting.
            let _ = receiver.await;
        }
    }
}

/// What a new local subscription got.
#[derive(Debug, Default)]
pub struct Subscribed {
    /// Resolves once every later publish reaches it.
    pub confirmation: Confirmation,
    /// The destination's history position (`None`: the engine keeps no history).
    pub position: Option<Position>,
    /// For a request with `since`: whether history covered the gap.
    pub recovered: Option<bool>,
    /// Messages replayed from history, queued before the live ones.
    pub replayed: usize,
    /// Its history is still to be read (redis engine): see [`Engine::resume`].
    pub reads_later: bool,
    /// What the broker makes of it: see `Broker::complete`.
    pub resume: Option<crate::broker::Resume>,
}

/// What a resume or catch-up read from history, once it could (redis engine:
/// after the subscription's channel is confirmed).
#[derive(Debug, Default)]
pub struct Resumed {
    pub position: Option<Position>,
    pub recovered: Option<bool>,
    /// Oldest first.
    pub messages: Vec<Arc<PreparedMessage>>,
}

/// A destination's history as the HTTP API shows it.
#[derive(Debug)]
pub struct HistoryPage {
    pub position: Option<Position>,
    pub since: Since,
}

/// Whether the engine can publish now, for `/readyz` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    pub engine: &'static str,
    pub up: bool,
    pub detail: String,
}

pub enum Engine {
    Memory(memory::MemoryEngine),
    Redis(redis::RedisEngine),
}

impl Engine {
    pub fn memory(
        hub: Arc<Hub>,
        idempotency: memory::IdempotencySettings,
        history: HistorySettings,
        epoch_prefix: String,
    ) -> Engine {
        Engine::Memory(memory::MemoryEngine::new(
            hub,
            idempotency,
            history,
            epoch_prefix,
        ))
    }

    /// Publishes to every node; resolves once the engine has taken it.
    pub async fn publish(&self, publication: &Publication) -> Result<Published, EngineError> {
        match self {
            Engine::Memory(engine) => Ok(engine.publish(publication)),
            Engine::Redis(engine) => engine.publish(publication).await,
        }
    }

    /// A local SUBSCRIBE to `destination`: `register` adds the subscriber
    /// to the registry and queues the messages it is given (from history,
    /// oldest first) before any live one. When its history can only be read
    /// later (redis engine, not in this node's copy), `hold` is called first,
    /// to hold its live messages back until [`resume`](Self::resume) has
    /// read it, and `reads_later` says so.
    pub fn subscribe(
        &self,
        destination: &str,
        request: &ReplayRequest,
        hold: impl FnOnce(),
        register: impl FnOnce(&[Arc<PreparedMessage>]),
    ) -> Subscribed {
        match self {
            Engine::Memory(engine) => {
                let replay = engine.history().subscribe(destination, request, register);
                Subscribed {
                    confirmation: Confirmation::ready(),
                    position: Some(replay.position),
                    recovered: replay.recovered,
                    replayed: replay.replayed,
                    ..Subscribed::default()
                }
            }
            Engine::Redis(engine) => {
                let mut register = Some(register);
                // Served by what this node received, when it covers the
                // request and the node is listening: no Redis read.
                if request.wants_history() && engine.is_listening(destination) {
                    let local = engine.local_history().subscribe_covered(
                        destination,
                        request,
                        |replayed| (register.take().expect("called once"))(replayed),
                    );
                    if let Some(replay) = local {
                        return Subscribed {
                            confirmation: engine.interest(destination),
                            position: Some(replay.position),
                            recovered: replay.recovered,
                            replayed: replay.replayed,
                            ..Subscribed::default()
                        };
                    }
                }
                let reads_later = request.wants_history();
                if reads_later {
                    hold();
                }
                (register.take().expect("not called yet"))(&[]);
                Subscribed {
                    confirmation: engine.interest(destination),
                    reads_later,
                    ..Subscribed::default()
                }
            }
        }
    }

    /// Reads what a new subscription asked of `destination`'s history, once
    /// its channel subscription is confirmed (redis engine; the memory engine
    /// answers in `subscribe`).
    pub async fn resume(
        &self,
        destination: &str,
        request: &ReplayRequest,
    ) -> Result<Resumed, EngineError> {
        let Engine::Redis(engine) = self else {
            return Ok(Resumed::default());
        };
        let size = engine.history_size();
        let mut resumed = Resumed::default();
        if let Some((epoch, after)) = &request.since {
            let read = redis::Read::Since {
                epoch,
                after: *after,
                limit: size,
            };
            let since = engine.read_history(destination, read).await?;
            resumed.recovered = Some(since.covered);
            resumed.position = since.position;
            if since.covered {
                resumed.messages = since.messages;
                return Ok(resumed);
            }
        }
        if request.last > 0 {
            let read = redis::Read::Last(request.last.min(size));
            let last = engine.read_history(destination, read).await?;
            resumed.position = last.position;
            resumed.messages = last.messages;
        }
        Ok(resumed)
    }

    /// Messages of `destination` after `after` (in `epoch`, default the
    /// current one), or its last ones, at most `limit`.
    pub async fn history(
        &self,
        destination: &str,
        epoch: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        match self {
            Engine::Memory(engine) => {
                let (position, since) = engine.history().read(destination, epoch, after, limit);
                Ok(HistoryPage { position, since })
            }
            Engine::Redis(engine) => {
                let page = match after {
                    None => {
                        engine
                            .read_history(destination, redis::Read::Last(limit))
                            .await?
                    }
                    Some(after) => {
                        // Without an epoch, the destination's current one.
                        let epoch = match epoch {
                            Some(epoch) => epoch.to_owned(),
                            None => engine
                                .read_history(destination, redis::Read::Last(0))
                                .await?
                                .position
                                .map(|position| position.epoch.to_string())
                                .unwrap_or_default(),
                        };
                        let read = redis::Read::Since {
                            epoch: &epoch,
                            after,
                            limit,
                        };
                        engine.read_history(destination, read).await?
                    }
                };
                Ok(page_of(page))
            }
        }
    }

    /// `destination` lost its last local subscriber.
    pub fn interest_lost(&self, destination: &str) {
        if let Engine::Redis(engine) = self {
            engine.interest_lost(destination);
        }
    }

    /// The local subscriber count of `destination` changed.
    pub fn count_changed(&self, destination: &str) {
        if let Engine::Redis(engine) = self {
            engine.count_changed(destination);
        }
    }

    /// Readers of `destination`, cluster-wide.
    pub async fn subscriber_count(&self, destination: &str) -> Result<usize, EngineError> {
        match self {
            Engine::Memory(engine) => Ok(engine.subscriber_count(destination)),
            Engine::Redis(engine) => engine.subscriber_count(destination).await,
        }
    }

    pub fn status(&self) -> EngineStatus {
        match self {
            Engine::Memory(_) => EngineStatus {
                engine: "memory",
                up: true,
                detail: "in process".into(),
            },
            Engine::Redis(engine) => engine.status(),
        }
    }

    /// Stops the engine's tasks (the Redis links close).
    pub async fn shutdown(&self) {
        if let Engine::Redis(engine) = self {
            engine.shutdown().await;
        }
    }
}

fn page_of(read: redis::HistoryRead) -> HistoryPage {
    HistoryPage {
        since: if read.covered && read.position.is_some() {
            Since::Covered(read.messages)
        } else {
            Since::Lost
        },
        position: read.position,
    }
}

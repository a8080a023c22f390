//! One connection's bounded outbound queue.
//!
//! Publishers push deliveries without waiting; the connection's writer drains
//! everything queued at once and writes it in one batch. The queue is bounded
//! both in frames and in bytes; a push that does not fit is refused, and the
//! caller applies the slow-consumer policy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use stompede_protocol::PreparedMessage;
use tokio::sync::Notify;

/// A MESSAGE waiting for one subscriber: the shared encoding plus the
/// subscriber's own `subscription` (and `ack`) header, stamped when written.
#[derive(Debug)]
pub struct Delivery {
    pub message: Arc<PreparedMessage>,
    pub subscription: Arc<str>,
    /// Whether the subscription wants an `ack` header (client ack modes).
    pub ack: bool,
    /// When the message was handed to the fan-out (for latency metrics).
    pub published_at: std::time::Instant,
    cost: usize,
}

impl Delivery {
    pub fn new(
        message: Arc<PreparedMessage>,
        subscription: Arc<str>,
        ack: bool,
        published_at: std::time::Instant,
    ) -> Delivery {
        let cost = delivery_cost(&message, &subscription);
        Delivery {
            message,
            subscription,
            ack,
            published_at,
            cost,
        }
    }
}

/// Bookkeeping of one queued delivery besides its message: the `Delivery`
/// itself, its queue slot, the per-subscriber headers written out.
const DELIVERY_OVERHEAD_BYTES: usize = 128;

/// What a queued delivery costs `outbound-queue-bytes`: the body, the
/// headers twice (as given, and encoded for the subscriber's version, both
/// kept by the shared message), the subscription id and the bookkeeping. A
/// message shared by several queued deliveries is counted by each, so the
/// bound errs on the safe side.
pub fn delivery_cost(message: &PreparedMessage, subscription: &str) -> usize {
    message.body().len()
        + 2 * message.headers().byte_len()
        + subscription.len()
        + DELIVERY_OVERHEAD_BYTES
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at its frame or byte limit.
    Full,
    /// The connection is closing; nothing more is queued for it.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    Open,
    /// Disconnect as a slow consumer.
    SlowConsumer,
    Closed,
}

#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Wakes the writer when something is queued or the state changes.
    pub ready: Notify,
    /// Wakes the writer, even in the middle of a write, when the connection
    /// must close (a slow consumer whose socket is not draining).
    pub closing: Notify,
    max_frames: usize,
    max_bytes: usize,
    /// STOMP 1.2 `ack` ids the writer has stamped so far: the ids are
    /// `{connection}.{n}` with `n` below this, so an ACK can be checked
    /// without remembering every message.
    acks_issued: AtomicU64,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
    state: OutboxState,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                state: OutboxState::Open,
            }),
            ready: Notify::new(),
            closing: Notify::new(),
            max_frames,
            max_bytes,
            acks_issued: AtomicU64::new(0),
        }
    }

    // A std Mutex, not tokio's: it is held for a few instructions and never
    // across an `.await`.
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn push(&self, delivery: Delivery) -> Result<(), PushError> {
        let mut queue = self.lock();
        if queue.state != OutboxState::Open {
            return Err(PushError::Closed);
        }
        // An empty queue accepts one delivery even over the byte limit, so a
        // single large message can still get through.
        if queue.items.len() >= self.max_frames
            || (!queue.items.is_empty() && queue.bytes + delivery.cost > self.max_bytes)
        {
            return Err(PushError::Full);
        }
        let was_empty = queue.items.is_empty();
        queue.bytes += delivery.cost;
        queue.items.push_back(delivery);
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Marks the connection for disconnection and wakes its writer, which
    /// drains (and drops) what is still queued.
    pub fn set_state(&self, state: OutboxState) {
        let mut queue = self.lock();
        if queue.state == OutboxState::Open {
            queue.state = state;
        }
        drop(queue);
        self.ready.notify_one();
        self.closing.notify_one();
    }

    /// Moves everything queued into `batch` (which must be empty) and returns
    /// the state. Swapping keeps both allocations for the next round.
    pub fn drain_into(&self, batch: &mut VecDeque<Delivery>) -> OutboxState {
        let mut queue = self.lock();
        std::mem::swap(&mut queue.items, batch);
        queue.bytes = 0;
        // Give back memory after a burst so idle connections stay small.
        if queue.items.capacity() > 64 {
            queue.items = VecDeque::new();
        }
        queue.state
    }

    /// Moves deliveries from the front of the queue into `batch` until they
    /// cost `max_bytes` (at least one, when any is queued); returns the state.
    /// The writer takes one socket write's worth at a time, so what it has
    /// not encoded yet stays here.
    pub fn drain_up_to(&self, batch: &mut VecDeque<Delivery>, max_bytes: usize) -> OutboxState {
        let mut queue = self.lock();
        let mut taken = 0;
        while let Some(delivery) = queue.items.pop_front() {
            taken += delivery.cost;
            queue.bytes -= delivery.cost;
            batch.push_back(delivery);
            if taken >= max_bytes {
                break;
            }
        }
        if queue.items.is_empty() && queue.items.capacity() > 64 {
            queue.items = VecDeque::new();
        }
        queue.state
    }

    /// Drops the deliveries queued for `subscription` (the very `Arc` its
    /// subscriber was registered with), so an id reused by a new
    /// subscription never gets the old one's messages. The writer takes
    /// one socket write's worth at a time, so this is everything not yet
    /// encoded. Returns how many were dropped; O(queue length).
    pub fn retire(&self, subscription: &Arc<str>) -> usize {
        let mut queue = self.lock();
        let before = queue.items.len();
        let mut freed = 0;
        queue.items.retain(|delivery| {
            let retired = Arc::ptr_eq(&delivery.subscription, subscription);
            if retired {
                freed += delivery.cost;
            }
            !retired
        });
        queue.bytes -= freed;
        before - queue.items.len()
    }

    /// How many STOMP 1.2 `ack` ids this connection has been given.
    pub fn acks_issued(&self) -> u64 {
        self.acks_issued.load(Ordering::Acquire)
    }

    /// Set by the writer once it has stamped `ack` ids below `issued`.
    pub fn set_acks_issued(&self, issued: u64) {
        self.acks_issued.store(issued, Ordering::Release);
    }

    pub fn state(&self) -> OutboxState {
        self.lock().state
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

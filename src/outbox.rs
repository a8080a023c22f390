//! One connection's bounded outbound queue.
//!
//! Publishers push deliveries without waiting; the connection's writer drains
//! what is queued, one socket write's worth at a time. Live deliveries are
//! bounded both in frames and in bytes; a push that does not fit is refused,
//! and the caller applies the slow-consumer policy.
//!
//! Two other kinds of items share the queue, so that everything reaches the
//! client in the order it was queued, and are not held to those bounds:
//! - messages replayed from history for a new subscription (bounded by
//!   `history-size` per subscription), queued before any live message of it;
//! - the session's replies (RECEIPT, ERROR), which wait behind the messages
//!   queued before them (bounded by the connection, which stops reading
//!   while replies wait behind more than `ws-write-buffer-bytes`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use stompede_protocol::{Frame, PreparedMessage};
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
    /// Messages of this subscription were dropped before this one
    /// (`slow-consumer drop`): it is written with `x-gap:true`.
    pub gap: bool,
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
            gap: false,
            cost,
        }
    }
}

/// What waits in an outbox.
#[derive(Debug)]
pub enum Queued {
    /// A live MESSAGE, counted against the queue's bounds.
    Message(Delivery),
    /// A MESSAGE from history, queued when its subscription began.
    Replayed(Delivery),
    /// A reply to the client's frames.
    Reply(Frame),
}

impl Queued {
    fn cost(&self) -> usize {
        match self {
            Queued::Message(delivery) | Queued::Replayed(delivery) => delivery.cost,
            Queued::Reply(frame) => reply_cost(frame),
        }
    }

    /// How many of `items` are MESSAGEs (what `outbound_queued_frames` counts).
    pub fn deliveries<'a>(items: impl IntoIterator<Item = &'a Queued>) -> usize {
        items
            .into_iter()
            .filter(|item| !matches!(item, Queued::Reply(_)))
            .count()
    }

    fn delivery(&self) -> Option<&Delivery> {
        match self {
            Queued::Message(delivery) | Queued::Replayed(delivery) => Some(delivery),
            Queued::Reply(_) => None,
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

/// Whether `delivery` is of `epoch` and at most at `offset`: a replay up to
/// there had it.
fn replayed_already(delivery: &Delivery, epoch: &str, offset: u64) -> bool {
    let headers = delivery.message.headers();
    headers.get("x-epoch") == Some(epoch)
        && headers
            .get("x-offset")
            .and_then(|value| value.parse::<u64>().ok())
            .is_some_and(|at| at <= offset)
}

fn reply_cost(frame: &Frame) -> usize {
    frame.body.len() + frame.headers.byte_len() + DELIVERY_OVERHEAD_BYTES
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at its frame or byte limit.
    Full,
    /// The connection is closing; nothing more is queued for it.
    Closed,
    /// The subscription already has this message (from its replay).
    Duplicate,
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
    /// `Queue::replies`, readable without the lock.
    replies_queued: AtomicUsize,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Queued>,
    /// Live messages queued, and what they cost (the bounded part).
    live: usize,
    live_bytes: usize,
    /// What replayed messages and replies cost.
    other_bytes: usize,
    replies: usize,
    state: OutboxState,
    /// Subscriptions that lost a message (`slow-consumer drop`) since their
    /// last queued one; at most one entry per subscription of the session.
    gapped: Vec<Arc<str>>,
    /// Subscriptions whose live messages wait here until their history is
    /// read (redis engine), with those messages (counted as live ones); at
    /// most one entry per subscription of the session.
    held: Vec<(Arc<str>, VecDeque<Delivery>)>,
    /// Subscriptions just released from a hold, with the epoch and offset
    /// their replay went up to: live messages up to there may still be on
    /// their way (from Redis) and are dropped, until one past it comes.
    floors: Vec<(Arc<str>, Arc<str>, u64)>,
}

impl Queue {
    fn take_front(&mut self) -> Option<Queued> {
        let item = self.items.pop_front()?;
        self.forget(&item);
        Some(item)
    }

    fn forget(&mut self, item: &Queued) {
        match item {
            Queued::Message(delivery) => {
                self.live -= 1;
                self.live_bytes -= delivery.cost;
            }
            Queued::Replayed(delivery) => self.other_bytes -= delivery.cost,
            Queued::Reply(frame) => {
                self.replies -= 1;
                self.other_bytes -= reply_cost(frame);
            }
        }
    }

    fn add(&mut self, item: Queued) {
        match &item {
            Queued::Message(delivery) => {
                self.live += 1;
                self.live_bytes += delivery.cost;
            }
            Queued::Replayed(delivery) => self.other_bytes += delivery.cost,
            Queued::Reply(frame) => {
                self.replies += 1;
                self.other_bytes += reply_cost(frame);
            }
        }
        self.items.push_back(item);
    }

    /// Gives back memory after a burst so idle connections stay small.
    fn shrink_when_empty(&mut self) {
        if self.items.is_empty() && self.items.capacity() > 64 {
            self.items = VecDeque::new();
        }
    }
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                live: 0,
                live_bytes: 0,
                other_bytes: 0,
                replies: 0,
                state: OutboxState::Open,
                gapped: Vec::new(),
                held: Vec::new(),
                floors: Vec::new(),
            }),
            ready: Notify::new(),
            closing: Notify::new(),
            max_frames,
            max_bytes,
            acks_issued: AtomicU64::new(0),
            replies_queued: AtomicUsize::new(0),
        }
    }

    // A std Mutex, not tokio's: it is held for a few instructions and never
    // across an `.await`.
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a live message, within the queue's bounds.
    pub fn push(&self, mut delivery: Delivery) -> Result<(), PushError> {
        let mut queue = self.lock();
        if queue.state != OutboxState::Open {
            return Err(PushError::Closed);
        }
        // An empty queue accepts one delivery even over the byte limit, so a
        // single large message can still get through.
        if queue.live >= self.max_frames
            || (queue.live > 0 && queue.live_bytes + delivery.cost > self.max_bytes)
        {
            return Err(PushError::Full);
        }
        if !queue.gapped.is_empty() {
            if let Some(at) = queue
                .gapped
                .iter()
                .position(|gapped| Arc::ptr_eq(gapped, &delivery.subscription))
            {
                queue.gapped.swap_remove(at);
                delivery.gap = true;
            }
        }
        if !queue.floors.is_empty() {
            if let Some(at) = queue
                .floors
                .iter()
                .position(|(floor, _, _)| Arc::ptr_eq(floor, &delivery.subscription))
            {
                let (_, epoch, up_to) = &queue.floors[at];
                if replayed_already(&delivery, epoch, *up_to) {
                    return Err(PushError::Duplicate);
                }
                queue.floors.swap_remove(at);
            }
        }
        if let Some((_, waiting)) = queue
            .held
            .iter_mut()
            .find(|(held, _)| Arc::ptr_eq(held, &delivery.subscription))
        {
            // Counted like a queued one, so the bounds hold meanwhile.
            let cost = delivery.cost;
            waiting.push_back(delivery);
            queue.live += 1;
            queue.live_bytes += cost;
            return Ok(());
        }
        let was_empty = queue.items.is_empty();
        queue.add(Queued::Message(delivery));
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Notes that a message for `subscription` was dropped (`slow-consumer
    /// drop`): its next one carries `x-gap:true`.
    pub fn note_gap(&self, subscription: &Arc<str>) {
        let mut queue = self.lock();
        if !queue
            .gapped
            .iter()
            .any(|gapped| Arc::ptr_eq(gapped, subscription))
        {
            queue.gapped.push(subscription.clone());
        }
    }

    /// Holds back the live messages of `subscription` (a new one, whose
    /// history is still to be read) until [`release`](Self::release).
    pub fn hold(&self, subscription: &Arc<str>) {
        let mut queue = self.lock();
        if !queue
            .held
            .iter()
            .any(|(held, _)| Arc::ptr_eq(held, subscription))
        {
            queue.held.push((subscription.clone(), VecDeque::new()));
        }
    }

    /// Queues `replayed` (from history, oldest first, outside the live
    /// bounds) for a held subscription, then the live messages held back
    /// meanwhile, except those the replay already had: same epoch, offset at
    /// most `replayed_up_to`'s. Returns (replayed queued, held dropped as
    /// duplicates).
    pub fn release(
        &self,
        subscription: &Arc<str>,
        replayed: impl Iterator<Item = Delivery>,
        replayed_up_to: Option<(&Arc<str>, u64)>,
    ) -> (usize, usize) {
        let mut queue = self.lock();
        let held = match queue
            .held
            .iter()
            .position(|(held, _)| Arc::ptr_eq(held, subscription))
        {
            Some(at) => queue.held.swap_remove(at).1,
            None => VecDeque::new(),
        };
        let was_empty = queue.items.is_empty();
        let before = queue.items.len();
        let open = queue.state == OutboxState::Open;
        if open {
            for delivery in replayed {
                queue.add(Queued::Replayed(delivery));
            }
        }
        let replayed = queue.items.len() - before;
        let mut duplicates = 0;
        for delivery in held {
            queue.live -= 1;
            queue.live_bytes -= delivery.cost;
            let seen = replayed_up_to
                .is_some_and(|(epoch, offset)| replayed_already(&delivery, epoch, offset));
            if seen || !open {
                duplicates += 1;
            } else {
                queue.add(Queued::Message(delivery));
            }
        }
        if let (Some((epoch, offset)), true) = (replayed_up_to, open) {
            queue
                .floors
                .push((subscription.clone(), epoch.clone(), offset));
        }
        let queued = queue.items.len() > before;
        drop(queue);
        if was_empty && queued {
            self.ready.notify_one();
        }
        (replayed, duplicates)
    }

    /// Queues messages from history for a new subscription, outside the
    /// live bounds; returns how many were queued.
    pub fn push_replayed(&self, deliveries: impl Iterator<Item = Delivery>) -> usize {
        let mut queue = self.lock();
        if queue.state != OutboxState::Open {
            return 0;
        }
        let was_empty = queue.items.is_empty();
        let before = queue.items.len();
        for delivery in deliveries {
            queue.add(Queued::Replayed(delivery));
        }
        let queued = queue.items.len() - before;
        drop(queue);
        if was_empty && queued > 0 {
            self.ready.notify_one();
        }
        queued
    }

    /// Queues the session's replies after everything queued so far; returns the state.
    pub fn push_replies(&self, replies: &mut Vec<Frame>) -> OutboxState {
        let mut queue = self.lock();
        let state = queue.state;
        if state == OutboxState::Open {
            let was_empty = queue.items.is_empty();
            for reply in replies.drain(..) {
                queue.add(Queued::Reply(reply));
            }
            self.replies_queued.store(queue.replies, Ordering::Relaxed);
            drop(queue);
            if was_empty {
                self.ready.notify_one();
            }
        }
        replies.clear();
        state
    }

    /// Whether replies wait in the queue (read without the lock: only the
    /// connection's own task queues and takes replies).
    pub fn holds_replies(&self) -> bool {
        self.replies_queued.load(Ordering::Relaxed) > 0
    }

    /// The bytes of everything queued.
    pub fn queued_bytes(&self) -> usize {
        let queue = self.lock();
        queue.live_bytes + queue.other_bytes
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
    pub fn drain_into(&self, batch: &mut VecDeque<Queued>) -> OutboxState {
        let mut queue = self.lock();
        std::mem::swap(&mut queue.items, batch);
        for (_, waiting) in std::mem::take(&mut queue.held) {
            batch.extend(waiting.into_iter().map(Queued::Message));
        }
        queue.live = 0;
        queue.live_bytes = 0;
        queue.other_bytes = 0;
        queue.replies = 0;
        self.replies_queued.store(0, Ordering::Relaxed);
        // Give back memory after a burst so idle connections stay small.
        if queue.items.capacity() > 64 {
            queue.items = VecDeque::new();
        }
        queue.state
    }

    /// Moves items from the front of the queue into `batch` until they
    /// cost `max_bytes` (at least one, when any is queued); returns the state.
    /// The writer takes one socket write's worth at a time, so what it has
    /// not encoded yet stays here.
    pub fn drain_up_to(&self, batch: &mut VecDeque<Queued>, max_bytes: usize) -> OutboxState {
        let mut queue = self.lock();
        let mut taken = 0;
        while let Some(item) = queue.take_front() {
            taken += item.cost();
            batch.push_back(item);
            if taken >= max_bytes {
                break;
            }
        }
        self.replies_queued.store(queue.replies, Ordering::Relaxed);
        queue.shrink_when_empty();
        queue.state
    }

    /// Drops the deliveries queued for `subscription` (the very `Arc` its
    /// subscriber was registered with), so an id reused by a new
    /// subscription never gets the old one's messages. The writer takes
    /// one socket write's worth at a time, so this is everything not yet
    /// encoded. Returns how many were dropped; O(queue length).
    pub fn retire(&self, subscription: &Arc<str>) -> usize {
        let mut queue = self.lock();
        queue
            .gapped
            .retain(|gapped| !Arc::ptr_eq(gapped, subscription));
        queue
            .floors
            .retain(|(floor, _, _)| !Arc::ptr_eq(floor, subscription));
        let mut held_dropped = 0;
        if let Some(at) = queue
            .held
            .iter()
            .position(|(held, _)| Arc::ptr_eq(held, subscription))
        {
            let (_, waiting) = queue.held.swap_remove(at);
            for delivery in waiting {
                queue.live -= 1;
                queue.live_bytes -= delivery.cost;
                held_dropped += 1;
            }
        }
        let before = queue.items.len() + held_dropped;
        let items = std::mem::take(&mut queue.items);
        for item in items {
            let retired = item
                .delivery()
                .is_some_and(|delivery| Arc::ptr_eq(&delivery.subscription, subscription));
            if retired {
                queue.forget(&item);
            } else {
                queue.items.push_back(item);
            }
        }
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

    /// Items queued (messages and replies).
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

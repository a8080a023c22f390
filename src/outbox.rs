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
//!
//! Direct writes: while the connection's own writer is idle (nothing queued,
//! nothing half written, its task asleep), it hands the socket to the
//! publishers. A live push into an empty queue then does not wake the
//! connection's task: the fan-out writes the frame into the socket itself
//! ([`Outbox::write_direct`], a non-blocking `send()` under this outbox's
//! lock), which spares the wake-up, the task's poll and its bookkeeping on
//! the one-comment-to-every-reader path. Whatever cannot be written at once
//! (a full socket, a frame only partly taken, a message that needs the
//! session's `ack` id) is left to the connection's task, woken for it, and
//! the socket stays the task's until its writer is idle again. Everything
//! still goes through the queue in order, and only one writer at a time
//! touches the socket: publishers under the lock, the task after taking the
//! socket back under the lock ([`Outbox::claim_socket`]).

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use stompede_protocol::{Frame, PreparedMessage, Version};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

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
    /// A reply to the client's frames (boxed: replies are few, and every
    /// queue slot, kept by an idle connection too, is as large as the largest item).
    Reply(Box<Frame>),
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

/// What a live push leaves to the fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; the connection's task writes it (woken if it has to be).
    Queued,
    /// Queued, and the socket is the publishers' (see the module's doc):
    /// the caller is to call [`Outbox::write_direct`] soon, from anywhere.
    WriteDirect,
}

/// What [`Outbox::write_direct`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectWrite {
    /// Nothing: the socket was the connection's again, or the queue empty.
    Skipped,
    /// `deliveries` frames went into the socket (the last maybe only in
    /// part, its end left to the connection's task), in one `send()`; the
    /// oldest was published at `oldest`.
    Written {
        deliveries: usize,
        oldest: std::time::Instant,
    },
    /// The socket took nothing: the connection's task was woken to write.
    Handed,
}

/// A publisher's reusable encoding buffer for direct writes. It remembers
/// what it holds, so that the same message for the next reader with the same
/// subscription id and version (most readers of a page: stompjs numbers its
/// subscriptions from `sub-0`) is not encoded again.
#[derive(Debug, Default)]
pub struct DirectBuffer {
    bytes: BytesMut,
    /// What `bytes` holds, when it is one delivery without `x-gap`.
    holds: Option<(Arc<PreparedMessage>, Version, Arc<str>)>,
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
    /// Where `Queue::socket` points (null: none), readable without the
    /// lock, for [`Outbox::prefetch`] only: it is never dereferenced.
    socket_hint: AtomicPtr<TcpStream>,
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
    /// What only gaps and resuming subscriptions need (`None`: nothing).
    rare: Option<Box<Rare>>,
    /// The connection's socket, for direct writes (`None`: not a plain TCP
    /// socket, or the connection is closing).
    socket: Option<Arc<TcpStream>>,
    /// What frames are encoded for: set at CONNECT.
    version: Option<Version>,
    /// The socket is the publishers' (the connection's writer is idle).
    direct_open: bool,
    /// A fan-out is to call `write_direct` on this outbox (at most one is).
    direct_scheduled: bool,
    /// The one live message a scheduled direct write is to write, when it
    /// came into an empty queue: kept here, beside the lock, so that the
    /// write (on another core, most often) does not also have to fetch the
    /// queue's buffer. Counted as queued; any other use of the queue first
    /// moves it to the front of `items` (see [`Outbox::lock`]).
    direct_next: Option<Delivery>,
    /// The end of a frame a direct write could write only in part; it goes
    /// out before anything else (taken by the connection's writer).
    remainder: Option<Bytes>,
    /// When a direct write last wrote (the connection's heart-beats count from it).
    direct_written_at: Option<Instant>,
}

/// A queue's bookkeeping for `slow-consumer drop` and for subscriptions
/// that resume from history; boxed, so that the queue of a reader that needs
/// none of it does not keep three empty `Vec`s (72 bytes).
#[derive(Debug, Default)]
struct Rare {
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

impl Rare {
    fn is_empty(&self) -> bool {
        self.gapped.is_empty() && self.held.is_empty() && self.floors.is_empty()
    }
}

impl Queue {
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    /// Gives the box back once nothing is in it.
    fn tidy_rare(&mut self) {
        if self.rare.as_ref().is_some_and(|rare| rare.is_empty()) {
            self.rare = None;
        }
    }

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

    /// A live message was queued while the socket is the publishers': the
    /// first such push schedules the direct write, and whoever scheduled it
    /// writes the later ones too.
    fn schedule_direct(&mut self) -> Pushed {
        let first = !self.direct_scheduled;
        self.direct_scheduled = true;
        if first {
            Pushed::WriteDirect
        } else {
            Pushed::Queued
        }
    }

    /// Puts `direct_next` back at the front of the queue (it is the oldest:
    /// it is only set while the queue is empty).
    fn settle(&mut self) {
        if let Some(delivery) = self.direct_next.take() {
            self.items.push_front(Queued::Message(delivery));
        }
    }

    /// Gives back memory after a burst so idle connections stay small.
    fn shrink_when_empty(&mut self) {
        if self.items.is_empty() && self.items.capacity() > 64 {
            self.items = VecDeque::new();
        }
    }
}

/// One non-blocking `send()` of `bytes`; how many went (0: none, or the
/// socket failed, which the connection's task finds on its own write).
/// Straight on the file descriptor, not through tokio's readiness state
/// (one cache line fewer per reader): a "would block" here is not recorded
/// there, so the task's next write may try once more before it waits.
fn send_now(socket: &TcpStream, bytes: &[u8]) -> usize {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        extern "C" {
            fn send(fd: i32, buf: *const u8, len: usize, flags: i32) -> isize;
        }
        const MSG_DONTWAIT: i32 = 0x40;
        const MSG_NOSIGNAL: i32 = 0x4000;
        // SAFETY: the descriptor is the socket's own, open while `socket`
        // is borrowed; `bytes` is a valid buffer of `len` bytes.
        let sent = unsafe {
            send(
                socket.as_raw_fd(),
                bytes.as_ptr(),
                bytes.len(),
                MSG_DONTWAIT | MSG_NOSIGNAL,
            )
        };
        usize::try_from(sent).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    socket.try_write(bytes).unwrap_or(0)
}

fn socket_address(socket: &Option<Arc<TcpStream>>) -> *mut TcpStream {
    socket.as_ref().map_or(std::ptr::null_mut(), |socket| {
        Arc::as_ptr(socket).cast_mut()
    })
}

/// Asks the CPU to bring the cache lines of the `T` at `at` in. Never reads
/// them, so `at` need not point at a live value.
fn prefetch_bytes<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = at.cast::<i8>();
        let size = std::mem::size_of::<T>();
        // `at` need not be at a line's start: the last byte's line too.
        for offset in (0..size).step_by(64).chain(size.checked_sub(1)) {
            // SAFETY: a prefetch is a hint: it reads nothing and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

impl DirectBuffer {
    /// Encodes `items` (all plain live messages, or it returns `false`) for
    /// `version`, unless the buffer already holds exactly that.
    fn encode(&mut self, items: &VecDeque<Queued>, version: Version) -> bool {
        if let (1, Some(Queued::Message(delivery))) = (items.len(), items.front()) {
            return self.encode_one(delivery, version);
        }
        self.holds = None;
        self.bytes.clear();
        for item in items {
            match item {
                Queued::Message(delivery) if !delivery.ack => {
                    crate::session::writer::encode_delivery(
                        &mut self.bytes,
                        version,
                        delivery,
                        None,
                    )
                }
                _ => return false,
            }
        }
        true
    }

    /// [`encode`](Self::encode) for one delivery.
    fn encode_one(&mut self, delivery: &Delivery, version: Version) -> bool {
        if delivery.ack {
            return false;
        }
        let reusable = !delivery.gap;
        if let (true, Some((message, held_version, subscription))) = (reusable, &self.holds) {
            if Arc::ptr_eq(message, &delivery.message)
                && *held_version == version
                && **subscription == *delivery.subscription
            {
                return true;
            }
        }
        self.bytes.clear();
        crate::session::writer::encode_delivery(&mut self.bytes, version, delivery, None);
        // The same message as last time, most often (another reader of the
        // page): its count is touched by every core, so it is not cloned again.
        let message = match self.holds.take() {
            Some((message, ..)) if Arc::ptr_eq(&message, &delivery.message) => message,
            _ => delivery.message.clone(),
        };
        self.holds = reusable.then(|| (message, version, delivery.subscription.clone()));
        true
    }
}

impl Outbox {
    /// An outbox; with `socket`, publishers may write into it directly
    /// once the session is connected (see the module's doc).
    pub fn new(max_frames: usize, max_bytes: usize, socket: Option<Arc<TcpStream>>) -> Outbox {
        let socket_hint = AtomicPtr::new(socket_address(&socket));
        Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                live: 0,
                live_bytes: 0,
                other_bytes: 0,
                replies: 0,
                state: OutboxState::Open,
                rare: None,
                socket,
                version: None,
                direct_open: false,
                direct_scheduled: false,
                direct_next: None,
                remainder: None,
                direct_written_at: None,
            }),
            ready: Notify::new(),
            closing: Notify::new(),
            max_frames,
            max_bytes,
            acks_issued: AtomicU64::new(0),
            replies_queued: AtomicUsize::new(0),
            socket_hint,
        }
    }

    fn set_socket(
        &self,
        queue: &mut Queue,
        socket: Option<Arc<TcpStream>>,
    ) -> Option<Arc<TcpStream>> {
        self.socket_hint
            .store(socket_address(&socket), Ordering::Relaxed);
        std::mem::replace(&mut queue.socket, socket)
    }

    /// The queue, with everything in `items` (`direct_next` moved there).
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        let mut queue = self.lock_unsettled();
        queue.settle();
        queue
    }

    // A std Mutex, not tokio's: it is held for a few instructions and never
    // across an `.await`.
    fn lock_unsettled(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the CPU to bring this outbox into its cache, so that a fan-out
    /// writing into many sockets in turn does not wait for each outbox's
    /// lock and queue to come from the other core (they were last touched
    /// by the publisher there), nor for its socket's. A hint only: nothing
    /// is read.
    pub fn prefetch(&self) {
        prefetch_bytes(self);
        let socket = self.socket_hint.load(Ordering::Relaxed);
        if !socket.is_null() {
            // It may be gone by now, which a prefetch does not mind.
            prefetch_bytes(socket.cast_const());
        }
    }

    /// Queues a live message, within the queue's bounds.
    pub fn push(&self, mut delivery: Delivery) -> Result<Pushed, PushError> {
        let mut queue = self.lock_unsettled();
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
        let fields = &mut *queue;
        if let Some(rare) = fields.rare.as_deref_mut() {
            if let Some(at) = rare
                .gapped
                .iter()
                .position(|gapped| Arc::ptr_eq(gapped, &delivery.subscription))
            {
                rare.gapped.swap_remove(at);
                delivery.gap = true;
            }
            if let Some(at) = rare
                .floors
                .iter()
                .position(|(floor, _, _)| Arc::ptr_eq(floor, &delivery.subscription))
            {
                let (_, epoch, up_to) = &rare.floors[at];
                if replayed_already(&delivery, epoch, *up_to) {
                    return Err(PushError::Duplicate);
                }
                rare.floors.swap_remove(at);
            }
            if let Some((_, waiting)) = rare
                .held
                .iter_mut()
                .find(|(held, _)| Arc::ptr_eq(held, &delivery.subscription))
            {
                // Counted like a queued one, so the bounds hold meanwhile.
                let cost = delivery.cost;
                waiting.push_back(delivery);
                fields.live += 1;
                fields.live_bytes += cost;
                return Ok(Pushed::Queued);
            }
            fields.tidy_rare();
        }
        if queue.direct_open
            && !delivery.ack
            && queue.items.is_empty()
            && queue.direct_next.is_none()
        {
            queue.live += 1;
            queue.live_bytes += delivery.cost;
            queue.direct_next = Some(delivery);
            return Ok(queue.schedule_direct());
        }
        queue.settle();
        let was_empty = queue.items.is_empty();
        if delivery.ack {
            // Its `ack` header is the writer's to stamp.
            queue.direct_open = false;
        }
        queue.add(Queued::Message(delivery));
        if queue.direct_open {
            return Ok(queue.schedule_direct());
        }
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(Pushed::Queued)
    }

    /// Writes what is queued into the socket, if the socket is still the
    /// publishers' (see the module's doc): one non-blocking `send()`, under
    /// the lock. What it cannot write is left to the connection's task,
    /// which is woken for it.
    pub fn write_direct(&self, buffer: &mut DirectBuffer, now: Instant) -> DirectWrite {
        let mut queue = self.lock_unsettled();
        queue.direct_scheduled = false;
        // Never both (`direct_next` is set only into an empty queue, and any
        // other push settles first); if they were, what is written below must
        // be everything that is then taken off the queue.
        if !queue.items.is_empty() {
            queue.settle();
        }
        let nothing_queued = queue.items.is_empty() && queue.direct_next.is_none();
        if !queue.direct_open || nothing_queued || queue.state != OutboxState::Open {
            if !nothing_queued && queue.state == OutboxState::Open {
                // The socket went back to the task while this write was
                // scheduled (a push that needs the task, a replay): what is
                // queued is the task's to write, and it may be asleep.
                drop(queue);
                self.ready.notify_one();
            }
            return DirectWrite::Skipped;
        }
        let (Some(socket), Some(version)) = (&queue.socket, queue.version) else {
            return DirectWrite::Skipped;
        };
        // Not a plain live message (cannot happen while the socket is the
        // publishers', but the task knows how to write anything), or a full
        // (or broken: the task finds out on its own write) socket.
        let encoded = match &queue.direct_next {
            Some(delivery) => buffer.encode_one(delivery, version),
            None => buffer.encode(&queue.items, version),
        };
        let written = match encoded {
            true => send_now(socket, &buffer.bytes),
            false => 0,
        };
        if written == 0 {
            queue.settle();
            queue.direct_open = false;
            drop(queue);
            self.ready.notify_one();
            return DirectWrite::Handed;
        }
        let mut deliveries = 0;
        let mut oldest = None;
        if let Some(delivery) = queue.direct_next.take() {
            queue.live -= 1;
            queue.live_bytes -= delivery.cost;
            deliveries = 1;
            oldest = Some(delivery.published_at);
        }
        while let Some(item) = queue.take_front() {
            deliveries += 1;
            if let Queued::Message(delivery) = item {
                oldest.get_or_insert(delivery.published_at);
            }
        }
        queue.shrink_when_empty();
        queue.direct_written_at = Some(now);
        let oldest = oldest.unwrap_or_else(std::time::Instant::now);
        if written < buffer.bytes.len() {
            // The frame's end must go out next, and only the task may wait for that.
            queue.remainder = Some(Bytes::copy_from_slice(&buffer.bytes[written..]));
            queue.direct_open = false;
            drop(queue);
            self.ready.notify_one();
        }
        DirectWrite::Written { deliveries, oldest }
    }

    /// The connection's task is about to write something of its own (a
    /// heart-beat, a pong): the socket is the task's again, and any direct
    /// write still going on has finished once this returns. Returns whether
    /// the end of a partly written frame waits to go first (the task's
    /// writer takes it with the queue).
    pub fn claim_socket(&self) -> bool {
        let mut queue = self.lock();
        queue.direct_open = false;
        queue.remainder.is_some()
    }

    /// Takes the socket away from the publishers, to move it to another
    /// runtime: once this returns, no direct write is under way and none
    /// starts until [`Outbox::put_socket`]. Pushes meanwhile are queued.
    pub fn take_socket(&self) -> Option<Arc<TcpStream>> {
        let mut queue = self.lock();
        queue.direct_open = false;
        self.set_socket(&mut queue, None)
    }

    /// Gives back the socket [`Outbox::take_socket`] took (moved); it is
    /// the publishers' again once the writer is next idle.
    pub fn put_socket(&self, socket: Arc<TcpStream>) {
        let mut queue = self.lock();
        if queue.state != OutboxState::Closed {
            self.set_socket(&mut queue, Some(socket));
        }
    }

    /// The end of a frame a direct write left, if any (for the goodbye: it
    /// must go out before the ERROR frame, or the client reads one frame
    /// spliced into another).
    pub fn take_remainder(&self) -> Option<Bytes> {
        self.lock().remainder.take()
    }

    /// The session is connected with `version`: direct writes encode for it.
    pub fn set_version(&self, version: Version) {
        self.lock().version = Some(version);
    }

    /// When a direct write last wrote into the socket.
    pub fn direct_written_at(&self) -> Option<Instant> {
        self.lock().direct_written_at
    }

    /// Notes that a message for `subscription` was dropped (`slow-consumer
    /// drop`): its next one carries `x-gap:true`.
    pub fn note_gap(&self, subscription: &Arc<str>) {
        let mut queue = self.lock();
        let rare = queue.rare();
        if !rare
            .gapped
            .iter()
            .any(|gapped| Arc::ptr_eq(gapped, subscription))
        {
            rare.gapped.push(subscription.clone());
        }
    }

    /// Holds back the live messages of `subscription` (a new one, whose
    /// history is still to be read) until [`release`](Self::release).
    pub fn hold(&self, subscription: &Arc<str>) {
        let mut queue = self.lock();
        let rare = queue.rare();
        if !rare
            .held
            .iter()
            .any(|(held, _)| Arc::ptr_eq(held, subscription))
        {
            rare.held.push((subscription.clone(), VecDeque::new()));
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
        let held = queue
            .rare
            .as_deref_mut()
            .and_then(|rare| {
                let at = rare
                    .held
                    .iter()
                    .position(|(held, _)| Arc::ptr_eq(held, subscription))?;
                Some(rare.held.swap_remove(at).1)
            })
            .unwrap_or_default();
        // Replayed messages are the task's to write (they are not live ones).
        queue.direct_open = false;
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
                .rare()
                .floors
                .push((subscription.clone(), epoch.clone(), offset));
        }
        queue.tidy_rare();
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
        queue.direct_open = false;
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
            queue.direct_open = false;
            let was_empty = queue.items.is_empty();
            for reply in replies.drain(..) {
                queue.add(Queued::Reply(Box::new(reply)));
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
        // From now on only the task writes (its goodbye), and a closed
        // connection's socket is not kept open by its outbox.
        queue.direct_open = false;
        if state == OutboxState::Closed {
            self.set_socket(&mut queue, None);
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
        if let Some(rare) = queue.rare.as_deref_mut() {
            for (_, waiting) in std::mem::take(&mut rare.held) {
                batch.extend(waiting.into_iter().map(Queued::Message));
            }
        }
        queue.tidy_rare();
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
    /// cost `max_bytes` (at least one, when any is queued), and the end of
    /// a partly written frame into `remainder` (to go out first); returns
    /// the state. The writer takes one socket write's worth at a time, so
    /// what it has not encoded yet stays here. When nothing is queued and
    /// `hand_over` is true (the writer is idle, nothing of tungstenite's
    /// unwritten), the socket becomes the publishers' (see the module's doc).
    pub fn drain_up_to(
        &self,
        batch: &mut VecDeque<Queued>,
        remainder: &mut Option<Bytes>,
        max_bytes: usize,
        hand_over: bool,
    ) -> OutboxState {
        let mut queue = self.lock();
        *remainder = queue.remainder.take();
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
        let nothing_taken = batch.is_empty() && remainder.is_none();
        queue.direct_open = hand_over
            && nothing_taken
            && queue.state == OutboxState::Open
            && queue.socket.is_some()
            && queue.version.is_some();
        queue.state
    }

    /// Drops the deliveries queued for `subscription` (the very `Arc` its
    /// subscriber was registered with), so an id reused by a new
    /// subscription never gets the old one's messages. The writer takes
    /// one socket write's worth at a time, so this is everything not yet
    /// encoded. Returns how many were dropped; O(queue length).
    pub fn retire(&self, subscription: &Arc<str>) -> usize {
        let mut queue = self.lock();
        let fields = &mut *queue;
        let mut held_dropped = 0;
        if let Some(rare) = fields.rare.as_deref_mut() {
            rare.gapped
                .retain(|gapped| !Arc::ptr_eq(gapped, subscription));
            rare.floors
                .retain(|(floor, _, _)| !Arc::ptr_eq(floor, subscription));
            if let Some(at) = rare
                .held
                .iter()
                .position(|(held, _)| Arc::ptr_eq(held, subscription))
            {
                let (_, waiting) = rare.held.swap_remove(at);
                for delivery in waiting {
                    fields.live -= 1;
                    fields.live_bytes -= delivery.cost;
                    held_dropped += 1;
                }
            }
        }
        queue.tidy_rare();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout;
    use stompede_protocol::{Command, Decoder, Headers, Item, Limits};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair: the broker's side (shared, as a connection shares
    /// it) and the reader's.
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let reader = TcpStream::connect(listener.local_addr().unwrap());
        let (reader, accepted) = tokio::join!(reader, listener.accept());
        (Arc::new(accepted.unwrap().0), reader.unwrap())
    }

    /// An outbox whose socket is the publishers' (its writer idle).
    fn handed_over(socket: &Arc<TcpStream>) -> Outbox {
        let outbox = Outbox::new(100_000, usize::MAX, Some(socket.clone()));
        outbox.set_version(Version::V1_2);
        let (mut batch, mut remainder) = (VecDeque::new(), None);
        outbox.drain_up_to(&mut batch, &mut remainder, usize::MAX, true);
        assert!(batch.is_empty() && remainder.is_none());
        outbox
    }

    fn delivery(seq: usize, body_bytes: usize) -> Delivery {
        let mut body = format!("{seq} ").into_bytes();
        body.resize(body_bytes.max(body.len()), b'.');
        let message = fanout::prepare(
            "/topic/a",
            &seq.to_string(),
            None,
            &Headers::new(),
            body.into(),
        );
        Delivery::new(
            Arc::new(message),
            Arc::from("sub-0"),
            false,
            std::time::Instant::now(),
        )
    }

    /// Reads WebSocket frames off `reader` until `count` MESSAGEs have come,
    /// and returns their sequence numbers (the first word of the body).
    async fn read_messages(reader: &mut TcpStream, count: usize) -> Vec<usize> {
        let mut bytes = Vec::new();
        let mut sequence = Vec::new();
        let mut decoder = Decoder::new(Limits::default());
        decoder.set_version(Version::V1_2);
        while sequence.len() < count {
            let mut chunk = [0u8; 65536];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), reader.read(&mut chunk))
                    .await
                    .expect("the frames arrive")
                    .unwrap();
            assert!(read > 0, "closed after {} messages", sequence.len());
            bytes.extend_from_slice(&chunk[..read]);
            // Whole WebSocket frames off the front.
            loop {
                if bytes.len() < 2 {
                    break;
                }
                assert_eq!(bytes[0], 0x81, "a whole text frame starts here");
                let (len, header) = match bytes[1] {
                    126 if bytes.len() >= 4 => {
                        (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4)
                    }
                    127 if bytes.len() >= 10 => (
                        u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => break,
                    len => (len as usize, 2),
                };
                if bytes.len() < header + len {
                    break;
                }
                let mut payload = bytes::BytesMut::from(&bytes[header..header + len]);
                bytes.drain(..header + len);
                match decoder.decode(&mut payload).unwrap() {
                    Some(Item::Frame(frame)) => {
                        assert_eq!(frame.command, Command::Message);
                        assert_eq!(frame.headers.get("subscription"), Some("sub-0"));
                        let body = std::str::from_utf8(&frame.body).unwrap();
                        sequence.push(body.split(' ').next().unwrap().parse().unwrap());
                    }
                    other => panic!("one MESSAGE per WebSocket frame, got {other:?}"),
                }
                assert!(payload.is_empty(), "nothing after the frame");
            }
        }
        sequence
    }

    #[tokio::test]
    async fn a_push_into_a_handed_over_outbox_is_written_by_the_publisher() {
        let (socket, mut reader) = socket_pair().await;
        let outbox = handed_over(&socket);
        assert_eq!(outbox.push(delivery(0, 10)), Ok(Pushed::WriteDirect));
        // A second one before the write: the same write takes it.
        assert_eq!(outbox.push(delivery(1, 10)), Ok(Pushed::Queued));
        let mut buffer = DirectBuffer::default();
        assert!(matches!(
            outbox.write_direct(&mut buffer, Instant::now()),
            DirectWrite::Written { deliveries: 2, .. }
        ));
        assert!(outbox.is_empty());
        assert_eq!(read_messages(&mut reader, 2).await, [0, 1]);
        // Still the publishers': the next push is written directly again.
        assert_eq!(outbox.push(delivery(2, 10)), Ok(Pushed::WriteDirect));
        assert!(matches!(
            outbox.write_direct(&mut buffer, Instant::now()),
            DirectWrite::Written { .. }
        ));
        assert_eq!(read_messages(&mut reader, 1).await, [2]);
        assert!(outbox.direct_written_at().is_some());
    }

    #[tokio::test]
    async fn the_connection_claiming_its_socket_stops_direct_writes() {
        let (socket, _reader) = socket_pair().await;
        let outbox = handed_over(&socket);
        assert_eq!(outbox.push(delivery(0, 10)), Ok(Pushed::WriteDirect));
        assert!(!outbox.claim_socket(), "no frame was left half written");
        // The scheduled write finds the socket taken back and leaves the message queued.
        assert_eq!(
            outbox.write_direct(&mut DirectBuffer::default(), Instant::now()),
            DirectWrite::Skipped
        );
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.push(delivery(1, 10)), Ok(Pushed::Queued));
        // A message that needs the session's `ack` id is never written directly.
        let outbox = handed_over(&socket);
        let mut acked = delivery(2, 10);
        acked.ack = true;
        assert_eq!(outbox.push(acked), Ok(Pushed::Queued));
        assert_eq!(outbox.push(delivery(3, 10)), Ok(Pushed::Queued));
        // Not before CONNECT either.
        let outbox = Outbox::new(10, usize::MAX, Some(socket.clone()));
        let (mut batch, mut remainder) = (VecDeque::new(), None);
        outbox.drain_up_to(&mut batch, &mut remainder, usize::MAX, true);
        assert_eq!(outbox.push(delivery(4, 10)), Ok(Pushed::Queued));
    }

    #[tokio::test]
    async fn a_push_the_task_must_write_after_a_scheduled_direct_write_wakes_the_task() {
        let (socket, _reader) = socket_pair().await;
        let outbox = handed_over(&socket);
        assert_eq!(outbox.push(delivery(0, 10)), Ok(Pushed::WriteDirect));
        // Needs the session's `ack` id: the socket goes back to the task.
        let mut acked = delivery(1, 10);
        acked.ack = true;
        assert_eq!(outbox.push(acked), Ok(Pushed::Queued));
        assert_eq!(
            outbox.write_direct(&mut DirectBuffer::default(), Instant::now()),
            DirectWrite::Skipped
        );
        // The task, asleep since it handed the socket over, is woken for both.
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready.notified())
            .await
            .expect("the connection's task is woken");
        let (mut batch, mut remainder) = (VecDeque::new(), None);
        outbox.drain_up_to(&mut batch, &mut remainder, usize::MAX, true);
        let sequence: Vec<String> = batch
            .iter()
            .map(|item| {
                item.delivery()
                    .unwrap()
                    .message
                    .headers()
                    .get("message-id")
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(sequence, ["0", "1"], "in the order they were pushed");
        assert!(outbox.is_empty());
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_end_of_the_frame_to_go_first() {
        let (socket, mut reader) = socket_pair().await;
        let outbox = handed_over(&socket);
        let mut buffer = DirectBuffer::default();
        // The reader reads nothing: write until the socket is full. A write
        // taken only in part hands the socket back (the next push is queued);
        // one that took nothing hands it back too.
        let mut pushed = 0;
        loop {
            let result = outbox.push(delivery(pushed, 16 * 1024));
            pushed += 1;
            if result == Ok(Pushed::Queued) {
                assert!(outbox.claim_socket(), "a frame's end waits");
                break;
            }
            assert_eq!(result, Ok(Pushed::WriteDirect));
            match outbox.write_direct(&mut buffer, Instant::now()) {
                DirectWrite::Written { deliveries, .. } => assert_eq!(deliveries, 1),
                DirectWrite::Handed => break,
                DirectWrite::Skipped => panic!("the socket was the publishers'"),
            }
            assert!(pushed < 10_000, "a loopback socket takes less than 160 MB");
        }
        // Handed to the connection: what comes now is queued, behind the rest.
        for _ in 0..3 {
            assert_eq!(outbox.push(delivery(pushed, 16 * 1024)), Ok(Pushed::Queued));
            pushed += 1;
        }
        let (mut batch, mut remainder) = (VecDeque::new(), None);
        outbox.drain_up_to(&mut batch, &mut remainder, usize::MAX, false);
        // The connection's writer: the frame's end first, then the queue, in order.
        let mut out = BytesMut::new();
        if let Some(remainder) = remainder {
            out.extend_from_slice(&remainder);
        }
        for item in batch {
            let Queued::Message(delivery) = item else {
                panic!("only messages were queued")
            };
            crate::session::writer::encode_delivery(&mut out, Version::V1_2, &delivery, None);
        }
        let writer = tokio::spawn(async move {
            let mut at = 0;
            while at < out.len() {
                socket.writable().await.unwrap();
                match socket.try_write(&out[at..]) {
                    Ok(written) => at += written,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) => panic!("{error}"),
                }
            }
        });
        let sequence = read_messages(&mut reader, pushed).await;
        assert_eq!(
            sequence,
            (0..pushed).collect::<Vec<_>>(),
            "every frame whole, in order"
        );
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_outbox_lets_go_of_the_socket() {
        let (socket, _reader) = socket_pair().await;
        let outbox = handed_over(&socket);
        assert_eq!(Arc::strong_count(&socket), 2);
        outbox.set_state(OutboxState::Closed);
        assert_eq!(
            Arc::strong_count(&socket),
            1,
            "the connection's own handle only"
        );
        assert_eq!(outbox.push(delivery(0, 10)), Err(PushError::Closed));
    }
}

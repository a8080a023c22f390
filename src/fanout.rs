//! Publishing: a message is prepared once per destination and handed to each
//! subscriber's outbox. Nothing here waits: a full outbox is a slow consumer.
//!
//! This is the one publishing path: the HTTP API and client SEND both call
//! [`Broker::publish`](crate::Broker::publish). A clustered engine (Redis
//! pub/sub) would sit behind the same call.

use crate::config::SlowConsumerPolicy;
use crate::history::Position;
use crate::metrics::Metrics;
use crate::outbox::{Delivery, DirectBuffer, DirectWrite, Outbox, OutboxState, PushError, Pushed};
use crate::registry::Registry;
use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};
use std::sync::Arc;
use std::time::Instant;
use stompede_protocol::{Headers, PreparedMessage};
use tokio::runtime::Handle;

/// A fan-out's direct writes (see `outbox`) are done by tasks of this many
/// readers each, so that both of the sessions' workers share a large
/// destination's sends, the first ones starting while the rest are still
/// being queued. The tasks are bounded by the connections: each outbox is
/// on at most one task's list at a time.
pub const DIRECT_WRITE_CHUNK: usize = 64;

/// Headers the broker sets itself; a publisher's values for them are dropped.
pub const RESERVED_HEADERS: &[&str] = &[
    "subscription",
    "message-id",
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "ack",
    OFFSET_HEADER,
    EPOCH_HEADER,
    GAP_HEADER,
];

/// A message's place in its destination's history (see `history`).
pub const OFFSET_HEADER: &str = "x-offset";
pub const EPOCH_HEADER: &str = "x-epoch";
/// On the first message after some were lost for a subscriber.
pub const GAP_HEADER: &str = "x-gap";

pub fn is_reserved(name: &str) -> bool {
    RESERVED_HEADERS.contains(&name)
}

/// Builds the shared MESSAGE: broker headers first (with the message's
/// offset and epoch when the engine keeps a history), then the publisher's.
pub fn prepare(
    destination: &str,
    message_id: &str,
    position: Option<&Position>,
    publisher_headers: &Headers,
    body: Bytes,
) -> PreparedMessage {
    prepare_marked(
        destination,
        message_id,
        position,
        false,
        publisher_headers,
        body,
    )
}

/// [`prepare`], and with `after_gap` the `x-gap:true` header: messages
/// before this one were lost for this node's subscribers and history could
/// not give them back.
pub fn prepare_marked(
    destination: &str,
    message_id: &str,
    position: Option<&Position>,
    after_gap: bool,
    publisher_headers: &Headers,
    body: Bytes,
) -> PreparedMessage {
    let mut headers = Headers::with_capacity(publisher_headers.len() + 5);
    headers.push("destination", destination);
    headers.push("message-id", message_id);
    if let Some(position) = position {
        headers.push(OFFSET_HEADER, position.offset.to_string());
        headers.push(EPOCH_HEADER, &*position.epoch);
    }
    if after_gap {
        headers.push(GAP_HEADER, "true");
    }
    for (name, value) in publisher_headers.iter() {
        if !is_reserved(name) {
            headers.push(name, value);
        }
    }
    PreparedMessage::new(headers, body)
}

/// Queues `message` for every subscriber of `destination`, and writes it
/// straight into the sockets of those whose connection is idle (on
/// `direct_writes`, see [`DirectWriters`]); returns how many subscribers the
/// destination had.
pub fn deliver(
    registry: &Registry,
    destination: &str,
    message: &Arc<PreparedMessage>,
    policy: SlowConsumerPolicy,
    metrics: &Metrics,
    direct_writers: &DirectWriters,
) -> usize {
    let published_at = Instant::now();
    let mut queued = 0i64;
    let mut direct = direct_writers.batch(metrics);
    let subscribers = registry.for_each_subscriber(destination, |subscriber| {
        match subscriber.outbox.push(Delivery::new(
            message.clone(),
            subscriber.subscription.clone(),
            subscriber.ack,
            published_at,
        )) {
            Ok(Pushed::Queued) => queued += 1,
            Ok(Pushed::WriteDirect) => direct.add(&subscriber.outbox),
            Err(PushError::Closed | PushError::Duplicate) => {}
            Err(PushError::Full) => match policy {
                SlowConsumerPolicy::Disconnect => {
                    subscriber.outbox.set_state(OutboxState::SlowConsumer);
                    metrics.slow_consumer_disconnects.inc();
                }
                SlowConsumerPolicy::Drop => {
                    subscriber.outbox.note_gap(&subscriber.subscription);
                    metrics.slow_consumer_drops.inc();
                }
            },
        }
    });
    metrics.outbound_queued.add(queued);
    direct.finish();
    subscribers
}

/// Where a fan-out's direct writes run: tasks on the runtime the broker was
/// made on (the sessions'), or, outside any runtime, the publisher itself.
#[derive(Debug)]
pub struct DirectWriters {
    runtime: Option<Handle>,
}

impl DirectWriters {
    /// On the current runtime, if any.
    pub fn here() -> DirectWriters {
        DirectWriters {
            runtime: Handle::try_current().ok(),
        }
    }

    fn batch<'a>(&'a self, metrics: &'a Metrics) -> DirectBatch<'a> {
        DirectBatch {
            writers: self,
            metrics,
            chunk: Vec::new(),
        }
    }
}

/// One fan-out's direct writes, handed to a task every `DIRECT_WRITE_CHUNK`.
struct DirectBatch<'a> {
    writers: &'a DirectWriters,
    metrics: &'a Metrics,
    chunk: Vec<Arc<Outbox>>,
}

impl DirectBatch<'_> {
    fn add(&mut self, outbox: &Arc<Outbox>) {
        if self.chunk.is_empty() {
            self.chunk.reserve_exact(DIRECT_WRITE_CHUNK);
        }
        self.chunk.push(outbox.clone());
        if self.chunk.len() == DIRECT_WRITE_CHUNK {
            self.hand_off();
        }
    }

    fn finish(mut self) {
        if !self.chunk.is_empty() {
            self.hand_off();
        }
    }

    fn hand_off(&mut self) {
        let chunk = std::mem::take(&mut self.chunk);
        // Each is one queued delivery until it is written.
        self.metrics.outbound_queued.add(chunk.len() as i64);
        let meters = DirectMeters::of(self.metrics);
        match &self.writers.runtime {
            Some(runtime) => {
                runtime.spawn(async move { write_direct(&chunk, &meters) });
            }
            None => write_direct(&chunk, &meters),
        }
    }
}

/// The metrics a direct write moves, as the connection's writer would.
struct DirectMeters {
    delivered: IntCounter,
    delivered_direct: IntCounter,
    queued: IntGauge,
    batch_frames: Histogram,
    latency: Histogram,
}

impl DirectMeters {
    fn of(metrics: &Metrics) -> DirectMeters {
        DirectMeters {
            delivered: metrics.messages_delivered.clone(),
            delivered_direct: metrics.messages_delivered_direct.clone(),
            queued: metrics.outbound_queued.clone(),
            batch_frames: metrics.outbound_batch_frames.clone(),
            latency: metrics.delivery_latency.clone(),
        }
    }
}

/// Writes into each outbox's socket what is queued there, if the socket is
/// still the publishers'; the rest is its connection's to write.
fn write_direct(outboxes: &[Arc<Outbox>], meters: &DirectMeters) {
    let mut buffer = DirectBuffer::default();
    // Local copies, merged once: the shared ones are atomics every core touches.
    let batch_frames = meters.batch_frames.local();
    let latency = meters.latency.local();
    let mut written = 0;
    // Heart-beats count from it: a chunk's writes take well under a millisecond.
    let started = tokio::time::Instant::now();
    for (at, outbox) in outboxes.iter().enumerate() {
        // One ahead: its cache lines arrive while this one's send() runs.
        if let Some(next) = outboxes.get(at + 1) {
            next.prefetch();
        }
        if let DirectWrite::Written { deliveries, oldest } =
            outbox.write_direct(&mut buffer, started)
        {
            written += deliveries;
            batch_frames.observe(deliveries as f64);
            latency.observe(oldest.elapsed().as_secs_f64());
        }
    }
    batch_frames.flush();
    latency.flush();
    meters.delivered.inc_by(written as u64);
    meters.delivered_direct.inc_by(written as u64);
    // What was skipped or handed over stays queued, for the connection's writer to count.
    meters.queued.sub(written as i64);
}

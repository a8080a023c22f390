//! Publishing: a message is prepared once per destination and handed to each
//! subscriber's outbox. Nothing here waits: a full outbox is a slow consumer.
//!
//! This is the one publishing path: the HTTP API and client SEND both call
//! [`Broker::publish`](crate::Broker::publish). A clustered engine (Redis
//! pub/sub) would sit behind the same call.

use crate::config::SlowConsumerPolicy;
use crate::history::Position;
use crate::metrics::Metrics;
use crate::outbox::{Delivery, OutboxState, PushError};
use crate::registry::Registry;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use stompede_protocol::{Headers, PreparedMessage};

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

/// Queues `message` for every subscriber of `destination`; returns how many
/// subscribers the destination had.
pub fn deliver(
    registry: &Registry,
    destination: &str,
    message: &Arc<PreparedMessage>,
    policy: SlowConsumerPolicy,
    metrics: &Metrics,
) -> usize {
    let published_at = Instant::now();
    let mut delivered = 0i64;
    let subscribers = registry.for_each_subscriber(destination, |subscriber| {
        match subscriber.outbox.push(Delivery::new(
            message.clone(),
            subscriber.subscription.clone(),
            subscriber.ack,
            published_at,
        )) {
            Ok(()) => delivered += 1,
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
    metrics.outbound_queued.add(delivered);
    subscribers
}

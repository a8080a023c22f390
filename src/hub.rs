//! This node's subscribers and the local fan-out: what an engine hands each
//! message to. The memory engine calls it on publish; the Redis engine calls
//! it for each message its pub/sub link receives.

use crate::config::SlowConsumerPolicy;
use crate::fanout::{self, DirectWriters};
use crate::history::Position;
use crate::metrics::Metrics;
use crate::registry::{Registry, Subscriber, SubscriberKey};
use bytes::Bytes;
use std::sync::Arc;
use stompede_protocol::{Headers, PreparedMessage};

pub struct Hub {
    registry: Registry,
    metrics: Metrics,
    slow_consumer: SlowConsumerPolicy,
    direct_writers: DirectWriters,
}

impl Hub {
    /// Made on the sessions' runtime: the fan-out's direct writes run there.
    pub fn new(slow_consumer: SlowConsumerPolicy) -> Hub {
        Hub {
            registry: Registry::new(),
            metrics: Metrics::new(),
            slow_consumer,
            direct_writers: DirectWriters::here(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Queues one message (at `position` in the destination's history, when
    /// the engine keeps one) for every local subscriber of `destination`;
    /// returns how many there were. The message is encoded once.
    pub fn deliver(
        &self,
        destination: &str,
        message_id: &str,
        position: Option<&Position>,
        headers: &Headers,
        body: Bytes,
    ) -> usize {
        let message = Arc::new(fanout::prepare(
            destination,
            message_id,
            position,
            headers,
            body,
        ));
        self.deliver_prepared(destination, &message)
    }

    /// Queues a message prepared by the caller for every local subscriber
    /// of `destination`; returns how many there were.
    pub fn deliver_prepared(&self, destination: &str, message: &Arc<PreparedMessage>) -> usize {
        fanout::deliver(
            &self.registry,
            destination,
            message,
            self.slow_consumer,
            &self.metrics,
            &self.direct_writers,
        )
    }

    pub fn subscribe(&self, destination: &str, key: SubscriberKey, subscriber: Subscriber) {
        self.registry.subscribe(destination, key, subscriber);
    }

    /// Removes one subscription; `true` when it was the destination's last.
    pub fn unsubscribe(&self, destination: &str, key: SubscriberKey) -> bool {
        self.registry.unsubscribe(destination, key)
    }

    pub fn subscriber_count(&self, destination: &str) -> usize {
        self.registry.subscriber_count(destination)
    }

    pub fn destination_count(&self) -> usize {
        self.registry.destination_count()
    }

    /// Every destination with a local subscriber (O(destinations)).
    pub fn destinations(&self) -> Vec<Arc<str>> {
        self.registry.destinations()
    }
}

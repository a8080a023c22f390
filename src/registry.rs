//! Destination -> subscribers, keyed by the exact destination string.
//!
//! A `DashMap` shards the destinations, so sessions touching different
//! destinations rarely contend and there is no global lock. Each destination
//! holds its subscribers in a `HashMap`, so SUBSCRIBE and UNSUBSCRIBE are
//! O(1) however many readers an article has; nothing copies a subscriber set.
//! No guard from this module is ever held across an `.await`.

use crate::outbox::Outbox;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::Arc;
use stompede_protocol::Version;

/// Identifies one subscription: the connection and its per-session number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriberKey {
    pub connection: u64,
    pub sequence: u32,
}

/// One subscription, as the fan-out sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub outbox: Arc<Outbox>,
    /// The `id` the client gave in SUBSCRIBE.
    pub subscription: Arc<str>,
    /// Whether MESSAGEs carry an `ack` header (ack mode client or client-individual).
    pub ack: bool,
    pub version: Version,
}

#[derive(Debug, Default)]
pub struct Registry {
    destinations: DashMap<Arc<str>, HashMap<SubscriberKey, Subscriber>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds one subscription.
    pub fn subscribe(&self, destination: &str, key: SubscriberKey, subscriber: Subscriber) {
        if let Some(mut subscribers) = self.destinations.get_mut(destination) {
            subscribers.insert(key, subscriber);
            return;
        }
        self.destinations
            .entry(Arc::from(destination))
            .or_default()
            .insert(key, subscriber);
    }

    /// Removes one subscription; a destination left without subscribers is
    /// removed, and then this returns `true`.
    pub fn unsubscribe(&self, destination: &str, key: SubscriberKey) -> bool {
        let now_empty = match self.destinations.get_mut(destination) {
            Some(mut subscribers) => {
                subscribers.remove(&key);
                // Give memory back after a crowd leaves (amortised O(1)).
                let (len, capacity) = (subscribers.len(), subscribers.capacity());
                if capacity > 64 && len < capacity / 4 {
                    subscribers.shrink_to(len * 2);
                }
                subscribers.is_empty()
            }
            None => false,
        };
        if now_empty {
            // Checked again under the write lock: someone may have subscribed since.
            return self
                .destinations
                .remove_if(destination, |_, subscribers| subscribers.is_empty())
                .is_some();
        }
        false
    }

    /// Calls `deliver` for each subscriber of `destination` and returns how many there were.
    ///
    /// The destination's shard is read-locked meanwhile, so `deliver` must not
    /// wait for anything (pushing to an outbox does not).
    pub fn for_each_subscriber(
        &self,
        destination: &str,
        mut deliver: impl FnMut(&Subscriber),
    ) -> usize {
        match self.destinations.get(destination) {
            Some(subscribers) => {
                subscribers.values().for_each(&mut deliver);
                subscribers.len()
            }
            None => 0,
        }
    }

    pub fn subscriber_count(&self, destination: &str) -> usize {
        self.destinations
            .get(destination)
            .map_or(0, |subscribers| subscribers.len())
    }

    /// A snapshot of every destination with a subscriber (O(destinations):
    /// for a re-subscription after the engine reconnects, not per message).
    pub fn destinations(&self) -> Vec<Arc<str>> {
        self.destinations
            .iter()
            .map(|entry| entry.key().clone())
            .collect()
    }

    pub fn destination_count(&self) -> usize {
        self.destinations.len()
    }
}

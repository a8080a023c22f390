//! Counters shared by the whole broker.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct Stats {
    pub messages_published: AtomicU64,
    pub deliveries_queued: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub slow_consumer_drops: AtomicU64,
}

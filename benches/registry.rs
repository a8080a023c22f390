//! The registry's O(1) claim: SUBSCRIBE+UNSUBSCRIBE and the publish lookup
//! cost the same with 10 or 1,000,000 destinations, and with 10 or 10,000
//! subscribers on the destination.
//!
//! `cargo bench --bench registry`; the README has the medians and ratios.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use stompede::config::SlowConsumerPolicy;
use stompede::fanout;
use stompede::metrics::Metrics;
use stompede::outbox::Outbox;
use stompede::registry::{Registry, Subscriber, SubscriberKey};
use stompede_protocol::{Headers, Version};

fn subscriber(outbox: &Arc<Outbox>) -> Subscriber {
    Subscriber {
        outbox: outbox.clone(),
        subscription: Arc::from("sub-0"),
        ack: false,
        version: Version::V1_2,
    }
}

fn key(connection: u64) -> SubscriberKey {
    SubscriberKey {
        connection,
        sequence: 0,
    }
}

/// A registry with `destinations` destinations of one subscriber each.
fn with_destinations(destinations: usize, outbox: &Arc<Outbox>) -> Registry {
    let registry = Registry::new();
    for i in 0..destinations {
        registry.subscribe(
            &format!("/topic/comments.{i}"),
            key(i as u64),
            subscriber(outbox),
        );
    }
    registry
}

/// A registry with one destination of `subscribers` subscribers.
fn with_subscribers(subscribers: usize, outbox: &Arc<Outbox>) -> Registry {
    let registry = Registry::new();
    for i in 0..subscribers {
        registry.subscribe("/topic/hot", key(i as u64), subscriber(outbox));
    }
    registry
}

fn registry_benches(c: &mut Criterion) {
    let outbox = Arc::new(Outbox::new(usize::MAX, usize::MAX, None));

    let mut group = c.benchmark_group("subscribe_unsubscribe/destinations");
    for destinations in [10usize, 10_000, 1_000_000] {
        let registry = with_destinations(destinations, &outbox);
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(destinations), |b| {
            b.iter(|| {
                // A new reader joins and leaves an existing article's page.
                i = (i + 7919) % destinations;
                let destination = format!("/topic/comments.{i}");
                registry.subscribe(&destination, key(u64::MAX), subscriber(&outbox));
                registry.unsubscribe(&destination, key(u64::MAX));
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("subscribe_unsubscribe/subscribers");
    for subscribers in [10usize, 10_000] {
        let registry = with_subscribers(subscribers, &outbox);
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter(|| {
                let destination = black_box("/topic/hot");
                registry.subscribe(destination, key(u64::MAX), subscriber(&outbox));
                registry.unsubscribe(destination, key(u64::MAX));
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("publish_lookup/destinations");
    for destinations in [10usize, 10_000, 1_000_000] {
        let registry = with_destinations(destinations, &outbox);
        let names: Vec<String> = (0..1024)
            .map(|i| format!("/topic/comments.{}", (i * 7919) % destinations))
            .collect();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(destinations), |b| {
            b.iter(|| {
                i = (i + 1) % names.len();
                registry.for_each_subscriber(&names[i], |subscriber| {
                    black_box(subscriber);
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("publish_lookup/subscribers");
    for subscribers in [10usize, 10_000] {
        let registry = with_subscribers(subscribers, &outbox);
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter(|| registry.subscriber_count(black_box("/topic/hot")))
        });
    }
    group.finish();

    // Fan-out is O(subscribers) by nature: what matters is the cost per
    // subscriber (encode once, queue a cheap clone to each outbox).
    let mut group = c.benchmark_group("fanout_per_message/subscribers");
    let metrics = Metrics::new();
    for subscribers in [10usize, 10_000] {
        let registry = Registry::new();
        let outboxes: Vec<Arc<Outbox>> = (0..subscribers)
            .map(|_| Arc::new(Outbox::new(usize::MAX, usize::MAX, None)))
            .collect();
        for (i, outbox) in outboxes.iter().enumerate() {
            registry.subscribe("/topic/hot", key(i as u64), subscriber(outbox));
        }
        let body = bytes::Bytes::from(vec![b'c'; 300]);
        // No sockets here: every delivery is queued.
        let direct_writers = fanout::DirectWriters::here();
        group.throughput(criterion::Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter_batched(
                || (),
                |()| {
                    let message = Arc::new(fanout::prepare(
                        "/topic/hot",
                        "1-1",
                        None,
                        &Headers::new(),
                        body.clone(),
                    ));
                    fanout::deliver(
                        &registry,
                        "/topic/hot",
                        &message,
                        SlowConsumerPolicy::Drop,
                        &metrics,
                        &direct_writers,
                    );
                    // Empty the queues so they do not grow without bound.
                    let mut drained = std::collections::VecDeque::new();
                    for outbox in &outboxes {
                        outbox.drain_into(&mut drained);
                        drained.clear();
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = registry_benches
}
criterion_main!(benches);

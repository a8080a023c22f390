//! History and resume in the redis engine: offsets assigned in Redis, a
//! resume on another node, resumes racing publishes on several nodes, and
//! what a Redis that lost everything does to them. In-process nodes on a
//! real Redis, real WebSocket clients.

mod common;
mod redis;

use common::history::{epoch, messages, offset, offsets, subscribe_replaying};
use common::{start, Client, TestBroker, PATIENCE};
use redis::Redis;
use std::time::Duration;
use stompede::config::EngineKind;
use stompede::Config;
use stompede_protocol::{Command, Frame};
use tokio::time::{sleep, Instant};

const DESTINATION: &str = "/topic/comments.7";
/// A frame crosses a Redis and two nodes sharing two cores with other tests.
const FRAME_PATIENCE: Duration = Duration::from_secs(20);

fn node(redis: &Redis, id: &str) -> Config {
    Config {
        engine: EngineKind::Redis,
        redis_url: redis.url(),
        node_id: Some(id.into()),
        reader_count_interval: Duration::from_millis(100),
        redis_reconnect_max_delay: Duration::from_millis(300),
        history_size: 50,
        ..common::config()
    }
}

async fn nodes(redis: &Redis, ids: &[&str]) -> Vec<TestBroker> {
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(start(node(redis, id)).await);
    }
    for node in &nodes {
        let deadline = Instant::now() + PATIENCE;
        while !node.broker.engine_status().up {
            assert!(Instant::now() < deadline, "the engine comes up");
            sleep(Duration::from_millis(10)).await;
        }
    }
    nodes
}

async fn subscribe(client: &mut Client, extra: &str) -> (Frame, Vec<Frame>) {
    subscribe_replaying(client, DESTINATION, "0", extra).await
}

async fn reader(node: &TestBroker, extra: &str) -> (Client, Frame, Vec<Frame>) {
    let mut client = node.connected().await.with_patience(FRAME_PATIENCE);
    let (receipt, replayed) = subscribe(&mut client, extra).await;
    (client, receipt, replayed)
}

async fn publish(node: &TestBroker, body: &str) {
    let request = serde_json::json!({ "destination": DESTINATION, "body": body });
    let (status, answer) = node
        .http("POST", "/api/v1/publish", Some(&request.to_string()))
        .await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_assigned_in_redis_and_a_reader_resumes_on_another_node() {
    let redis = Redis::start();
    let nodes = nodes(&redis, &["a", "b"]).await;
    let (mut on_b, _, _) = reader(&nodes[1], "").await;
    for n in 1..=3 {
        publish(&nodes[n % 2], &format!("comment {n}")).await;
    }
    let seen = messages(&mut on_b, 3).await;
    assert_eq!(
        offsets(&seen),
        [1, 2, 3],
        "one sequence, whichever node published"
    );
    let epoch_seen = epoch(&seen[2]);
    assert!(seen.iter().all(|m| epoch(m) == epoch_seen));
    drop(on_b);

    for n in 4..=8 {
        publish(&nodes[0], &format!("comment {n}")).await;
    }
    let (mut on_a, receipt, replayed) = reader(
        &nodes[0],
        &format!("x-since-offset:3\nx-since-epoch:{epoch_seen}\n"),
    )
    .await;
    assert_eq!(
        receipt.headers.get("x-recovered"),
        Some("true"),
        "{receipt:?}"
    );
    assert_eq!(receipt.headers.get("x-offset"), Some("8"));
    assert_eq!(epoch(&receipt), epoch_seen);
    assert_eq!(offsets(&replayed), [4, 5, 6, 7, 8]);
    assert_eq!(&replayed[0].body[..], b"comment 4");

    publish(&nodes[1], "comment 9").await;
    let live = messages(&mut on_a, 1).await;
    assert_eq!(offset(&live[0]), 9);

    // x-history: the last N, from Redis.
    let (_, receipt, last) = reader(&nodes[1], "x-history:2\n").await;
    assert_eq!(offsets(&last), [8, 9]);
    assert_eq!(receipt.headers.get("x-offset"), Some("9"));

    // The HTTP API reads the same history on either node.
    let path =
        format!("/api/v1/history?destination=%2Ftopic%2Fcomments.7&since=6&epoch={epoch_seen}");
    let (status, page) = nodes[1].http("GET", &path, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["recovered"], true);
    let read: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(read, [7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_the_history_or_of_another_epoch_is_not_recovered() {
    let redis = Redis::start();
    let nodes = nodes(&redis, &["a"]).await;
    for n in 1..=60 {
        publish(&nodes[0], &format!("comment {n}")).await;
    }
    let (_, probe, _) = reader(&nodes[0], "x-history:1\n").await;
    let current = epoch(&probe);
    // history-size 50 holds 11..=60.
    for (after, recovered, replayed) in
        [(10, true, 50), (9, false, 0), (60, true, 0), (61, false, 0)]
    {
        let (_, receipt, got) = reader(
            &nodes[0],
            &format!("x-since-offset:{after}\nx-since-epoch:{current}\n"),
        )
        .await;
        assert_eq!(
            receipt.headers.get("x-recovered"),
            Some(if recovered { "true" } else { "false" }),
            "after {after}"
        );
        assert_eq!(got.len(), replayed, "after {after}");
        if replayed > 0 {
            assert_eq!(offsets(&got), (after + 1..=60).collect::<Vec<_>>());
        }
    }
    let (_, receipt, got) = reader(&nodes[0], "x-since-offset:5\nx-since-epoch:other\n").await;
    assert_eq!(receipt.headers.get("x-recovered"), Some("false"));
    assert!(got.is_empty());
}

/// Readers on two nodes drop out and resume on the other node while both
/// nodes publish as fast as Redis takes it: each must end with every
/// message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_on_other_nodes_racing_publishes_lose_and_repeat_nothing() {
    const TOTAL: u64 = 200;
    const READERS: u64 = 4;
    let redis = Redis::start();
    let nodes = std::sync::Arc::new(nodes(&redis, &["a", "b"]).await);
    let mut tasks = Vec::new();
    for r in 0..READERS {
        let nodes = nodes.clone();
        let (mut client, _, _) = reader(&nodes[(r % 2) as usize], "").await;
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            let drop_at = (r + 1) * TOTAL / (READERS + 1);
            let mut hop = r as usize;
            while seen.last().copied().unwrap_or(0) < TOTAL {
                let frame = client.frame().await;
                assert_eq!(frame.command, Command::Message, "{frame:?}");
                let at = offset(&frame);
                seen.push(at);
                if at == drop_at {
                    drop(client);
                    hop += 1;
                    client = nodes[hop % 2]
                        .connected()
                        .await
                        .with_patience(FRAME_PATIENCE);
                    let (receipt, replayed) = subscribe(
                        &mut client,
                        &format!("x-since-offset:{at}\nx-since-epoch:{}\n", epoch(&frame)),
                    )
                    .await;
                    assert_eq!(
                        receipt.headers.get("x-recovered"),
                        Some("true"),
                        "{receipt:?}"
                    );
                    seen.extend(offsets(&replayed));
                }
            }
            seen
        }));
    }
    for n in 1..=TOTAL {
        publish(&nodes[(n % 2) as usize], &format!("comment {n}")).await;
    }
    for task in tasks {
        let seen = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("every reader gets to the last message")
            .unwrap();
        assert_eq!(
            seen,
            (1..=TOTAL).collect::<Vec<_>>(),
            "in order, none missed, none twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_without_persistence_starts_a_new_epoch_and_resumes_are_not_recovered() {
    let mut redis = Redis::start();
    let nodes = nodes(&redis, &["a"]).await;
    let (mut client, _, _) = reader(&nodes[0], "").await;
    for n in 1..=3 {
        publish(&nodes[0], &format!("comment {n}")).await;
    }
    let before = messages(&mut client, 3).await;
    let old_epoch = epoch(&before[0]);
    drop(client);

    redis.kill();
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let request = serde_json::json!({ "destination": DESTINATION, "body": "after" });
        let (status, _) = nodes[0]
            .http("POST", "/api/v1/publish", Some(&request.to_string()))
            .await;
        if status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "publishing works again");
        sleep(Duration::from_millis(100)).await;
    }
    let (mut client, receipt, replayed) = reader(
        &nodes[0],
        &format!("x-since-offset:3\nx-since-epoch:{old_epoch}\n"),
    )
    .await;
    assert_eq!(
        receipt.headers.get("x-recovered"),
        Some("false"),
        "{receipt:?}"
    );
    assert!(
        replayed.is_empty(),
        "no message of another history: {replayed:?}"
    );
    assert_ne!(epoch(&receipt), old_epoch);
    assert_eq!(
        receipt.headers.get("x-offset"),
        Some("1"),
        "the new history has one message"
    );
    publish(&nodes[0], "live").await;
    let live = messages(&mut client, 1).await;
    assert_eq!(offset(&live[0]), 2);
    assert_ne!(epoch(&live[0]), old_epoch);
}

fn metric(node: &TestBroker, name: &str) -> f64 {
    node.broker
        .metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Cuts every pub/sub connection to Redis (the node's reconnects after
/// about 100 ms, its first backoff step) and publishes `bodies` through
/// the commands connection meanwhile, so they reach Redis while the node
/// is not listening.
async fn publish_while_the_link_is_cut(redis: &Redis, node: &TestBroker, bodies: &[&str]) {
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "1", "one pub/sub connection: the node's");
    for body in bodies {
        publish(node, body).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_pubsub_link_dropped_gives_its_readers_what_they_missed_from_history() {
    let redis = Redis::start();
    let nodes = nodes(&redis, &["a"]).await;
    let (mut client, _, _) = reader(&nodes[0], "").await;
    for n in 1..=3 {
        publish(&nodes[0], &format!("comment {n}")).await;
    }
    assert_eq!(offsets(&messages(&mut client, 3).await), [1, 2, 3]);

    publish_while_the_link_is_cut(&redis, &nodes[0], &["4", "5", "6", "7", "8"]).await;
    // The reader stays connected and gets them, in order, once.
    let missed = messages(&mut client, 5).await;
    assert_eq!(offsets(&missed), [4, 5, 6, 7, 8]);
    assert!(missed.iter().all(|m| m.headers.get("x-gap").is_none()));
    assert_eq!(&missed[0].body[..], b"4");
    assert!(metric(&nodes[0], "stompede_engine_gap_filled_messages_total") >= 1.0);
    publish(&nodes[0], "9").await;
    let live = messages(&mut client, 1).await;
    assert_eq!(offset(&live[0]), 9, "and nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_history_cannot_fill_is_marked_x_gap_and_the_session_stays() {
    let redis = Redis::start();
    let node = start(Config {
        history_size: 2,
        ..node(&redis, "small")
    })
    .await;
    let deadline = Instant::now() + PATIENCE;
    while !node.broker.engine_status().up {
        assert!(Instant::now() < deadline, "the engine comes up");
        sleep(Duration::from_millis(10)).await;
    }
    let (mut client, _, _) = reader(&node, "").await;
    publish(&node, "1").await;
    assert_eq!(offsets(&messages(&mut client, 1).await), [1]);

    publish_while_the_link_is_cut(&redis, &node, &["2", "3", "4", "5", "6"]).await;
    // History kept only 5 and 6: 2..=4 are lost, and 5 says so.
    let after = messages(&mut client, 2).await;
    assert_eq!(offsets(&after), [5, 6]);
    assert_eq!(
        after[0].headers.get("x-gap"),
        Some("true"),
        "{:?}",
        after[0]
    );
    assert_eq!(after[1].headers.get("x-gap"), None);
    assert!(metric(&node, "stompede_engine_gaps_unfilled_total") >= 1.0);
    publish(&node, "7").await;
    let live = messages(&mut client, 1).await;
    assert_eq!(offset(&live[0]), 7);
    assert_eq!(live[0].headers.get("x-gap"), None);
}

/// History reads this node has made (Redis round trips of the history script).
fn history_reads(node: &TestBroker) -> f64 {
    let name = "stompede_engine_roundtrip_seconds_count{operation=\"history\"}";
    // The series appears with the first read.
    let text = node.broker.metrics().render();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_resuming_on_a_node_that_listens_are_served_by_it_without_reading_redis() {
    let redis = Redis::start();
    let nodes = nodes(&redis, &["a", "b"]).await;
    // A reader that stays keeps node a listening.
    let (mut stays, _, _) = reader(&nodes[0], "").await;
    let mut crowd = Vec::new();
    for _ in 0..20 {
        crowd.push(reader(&nodes[0], "").await.0);
    }
    for n in 1..=5 {
        publish(&nodes[1], &format!("comment {n}")).await;
    }
    let seen = messages(&mut stays, 5).await;
    let epoch_seen = epoch(&seen[0]);
    for client in &mut crowd {
        assert_eq!(offsets(&messages(client, 3).await), [1, 2, 3]);
    }
    drop(crowd);
    nodes[0].wait_for_subscribers(DESTINATION, 1).await;

    let reads_before = history_reads(&nodes[0]);
    let mut back = Vec::new();
    for _ in 0..20 {
        let (client, receipt, replayed) = reader(
            &nodes[0],
            &format!("x-since-offset:3\nx-since-epoch:{epoch_seen}\n"),
        )
        .await;
        assert_eq!(
            receipt.headers.get("x-recovered"),
            Some("true"),
            "{receipt:?}"
        );
        assert_eq!(offsets(&replayed), [4, 5]);
        back.push(client);
    }
    assert_eq!(
        history_reads(&nodes[0]),
        reads_before,
        "every resume was served from what node a received"
    );
    publish(&nodes[1], "comment 6").await;
    for client in &mut back {
        assert_eq!(offsets(&messages(client, 1).await), [6]);
    }
}

//! Several nodes on one real Redis (the `redis` engine), each an in-process
//! broker on 127.0.0.1:0 with real WebSocket clients; one test kills a real
//! `stompede` process with SIGKILL.

mod common;
mod redis;

use common::{http, start, Client, TestBroker, PATIENCE};
use redis::{Redis, Sentinel};
use std::time::Duration;
use stompede::config::{ClientSend, EngineKind};
use stompede::Config;
use stompede_protocol::Command;
use tokio::time::{sleep, Instant};

/// How often nodes report their reader counts here (the default is 1 s).
const COUNT_INTERVAL: Duration = Duration::from_millis(100);

fn node(redis_url: &str, id: &str) -> Config {
    Config {
        engine: EngineKind::Redis,
        redis_url: redis_url.to_owned(),
        node_id: Some(id.into()),
        reader_count_interval: COUNT_INTERVAL,
        interest_linger: Duration::from_millis(300),
        redis_reconnect_max_delay: Duration::from_millis(300),
        client_send: ClientSend::Allow,
        ..common::config()
    }
}

async fn nodes(redis: &Redis, ids: &[&str]) -> Vec<TestBroker> {
    nodes_on(&redis.url(), ids).await
}

async fn nodes_on(redis_url: &str, ids: &[&str]) -> Vec<TestBroker> {
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(start(node(redis_url, id)).await);
    }
    for node in &nodes {
        wait_until(|| node.broker.engine_status().up, "the engine comes up").await;
    }
    nodes
}

async fn wait_until(condition: impl FnMut() -> bool, what: &str) {
    wait_until_within(PATIENCE, condition, what).await
}

async fn wait_until_within(patience: Duration, mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + patience;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// How long a cluster test waits for one frame: it crosses a Redis and
/// two nodes, all sharing two cores with the other tests of this file. A
/// lost message still fails the test, only later.
const FRAME_PATIENCE: Duration = Duration::from_secs(20);

/// A STOMP 1.2 client subscribed to `destination`, its RECEIPT read.
async fn subscriber(node: &TestBroker, destination: &str) -> Client {
    let mut client = node.connected().await.with_patience(FRAME_PATIENCE);
    client
        .send(&format!(
            "SUBSCRIBE\nid:0\ndestination:{destination}\nreceipt:r\n\n\0"
        ))
        .await;
    let receipt = client.frame().await;
    assert_eq!(receipt.command, Command::Receipt, "{receipt:?}");
    client
}

async fn publish(node: &TestBroker, request: serde_json::Value) -> (u16, serde_json::Value) {
    node.http("POST", "/api/v1/publish", Some(&request.to_string()))
        .await
}

async fn count(node: &TestBroker, destination: &str) -> u64 {
    let path = format!("/api/v1/destinations/{}", destination.replace('/', "%2F"));
    let (status, body) = node.http("GET", &path, None).await;
    assert_eq!(status, 200, "{body}");
    body["subscribers"].as_u64().unwrap()
}

/// Logs from the broker (`RUST_LOG`, default warn) in the test's output.
fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .try_init();
}

async fn wait_for_count(node: &TestBroker, destination: &str, expected: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = count(node, destination).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{destination}: {now} readers, expected {expected}"
        );
        sleep(COUNT_INTERVAL / 2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_any_node_reaches_every_reader_on_every_node_exactly_once() {
    let redis = Redis::start();
    three_nodes_act_as_one_broker(&redis.url()).await;
}

/// The same three nodes on a 3-master Redis Cluster (sharded pub/sub, one
/// script call per hash slot for a broadcast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_act_as_one_broker_on_a_redis_cluster() {
    logs();
    let cluster = redis::RedisCluster::start();
    three_nodes_act_as_one_broker(&cluster.url()).await;
}

async fn three_nodes_act_as_one_broker(redis_url: &str) {
    let nodes = nodes_on(redis_url, &["a", "b", "c"]).await;
    let mut readers = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            readers.push(subscriber(node, "/topic/comments.1").await);
        }
    }
    let (status, reply) = publish(
        &nodes[0],
        serde_json::json!({
            "destination": "/topic/comments.1",
            "body": {"b": 2, "a": "ü"},
            "headers": {"x-article": "1"},
        }),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let message_id = reply["message_id"].as_str().unwrap().to_owned();
    let mut first_frames = Vec::new();
    for reader in &mut readers {
        let message = reader.frame().await;
        assert_eq!(message.command, Command::Message);
        assert_eq!(message.headers.get("message-id"), Some(message_id.as_str()));
        assert_eq!(
            message.headers.get("destination"),
            Some("/topic/comments.1")
        );
        assert_eq!(message.headers.get("x-article"), Some("1"));
        assert_eq!(
            message.headers.get("content-type"),
            Some("application/json")
        );
        first_frames.push(message);
    }
    // Identical on every node, headers in order and body byte for byte.
    for message in &first_frames {
        let strip = |frame: &stompede_protocol::Frame| {
            let headers: Vec<_> = frame
                .headers
                .iter()
                .filter(|(name, _)| *name != "subscription")
                .collect();
            (format!("{headers:?}"), frame.body.clone())
        };
        assert_eq!(strip(message), strip(&first_frames[0]));
    }

    // Exactly once: the next frame every reader gets is the next message,
    // published from another node, not a second copy of the first.
    let (status, _) = publish(
        &nodes[2],
        serde_json::json!({"destination": "/topic/comments.1", "body": "second"}),
    )
    .await;
    assert_eq!(status, 202);
    for reader in &mut readers {
        let message = reader.frame().await;
        assert_eq!(&message.body[..], b"second");
    }

    // A broadcast reaches readers of each destination on every node.
    let mut other = subscriber(&nodes[1], "/topic/comments.2").await;
    let request = serde_json::json!({"destinations": ["/topic/comments.1", "/topic/comments.2"], "body": "both"});
    let (status, reply) = nodes[2]
        .http("POST", "/api/v1/broadcast", Some(&request.to_string()))
        .await;
    assert_eq!(status, 202, "{reply}");
    for reader in readers.iter_mut().chain(std::iter::once(&mut other)) {
        let message = reader.frame().await;
        assert_eq!(&message.body[..], b"both");
        assert_eq!(
            message.headers.get("message-id"),
            reply["message_id"].as_str()
        );
    }

    // Counts are cluster-wide on every node, and a publish answers them.
    for node in &nodes {
        wait_for_count(node, "/topic/comments.1", 6).await;
    }
    let (_, reply) = publish(
        &nodes[1],
        serde_json::json!({"destination": "/topic/comments.1", "body": "n"}),
    )
    .await;
    assert_eq!(reply["subscribers"], 6, "{reply}");

    // Message ids are unique across nodes started together.
    let (_, from_a) = publish(
        &nodes[0],
        serde_json::json!({"destination": "/topic/x", "body": "1"}),
    )
    .await;
    let (_, from_b) = publish(
        &nodes[1],
        serde_json::json!({"destination": "/topic/x", "body": "1"}),
    )
    .await;
    assert_ne!(from_a["message_id"], from_b["message_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_made_after_the_receipt_reaches_the_new_subscriber() {
    let redis = Redis::start();
    let nodes = nodes(&redis, &["a", "b"]).await;
    for round in 0..20 {
        // A new destination each time, so B must subscribe in Redis first.
        let destination = format!("/topic/fresh.{round}");
        let mut reader = subscriber(&nodes[1], &destination).await;
        let (status, _) = publish(
            &nodes[0],
            serde_json::json!({"destination": destination, "body": "now"}),
        )
        .await;
        assert_eq!(status, 202);
        let message = reader.frame().await;
        assert_eq!(&message.body[..], b"now", "round {round}");
    }
    // A client SEND right after its SUBSCRIBE reaches it, through Redis.
    let mut client = nodes[1].connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/self\n\n\0SEND\ndestination:/topic/self\nreceipt:s\n\nmine\0")
        .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(client.frame().await);
    }
    assert!(
        got.iter().any(|frame| frame.command == Command::Receipt),
        "{got:?}"
    );
    let message = got
        .iter()
        .find(|frame| frame.command == Command::Message)
        .expect("the SEND came back");
    assert_eq!(&message.body[..], b"mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_readers_listen_and_a_crowd_costs_one_redis_subscribe() {
    let redis = Redis::start();
    let nodes = nodes(&redis, &["a", "b", "c"]).await;
    let channel = "stompede:{/topic/only-b}";

    let mut reader = subscriber(&nodes[1], "/topic/only-b").await;
    assert_eq!(
        redis.numsub(channel),
        1,
        "one connection (node b's) listens"
    );
    let (status, _) = publish(
        &nodes[0],
        serde_json::json!({"destination": "/topic/only-b", "body": "x"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(&reader.frame().await.body[..], b"x");
    for idle in [&nodes[0], &nodes[2]] {
        let metrics = idle.broker.metrics();
        assert_eq!(
            metrics.engine_interest_subscribes.get(),
            0,
            "a node without readers subscribes to nothing"
        );
        assert_eq!(metrics.engine_received.get(), 0, "and receives nothing");
    }

    // The last reader leaves: after interest-linger node b unsubscribes.
    drop(reader);
    let deadline = Instant::now() + PATIENCE;
    while redis.numsub(channel) != 0 {
        assert!(Instant::now() < deadline, "node b never unsubscribed");
        sleep(Duration::from_millis(50)).await;
    }

    // 200 readers arriving together on a new destination: one SUBSCRIBE.
    let before = nodes[2].broker.metrics().engine_subscribe_commands.get();
    let mut crowd = Vec::new();
    for _ in 0..200 {
        let url = nodes[2].ws_url();
        crowd.push(tokio::spawn(async move {
            let mut client = Client::open(&url, &["v12.stomp"]).await.unwrap();
            client
                .send("CONNECT\naccept-version:1.2\n\n\0SUBSCRIBE\nid:0\ndestination:/topic/crowd\nreceipt:r\n\n\0")
                .await;
            assert_eq!(client.frame().await.command, Command::Connected);
            assert_eq!(client.frame().await.command, Command::Receipt);
            client
        }));
    }
    let mut crowd_clients = Vec::new();
    for client in crowd {
        crowd_clients.push(client.await.unwrap());
    }
    let commands = nodes[2].broker.metrics().engine_subscribe_commands.get() - before;
    assert_eq!(
        commands, 1,
        "SUBSCRIBE commands for 200 readers of one new destination"
    );
    assert_eq!(redis.numsub("stompede:{/topic/crowd}"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retry_answer_like_the_first_and_deliver_once() {
    let redis = Redis::start();
    let nodes = nodes(&redis, &["a", "b"]).await;
    let mut reader = subscriber(&nodes[1], "/topic/idem").await;
    let request = serde_json::json!({"destination": "/topic/idem", "body": "once"}).to_string();
    let headers = [("idempotency-key", "comment-77")];
    let (status, first) = http(
        nodes[0].addr,
        "POST",
        "/api/v1/publish",
        Some(&request),
        &headers,
    )
    .await;
    assert_eq!(status, 202, "{first}");
    // The retry goes to another node, as a load balancer may send it.
    let (status, retry) = http(
        nodes[1].addr,
        "POST",
        "/api/v1/publish",
        Some(&request),
        &headers,
    )
    .await;
    assert_eq!(status, 202, "{retry}");
    assert_eq!(retry["message_id"], first["message_id"]);
    let (status, _) = publish(
        &nodes[0],
        serde_json::json!({"destination": "/topic/idem", "body": "marker"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(&reader.frame().await.body[..], b"once");
    assert_eq!(
        &reader.frame().await.body[..],
        b"marker",
        "the retry was not delivered"
    );

    let bad = [("idempotency-key", "")];
    let (status, body) = http(
        nodes[0].addr,
        "POST",
        "/api/v1/publish",
        Some(&request),
        &bad,
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_at_start_a_node_serves_readers_and_refuses_publishes_until_it_is_there() {
    let port = redis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let node = start(node(&url, "lonely")).await;
    let (status, ready) = node.http("GET", "/readyz", None).await;
    assert_eq!(status, 200, "readiness does not depend on Redis: {ready}");
    assert_eq!(ready["engine"]["up"], false, "{ready}");
    assert_eq!(node.broker.metrics().engine_up.get(), 0);

    // A reader connects; its SUBSCRIBE's RECEIPT waits for Redis.
    let mut reader = node.connected().await;
    reader
        .send("SUBSCRIBE\nid:0\ndestination:/topic/wait\nreceipt:r\n\n\0")
        .await;
    let (status, body) = publish(
        &node,
        serde_json::json!({"destination": "/topic/wait", "body": "x"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("redis"), "{body}");

    let _redis = Redis::start_on(port);
    let receipt = reader.frame().await;
    assert_eq!(
        receipt.command,
        Command::Receipt,
        "the RECEIPT once Redis confirmed"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _) = publish(
            &node,
            serde_json::json!({"destination": "/topic/wait", "body": "back"}),
        )
        .await;
        if status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "publishes never recovered");
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(&reader.frame().await.body[..], b"back");
    // The link watcher updates the gauge on its next look (within 250 ms).
    wait_until(
        || node.broker.metrics().engine_up.get() == 1,
        "engine_up says the engine is up",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_is_lost_sessions_stay_and_everything_recovers_when_it_is_back() {
    logs();
    let mut redis = Redis::start();
    let nodes = nodes(&redis, &["a", "b"]).await;
    let mut reader = subscriber(&nodes[1], "/topic/lost").await;
    wait_for_count(&nodes[0], "/topic/lost", 1).await;

    redis.kill();
    wait_until(
        || !nodes[0].broker.engine_status().up,
        "node a sees Redis gone",
    )
    .await;
    let (status, body) = publish(
        &nodes[0],
        serde_json::json!({"destination": "/topic/lost", "body": "no"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");

    // Back, empty: node b subscribes again and both report their counts again.
    redis.resume();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _) = publish(
            &nodes[0],
            serde_json::json!({"destination": "/topic/lost", "body": "again"}),
        )
        .await;
        if status == 202 && redis.numsub("stompede:{/topic/lost}") == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
        sleep(Duration::from_millis(50)).await;
    }
    // The session was never dropped: it gets what is published from now on.
    let (status, _) = publish(
        &nodes[0],
        serde_json::json!({"destination": "/topic/lost", "body": "after"}),
    )
    .await;
    assert_eq!(status, 202);
    loop {
        let message = reader.frame().await;
        assert_eq!(message.command, Command::Message);
        if &message.body[..] == b"after" {
            break;
        }
    }
    wait_for_count(&nodes[0], "/topic/lost", 1).await;
    assert!(nodes[1].broker.metrics().engine_reconnects.get() >= 1);
}

/// Publishes `body` to `destination` on `node` until it is accepted (the
/// engine may be reconnecting), returning how many tries it took.
async fn publish_until_accepted(node: &TestBroker, destination: &str, body: &str) -> u32 {
    let deadline = Instant::now() + FRAME_PATIENCE;
    for tries in 1.. {
        let request = serde_json::json!({"destination": destination, "body": body});
        let (status, answer) = publish(node, request).await;
        if status == 202 {
            return tries;
        }
        assert!(
            Instant::now() < deadline,
            "never accepted: {status} {answer}"
        );
        sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_url_finds_the_master_and_follows_it_through_a_failover() {
    logs();
    let (destination, channel) = ("/topic/sentinel", "stompede:{/topic/sentinel}");
    let master = Redis::start();
    let replica = Redis::start_replica_of(&master);
    let sentinel = Sentinel::start("stompede", &master);
    let nodes = nodes_on(&sentinel.url(), &["a", "b"]).await;
    let mut reader = subscriber(&nodes[1], destination).await;
    // Node b listens on the master the sentinel named, not on the replica.
    assert_eq!(master.numsub(channel), 1);
    assert_eq!(replica.numsub(channel), 0);
    assert_eq!(
        publish_until_accepted(&nodes[0], destination, "before").await,
        1
    );
    assert_eq!(&reader.frame().await.body[..], b"before");

    sentinel.failover();
    let promoted = || replica.role() == "master";
    wait_until_within(FRAME_PATIENCE, promoted, "the replica is promoted").await;
    // Both nodes find the new master through the sentinel: node b listens
    // there again, and node a's publishes are taken there.
    let listening = || replica.numsub(channel) == 1;
    wait_until_within(
        FRAME_PATIENCE,
        listening,
        "node b subscribes on the promoted replica",
    )
    .await;
    publish_until_accepted(&nodes[0], destination, "after").await;
    assert!(
        replica
            .cli(&["LLEN", "stompede:{/topic/sentinel}log"])
            .trim()
            != "0",
        "the publish went to the new master's history"
    );
    // The reader's session stayed through the failover and gets it.
    loop {
        let message = reader.frame().await;
        assert_eq!(message.command, Command::Message, "{message:?}");
        if &message.body[..] == b"after" {
            break;
        }
    }
    assert!(nodes[1].broker.metrics().engine_reconnects.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_stops_counting_and_the_others_keep_serving() {
    let redis = Redis::start();
    let nodes = nodes(&redis, &["a"]).await;
    let listen = format!("127.0.0.1:{}", redis::free_port());
    let mut doomed = std::process::Command::new(env!("CARGO_BIN_EXE_stompede"))
        .args([
            "--listen",
            &listen,
            "--engine",
            "redis",
            "--redis-url",
            &redis.url(),
        ])
        .args(["--node-id", "doomed", "--reader-count-interval", "0.1"])
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("ws://{listen}/ws");
    let deadline = Instant::now() + PATIENCE;
    let mut readers = Vec::new();
    while readers.len() < 3 {
        match Client::open(&url, &["v12.stomp"]).await {
            Ok(mut client) => {
                client
                    .send("CONNECT\naccept-version:1.2\n\n\0SUBSCRIBE\nid:0\ndestination:/topic/doomed\nreceipt:r\n\n\0")
                    .await;
                assert_eq!(client.frame().await.command, Command::Connected);
                assert_eq!(client.frame().await.command, Command::Receipt);
                readers.push(client);
            }
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(50)).await,
            Err(error) => panic!("the doomed node never listened: {error}"),
        }
    }
    let _local = subscriber(&nodes[0], "/topic/doomed").await;
    wait_for_count(&nodes[0], "/topic/doomed", 4).await;

    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let killed = Instant::now();
    // Its readers stop counting within 3 report intervals (plus one to see it).
    wait_for_count(&nodes[0], "/topic/doomed", 1).await;
    // A generous margin over the documented bound: without the expiry it would count forever.
    assert!(
        killed.elapsed() < COUNT_INTERVAL * 4 + Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    let (status, reply) = publish(
        &nodes[0],
        serde_json::json!({"destination": "/topic/doomed", "body": "on"}),
    )
    .await;
    assert_eq!((status, reply["subscribers"].as_u64()), (202, Some(1)));
}

/// A TCP proxy in front of Redis whose Redis-to-node direction can be
/// stalled: the node then stops reading what Redis sends it, as a stuck
/// node would.
struct StallingProxy {
    port: u16,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallingProxy {
    async fn start(redis_port: u16) -> StallingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = std::sync::Arc::new(AtomicBool::new(false));
        let stall = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let stall = stall.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        while stall.load(Ordering::SeqCst) {
                            sleep(Duration::from_millis(10)).await;
                        }
                        match server_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(read) => {
                                if client_write.write_all(&buffer[..read]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    // Redis closed the link: so does the node's side.
                    let _ = client_write.shutdown().await;
                });
            }
        });
        StallingProxy { port, stalled }
    }

    fn stall(&self, stalled: bool) {
        self.stalled
            .store(stalled, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_node_is_cut_by_redis_without_slowing_the_others_and_comes_back() {
    logs();
    let redis = Redis::start();
    // Redis cuts a pub/sub client that has more than 256 KiB waiting.
    redis.cli(&[
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 256kb 128kb 1",
    ]);
    let proxy = StallingProxy::start(redis.port).await;
    let healthy = nodes(&redis, &["healthy"]).await.remove(0);
    // Room for the burst the socket buffers release when it reads again.
    let stuck = start(Config {
        outbound_queue_bytes: 64 << 20,
        outbound_queue_frames: 4096,
        ..node(&format!("redis://127.0.0.1:{}", proxy.port), "stuck")
    })
    .await;
    wait_until(
        || stuck.broker.engine_status().up,
        "the stuck node comes up",
    )
    .await;
    let mut healthy_reader = subscriber(&healthy, "/topic/busy").await;
    let mut stuck_reader = subscriber(&stuck, "/topic/busy").await;
    // It reads whatever reaches it, so that its own queue is not what fails.
    let stuck_reads = tokio::spawn(async move {
        loop {
            match stuck_reader.next_frame().await {
                Some(frame) if &frame.body[..] == b"last" => return Ok(()),
                Some(frame) if frame.command == Command::Message => continue,
                other => return Err(format!("the stuck node's reader got {other:?}")),
            }
        }
    });

    proxy.stall(true);
    // Far more than the kernel's socket buffers between Redis and the node hold.
    const MESSAGES: usize = 400;
    let body = "x".repeat(32 * 1024);
    for _ in 0..MESSAGES {
        let (status, reply) = publish(
            &healthy,
            serde_json::json!({"destination": "/topic/busy", "body": body}),
        )
        .await;
        assert_eq!(
            status, 202,
            "publishing is not slowed by the stuck node: {reply}"
        );
        // The healthy node's reader gets every one of them (reading as it
        // goes, so it is no slow consumer itself).
        assert_eq!(healthy_reader.frame().await.body.len(), body.len());
    }

    // Redis has cut the stuck node's pub/sub link; once it reads again it
    // reconnects, subscribes again, and gets what is published from then on.
    proxy.stall(false);
    let deadline = Instant::now() + PATIENCE * 2;
    while stuck.broker.metrics().engine_reconnects.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "the stuck node never reconnected"
        );
        sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _) = publish(
            &healthy,
            serde_json::json!({"destination": "/topic/busy", "body": "later"}),
        )
        .await;
        assert_eq!(status, 202);
        if redis.numsub("stompede:{/topic/busy}") == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck node never subscribed again"
        );
        sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = publish(
        &healthy,
        serde_json::json!({"destination": "/topic/busy", "body": "last"}),
    )
    .await;
    assert_eq!(status, 202);
    // Its session stayed open: it gets "last" (after whatever reached it before the cut).
    stuck_reads.await.unwrap().unwrap();
}

/// A Redis Cluster slot moving to another master (resharding) makes its old
/// owner push a `sunsubscribe` for the slot's channels: the node counts the
/// lost subscription as a gap and subscribes again on the new owner, so a
/// publish made after the move reaches its readers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_master_is_subscribed_again_on_the_new_owner() {
    logs();
    let cluster = redis::RedisCluster::start();
    let nodes = nodes_on(&cluster.url(), &["a", "b"]).await;
    let destination = "/topic/moving";
    let channel = "stompede:{/topic/moving}";
    let mut reader = subscriber(&nodes[1], destination).await;
    let (status, _) = publish(
        &nodes[0],
        serde_json::json!({"destination": destination, "body": "before"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(&reader.frame().await.body[..], b"before");
    let lost_before = nodes[1].broker.metrics().engine_subscriptions_lost.get();

    let slot = cluster.slot_of(channel);
    let (from, to) = cluster.move_slot(slot);
    // The old owner dropped node b's subscription and told it so.
    let deadline = Instant::now() + PATIENCE;
    while cluster.masters[from].shard_numsub(channel) != 0 {
        assert!(
            Instant::now() < deadline,
            "the old owner kept the subscription"
        );
        sleep(Duration::from_millis(20)).await;
    }

    // Publishes made from now on (node a learns the new owner from a MOVED)
    // must reach the reader again, within a bounded time.
    let publisher = nodes[0].addr;
    let publishing = tokio::spawn(async move {
        for n in 0.. {
            let request =
                serde_json::json!({"destination": destination, "body": format!("after {n}")});
            let _ = http(
                publisher,
                "POST",
                "/api/v1/publish",
                Some(&request.to_string()),
                &[],
            )
            .await;
            sleep(Duration::from_millis(100)).await;
        }
    });
    let arrived = tokio::time::timeout(Duration::from_secs(15), reader.frame()).await;
    publishing.abort();
    let message = arrived.expect("no publish made after the slot moved reached the reader in 15 s");
    assert!(message.body.starts_with(b"after "), "{message:?}");
    assert_eq!(
        cluster.masters[to].shard_numsub(channel),
        1,
        "node b listens on the new owner"
    );
    assert!(
        nodes[1].broker.metrics().engine_subscriptions_lost.get() > lost_before,
        "the lost subscription is counted as a gap"
    );
}

/// `rediss://`: the nodes talk to a TLS-only Redis (its plain port is off),
/// trusting the test's CA; a node given another CA refuses the server, stays
/// down and says why, and answers publishes with 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_url_publishes_over_tls_and_a_wrong_ca_is_a_clear_failure() {
    logs();
    let certificates = redis::Certificates::make();
    let redis = Redis::start_tls(&certificates, false);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let tls_node = |id: &str, ca: &std::path::Path| Config {
        redis_tls_ca_file: Some(ca.to_owned()),
        ..node(&url, id)
    };
    let a = start(tls_node("a", &certificates.ca)).await;
    let b = start(tls_node("b", &certificates.ca)).await;
    for node in [&a, &b] {
        wait_until(
            || node.broker.engine_status().up,
            "the engine comes up over TLS",
        )
        .await;
    }
    let mut reader = subscriber(&b, "/topic/tls").await;
    let (status, reply) = publish(
        &a,
        serde_json::json!({"destination": "/topic/tls", "body": "secret"}),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(&reader.frame().await.body[..], b"secret");
    assert_eq!(
        redis.numsub("stompede:{/topic/tls}"),
        1,
        "node b listens over TLS"
    );

    let wrong = start(tls_node("wrong", &certificates.other_ca)).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = wrong.broker.engine_status();
        assert!(!status.up, "a server signed by another CA was trusted");
        if status.detail.to_lowercase().contains("certificate") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said why: {}",
            status.detail
        );
        sleep(Duration::from_millis(50)).await;
    }
    let (status, ready) = wrong.http("GET", "/readyz", None).await;
    assert_eq!(status, 200, "readiness does not depend on Redis: {ready}");
    assert_eq!(ready["engine"]["up"], false, "{ready}");
    assert!(
        ready["engine"]["detail"]
            .as_str()
            .unwrap()
            .contains("UnknownIssuer"),
        "{ready}"
    );
    let asked = Instant::now();
    let (status, body) = publish(
        &wrong,
        serde_json::json!({"destination": "/topic/tls", "body": "x"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("redis"), "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "a 503 at once, not a hang"
    );
    assert_eq!(wrong.broker.metrics().engine_up.get(), 0);
}

/// A Redis that asks clients for a certificate (`tls-auth-clients yes`, its
/// default): a node with `redis-tls-cert-file`/`-key-file` is let in, one
/// without is not (and stays down, answering 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_a_redis_that_asks_for_one() {
    logs();
    let certificates = redis::Certificates::make();
    let redis = Redis::start_tls(&certificates, true);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let with_certificate = start(Config {
        redis_tls_ca_file: Some(certificates.ca.clone()),
        redis_tls_cert_file: Some(certificates.client_cert.clone()),
        redis_tls_key_file: Some(certificates.client_key.clone()),
        ..node(&url, "a")
    })
    .await;
    wait_until(
        || with_certificate.broker.engine_status().up,
        "the node with a client certificate comes up",
    )
    .await;
    let mut reader = subscriber(&with_certificate, "/topic/mtls").await;
    let (status, reply) = publish(
        &with_certificate,
        serde_json::json!({"destination": "/topic/mtls", "body": "in"}),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(&reader.frame().await.body[..], b"in");

    let without = start(Config {
        redis_tls_ca_file: Some(certificates.ca.clone()),
        ..node(&url, "b")
    })
    .await;
    let deadline = Instant::now() + PATIENCE;
    while !without.broker.engine_status().detail.contains("last error") {
        assert!(
            Instant::now() < deadline,
            "{}",
            without.broker.engine_status().detail
        );
        sleep(Duration::from_millis(50)).await;
    }
    assert!(!without.broker.engine_status().up);
    let (status, body) = publish(
        &without,
        serde_json::json!({"destination": "/topic/mtls", "body": "x"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
}

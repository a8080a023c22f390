//! Peers that stop reading: a session whose socket is full is still ended by
//! its write deadline (`write-timeout`) and by shutdown, it keeps reading its
//! client's frames while a long queue drains, and accepted sockets carry TCP
//! keepalive.

mod common;
mod raw;

use common::{config, start, TestBroker, PATIENCE};
use raw::RawWs;
use std::time::Duration;
use stompede::config::SlowConsumerPolicy;
use tokio::time::{sleep, Instant};

const DESTINATION: &str = "/topic/stuck";
/// Published to a reader that does not read: far more than the socket
/// buffers on both sides of a loopback connection with a 4 KiB window hold.
const MESSAGES: usize = 200;
const MESSAGE_BYTES: usize = 60_000;

/// A STOMP 1.2 session subscribed to [`DESTINATION`] with a 4 KiB receive
/// window, which from now on reads nothing unless the test says so.
async fn subscribed_reader(broker: &TestBroker, heart_beat: &str) -> RawWs {
    let mut reader = RawWs::open_small_window(broker.addr).await;
    reader
        .send_text(&format!(
            "CONNECT\naccept-version:1.2\nheart-beat:{heart_beat}\n\n\0"
        ))
        .await;
    reader.read_frame().await.expect("CONNECTED");
    reader
        .send_text(&format!(
            "SUBSCRIBE\nid:0\ndestination:{DESTINATION}\nreceipt:r\n\n\0"
        ))
        .await;
    reader.read_frame().await.expect("RECEIPT");
    reader
}

/// Publishes [`MESSAGES`] messages of [`MESSAGE_BYTES`] to [`DESTINATION`].
async fn flood(broker: &TestBroker) {
    flood_at(broker.addr).await;
}

async fn flood_at(addr: std::net::SocketAddr) {
    let body = "x".repeat(MESSAGE_BYTES);
    let request = serde_json::json!({ "destination": DESTINATION, "body": body }).to_string();
    for _ in 0..MESSAGES {
        let (status, response) =
            common::http(addr, "POST", "/api/v1/publish", Some(&request), &[]).await;
        assert_eq!(status, 202, "{response}");
    }
}

async fn wait_for_no_sessions(broker: &TestBroker, patience: Duration) {
    let deadline = Instant::now() + patience;
    while broker.broker.open_sessions() != 0 {
        assert!(
            Instant::now() < deadline,
            "a session is still open after {patience:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_peer_that_never_reads_is_ended_by_the_write_timeout() {
    for policy in [SlowConsumerPolicy::Disconnect, SlowConsumerPolicy::Drop] {
        let mut config = config();
        config.write_timeout = Duration::from_secs(1);
        config.slow_consumer = policy;
        // Room for everything, so only the write deadline can end the session.
        config.outbound_queue_bytes = 64 << 20;
        config.heartbeat.can_send = Duration::ZERO;
        let broker = start(config).await;
        let _reader = subscribed_reader(&broker, "0,0").await;
        flood(&broker).await;
        wait_for_no_sessions(&broker, PATIENCE * 2).await;
    }
}

#[tokio::test]
async fn shutdown_ends_a_session_stuck_in_a_write() {
    let mut config = config();
    config.write_timeout = Duration::from_secs(600);
    config.outbound_queue_bytes = 64 << 20;
    config.shutdown_grace = Duration::from_secs(3);
    let mut broker = start(config).await;
    let _reader = subscribed_reader(&broker, "0,0").await;
    flood(&broker).await;
    sleep(Duration::from_millis(200)).await;
    assert_eq!(broker.broker.open_sessions(), 1);
    broker.shutdown().await;
    // `run` returned after at most shutdown-grace; the session must be gone
    // too, not left behind holding its slot.
    wait_for_no_sessions(&broker, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn reads_go_on_while_a_long_queue_drains() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("stompede=debug")
        .try_init();
    let mut config = config();
    config.write_timeout = Duration::from_secs(600);
    config.outbound_queue_bytes = 64 << 20;
    config.outbound_queue_frames = 4096;
    // The server wants a heart-beat every 500 ms: silence for 1 s ends the session.
    config.heartbeat.can_send = Duration::ZERO;
    config.heartbeat.wants_to_receive = Duration::from_millis(500);
    let broker = start(config).await;
    let mut reader = subscribed_reader(&broker, "500,0").await;
    let flooding = tokio::spawn(flood_at(broker.addr));

    // Three seconds (at least) of not reading, heart-beats going out all the while.
    let mut beats = 0;
    while beats < 15 || !flooding.is_finished() {
        reader.send_text("\n").await;
        sleep(Duration::from_millis(200)).await;
        beats += 1;
    }
    flooding.await.unwrap();
    assert_eq!(
        broker.broker.subscriber_count(DESTINATION),
        1,
        "the session is still there"
    );
    // Its UNSUBSCRIBE is read and handled although the queue is still draining.
    reader.send_text("UNSUBSCRIBE\nid:0\nreceipt:u\n\n\0").await;
    broker.wait_for_subscribers(DESTINATION, 0).await;

    // Now it reads: whatever was written arrives, then the RECEIPT, and no
    // heart-beat timeout ever fired.
    let beats = tokio::spawn(async move {
        let mut saw_receipt = false;
        while let Some((_, payload)) = reader.read_frame().await {
            if payload.starts_with(b"ERROR") {
                panic!("{}", String::from_utf8_lossy(&payload));
            }
            if payload.starts_with(b"RECEIPT") {
                saw_receipt = true;
                break;
            }
        }
        assert!(saw_receipt, "the connection closed before the RECEIPT");
    });
    tokio::time::timeout(PATIENCE * 4, beats)
        .await
        .expect("everything read in time")
        .unwrap();
}

/// The server's side of the connection from `client_port` to `server_port`,
/// from /proc/net/tcp: its `tr` (timer) field, 2 being the keepalive timer.
fn server_socket_timer(server_port: u16, client_port: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
        (port(fields[1]) == Some(server_port) && port(fields[2]) == Some(client_port))
            .then(|| fields[5].split(':').next().unwrap().parse().unwrap())
    })
}

#[tokio::test]
async fn accepted_sockets_have_tcp_keepalive() {
    for (keepalive, timer) in [(Duration::from_secs(60), 2), (Duration::ZERO, 0)] {
        let mut config = config();
        config.tcp_keepalive = keepalive;
        let broker = start(config).await;
        let mut client = RawWs::open(broker.addr).await;
        client
            .send_text("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
            .await;
        client.read_frame().await.expect("CONNECTED");
        let client_port = client.stream.local_addr().unwrap().port();
        // Wait until no retransmit timer (1) is pending for what was just sent.
        let deadline = Instant::now() + PATIENCE;
        let mut found = server_socket_timer(broker.addr.port(), client_port);
        while found == Some(1) && Instant::now() < deadline {
            sleep(Duration::from_millis(50)).await;
            found = server_socket_timer(broker.addr.port(), client_port);
        }
        assert_eq!(found, Some(timer), "tcp-keepalive {keepalive:?}");
    }
}

#[tokio::test]
async fn a_resubscribed_id_does_not_get_the_old_subscriptions_queued_messages() {
    let mut config = config();
    config.outbound_queue_bytes = 64 << 20;
    let broker = start(config).await;
    let mut reader = subscribed_reader(&broker, "0,0").await;
    flood(&broker).await;
    // The same id, another destination, while most of the flood is queued.
    reader
        .send_text("UNSUBSCRIBE\nid:0\n\n\0SUBSCRIBE\nid:0\ndestination:/topic/fresh\n\n\0")
        .await;
    broker.wait_for_subscribers("/topic/fresh", 1).await;
    broker.publish("/topic/fresh", "fresh").await;
    let mut old = 0;
    loop {
        let (_, payload) = reader.read_frame().await.expect("the session stays open");
        let text = String::from_utf8_lossy(&payload);
        assert!(text.starts_with("MESSAGE\n"), "{text}");
        assert!(
            text.contains("\nsubscription:0\n") || text.starts_with("MESSAGE\nsubscription:0\n")
        );
        if text.contains("destination:/topic/fresh") {
            break;
        }
        old += 1;
    }
    assert!(
        old < MESSAGES,
        "all {old} messages of the old subscription were delivered under the new one"
    );
}

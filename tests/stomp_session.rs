//! STOMP over WebSocket, byte for byte, against a broker on 127.0.0.1:0.

mod common;

use common::{config, start, Client};
use futures_util::SinkExt;
use std::time::Duration;
use stompede::config::ClientSend;
use stompede_protocol::Command;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn handshake_echoes_the_highest_stomp_subprotocol_offered() {
    let broker = start(config()).await;
    let url = broker.ws_url();
    let client = Client::open(&url, &["v10.stomp", "v11.stomp"])
        .await
        .unwrap();
    assert_eq!(client.subprotocol.as_deref(), Some("v11.stomp"));
    let client = Client::open(&url, &["v10.stomp", "v12.stomp", "v11.stomp"])
        .await
        .unwrap();
    assert_eq!(client.subprotocol.as_deref(), Some("v12.stomp"));
    let client = Client::open(&url, &[]).await.unwrap();
    assert_eq!(client.subprotocol, None);
    let refused = Client::open(&url, &["mqtt"])
        .await
        .err()
        .expect("an unknown subprotocol is refused");
    assert!(refused.to_string().contains("400"), "{refused}");
}

#[tokio::test]
async fn connect_negotiates_the_highest_common_version() {
    let broker = start(config()).await;
    let mut client = broker.client().await;
    client
        .send("CONNECT\naccept-version:1.0,1.1\nhost:localhost\nheart-beat:0,0\n\n\0")
        .await;
    let connected = client.frame().await;
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(connected.headers.get("version"), Some("1.1"));
    assert_eq!(connected.headers.get("heart-beat"), Some("10000,10000"));
    assert!(connected.headers.get("session").is_some());
    assert!(connected
        .headers
        .get("server")
        .unwrap()
        .starts_with("stompede/"));

    // STOMP 1.0: no accept-version header.
    let mut client = broker.client().await;
    client.send("STOMP\n\n\0").await;
    let connected = client.frame().await;
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(connected.headers.get("version"), None);
}

#[tokio::test]
async fn no_common_version_is_an_error_with_the_supported_versions() {
    let broker = start(config()).await;
    let mut client = broker.client().await;
    client.send("CONNECT\naccept-version:2.0\n\n\0").await;
    let error = client.frame().await;
    assert_eq!(error.command, Command::Error);
    assert_eq!(error.headers.get("version"), Some("1.0,1.1,1.2"));
    client.expect_closed().await;
}

#[tokio::test]
async fn credentials_are_checked_when_users_are_configured() {
    let mut config = config();
    config.users = vec![stompede::auth::User {
        login: "reader".into(),
        passcode: "s3cret".into(),
    }];
    let broker = start(config).await;
    let mut client = broker.client().await;
    client
        .send("CONNECT\naccept-version:1.2\nlogin:reader\npasscode:wrong\n\n\0")
        .await;
    assert_eq!(client.expect_error().await, "bad credentials");
    let mut client = broker.client().await;
    client.send("CONNECT\naccept-version:1.2\n\n\0").await;
    let message = client.expect_error().await;
    assert!(message.starts_with("authentication required"), "{message}");
    let mut client = broker.client().await;
    client
        .send("CONNECT\naccept-version:1.2\nlogin:reader\npasscode:s3cret\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Connected);
}

#[tokio::test]
async fn a_frame_before_connect_is_an_error() {
    let broker = start(config()).await;
    let mut client = broker.client().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/a\nreceipt:r1\n\n\0")
        .await;
    let error = client.frame().await;
    assert_eq!(error.command, Command::Error);
    assert_eq!(
        error.headers.get("message"),
        Some("expected a CONNECT or STOMP frame, got SUBSCRIBE")
    );
    assert_eq!(error.headers.get("receipt-id"), Some("r1"));
    client.expect_closed().await;
}

/// A SUBSCRIBE's RECEIPT, byte for byte: `receipt-id`, then where the
/// destination's history stands (`x-epoch`, and `x-offset` 0 for a
/// destination never published to); returns the epoch.
async fn expect_subscribe_receipt(client: &mut Client, receipt: &str) -> String {
    let raw = String::from_utf8(client.raw().await).unwrap();
    let epoch = raw
        .strip_prefix(&format!("RECEIPT\nreceipt-id:{receipt}\nx-epoch:"))
        .and_then(|rest| rest.strip_suffix("\nx-offset:0\n\n\0"))
        .unwrap_or_else(|| panic!("unexpected RECEIPT: {raw:?}"));
    assert!(!epoch.is_empty() && !epoch.contains('\n'), "{raw:?}");
    epoch.to_owned()
}

#[tokio::test]
async fn a_published_comment_reaches_the_subscriber_byte_for_byte() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:sub-0\ndestination:/topic/comments.42\nreceipt:r-1\n\n\0")
        .await;
    let epoch = expect_subscribe_receipt(&mut client, "r-1").await;
    let published = broker.publish("/topic/comments.42", "First!").await;
    assert_eq!(published["subscribers"], 1);
    let id = published["message_id"].as_str().unwrap();
    let expected = format!(
        "MESSAGE\nsubscription:sub-0\ndestination:/topic/comments.42\nmessage-id:{id}\n\
         x-offset:1\nx-epoch:{epoch}\ncontent-type:text/plain;charset=utf-8\ncontent-length:6\n\nFirst!\0"
    );
    assert_eq!(String::from_utf8(client.raw().await).unwrap(), expected);
}

#[tokio::test]
async fn subscriptions_are_validated() {
    let broker = start(config()).await;
    let cases = [
        (
            "SUBSCRIBE\ndestination:/topic/a\n\n\0",
            "SUBSCRIBE frame has no id header",
        ),
        (
            "SUBSCRIBE\nid:1\n\n\0",
            "SUBSCRIBE frame has no destination header",
        ),
        (
            "SUBSCRIBE\nid:1\ndestination:/topic/a\nack:sometimes\n\n\0",
            "invalid ack mode \"sometimes\": use auto, client or client-individual",
        ),
        (
            "UNSUBSCRIBE\nid:7\n\n\0",
            "no subscription with id \"7\" in this session",
        ),
        ("UNSUBSCRIBE\n\n\0", "UNSUBSCRIBE frame has no id header"),
    ];
    for (frame, message) in cases {
        let mut client = broker.connected().await;
        client.send(frame).await;
        assert_eq!(client.expect_error().await, message, "for {frame:?}");
    }
    let mut client = broker.connected().await;
    client.send("SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/b\n\n\0").await;
    assert_eq!(
        client.expect_error().await,
        "subscription id \"1\" is already in use in this session"
    );
    // The failed session's subscriptions are gone.
    broker.wait_for_subscribers("/topic/a", 0).await;
}

#[tokio::test]
async fn subscriptions_per_session_are_limited() {
    let mut config = config();
    config.max_subscriptions_per_session = 2;
    let broker = start(config).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\0SUBSCRIBE\nid:2\ndestination:/topic/b\n\n\0SUBSCRIBE\nid:3\ndestination:/topic/c\n\n\0")
        .await;
    assert_eq!(
        client.expect_error().await,
        "too many subscriptions: this server allows 2 per session"
    );
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_empties_the_destination() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:a\ndestination:/topic/x\n\n\0")
        .await;
    broker.wait_for_subscribers("/topic/x", 1).await;
    assert_eq!(broker.broker.destination_count(), 1);
    client.send("UNSUBSCRIBE\nid:a\nreceipt:done\n\n\0").await;
    assert_eq!(client.raw().await, b"RECEIPT\nreceipt-id:done\n\n\0");
    assert_eq!(broker.broker.destination_count(), 0);
    assert_eq!(broker.publish("/topic/x", "nobody").await["subscribers"], 0);
}

#[tokio::test]
async fn a_dropped_socket_removes_its_subscriptions() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client.send("SUBSCRIBE\nid:a\ndestination:/topic/x\n\n\0SUBSCRIBE\nid:b\ndestination:/topic/y\n\n\0").await;
    broker.wait_for_subscribers("/topic/y", 1).await;
    drop(client);
    broker.wait_for_subscribers("/topic/x", 0).await;
    broker.wait_for_subscribers("/topic/y", 0).await;
    assert_eq!(broker.broker.destination_count(), 0);
}

#[tokio::test]
async fn send_is_refused_by_default() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client.send("SEND\ndestination:/topic/a\n\nhi\0").await;
    let message = client.expect_error().await;
    assert!(
        message.starts_with("SEND is disabled on this server"),
        "{message}"
    );
}

fn allow_send() -> stompede::Config {
    let mut config = config();
    config.client_send = ClientSend::Allow;
    config
}

#[tokio::test]
async fn a_send_coalesced_after_a_subscribe_reaches_that_subscription() {
    let broker = start(allow_send()).await;
    let mut client = broker.connected().await;
    // Both frames in one WebSocket message, handled in order.
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/chat\n\n\0SEND\ndestination:/topic/chat\ncontent-type:text/plain\nx-custom:1\nsubscription:forged\nmessage-id:forged\n\nhello\0")
        .await;
    let message = client.frame().await;
    assert_eq!(message.command, Command::Message);
    assert_eq!(message.headers.get("subscription"), Some("0"));
    assert_eq!(message.headers.get("destination"), Some("/topic/chat"));
    assert_ne!(message.headers.get("message-id"), Some("forged"));
    assert_eq!(message.headers.get_all("subscription").count(), 1);
    assert_eq!(message.headers.get_all("message-id").count(), 1);
    assert_eq!(message.headers.get("x-custom"), Some("1"));
    assert_eq!(&message.body[..], b"hello");
}

#[tokio::test]
async fn a_frame_split_across_websocket_messages_is_reassembled() {
    let broker = start(allow_send()).await;
    let mut client = broker.connected().await;
    let frames = "SUBSCRIBE\nid:0\ndestination:/topic/split\n\n\0SEND\ndestination:/topic/split\ncontent-length:4\n\na\0b\n\0";
    for chunk in frames.as_bytes().chunks(3) {
        client
            .ws
            .send(Message::binary(chunk.to_vec()))
            .await
            .unwrap();
    }
    let message = client.frame().await;
    assert_eq!(&message.body[..], b"a\0b\n");
}

#[tokio::test]
async fn transactions_hold_sends_until_commit_and_drop_them_on_abort() {
    let broker = start(allow_send()).await;
    let mut client = broker.connected().await;
    client
        .send(
            "SUBSCRIBE\nid:0\ndestination:/topic/t\n\n\0\
             BEGIN\ntransaction:t1\n\n\0\
             SEND\ndestination:/topic/t\ntransaction:t1\n\none\0\
             BEGIN\ntransaction:t2\n\n\0\
             SEND\ndestination:/topic/t\ntransaction:t2\n\naborted\0\
             ABORT\ntransaction:t2\n\n\0\
             SEND\ndestination:/topic/t\n\nzero\0\
             COMMIT\ntransaction:t1\nreceipt:c\n\n\0",
        )
        .await;
    let first = client.frame().await;
    assert_eq!(&first.body[..], b"zero", "{first:?}");
    let second = client.frame().await;
    assert_eq!(&second.body[..], b"one");
    assert_eq!(second.headers.get("transaction"), None);
    let receipt = client.frame().await;
    assert_eq!(receipt.command, Command::Receipt);
    client.send("COMMIT\ntransaction:t2\n\n\0").await;
    assert_eq!(client.expect_error().await, "no open transaction \"t2\"");
}

#[tokio::test]
async fn ack_modes_add_an_ack_header_and_acks_are_validated() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/ack\nack:client-individual\nreceipt:s\n\n\0")
        .await;
    client.frame().await;
    broker.publish("/topic/ack", "please ack").await;
    let message = client.frame().await;
    let ack = message
        .headers
        .get("ack")
        .expect("an ack header")
        .to_owned();
    client
        .send(&format!("ACK\nid:{ack}\nreceipt:a\n\n\0"))
        .await;
    assert_eq!(client.frame().await.headers.get("receipt-id"), Some("a"));
    client
        .send(&format!("NACK\nid:{ack}\nreceipt:n\n\n\0"))
        .await;
    assert_eq!(client.frame().await.headers.get("receipt-id"), Some("n"));
    client.send("ACK\nreceipt:bad\n\n\0").await;
    let error = client.frame().await;
    assert_eq!(
        error.headers.get("message"),
        Some("ACK frame has no id header")
    );
    assert_eq!(error.headers.get("receipt-id"), Some("bad"));
}

#[tokio::test]
async fn disconnect_answers_its_receipt_then_closes() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client.send("DISCONNECT\nreceipt:bye\n\n\0").await;
    assert_eq!(client.raw().await, b"RECEIPT\nreceipt-id:bye\n\n\0");
    client.expect_closed().await;
}

#[tokio::test]
async fn a_decode_error_gets_an_error_frame() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client.send("FLY\n\n\0").await;
    assert_eq!(client.expect_error().await, "unknown command \"FLY\"");
    let mut client = broker.connected().await;
    client.send("SEND\ndestination\n\n\0").await;
    assert_eq!(
        client.expect_error().await,
        "header line has no colon: \"destination\""
    );
}

#[tokio::test]
async fn a_socket_that_never_sends_connect_is_closed() {
    let mut config = config();
    config.connect_timeout = Duration::from_millis(200);
    let broker = start(config).await;
    let mut client = broker.client().await;
    let message = client.expect_error().await;
    assert!(message.starts_with("no CONNECT frame within"), "{message}");
}

#[tokio::test]
async fn the_server_sends_heart_beats_when_asked() {
    let mut config = config();
    config.heartbeat.can_send = Duration::from_millis(50);
    let broker = start(config).await;
    let mut client = broker.client().await;
    client
        .send("CONNECT\naccept-version:1.2\nheart-beat:0,50\n\n\0")
        .await;
    assert_eq!(
        client.frame().await.headers.get("heart-beat"),
        Some("50,10000")
    );
    for _ in 0..3 {
        match client.message().await {
            Some(Message::Text(text)) => assert_eq!(text.as_str(), "\n"),
            other => panic!("expected a heart-beat, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_silent_client_is_disconnected_after_its_heart_beat_interval() {
    let mut config = config();
    config.heartbeat.wants_to_receive = Duration::from_millis(100);
    let broker = start(config).await;
    let mut client = broker.client().await;
    client
        .send("CONNECT\naccept-version:1.2\nheart-beat:100,0\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Connected);
    // Heart-beats keep it alive: for five times the 200 ms silence limit the
    // broker says nothing (an ERROR or a close would show here)...
    for _ in 0..15 {
        if let Ok(message) = tokio::time::timeout(
            Duration::from_millis(60),
            futures_util::StreamExt::next(&mut client.ws),
        )
        .await
        {
            panic!("nothing should arrive while heart-beats flow, got {message:?}");
        }
        client.send("\n").await;
    }
    // ...and the session is still open and answering...
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/hb\nreceipt:alive\n\n\0")
        .await;
    expect_subscribe_receipt(&mut client, "alive").await;
    // ...while silence is not.
    let message = client.expect_error().await;
    assert!(message.starts_with("heart-beat timeout"), "{message}");
}

#[tokio::test]
async fn a_binary_body_goes_out_in_a_binary_websocket_message() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/bin\nreceipt:r\n\n\0")
        .await;
    client.frame().await;
    let request = r#"{"destination": "/topic/bin", "body_base64": "/wAB"}"#;
    let (status, _) = broker.http("POST", "/api/v1/publish", Some(request)).await;
    assert_eq!(status, 202);
    match client.message().await {
        Some(Message::Binary(bytes)) => {
            assert!(bytes.starts_with(b"MESSAGE\n"));
            assert!(
                bytes.ends_with(
                    b"content-type:application/octet-stream\ncontent-length:3\n\n\xff\x00\x01\0"
                ),
                "{bytes:?}"
            );
        }
        other => panic!("expected a binary message, got {other:?}"),
    }
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_before_the_upgrade() {
    let mut config = config();
    config.max_connections = 1;
    let broker = start(config).await;
    let first = broker.client().await;
    let refused = Client::open(&broker.ws_url(), &["v12.stomp"])
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("503"), "{refused}");
    let (status, _) = broker.http("GET", "/readyz", None).await;
    assert_eq!(status, 503);
    drop(first);
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while broker.broker.open_sessions() != 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.client().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_and_the_others_get_everything() {
    let mut config = config();
    config.outbound_queue_frames = 16;
    config.max_frame_bytes = 128 * 1024;
    config.max_request_bytes = 256 * 1024;
    let broker = start(config).await;
    let mut slow = broker.connected().await;
    slow.send("SUBSCRIBE\nid:0\ndestination:/topic/flood\nreceipt:r\n\n\0")
        .await;
    slow.frame().await;
    let mut healthy = broker.connected().await;
    healthy
        .send("SUBSCRIBE\nid:0\ndestination:/topic/flood\nreceipt:r\n\n\0")
        .await;
    healthy.frame().await;

    let body = "x".repeat(100 * 1024);
    let messages = 300; // 30 MB: far more than socket buffers hold.
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while received < messages {
            let frame = healthy.frame().await;
            assert_eq!(frame.command, Command::Message);
            received += 1;
        }
        received
    });
    // The slow one reads nothing until the broker has marked it a slow
    // consumer, then reads at once: what its socket held, then the ERROR
    // (the broker gives the ERROR a second to get out), then the close.
    let slow_reader = tokio::spawn({
        let broker = broker.broker.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while broker.metrics().slow_consumer_disconnects.get() == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never marked a slow consumer"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let mut received = 0;
            let mut last = None;
            while let Some(frame) = slow.next_frame().await {
                if frame.command == Command::Message {
                    received += 1;
                }
                last = Some(frame);
            }
            (received, last)
        }
    });
    for _ in 0..messages {
        broker.publish("/topic/flood", &body).await;
    }
    assert_eq!(reader.await.unwrap(), messages);
    assert_eq!(broker.broker.metrics().slow_consumer_disconnects.get(), 1);
    let (received, last) = slow_reader.await.unwrap();
    let last = last.expect("the slow consumer got at least the ERROR");
    assert_eq!(
        last.command,
        Command::Error,
        "the last frame is not the ERROR: {:?} {:?}",
        last.command,
        last.headers
    );
    assert_eq!(
        last.headers.get("message"),
        Some("slow consumer: this connection did not read its messages fast enough")
    );
    assert!(
        received < messages,
        "the slow consumer was cut off ({received} of {messages})"
    );
    broker.wait_for_subscribers("/topic/flood", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drop_drops_messages_counts_them_and_keeps_the_connection() {
    let mut config = config();
    config.slow_consumer = stompede::config::SlowConsumerPolicy::Drop;
    config.outbound_queue_frames = 4;
    config.max_frame_bytes = 128 * 1024;
    config.heartbeat.can_send = Duration::ZERO;
    let broker = start(config).await;
    let mut slow = broker.connected().await;
    slow.send("SUBSCRIBE\nid:0\ndestination:/topic/drop\nreceipt:r\n\n\0")
        .await;
    assert_eq!(slow.frame().await.command, Command::Receipt);

    // It reads nothing while far more than its socket holds is published.
    let headers = stompede_protocol::Headers::new();
    let body = bytes::Bytes::from(vec![b'x'; 100 * 1024]);
    let metrics = broker.broker.metrics();
    let mut published = 0;
    while metrics.slow_consumer_drops.get() < 10 {
        assert!(
            published < 5_000,
            "{} drops in {published} publishes: was the connection closed?",
            metrics.slow_consumer_drops.get()
        );
        broker
            .publish_direct("/topic/drop", &headers, body.clone())
            .await;
        published += 1;
        if published % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert_eq!(metrics.slow_consumer_disconnects.get(), 0);

    // The connection stays open: it gets everything that was not dropped
    // (every message was either queued or counted as dropped)...
    let dropped = metrics.slow_consumer_drops.get() as usize;
    for _ in 0..published - dropped {
        let frame = slow.frame().await;
        assert_eq!(frame.command, Command::Message, "{:?}", frame.headers);
        assert_eq!(frame.body.len(), body.len());
    }
    // ...and, having caught up, later messages.
    broker
        .publish_direct("/topic/drop", &headers, bytes::Bytes::from_static(b"after"))
        .await;
    let after = slow.frame().await;
    assert_eq!(
        after.body.len(),
        5,
        "expected the later message, got {:?}",
        after.headers
    );
    assert_eq!(&after.body[..], b"after");
    assert_eq!(metrics.slow_consumer_drops.get() as usize, dropped);
    slow.send("DISCONNECT\nreceipt:bye\n\n\0").await;
    assert_eq!(slow.raw().await, b"RECEIPT\nreceipt-id:bye\n\n\0");
}

#[tokio::test]
async fn shutdown_tells_every_session_and_returns() {
    let mut broker = start(config()).await;
    let mut first = broker.connected().await;
    let mut second = broker.connected().await;
    broker.shutdown().await;
    assert_eq!(first.expect_error().await, "server is shutting down");
    assert_eq!(second.expect_error().await, "server is shutting down");
}

#[tokio::test]
async fn frames_without_replies_do_not_silence_the_servers_heart_beats() {
    let mut config = config();
    config.heartbeat.can_send = Duration::from_millis(50);
    let broker = start(config).await;
    let mut client = broker.client().await;
    client
        .send("CONNECT\naccept-version:1.2\nheart-beat:0,50\n\n\0")
        .await;
    client.frame().await;
    // A busy client whose frames need no answer, for ten heart-beat intervals.
    let mut heart_beats = 0;
    for i in 0..25 {
        client
            .send(&format!(
                "SUBSCRIBE\nid:{i}\ndestination:/topic/busy\n\n\0UNSUBSCRIBE\nid:{i}\n\n\0"
            ))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(
            Duration::from_millis(1),
            futures_util::StreamExt::next(&mut client.ws),
        )
        .await
        {
            assert_eq!(text.as_str(), "\n");
            heart_beats += 1;
        }
    }
    assert!(
        heart_beats >= 2,
        "only {heart_beats} heart-beats in ten intervals"
    );
}

/// The broker writes WebSocket frames itself: every length encoding (7-bit,
/// 16-bit, 64-bit), batches split over several writes, and pongs that
/// tungstenite sends in between must all reach a real client intact.
#[tokio::test]
async fn frames_of_every_length_encoding_arrive_intact_between_pongs() {
    let mut config = config();
    config.max_frame_bytes = 1 << 20;
    config.outbound_queue_bytes = 8 << 20;
    // Smaller than one frame, so each batch takes several writes.
    config.ws_write_buffer_bytes = 100;
    let broker = start(config).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:s\ndestination:/topic/sizes\nreceipt:r\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);

    let sizes = [1, 60, 125, 126, 200, 65_535, 65_536, 70_000, 300_000];
    let headers = stompede_protocol::Headers::new();
    for (round, size) in sizes.iter().enumerate() {
        client
            .ws
            .send(Message::Ping(vec![round as u8].into()))
            .await
            .unwrap();
        // Several per round, published at once, so they are written as one batch.
        for copy in 0..3u8 {
            let body = bytes::Bytes::from(vec![b'a' + copy; *size]);
            let message =
                broker
                    .broker
                    .publication(vec!["/topic/sizes".into()], headers.clone(), body, None);
            broker.broker.publish(&message).await.unwrap();
        }
    }
    let mut pongs = Vec::new();
    let mut buffer = bytes::BytesMut::new();
    let mut decoder = stompede_protocol::Decoder::new(stompede_protocol::Limits {
        max_body_bytes: 1 << 20,
        max_frame_bytes: 2 << 20,
        ..Default::default()
    });
    let mut bodies = Vec::new();
    while bodies.len() < sizes.len() * 3 {
        match client.message().await.expect("connection open") {
            Message::Pong(payload) => pongs.push(payload[0]),
            Message::Text(text) => buffer.extend_from_slice(text.as_bytes()),
            other => panic!("unexpected {other:?}"),
        }
        while let Some(item) = decoder.decode(&mut buffer).expect("frames decode") {
            if let stompede_protocol::Item::Frame(frame) = item {
                assert_eq!(frame.command, Command::Message, "{frame:?}");
                assert_eq!(frame.headers.get("subscription"), Some("s"));
                bodies.push(frame.body);
            }
        }
    }
    for (index, body) in bodies.iter().enumerate() {
        let (size, copy) = (sizes[index / 3], (index % 3) as u8);
        assert_eq!(body.len(), size, "message {index}");
        assert!(
            body.iter().all(|&byte| byte == b'a' + copy),
            "message {index} has foreign bytes"
        );
    }
    // Pongs may still be on their way after the last message.
    while pongs.len() < sizes.len() {
        match client.message().await.expect("connection open") {
            Message::Pong(payload) => pongs.push(payload[0]),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pongs, (0..sizes.len() as u8).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_custom_ws_path_is_the_only_websocket_endpoint() {
    let broker = start(stompede::Config {
        ws_path: "/stomp".into(),
        ..config()
    })
    .await;
    let url = format!("ws://{}/stomp", broker.addr);
    let mut client = Client::open(&url, &["v12.stomp"]).await.unwrap();
    client
        .send("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Connected);
    let refused = Client::open(&broker.ws_url(), &["v12.stomp"])
        .await
        .err()
        .expect("/ws is no WebSocket endpoint now");
    assert!(refused.to_string().contains("404"), "{refused}");
}

/// Publishes `body` with one header whose value has a colon, so the three
/// versions' escaping rules show.
async fn publish_with_a_colon_header(broker: &common::TestBroker, destination: &str) -> String {
    let request = serde_json::json!({
        "destination": destination,
        "body": "hi",
        "headers": {"x-note": "a:b"},
    })
    .to_string();
    let (status, response) = broker.http("POST", "/api/v1/publish", Some(&request)).await;
    assert_eq!(status, 202, "{response}");
    response["message_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn stomp_1_0_subscribes_without_an_id_and_gets_messages_without_escaping() {
    let broker = start(config()).await;
    let mut client = broker.client().await;
    client.send("CONNECT\nlogin:\npasscode:\n\n\0").await;
    let connected = client.frame().await;
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(connected.headers.get("version"), None, "{connected:?}");
    // No id: the destination names the subscription.
    client
        .send("SUBSCRIBE\ndestination:/topic/old\nreceipt:r\n\n\0")
        .await;
    let epoch = expect_subscribe_receipt(&mut client, "r").await;
    let id = publish_with_a_colon_header(&broker, "/topic/old").await;
    let expected = format!(
        "MESSAGE\nsubscription:/topic/old\ndestination:/topic/old\nmessage-id:{id}\n\
         x-offset:1\nx-epoch:{epoch}\ncontent-type:text/plain;charset=utf-8\nx-note:a:b\ncontent-length:2\n\nhi\0"
    );
    assert_eq!(String::from_utf8(client.raw().await).unwrap(), expected);
    // And UNSUBSCRIBE by destination ends it.
    client
        .send("UNSUBSCRIBE\ndestination:/topic/old\nreceipt:u\n\n\0")
        .await;
    assert_eq!(client.raw().await, b"RECEIPT\nreceipt-id:u\n\n\0");
    assert_eq!(broker.broker.subscriber_count("/topic/old"), 0);
}

#[tokio::test]
async fn stomp_1_1_sessions_get_messages_with_escaped_headers() {
    let broker = start(config()).await;
    let mut client = broker.client().await;
    client
        .send("CONNECT\naccept-version:1.0,1.1\nhost:localhost\nheart-beat:0,0\n\n\0")
        .await;
    assert_eq!(client.frame().await.headers.get("version"), Some("1.1"));
    client
        .send("SUBSCRIBE\nid:s-1\ndestination:/topic/mid\nreceipt:r\n\n\0")
        .await;
    let epoch = expect_subscribe_receipt(&mut client, "r").await;
    let id = publish_with_a_colon_header(&broker, "/topic/mid").await;
    let expected = format!(
        "MESSAGE\nsubscription:s-1\ndestination:/topic/mid\nmessage-id:{id}\n\
         x-offset:1\nx-epoch:{epoch}\ncontent-type:text/plain;charset=utf-8\nx-note:a\\cb\ncontent-length:2\n\nhi\0"
    );
    assert_eq!(String::from_utf8(client.raw().await).unwrap(), expected);
}

#[tokio::test]
async fn transactions_hold_at_most_max_transaction_frames() {
    let mut config = allow_send();
    config.max_transaction_frames = 3;
    let broker = start(config).await;
    let mut client = broker.connected().await;
    // BEGIN and two SENDs: three frames held, at the limit.
    client
        .send(
            "BEGIN\ntransaction:t\n\n\0\
             SEND\ndestination:/topic/t\ntransaction:t\n\none\0\
             SEND\ndestination:/topic/t\ntransaction:t\nreceipt:held\n\ntwo\0",
        )
        .await;
    assert_eq!(client.raw().await, b"RECEIPT\nreceipt-id:held\n\n\0");
    // A COMMIT gives the budget back...
    client
        .send(
            "COMMIT\ntransaction:t\n\n\0\
             BEGIN\ntransaction:u\n\n\0\
             SEND\ndestination:/topic/t\ntransaction:u\n\none\0\
             SEND\ndestination:/topic/t\ntransaction:u\nreceipt:again\n\ntwo\0",
        )
        .await;
    assert_eq!(client.raw().await, b"RECEIPT\nreceipt-id:again\n\n\0");
    // ...and one frame past it is refused.
    client
        .send("SEND\ndestination:/topic/t\ntransaction:u\nreceipt:over\n\nthree\0")
        .await;
    assert_eq!(
        client.expect_error().await,
        "too many frames in open transactions: this server holds at most 3 per session"
    );
}

#[tokio::test]
async fn stomp_1_0_unsubscribe_by_destination_also_ends_a_subscription_with_an_id() {
    let broker = start(config()).await;
    let mut client = broker.client().await;
    client.send("CONNECT\n\n\0").await;
    assert_eq!(client.frame().await.command, Command::Connected);
    client
        .send("SUBSCRIBE\nid:sub-1\ndestination:/topic/old-style\nreceipt:s\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);
    broker.wait_for_subscribers("/topic/old-style", 1).await;
    client
        .send("UNSUBSCRIBE\ndestination:/topic/old-style\nreceipt:u\n\n\0")
        .await;
    let reply = client.frame().await;
    assert_eq!(reply.command, Command::Receipt, "{reply:?}");
    broker.wait_for_subscribers("/topic/old-style", 0).await;
}

#[tokio::test]
async fn stomp_1_2_acks_of_ids_this_session_was_never_sent_are_refused() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/ack-check\nack:client\nreceipt:s\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);
    broker.publish("/topic/ack-check", "one").await;
    let message = client.frame().await;
    let ack = message
        .headers
        .get("ack")
        .expect("an ack header")
        .to_owned();
    assert_ne!(
        Some(ack.as_str()),
        message.headers.get("message-id"),
        "the ack id is this session's own, not the shared message id"
    );
    // Another session's ack ids are not this one's.
    let mut other = broker.connected().await;
    other
        .send("SUBSCRIBE\nid:0\ndestination:/topic/ack-check\nack:client\nreceipt:s\n\n\0")
        .await;
    assert_eq!(other.frame().await.command, Command::Receipt);
    client
        .send(&format!("ACK\nid:{ack}\nreceipt:a\n\n\0"))
        .await;
    assert_eq!(client.frame().await.headers.get("receipt-id"), Some("a"));
    other.send(&format!("ACK\nid:{ack}\nreceipt:o\n\n\0")).await;
    let error = other.frame().await;
    assert_eq!(error.command, Command::Error, "{error:?}");
    assert_eq!(
        error.headers.get("message"),
        Some(
            format!("ACK of id {ack:?}: this session was never sent a message with that ack id")
                .as_str()
        )
    );
    client.send("NACK\nid:made-up\n\n\0").await;
    assert_eq!(
        client.expect_error().await,
        "NACK of id \"made-up\": this session was never sent a message with that ack id"
    );
}

//! Hostile input: every case gets an ERROR frame with a useful message (or
//! the right WebSocket close code or HTTP status), and the broker keeps
//! serving a bystander session opened before the attack.

mod common;
mod raw;

use common::{config, start, Client, TestBroker};
use futures_util::SinkExt;
use raw::{RawWs, OP_BINARY, OP_TEXT};
use std::time::Duration;
use stompede::config::ClientSend;
use stompede_protocol::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const BYSTANDER: &str = "/topic/bystander";

/// A session subscribed to [`BYSTANDER`] before the attack.
async fn bystander(broker: &TestBroker) -> Client {
    let mut client = broker.connected().await;
    client
        .send(&format!(
            "SUBSCRIBE\nid:b\ndestination:{BYSTANDER}\nreceipt:b\n\n\0"
        ))
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);
    client
}

/// The bystander still receives, and a new session can still connect.
async fn still_serving(broker: &TestBroker, bystander: &mut Client) {
    broker.publish(BYSTANDER, "still here").await;
    let message = bystander.frame().await;
    assert_eq!(message.command, Command::Message, "{message:?}");
    assert_eq!(&message.body[..], b"still here");
    let mut fresh = broker.connected().await;
    fresh.send("DISCONNECT\nreceipt:bye\n\n\0").await;
    assert_eq!(fresh.frame().await.command, Command::Receipt);
}

/// Sends `bytes` as binary WebSocket messages of at most `chunk` bytes.
async fn send_chunked(client: &mut Client, bytes: &[u8], chunk: usize) {
    for piece in bytes.chunks(chunk) {
        if client
            .ws
            .send(Message::binary(piece.to_vec()))
            .await
            .is_err()
        {
            return; // the server may close before everything is sent
        }
    }
}

#[tokio::test]
async fn frames_before_connect_are_refused() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    for frame in [
        "SEND\ndestination:/topic/a\n\nx\0",
        "SUBSCRIBE\nid:0\ndestination:/topic/a\n\n\0",
        "DISCONNECT\n\n\0",
    ] {
        let mut client = broker.client().await;
        client.send(frame).await;
        let message = client.expect_error().await;
        assert!(
            message.starts_with("expected a CONNECT or STOMP frame, got "),
            "{message}"
        );
    }
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn unknown_commands_are_refused() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut client = broker.client().await;
    client.send("HELLO\n\n\0").await;
    assert_eq!(client.expect_error().await, "unknown command \"HELLO\"");
    let mut client = broker.connected().await;
    client.send("PUBLISH\ndestination:/topic/a\n\n\0").await;
    assert_eq!(client.expect_error().await, "unknown command \"PUBLISH\"");
    let mut client = broker.connected().await;
    client.send("MESSAGE\ndestination:/topic/a\n\n\0").await;
    assert!(client.expect_error().await.contains("server frame"));
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_connect_that_never_ends_hits_the_pre_connect_budget() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut client = broker.client().await;
    let mut frame = b"CONNECT\naccept-version:1.2\n\n".to_vec();
    frame.extend(std::iter::repeat_n(b'a', 8000)); // no NUL, ever
    send_chunked(&mut client, &frame, 1000).await;
    let message = client.expect_error().await;
    assert!(message.contains("exceeds 4096 bytes"), "{message}");
    // Headers alone can hit it too, before the blank line.
    let mut client = broker.client().await;
    let mut frame = b"CONNECT\n".to_vec();
    for i in 0..60 {
        frame.extend_from_slice(format!("header-{i}:{}\n", "v".repeat(100)).as_bytes());
    }
    send_chunked(&mut client, &frame, 1000).await;
    let message = client.expect_error().await;
    assert!(message.contains("exceeds 4096 bytes"), "{message}");
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn the_full_frame_budget_applies_once_connected() {
    let mut config = config();
    config.client_send = ClientSend::Allow;
    let broker = start(config).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/big\n\n\0")
        .await;
    let body = "b".repeat(10_000);
    client
        .send(&format!("SEND\ndestination:/topic/big\n\n{body}\0"))
        .await;
    let message = client.frame().await;
    assert_eq!(message.command, Command::Message);
    assert_eq!(message.body.len(), 10_000);
}

#[tokio::test]
async fn malformed_headers_are_refused() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let cases: [(&str, &str); 4] = [
        (
            "CONNECT\naccept-version:1.2\nno-colon-here\n\n\0",
            "header line has no colon: \"no-colon-here\"",
        ),
        ("CONNECT\raccept-version:1.2\n\n\0", "CR not followed by LF"),
        (
            "CONNECT\naccept-version:1.2\ncontent-length:-1\n\n\0",
            "content-length is not a number: \"-1\"",
        ),
        (
            "CONNECT\naccept-version:1.2\ncontent-length:ten\n\n\0",
            "content-length is not a number: \"ten\"",
        ),
    ];
    for (frame, expected) in cases {
        let mut client = broker.client().await;
        client.send(frame).await;
        assert_eq!(client.expect_error().await, expected, "for {frame:?}");
    }
    // Escapes are decoded once STOMP 1.2 is negotiated.
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/a\\qb\n\n\0")
        .await;
    assert_eq!(
        client.expect_error().await,
        "undefined escape \\q in header"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_lying_content_length_is_refused() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    // Shorter than the body: no NUL where the length says the body ends.
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/a\ncontent-length:2\n\nhello\0")
        .await;
    let message = client.expect_error().await;
    assert!(message.contains("not followed by NUL"), "{message}");
    // Longer than the limit: refused as soon as the header is read.
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/a\ncontent-length:999999999\n\n")
        .await;
    assert_eq!(
        client.expect_error().await,
        "frame body exceeds 65536 bytes"
    );
    let mut client = broker.client().await;
    client
        .send("CONNECT\naccept-version:1.2\ncontent-length:1000000\n\n")
        .await;
    assert_eq!(client.expect_error().await, "frame body exceeds 4096 bytes");
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_huge_content_length_then_silence_is_closed_by_the_connect_timeout() {
    let mut config = config();
    config.connect_timeout = Duration::from_millis(500);
    let broker = start(config).await;
    let mut by = bystander(&broker).await;
    let mut client = broker.client().await;
    // Within the budget, so the decoder waits for the body that never comes.
    client
        .send("CONNECT\naccept-version:1.2\ncontent-length:4000\n\nabc")
        .await;
    let message = client.expect_error().await;
    assert!(message.starts_with("no CONNECT frame within"), "{message}");
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_header_is_refused() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut client = broker.client().await;
    client
        .ws
        .send(Message::binary(
            b"CONNECT\naccept-version:1.2\nx:\xff\xfe\n\n\0".to_vec(),
        ))
        .await
        .unwrap();
    assert_eq!(client.expect_error().await, "header is not valid UTF-8");
    let mut client = broker.connected().await;
    client
        .ws
        .send(Message::binary(
            b"SUBSCRIBE\nid:\xc3\x28\ndestination:/topic/a\n\n\0".to_vec(),
        ))
        .await
        .unwrap();
    assert_eq!(client.expect_error().await, "header is not valid UTF-8");
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_websocket_message_closes_with_1007() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut ws = RawWs::open(broker.addr).await;
    ws.send_frame(OP_TEXT, b"CONNECT\naccept-version:1.2\nx:\xff\n\n\0")
        .await;
    let (data, code) = ws.until_close().await;
    assert_eq!(code, Some(1007));
    let error = String::from_utf8_lossy(&data.concat()).into_owned();
    assert!(
        error.starts_with("ERROR\n") && error.contains("not valid UTF-8"),
        "{error}"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_websocket_message_over_the_limit_closes_with_1009() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut ws = RawWs::open(broker.addr).await;
    ws.send_text("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    ws.read_frame().await.expect("CONNECTED");
    let mut frame = b"SEND\ndestination:/topic/a\nbig:".to_vec();
    frame.extend(std::iter::repeat_n(b'v', 1 << 20)); // a megabyte header value in one message
    ws.send_frame(OP_BINARY, &frame).await;
    let (data, code) = ws.until_close().await;
    assert_eq!(code, Some(1009));
    let error = String::from_utf8_lossy(&data.concat()).into_owned();
    assert!(error.contains("too large"), "{error}");
    assert!(error.contains("ws-max-message-bytes"), "{error}");
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_megabyte_header_value_in_small_messages_is_refused_at_the_line_limit() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut client = broker.connected().await;
    let mut frame = b"SUBSCRIBE\nid:0\ndestination:/topic/a\nbig:".to_vec();
    frame.extend(std::iter::repeat_n(b'v', 1 << 20));
    send_chunked(&mut client, &frame, 4096).await;
    assert_eq!(
        client.expect_error().await,
        "header line exceeds 8192 bytes"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn ten_thousand_headers_are_refused() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut client = broker.connected().await;
    let mut frame = b"SUBSCRIBE\n".to_vec();
    for i in 0..10_000 {
        frame.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    frame.extend_from_slice(b"\n\0");
    send_chunked(&mut client, &frame, 8192).await;
    assert_eq!(
        client.expect_error().await,
        "frame has more than 64 headers"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_duplicate_subscription_id_is_refused() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/a\n\n\0SUBSCRIBE\nid:0\ndestination:/topic/b\nreceipt:r\n\n\0")
        .await;
    let error = client.frame().await;
    assert_eq!(error.command, Command::Error);
    assert_eq!(
        error.headers.get("message"),
        Some("subscription id \"0\" is already in use in this session")
    );
    assert_eq!(error.headers.get("receipt-id"), Some("r"));
    client.expect_closed().await;
    broker.wait_for_subscribers("/topic/a", 0).await;
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn thousands_of_subscribes_stop_at_the_per_session_limit_and_leave_nothing_behind() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut client = broker.connected().await;
    let mut frames = String::new();
    for i in 0..5000 {
        frames.push_str(&format!(
            "SUBSCRIBE\nid:{i}\ndestination:/topic/flood.{i}\n\n\0"
        ));
    }
    send_chunked(&mut client, frames.as_bytes(), 8192).await;
    assert_eq!(
        client.expect_error().await,
        "too many subscriptions: this server allows 64 per session"
    );
    // Only the bystander's destination is left in the registry.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while broker.broker.destination_count() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flood destinations stayed in the registry"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_flood_of_heart_beats_is_harmless() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    // Before CONNECT: EOLs are heart-beats, not a frame, so no budget is used
    // (in messages within the pre-CONNECT message limit).
    let mut client = broker.client().await;
    send_chunked(&mut client, &vec![b'\n'; 1 << 20], 4 * 1024).await;
    client.send("CONNECT\naccept-version:1.2\n\n\0").await;
    assert_eq!(client.frame().await.command, Command::Connected);
    // After CONNECT, with CRLFs too.
    send_chunked(&mut client, &b"\r\n".repeat(1 << 19), 32 * 1024).await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/a\nreceipt:r\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn reserved_headers_on_a_send_never_reach_subscribers() {
    let mut config = config();
    config.client_send = ClientSend::Allow;
    let broker = start(config).await;
    let mut by = bystander(&broker).await;
    let mut subscriber = broker.connected().await;
    subscriber
        .send("SUBSCRIBE\nid:real\ndestination:/topic/a\nack:client\nreceipt:s\n\n\0")
        .await;
    assert_eq!(subscriber.frame().await.command, Command::Receipt);
    let mut publisher = broker.connected().await;
    publisher
        .send(
            "SEND\ndestination:/topic/a\ndestination:/topic/forged\nsubscription:forged\nmessage-id:forged\n\
             receipt:forged\ncontent-length:5\nack:forged\ncontent-type:text/plain\n\nhello\0",
        )
        .await;
    let receipt = publisher.frame().await;
    assert_eq!(
        receipt.headers.get("receipt-id"),
        Some("forged"),
        "the publisher's own receipt is answered"
    );
    let raw = String::from_utf8(subscriber.raw().await).unwrap();
    assert!(
        !raw.contains("forged"),
        "a forged header reached the subscriber: {raw:?}"
    );
    assert!(raw.starts_with("MESSAGE\n"), "{raw:?}");
    for name in [
        "destination",
        "message-id",
        "subscription",
        "content-length",
        "ack",
    ] {
        assert_eq!(
            raw.matches(&format!("\n{name}:")).count(),
            1,
            "{name} once in {raw:?}"
        );
    }
    assert!(
        raw.contains("\nsubscription:real\n") && raw.contains("\ncontent-length:5\n"),
        "{raw:?}"
    );
    assert!(
        raw.contains("\ncontent-type:text/plain\n"),
        "other headers pass: {raw:?}"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn reserved_headers_in_the_http_api_never_reach_subscribers() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut subscriber = broker.connected().await;
    subscriber
        .send("SUBSCRIBE\nid:real\ndestination:/topic/a\nreceipt:s\n\n\0")
        .await;
    assert_eq!(subscriber.frame().await.command, Command::Receipt);
    let request = serde_json::json!({
        "destination": "/topic/a",
        "body": "hello",
        "headers": {
            "subscription": "forged", "message-id": "forged", "destination": "/topic/forged",
            "receipt": "forged", "content-length": "999", "ack": "forged", "transaction": "forged",
            "x-comment-author": "ada"
        }
    })
    .to_string();
    let (status, response) = broker.http("POST", "/api/v1/publish", Some(&request)).await;
    assert_eq!(status, 202, "{response}");
    let raw = String::from_utf8(subscriber.raw().await).unwrap();
    assert!(
        // (Not a bare "999": message ids hold a random node id now.)
        !raw.contains("forged") && !raw.contains("content-length:999"),
        "a forged header reached the subscriber: {raw:?}"
    );
    assert!(
        raw.contains("\ndestination:/topic/a\n") && raw.contains("\nsubscription:real\n"),
        "{raw:?}"
    );
    assert!(
        raw.contains("\ncontent-length:5\n") && raw.contains("\nx-comment-author:ada\n"),
        "{raw:?}"
    );
    assert!(
        raw.contains(&format!(
            "\nmessage-id:{}\n",
            response["message_id"].as_str().unwrap()
        )),
        "{raw:?}"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_websocket_that_never_speaks_is_closed_by_the_connect_timeout() {
    let mut config = config();
    config.connect_timeout = Duration::from_millis(300);
    let broker = start(config).await;
    let mut by = bystander(&broker).await;
    let mut silent = broker.client().await;
    let message = silent.expect_error().await;
    assert!(message.starts_with("no CONNECT frame within"), "{message}");
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_handshake_sent_one_byte_per_second_is_closed_by_the_handshake_timeout() {
    let timeout = Duration::from_secs(2);
    // Generous: a loaded box may be late; a broker without the timeout is
    // not done before the whole request (minutes at this pace).
    let margin = Duration::from_secs(5);
    let mut config = config();
    config.handshake_timeout = timeout;
    let broker = start(config).await;
    let mut by = bystander(&broker).await;
    let mut stream = TcpStream::connect(broker.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let request = raw::upgrade_request(broker.addr, "");
    let mut closed_after = None;
    for byte in request.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                // hyper may answer 408 before closing.
                let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
                closed_after = Some(started.elapsed());
                break;
            }
            Err(_) => {} // one second passed: send the next byte
        }
        assert!(
            started.elapsed() < timeout + margin,
            "still open {:?} into a handshake with a {timeout:?} timeout",
            started.elapsed()
        );
    }
    let closed_after = closed_after.expect("the half-sent handshake was never closed");
    eprintln!("closed {closed_after:?} after connecting (handshake-timeout {timeout:?})");
    assert!(
        closed_after >= timeout - Duration::from_millis(200),
        "closed after {closed_after:?}, before the {timeout:?} timeout"
    );
    assert!(
        closed_after < timeout + margin,
        "closed only after {closed_after:?}, with a {timeout:?} timeout"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn an_unsupported_subprotocol_is_refused_with_400() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let mut stream = TcpStream::connect(broker.addr).await.unwrap();
    let request = raw::upgrade_request(broker.addr, "Sec-WebSocket-Protocol: mqtt, wamp\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(1).any(|w| w == b"}") {
        let n = tokio::time::timeout(common::PATIENCE, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("unsupported WebSocket subprotocol \\\"mqtt, wamp\\\""),
        "{answer}"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_foreign_origin_is_refused_with_403() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let (status, body) = common::upgrade(broker.addr, &[("origin", "https://evil.example")]).await;
    assert_eq!(status, 403);
    assert!(
        body["error"].as_str().unwrap().contains("not allowed"),
        "{body}"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn frames_that_must_not_have_a_body_are_refused() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    for (frame, command) in [
        (
            "SUBSCRIBE\nid:0\ndestination:/topic/a\n\nbody\0",
            "SUBSCRIBE",
        ),
        ("UNSUBSCRIBE\nid:0\n\nbody\0", "UNSUBSCRIBE"),
        ("BEGIN\ntransaction:t\n\nbody\0", "BEGIN"),
        ("COMMIT\ntransaction:t\n\nbody\0", "COMMIT"),
        ("ABORT\ntransaction:t\n\nbody\0", "ABORT"),
        ("ACK\nid:1\n\nbody\0", "ACK"),
        ("NACK\nid:1\n\nbody\0", "NACK"),
        ("DISCONNECT\ncontent-length:4\n\nbody\0", "DISCONNECT"),
    ] {
        let mut client = broker.connected().await;
        client.send(frame).await;
        assert_eq!(
            client.expect_error().await,
            format!("{command} frame must not have a body"),
            "{frame:?}"
        );
    }
    let mut client = broker.client().await;
    client.send("CONNECT\naccept-version:1.2\n\nhello\0").await;
    assert_eq!(
        client.expect_error().await,
        "CONNECT frame must not have a body"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn ids_longer_than_max_id_bytes_are_refused() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    let long = "i".repeat(257);
    for (frame, expected) in [
        (
            format!("SUBSCRIBE\nid:{long}\ndestination:/topic/a\n\n\0"),
            "subscription id is longer than 256 bytes (max-id-bytes)",
        ),
        (
            format!("BEGIN\ntransaction:{long}\n\n\0"),
            "transaction id is longer than 256 bytes (max-id-bytes)",
        ),
        (
            format!("UNSUBSCRIBE\nid:0\nreceipt:{long}\n\n\0"),
            "receipt id is longer than 256 bytes (max-id-bytes)",
        ),
    ] {
        let mut client = broker.connected().await;
        client.send(&frame).await;
        assert_eq!(client.expect_error().await, expected, "{frame:?}");
    }
    // 256 bytes is fine.
    let mut client = broker.connected().await;
    let id = "i".repeat(256);
    client
        .send(&format!(
            "SUBSCRIBE\nid:{id}\ndestination:/topic/a\nreceipt:{id}\n\n\0"
        ))
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn open_transactions_are_bounded_in_bytes() {
    let mut config = config();
    config.client_send = ClientSend::Allow;
    config.max_transaction_bytes = 10_000;
    let broker = start(config).await;
    let mut by = bystander(&broker).await;
    let mut client = broker.connected().await;
    let body = "b".repeat(4000);
    client.send("BEGIN\ntransaction:t\n\n\0").await;
    for _ in 0..2 {
        client
            .send(&format!(
                "SEND\ndestination:/topic/a\ntransaction:t\n\n{body}\0"
            ))
            .await;
    }
    client
        .send(&format!(
            "SEND\ndestination:/topic/a\ntransaction:t\nreceipt:r\n\n{body}\0"
        ))
        .await;
    assert_eq!(
        client.expect_error().await,
        "too many bytes in open transactions: this server holds at most 10000 per session \
         (max-transaction-bytes)"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn send_headers_that_cannot_be_passed_on_to_every_version_are_refused() {
    let mut config = config();
    config.client_send = ClientSend::Allow;
    let broker = start(config).await;
    let mut by = bystander(&broker).await;
    // A STOMP 1.0 subscriber: no escaping at all, so a raw LF starts a header.
    let mut old = broker.client().await;
    old.send("CONNECT\n\n\0").await;
    assert_eq!(old.frame().await.command, Command::Connected);
    old.send("SUBSCRIBE\ndestination:/topic/a\nreceipt:r\n\n\0")
        .await;
    assert_eq!(old.frame().await.command, Command::Receipt);
    for (frame, header) in [
        // An escaped LF (STOMP 1.2) in a value.
        (
            "SEND\ndestination:/topic/a\nx-note:a\\nsubscription:evil\n\nhi\0",
            "x-note",
        ),
        // An escaped CR.
        ("SEND\ndestination:/topic/a\nx-cr:a\\rb\n\nhi\0", "x-cr"),
        // A raw NUL in a value, which ends the frame for parsers that cut at NUL.
        ("SEND\ndestination:/topic/a\nx-nul:a\0b\n\nhi\0", "x-nul"),
        // An escaped colon in a name: STOMP 1.0 cannot write it.
        ("SEND\ndestination:/topic/a\nx\\cy:z\n\nhi\0", "x:y"),
    ] {
        let mut client = broker.connected().await;
        client.send(frame).await;
        let message = client.expect_error().await;
        assert!(
            message.starts_with(&format!("header {header:?} cannot be passed on")),
            "{frame:?}: {message}"
        );
    }
    broker.publish("/topic/a", "clean").await;
    let message = old.frame().await;
    assert_eq!(
        &message.body[..],
        b"clean",
        "only the clean message arrives"
    );
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn queued_headers_count_against_outbound_queue_bytes() {
    let mut config = config();
    config.outbound_queue_bytes = 1 << 20;
    config.heartbeat.can_send = Duration::ZERO;
    let broker = start(config).await;
    let mut slow = RawWs::open_small_window(broker.addr).await;
    slow.send_text("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    slow.read_frame().await.expect("CONNECTED");
    slow.send_text("SUBSCRIBE\nid:0\ndestination:/topic/big-headers\nreceipt:r\n\n\0")
        .await;
    slow.read_frame().await.expect("RECEIPT");
    // 60 KB of headers and a one-byte body, 200 times: 12 MB queued for a
    // reader that reads nothing, far past its 1 MiB budget.
    let headers: serde_json::Map<String, serde_json::Value> = (0..60)
        .map(|i| (format!("x-h{i}"), "v".repeat(1000).into()))
        .collect();
    let request = serde_json::json!({
        "destination": "/topic/big-headers",
        "body": "x",
        "headers": headers,
    })
    .to_string();
    for _ in 0..200 {
        let (status, response) = broker.http("POST", "/api/v1/publish", Some(&request)).await;
        assert_eq!(status, 202, "{response}");
    }
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while broker.broker.metrics().slow_consumer_disconnects.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader was never cut off: its queue's headers were not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_peer_still_sending_past_the_limit_receives_the_1009_close() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    for _ in 0..5 {
        let ws = RawWs::open(broker.addr).await;
        let (mut read, mut write) = ws.stream.into_split();
        // One 16 MiB message, still being sent when the server gives up on it.
        let sender = tokio::spawn(async move {
            let mut header = vec![0x80 | OP_BINARY, 0x80 | 127];
            header.extend_from_slice(&(16u64 << 20).to_be_bytes());
            header.extend_from_slice(&[0, 0, 0, 0]);
            let _ = write.write_all(&header).await;
            let chunk = vec![b'v'; 64 * 1024];
            for _ in 0..256 {
                if write.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut received = Vec::new();
        let read_all = tokio::time::timeout(common::PATIENCE, read.read_to_end(&mut received));
        let result = read_all
            .await
            .expect("the server ends the connection in time");
        assert!(
            result.is_ok(),
            "the client saw {result:?} instead of the close frame"
        );
        // The last frame is a close frame (opcode 8) with code 1009.
        let close = received
            .windows(4)
            .rposition(|w| w[0] == 0x88 && w[1] == 2 && w[2..] == 1009u16.to_be_bytes());
        assert!(
            close.is_some(),
            "no 1009 close frame in {} bytes",
            received.len()
        );
        sender.abort();
    }
    still_serving(&broker, &mut by).await;
}

#[tokio::test]
async fn a_websocket_message_over_the_pre_connect_budget_closes_with_1009_before_connect() {
    let broker = start(config()).await;
    let mut by = bystander(&broker).await;
    // 10 KB in one message before CONNECT: past max-frame-bytes-before-connect
    // (4096) plus framing slack, refused at the WebSocket layer.
    let mut ws = RawWs::open(broker.addr).await;
    let mut frame = b"CONNECT\naccept-version:1.2\nbig:".to_vec();
    frame.extend(std::iter::repeat_n(b'v', 10_000));
    frame.extend_from_slice(b"\n\n\0");
    ws.send_frame(OP_BINARY, &frame).await;
    let (data, code) = ws.until_close().await;
    assert_eq!(code, Some(1009));
    let error = String::from_utf8_lossy(&data.concat()).into_owned();
    assert!(error.contains("before CONNECT"), "{error}");
    // Once connected, the same size is fine.
    let mut ws = RawWs::open(broker.addr).await;
    ws.send_text("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    ws.read_frame().await.expect("CONNECTED");
    let mut frame = b"SUBSCRIBE\nid:0\ndestination:/topic/a\nreceipt:r\nbig:".to_vec();
    frame.extend(std::iter::repeat_n(b'v', 7_000));
    frame.extend_from_slice(b"\n\n\0");
    ws.send_frame(OP_BINARY, &frame).await;
    let (_, receipt) = ws.read_frame().await.expect("RECEIPT");
    assert!(
        receipt.starts_with(b"RECEIPT"),
        "{}",
        String::from_utf8_lossy(&receipt)
    );
    still_serving(&broker, &mut by).await;
}

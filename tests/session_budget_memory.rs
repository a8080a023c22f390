//! 200 anonymous sessions (default settings, `client-send deny`) each do
//! their worst with what the broker stores for them: 64 subscriptions with
//! 256-byte ids to 64 distinct 256-byte destinations, open transactions up
//! to `max-transaction-frames` (BEGINs with 256-byte ids) holding ACKs with
//! about 230 KB of headers. The broker's RSS grows by less than 200 times
//! what SECURITY.md says one session can make it hold (its outbound queue
//! aside: that bound is measured by tests/slow_consumer_memory.rs).
//!
//! Alone in its own test binary, so no other test's allocations are measured.

mod common;
mod raw;

use common::{config, start};
use raw::RawWs;
use stompede::Config;

const SESSIONS: usize = 200;
/// ACKs held in one session's transaction, ~57 KB of headers each.
const HEAVY_ACKS: usize = 4;
const HEADERS_PER_ACK: usize = 60;
const HEADER_VALUE_BYTES: usize = 950;

/// SECURITY.md's "what one session can make the broker hold", outbound
/// queue and pending writes aside: read buffer, one WebSocket message, one
/// frame being decoded, transactions, subscriptions, the connection itself.
fn session_budget(config: &Config) -> usize {
    const CONNECTION_BYTES: usize = 16 * 1024;
    const PER_HELD_FRAME: usize = 256;
    const PER_SUBSCRIPTION: usize = 1024;
    config.ws_read_buffer_bytes
        + config.ws_max_message_bytes()
        + config.max_frame_bytes
        + config.max_transaction_bytes
        + config.max_transaction_frames * (config.max_id_bytes + PER_HELD_FRAME)
        + config.max_subscriptions_per_session * (2 * config.max_id_bytes + PER_SUBSCRIPTION)
        + CONNECTION_BYTES
}

/// A `len`-byte string unique to (`session`, `index`).
fn unique(prefix: &str, session: usize, index: usize, len: usize) -> String {
    let head = format!("{prefix}{session}.{index}.");
    format!("{head}{}", "x".repeat(len - head.len()))
}

async fn do_its_worst(reader: &mut RawWs, session: usize, config: &Config) {
    reader.send_text("CONNECT\n\n\0").await; // STOMP 1.0: ACK by message-id
    reader.read_frame().await.expect("CONNECTED");
    let id_bytes = config.max_id_bytes;
    for index in 0..config.max_subscriptions_per_session {
        let id = unique("s", session, index, id_bytes);
        let destination = unique("/topic/", session, index, 256);
        reader
            .send_text(&format!(
                "SUBSCRIBE\nid:{id}\ndestination:{destination}\n\n\0"
            ))
            .await;
    }
    let first = unique("t", session, 0, id_bytes);
    reader
        .send_text(&format!("BEGIN\ntransaction:{first}\n\n\0"))
        .await;
    let value = "v".repeat(HEADER_VALUE_BYTES);
    for ack in 0..HEAVY_ACKS {
        let mut frame = format!("ACK\nmessage-id:m{ack}\ntransaction:{first}\n");
        for header in 0..HEADERS_PER_ACK {
            frame.push_str(&format!("x-h{header}:{value}\n"));
        }
        frame.push_str("\n\0");
        reader.send_text(&frame).await;
    }
    for index in 1..config.max_transaction_frames - HEAVY_ACKS {
        let transaction = unique("t", session, index, id_bytes);
        reader
            .send_text(&format!("BEGIN\ntransaction:{transaction}\n\n\0"))
            .await;
    }
    reader
        .send_text("ACK\nmessage-id:m\nreceipt:sync\n\n\0")
        .await;
    let (_, reply) = reader.read_frame().await.expect("RECEIPT");
    assert!(
        reply.starts_with(b"RECEIPT"),
        "session {session}: {}",
        String::from_utf8_lossy(&reply)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_at_their_worst_stay_within_the_documented_budget() {
    let config = config();
    let budget = session_budget(&config);
    let broker = start(config.clone()).await;
    // Warm up the allocator and the runtime with one session, then measure.
    let mut warm = RawWs::open(broker.addr).await;
    do_its_worst(&mut warm, SESSIONS, &config).await;

    let before = common::rss_bytes();
    let mut sessions = Vec::new();
    for session in 0..SESSIONS {
        let mut reader = RawWs::open(broker.addr).await;
        do_its_worst(&mut reader, session, &config).await;
        sessions.push(reader);
    }
    let grown = common::rss_bytes().saturating_sub(before);
    assert_eq!(
        broker.broker.destination_count(),
        (SESSIONS + 1) * config.max_subscriptions_per_session
    );
    eprintln!(
        "{SESSIONS} sessions grew RSS by {} KiB ({} KiB each); budget {} KiB each",
        grown >> 10,
        (grown / SESSIONS) >> 10,
        budget >> 10
    );
    assert!(
        grown < SESSIONS * budget,
        "RSS grew by {} MiB, over {SESSIONS} x {} KiB",
        grown >> 20,
        budget >> 10
    );
}

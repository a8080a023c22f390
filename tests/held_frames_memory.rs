//! What the broker keeps of a client's frame beyond handling it (a SEND held
//! in a transaction, a SEND's body queued in subscribers' outboxes) is a
//! right-sized copy, not a view that keeps the whole WebSocket message it
//! arrived in alive.
//!
//! Each frame here is a tiny SEND followed by ~60 KB of heart-beat EOLs in
//! the same WebSocket message: before, every held SEND kept its ~60 KB read
//! buffer, so 10 sessions holding 250 each grew the process by ~150 MiB.
//!
//! Alone in its own test binary, so no other test's allocations are measured.

mod common;

use common::{config, start};
use futures_util::SinkExt;
use stompede::config::ClientSend;
use stompede_protocol::Command;
use tokio_tungstenite::tungstenite::Message;

const SESSIONS: usize = 10;
const HELD: usize = 250;
const PADDING: usize = 60_000;
/// What the held frames may really cost (~100 bytes each), plus slack for
/// the sessions' buffers and the allocator.
const ALLOWED_GROWTH: usize = 24 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_frames_do_not_keep_their_read_buffers() {
    let mut config = config();
    config.client_send = ClientSend::Allow;
    config.max_sends_per_second = 1e9;
    config.send_burst = 1_000_000;
    let broker = start(config).await;
    let padding = "\n".repeat(PADDING);

    // Warm up: one session through the same motions, so the allocator and
    // the runtime have their steady-state arenas before the measurement.
    let mut warm = broker.connected().await;
    warm.send("BEGIN\ntransaction:t\n\n\0").await;
    warm.send(&format!(
        "SEND\ndestination:/topic/a\ntransaction:t\n\nx\0{padding}"
    ))
    .await;
    warm.send("ABORT\ntransaction:t\nreceipt:w\n\n\0").await;
    assert_eq!(warm.frame().await.command, Command::Receipt);

    let before = common::rss_bytes();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let mut client = broker.connected().await;
        client.send("BEGIN\ntransaction:t\n\n\0").await;
        for _ in 0..HELD {
            let frame = format!("SEND\ndestination:/topic/a\ntransaction:t\n\nx\0{padding}");
            client.ws.send(Message::text(frame)).await.unwrap();
        }
        client
            .send("SUBSCRIBE\nid:0\ndestination:/topic/b\nreceipt:held\n\n\0")
            .await;
        let receipt = client.frame().await;
        assert_eq!(receipt.command, Command::Receipt, "{receipt:?}");
        sessions.push(client);
    }
    let grown = common::rss_bytes().saturating_sub(before);
    eprintln!("RSS grew by {} KiB", grown >> 10);
    assert!(
        grown < ALLOWED_GROWTH,
        "{SESSIONS} sessions holding {HELD} small SENDs each grew RSS by {} MiB",
        grown >> 20
    );
}

//! Reading history headers and resuming, for tests/history.rs and
//! tests/cluster_history.rs.

use super::Client;
use stompede_protocol::{Command, Frame};

pub fn offset(frame: &Frame) -> u64 {
    frame
        .headers
        .get("x-offset")
        .unwrap_or_else(|| panic!("no x-offset in {frame:?}"))
        .parse()
        .expect("x-offset is a number")
}

pub fn epoch(frame: &Frame) -> String {
    frame
        .headers
        .get("x-epoch")
        .unwrap_or_else(|| panic!("no x-epoch in {frame:?}"))
        .to_owned()
}

pub fn offsets(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(offset).collect()
}

/// SUBSCRIBE to `destination` with `extra` headers and `receipt:r-{id}`;
/// returns the RECEIPT and the MESSAGEs replayed from history, which come
/// before it (by the RECEIPT the subscriber is caught up).
pub async fn subscribe_replaying(
    client: &mut Client,
    destination: &str,
    id: &str,
    extra: &str,
) -> (Frame, Vec<Frame>) {
    client
        .send(&format!(
            "SUBSCRIBE\nid:{id}\ndestination:{destination}\nreceipt:r-{id}\n{extra}\n\0"
        ))
        .await;
    let mut replayed = Vec::new();
    loop {
        let frame = client.frame().await;
        if frame.command == Command::Message {
            replayed.push(frame);
            continue;
        }
        assert_eq!(frame.command, Command::Receipt, "{frame:?}");
        assert_eq!(frame.headers.get("receipt-id"), Some(&*format!("r-{id}")));
        return (frame, replayed);
    }
}

/// The next `count` MESSAGEs.
pub async fn messages(client: &mut Client, count: usize) -> Vec<Frame> {
    let mut messages = Vec::with_capacity(count);
    while messages.len() < count {
        let frame = client.frame().await;
        assert_eq!(frame.command, Command::Message, "{frame:?}");
        messages.push(frame);
    }
    messages
}

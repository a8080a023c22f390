//! The fan-out writes straight into an idle connection's socket, and the
//! connection's own writer takes over when it cannot (a full socket, a
//! frame taken in part, its own replies and pongs). A real client must see
//! one clean stream either way.

mod common;

use common::{config, start};
use futures_util::SinkExt;
use stompede_protocol::{Command, Decoder, Headers, Item, Limits};
use tokio_tungstenite::tungstenite::Message;

/// Small messages, a large one now and then (more than the socket takes
/// while the client is not reading), pings and frames with receipts in
/// between, and the client reading only every other round: every MESSAGE
/// arrives whole and in order, every RECEIPT and pong too, and both the
/// direct and the queued path were taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_queued_writes_make_one_clean_stream() {
    let mut config = config();
    config.max_frame_bytes = 1 << 20;
    config.outbound_queue_frames = 100_000;
    config.outbound_queue_bytes = 256 << 20;
    let broker = start(config).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:s\ndestination:/topic/direct\nreceipt:r-start\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);

    let mut reader = Reader::new();
    let mut published = Vec::new();
    const ROUNDS: usize = 40;
    for round in 0..ROUNDS {
        for small in 0..5 {
            published.push(publish(&broker, published.len(), 40 + small * 30).await);
        }
        if round % 4 == 1 {
            published.push(publish(&broker, published.len(), 700_000).await);
        }
        client
            .ws
            .send(Message::Ping(vec![round as u8].into()))
            .await
            .unwrap();
        client
            .send(&format!(
                "SUBSCRIBE\nid:other-{round}\ndestination:/topic/other\nreceipt:r{round}\n\n\0"
            ))
            .await;
        if round % 2 == 0 {
            reader
                .read_until(&mut client, published.len(), round + 1, round + 1)
                .await;
        } else {
            // Idle a moment, so the connection hands its socket over again.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    reader
        .read_until(&mut client, published.len(), ROUNDS, ROUNDS)
        .await;

    assert_eq!(reader.bodies.len(), published.len());
    for (seq, (body, expected_len)) in reader.bodies.iter().zip(&published).enumerate() {
        assert_eq!(body.len(), *expected_len, "message {seq}: its length");
        assert_eq!(
            body,
            &body_of(seq, *expected_len),
            "message {seq}: its bytes"
        );
    }
    let expected_receipts: Vec<String> = (0..ROUNDS).map(|round| format!("r{round}")).collect();
    assert_eq!(reader.receipts, expected_receipts, "receipts in order");
    assert_eq!(
        reader.pongs,
        (0..ROUNDS as u8).collect::<Vec<_>>(),
        "pongs in order"
    );

    let metrics = broker.broker.metrics();
    let direct = metrics.messages_delivered_direct.get();
    let all = metrics.messages_delivered.get();
    assert_eq!(all, published.len() as u64);
    assert!(direct > 0, "no message was written directly");
    assert!(
        direct < all,
        "every message was written directly: the task never took over"
    );
}

/// Message `seq`'s body: its number, then a pattern that shows any
/// foreign or missing byte.
fn body_of(seq: usize, len: usize) -> Vec<u8> {
    let mut body = format!("{seq}:").into_bytes();
    body.extend((0..len.saturating_sub(body.len())).map(|i| b'a' + ((i + seq) % 26) as u8));
    body.truncate(len);
    body
}

async fn publish(broker: &common::TestBroker, seq: usize, len: usize) -> usize {
    let body = bytes::Bytes::from(body_of(seq, len));
    broker
        .publish_direct("/topic/direct", &Headers::new(), body)
        .await;
    len
}

/// What the client has read so far, in order.
struct Reader {
    decoder: Decoder,
    buffer: bytes::BytesMut,
    bodies: Vec<bytes::Bytes>,
    receipts: Vec<String>,
    pongs: Vec<u8>,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            decoder: Decoder::new(Limits {
                max_body_bytes: 2 << 20,
                max_frame_bytes: 3 << 20,
                ..Limits::default()
            }),
            buffer: bytes::BytesMut::new(),
            bodies: Vec::new(),
            receipts: Vec::new(),
            pongs: Vec::new(),
        }
    }

    /// Reads until `messages` MESSAGEs, `receipts` RECEIPTs and `pongs` pongs have come.
    async fn read_until(
        &mut self,
        client: &mut common::Client,
        messages: usize,
        receipts: usize,
        pongs: usize,
    ) {
        while self.bodies.len() < messages
            || self.receipts.len() < receipts
            || self.pongs.len() < pongs
        {
            match client.message().await.expect("the connection stays open") {
                Message::Pong(payload) => self.pongs.push(payload[0]),
                Message::Text(text) => self.buffer.extend_from_slice(text.as_bytes()),
                Message::Binary(bytes) => self.buffer.extend_from_slice(&bytes),
                other => panic!("unexpected {other:?}"),
            }
            while let Some(item) = self
                .decoder
                .decode(&mut self.buffer)
                .expect("frames decode")
            {
                let Item::Frame(frame) = item else { continue };
                match frame.command {
                    Command::Message => {
                        assert_eq!(frame.headers.get("subscription"), Some("s"));
                        self.bodies.push(frame.body);
                    }
                    Command::Receipt => self
                        .receipts
                        .push(frame.headers.get("receipt-id").unwrap().to_owned()),
                    _ => panic!("unexpected {frame:?}"),
                }
            }
        }
    }
}

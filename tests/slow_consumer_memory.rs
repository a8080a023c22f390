//! A subscriber that never reads while tens of megabytes are published to its
//! destination: it is disconnected as a slow consumer, the broker's memory
//! (this process's RSS: the broker runs in-process) grows by no more than a
//! bound derived from its outbound queue limit, and a healthy subscriber of
//! the same destination receives every message.
//!
//! Alone in its own test binary, so no other test's allocations are measured.

mod common;
mod raw;

use bytes::Bytes;
use common::{config, start};
use raw::RawWs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stompede_protocol::{Command, Headers};

const DESTINATION: &str = "/topic/firehose";
const MESSAGE_BYTES: usize = 60_000;
const MESSAGES: usize = 640; // about 37 MiB in all
/// Queue limit for this test.
const QUEUE_BYTES: usize = 1 << 20;
/// What the process may grow by besides the slow subscriber's full queue:
/// the healthy subscriber's buffers, tungstenite's, one message being
/// written, allocator slack. Far less than what was published.
const SLACK_BYTES: usize = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_cut_off_and_memory_stays_bounded() {
    let mut config = config();
    config.outbound_queue_bytes = QUEUE_BYTES;
    config.heartbeat.can_send = Duration::ZERO;
    // What is measured is the queue's bound; the history's (history-size
    // messages, 6 MB of these) is another, measured in tests/history.rs and
    // examples/history_memory.rs.
    config.history_size = 0;
    let broker = start(config).await;

    // The slow one: subscribes, then never reads another byte.
    let mut slow = RawWs::open(broker.addr).await;
    slow.send_text("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    slow.read_frame().await.expect("CONNECTED");
    slow.send_text(&format!(
        "SUBSCRIBE\nid:slow\ndestination:{DESTINATION}\nreceipt:r\n\n\0"
    ))
    .await;
    slow.read_frame().await.expect("RECEIPT");

    // The healthy one reads everything in its own task.
    let mut healthy = broker.connected().await;
    healthy
        .send(&format!(
            "SUBSCRIBE\nid:ok\ndestination:{DESTINATION}\nreceipt:r\n\n\0"
        ))
        .await;
    assert_eq!(healthy.frame().await.command, Command::Receipt);
    let received = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            while let Some(frame) = healthy.next_frame().await {
                assert_eq!(frame.command, Command::Message, "{frame:?}");
                assert_eq!(frame.body.len(), MESSAGE_BYTES);
                if received.fetch_add(1, Ordering::SeqCst) + 1 == MESSAGES {
                    // Hand the client back so it stays subscribed until the end.
                    return healthy;
                }
            }
            panic!("the healthy subscriber was disconnected");
        }
    });

    // Once the broker marks it a slow consumer, the slow one reads at once
    // (the broker gives the ERROR a second to get out): what its socket held,
    // then the ERROR, then the close.
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
            let (data, code) = slow.until_close().await;
            let bytes: usize = data.iter().map(Vec::len).sum();
            let last = data
                .last()
                .map(|payload| String::from_utf8_lossy(payload).into_owned());
            (bytes, last, code)
        }
    });

    let headers = Headers::new();
    let baseline = common::rss_bytes();
    let mut peak = baseline;
    for sent in 1..=MESSAGES {
        // A fresh body each time, as real comments are: a queue that kept them
        // would show in the RSS.
        let body = Bytes::from(vec![b'a' + (sent % 26) as u8; MESSAGE_BYTES]);
        let message =
            broker
                .broker
                .publication(vec![DESTINATION.into()], headers.clone(), body, None);
        broker.broker.publish(&message).await.unwrap();
        // Keep pace with the healthy reader, so only the slow one falls behind.
        let deadline = tokio::time::Instant::now() + common::PATIENCE;
        while received.load(Ordering::SeqCst) + 8 < sent {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the healthy subscriber stalled at {sent}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        peak = peak.max(common::rss_bytes());
    }
    let _healthy = tokio::time::timeout(common::PATIENCE, reader)
        .await
        .expect("the healthy subscriber got everything")
        .unwrap();
    assert_eq!(received.load(Ordering::SeqCst), MESSAGES);

    let growth = peak.saturating_sub(baseline);
    let published = MESSAGES * MESSAGE_BYTES;
    eprintln!("published {published} bytes; RSS grew by {growth} bytes (baseline {baseline})");
    assert!(
        growth <= QUEUE_BYTES + SLACK_BYTES,
        "RSS grew by {growth} bytes, more than the queue bound {QUEUE_BYTES} + slack {SLACK_BYTES}"
    );

    // The slow subscriber is gone from the destination, and its connection
    // ended with the ERROR and close code 1008 before everything was sent.
    broker.wait_for_subscribers(DESTINATION, 1).await;
    let (bytes, last, code) = tokio::time::timeout(Duration::from_secs(60), slow_reader)
        .await
        .expect("the slow subscriber's connection ends")
        .unwrap();
    assert!(
        bytes < published,
        "the slow subscriber was sent everything ({bytes} bytes)"
    );
    let last = last.expect("the slow subscriber got at least the ERROR");
    assert!(
        last.starts_with("ERROR\n") && last.contains("slow consumer"),
        "the last frame is not the slow consumer ERROR: {last:.200}"
    );
    assert_eq!(code, Some(1008));
}

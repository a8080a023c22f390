//! Offsets, epochs, history and resume (memory engine), over plain STOMP
//! frames against a broker on 127.0.0.1:0.

mod common;

use common::history::{self, epoch, messages, offset};
use common::{config, start, Client, TestBroker};
use std::time::Duration;
use stompede::config::{Config, SlowConsumerPolicy};
use stompede_protocol::{Command, Frame};

const DESTINATION: &str = "/topic/comments.1";

/// SUBSCRIBE with `extra` headers and a receipt; returns the RECEIPT.
/// Messages replayed from history come before it: they are left for
/// `messages` to read.
async fn subscribe(client: &mut Client, id: &str, extra: &str) -> Frame {
    let (receipt, replayed) = subscribe_replaying(client, id, extra).await;
    for frame in replayed.into_iter().rev() {
        client.unread.push_front(frame);
    }
    receipt
}

async fn subscribe_replaying(client: &mut Client, id: &str, extra: &str) -> (Frame, Vec<Frame>) {
    history::subscribe_replaying(client, DESTINATION, id, extra).await
}

fn body(frame: &Frame) -> String {
    String::from_utf8(frame.body.to_vec()).expect("a text body")
}

async fn publish_numbered(broker: &TestBroker, range: std::ops::RangeInclusive<u64>) {
    for n in range {
        broker.publish(DESTINATION, &format!("comment {n}")).await;
    }
}

fn with_history_size(size: usize) -> Config {
    Config {
        history_size: size,
        ..config()
    }
}

#[tokio::test]
async fn every_message_carries_its_offset_and_epoch_and_a_receipt_says_where_history_stands() {
    let broker = start(config()).await;
    let mut reader = broker.connected().await;
    let receipt = subscribe(&mut reader, "0", "").await;
    assert_eq!(receipt.headers.get("x-offset"), Some("0"), "{receipt:?}");
    let first_epoch = epoch(&receipt);
    assert!(
        receipt.headers.get("x-recovered").is_none(),
        "only a resume says whether it recovered"
    );
    publish_numbered(&broker, 1..=3).await;
    let got = messages(&mut reader, 3).await;
    assert_eq!(got.iter().map(offset).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(got.iter().all(|message| epoch(message) == first_epoch));
    assert_eq!(body(&got[2]), "comment 3");

    // Offsets count per destination.
    broker.publish("/topic/other", "elsewhere").await;
    let mut other = broker.connected().await;
    other
        .send("SUBSCRIBE\nid:9\ndestination:/topic/other\nreceipt:r\n\n\0")
        .await;
    let receipt = other.frame().await;
    assert_eq!(receipt.headers.get("x-offset"), Some("1"), "{receipt:?}");
    assert_ne!(
        epoch(&receipt),
        first_epoch,
        "each destination has its own epoch"
    );
}

#[tokio::test]
async fn a_resume_gets_exactly_the_messages_it_missed_then_live_ones() {
    let broker = start(config()).await;
    let mut reader = broker.connected().await;
    subscribe(&mut reader, "0", "").await;
    publish_numbered(&broker, 1..=3).await;
    let seen = messages(&mut reader, 3).await;
    let (last, epoch_seen) = (offset(&seen[2]), epoch(&seen[2]));
    drop(reader);
    broker.wait_for_subscribers(DESTINATION, 0).await;

    publish_numbered(&broker, 4..=8).await;
    let mut back = broker.connected().await;
    let receipt = subscribe(
        &mut back,
        "0",
        &format!("x-since-offset:{last}\nx-since-epoch:{epoch_seen}\n"),
    )
    .await;
    assert_eq!(
        receipt.headers.get("x-recovered"),
        Some("true"),
        "{receipt:?}"
    );
    assert_eq!(receipt.headers.get("x-offset"), Some("8"));
    assert_eq!(epoch(&receipt), epoch_seen);
    let missed = messages(&mut back, 5).await;
    assert_eq!(
        missed.iter().map(offset).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8]
    );
    assert_eq!(body(&missed[0]), "comment 4");
    assert!(missed
        .iter()
        .all(|m| m.headers.get("subscription") == Some("0")));

    publish_numbered(&broker, 9..=9).await;
    let live = messages(&mut back, 1).await;
    assert_eq!(offset(&live[0]), 9);
}

#[tokio::test]
async fn a_resume_from_every_position_recovers_exactly_when_history_covers_it() {
    let broker = start(with_history_size(5)).await;
    publish_numbered(&broker, 1..=10).await;
    let mut probe = broker.connected().await;
    let current = epoch(&subscribe(&mut probe, "probe", "").await);
    drop(probe);

    // History holds 6..=10: resuming after 5..=10 works, after 0..=4 does
    // not, and after 11 (an offset never given) does not either.
    for after in 0..=11u64 {
        let mut client = broker.connected().await;
        let receipt = subscribe(
            &mut client,
            "s",
            &format!("x-since-offset:{after}\nx-since-epoch:{current}\n"),
        )
        .await;
        let recoverable = (5..=10).contains(&after);
        assert_eq!(
            receipt.headers.get("x-recovered"),
            Some(if recoverable { "true" } else { "false" }),
            "after {after}: {receipt:?}"
        );
        assert_eq!(receipt.headers.get("x-offset"), Some("10"));
        assert_eq!(epoch(&receipt), current);
        let expected: Vec<u64> = if recoverable {
            (after + 1..=10).collect()
        } else {
            Vec::new()
        };
        let replayed = messages(&mut client, expected.len()).await;
        let offsets: Vec<u64> = replayed.iter().map(offset).collect();
        assert_eq!(offsets, expected, "after {after}");
        client.send("DISCONNECT\nreceipt:bye\n\n\0").await;
        let bye = client.frame().await;
        assert_eq!(
            bye.command,
            Command::Receipt,
            "nothing more was replayed: {bye:?}"
        );
    }

    // Another epoch's offsets are never taken for this one's.
    let mut client = broker.connected().await;
    let receipt = subscribe(
        &mut client,
        "s",
        "x-since-offset:7\nx-since-epoch:someone-else.1\n",
    )
    .await;
    assert_eq!(receipt.headers.get("x-recovered"), Some("false"));
    client.send("DISCONNECT\nreceipt:bye\n\n\0").await;
    assert_eq!(
        client.frame().await.command,
        Command::Receipt,
        "nothing was replayed"
    );

    // After the replay, the live stream follows with nothing in between.
    let mut client = broker.connected().await;
    subscribe(
        &mut client,
        "s",
        &format!("x-since-offset:7\nx-since-epoch:{current}\n"),
    )
    .await;
    publish_numbered(&broker, 11..=12).await;
    let got = messages(&mut client, 5).await;
    assert_eq!(
        got.iter().map(offset).collect::<Vec<_>>(),
        [8, 9, 10, 11, 12]
    );
    assert_eq!(body(&got[4]), "comment 12");
}

#[tokio::test]
async fn x_history_gives_the_last_messages_then_live_ones_clamped_to_history_size() {
    let broker = start(with_history_size(5)).await;
    publish_numbered(&broker, 1..=8).await;

    let mut reader = broker.connected().await;
    let receipt = subscribe(&mut reader, "a", "x-history:3\n").await;
    assert_eq!(receipt.headers.get("x-offset"), Some("8"));
    let last = messages(&mut reader, 3).await;
    assert_eq!(last.iter().map(offset).collect::<Vec<_>>(), [6, 7, 8]);

    let mut greedy = broker.connected().await;
    subscribe(&mut greedy, "b", "x-history:1000000\n").await;
    let clamped = messages(&mut greedy, 5).await;
    assert_eq!(
        clamped.iter().map(offset).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8]
    );

    publish_numbered(&broker, 9..=9).await;
    assert_eq!(offset(&messages(&mut reader, 1).await[0]), 9);
    assert_eq!(offset(&messages(&mut greedy, 1).await[0]), 9);

    // A resume that cannot be served falls back to x-history when asked.
    let mut fallback = broker.connected().await;
    let receipt = subscribe(
        &mut fallback,
        "c",
        "x-since-offset:1\nx-since-epoch:gone.1\nx-history:2\n",
    )
    .await;
    assert_eq!(receipt.headers.get("x-recovered"), Some("false"));
    let last = messages(&mut fallback, 2).await;
    assert_eq!(last.iter().map(offset).collect::<Vec<_>>(), [8, 9]);
}

#[tokio::test]
async fn bad_history_headers_get_an_error_that_says_what_is_wrong() {
    let broker = start(config()).await;
    let cases = [
        (
            "x-since-offset:abc\nx-since-epoch:e\n",
            "x-since-offset must be a whole number",
        ),
        (
            "x-since-offset:-1\nx-since-epoch:e\n",
            "x-since-offset must be a whole number",
        ),
        (
            "x-since-offset:99999999999999999999999\nx-since-epoch:e\n",
            "x-since-offset must be a whole number",
        ),
        ("x-since-offset:3\n", "x-since-offset needs x-since-epoch"),
        ("x-since-epoch:e\n", "x-since-epoch needs x-since-offset"),
        ("x-history:many\n", "x-history must be a whole number"),
        ("x-history:-5\n", "x-history must be a whole number"),
    ];
    for (headers, expected) in cases {
        let mut client = broker.connected().await;
        client
            .send(&format!(
                "SUBSCRIBE\nid:0\ndestination:{DESTINATION}\nreceipt:r\n{headers}\n\0"
            ))
            .await;
        let frame = client.frame().await;
        assert_eq!(frame.command, Command::Error, "{headers:?}: {frame:?}");
        let message = frame.headers.get("message").unwrap_or_default();
        assert!(message.contains(expected), "{headers:?}: {message}");
        assert_eq!(frame.headers.get("receipt-id"), Some("r"));
        client.expect_closed().await;
    }
    assert_eq!(broker.broker.subscriber_count(DESTINATION), 0);
}

/// Readers drop their connection at different points while comments are
/// published as fast as the broker takes them; each resumes from the last
/// offset it saw and must end with every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_racing_a_stream_of_publishes_lose_and_repeat_nothing() {
    const TOTAL: u64 = 400;
    const READERS: u64 = 8;
    let broker = std::sync::Arc::new(start(with_history_size(1000)).await);
    let mut readers = Vec::new();
    for reader in 0..READERS {
        let mut client = broker.connected().await;
        subscribe(&mut client, "0", "").await;
        let broker = broker.clone();
        readers.push(tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            // Each reader drops out twice, at points spread over the stream.
            let mut drops = vec![(reader + 1) * TOTAL / (READERS + 2), TOTAL - 10 - reader];
            drops.sort_unstable();
            drops.reverse();
            while seen.last().copied().unwrap_or(0) < TOTAL {
                let frame = client.frame().await;
                assert_eq!(frame.command, Command::Message, "{frame:?}");
                let at = offset(&frame);
                let epoch_seen = epoch(&frame);
                seen.push(at);
                if drops.last() == Some(&at) {
                    drops.pop();
                    drop(client);
                    client = broker.connected().await;
                    let receipt = subscribe(
                        &mut client,
                        "0",
                        &format!("x-since-offset:{at}\nx-since-epoch:{epoch_seen}\n"),
                    )
                    .await;
                    assert_eq!(
                        receipt.headers.get("x-recovered"),
                        Some("true"),
                        "{receipt:?}"
                    );
                }
            }
            seen
        }));
    }
    broker
        .wait_for_subscribers(DESTINATION, READERS as usize)
        .await;
    for n in 1..=TOTAL {
        broker
            .publish_direct(
                DESTINATION,
                &stompede_protocol::Headers::new(),
                bytes::Bytes::from(format!("comment {n}")),
            )
            .await;
        if n % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for reader in readers {
        let seen = tokio::time::timeout(Duration::from_secs(30), reader)
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

#[tokio::test]
async fn messages_expire_after_the_ttl_but_the_offset_and_epoch_stay() {
    let broker = start(Config {
        history_ttl: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut reader = broker.connected().await;
    subscribe(&mut reader, "0", "").await;
    publish_numbered(&broker, 1..=3).await;
    let seen = messages(&mut reader, 3).await;
    let epoch_seen = epoch(&seen[0]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut back = broker.connected().await;
    let receipt = subscribe(
        &mut back,
        "0",
        &format!("x-since-offset:1\nx-since-epoch:{epoch_seen}\n"),
    )
    .await;
    assert_eq!(
        receipt.headers.get("x-recovered"),
        Some("false"),
        "expired: {receipt:?}"
    );
    assert_eq!(
        receipt.headers.get("x-offset"),
        Some("3"),
        "the offset outlives the messages"
    );
    assert_eq!(epoch(&receipt), epoch_seen, "and so does the epoch");
    // Nothing missed, nothing to replay: still recovered.
    let mut caught_up = broker.connected().await;
    let receipt = subscribe(
        &mut caught_up,
        "0",
        &format!("x-since-offset:3\nx-since-epoch:{epoch_seen}\n"),
    )
    .await;
    assert_eq!(receipt.headers.get("x-recovered"), Some("true"));
    publish_numbered(&broker, 4..=4).await;
    assert_eq!(offset(&messages(&mut back, 1).await[0]), 4);
    assert_eq!(offset(&messages(&mut caught_up, 1).await[0]), 4);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

async fn metrics_text(broker: &TestBroker) -> String {
    let (status, text) = common::http_raw(broker.addr, "GET", "/metrics", None, &[]).await;
    assert_eq!(status, 200);
    String::from_utf8(text).expect("the text format is UTF-8")
}

#[tokio::test]
async fn past_history_max_bytes_the_least_recently_published_destinations_are_forgotten() {
    const MAX_BYTES: usize = 64 * 1024;
    let broker = start(Config {
        history_max_bytes: MAX_BYTES,
        ..config()
    })
    .await;
    publish_numbered(&broker, 1..=2).await;
    let mut probe = broker.connected().await;
    let old_epoch = epoch(&subscribe(&mut probe, "p", "").await);
    probe.send("UNSUBSCRIBE\nid:p\n\n\0").await;

    // 100 other destinations of 1 KiB comments: over four times the budget.
    let comment = "c".repeat(1024);
    for n in 0..100 {
        let destination = format!("/topic/comments.other{n}");
        for _ in 0..3 {
            broker.publish(&destination, &comment).await;
        }
    }
    let text = metrics_text(&broker).await;
    let held = metric(&text, "stompede_history_bytes");
    assert!(
        held <= MAX_BYTES as f64,
        "history holds {held} bytes, over {MAX_BYTES}"
    );
    assert!(
        held > (MAX_BYTES / 2) as f64,
        "it is used, not emptied: {held}"
    );
    assert!(metric(&text, "stompede_history_evicted_destinations_total") >= 70.0);

    // The oldest destination was forgotten whole: a new epoch, offsets from 1.
    let mut reader = broker.connected().await;
    let receipt = subscribe(
        &mut reader,
        "0",
        &format!("x-since-offset:2\nx-since-epoch:{old_epoch}\n"),
    )
    .await;
    assert_eq!(receipt.headers.get("x-recovered"), Some("false"));
    assert_eq!(receipt.headers.get("x-offset"), Some("0"));
    assert_ne!(epoch(&receipt), old_epoch);
    publish_numbered(&broker, 1..=1).await;
    let fresh = messages(&mut reader, 1).await;
    assert_eq!(offset(&fresh[0]), 1);
    assert_ne!(epoch(&fresh[0]), old_epoch);
}

#[tokio::test]
async fn a_subscriber_that_lost_messages_under_slow_consumer_drop_sees_x_gap() {
    let broker = start(Config {
        slow_consumer: SlowConsumerPolicy::Drop,
        outbound_queue_frames: 8,
        ..config()
    })
    .await;
    let mut reader = broker.connected().await;
    subscribe(&mut reader, "0", "").await;
    // The reader reads nothing meanwhile: the socket's buffers fill, then its queue.
    let comment = "c".repeat(16 * 1024);
    let mut published = 0u64;
    while metric(
        &metrics_text(&broker).await,
        "stompede_slow_consumer_drops_total",
    ) < 5.0
    {
        for _ in 0..50 {
            broker.publish(DESTINATION, &comment).await;
            published += 1;
        }
        assert!(published < 5000, "nothing was ever dropped");
    }
    // Now it reads; "last" is published until one gets through.
    let reading = tokio::spawn(async move {
        let mut previous = 0;
        let mut gaps = 0;
        loop {
            let frame = messages(&mut reader, 1).await.remove(0);
            let at = offset(&frame);
            let marked = frame.headers.get("x-gap") == Some("true");
            assert_eq!(
                marked,
                at != previous + 1,
                "at {at} after {previous}: marked {marked}"
            );
            gaps += usize::from(marked);
            previous = at;
            if body(&frame) == "last" {
                return gaps;
            }
        }
    });
    for _ in 0..100 {
        if reading.is_finished() {
            break;
        }
        broker.publish(DESTINATION, "last").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gaps = reading
        .await
        .expect("the reader saw every message it got marked right");
    assert!(gaps >= 1, "{published} published, no gap seen");
}

#[tokio::test]
async fn a_publisher_cannot_set_the_history_headers() {
    let broker = start(config()).await;
    let mut reader = broker.connected().await;
    subscribe(&mut reader, "0", "").await;
    let request = serde_json::json!({
        "destination": DESTINATION,
        "body": "forged",
        "headers": {"x-offset": "999", "x-epoch": "forged", "x-gap": "true", "kept": "yes"},
    });
    let (status, _) = broker
        .http("POST", "/api/v1/publish", Some(&request.to_string()))
        .await;
    assert_eq!(status, 202);
    let message = messages(&mut reader, 1).await.remove(0);
    assert_eq!(offset(&message), 1);
    assert_ne!(epoch(&message), "forged");
    assert_eq!(message.headers.get("x-gap"), None);
    assert_eq!(message.headers.get("kept"), Some("yes"));
    let repeated = message
        .headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-"))
        .count();
    assert_eq!(repeated, 2, "one x-offset and one x-epoch: {message:?}");
}

#[tokio::test]
async fn the_http_api_reads_history() {
    let broker = start(with_history_size(5)).await;
    publish_numbered(&broker, 1..=7).await;
    let path = |query: &str| format!("/api/v1/history?destination=%2Ftopic%2Fcomments.1{query}");

    let (status, page) = broker.http("GET", &path(""), None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["offset"], 7);
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4, 5, 6, 7]);
    assert_eq!(page["messages"][4]["body"], "comment 7");
    assert_eq!(
        page["messages"][4]["headers"]["content-type"],
        "text/plain;charset=utf-8"
    );
    let epoch = page["epoch"].as_str().unwrap().to_owned();

    let (_, page) = broker
        .http(
            "GET",
            &path(&format!("&since=4&epoch={epoch}&limit=2")),
            None,
        )
        .await;
    assert_eq!(page["recovered"], true, "{page}");
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [5, 6]);

    let (_, page) = broker.http("GET", &path("&since=1"), None).await;
    assert_eq!(page["recovered"], false, "offset 2 is gone: {page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), 0);

    for (query, expected) in [
        ("&since=x", "since must be a whole number"),
        ("&limit=-1", "limit must be a whole number"),
        ("&colour=red", "unknown parameter"),
        ("&epoch=e", "epoch needs since"),
    ] {
        let (status, answer) = broker.http("GET", &path(query), None).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{query}: {answer}"
        );
    }
    let (status, _) = broker
        .http("GET", "/api/v1/history?destination=", None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = broker.http("POST", &path(""), Some("{}")).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn a_restarted_broker_starts_new_epochs() {
    let first = start(config()).await;
    publish_numbered(&first, 1..=1).await;
    let mut reader = first.connected().await;
    let before = epoch(&subscribe(&mut reader, "0", "").await);
    let second = start(config()).await;
    publish_numbered(&second, 1..=1).await;
    let mut reader = second.connected().await;
    let after = epoch(&subscribe(&mut reader, "0", "").await);
    assert_ne!(before, after);
}

#[tokio::test]
async fn a_replay_longer_than_the_outbound_queue_does_not_make_a_slow_consumer() {
    let broker = start(Config {
        history_size: 100,
        outbound_queue_frames: 4,
        outbound_queue_bytes: 4096,
        ..config()
    })
    .await;
    let comment = "c".repeat(1000);
    for _ in 0..100 {
        broker.publish(DESTINATION, &comment).await;
    }
    let mut reader = broker.connected().await;
    let (receipt, replayed) = subscribe_replaying(&mut reader, "0", "x-history:100\n").await;
    assert_eq!(receipt.headers.get("x-offset"), Some("100"));
    assert_eq!(
        replayed.iter().map(offset).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
    broker.publish(DESTINATION, "live").await;
    assert_eq!(body(&messages(&mut reader, 1).await[0]), "live");
}

//! The session fuzz target's checks, shared by the target
//! (`fuzz_targets/session.rs`) and the replay of its corpus in the root
//! crate's `tests/session_fuzz_corpus.rs`, so a saved input is checked exactly
//! as the fuzzer checked it. Arbitrary bytes go through the Decoder into
//! `Session::handle` against a real `Broker` (no sockets), checking that
//! - nothing panics, whatever the frames and their order;
//! - an ERROR reply always comes last and closes the session;
//! - a session never holds more subscriptions than `max-subscriptions-per-session`;
//! - the outbound queue never holds more than `outbound-queue-frames`;
//! - when the session ends, every subscription it made is gone from the registry.

use bytes::BytesMut;
use std::sync::{Arc, OnceLock};
use stompede::auth::{JwtVerifier, User};
use stompede::config::ClientSend;
use stompede::outbox::Outbox;
use stompede::session::{Flow, Session};
use stompede::{Broker, Config};
use stompede_protocol::{Command, Decoder, Item, Limits};

const MAX_SUBSCRIPTIONS: usize = 4;
const QUEUE_FRAMES: usize = 8;

/// Three brokers, one per authentication mode, built once.
fn brokers() -> &'static [Arc<Broker>; 3] {
    static BROKERS: OnceLock<[Arc<Broker>; 3]> = OnceLock::new();
    BROKERS.get_or_init(|| {
        let base = Config {
            client_send: ClientSend::Allow,
            max_subscriptions_per_session: MAX_SUBSCRIPTIONS,
            max_transaction_frames: 8,
            outbound_queue_frames: QUEUE_FRAMES,
            outbound_queue_bytes: 4096,
            max_sends_per_second: 1000.0,
            send_burst: 16,
            subscribe_prefixes: vec!["/topic/".into(), "/t".into()],
            send_prefixes: vec!["/topic/".into(), "/t".into()],
            ..Config::default()
        };
        let users = Config {
            users: vec![User {
                login: "u".into(),
                passcode: "p".into(),
            }],
            ..base.clone()
        };
        let jwt = Config {
            jwt: Some(Arc::new(JwtVerifier::hs256(b"fuzz"))),
            ..base.clone()
        };
        [
            Arc::new(Broker::new(base)),
            Arc::new(Broker::new(users)),
            Arc::new(Broker::new(jwt)),
        ]
    })
}

/// Runs one input through a session and checks it (panics on a violation).
pub fn check(data: &[u8]) {
    // First byte: which broker and the chunk size; the rest is the stream.
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let broker = brokers()[usize::from(control % 3)].clone();
    let chunk = usize::from(control / 3) % 23 + 1;

    let outbox = Arc::new(Outbox::new(QUEUE_FRAMES, 4096, None));
    let mut session = Session::new(broker.clone(), 1, outbox.clone());
    let limits = Limits {
        max_headers: 16,
        max_header_line: 256,
        max_body_bytes: 512,
        max_frame_bytes: 1024,
    };
    let mut decoder = Decoder::new(limits);
    let mut buffer = BytesMut::new();
    let mut replies = Vec::new();
    let mut destinations = Vec::new();
    let mut drained = std::collections::VecDeque::new();

    'stream: for piece in input.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            let frame = match decoder.decode(&mut buffer) {
                Ok(Some(Item::Frame(frame))) => frame,
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => break,
                Err(_) => break 'stream,
            };
            if frame.command == Command::Subscribe {
                if let Some(destination) = frame.headers.get("destination") {
                    destinations.push(destination.to_owned());
                }
            }
            let was_connected = session.version().is_some();
            let flow = session.handle(frame, &mut replies);
            if let Some(pending) = session.take_pending() {
                // The memory engine finishes a frame's work at once.
                let mut work = std::pin::pin!(broker.complete(pending));
                let mut context = std::task::Context::from_waker(std::task::Waker::noop());
                let done = std::future::Future::poll(work.as_mut(), &mut context);
                assert!(
                    matches!(done, std::task::Poll::Ready(Ok(_))),
                    "pending work did not finish at once: {done:?}"
                );
            }
            if let (false, Some(version)) = (was_connected, session.version()) {
                decoder.set_version(version);
            }
            assert!(
                session.subscription_count() <= MAX_SUBSCRIPTIONS,
                "too many subscriptions"
            );
            assert!(outbox.len() <= QUEUE_FRAMES, "outbox past its bound");
            if let Some(position) = replies
                .iter()
                .position(|reply| reply.command == Command::Error)
            {
                assert_eq!(
                    position,
                    replies.len() - 1,
                    "ERROR is not the last reply: {replies:?}"
                );
                let Flow::Refused(reason) = flow else {
                    panic!("ERROR without closing: {flow:?}")
                };
                assert!(
                    stompede::metrics::ErrorReason::ALL.contains(&reason),
                    "unlisted error reason {reason:?}"
                );
                assert!(
                    replies[position].headers.get("message").is_some(),
                    "ERROR without a message"
                );
            }
            replies.clear();
            // Drain like the writer does, sometimes, so the queue fills up too.
            if control & 0x80 == 0 {
                outbox.drain_into(&mut drained);
                drained.clear();
            }
            if flow != Flow::Continue {
                break 'stream;
            }
        }
    }
    drop(session);
    for destination in &destinations {
        assert_eq!(
            broker.subscriber_count(destination),
            0,
            "{destination:?} kept a subscriber"
        );
    }
}

//! Property tests: encoding then decoding is the identity, for arbitrary
//! frames, including arbitrary header text, in any chunking; and a
//! `PreparedMessage` decodes to the MESSAGE it stands for.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use stompede_protocol::{
    encode, encoded_len, Command, Frame, Headers, Item, Limits, PreparedMessage, Version,
};

/// Header text that `version` can carry for `command`: anything when the
/// command escapes headers on 1.2; on 1.1 no CR (it has no `\r` escape);
/// on 1.0 and in CONNECT/STOMP/CONNECTED (never escaped) no CR, no LF, and
/// no colon in names.
fn header_text(command: Command, version: Version, is_name: bool) -> BoxedStrategy<String> {
    let escaped = command.escapes_headers();
    let any = if is_name {
        "\\PC{0,12}|[\\\\:\\r\\n]{0,3}"
    } else {
        "\\PC{0,24}|.*[\\\\:\\r\\n].*"
    };
    match (escaped, version) {
        (true, Version::V1_2) => prop_oneof![any_string(), any.prop_map(String::from)].boxed(),
        _ => {
            let no_cr_in_v1_1 = escaped && version == Version::V1_1;
            any_string()
                .prop_map(move |s| {
                    s.chars()
                        .filter(|&c| {
                            if no_cr_in_v1_1 {
                                c != '\r'
                            } else {
                                c != '\r' && c != '\n' && !(is_name && c == ':')
                            }
                        })
                        .collect()
                })
                .boxed()
        }
    }
}

/// Any chars, with STOMP's special ones made likely.
fn any_string() -> BoxedStrategy<String> {
    vec(prop_oneof![3 => any::<char>(), 2 => prop::sample::select(vec!['\\', ':', '\n', '\r', 'c', 'n', ' ', '\0'])], 0..24)
        .prop_map(|chars| chars.into_iter().collect())
        .boxed()
}

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(vec![Version::V1_0, Version::V1_1, Version::V1_2])
}

fn command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

/// A frame `version` can carry, with the version.
fn frame_for(version: Version) -> impl Strategy<Value = Frame> {
    command().prop_flat_map(move |command| {
        let header = (
            header_text(command, version, true),
            header_text(command, version, false),
        );
        (vec(header, 0..8), vec(any::<u8>(), 0..64), Just(command)).prop_map(
            |(headers, body, command)| Frame {
                command,
                headers: headers.into_iter().collect(),
                body: Bytes::from(body),
            },
        )
    })
}

fn versioned_frames() -> impl Strategy<Value = (Version, Vec<Frame>)> {
    version().prop_flat_map(|v| (Just(v), vec(frame_for(v), 1..4)))
}

/// What the decoder gives back for `frame`: the encoder drops any
/// `content-length` header and writes the real one last when the body is
/// not empty; the decoder keeps it among the headers.
fn expected(frame: &Frame) -> Frame {
    let mut headers: Headers = frame
        .headers
        .iter()
        .filter(|(k, _)| *k != "content-length")
        .collect();
    if !frame.body.is_empty() {
        headers.push("content-length", frame.body.len().to_string());
    }
    Frame {
        command: frame.command,
        headers,
        body: frame.body.clone(),
    }
}

fn wide_limits() -> Limits {
    Limits {
        max_headers: 16,
        ..Limits::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_identity(
        (version, frame) in version().prop_flat_map(|v| (Just(v), frame_for(v))),
    ) {
        let mut out = BytesMut::new();
        encode(&frame, version, &mut out);
        prop_assert_eq!(out.len(), encoded_len(&frame, version));
        // Whole and byte by byte.
        for outcome in [decode_whole(&out, wide_limits(), version), decode_bytewise(&out, wide_limits(), version)] {
            prop_assert_eq!(outcome.end, Ok(0));
            prop_assert_eq!(outcome.items, vec![Item::Frame(expected(&frame))]);
        }
    }

    #[test]
    fn encode_then_decode_is_identity_for_v1_2(frame in frame_for(Version::V1_2)) {
        let mut out = BytesMut::new();
        encode(&frame, Version::V1_2, &mut out);
        prop_assert_eq!(out.len(), encoded_len(&frame, Version::V1_2));
        let outcome = decode_whole(&out, wide_limits(), Version::V1_2);
        prop_assert_eq!(outcome.end, Ok(0));
        prop_assert_eq!(outcome.items, vec![Item::Frame(expected(&frame))]);
    }

    #[test]
    fn stream_of_frames_and_heart_beats_in_any_chunks(
        (version, frames) in versioned_frames(),
        beats in vec(prop::sample::select(vec![&b"\n"[..], b"\r\n"]), 4),
        cuts in vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut wire = BytesMut::new();
        let mut items = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            wire.extend_from_slice(beats[i % beats.len()]);
            items.push(Item::HeartBeat);
            encode(frame, version, &mut wire);
            items.push(Item::Frame(expected(frame)));
        }
        wire.extend_from_slice(b"\r\n");
        items.push(Item::HeartBeat);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([wire.len()]) {
            chunks.push(&wire[from..cut]);
            from = cut;
        }
        let outcome = decode_chunks(chunks, wide_limits(), version);
        prop_assert_eq!(outcome.end, Ok(0));
        prop_assert_eq!(outcome.items, items);
    }

    #[test]
    fn prepared_message_decodes_to_the_message(
        version in version(),
        headers in vec(("[a-z-]{1,12}|\\PC{0,8}", "\\PC{0,16}"), 0..6),
        subscription in "\\PC{0,12}",
        ack in proptest::option::of("[a-z0-9-]{1,12}"),
        body in vec(any::<u8>(), 0..64),
    ) {
        // 1.0 cannot carry a colon in a name or CR/LF anywhere, 1.1 no CR:
        // keep text every version carries.
        let clean = |s: &str, is_name: bool| -> String {
            s.chars().filter(|&c| c != '\r' && c != '\n' && !(c == ':' && (is_name || version == Version::V1_0))).collect()
        };
        let headers: Headers = headers.iter().map(|(k, v)| (clean(k, true), clean(v, false))).collect();
        let subscription = clean(&subscription, false);
        let message = PreparedMessage::new(headers.clone(), Bytes::from(body.clone()));
        let mut out = BytesMut::new();
        // Twice, to check the cached encoding is reused correctly.
        for _ in 0..2 {
            message.write_for(version, &subscription, ack.as_deref(), &mut out);
        }
        prop_assert_eq!(out.len(), 2 * message.len_for(version, &subscription, ack.as_deref()));

        let mut want = Frame::new(Command::Message).header("subscription", subscription.clone());
        if let Some(ack) = &ack {
            want = want.header("ack", ack.clone());
        }
        for (k, v) in headers.iter().filter(|(k, _)| *k != "content-length") {
            want = want.header(k, v);
        }
        want = want.header("content-length", body.len().to_string()).body(body);
        let outcome = decode_whole(&out, wide_limits(), version);
        prop_assert_eq!(outcome.end, Ok(0));
        prop_assert_eq!(outcome.items, vec![Item::Frame(want.clone()), Item::Frame(want)]);
    }
}

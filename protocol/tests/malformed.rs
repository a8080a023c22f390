//! Hostile and malformed input: each case expects one exact error, whether
//! the bytes arrive whole, split at any offset or one at a time.

mod common;

use bytes::BytesMut;
use common::*;
use stompede_protocol::{DecodeError, Decoder, Item, Limits, Version};

fn err(input: &[u8]) -> DecodeError {
    decode_err(input, Limits::default())
}

fn small(
    max_headers: usize,
    max_header_line: usize,
    max_body_bytes: usize,
    max_frame_bytes: usize,
) -> Limits {
    Limits {
        max_headers,
        max_header_line,
        max_body_bytes,
        max_frame_bytes,
    }
}

#[test]
fn header_without_colon() {
    assert_eq!(
        err(b"SEND\ndestination\n\n\0"),
        DecodeError::HeaderWithoutColon("destination".into())
    );
    assert_eq!(
        err(b"SEND\ndestination:/a\nno colon here\n\n\0").to_string(),
        "header line has no colon: \"no colon here\""
    );
}

#[test]
fn cr_not_followed_by_lf() {
    assert_eq!(
        err(b"SEND\rdestination:/a\n\n\0"),
        DecodeError::CarriageReturnWithoutLineFeed
    );
    assert_eq!(
        err(b"SEND\ndestination:/a\rb\n\n\0"),
        DecodeError::CarriageReturnWithoutLineFeed
    );
    assert_eq!(
        err(b"SEND\ndestination:/a\n\r\0"),
        DecodeError::CarriageReturnWithoutLineFeed
    );
    // Between frames, where a CR can only start a CRLF heart-beat.
    assert_eq!(
        err(b"\rSEND\n\n\0"),
        DecodeError::CarriageReturnWithoutLineFeed
    );
    assert_eq!(
        err(b"SEND\n\n\0\r\r\n"),
        DecodeError::CarriageReturnWithoutLineFeed
    );
    assert_eq!(
        DecodeError::CarriageReturnWithoutLineFeed.to_string(),
        "CR not followed by LF"
    );
}

#[test]
fn undefined_escape() {
    assert_eq!(
        err(b"SEND\ndestination:/a\\tb\n\n\0"),
        DecodeError::UndefinedEscape('t')
    );
    assert_eq!(
        err(b"SEND\nde\\xst:/a\n\n\0"),
        DecodeError::UndefinedEscape('x')
    );
    assert_eq!(
        err(b"SEND\ndestination:/a\\\n\n\0"),
        DecodeError::UndefinedEscape(' '),
        "a lone backslash at the end"
    );
    assert_eq!(
        DecodeError::UndefinedEscape('t').to_string(),
        "undefined escape \\t in header"
    );
    // \r is only defined from 1.2 on.
    let outcome = decode_every_way(b"SEND\nx:a\\rb\n\n\0", Limits::default(), Version::V1_1);
    assert_eq!(outcome.end, Err(DecodeError::UndefinedEscape('r')));
}

#[test]
fn invalid_utf8_header() {
    assert_eq!(
        err(b"SEND\ndestination:/a\xff\n\n\0"),
        DecodeError::InvalidUtf8
    );
    assert_eq!(err(b"SEND\nd\xc3\x28:/a\n\n\0"), DecodeError::InvalidUtf8);
    // Also when escapes are decoded, and in CONNECT (never unescaped).
    assert_eq!(err(b"SEND\nx:\\n\xe2\x82\n\n\0"), DecodeError::InvalidUtf8);
    assert_eq!(
        err(b"CONNECT\nlogin:\xc0\xaf\n\n\0"),
        DecodeError::InvalidUtf8
    );
    // A body need not be UTF-8.
    assert_eq!(&decode_one(b"SEND\n\n\xff\xfe\0").body[..], b"\xff\xfe");
}

#[test]
fn bad_content_length() {
    for value in ["-1", "abc", "", " 5", "5 ", "+5", "0x10", "1e3", "٣"] {
        let input = format!("SEND\ncontent-length:{value}\n\nabc\0");
        assert_eq!(
            err(input.as_bytes()),
            DecodeError::InvalidContentLength(value.into()),
            "{value:?}"
        );
    }
    assert_eq!(
        DecodeError::InvalidContentLength("abc".into()).to_string(),
        "content-length is not a number: \"abc\""
    );
}

#[test]
fn content_length_too_short_or_nul_missing() {
    // Too short: the byte after 3 body bytes is 'l', not NUL.
    assert_eq!(
        err(b"SEND\ncontent-length:3\n\nhello\0"),
        DecodeError::MissingNul(3)
    );
    // NUL missing after the body.
    assert_eq!(
        err(b"SEND\ncontent-length:5\n\nhelloSEND\n\n\0"),
        DecodeError::MissingNul(5)
    );
    assert_eq!(
        err(b"SEND\ncontent-length:0\n\nx\0"),
        DecodeError::MissingNul(0)
    );
    assert_eq!(
        DecodeError::MissingNul(3).to_string(),
        "frame body is not followed by NUL (content-length is 3: too short?)"
    );
    // Too long is just a frame that has not arrived yet.
    let outcome = decode_every_way(
        b"SEND\ncontent-length:9\n\nhello\0",
        Limits::default(),
        Version::V1_2,
    );
    assert_eq!(
        outcome,
        Outcome {
            items: vec![],
            end: Ok(29)
        }
    );
}

#[test]
fn too_many_headers() {
    let limits = small(3, 100, 100, 1000);
    let three = b"SEND\na:1\nb:2\nc:3\n\n\0";
    assert_eq!(
        decode_every_way(three, limits, Version::V1_2).items.len(),
        1,
        "3 headers are allowed"
    );
    assert_eq!(
        decode_err(b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0", limits),
        DecodeError::TooManyHeaders(3)
    );
    // Refused on the 4th header line, before the frame ends.
    assert_eq!(
        decode_err(b"SEND\na:1\nb:2\nc:3\nd:4\n", limits),
        DecodeError::TooManyHeaders(3)
    );
    assert_eq!(
        DecodeError::TooManyHeaders(64).to_string(),
        "frame has more than 64 headers"
    );
}

#[test]
fn too_long_header_line() {
    let limits = small(10, 16, 100, 1000);
    // 16 bytes is fine, 17 is not (the EOL does not count).
    assert_eq!(
        decode_every_way(b"SEND\nxxxxxxxxxx:12345\r\n\n\0", limits, Version::V1_2)
            .items
            .len(),
        1
    );
    assert_eq!(
        decode_err(b"SEND\nxxxxxxxxxx:123456\n\n\0", limits),
        DecodeError::HeaderLineTooLong(16)
    );
    assert_eq!(
        decode_err(b"SENDSENDSENDSENDS\n\n\0", limits),
        DecodeError::HeaderLineTooLong(16)
    );
    assert_eq!(
        DecodeError::HeaderLineTooLong(8192).to_string(),
        "header line exceeds 8192 bytes"
    );
}

#[test]
fn endless_header_line_is_refused_once_past_the_limit() {
    let limits = small(10, 16, 100, 1000);
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::from(&b"SEND\n"[..]);
    let mut fed = 0;
    let result = loop {
        match decoder.decode(&mut buf) {
            Ok(None) => {
                buf.extend_from_slice(b"x");
                fed += 1;
                assert!(fed < 100, "never refused");
            }
            other => break other,
        }
    };
    assert_eq!(result, Err(DecodeError::HeaderLineTooLong(16)));
    // Refused on the 17th byte of the line.
    assert_eq!(fed, 17);
}

#[test]
fn body_over_the_limit() {
    let limits = small(10, 100, 8, 1000);
    assert_eq!(
        decode_every_way(b"SEND\n\n12345678\0", limits, Version::V1_2)
            .items
            .len(),
        1
    );
    assert_eq!(
        decode_err(b"SEND\n\n123456789\0", limits),
        DecodeError::BodyTooLarge(8)
    );
    assert_eq!(
        decode_err(b"SEND\ncontent-length:9\n\n123456789\0", limits),
        DecodeError::BodyTooLarge(8)
    );
    assert_eq!(
        decode_err(
            b"SEND\ncontent-length:99999999999999999999999999\n\n",
            limits
        ),
        DecodeError::BodyTooLarge(8)
    );
    assert_eq!(
        DecodeError::BodyTooLarge(1024).to_string(),
        "frame body exceeds 1024 bytes"
    );
}

#[test]
fn content_length_over_the_limit_is_refused_before_the_body() {
    let limits = Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    };
    let mut decoder = Decoder::new(limits);
    // Only the headers have arrived: the frame is refused already.
    let mut buf = BytesMut::from(&b"SEND\ndestination:/a\ncontent-length:1025\n"[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(DecodeError::BodyTooLarge(1024))
    );
    // Also if the content-length line is still missing its blank line and
    // more headers are to come.
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:1025\nx:y"[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(DecodeError::BodyTooLarge(1024))
    );
}

#[test]
fn frame_over_the_limit() {
    // A body under its own limit in a frame over the frame limit.
    let limits = small(10, 100, 1000, 32);
    assert_eq!(
        decode_err(
            b"SEND\n\n0123456789012345678901234567890123456789\0",
            limits
        ),
        DecodeError::FrameTooLarge(32)
    );
    assert_eq!(
        decode_err(b"SEND\ncontent-length:30\n\n", limits),
        DecodeError::FrameTooLarge(32)
    );
    // Headers read after content-length push the frame past the limit:
    // refused at the blank line, before the body.
    let limits40 = small(10, 100, 1000, 40);
    let at_limit = b"SEND\ncontent-length:10\nab:c\n\n0123456789\0";
    assert_eq!(at_limit.len(), 40);
    assert_eq!(
        decode_every_way(at_limit, limits40, Version::V1_2)
            .items
            .len(),
        1
    );
    assert_eq!(
        decode_err(b"SEND\ncontent-length:10\nabcdef:ghijk\n\n", limits40),
        DecodeError::FrameTooLarge(40)
    );
    // Exactly at the limit is fine: 6 + 10 + 15 + 1 = 32 bytes.
    let at_limit = b"SEND\n\n0123456789012345678901234\0";
    assert_eq!(at_limit.len(), 32);
    assert_eq!(
        decode_every_way(at_limit, limits, Version::V1_2)
            .items
            .len(),
        1
    );
    let over = b"SEND\ncontent-length:9\n\n123456789\0";
    assert_eq!(over.len(), 33);
    assert_eq!(decode_err(over, limits), DecodeError::FrameTooLarge(32));
    let at_limit = b"SEND\ncontent-length:8\n\n12345678\0";
    assert_eq!(
        decode_every_way(at_limit, limits, Version::V1_2)
            .items
            .len(),
        1
    );
    // A head longer than the frame limit.
    assert_eq!(
        decode_err(b"SEND\na:0123456789\nb:0123456789\nc:0\n\n\0", limits),
        DecodeError::FrameTooLarge(32)
    );
    assert_eq!(
        DecodeError::FrameTooLarge(32).to_string(),
        "frame exceeds 32 bytes"
    );
}

#[test]
fn unknown_command() {
    assert_eq!(err(b"FOO\n\n\0"), DecodeError::UnknownCommand("FOO".into()));
    assert_eq!(
        err(b"send\n\n\0"),
        DecodeError::UnknownCommand("send".into())
    );
    assert_eq!(
        err(b"SEND \n\n\0"),
        DecodeError::UnknownCommand("SEND ".into())
    );
    assert_eq!(err(b"\0\n"), DecodeError::UnknownCommand("\0".into()));
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        DecodeError::UnknownCommand("GET / HTTP/1.1".into())
    );
    assert_eq!(
        DecodeError::UnknownCommand("FOO".into()).to_string(),
        "unknown command \"FOO\""
    );
}

/// Feeds `chunk` until the decoder answers something other than `Ok(None)`.
fn feed_forever(
    limits: Limits,
    start: &[u8],
    chunk: &[u8],
) -> (usize, Result<Option<Item>, DecodeError>) {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::from(start);
    let mut rounds = 0;
    loop {
        match decoder.decode(&mut buf) {
            Ok(None) => {
                assert_eq!(
                    buf.len(),
                    start.len() + rounds * chunk.len(),
                    "nothing consumed while waiting"
                );
                buf.extend_from_slice(chunk);
                rounds += 1;
                assert!(rounds < 1_000_000, "never refused");
            }
            other => return (rounds, other),
        }
    }
}

#[test]
fn a_frame_that_never_ends_hits_a_limit() {
    let limits = small(16, 64, 4096, 8192);
    // A body without NUL.
    let (rounds, result) = feed_forever(limits, b"SEND\ndestination:/a\n\n", b"0123456789abcdef");
    assert_eq!(result, Err(DecodeError::BodyTooLarge(4096)));
    assert_eq!(
        rounds,
        4096 / 16 + 1,
        "refused as soon as the body passes 4096 bytes"
    );
    // Header lines that never end the head.
    let (_, result) = feed_forever(limits, b"SEND\n", b"a:b\n");
    assert_eq!(result, Err(DecodeError::TooManyHeaders(16)));
    // With the frame limit below the body limit, the frame limit.
    let (_, result) = feed_forever(
        small(16, 64, 1 << 20, 8192),
        b"SEND\n\n",
        b"0123456789abcdef",
    );
    assert_eq!(result, Err(DecodeError::FrameTooLarge(8192)));
    // A content-length body that never gets its NUL.
    let (_, result) = feed_forever(limits, b"SEND\ncontent-length:4\n\n", b"a");
    assert_eq!(result, Err(DecodeError::MissingNul(4)));
}

#[test]
fn default_limits_are_documented_values() {
    let limits = Limits::default();
    assert_eq!(limits.max_headers, 64);
    assert_eq!(limits.max_header_line, 8192);
    assert_eq!(limits.max_body_bytes, 1024 * 1024);
    assert_eq!(limits.max_frame_bytes, 1024 * 1024 + 64 * 1024);
}

#[test]
fn frames_before_an_error_are_delivered() {
    let outcome = decode_every_way(
        b"SEND\n\na\0\nBOGUS\n\n\0",
        Limits::default(),
        Version::V1_2,
    );
    assert_eq!(outcome.items.len(), 2);
    assert_eq!(
        outcome.end,
        Err(DecodeError::UnknownCommand("BOGUS".into()))
    );
}

//! Helpers shared by the integration tests: feed bytes to a decoder in
//! different ways and collect what comes out.
#![allow(dead_code)]

use bytes::BytesMut;
use stompede_protocol::{Command, DecodeError, Decoder, Frame, Item, Limits, Version};

/// What feeding a whole input produced: every item, then either the error
/// that stopped the decoder or `Ok(leftover)` (bytes not yet a whole item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub items: Vec<Item>,
    pub end: Result<usize, DecodeError>,
}

/// Decodes everything `chunks` hold, feeding one chunk at a time and
/// draining the decoder after each. Checks on the way that `Ok(None)` never
/// consumes a byte.
pub fn decode_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    limits: Limits,
    version: Version,
) -> Outcome {
    let mut decoder = Decoder::new(limits);
    decoder.set_version(version);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) must not consume bytes");
                    break;
                }
                Err(e) => return Outcome { items, end: Err(e) },
            }
        }
    }
    Outcome {
        items,
        end: Ok(buf.len()),
    }
}

pub fn decode_whole(input: &[u8], limits: Limits, version: Version) -> Outcome {
    decode_chunks([input], limits, version)
}

pub fn decode_split(input: &[u8], at: usize, limits: Limits, version: Version) -> Outcome {
    let (a, b) = input.split_at(at);
    decode_chunks([a, b], limits, version)
}

pub fn decode_bytewise(input: &[u8], limits: Limits, version: Version) -> Outcome {
    decode_chunks(input.chunks(1), limits, version)
}

/// Decodes `input` whole, split at every offset and byte by byte, asserts
/// all of them agree, and returns the outcome.
pub fn decode_every_way(input: &[u8], limits: Limits, version: Version) -> Outcome {
    let whole = decode_whole(input, limits, version);
    for at in 0..=input.len() {
        assert_eq!(
            decode_split(input, at, limits, version),
            whole,
            "split at {at} differs from whole for {:?}",
            String::from_utf8_lossy(input)
        );
    }
    assert_eq!(
        decode_bytewise(input, limits, version),
        whole,
        "byte by byte differs from whole"
    );
    whole
}

/// Decodes `input` (every way) and expects exactly one frame and nothing left.
pub fn decode_one(input: &[u8]) -> Frame {
    decode_one_as(input, Version::V1_2)
}

pub fn decode_one_as(input: &[u8], version: Version) -> Frame {
    let outcome = decode_every_way(input, Limits::default(), version);
    assert_eq!(
        outcome.end,
        Ok(0),
        "expected the input to be consumed exactly"
    );
    match <[Item; 1]>::try_from(outcome.items) {
        Ok([Item::Frame(frame)]) => frame,
        other => panic!("expected one frame, got {other:?}"),
    }
}

/// The error decoding `input` ends with (checked every way).
pub fn decode_err(input: &[u8], limits: Limits) -> DecodeError {
    decode_every_way(input, limits, Version::V1_2)
        .end
        .expect_err("expected a decode error")
}

/// `(name, value)` pairs of a frame's headers, for compact assertions.
pub fn headers_of(frame: &Frame) -> Vec<(&str, &str)> {
    frame.headers.iter().collect()
}

pub fn frame(command: Command, headers: &[(&str, &str)], body: &[u8]) -> Frame {
    let mut frame = Frame::new(command).body(body.to_vec());
    for (k, v) in headers {
        frame = frame.header(*k, *v);
    }
    frame
}

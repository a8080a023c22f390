//! Fuzzes the decoder with arbitrary bytes, checking that it
//! - never panics, whatever the input and however it is chunked;
//! - gives the same items and the same error whole or fed in chunks;
//! - never consumes bytes when it answers `Ok(None)`;
//! - decodes what it re-encodes to the same frame (encode . decode = id).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stompede_protocol::{encode, Decoder, Frame, Item, Limits, Version};

/// Small limits so that the fuzzer reaches every limit check.
const LIMITS: Limits = Limits {
    max_headers: 8,
    max_header_line: 64,
    max_body_bytes: 256,
    max_frame_bytes: 512,
};

fuzz_target!(|data: &[u8]| {
    // First byte: version and chunk size; the rest is the stream.
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let version = [Version::V1_0, Version::V1_1, Version::V1_2][usize::from(control % 3)];
    let chunk = usize::from(control / 3) % 17 + 1;

    let whole = run(version, [input]);
    let chunked = run(version, input.chunks(chunk));
    assert_eq!(
        whole, chunked,
        "chunks of {chunk} bytes differ from the whole input"
    );

    for item in &whole.0 {
        if let Item::Frame(frame) = item {
            round_trip(frame, version);
        }
    }
});

type Outcome = (Vec<Item>, Result<usize, stompede_protocol::DecodeError>);

fn run<'a>(version: Version, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut decoder = Decoder::new(LIMITS);
    decoder.set_version(version);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => {
                    assert!(buf.len() < before, "an item must consume bytes");
                    items.push(item);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) must not consume bytes");
                    break;
                }
                Err(e) => {
                    // Every message is something a user can read.
                    assert!(!e.to_string().is_empty());
                    return (items, Err(e));
                }
            }
        }
    }
    (items, Ok(buf.len()))
}

/// Any frame the decoder accepts, encoded for the same version, decodes to
/// the same frame (content-length aside, which the encoder writes itself).
fn round_trip(frame: &Frame, version: Version) {
    let mut out = BytesMut::new();
    encode(frame, version, &mut out);
    assert_eq!(out.len(), stompede_protocol::encoded_len(frame, version));
    let mut decoder = Decoder::new(Limits {
        max_headers: LIMITS.max_headers + 1,
        max_header_line: 4 * LIMITS.max_header_line,
        max_body_bytes: LIMITS.max_body_bytes,
        max_frame_bytes: 8 * LIMITS.max_frame_bytes,
    });
    decoder.set_version(version);
    let again = match decoder.decode(&mut out) {
        Ok(Some(Item::Frame(again))) => again,
        other => panic!("re-encoded {frame:?} decodes to {other:?}"),
    };
    assert!(out.is_empty(), "re-encoded frame left {} bytes", out.len());
    assert_eq!(
        without_content_length(frame),
        without_content_length(&again)
    );
}

fn without_content_length(frame: &Frame) -> Frame {
    let mut frame = frame.clone();
    frame.headers.remove("content-length");
    frame
}

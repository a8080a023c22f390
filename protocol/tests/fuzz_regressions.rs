//! Inputs the fuzzer (protocol/fuzz) once failed on, replayed with the same
//! checks as its target: whole and chunked decoding agree, and every frame
//! decoded re-encodes to itself. Each file's first byte picks the version
//! and chunk size, as in `fuzz/fuzz_targets/decode.rs`.

mod common;

use bytes::BytesMut;
use common::*;
use stompede_protocol::{encode, DecodeError, Decoder, Item, Limits, Version};

const LIMITS: Limits = Limits {
    max_headers: 8,
    max_header_line: 64,
    max_body_bytes: 256,
    max_frame_bytes: 512,
};

fn replay(data: &[u8]) -> Outcome {
    let (&control, input) = data.split_first().expect("non-empty input");
    let version = [Version::V1_0, Version::V1_1, Version::V1_2][usize::from(control % 3)];
    let chunk = usize::from(control / 3) % 17 + 1;
    let whole = decode_whole(input, LIMITS, version);
    for size in [1, chunk] {
        assert_eq!(
            decode_chunks(input.chunks(size), LIMITS, version),
            whole,
            "chunks of {size}"
        );
    }
    for item in &whole.items {
        if let Item::Frame(frame) = item {
            let mut out = BytesMut::new();
            encode(frame, version, &mut out);
            let mut decoder = Decoder::new(Limits {
                max_headers: 9,
                ..Limits::default()
            });
            decoder.set_version(version);
            let Ok(Some(Item::Frame(mut again))) = decoder.decode(&mut out) else {
                panic!("re-encoded frame does not decode")
            };
            let mut frame = frame.clone();
            frame.headers.remove("content-length");
            again.headers.remove("content-length");
            assert_eq!(frame, again);
        }
    }
    whole
}

#[test]
fn every_saved_input_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fuzz-regressions exists") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("replaying {}", path.display());
        replay(&data);
        count += 1;
    }
    assert!(count > 0);
}

/// The first finding: a body with no content-length crossing the frame limit
/// before the body limit was reported as "body too large" when the whole
/// input was there and "frame too large" when it came in pieces.
#[test]
fn body_limit_vs_frame_limit_does_not_depend_on_chunking() {
    let data = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz-regressions/body-limit-vs-frame-limit-depends-on-chunking"),
    )
    .unwrap();
    assert_eq!(replay(&data).end, Err(DecodeError::FrameTooLarge(512)));
    // The same in a small, readable frame: the head is 300 bytes, so the
    // frame limit (512) leaves room for 211 body bytes, less than the body
    // limit (256).
    let mut input = b"SEND\n".to_vec();
    for i in 0..5 {
        input.extend_from_slice(format!("h{i}:{}\n", "x".repeat(55)).as_bytes());
    }
    input.push(b'\n');
    let start = input.len();
    input.extend(std::iter::repeat_n(b'b', 300));
    input.push(0);
    let limits = LIMITS;
    assert_eq!(
        decode_every_way(&input, limits, Version::V1_2).end,
        Err(DecodeError::FrameTooLarge(512))
    );
    // One byte under the frame limit's bound is fine.
    input.truncate(start + 512 - start - 1);
    input.push(0);
    assert_eq!(input.len(), 512);
    assert_eq!(
        decode_every_way(&input, limits, Version::V1_2).items.len(),
        1
    );
}

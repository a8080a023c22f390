//! Decode and encode throughput, and the same inputs decoded by the
//! crates.io `stomp-parser` (nom-based) in the same run, for a ratio.
//!
//! Run with `cargo bench -p stompede-protocol --bench codec`.
//!
//! Both decoders get each input in a fresh buffer made outside the timed part
//! (`iter_batched`), so neither pays for copying it in.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use stompede_protocol::{
    encode, encode_heartbeat, Command, Decoder, Frame, Item, Limits, PreparedMessage, Version,
};

/// A typical live comment as a subscriber receives it: about 300 bytes.
fn comment_message() -> Frame {
    let body = r#"{"id":"c-8d1f2a","article":12345,"author":{"id":981,"name":"Ada L."},"text":"Great piece! Fan-out was exactly our problem last spring.","created_at":"2024-05-01T12:34:56Z"}"#;
    Frame::new(Command::Message)
        .header("subscription", "sub-0")
        .header("message-id", "m-000000001234567")
        .header("destination", "/topic/comments.12345")
        .header("content-type", "application/json")
        .body(Bytes::from_static(body.as_bytes()))
}

fn big_message() -> Frame {
    Frame::new(Command::Message)
        .header("subscription", "sub-0")
        .header("message-id", "m-1")
        .header("destination", "/topic/comments.12345")
        .header("content-type", "application/octet-stream")
        .body(vec![b'x'; 64 * 1024])
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, Version::V1_2, &mut out);
    out.to_vec()
}

fn limits() -> Limits {
    Limits {
        max_body_bytes: 1 << 20,
        max_frame_bytes: 2 << 20,
        ..Limits::default()
    }
}

fn decode_one(decoder: &mut Decoder, mut buf: BytesMut) -> Frame {
    match decoder.decode(&mut buf) {
        Ok(Some(Item::Frame(frame))) => frame,
        other => panic!("{other:?}"),
    }
}

fn stomp_parser_decode(bytes: Vec<u8>) -> stomp_parser::server::ServerFrame {
    match stomp_parser::server::ServerFrame::try_from(bytes) {
        Ok(frame @ stomp_parser::server::ServerFrame::Message(_)) => frame,
        Ok(other) => panic!("{other:?}"),
        Err(e) => panic!("{e:?}"),
    }
}

fn decode_benches(c: &mut Criterion) {
    // The 64 KiB body once with content-length (the decoder jumps over the
    // body) and once without (it searches the body for the NUL).
    let big = big_message();
    let mut big_without_length = encoded(&Frame {
        body: Bytes::new(),
        ..big.clone()
    });
    big_without_length.pop();
    big_without_length.extend_from_slice(&big.body);
    big_without_length.push(0);
    let inputs = [
        ("300B", encoded(&comment_message()), comment_message(), true),
        ("64KiB", encoded(&big), big.clone(), true),
        ("64KiB-no-content-length", big_without_length, big, false),
    ];
    for (name, wire, frame, has_length) in inputs {
        if name == "300B" {
            assert!(
                (280..=320).contains(&wire.len()),
                "comment frame is {} bytes",
                wire.len()
            );
        }
        let mut group = c.benchmark_group(format!("decode/{name}"));
        group.throughput(Throughput::Bytes(wire.len() as u64));
        let mut decoder = Decoder::new(limits());
        let mut want = frame.clone();
        if has_length {
            want.headers
                .push("content-length", frame.body.len().to_string());
        }
        assert_eq!(decode_one(&mut decoder, BytesMut::from(&wire[..])), want);
        group.bench_function("stompede", |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |buf| decode_one(&mut decoder, buf),
                BatchSize::SmallInput,
            )
        });
        group.bench_function("stomp-parser", |b| {
            b.iter_batched(|| wire.clone(), stomp_parser_decode, BatchSize::SmallInput)
        });
        group.finish();
    }

    // Many comments back to back in one buffer, as a busy connection reads them.
    let wire = encoded(&comment_message());
    const N: usize = 100;
    let stream = wire.repeat(N);
    let mut group = c.benchmark_group("decode/300B-stream");
    group.throughput(Throughput::Elements(N as u64));
    let mut decoder = Decoder::new(limits());
    group.bench_function("stompede", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                for _ in 0..N {
                    black_box(decoder.decode(&mut buf).unwrap().unwrap());
                }
                buf
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // Heart-beats. stomp-parser has no heart-beat support (it decodes one
    // whole frame from a Vec), so there is nothing to compare against.
    const BEATS: usize = 1000;
    // Half LF, half CRLF.
    let beats: Vec<u8> = b"\n\r\n".repeat(BEATS / 2);
    let mut group = c.benchmark_group("decode/heart-beats");
    group.throughput(Throughput::Elements(BEATS as u64));
    group.bench_function("stompede", |b| {
        b.iter_batched(
            || BytesMut::from(&beats[..]),
            |mut buf| {
                for _ in 0..BEATS {
                    assert_eq!(decoder.decode(&mut buf), Ok(Some(Item::HeartBeat)));
                }
                buf
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn encode_benches(c: &mut Criterion) {
    for (name, frame) in [("300B", comment_message()), ("64KiB", big_message())] {
        let mut group = c.benchmark_group(format!("encode/{name}"));
        let mut out = BytesMut::with_capacity(128 * 1024);
        group.throughput(Throughput::Bytes(encoded(&frame).len() as u64));
        group.bench_function("encode", |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&frame), Version::V1_2, &mut out);
            })
        });
        let mut headers = frame.headers.clone();
        headers.remove("subscription");
        let prepared = PreparedMessage::new(headers, frame.body.clone());
        group.bench_function("prepared-write_for", |b| {
            b.iter(|| {
                out.clear();
                black_box(&prepared).write_for(Version::V1_2, "sub-0", None, &mut out);
            })
        });
        group.finish();
    }
    let mut group = c.benchmark_group("encode/heart-beats");
    group.throughput(Throughput::Elements(1000));
    let mut out = BytesMut::with_capacity(1000);
    group.bench_function("encode_heartbeat", |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..1000 {
                encode_heartbeat(black_box(&mut out));
            }
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! { name = benches; config = config(); targets = decode_benches, encode_benches }
criterion_main!(benches);

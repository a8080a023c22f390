//! A sans-IO STOMP 1.0 / 1.1 / 1.2 frame codec.
//!
//! The crate has no I/O and no async runtime: feed bytes to a [`Decoder`] and
//! it hands back [`Item`]s (frames and heart-beats); [`encode`] writes a
//! [`Frame`] into a `BytesMut`. A [`PreparedMessage`] encodes a MESSAGE once
//! so that each subscriber's copy only adds its `subscription` (and `ack`)
//! header.
//!
//! ```
//! use bytes::BytesMut;
//! use stompede_protocol::{Command, Decoder, Item, Limits};
//!
//! let mut decoder = Decoder::new(Limits::default());
//! let mut buf = BytesMut::from(&b"SEND\ndestination:/topic/a\n\nhello\0\n"[..]);
//! let Some(Item::Frame(frame)) = decoder.decode(&mut buf).unwrap() else { panic!() };
//! assert_eq!(frame.command, Command::Send);
//! assert_eq!(frame.headers.get("destination"), Some("/topic/a"));
//! assert_eq!(&frame.body[..], b"hello");
//! // The EOL after the NUL is a heart-beat.
//! assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Item::HeartBeat));
//! assert_eq!(decoder.decode(&mut buf).unwrap(), None);
//! ```

mod decode;
mod encode;
mod error;
mod escape;
mod frame;
mod heart_beat;
mod prepared;

pub use decode::{Decoder, Item, Limits};
pub use encode::{encode, encode_heartbeat, encoded_len};
pub use error::DecodeError;
pub use frame::{Command, Frame, Headers, Version};
pub use heart_beat::HeartBeat;
pub use prepared::PreparedMessage;

/// Runs the README's example as a doctest, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

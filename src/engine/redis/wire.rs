//! What one node publishes to the others through Redis: one message as bytes,
//! with a format version first so that a rolling upgrade can mix versions
//! (a node reads every version it knows and counts the rest as invalid).
//!
//! Version 1: `[1] [u16 id length] [id] [u16 header count]
//! ([u16 name length] [name] [u32 value length] [value])* [body]`, big-endian.
//! The destination is the channel's, so a broadcast publishes one payload.
//!
//! Version 2 is what the publish script sends and stores: `[2] OFFSET ':'
//! EPOCH '\n'` (the offset in decimal) followed by a version-1 message. The
//! script puts the prefix on, since only it knows the offset.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use stompede_protocol::Headers;

pub const FORMAT_VERSION: u8 = 1;
/// A version-1 message with its place in the destination's history in front.
pub const POSITIONED_VERSION: u8 = 2;

/// One message as the nodes exchange it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// The offset and epoch (version 2; `None` from a version-1 node).
    pub position: Option<(u64, String)>,
    pub message_id: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown format version {0} (this node reads versions {FORMAT_VERSION} and {POSITIONED_VERSION})")]
    UnknownVersion(u8),
    #[error("truncated message")]
    Truncated,
    #[error("a message id or header is not UTF-8")]
    NotUtf8,
}

pub fn encode(message_id: &str, headers: &Headers, body: &[u8]) -> Bytes {
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| 6 + name.len() + value.len())
        .sum();
    let mut out = BytesMut::with_capacity(5 + message_id.len() + header_bytes + body.len());
    out.put_u8(FORMAT_VERSION);
    put_short(&mut out, message_id);
    out.put_u16(headers.len() as u16);
    for (name, value) in headers.iter() {
        put_short(&mut out, name);
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(body);
    out.freeze()
}

/// Decodes a payload; the body is a view into `payload`, not a copy.
pub fn decode(mut payload: Bytes) -> Result<WireMessage, WireError> {
    let mut position = None;
    if payload.first() == Some(&POSITIONED_VERSION) {
        let end = payload
            .iter()
            .position(|&byte| byte == b'\n')
            .ok_or(WireError::Truncated)?;
        let prefix = std::str::from_utf8(&payload[1..end]).map_err(|_| WireError::NotUtf8)?;
        let (offset, epoch) = prefix.split_once(':').ok_or(WireError::Truncated)?;
        let offset = offset.parse().map_err(|_| WireError::Truncated)?;
        position = Some((offset, epoch.to_owned()));
        payload.advance(end + 1);
    }
    let version = take_u8(&mut payload)?;
    if version != FORMAT_VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let id_len = take_u16(&mut payload)? as usize;
    let message_id = take_text(&mut payload, id_len)?;
    let count = take_u16(&mut payload)? as usize;
    let mut headers = Headers::with_capacity(count);
    for _ in 0..count {
        let name_len = take_u16(&mut payload)? as usize;
        let name = take_text(&mut payload, name_len)?;
        let value_len = take_u32(&mut payload)? as usize;
        let value = take_text(&mut payload, value_len)?;
        headers.push(name, value);
    }
    Ok(WireMessage {
        position,
        message_id,
        headers,
        body: payload,
    })
}

fn put_short(out: &mut BytesMut, text: &str) {
    // Header names and ids are far shorter than 64 KiB (max-header-line-bytes).
    let text = &text.as_bytes()[..text.len().min(u16::MAX as usize)];
    out.put_u16(text.len() as u16);
    out.put_slice(text);
}

fn take_u8(payload: &mut Bytes) -> Result<u8, WireError> {
    (payload.remaining() >= 1)
        .then(|| payload.get_u8())
        .ok_or(WireError::Truncated)
}

fn take_u16(payload: &mut Bytes) -> Result<u16, WireError> {
    (payload.remaining() >= 2)
        .then(|| payload.get_u16())
        .ok_or(WireError::Truncated)
}

fn take_u32(payload: &mut Bytes) -> Result<u32, WireError> {
    (payload.remaining() >= 4)
        .then(|| payload.get_u32())
        .ok_or(WireError::Truncated)
}

fn take_text(payload: &mut Bytes, len: usize) -> Result<String, WireError> {
    if payload.remaining() < len {
        return Err(WireError::Truncated);
    }
    String::from_utf8(payload.split_to(len).to_vec()).map_err(|_| WireError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_headers_in_order_and_the_body_byte_for_byte() {
        let mut headers = Headers::new();
        headers.push("content-type", "application/json");
        headers.push("x-ünïcode", "value: with colon\\and backslash");
        headers.push("content-type", "repeated");
        let body = b"{\"b\":1,\"a\":12345678901234567890123}\0\xff";
        let decoded = decode(encode("node-1-19a-7", &headers, body)).unwrap();
        assert_eq!(decoded.position, None);
        assert_eq!(decoded.message_id, "node-1-19a-7");
        assert_eq!(decoded.headers, headers);
        assert_eq!(&decoded.body[..], body);
    }

    /// What the publish script sends: the version-2 prefix on a version-1 message.
    #[test]
    fn reads_the_position_the_publish_script_puts_in_front() {
        let inner = encode("id-1", &Headers::new(), b"body");
        let mut payload = b"\x0242:node-a-19b.7\n".to_vec();
        payload.extend_from_slice(&inner);
        let decoded = decode(Bytes::from(payload)).unwrap();
        assert_eq!(decoded.position, Some((42, "node-a-19b.7".to_owned())));
        assert_eq!(decoded.message_id, "id-1");
        assert_eq!(&decoded.body[..], b"body");
        for bad in [&b"\x0242:e"[..], b"\x02x:e\n\x01", b"\x0242e\n\x01"] {
            assert_eq!(
                decode(Bytes::copy_from_slice(bad)),
                Err(WireError::Truncated),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_unknown_versions_and_truncation() {
        let payload = encode("id", &Headers::new(), b"body");
        let mut future = payload.to_vec();
        future[0] = 9;
        assert_eq!(
            decode(Bytes::from(future)),
            Err(WireError::UnknownVersion(9))
        );
        for cut in 0..5 {
            assert_eq!(
                decode(payload.slice(..cut)),
                Err(WireError::Truncated),
                "cut at {cut}"
            );
        }
    }
}

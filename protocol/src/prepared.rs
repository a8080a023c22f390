use crate::encode::write_content_length;
use crate::escape::{escaped_len, write_escaped};
use crate::{Headers, Version};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::OnceLock;

/// A MESSAGE encoded once and shared by every subscriber.
///
/// Everything but the per-subscriber headers (`subscription`, and `ack` for
/// client-acknowledged subscriptions) is encoded on first use for each STOMP
/// version (the escaping rules differ) and kept; [`write_for`](Self::write_for)
/// then only copies bytes. The per-subscriber headers come first, so they win
/// over anything a publisher put in `headers`.
#[derive(Debug)]
pub struct PreparedMessage {
    headers: Headers,
    body: Bytes,
    body_is_utf8: bool,
    /// Encoded headers (after the per-subscriber ones) and `content-length`,
    /// through the blank line, for each version.
    encoded_headers: [OnceLock<Bytes>; 3],
}

impl PreparedMessage {
    /// `headers` are written in order after the per-subscriber ones;
    /// a `content-length` among them is ignored (the real one is written).
    pub fn new(headers: Headers, body: Bytes) -> PreparedMessage {
        let body_is_utf8 = std::str::from_utf8(&body).is_ok();
        PreparedMessage {
            headers,
            body,
            body_is_utf8,
            encoded_headers: Default::default(),
        }
    }

    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether the body is valid UTF-8 (a WebSocket text frame may carry it).
    pub fn body_is_utf8(&self) -> bool {
        self.body_is_utf8
    }

    fn encoded_headers(&self, version: Version) -> &Bytes {
        self.encoded_headers[version as usize].get_or_init(|| {
            let mut out = BytesMut::new();
            for (name, value) in self.headers.iter() {
                if name == "content-length" {
                    continue;
                }
                write_escaped(name, version, true, &mut out);
                out.put_u8(b':');
                write_escaped(value, version, true, &mut out);
                out.put_u8(b'\n');
            }
            write_content_length(self.body.len(), &mut out);
            out.put_u8(b'\n');
            out.freeze()
        })
    }

    /// The number of bytes [`write_for`](Self::write_for) writes.
    pub fn len_for(&self, version: Version, subscription: &str, ack: Option<&str>) -> usize {
        self.len_for_with(version, subscription, ack, &[])
    }

    /// Writes the whole MESSAGE frame for one subscriber.
    pub fn write_for(
        &self,
        version: Version,
        subscription: &str,
        ack: Option<&str>,
        out: &mut BytesMut,
    ) {
        self.write_for_with(version, subscription, ack, &[], out)
    }

    /// The number of bytes [`write_for_with`](Self::write_for_with) writes.
    pub fn len_for_with(
        &self,
        version: Version,
        subscription: &str,
        ack: Option<&str>,
        extra: &[(&str, &str)],
    ) -> usize {
        let ack_len = ack.map_or(0, |ack| "ack:".len() + escaped_len(ack, version, true) + 1);
        let extra_len: usize = extra
            .iter()
            .map(|(name, value)| {
                escaped_len(name, version, true) + 1 + escaped_len(value, version, true) + 1
            })
            .sum();
        "MESSAGE\nsubscription:".len()
            + escaped_len(subscription, version, true)
            + 1
            + ack_len
            + extra_len
            + self.encoded_headers(version).len()
            + self.body.len()
            + 1
    }

    /// Writes the whole MESSAGE frame for one subscriber, with `extra`
    /// headers of its own after `subscription` and `ack` (so they too win
    /// over the publisher's).
    pub fn write_for_with(
        &self,
        version: Version,
        subscription: &str,
        ack: Option<&str>,
        extra: &[(&str, &str)],
        out: &mut BytesMut,
    ) {
        out.reserve(self.len_for_with(version, subscription, ack, extra));
        out.put_slice(b"MESSAGE\nsubscription:");
        write_escaped(subscription, version, true, out);
        out.put_u8(b'\n');
        if let Some(ack) = ack {
            out.put_slice(b"ack:");
            write_escaped(ack, version, true, out);
            out.put_u8(b'\n');
        }
        for (name, value) in extra {
            write_escaped(name, version, true, out);
            out.put_u8(b':');
            write_escaped(value, version, true, out);
            out.put_u8(b'\n');
        }
        out.put_slice(self.encoded_headers(version));
        out.put_slice(&self.body);
        out.put_u8(0);
    }
}

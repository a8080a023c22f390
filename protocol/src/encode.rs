use crate::escape::{escaped_len, write_escaped};
use crate::{Frame, Version};
use bytes::{BufMut, BytesMut};

/// Writes `frame` for a peer speaking `version`.
///
/// Header names and values are escaped as `version` requires (never for
/// CONNECT, STOMP and CONNECTED). A `content-length` header in
/// `frame.headers` is ignored: the encoder writes the real one whenever the
/// body is not empty, so the frame can never lie about its length.
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) {
    // Reserve without scanning the headers for bytes to escape (rare; the
    // buffer grows if there are some).
    let headers: usize = frame
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    out.reserve(
        frame.command.as_str().len() + headers + MAX_CONTENT_LENGTH_LINE + frame.body.len() + 3,
    );
    let escaped = frame.command.escapes_headers();
    out.put_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    for (name, value) in frame.headers.iter() {
        if name == "content-length" {
            continue;
        }
        write_escaped(name, version, escaped, out);
        out.put_u8(b':');
        write_escaped(value, version, escaped, out);
        out.put_u8(b'\n');
    }
    if !frame.body.is_empty() {
        write_content_length(frame.body.len(), out);
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_u8(0);
}

/// The exact number of bytes [`encode`] writes for `frame`.
pub fn encoded_len(frame: &Frame, version: Version) -> usize {
    let escaped = frame.command.escapes_headers();
    let headers: usize = frame
        .headers
        .iter()
        .filter(|(name, _)| *name != "content-length")
        .map(|(name, value)| {
            escaped_len(name, version, escaped) + escaped_len(value, version, escaped) + 2
        })
        .sum();
    let content_length = if frame.body.is_empty() {
        0
    } else {
        content_length_line_len(frame.body.len())
    };
    frame.command.as_str().len() + 1 + headers + content_length + 1 + frame.body.len() + 1
}

/// A heart-beat: one EOL.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_u8(b'\n');
}

/// `content-length:` + the longest `usize` + `\n`.
const MAX_CONTENT_LENGTH_LINE: usize = "content-length:".len() + 20 + 1;

pub(crate) fn write_content_length(len: usize, out: &mut BytesMut) {
    out.put_slice(b"content-length:");
    out.put_slice(itoa::Buffer::new().format(len).as_bytes());
    out.put_u8(b'\n');
}

pub(crate) fn content_length_line_len(len: usize) -> usize {
    "content-length:".len() + itoa::Buffer::new().format(len).len() + 1
}

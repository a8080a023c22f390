//! Header escaping: STOMP 1.2 escapes `\r \n : \`; 1.1 the same without
//! `\r`; 1.0 escapes nothing. CONNECT/STOMP/CONNECTED are never escaped.

use crate::{DecodeError, Version};
use bytes::{BufMut, BytesMut};

/// Decodes a raw header name or value into a `String`.
pub(crate) fn unescape(raw: &[u8], version: Version, escaped: bool) -> Result<String, DecodeError> {
    if !escaped || version == Version::V1_0 || memchr::memchr(b'\\', raw).is_none() {
        return std::str::from_utf8(raw).map(str::to_owned).map_err(|_| DecodeError::InvalidUtf8);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'c') => out.push(b':'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'r') if version == Version::V1_2 => out.push(b'\r'),
            Some(&other) => return Err(DecodeError::UndefinedEscape(escape_char(other))),
            // A lone backslash at the end of a header.
            None => return Err(DecodeError::UndefinedEscape(' ')),
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::InvalidUtf8)
}

fn escape_char(b: u8) -> char {
    if b.is_ascii_graphic() {
        b as char
    } else {
        char::REPLACEMENT_CHARACTER
    }
}

fn needs_escape(b: u8, version: Version) -> bool {
    match version {
        Version::V1_0 => false,
        Version::V1_1 => matches!(b, b'\n' | b':' | b'\\'),
        Version::V1_2 => matches!(b, b'\r' | b'\n' | b':' | b'\\'),
    }
}

/// Length of `value` once escaped.
pub(crate) fn escaped_len(value: &str, version: Version, escaped: bool) -> usize {
    if !escaped {
        return value.len();
    }
    value.len() + value.bytes().filter(|&b| needs_escape(b, version)).count()
}

/// Writes `value`, escaped for `version` when `escaped` is true.
pub(crate) fn write_escaped(value: &str, version: Version, escaped: bool, out: &mut BytesMut) {
    let bytes = value.as_bytes();
    if !escaped || !bytes.iter().any(|&b| needs_escape(b, version)) {
        out.put_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\n' if needs_escape(b, version) => out.put_slice(b"\\n"),
            b'\r' if needs_escape(b, version) => out.put_slice(b"\\r"),
            b':' if needs_escape(b, version) => out.put_slice(b"\\c"),
            b'\\' if needs_escape(b, version) => out.put_slice(b"\\\\"),
            _ => out.put_u8(b),
        }
    }
}

//! Header escaping: STOMP 1.2 escapes `\r \n : \`; 1.1 the same without
//! `\r`; 1.0 escapes nothing. CONNECT/STOMP/CONNECTED are never escaped.

use crate::{DecodeError, Version};
use bytes::{BufMut, BytesMut};

/// Appends the header name or value `raw`, unescaped for `version`, to
/// `out`. Escapes only replace ASCII with ASCII.
pub(crate) fn unescape_into(
    raw: &str,
    version: Version,
    out: &mut String,
) -> Result<(), DecodeError> {
    let mut rest = raw;
    while let Some(at) = memchr::memchr(b'\\', rest.as_bytes()) {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let unescaped = match after.as_bytes().first() {
            Some(b'n') => '\n',
            Some(b'c') => ':',
            Some(b'\\') => '\\',
            Some(b'r') if version == Version::V1_2 => '\r',
            Some(_) => {
                let c = after.chars().next().unwrap_or(' ');
                return Err(DecodeError::UndefinedEscape(if c.is_control() {
                    char::REPLACEMENT_CHARACTER
                } else {
                    c
                }));
            }
            // A lone backslash at the end of a header.
            None => return Err(DecodeError::UndefinedEscape(' ')),
        };
        out.push(unescaped);
        // The escape is two ASCII bytes, so this is a char boundary.
        rest = &after[1..];
    }
    out.push_str(rest);
    Ok(())
}

/// For each version, which bytes are escaped.
static ESCAPED_BYTES: [[bool; 256]; 3] = [
    escape_table(b""),
    escape_table(b"\n:\\"),
    escape_table(b"\r\n:\\"),
];

const fn escape_table(bytes: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
}

fn table(version: Version, escaped: bool) -> &'static [bool; 256] {
    &ESCAPED_BYTES[if escaped {
        version as usize
    } else {
        Version::V1_0 as usize
    }]
}

/// Length of `value` once escaped.
pub(crate) fn escaped_len(value: &str, version: Version, escaped: bool) -> usize {
    if !escaped || version == Version::V1_0 {
        return value.len();
    }
    if !has_escapable(value.as_bytes(), version) {
        return value.len();
    }
    let table = table(version, escaped);
    value.len() + value.bytes().filter(|&b| table[usize::from(b)]).count()
}

/// Whether any byte of `bytes` is escaped in `version`. Branch-free
/// comparisons, so the compiler vectorises it: header values are usually
/// clean and this is the common path.
fn has_escapable(bytes: &[u8], version: Version) -> bool {
    match version {
        Version::V1_0 => false,
        Version::V1_1 => bytes.iter().fold(false, |any, &b| {
            any | (b == b'\n') | (b == b':') | (b == b'\\')
        }),
        Version::V1_2 => bytes.iter().fold(false, |any, &b| {
            any | (b == b'\n') | (b == b'\r') | (b == b':') | (b == b'\\')
        }),
    }
}

/// Writes `value`, escaped for `version` when `escaped` is true.
pub(crate) fn write_escaped(value: &str, version: Version, escaped: bool, out: &mut BytesMut) {
    let mut rest = value.as_bytes();
    if !escaped || !has_escapable(rest, version) {
        out.put_slice(rest);
        return;
    }
    let table = table(version, escaped);
    while let Some(at) = rest.iter().position(|&b| table[usize::from(b)]) {
        out.put_slice(&rest[..at]);
        out.put_slice(match rest[at] {
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b':' => b"\\c",
            _ => b"\\\\",
        });
        rest = &rest[at + 1..];
    }
    out.put_slice(rest);
}

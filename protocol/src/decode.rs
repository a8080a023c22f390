use crate::escape::unescape_into;
use crate::{Command, DecodeError, Frame, Headers, Version};
use bytes::{Buf, BytesMut};

/// Bounds on what the decoder will buffer for one frame. Each is checked as
/// soon as it is crossed, so a peer cannot make the decoder hold more than
/// about `max_frame_bytes` (plus what it already sent for later frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most headers in one frame. Default 64.
    pub max_headers: usize,
    /// Longest command or header line, in bytes, without its EOL. Default 8192.
    pub max_header_line: usize,
    /// Largest body, in bytes. A `content-length` above it is refused as soon
    /// as the header is read. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Largest frame (command, headers, body and NUL), in bytes.
    /// Default 1 MiB + 64 KiB.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_headers: 64,
            max_header_line: 8192,
            max_body_bytes: 1024 * 1024,
            max_frame_bytes: 1024 * 1024 + 64 * 1024,
        }
    }
}

/// What the decoder found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// One EOL between frames (`\n` or `\r\n`).
    HeartBeat,
}

/// An incremental STOMP decoder.
///
/// The frame being decoded always starts at `buf[0]`; nothing is consumed
/// from the buffer until a whole frame (or heart-beat) is there. Between
/// calls the decoder remembers how far it has scanned and the headers it has
/// already parsed, so bytes arriving one at a time cost O(1) each.
///
/// The result does not depend on how the bytes are split between calls: the
/// same input gives the same items and the same error whether it arrives
/// whole or one byte at a time. When input breaks several rules, the error is
/// about the earliest byte that broke one, so limits are enforced as soon as
/// the byte that crosses them arrives.
///
/// After an error the stream is unusable: close the connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    version: Version,
    /// The frame being read, if its first byte has arrived.
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    /// Set once the command line has been read.
    command: Option<Command>,
    headers: Headers,
    /// From the first `content-length` header.
    content_length: Option<usize>,
    /// Whether the blank line ending the headers has been read.
    in_body: bool,
    /// While reading the head, where the current line starts; then, where
    /// the body starts.
    start: usize,
    /// How far the current line (or the body) has been searched.
    scanned: usize,
    /// Whether the current line has a backslash (so escapes to decode).
    line_has_backslash: bool,
}

/// Most header text reserved up front for one frame; more grows as needed.
const HEADER_TEXT_RESERVE: usize = 256;
/// Headers reserved up front for one frame.
const HEADERS_RESERVE: usize = 8;

impl Decoder {
    /// A decoder for STOMP 1.2 until told otherwise with [`set_version`](Self::set_version).
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            version: Version::V1_2,
            partial: None,
        }
    }

    /// Sets the negotiated version, which decides how header escapes are read.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Decodes the next item from the front of `buf`, or returns `Ok(None)`
    /// if `buf` does not hold a whole one yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        let result = self.step(buf);
        if result.is_err() {
            self.partial = None;
        }
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        let partial = match &mut self.partial {
            Some(partial) => partial,
            None => match buf.first() {
                None => return Ok(None),
                Some(b'\n') => {
                    buf.advance(1);
                    return Ok(Some(Item::HeartBeat));
                }
                Some(b'\r') => {
                    return match buf.get(1) {
                        None => Ok(None),
                        Some(b'\n') => {
                            buf.advance(2);
                            Ok(Some(Item::HeartBeat))
                        }
                        Some(_) => Err(DecodeError::CarriageReturnWithoutLineFeed),
                    };
                }
                Some(_) => self.partial.insert(Partial {
                    command: None,
                    headers: Headers::with_text_capacity(
                        buf.len().min(HEADER_TEXT_RESERVE),
                        HEADERS_RESERVE,
                    ),
                    content_length: None,
                    in_body: false,
                    start: 0,
                    scanned: 0,
                    line_has_backslash: false,
                }),
            },
        };
        if !partial.in_body {
            if !read_head(partial, buf, self.limits, self.version)? {
                return Ok(None);
            }
            partial.in_body = true;
            partial.scanned = partial.start;
        }
        let Some(len) = body_length(partial, buf, self.limits)? else {
            return Ok(None);
        };
        let Some(partial) = self.partial.take() else {
            unreachable!("checked above")
        };
        buf.advance(partial.start);
        let body = buf.split_to(len).freeze();
        buf.advance(1); // the NUL
        Ok(Some(Item::Frame(Frame {
            command: partial.command.expect("read_head sets the command"),
            headers: partial.headers,
            body,
        })))
    }
}

/// Reads command and header lines. Returns true once the blank line that
/// ends the headers has been read (then `head.start` is the body start).
fn read_head(
    head: &mut Partial,
    buf: &[u8],
    limits: Limits,
    version: Version,
) -> Result<bool, DecodeError> {
    loop {
        // Find the end of the line (LF, or CR LF), noting backslashes on the
        // way so that lines without one skip unescaping.
        let Some(found) = memchr::memchr3(b'\n', b'\r', b'\\', &buf[head.scanned..]) else {
            check_head_bytes(head.start, buf.len(), limits)?;
            head.scanned = buf.len();
            return Ok(false);
        };
        let eol = head.scanned + found;
        check_head_bytes(head.start, eol, limits)?;
        if buf[eol] == b'\\' {
            head.line_has_backslash = true;
            head.scanned = eol + 1;
            continue;
        }
        check_head_byte(eol, limits)?;
        let next = if buf[eol] == b'\n' {
            eol + 1
        } else {
            match buf.get(eol + 1) {
                None => {
                    // Look at this CR again when the next byte is here.
                    head.scanned = eol;
                    return Ok(false);
                }
                Some(b'\n') => {
                    check_head_byte(eol + 1, limits)?;
                    eol + 2
                }
                Some(_) => return Err(DecodeError::CarriageReturnWithoutLineFeed),
            }
        };
        let line = &buf[head.start..eol];
        let line_has_backslash = std::mem::take(&mut head.line_has_backslash);
        head.start = next;
        head.scanned = next;

        let Some(command) = head.command else {
            let command = Command::from_bytes(line).ok_or_else(|| {
                DecodeError::UnknownCommand(String::from_utf8_lossy(line).into_owned())
            })?;
            head.command = Some(command);
            continue;
        };
        if line.is_empty() {
            if let Some(length) = head.content_length {
                // The whole frame's size is known now.
                if next.saturating_add(length).saturating_add(1) > limits.max_frame_bytes {
                    return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
                }
            }
            return Ok(true);
        }
        if head.headers.len() == limits.max_headers {
            return Err(DecodeError::TooManyHeaders(limits.max_headers));
        }
        // Names are short: a plain loop beats a memchr call here.
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
            DecodeError::HeaderWithoutColon(String::from_utf8_lossy(line).into_owned())
        })?;
        // One UTF-8 check for the whole line; the colon is ASCII, so both
        // halves are UTF-8 too.
        let line_text = std::str::from_utf8(line).map_err(|_| DecodeError::InvalidUtf8)?;
        let (name, value) = (&line_text[..colon], &line_text[colon + 1..]);
        let unescape = line_has_backslash && command.escapes_headers() && version != Version::V1_0;
        let text = head.headers.text_mut();
        let name_start = text.len();
        let split = if unescape {
            unescape_into(name, version, text)?;
            let split = text.len();
            unescape_into(value, version, text)?;
            split
        } else {
            text.push_str(name);
            let split = text.len();
            text.push_str(value);
            split
        };
        let is_content_length = &text[name_start..split] == "content-length";
        head.headers.end_header(name_start, split);
        if is_content_length && head.content_length.is_none() {
            let length = parse_content_length(head.headers.last_value())?;
            if length > limits.max_body_bytes {
                return Err(DecodeError::BodyTooLarge(limits.max_body_bytes));
            }
            // This frame is at least what has been read, a blank line, the
            // body and the NUL.
            if next.saturating_add(length).saturating_add(2) > limits.max_frame_bytes {
                return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
            }
            head.content_length = Some(length);
        }
    }
}

/// Checks the bytes of a head line at offsets `line_start..end` (not its
/// EOL) against the line and frame limits, naming the limit that the
/// earliest offending byte crossed.
fn check_head_bytes(line_start: usize, end: usize, limits: Limits) -> Result<(), DecodeError> {
    // The first offset at which a byte makes the line too long.
    let line_limit = line_start.saturating_add(limits.max_header_line);
    // The first offset at which a head byte makes the frame too large: a head
    // byte at offset `i` means a frame of at least `i + 2` bytes (a NUL
    // follows the head).
    let frame_limit = limits.max_frame_bytes.saturating_sub(1);
    if end > line_limit.min(frame_limit) {
        return Err(if line_limit <= frame_limit {
            DecodeError::HeaderLineTooLong(limits.max_header_line)
        } else {
            DecodeError::FrameTooLarge(limits.max_frame_bytes)
        });
    }
    Ok(())
}

/// Checks an EOL byte of the head at offset `at` against the frame limit.
fn check_head_byte(at: usize, limits: Limits) -> Result<(), DecodeError> {
    if at >= limits.max_frame_bytes.saturating_sub(1) {
        return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
    }
    Ok(())
}

fn parse_content_length(value: &str) -> Result<usize, DecodeError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::InvalidContentLength(value.to_owned()));
    }
    // All digits: the only way to fail is overflow, which is "too large".
    Ok(value.parse().unwrap_or(usize::MAX))
}

/// Returns the body length once the whole body and its NUL are in `buf`.
fn body_length(
    body: &mut Partial,
    buf: &[u8],
    limits: Limits,
) -> Result<Option<usize>, DecodeError> {
    if let Some(len) = body.content_length {
        let nul_at = body.start.saturating_add(len);
        if buf.len() <= nul_at {
            return Ok(None);
        }
        if buf[nul_at] != 0 {
            return Err(DecodeError::MissingNul(len));
        }
        return Ok(Some(len));
    }
    // The longest body both limits allow (the head checks keep `start`
    // below `max_frame_bytes`).
    let frame_allows = limits.max_frame_bytes.saturating_sub(body.start + 1);
    let allowed = limits.max_body_bytes.min(frame_allows);
    // The NUL may be at `start + allowed` at the latest; search no further.
    let search_end = body.start.saturating_add(allowed).saturating_add(1);
    let end = buf.len().min(search_end);
    if let Some(found) = memchr::memchr(0, &buf[body.scanned..end]) {
        return Ok(Some(body.scanned + found - body.start));
    }
    if end == search_end {
        return Err(if limits.max_body_bytes <= frame_allows {
            DecodeError::BodyTooLarge(limits.max_body_bytes)
        } else {
            DecodeError::FrameTooLarge(limits.max_frame_bytes)
        });
    }
    body.scanned = end;
    Ok(None)
}

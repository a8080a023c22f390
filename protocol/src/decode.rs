use crate::escape::unescape;
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
/// After an error the stream is unusable: close the connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    version: Version,
    state: State,
}

#[derive(Debug, Default)]
enum State {
    /// Between frames: the next byte starts a heart-beat or a command.
    #[default]
    Idle,
    Head(Head),
    Body(Body),
}

#[derive(Debug, Default)]
struct Head {
    command: Option<Command>,
    headers: Headers,
    content_length: Option<usize>,
    /// Offset of the line being read.
    line_start: usize,
    /// Offset up to which the current line has been searched for LF.
    scanned: usize,
}

#[derive(Debug)]
struct Body {
    command: Command,
    headers: Headers,
    content_length: Option<usize>,
    /// Offset of the first body byte.
    start: usize,
    /// Offset up to which the body has been searched for NUL.
    scanned: usize,
}

impl Decoder {
    /// A decoder for STOMP 1.2 until told otherwise with [`set_version`](Self::set_version).
    pub fn new(limits: Limits) -> Decoder {
        Decoder { limits, version: Version::V1_2, state: State::Idle }
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
            self.state = State::Idle;
        }
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        loop {
            match &mut self.state {
                State::Idle => match buf.first() {
                    None => return Ok(None),
                    Some(b'\n') => {
                        buf.advance(1);
                        return Ok(Some(Item::HeartBeat));
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(None),
                        Some(b'\n') => {
                            buf.advance(2);
                            return Ok(Some(Item::HeartBeat));
                        }
                        Some(_) => return Err(DecodeError::CarriageReturnWithoutLineFeed),
                    },
                    Some(_) => self.state = State::Head(Head::default()),
                },
                State::Head(head) => {
                    if !read_head(head, buf, self.limits, self.version)? {
                        return Ok(None);
                    }
                    let head = std::mem::take(head);
                    self.state = State::Body(Body {
                        command: head.command.expect("read_head sets the command"),
                        headers: head.headers,
                        content_length: head.content_length,
                        start: head.line_start,
                        scanned: head.line_start,
                    });
                }
                State::Body(body) => {
                    let Some(len) = body_length(body, buf, self.limits)? else {
                        return Ok(None);
                    };
                    let State::Body(body) = std::mem::take(&mut self.state) else { unreachable!() };
                    buf.advance(body.start);
                    let bytes = buf.split_to(len).freeze();
                    buf.advance(1); // the NUL
                    return Ok(Some(Item::Frame(Frame {
                        command: body.command,
                        headers: body.headers,
                        body: bytes,
                    })));
                }
            }
        }
    }
}

/// Reads command and header lines. Returns true once the blank line that
/// ends the headers has been read (then `head.line_start` is the body start).
fn read_head(head: &mut Head, buf: &BytesMut, limits: Limits, version: Version) -> Result<bool, DecodeError> {
    loop {
        let Some(found) = memchr::memchr(b'\n', &buf[head.scanned..]) else {
            head.scanned = buf.len();
            if buf.len() - head.line_start > limits.max_header_line + 1 {
                return Err(DecodeError::HeaderLineTooLong(limits.max_header_line));
            }
            if buf.len() > limits.max_frame_bytes {
                return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
            }
            return Ok(false);
        };
        let line_end = head.scanned + found;
        let mut line = &buf[head.line_start..line_end];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        if line.len() > limits.max_header_line {
            return Err(DecodeError::HeaderLineTooLong(limits.max_header_line));
        }
        if line_end >= limits.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
        }
        if memchr::memchr(b'\r', line).is_some() {
            return Err(DecodeError::CarriageReturnWithoutLineFeed);
        }
        head.line_start = line_end + 1;
        head.scanned = head.line_start;

        let Some(command) = head.command else {
            let command = Command::from_bytes(line)
                .ok_or_else(|| DecodeError::UnknownCommand(String::from_utf8_lossy(line).into_owned()))?;
            head.command = Some(command);
            continue;
        };
        if line.is_empty() {
            return Ok(true);
        }
        if head.headers.len() == limits.max_headers {
            return Err(DecodeError::TooManyHeaders(limits.max_headers));
        }
        let colon = memchr::memchr(b':', line)
            .ok_or_else(|| DecodeError::HeaderWithoutColon(String::from_utf8_lossy(line).into_owned()))?;
        let escaped = command.escapes_headers();
        let name = unescape(&line[..colon], version, escaped)?;
        let value = unescape(&line[colon + 1..], version, escaped)?;
        if name == "content-length" && !head.headers.contains("content-length") {
            let length = parse_content_length(&value)?;
            if length > limits.max_body_bytes {
                return Err(DecodeError::BodyTooLarge(limits.max_body_bytes));
            }
            // Headers so far + the rest of this frame's smallest possible head
            // (a blank line) + body + NUL.
            if head.line_start + 1 + length + 1 > limits.max_frame_bytes {
                return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
            }
            head.content_length = Some(length);
        }
        head.headers.push(name, value);
    }
}

fn parse_content_length(value: &str) -> Result<usize, DecodeError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::InvalidContentLength(value.to_owned()));
    }
    // All digits: the only way to fail is overflow, which is "too large".
    Ok(value.parse().unwrap_or(usize::MAX))
}

/// Returns the body length once the whole body and its NUL are in `buf`.
fn body_length(body: &mut Body, buf: &BytesMut, limits: Limits) -> Result<Option<usize>, DecodeError> {
    if let Some(len) = body.content_length {
        let nul_at = body.start + len;
        if buf.len() <= nul_at {
            return Ok(None);
        }
        if buf[nul_at] != 0 {
            return Err(DecodeError::MissingNul(len));
        }
        return Ok(Some(len));
    }
    match memchr::memchr(0, &buf[body.scanned..]) {
        Some(found) => {
            let len = body.scanned + found - body.start;
            check_body(len, body.start, limits)?;
            Ok(Some(len))
        }
        None => {
            body.scanned = buf.len();
            check_body(buf.len() - body.start, body.start, limits)?;
            Ok(None)
        }
    }
}

fn check_body(len: usize, start: usize, limits: Limits) -> Result<(), DecodeError> {
    if len > limits.max_body_bytes {
        return Err(DecodeError::BodyTooLarge(limits.max_body_bytes));
    }
    if start + len + 1 > limits.max_frame_bytes {
        return Err(DecodeError::FrameTooLarge(limits.max_frame_bytes));
    }
    Ok(())
}

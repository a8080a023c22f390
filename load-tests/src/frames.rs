//! What goes on the wire: client frames (built with `stompede-protocol`),
//! the stamped message body, and an inbox that takes MESSAGE frames apart
//! with as little work as possible.

use bytes::{Bytes, BytesMut};
use stompede_protocol::{encode, Command, DecodeError, Decoder, Frame, Item, Limits, Version};

/// CONNECT options shared by every connection of a run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// The CONNECT `host` header (RabbitMQ's virtual host).
    pub vhost: Option<String>,
}

pub fn connect_frame(creds: &Credentials) -> Bytes {
    let mut f = Frame::new(Command::Connect)
        .header("accept-version", "1.2,1.1,1.0")
        .header("heart-beat", "0,0");
    if let Some(h) = &creds.vhost {
        f = f.header("host", h.as_str());
    }
    if let Some(l) = &creds.login {
        f = f.header("login", l.as_str());
    }
    if let Some(p) = &creds.passcode {
        f = f.header("passcode", p.as_str());
    }
    to_bytes(&f, Version::V1_2)
}

pub fn subscribe_frame(id: u64, destination: &str, receipt: Option<&str>) -> Bytes {
    let mut f = Frame::new(Command::Subscribe)
        .header("id", id.to_string())
        .header("destination", destination)
        .header("ack", "auto");
    if let Some(r) = receipt {
        f = f.header("receipt", r);
    }
    to_bytes(&f, Version::V1_2)
}

pub fn disconnect_frame(receipt: &str) -> Bytes {
    to_bytes(
        &Frame::new(Command::Disconnect).header("receipt", receipt),
        Version::V1_2,
    )
}

pub fn send_frame(destination: &str, body: Bytes) -> Bytes {
    let f = Frame::new(Command::Send)
        .header("destination", destination)
        .header("content-type", "text/plain")
        .body(body);
    to_bytes(&f, Version::V1_2)
}

fn to_bytes(frame: &Frame, version: Version) -> Bytes {
    let mut out = BytesMut::new();
    encode(frame, version, &mut out);
    out.freeze()
}

/// What every published body carries: which step of the run, which
/// destination, the sequence number within that destination and step, and
/// the time the message was *scheduled* to be sent (CLOCK_MONOTONIC ns).
/// Latency is measured from the schedule, so a publisher that falls behind
/// shows up in the figures (no coordinated omission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub step: u32,
    pub dest: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Writes `"step dest seq sent_ns "` padded with `.` to `size` bytes.
/// The body is plain ASCII: no JSON escaping needed, no NUL.
pub fn write_body(s: &Stamp, size: usize, out: &mut Vec<u8>) {
    let start = out.len();
    let mut b = itoa_buf();
    for n in [s.step as u64, s.dest as u64, s.seq, s.sent_ns] {
        out.extend_from_slice(b.format(n).as_bytes());
        out.push(b' ');
    }
    let written = out.len() - start;
    if size > written {
        out.resize(start + size, b'.');
    }
}

fn itoa_buf() -> ItoaBuf {
    ItoaBuf([0; 20])
}

/// A tiny integer formatter (avoids a dependency for four numbers).
struct ItoaBuf([u8; 20]);

impl ItoaBuf {
    fn format(&mut self, mut n: u64) -> &str {
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        std::str::from_utf8(&self.0[i..]).unwrap_or("0")
    }
}

/// Reads a stamp back; `None` if the body is not one of ours.
pub fn parse_body(body: &[u8]) -> Option<Stamp> {
    let mut nums = [0u64; 4];
    let mut i = 0;
    for n in nums.iter_mut() {
        let start = i;
        while i < body.len() && body[i].is_ascii_digit() {
            *n = n.checked_mul(10)?.checked_add((body[i] - b'0') as u64)?;
            i += 1;
        }
        if i == start || body.get(i) != Some(&b' ') {
            return None;
        }
        i += 1;
    }
    Some(Stamp {
        step: nums[0] as u32,
        dest: nums[1] as u32,
        seq: nums[2],
        sent_ns: nums[3],
    })
}

/// One thing that arrived on a subscriber's connection.
#[derive(Debug)]
pub enum Incoming {
    /// The body of a MESSAGE frame.
    Message(Bytes),
    /// Any other frame (CONNECTED, RECEIPT, ERROR).
    Other(Frame),
}

/// Turns WebSocket payloads into frames. MESSAGE frames take a fast path
/// that only finds the end of the headers and the NUL (our bodies never
/// contain NUL), so a delivery costs two memchr scans and no allocation;
/// everything else goes through the full `stompede-protocol` decoder.
pub struct Inbox {
    buf: BytesMut,
    decoder: Decoder,
    /// The decoder has started on a frame and must finish it.
    in_decoder: bool,
}

const MESSAGE_LINE: &[u8] = b"MESSAGE\n";

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            buf: BytesMut::new(),
            decoder: Decoder::new(Limits::default()),
            in_decoder: false,
        }
    }
}

impl Inbox {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Like `push`, but takes over the payload without copying when nothing
    /// is buffered (the common case: whole frames per WebSocket message).
    pub fn push_bytes(&mut self, data: Bytes) {
        if self.buf.is_empty() {
            match data.try_into_mut() {
                Ok(m) => self.buf = m,
                Err(b) => self.buf.extend_from_slice(&b),
            }
        } else {
            self.buf.extend_from_slice(&data);
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next(&mut self) -> Result<Option<Incoming>, DecodeError> {
        loop {
            if !self.in_decoder {
                // Heart-beats between frames.
                while let Some(&c) = self.buf.first() {
                    if c == b'\n' {
                        let _ = self.buf.split_to(1);
                    } else if self.buf.starts_with(b"\r\n") {
                        let _ = self.buf.split_to(2);
                    } else {
                        break;
                    }
                }
                if self.buf.is_empty()
                    || (self.buf.len() < MESSAGE_LINE.len() && MESSAGE_LINE.starts_with(&self.buf))
                {
                    return Ok(None);
                }
                if self.buf.starts_with(MESSAGE_LINE) {
                    let Some(head_end) = memchr::memmem::find(&self.buf, b"\n\n") else {
                        return Ok(None);
                    };
                    let body_start = head_end + 2;
                    let Some(nul) = memchr::memchr(0, &self.buf[body_start..]) else {
                        return Ok(None);
                    };
                    let mut frame = self.buf.split_to(body_start + nul + 1);
                    frame.truncate(body_start + nul);
                    let body = frame.split_off(body_start).freeze();
                    return Ok(Some(Incoming::Message(body)));
                }
            }
            self.in_decoder = true;
            match self.decoder.decode(&mut self.buf)? {
                None => return Ok(None),
                Some(Item::HeartBeat) => self.in_decoder = false,
                Some(Item::Frame(f)) => {
                    self.in_decoder = false;
                    return Ok(Some(if f.command == Command::Message {
                        Incoming::Message(f.body)
                    } else {
                        Incoming::Other(f)
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips() {
        let s = Stamp {
            step: 2,
            dest: 17,
            seq: 123456,
            sent_ns: 98765432101234,
        };
        let mut out = Vec::new();
        write_body(&s, 64, &mut out);
        assert_eq!(out.len(), 64);
        assert_eq!(parse_body(&out), Some(s));
        out.clear();
        write_body(&s, 0, &mut out);
        assert_eq!(parse_body(&out), Some(s));
        assert_eq!(parse_body(b"hello"), None);
    }

    #[test]
    fn inbox_fast_path_and_decoder() {
        let mut inbox = Inbox::default();
        let msg = b"MESSAGE\nsubscription:1\ndestination:/topic/a\ncontent-length:5\n\nhello\0\n";
        // Fed one byte at a time, then two frames in one push.
        for b in msg[..msg.len() - 1].iter() {
            assert!(matches!(inbox.next(), Ok(None)));
            inbox.push(&[*b]);
        }
        match inbox.next().unwrap() {
            Some(Incoming::Message(b)) => assert_eq!(&b[..], b"hello"),
            other => panic!("{other:?}"),
        }
        inbox.push(b"RECEIPT\nreceipt-id:7\n\n\0");
        inbox.push(msg);
        match inbox.next().unwrap() {
            Some(Incoming::Other(f)) => assert_eq!(f.headers.get("receipt-id"), Some("7")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(inbox.next(), Ok(Some(Incoming::Message(_)))));
        assert!(matches!(inbox.next(), Ok(None)));
    }
}

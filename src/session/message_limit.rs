//! Until CONNECT succeeds, a WebSocket message may be no larger than the
//! pre-CONNECT budget (`max-frame-bytes-before-connect` plus framing
//! slack), so an unauthenticated socket cannot make tungstenite buffer a
//! full-size message. tungstenite's own limit is fixed when the stream is
//! made, so this wrapper scans the WebSocket frame headers of what is read
//! (RFC 6455 §5.2) and fails the read as soon as a message's announced
//! length passes the budget; [`MessageLimit::lift`] ends the scanning.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A read failed: a message before CONNECT announced more than `limit` bytes.
#[derive(Debug, thiserror::Error)]
#[error(
    "WebSocket message too large before CONNECT: over {limit} bytes (max-frame-bytes-before-connect)"
)]
pub struct TooLargeBeforeConnect {
    pub limit: usize,
}

/// Where the scan is in the byte stream.
#[derive(Debug)]
struct Scan {
    /// Header bytes gathered so far (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes still to skip.
    payload_left: u64,
    /// Payload bytes of the current data message so far.
    message: u64,
    /// The frame being skipped ends its message.
    ends_message: bool,
}

#[derive(Debug)]
pub struct MessageLimit<S> {
    inner: S,
    /// `None` once lifted.
    limit: Option<usize>,
    scan: Scan,
}

impl<S> MessageLimit<S> {
    pub fn new(inner: S, limit: usize) -> MessageLimit<S> {
        MessageLimit {
            inner,
            limit: Some(limit),
            scan: Scan {
                header: [0; 14],
                have: 0,
                payload_left: 0,
                message: 0,
                ends_message: false,
            },
        }
    }

    /// The stream inside.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// CONNECT succeeded: tungstenite's own limit applies from now on.
    pub fn lift(&mut self) {
        self.limit = None;
    }

    /// Follows the frames through `bytes`; fails once a message passes `limit`.
    fn check(&mut self, mut bytes: &[u8], limit: usize) -> Result<(), TooLargeBeforeConnect> {
        let scan = &mut self.scan;
        while !bytes.is_empty() {
            if scan.payload_left > 0 {
                let skip = scan.payload_left.min(bytes.len() as u64);
                scan.payload_left -= skip;
                bytes = &bytes[skip as usize..];
                if scan.payload_left == 0 && scan.ends_message {
                    scan.message = 0;
                }
                continue;
            }
            scan.header[scan.have] = bytes[0];
            scan.have += 1;
            bytes = &bytes[1..];
            if scan.have < 2 {
                continue;
            }
            let extended = match scan.header[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if scan.header[1] & 0x80 != 0 { 4 } else { 0 };
            if scan.have < 2 + extended {
                continue;
            }
            let length = match extended {
                0 => u64::from(scan.header[1] & 0x7f),
                2 => u64::from(u16::from_be_bytes([scan.header[2], scan.header[3]])),
                _ => u64::from_be_bytes(scan.header[2..10].try_into().expect("8 bytes")),
            };
            let opcode = scan.header[0] & 0x0f;
            // Data frames (continuation, text, binary) add up to a message;
            // control frames stand alone. Checked as soon as the length is
            // known, before the mask is even read.
            let data = opcode < 0x8;
            if data && scan.message.saturating_add(length) > limit as u64 {
                return Err(TooLargeBeforeConnect { limit });
            }
            if scan.have < 2 + extended + mask {
                continue;
            }
            let fin = scan.header[0] & 0x80 != 0;
            scan.have = 0;
            if data {
                scan.message += length;
            }
            scan.ends_message = data && fin;
            scan.payload_left = length;
            if length == 0 && scan.ends_message {
                scan.message = 0;
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MessageLimit<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(limit) = this.limit {
            if let Err(too_large) = this.check(&buf.filled()[before..], limit) {
                // Reported once; the connection closes next.
                this.limit = None;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, too_large)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MessageLimit<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(b'x', len));
        out
    }

    #[test]
    fn messages_are_followed_byte_by_byte_and_fragments_add_up() {
        let mut stream = Vec::new();
        stream.extend(frame(0x1, true, 100));
        stream.extend(frame(0x9, true, 10)); // a ping between messages
        stream.extend(frame(0x2, true, 1000));
        stream.extend(frame(0x2, false, 600));
        stream.extend(frame(0x9, true, 5)); // a ping inside a fragmented message
        stream.extend(frame(0x0, true, 600));
        for chunk in [1, 7, 4096] {
            let mut limit = MessageLimit::new((), 1200);
            for piece in stream.chunks(chunk) {
                limit.check(piece, 1200).unwrap();
            }
        }
        let mut over = Vec::new();
        over.extend(frame(0x2, false, 700));
        over.extend(frame(0x0, true, 600));
        let mut limit = MessageLimit::new((), 1200);
        assert!(limit.check(&over, 1200).is_err());
        let mut limit = MessageLimit::new((), 1200);
        assert!(limit.check(&frame(0x1, true, 70_000)[..10], 1200).is_err());
    }
}

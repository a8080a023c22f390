//! The write side of a connection: STOMP frames go out as unmasked WebSocket
//! frames (RFC 6455 §5.2) that this module encodes and writes to the socket
//! itself, many to a write.
//!
//! Why not through tungstenite's sink: it copies every message into a write
//! buffer that never shrinks, so a reader that once received a burst of
//! comments would keep that buffer for as long as it stays connected. Here a
//! batch is encoded once, straight from the shared [`PreparedMessage`] into
//! one buffer, written, and the buffer is given back when the queue is empty.
//! tungstenite still reads, answers pings and does the closing handshake; the
//! two never interleave mid-frame because tungstenite's own pending bytes are
//! flushed before each of our writes, and ours are always written whole
//! before control returns to the connection loop.

use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox, OutboxState};
use bytes::{Buf, BufMut, BytesMut};
use futures_util::SinkExt;
use std::collections::VecDeque;
use std::io;
use stompede_protocol::{encode, encoded_len, Frame, PreparedMessage, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;

/// Deliveries kept in the reused batch between rounds; a larger batch
/// (after a burst) is given back.
const RETAINED_BATCH_CAPACITY: usize = 16;

/// WebSocket opcodes (RFC 6455 §5.2).
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
/// FIN bit: every message is sent as one frame.
const FIN: u8 = 0x80;

/// Encodes frames for this connection's STOMP version and writes them.
pub struct Writer {
    pub version: Version,
    /// Encoded bytes not yet written. Empty between writes; when a write is
    /// cancelled half-way, what is left is written before anything else.
    pending: BytesMut,
    /// Deliveries taken from the outbox.
    batch: VecDeque<Delivery>,
    /// A batch is written once it reaches this many bytes (`ws-write-buffer-bytes`).
    max_write_bytes: usize,
}

impl Writer {
    pub fn new(max_write_bytes: usize) -> Writer {
        Writer {
            version: Version::V1_2,
            pending: BytesMut::new(),
            batch: VecDeque::new(),
            max_write_bytes: max_write_bytes.max(1),
        }
    }

    /// Writes everything queued, round after round until the outbox is empty.
    pub async fn drain_outbox<S>(
        &mut self,
        outbox: &Outbox,
        ws: &mut WebSocketStream<S>,
        metrics: &Metrics,
    ) -> io::Result<OutboxState>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let state = outbox.drain_into(&mut self.batch);
            let frames = self.batch.len();
            metrics.outbound_queued.sub(frames as i64);
            if state != OutboxState::Open || frames == 0 {
                self.batch.clear();
                if self.batch.capacity() > RETAINED_BATCH_CAPACITY {
                    self.batch = VecDeque::new();
                }
                return Ok(state);
            }
            let oldest = self.batch.front().map(|delivery| delivery.published_at);
            while let Some(delivery) = self.batch.pop_front() {
                self.put_delivery(&delivery);
                if self.pending.len() >= self.max_write_bytes {
                    self.write_pending(ws).await?;
                }
            }
            self.write_pending(ws).await?;
            metrics.messages_delivered.inc_by(frames as u64);
            metrics.outbound_batch_frames.observe(frames as f64);
            // One latency sample per batch: its oldest delivery, the worst case.
            if let Some(oldest) = oldest {
                metrics
                    .delivery_latency
                    .observe(oldest.elapsed().as_secs_f64());
            }
        }
    }

    /// Writes what is already queued (a MESSAGE caused by the session's own
    /// SEND goes out before the reply to it), then the replies.
    pub async fn write_replies<S>(
        &mut self,
        replies: &mut Vec<Frame>,
        outbox: &Outbox,
        ws: &mut WebSocketStream<S>,
        metrics: &Metrics,
    ) -> io::Result<OutboxState>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let state = self.drain_outbox(outbox, ws, metrics).await?;
        if state == OutboxState::Open {
            self.write_frames(replies.drain(..), ws).await?;
        }
        Ok(state)
    }

    /// Encodes and writes `frames` in one write.
    pub async fn write_frames<S>(
        &mut self,
        frames: impl Iterator<Item = Frame>,
        ws: &mut WebSocketStream<S>,
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        for frame in frames {
            let text = std::str::from_utf8(&frame.body).is_ok();
            put_header(&mut self.pending, text, encoded_len(&frame, self.version));
            encode(&frame, self.version, &mut self.pending);
        }
        self.write_pending(ws).await
    }

    /// A heart-beat: one EOL in a text message.
    pub async fn write_heartbeat<S>(&mut self, ws: &mut WebSocketStream<S>) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        put_header(&mut self.pending, true, 1);
        self.pending.put_u8(b'\n');
        self.write_pending(ws).await
    }

    fn put_delivery(&mut self, delivery: &Delivery) {
        let message: &PreparedMessage = &delivery.message;
        let ack = delivery
            .ack
            .then(|| message.headers().get("message-id").unwrap_or_default());
        let len = message.len_for(self.version, &delivery.subscription, ack);
        // Headers are always UTF-8, so the frame is text exactly when its body is.
        put_header(&mut self.pending, message.body_is_utf8(), len);
        let start = self.pending.len();
        message.write_for(self.version, &delivery.subscription, ack, &mut self.pending);
        debug_assert_eq!(
            self.pending.len() - start,
            len,
            "len_for and write_for disagree"
        );
    }

    /// Writes all pending bytes, after whatever tungstenite itself has queued
    /// (a pong), then gives the buffer back: an idle connection keeps none.
    async fn write_pending<S>(&mut self, ws: &mut WebSocketStream<S>) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.pending.is_empty() {
            return Ok(());
        }
        ws.flush().await.map_err(io::Error::other)?;
        let socket = ws.get_mut();
        while !self.pending.is_empty() {
            let written = socket.write(&self.pending).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pending.advance(written);
        }
        socket.flush().await?;
        self.pending = BytesMut::new();
        Ok(())
    }
}

/// The header of an unmasked, final WebSocket frame (server to client) with a
/// payload of `len` bytes.
fn put_header(out: &mut BytesMut, text: bool, len: usize) {
    out.reserve(10 + len);
    out.put_u8(FIN | if text { OPCODE_TEXT } else { OPCODE_BINARY });
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// Our headers parse back, with tungstenite's parser, to the same
    /// opcode and length at each of the three length encodings' edges.
    #[test]
    fn frame_headers_parse_back_with_tungstenite() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
            for text in [true, false] {
                let mut out = BytesMut::new();
                put_header(&mut out, text, len);
                let mut cursor = io::Cursor::new(&out[..]);
                let (header, parsed_len) = FrameHeader::parse(&mut cursor)
                    .unwrap()
                    .expect("a whole header");
                assert_eq!(parsed_len, len as u64, "length {len}");
                assert_eq!(
                    cursor.position() as usize,
                    out.len(),
                    "header size for {len}"
                );
                assert!(header.is_final);
                assert!(header.mask.is_none());
                let expected = if text { "TEXT" } else { "BINARY" };
                assert_eq!(
                    format!("{:?}", header.opcode).to_uppercase(),
                    format!("DATA({expected})")
                );
            }
        }
    }
}

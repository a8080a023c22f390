//! The write side of a connection: STOMP frames go out as unmasked WebSocket
//! frames (RFC 6455 §5.2) that this module encodes and writes to the socket
//! itself, many to a write.
//!
//! Why not through tungstenite's sink: it copies every message into a write
//! buffer that never shrinks, so a reader that once received a burst of
//! comments would keep that buffer for as long as it stays connected. Here a
//! batch is encoded once, straight from the shared [`PreparedMessage`] into
//! one buffer, written, and the buffer is given back when the queue is empty.
//!
//! Writing is poll-based ([`Writer::poll_write`]) so that the connection can
//! read, and watch its deadlines, while a write waits for a slow socket.
//! tungstenite still reads, answers pings and does the closing handshake;
//! the two never interleave mid-frame: tungstenite's pending bytes are
//! flushed before each of our batches, and while a batch is half written the
//! [`Gated`] socket makes tungstenite's own writes wait (it keeps them and
//! retries, reading meanwhile).

use crate::fanout::GAP_HEADER;
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox, OutboxState, Queued};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Sink;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use stompede_protocol::{encode, encoded_len, Frame, PreparedMessage, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Deliveries kept in the reused batch between rounds; a larger batch
/// (after a burst) is given back.
const RETAINED_BATCH_CAPACITY: usize = 16;

/// WebSocket opcodes (RFC 6455 §5.2).
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
/// FIN bit: every message is sent as one frame.
const FIN: u8 = 0x80;

/// The connection's socket, with a gate on the writes that come through
/// tungstenite (pongs, the close frame): while the [`Writer`] is in the
/// middle of its own bytes, those wait, so they never land mid-frame. With
/// direct writes (see `outbox`), tungstenite's writes also take the socket
/// back from the publishers first, and wait while the end of a frame a
/// publisher wrote in part has still to go out.
#[derive(Debug)]
pub struct Gated<S> {
    inner: S,
    /// Set while the writer has a batch half written.
    closed: bool,
    /// tungstenite's task, to wake once the gate opens again.
    waiting: Option<Waker>,
    /// The outbox whose publishers may write into this socket.
    direct: Option<Arc<Outbox>>,
    /// tungstenite has written since it last flushed: it may still hold
    /// bytes, so the socket is not handed to the publishers.
    control_unflushed: bool,
}

impl<S> Gated<S> {
    pub fn new(inner: S) -> Gated<S> {
        Gated {
            inner,
            closed: false,
            waiting: None,
            direct: None,
            control_unflushed: false,
        }
    }

    /// Publishers of `outbox` may write into this socket while it is theirs.
    pub fn share_with(&mut self, outbox: Arc<Outbox>) {
        self.direct = Some(outbox);
    }

    /// Whether tungstenite may hold bytes it has not written yet.
    pub fn control_unflushed(&self) -> bool {
        self.control_unflushed
    }

    /// The socket inside.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    fn close_gate(&mut self) {
        self.closed = true;
    }

    fn open_gate(&mut self) {
        self.closed = false;
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }

    fn wait(&mut self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            self.waiting = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// Before tungstenite writes: the socket is taken back from the
    /// publishers, and a frame they left half written goes first (the
    /// connection's writer takes it, woken by the outbox, then opens the gate).
    fn wait_to_write(&mut self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.wait(cx))?;
        if self
            .direct
            .as_ref()
            .is_some_and(|outbox| outbox.claim_socket())
        {
            self.waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.wait_to_write(cx))?;
        self.control_unflushed = true;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.wait(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.control_unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.wait_to_write(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Encodes frames for this connection's STOMP version and writes them.
pub struct Writer {
    pub version: Version,
    /// Encoded whole WebSocket frames not yet written.
    pending: BytesMut,
    /// Whether the gate is closed for the bytes in `pending`.
    holding_gate: bool,
    /// Whether `pending` holds replies (queued because of what the client
    /// sent, so reading more could pile up more of them).
    holds_replies: bool,
    /// When the current write last made progress (it began, or the kernel
    /// took bytes); `None` while nothing is pending. `write-timeout` counts from here.
    progress: Option<Instant>,
    /// Items taken from the outbox, encoded in the same round.
    batch: VecDeque<Queued>,
    /// Deliveries in `pending`, counted in the metrics once written.
    unreported: usize,
    /// When the oldest of them was published.
    oldest: Option<std::time::Instant>,
    /// One round takes about this many bytes from the outbox (`ws-write-buffer-bytes`).
    max_write_bytes: usize,
    /// STOMP 1.2 `ack` ids are `{connection_id}.{n}`, `n` counting up.
    connection_id: u64,
    acks_issued: u64,
    /// The `ack` id being written (reused, so stamping allocates nothing).
    ack_text: String,
}

impl Writer {
    pub fn new(max_write_bytes: usize, connection_id: u64) -> Writer {
        Writer {
            version: Version::V1_2,
            pending: BytesMut::new(),
            holding_gate: false,
            holds_replies: false,
            progress: None,
            batch: VecDeque::new(),
            unreported: 0,
            oldest: None,
            max_write_bytes: max_write_bytes.max(1),
            connection_id,
            acks_issued: 0,
            ack_text: String::new(),
        }
    }

    /// Whether nothing is waiting to be written.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Whether replies wait among the pending bytes.
    pub fn holds_replies(&self) -> bool {
        self.holds_replies
    }

    /// When the write in progress last moved (`None`: no write in progress).
    pub fn progress(&self) -> Option<Instant> {
        self.progress
    }

    /// The writer is idle: encodes one round of queued deliveries (about
    /// `ws-write-buffer-bytes`) into the pending bytes, or, with nothing
    /// queued, hands the socket to the publishers (see `outbox`) unless
    /// tungstenite may still hold bytes; returns the outbox's state.
    pub fn fill_from_outbox<S>(
        &mut self,
        outbox: &Outbox,
        metrics: &Metrics,
        socket: &mut Gated<S>,
    ) -> OutboxState {
        let hand_over = !socket.control_unflushed();
        let state = self.fill(outbox, metrics, self.max_write_bytes, hand_over);
        if self.holding_gate {
            // The end of a frame a publisher began: nothing may come between.
            socket.close_gate();
        }
        if hand_over && self.pending.is_empty() && self.batch.capacity() > 0 {
            // Nothing to write: from now on the publishers write (see
            // `outbox`), so an idle reader keeps no batch either.
            self.batch = VecDeque::new();
        }
        state
    }

    fn fill(
        &mut self,
        outbox: &Outbox,
        metrics: &Metrics,
        max_bytes: usize,
        hand_over: bool,
    ) -> OutboxState {
        let mut remainder = None;
        let state = outbox.drain_up_to(&mut self.batch, &mut remainder, max_bytes, hand_over);
        if let Some(remainder) = remainder {
            self.put_remainder(remainder);
        }
        self.encode_batch(state, outbox, metrics, true);
        state
    }

    /// The end of a frame a direct write wrote in part: it is the next
    /// thing the socket gets, before tungstenite's bytes too.
    pub fn put_remainder(&mut self, remainder: Bytes) {
        debug_assert!(
            self.pending.is_empty(),
            "a direct write needs an idle writer"
        );
        if self.pending.is_empty() {
            self.mark_started();
            self.pending.extend_from_slice(&remainder);
            self.holding_gate = true;
        }
    }

    /// Encodes the batch taken from the outbox (when it is still open), or drops it.
    fn encode_batch(
        &mut self,
        state: OutboxState,
        outbox: &Outbox,
        metrics: &Metrics,
        with_replayed: bool,
    ) {
        let deliveries = Queued::deliveries(&self.batch);
        metrics.outbound_queued.sub(deliveries as i64);
        if state == OutboxState::Open && !self.batch.is_empty() {
            self.mark_started();
            let acks_before = self.acks_issued;
            while let Some(item) = self.batch.pop_front() {
                match item {
                    Queued::Message(delivery) => self.put_message(&delivery),
                    Queued::Replayed(delivery) if with_replayed => self.put_message(&delivery),
                    Queued::Replayed(_) => {}
                    Queued::Reply(frame) => self.queue_frames(std::iter::once(*frame)),
                }
            }
            if self.acks_issued != acks_before {
                outbox.set_acks_issued(self.acks_issued);
            }
        }
        self.batch.clear();
        if self.batch.capacity() > RETAINED_BATCH_CAPACITY {
            self.batch = VecDeque::new();
        }
    }

    fn put_message(&mut self, delivery: &Delivery) {
        if self.oldest.is_none() {
            self.oldest = Some(delivery.published_at);
        }
        self.put_delivery(delivery);
        self.unreported += 1;
    }

    /// The session ends: encodes everything queued (live messages and
    /// replies, so a DISCONNECT's RECEIPT goes out after the messages before
    /// it), except messages replayed from history, which the client asks
    /// for again when it comes back.
    pub fn queue_everything_for_goodbye(
        &mut self,
        outbox: &Outbox,
        metrics: &Metrics,
    ) -> OutboxState {
        let mut remainder = None;
        let state = outbox.drain_up_to(&mut self.batch, &mut remainder, usize::MAX, false);
        if let Some(remainder) = remainder {
            self.put_remainder(remainder);
        }
        self.encode_batch(state, outbox, metrics, false);
        state
    }

    /// Encodes `frames` after whatever is pending.
    pub fn queue_frames(&mut self, frames: impl Iterator<Item = Frame>) {
        for frame in frames {
            self.mark_started();
            self.holds_replies = true;
            let text = std::str::from_utf8(&frame.body).is_ok();
            put_header(&mut self.pending, text, encoded_len(&frame, self.version));
            encode(&frame, self.version, &mut self.pending);
        }
    }

    /// A heart-beat: one EOL in a text message.
    pub fn queue_heartbeat(&mut self) {
        self.mark_started();
        put_header(&mut self.pending, true, 1);
        self.pending.put_u8(b'\n');
    }

    fn mark_started(&mut self) {
        if self.progress.is_none() {
            self.progress = Some(Instant::now());
        }
    }

    /// Counts the deliveries of the writes completed since the last call.
    pub fn report(&mut self, metrics: &Metrics) {
        if self.unreported == 0 {
            return;
        }
        metrics.messages_delivered.inc_by(self.unreported as u64);
        metrics
            .outbound_batch_frames
            .observe(self.unreported as f64);
        // One latency sample per batch: its oldest delivery, the worst case.
        if let Some(oldest) = self.oldest.take() {
            metrics
                .delivery_latency
                .observe(oldest.elapsed().as_secs_f64());
        }
        self.unreported = 0;
    }

    /// Writes the pending bytes: first whatever tungstenite has queued (a
    /// pong), then ours with tungstenite's writes held back, then gives the
    /// buffer back (an idle connection keeps none). Ready once everything is
    /// written. Cancel safety: nothing is lost when it returns `Pending`;
    /// the next call goes on where this one stopped.
    pub fn poll_write<S>(
        &mut self,
        ws: &mut WebSocketStream<Gated<S>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if !self.holding_gate {
            ready!(Sink::<Message>::poll_flush(Pin::new(&mut *ws), cx))
                .map_err(io::Error::other)?;
            ws.get_mut().close_gate();
            self.holding_gate = true;
        }
        let socket = ws.get_mut();
        while !self.pending.is_empty() {
            let written = ready!(Pin::new(&mut socket.inner).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(written);
            self.progress = Some(Instant::now());
        }
        ready!(Pin::new(&mut socket.inner).poll_flush(cx))?;
        socket.open_gate();
        self.holding_gate = false;
        self.holds_replies = false;
        self.progress = None;
        self.pending = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// Writes everything pending.
    pub async fn finish<S>(&mut self, ws: &mut WebSocketStream<Gated<S>>) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        std::future::poll_fn(|cx| self.poll_write(ws, cx)).await
    }

    fn put_delivery(&mut self, delivery: &Delivery) {
        // STOMP 1.2 acknowledges by an `ack` id of this session's own; 1.0
        // and 1.1 by the shared `message-id`.
        let ack = match (delivery.ack, self.version) {
            (false, _) => None,
            (true, Version::V1_2) => {
                use std::fmt::Write;
                self.ack_text.clear();
                let _ = write!(self.ack_text, "{}.{}", self.connection_id, self.acks_issued);
                self.acks_issued += 1;
                Some(self.ack_text.as_str())
            }
            (true, _) => Some(
                delivery
                    .message
                    .headers()
                    .get("message-id")
                    .unwrap_or_default(),
            ),
        };
        encode_delivery(&mut self.pending, self.version, delivery, ack);
    }
}

/// Appends one delivery as a WebSocket frame holding its MESSAGE, encoded
/// for `version`, with `ack` as its `ack` header (if any).
pub fn encode_delivery(
    out: &mut BytesMut,
    version: Version,
    delivery: &Delivery,
    ack: Option<&str>,
) {
    let message: &PreparedMessage = &delivery.message;
    let extra: &[(&str, &str)] = if delivery.gap {
        &[(GAP_HEADER, "true")]
    } else {
        &[]
    };
    let len = message.len_for_with(version, &delivery.subscription, ack, extra);
    // Headers are always UTF-8, so the frame is text exactly when its body is.
    put_header(out, message.body_is_utf8(), len);
    let start = out.len();
    message.write_for_with(version, &delivery.subscription, ack, extra, out);
    debug_assert_eq!(out.len() - start, len, "len_for and write_for disagree");
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

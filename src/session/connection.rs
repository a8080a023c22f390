//! The I/O loop of one WebSocket connection: reads frames into the session
//! state machine, writes its replies, drains the outbound queue in batches,
//! keeps heart-beats, and closes with an ERROR frame when something is wrong.

use crate::broker::SessionSlot;
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox, OutboxState};
use crate::session::{Flow, Session};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use stompede_protocol::{encode, Command, Decoder, Frame, Item, Limits, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// How long the closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// A client is declared dead after this many of its heart-beat intervals of silence.
const HEARTBEAT_TOLERANCE: u32 = 2;
/// An idle connection gives back a read buffer that grew past this.
const IDLE_BUFFER_BYTES: usize = 8 * 1024;

/// Why the loop ended.
enum Ending {
    /// The client closed or disconnected; nothing more to say.
    Quiet,
    /// Tell the client why (an ERROR frame), then close. The reason labels
    /// the `errors_total` metric.
    Error(Frame, CloseCode, &'static str),
    /// The replies (ending in a RECEIPT or an ERROR) are written; close.
    Closed(CloseCode),
}

pub async fn serve<S>(slot: SessionSlot, mut ws: WebSocketStream<S>, connection_id: u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let broker = slot.broker().clone();
    let config = &broker.config;
    let metrics = &broker.metrics;
    let outbox = Arc::new(Outbox::new(config.outbound_queue_frames, config.outbound_queue_bytes));
    let mut session = Session::new(broker.clone(), connection_id, outbox.clone());
    let limits = Limits {
        max_headers: config.max_headers,
        max_header_line: config.max_header_line_bytes,
        max_body_bytes: config.max_frame_bytes,
        max_frame_bytes: config.max_frame_bytes,
    };
    // Until CONNECT succeeds, frames get the smaller `max-frame-bytes-before-connect` budget.
    let before_connect = config.max_frame_bytes_before_connect.min(config.max_frame_bytes);
    let mut decoder =
        Decoder::new(Limits { max_body_bytes: before_connect, max_frame_bytes: before_connect, ..limits });
    let mut writer =
        Writer { version: Version::V1_2, scratch: BytesMut::new(), batch: VecDeque::new(), wrote_error: false };
    let mut inbound = BytesMut::new();
    let mut replies = Vec::new();
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let timer = sleep_until(last_read + config.connect_timeout);
    tokio::pin!(timer);

    let ending = 'session: loop {
        // Cancel safety: every branch's future can be dropped without losing
        // data (`notified`, `cancelled`, `next` on a WebSocketStream, `Sleep`).
        // Not `biased`: under a steady stream of messages the writer branch is
        // always ready, and reads (heart-beats included) must still get turns.
        tokio::select! {
            _ = broker.shutdown.cancelled() => {
                break Ending::Error(Session::error("server is shutting down"), CloseCode::Away, "shutdown");
            }
            _ = outbox.ready.notified() => {
                // Cancel safety: the write is raced only against closing, and
                // after that the connection is dropped whatever was half written.
                let written = tokio::select! {
                    written = writer.drain_outbox(&outbox, &mut ws, metrics) => written,
                    _ = outbox.closing.notified() => Ok(OutboxState::SlowConsumer),
                };
                match written {
                    Ok(OutboxState::Open) => last_write = Instant::now(),
                    Ok(OutboxState::SlowConsumer) => break slow_consumer(),
                    Ok(OutboxState::Closed) | Err(_) => break Ending::Quiet,
                }
            }
            message = ws.next() => {
                last_read = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => inbound.extend_from_slice(text.as_bytes()),
                    Some(Ok(Message::Binary(bytes))) => inbound.extend_from_slice(&bytes),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break Ending::Quiet,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "websocket read failed");
                        break read_failed(&error);
                    }
                }
                loop {
                    match decoder.decode(&mut inbound) {
                        Ok(Some(Item::Frame(frame))) => {
                            let was_connected = session.version().is_some();
                            let subscriptions_before = session.subscription_count();
                            let flow = session.handle(frame, &mut replies);
                            metrics.subscriptions.add(session.subscription_count() as i64 - subscriptions_before as i64);
                            if let (false, Some(version)) = (was_connected, session.version()) {
                                metrics.sessions.with_label_values(&[version.as_str()]).inc();
                                decoder.set_version(version);
                                decoder.set_limits(limits);
                                writer.version = version;
                                tracing::debug!(version = version.as_str(), "session connected");
                                // Heart-beats start now: let the timer pick the new deadline.
                                timer.as_mut().reset(Instant::now());
                            }
                            if !replies.is_empty() {
                                // What this session queued before the reply (a MESSAGE
                                // caused by its own SEND) goes out first.
                                if flow == Flow::Close && replies.iter().any(|reply| reply.command == Command::Error) {
                                    metrics.errors.with_label_values(&["protocol"]).inc();
                                    writer.wrote_error = true;
                                }
                                match writer.drain_outbox(&outbox, &mut ws, metrics).await {
                                    Ok(OutboxState::Open) => {}
                                    Ok(OutboxState::SlowConsumer) => break 'session slow_consumer(),
                                    Ok(OutboxState::Closed) | Err(_) => break 'session Ending::Quiet,
                                }
                                if writer.write_frames(replies.drain(..), &mut ws).await.is_err() {
                                    break 'session Ending::Quiet;
                                }
                                last_write = Instant::now();
                            }
                            if flow == Flow::Close {
                                let refused = writer.wrote_error;
                                break 'session Ending::Closed(if refused { CloseCode::Policy } else { CloseCode::Normal });
                            }
                        }
                        Ok(Some(Item::HeartBeat)) => {}
                        Ok(None) => break,
                        Err(error) => {
                            break 'session Ending::Error(Session::error(error.to_string()), CloseCode::Policy, "decode")
                        }
                    }
                }
                if inbound.is_empty() && inbound.capacity() > IDLE_BUFFER_BYTES {
                    inbound = BytesMut::new();
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                if session.version().is_none() {
                    break Ending::Error(
                        Session::error(format!("no CONNECT frame within {:?}", config.connect_timeout)),
                        CloseCode::Policy,
                        "connect_timeout",
                    );
                }
                let beats = session.heart_beats();
                let silence_limit = beats.receive * HEARTBEAT_TOLERANCE;
                if !beats.receive.is_zero() && now >= last_read + silence_limit {
                    break Ending::Error(
                        Session::error(format!("heart-beat timeout: nothing received for {silence_limit:?}")),
                        CloseCode::Policy,
                        "heartbeat_timeout",
                    );
                }
                if !beats.send.is_zero() && now >= last_write + beats.send {
                    if ws.send(Message::text("\n")).await.is_err() {
                        break Ending::Quiet;
                    }
                    last_write = now;
                }
                let mut next = now + Duration::from_secs(24 * 3600);
                if !beats.send.is_zero() {
                    next = next.min(last_write + beats.send);
                }
                if !beats.receive.is_zero() {
                    next = next.min(last_read + silence_limit);
                }
                timer.as_mut().reset(next);
            }
        }
    };

    outbox.set_state(OutboxState::Closed);
    let mut undelivered = VecDeque::new();
    outbox.drain_into(&mut undelivered);
    metrics.outbound_queued.sub(undelivered.len() as i64);
    drop(undelivered);
    metrics.subscriptions.sub(session.subscription_count() as i64);
    session.close();
    if let Some(version) = session.version() {
        metrics.sessions.with_label_values(&[version.as_str()]).dec();
    }
    let close_code = match ending {
        Ending::Quiet => None,
        Ending::Error(frame, code, reason) => {
            metrics.errors.with_label_values(&[reason]).inc();
            if let Some(message) = frame.headers.get("message") {
                tracing::debug!(reason = message, "closing session with ERROR");
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.write_frames(std::iter::once(frame), &mut ws)).await;
            Some(code)
        }
        Ending::Closed(code) => Some(code),
    };
    if let Some(code) = close_code {
        let close = CloseFrame { code, reason: Utf8Bytes::from_static("") };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(close))).await;
    }
    drop(slot);
}

/// A WebSocket-level read error: tell the client, with the close code RFC 6455 gives it.
fn read_failed(error: &tokio_tungstenite::tungstenite::Error) -> Ending {
    use tokio_tungstenite::tungstenite::Error;
    let (message, code, reason) = match error {
        Error::Utf8(_) => ("text WebSocket message is not valid UTF-8".to_owned(), CloseCode::Invalid, "invalid_utf8"),
        Error::Capacity(capacity) => {
            (format!("WebSocket message too large: {capacity} (ws-max-message-bytes)"), CloseCode::Size, "too_large")
        }
        Error::Protocol(protocol) => (format!("WebSocket protocol error: {protocol}"), CloseCode::Protocol, "websocket"),
        _ => return Ending::Quiet,
    };
    Ending::Error(Session::error(message), code, reason)
}

fn slow_consumer() -> Ending {
    Ending::Error(
        Session::error("slow consumer: this connection did not read its messages fast enough"),
        CloseCode::Policy,
        "slow_consumer",
    )
}

/// Encodes frames for this connection's version and writes them in batches.
struct Writer {
    version: Version,
    /// Reused encoding buffer; each frame is split off it.
    scratch: BytesMut,
    /// Deliveries taken from the outbox, reused between rounds.
    batch: VecDeque<Delivery>,
    /// Whether an ERROR frame was among the replies written (close with 1008).
    wrote_error: bool,
}

type WsResult<T> = Result<T, tokio_tungstenite::tungstenite::Error>;

impl Writer {
    /// Writes everything queued, round after round until the outbox is empty,
    /// with one flush per round.
    async fn drain_outbox<S>(
        &mut self,
        outbox: &Outbox,
        ws: &mut WebSocketStream<S>,
        metrics: &Metrics,
    ) -> WsResult<OutboxState>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let state = outbox.drain_into(&mut self.batch);
            let frames = self.batch.len();
            metrics.outbound_queued.sub(frames as i64);
            if state != OutboxState::Open || frames == 0 {
                self.batch.clear();
                return Ok(state);
            }
            let oldest = self.batch.front().map(|delivery| delivery.published_at);
            while let Some(delivery) = self.batch.pop_front() {
                let message = &delivery.message;
                let ack = delivery.ack.then(|| message.headers().get("message-id").unwrap_or_default());
                message.write_for(self.version, &delivery.subscription, ack, &mut self.scratch);
                let bytes = self.scratch.split().freeze();
                ws.feed(ws_message(bytes, message.body_is_utf8())).await?;
            }
            ws.flush().await?;
            metrics.messages_delivered.inc_by(frames as u64);
            metrics.outbound_batch_frames.observe(frames as f64);
            // One latency sample per batch: its oldest delivery, the worst case.
            if let Some(oldest) = oldest {
                metrics.delivery_latency.observe(oldest.elapsed().as_secs_f64());
            }
        }
    }

    async fn write_frames<S>(&mut self, frames: impl Iterator<Item = Frame>, ws: &mut WebSocketStream<S>) -> WsResult<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut wrote = false;
        for frame in frames {
            let utf8 = std::str::from_utf8(&frame.body).is_ok();
            encode(&frame, self.version, &mut self.scratch);
            ws.feed(ws_message(self.scratch.split().freeze(), utf8)).await?;
            wrote = true;
        }
        if wrote {
            ws.flush().await?;
        }
        Ok(())
    }
}

/// A text WebSocket message when the frame is UTF-8 (its headers always are,
/// so that is when its body is), a binary one otherwise.
fn ws_message(frame: Bytes, body_is_utf8: bool) -> Message {
    if body_is_utf8 {
        if let Ok(text) = Utf8Bytes::try_from(frame.clone()) {
            return Message::Text(text);
        }
    }
    Message::Binary(frame)
}

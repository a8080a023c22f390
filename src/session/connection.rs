//! The I/O loop of one WebSocket connection: reads frames into the session
//! state machine, writes its replies, drains the outbound queue in batches,
//! keeps heart-beats, and closes with an ERROR frame when something is wrong.

use crate::broker::SessionSlot;
use crate::engine::EngineError;
use crate::metrics::{ErrorReason, Metrics};
use crate::outbox::{Outbox, OutboxState};
use crate::session::writer::Writer;
use crate::session::{Flow, Session};
use bytes::BytesMut;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use stompede_protocol::{Command, Decoder, Frame, Item, Limits};
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
    Error(Frame, CloseCode, ErrorReason),
    /// The replies (ending in a RECEIPT or an ERROR) are written; close.
    Closed(CloseCode),
}

pub async fn serve<S>(slot: SessionSlot, mut ws: WebSocketStream<S>, connection_id: u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let broker = slot.broker().clone();
    let config = broker.config();
    let metrics = broker.metrics();
    let outbox = Arc::new(Outbox::new(
        config.outbound_queue_frames,
        config.outbound_queue_bytes,
    ));
    let mut session = Session::new(broker.clone(), connection_id, outbox.clone());
    let limits = Limits {
        max_headers: config.max_headers,
        max_header_line: config.max_header_line_bytes,
        max_body_bytes: config.max_frame_bytes,
        max_frame_bytes: config.max_frame_bytes,
    };
    // Until CONNECT succeeds, frames get the smaller `max-frame-bytes-before-connect` budget.
    let before_connect = config
        .max_frame_bytes_before_connect
        .min(config.max_frame_bytes);
    let mut decoder = Decoder::new(Limits {
        max_body_bytes: before_connect,
        max_frame_bytes: before_connect,
        ..limits
    });
    let mut writer = Writer::new(config.ws_write_buffer_bytes);
    let mut inbound = BytesMut::new();
    let mut replies = Vec::new();
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let timer = sleep_until(last_read + config.connect_timeout);
    tokio::pin!(timer);

    // Work the last frame left (a subscription for the engine to confirm, a
    // publish), and that frame's flow; its replies wait in `replies` meanwhile.
    let mut pending: Option<PendingWork> = None;
    let mut pending_flow = Flow::Continue;

    let ending = 'session: loop {
        // Every whole frame received is handled here, in order; while a
        // frame's work is pending, the next ones wait in `inbound`.
        while pending.is_none() {
            match decoder.decode(&mut inbound) {
                Ok(Some(Item::Frame(frame))) => {
                    let was_connected = session.version().is_some();
                    let subscriptions_before = session.subscription_count();
                    let flow = session.handle(frame, &mut replies);
                    let added = session.subscription_count() as i64 - subscriptions_before as i64;
                    metrics.subscriptions.add(added);
                    if let (false, Some(version)) = (was_connected, session.version()) {
                        metrics
                            .sessions
                            .with_label_values(&[version.as_str()])
                            .inc();
                        decoder.set_version(version);
                        decoder.set_limits(limits);
                        writer.version = version;
                        tracing::debug!(version = version.as_str(), "session connected");
                        // Heart-beats start now: let the timer pick the new deadline.
                        timer.as_mut().reset(Instant::now());
                    }
                    if let Some(work) = session.take_pending() {
                        let broker = broker.clone();
                        pending = Some(Box::pin(async move { broker.complete(work).await }));
                        pending_flow = flow;
                        break;
                    }
                    let wrote = !replies.is_empty();
                    match finish_frame(flow, &mut replies, &mut writer, &outbox, &mut ws, metrics)
                        .await
                    {
                        Some(ending) => break 'session ending,
                        None if wrote => last_write = Instant::now(),
                        None => {}
                    }
                }
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) => break,
                Err(error) => {
                    let error = Session::error(error.to_string());
                    break 'session Ending::Error(error, CloseCode::Policy, ErrorReason::Decode);
                }
            }
        }
        if pending.is_none() && inbound.is_empty() && inbound.capacity() > IDLE_BUFFER_BYTES {
            inbound = BytesMut::new();
        }
        // Cancel safety: every branch's future can be dropped without losing
        // data (`notified`, `cancelled`, `next` on a WebSocketStream, `Sleep`).
        // Not `biased`: under a steady stream of messages the writer branch is
        // always ready, and reads (heart-beats included) must still get turns.
        tokio::select! {
            _ = broker.shutting_down() => {
                let goodbye = Session::error("server is shutting down");
                break Ending::Error(goodbye, CloseCode::Away, ErrorReason::Shutdown);
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
            // While a frame's work is pending, reading goes on (heart-beats
            // count) until one WebSocket message's worth of frames waits.
            message = ws.next(), if pending.is_none() || inbound.len() < config.ws_max_message_bytes() => {
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
            }
            // Cancel safety: the work is polled again on the next turn, never dropped half done.
            done = async { pending.as_mut().expect("guarded by the condition").await }, if pending.is_some() => {
                pending = None;
                let flow = match done {
                    Ok(()) => pending_flow,
                    Err(engine_error) => {
                        // The frame could not be carried out: refuse it after all.
                        let receipt = replies
                            .iter()
                            .find(|reply| reply.command == Command::Receipt)
                            .and_then(|reply| reply.headers.get("receipt-id"))
                            .map(str::to_owned);
                        replies.clear();
                        replies.push(Session::refusal(engine_error.to_string(), receipt.as_deref()));
                        Flow::Refused(ErrorReason::Unavailable)
                    }
                };
                let wrote = !replies.is_empty();
                match finish_frame(flow, &mut replies, &mut writer, &outbox, &mut ws, metrics).await {
                    Some(ending) => break ending,
                    None if wrote => last_write = Instant::now(),
                    None => {}
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                if session.version().is_none() {
                    break Ending::Error(
                        Session::error(format!(
                            "no CONNECT frame within {:?}",
                            config.connect_timeout
                        )),
                        CloseCode::Policy,
                        ErrorReason::ConnectTimeout,
                    );
                }
                let beats = session.heart_beats();
                let silence_limit = beats.receive * HEARTBEAT_TOLERANCE;
                if !beats.receive.is_zero() && now >= last_read + silence_limit {
                    break Ending::Error(
                        Session::error(format!(
                            "heart-beat timeout: nothing received for {silence_limit:?}"
                        )),
                        CloseCode::Policy,
                        ErrorReason::HeartbeatTimeout,
                    );
                }
                if !beats.send.is_zero() && now >= last_write + beats.send {
                    if writer.write_heartbeat(&mut ws).await.is_err() {
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
    metrics
        .subscriptions
        .sub(session.subscription_count() as i64);
    session.close();
    if let Some(version) = session.version() {
        metrics
            .sessions
            .with_label_values(&[version.as_str()])
            .dec();
    }
    let goodbye = match ending {
        Ending::Quiet => None,
        Ending::Error(frame, code, reason) => {
            metrics.count_error(reason);
            if let Some(message) = frame.headers.get("message") {
                tracing::debug!(reason = message, "closing session with ERROR");
            }
            Some((Some(frame), code))
        }
        Ending::Closed(code) => Some((None, code)),
    };
    if let Some((error, code)) = goodbye {
        // Boxed: this future runs once per connection, and keeping it out of
        // the connection's own future keeps every idle connection smaller.
        Box::pin(say_goodbye(&mut writer, &mut ws, error, code)).await;
    }
    drop(slot);
}

/// A frame's work left for the connection: see [`Session::take_pending`].
type PendingWork = Pin<Box<dyn Future<Output = Result<(), EngineError>> + Send>>;

/// Writes a handled frame's replies (after what is already queued) and says
/// whether the session ends with it.
async fn finish_frame<S>(
    flow: Flow,
    replies: &mut Vec<Frame>,
    writer: &mut Writer,
    outbox: &Outbox,
    ws: &mut WebSocketStream<S>,
    metrics: &Metrics,
) -> Option<Ending>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !replies.is_empty() {
        if let Flow::Refused(reason) = flow {
            metrics.count_error(reason);
        }
        // Boxed: replies are rare next to deliveries, and their future need
        // not make every idle connection bigger.
        match Box::pin(writer.write_replies(replies, outbox, ws, metrics)).await {
            Ok(OutboxState::Open) => {}
            Ok(OutboxState::SlowConsumer) => return Some(slow_consumer()),
            Ok(OutboxState::Closed) | Err(_) => return Some(Ending::Quiet),
        }
    }
    match flow {
        Flow::Continue => None,
        Flow::Close => Some(Ending::Closed(CloseCode::Normal)),
        Flow::Refused(_) => Some(Ending::Closed(CloseCode::Policy)),
    }
}

/// Writes the ERROR frame (if any) and the close frame, each within `CLOSE_TIMEOUT`.
async fn say_goodbye<S>(
    writer: &mut Writer,
    ws: &mut WebSocketStream<S>,
    error: Option<Frame>,
    code: CloseCode,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(frame) = error {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            writer.write_frames(std::iter::once(frame), ws),
        )
        .await;
    }
    let close = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(""),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(close))).await;
}

/// A WebSocket-level read error: tell the client, with the close code RFC 6455 gives it.
fn read_failed(error: &tokio_tungstenite::tungstenite::Error) -> Ending {
    use tokio_tungstenite::tungstenite::Error;
    let (message, code, reason) = match error {
        Error::Utf8(_) => (
            "text WebSocket message is not valid UTF-8".to_owned(),
            CloseCode::Invalid,
            ErrorReason::InvalidUtf8,
        ),
        Error::Capacity(capacity) => (
            format!("WebSocket message too large: {capacity} (ws-max-message-bytes)"),
            CloseCode::Size,
            ErrorReason::TooLarge,
        ),
        Error::Protocol(protocol) => (
            format!("WebSocket protocol error: {protocol}"),
            CloseCode::Protocol,
            ErrorReason::WebSocket,
        ),
        _ => return Ending::Quiet,
    };
    Ending::Error(Session::error(message), code, reason)
}

fn slow_consumer() -> Ending {
    Ending::Error(
        Session::error("slow consumer: this connection did not read its messages fast enough"),
        CloseCode::Policy,
        ErrorReason::SlowConsumer,
    )
}

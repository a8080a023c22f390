//! The I/O loop of one WebSocket connection: reads frames into the session
//! state machine, writes its replies, drains the outbound queue in batches,
//! keeps heart-beats, and closes with an ERROR frame when something is wrong.

use crate::broker::{Broker, ReceiptHeaders, SessionSlot};
use crate::engine::EngineError;
use crate::metrics::{ErrorReason, Metrics};
use crate::outbox::{Outbox, OutboxState, Queued};
use crate::session::message_limit::{MessageLimit, TooLargeBeforeConnect};
use crate::session::relocation::{self, MovableSocket, Relocation};
use crate::session::writer::{Gated, Writer};
use crate::session::{Flow, Session};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use stompede_protocol::{Command, Decoder, Frame, Item, Limits, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// How long the closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a 1009 close, how long the peer's further bytes are read and
/// discarded before the socket is closed (see `linger`). The session keeps
/// its slot meanwhile: the socket is still open.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// A client is declared dead after this many of its heart-beat intervals of silence.
const HEARTBEAT_TOLERANCE: u32 = 2;
/// An idle connection gives back a read buffer that grew past this.
const IDLE_BUFFER_BYTES: usize = 8 * 1024;
/// A heart-beat deadline that has passed (its write still pending, or reads
/// paused) is looked at again after this long, not in a busy loop.
const HEARTBEAT_RETRY: Duration = Duration::from_millis(100);
/// A session set up on the handshake runtime moves to the sessions' this
/// long after CONNECT at the latest, set up or not (see `relocation`).
const SETUP_PHASE_LIMIT: Duration = Duration::from_secs(1);

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

/// The gauges one connection moves (`sessions`, `subscriptions`,
/// `outbound_queued`), put back when it is dropped: the outbox is closed and
/// what it still holds is taken off `outbound_queued`.
struct Gauges {
    broker: Arc<Broker>,
    outbox: Arc<Outbox>,
    /// Counted in `sessions{version}` once connected.
    version: Option<Version>,
    /// Counted in `subscriptions`.
    subscriptions: i64,
}

impl Gauges {
    fn connected(&mut self, version: Version) {
        let sessions = &self.broker.metrics().sessions;
        sessions.with_label_values(&[version.as_str()]).inc();
        self.version = Some(version);
    }

    fn add_subscriptions(&mut self, added: i64) {
        self.broker.metrics().subscriptions.add(added);
        self.subscriptions += added;
    }
}

impl Drop for Gauges {
    fn drop(&mut self) {
        let metrics = self.broker.metrics();
        self.outbox.set_state(OutboxState::Closed);
        let mut undelivered = VecDeque::new();
        self.outbox.drain_into(&mut undelivered);
        let deliveries = Queued::deliveries(&undelivered);
        metrics.outbound_queued.sub(deliveries as i64);
        metrics.subscriptions.sub(self.subscriptions);
        if let Some(version) = self.version {
            let sessions = &metrics.sessions;
            sessions.with_label_values(&[version.as_str()]).dec();
        }
    }
}

/// What woke the connection.
enum Event {
    Shutdown,
    /// The last frame's pending work (see [`Session::take_pending`]) is done.
    Done(Result<ReceiptHeaders, EngineError>),
    /// The outbox's state changed (a slow-consumer mark).
    Closing,
    Io(Io),
    Timer,
}

/// What the connection's socket did: a write completed, or a message was read.
enum Io {
    Written(std::io::Result<()>),
    Read(Option<Result<Message, WsError>>),
}

/// Polls the pending write and the next read together, taking turns which
/// goes first, so a busy writer does not starve reads nor reads the writer.
/// Cancel safety: neither poll loses data when the other one wins.
fn poll_io<S>(
    writer: &mut Writer,
    ws: &mut WebSocketStream<Gated<S>>,
    reading: bool,
    write_first: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Io>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    *write_first = !*write_first;
    for write in [*write_first, !*write_first] {
        if write && !writer.is_idle() {
            if let Poll::Ready(result) = writer.poll_write(ws, cx) {
                return Poll::Ready(Io::Written(result));
            }
        }
        if !write && reading {
            if let Poll::Ready(message) = ws.poll_next_unpin(cx) {
                return Poll::Ready(Io::Read(message));
            }
        }
    }
    Poll::Pending
}

/// Runs one connection's session. With `direct`, its TCP socket (the one
/// `ws` reads and writes), publishers may write into it while the
/// connection's writer is idle (see `outbox`). With `relocation`, the
/// session is being served on the handshake runtime: it moves to the
/// sessions' once set up, i.e. once the first frame after CONNECT (a
/// reader's SUBSCRIBE) is handled and answered, or `SETUP_PHASE_LIMIT`
/// after CONNECT.
pub async fn serve<S>(
    slot: SessionSlot,
    mut ws: WebSocketStream<Gated<MessageLimit<S>>>,
    connection_id: u64,
    direct: Option<Arc<TcpStream>>,
    mut relocation: Option<Relocation>,
) where
    S: AsyncRead + AsyncWrite + MovableSocket + Unpin,
{
    let broker = slot.broker().clone();
    let config = broker.config();
    let metrics = broker.metrics();
    let direct_writes = direct.is_some();
    let outbox = Arc::new(Outbox::new(
        config.outbound_queue_frames,
        config.outbound_queue_bytes,
        direct,
    ));
    if direct_writes {
        ws.get_mut().share_with(outbox.clone());
    }
    let mut session = Session::new(broker.clone(), connection_id, outbox.clone());
    // Puts the gauges back however this task ends (a panic, or the future
    // dropped mid-await, included).
    let mut gauges = Gauges {
        broker: broker.clone(),
        outbox: outbox.clone(),
        version: None,
        subscriptions: 0,
    };
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
    let mut writer = Writer::new(config.ws_write_buffer_bytes, connection_id);
    // Reading pauses while replies wait behind more than this many pending
    // bytes (a client that sends but does not read its socket), so replies
    // cannot pile up; queued messages alone never pause it.
    let max_pending = config.ws_write_buffer_bytes.max(1);
    let mut inbound = BytesMut::new();
    let mut replies: Vec<Frame> = Vec::new();
    let mut write_first = false;
    let mut reading = true;
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let connect_deadline = last_read + config.connect_timeout;
    // Work the last frame left (a subscription for the engine to confirm, a
    // publish), and that frame's flow; its replies wait in `replies`, and the
    // next frames in `inbound`, until it is done.
    let mut pending: Option<PendingWork> = None;
    let mut pending_flow = Flow::Continue;
    let timer = sleep_until(connect_deadline);
    tokio::pin!(timer);
    // Set up on the handshake runtime: whether the frame after CONNECT was
    // handled, and when to move regardless (see `relocation`).
    let mut set_up = false;
    let mut move_by: Option<Instant> = None;

    let ending = 'session: loop {
        if relocation.is_some() && pending.is_none() {
            let answered = set_up && !writer.holds_replies() && !outbox.holds_replies();
            if answered || move_by.is_some_and(|by| Instant::now() >= by) {
                let relocation = relocation.take().expect("checked above");
                let io = ws.get_mut().inner_mut().inner_mut();
                if let Err(error) = relocation::move_session(relocation, &outbox, io).await {
                    tracing::debug!(%error, "cannot move the session's socket");
                    break Ending::Quiet;
                }
                // The timer is the old runtime's: make one on this one.
                let deadline = timer.deadline();
                timer.set(sleep_until(deadline));
                move_by = None;
                // tungstenite keeps the waker of the last task that wrote
                // through it (the set-up replies, on the handshake runtime)
                // until the next write, which an idle reader never makes:
                // that waker kept the old task's memory (512 B) alive.
                // A flush hands it this task's waker instead.
                let flushed = std::future::poll_fn(|cx| {
                    Poll::Ready(match ws.poll_flush_unpin(cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending => Ok(()),
                    })
                });
                if let Err(error) = flushed.await {
                    tracing::debug!(%error, "socket flush failed");
                    break Ending::Quiet;
                }
            }
        }
        if writer.is_idle() {
            match writer.fill_from_outbox(&outbox, metrics, ws.get_mut()) {
                OutboxState::Open => {}
                OutboxState::SlowConsumer => break slow_consumer(),
                OutboxState::Closed => break Ending::Quiet,
            }
        }
        // A write in progress has a deadline: wake up by then at the latest.
        if let Some(progress) = writer.progress() {
            let deadline = progress + config.write_timeout;
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
        }
        // While a frame's work is pending, reading goes on (heart-beats count)
        // until one WebSocket message's worth of frames waits.
        let replies_backed_up = (outbox.holds_replies() || writer.holds_replies())
            && writer.pending_bytes() + outbox.queued_bytes() > max_pending;
        let frames_backed_up = pending.is_some() && inbound.len() >= config.ws_max_message_bytes();
        let can_read = !(replies_backed_up || frames_backed_up);
        if can_read && !reading {
            // The client's bytes waited while reading was paused: they are not silence.
            last_read = Instant::now();
        }
        reading = can_read;
        // Cancel safety: every branch's future can be dropped without losing
        // data (`notified`, `cancelled`, `Sleep`, and `poll_io`, see there).
        // Not `biased`: under a steady stream of messages the writer is
        // always ready, and reads (heart-beats included) must still get turns.
        let event = tokio::select! {
            _ = broker.shutting_down() => Event::Shutdown,
            // A slow-consumer mark wakes the connection even mid-write.
            _ = outbox.closing.notified() => Event::Closing,
            // Something was queued; the top of the loop takes it.
            _ = outbox.ready.notified(), if writer.is_idle() => continue,
            io = std::future::poll_fn(|cx| poll_io(&mut writer, &mut ws, reading, &mut write_first, cx)) => Event::Io(io),
            _ = &mut timer => Event::Timer,
            // Cancel safety: the work is polled again next turn, never dropped half done.
            done = async { pending.as_mut().expect("guarded by the condition").await }, if pending.is_some() => Event::Done(done),
        };
        let message = match event {
            Event::Shutdown => {
                let goodbye = Session::error("server is shutting down");
                break Ending::Error(goodbye, CloseCode::Away, ErrorReason::Shutdown);
            }
            Event::Done(done) => {
                pending = None;
                let flow = match done {
                    Ok(headers) => {
                        // A SUBSCRIBE's RECEIPT says what its history read found.
                        let receipt = replies
                            .iter_mut()
                            .find(|reply| reply.command == Command::Receipt);
                        if let Some(receipt) = receipt {
                            for (name, value) in headers {
                                receipt.headers.push(name, value);
                            }
                        }
                        pending_flow
                    }
                    Err(engine_error) => {
                        // The frame could not be carried out: refuse it after all.
                        let receipt = replies
                            .iter()
                            .find(|reply| reply.command == Command::Receipt)
                            .and_then(|reply| reply.headers.get("receipt-id"))
                            .map(str::to_owned);
                        replies.clear();
                        replies.push(Session::refusal(
                            engine_error.to_string(),
                            receipt.as_deref(),
                        ));
                        Flow::Refused(ErrorReason::Unavailable)
                    }
                };
                if let Some(ending) =
                    finish_frame(flow, &mut replies, &mut writer, &outbox, metrics)
                {
                    break ending;
                }
                // The frames that waited behind it are handled below.
                None
            }
            Event::Closing => match outbox.state() {
                OutboxState::Open => continue,
                OutboxState::SlowConsumer => break slow_consumer(),
                OutboxState::Closed => break Ending::Quiet,
            },
            Event::Io(Io::Written(Ok(()))) => {
                last_write = Instant::now();
                writer.report(metrics);
                continue;
            }
            Event::Io(Io::Written(Err(error))) => {
                tracing::debug!(%error, "socket write failed");
                break Ending::Quiet;
            }
            Event::Io(Io::Read(message)) => Some(message),
            Event::Timer => {
                let now = Instant::now();
                if let Some(progress) = writer.progress() {
                    if now >= progress + config.write_timeout {
                        break Ending::Error(
                            Session::error(format!(
                                "write timeout: the connection accepted nothing for {:?}",
                                config.write_timeout
                            )),
                            CloseCode::Policy,
                            ErrorReason::WriteTimeout,
                        );
                    }
                }
                let mut next = now + Duration::from_secs(24 * 3600);
                if session.version().is_none() {
                    if now >= connect_deadline {
                        break Ending::Error(
                            Session::error(format!(
                                "no CONNECT frame within {:?}",
                                config.connect_timeout
                            )),
                            CloseCode::Policy,
                            ErrorReason::ConnectTimeout,
                        );
                    }
                    next = connect_deadline;
                }
                let beats = session.heart_beats();
                let silence_limit = beats.receive * HEARTBEAT_TOLERANCE;
                // While reading is paused, the client's bytes may be waiting unread: not silence.
                if reading && !beats.receive.is_zero() && now >= last_read + silence_limit {
                    // A message already waiting is not silence either, even
                    // if the timer won the race against it.
                    let waiting = std::future::poll_fn(|cx| Poll::Ready(ws.poll_next_unpin(cx)));
                    match waiting.await {
                        Poll::Ready(message) => Some(message),
                        Poll::Pending => {
                            break Ending::Error(
                                Session::error(format!(
                                    "heart-beat timeout: nothing received for {silence_limit:?}"
                                )),
                                CloseCode::Policy,
                                ErrorReason::HeartbeatTimeout,
                            )
                        }
                    }
                } else {
                    // Publishers' direct writes count as writes too.
                    if let Some(written) = outbox.direct_written_at() {
                        last_write = last_write.max(written);
                    }
                    if !beats.send.is_zero()
                        && writer.is_idle()
                        && now >= last_write + beats.send
                        // The socket is the task's again (unless the end of
                        // a publisher's frame must go first: retried soon).
                        && !outbox.claim_socket()
                    {
                        // Written by `poll_io`; `last_write` moves once it is.
                        writer.queue_heartbeat();
                    }
                    if !beats.send.is_zero() {
                        next = next.min((last_write + beats.send).max(now + HEARTBEAT_RETRY));
                    }
                    if !beats.receive.is_zero() {
                        next = next.min((last_read + silence_limit).max(now + HEARTBEAT_RETRY));
                    }
                    if let Some(progress) = writer.progress() {
                        next = next.min(progress + config.write_timeout);
                    }
                    if let Some(move_by) = move_by {
                        next = next.min(move_by.max(now + HEARTBEAT_RETRY));
                    }
                    timer.as_mut().reset(next);
                    continue;
                }
            }
        };
        // A WebSocket message from the client.
        if let Some(message) = message {
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
        // Every whole frame received is handled here, in order, unless a
        // frame's work is pending.
        while pending.is_none() {
            match decoder.decode(&mut inbound) {
                Ok(Some(Item::Frame(frame))) => {
                    let was_connected = session.version().is_some();
                    let subscriptions_before = session.subscription_count();
                    let flow = session.handle(frame, &mut replies);
                    set_up |= was_connected;
                    let added = session.subscription_count() as i64 - subscriptions_before as i64;
                    gauges.add_subscriptions(added);
                    if let (false, Some(version)) = (was_connected, session.version()) {
                        gauges.connected(version);
                        outbox.set_version(version);
                        decoder.set_version(version);
                        decoder.set_limits(limits);
                        ws.get_mut().inner_mut().lift();
                        writer.version = version;
                        tracing::debug!(version = version.as_str(), "session connected");
                        // Heart-beats start now: let the timer pick the new deadline.
                        timer.as_mut().reset(Instant::now());
                        if relocation.is_some() {
                            move_by = Some(Instant::now() + SETUP_PHASE_LIMIT);
                        }
                    }
                    if let Some(work) = session.take_pending() {
                        let broker = broker.clone();
                        pending = Some(Box::pin(async move { broker.complete(work).await }));
                        pending_flow = flow;
                        break;
                    }
                    if let Some(ending) =
                        finish_frame(flow, &mut replies, &mut writer, &outbox, metrics)
                    {
                        break 'session ending;
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
        if pending.is_none() && replies.is_empty() && replies.capacity() > 0 {
            // A reader's replies are few (CONNECTED, a RECEIPT): keep no room for them.
            replies = Vec::new();
        }
    };

    // Closed first (no publisher writes after this), then the end of a frame
    // a publisher began, if the loop ended before the writer took it.
    drop(gauges);
    if let Some(remainder) = outbox.take_remainder() {
        writer.put_remainder(remainder);
    }
    session.close();
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
type PendingWork = Pin<Box<dyn Future<Output = Result<ReceiptHeaders, EngineError>> + Send>>;

/// Queues a handled frame's replies (after what is already queued) and says
/// whether the session ends with it; if it does, everything queued is
/// encoded for the goodbye.
fn finish_frame(
    flow: Flow,
    replies: &mut Vec<Frame>,
    writer: &mut Writer,
    outbox: &Outbox,
    metrics: &Metrics,
) -> Option<Ending> {
    if !replies.is_empty() {
        if let Flow::Refused(reason) = flow {
            metrics.count_error(reason);
        }
        match outbox.push_replies(replies) {
            OutboxState::Open => {}
            OutboxState::SlowConsumer => return Some(slow_consumer()),
            OutboxState::Closed => return Some(Ending::Quiet),
        }
    }
    let ending = match flow {
        Flow::Continue => return None,
        Flow::Close => Ending::Closed(CloseCode::Normal),
        Flow::Refused(_) => Ending::Closed(CloseCode::Policy),
    };
    match writer.queue_everything_for_goodbye(outbox, metrics) {
        OutboxState::Open => Some(ending),
        OutboxState::SlowConsumer => Some(slow_consumer()),
        OutboxState::Closed => Some(Ending::Quiet),
    }
}

/// Writes what is still pending, the ERROR frame (if any) and the close
/// frame, each within `CLOSE_TIMEOUT`; a peer that does not take them is
/// dropped.
async fn say_goodbye<S>(
    writer: &mut Writer,
    ws: &mut WebSocketStream<Gated<S>>,
    error: Option<Frame>,
    code: CloseCode,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    writer.queue_frames(error.into_iter());
    match tokio::time::timeout(CLOSE_TIMEOUT, writer.finish(ws)).await {
        Ok(Ok(())) => {}
        // Half a frame may be written: nothing more can go after it.
        Ok(Err(_)) | Err(_) => return,
    }
    let close = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(""),
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(close)))
        .await
        .is_err()
    {
        return;
    }
    // A peer told off in the middle of sending (a message over the limit:
    // 1009) still has bytes in flight; closing now would answer them with a
    // reset, and the reset can destroy the close frame before the peer reads
    // it. (Other closes follow a whole message or frame.)
    if code == CloseCode::Size {
        let _ = tokio::time::timeout(LINGER_TIMEOUT, linger(ws.get_mut())).await;
    }
}

/// A lingering close, as nginx does it: shut down our sending side (the
/// peer reads the close frame, then end of stream), and read and discard
/// what the peer still sends until it closes too (or `LINGER_TIMEOUT`).
async fn linger<S>(socket: &mut Gated<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if socket.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0u8; 2048];
    while let Ok(read) = socket.read(&mut discard).await {
        if read == 0 {
            break;
        }
    }
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
        Error::Io(io) => match io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<TooLargeBeforeConnect>())
        {
            Some(too_large) => (
                too_large.to_string(),
                CloseCode::Size,
                ErrorReason::TooLarge,
            ),
            None => return Ending::Quiet,
        },
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

//! The STOMP session state machine: fed decoded frames, it answers with
//! frames to write and says whether to close. It touches the registry and
//! publishes through the broker, but owns no socket, so it can be tested
//! frame by frame.

use crate::auth::Identity;
use crate::broker::{receipt_headers, Broker, Pending, ReceiptHeaders};
use crate::fanout::{EPOCH_HEADER, OFFSET_HEADER};
use crate::history::ReplayRequest;

/// SUBSCRIBE headers asking for history (see `replay_request`).
const SINCE_OFFSET_HEADER: &str = "x-since-offset";
const SINCE_EPOCH_HEADER: &str = "x-since-epoch";
const HISTORY_HEADER: &str = "x-history";
use crate::config::ClientSend;
use crate::destination;
use crate::metrics::ErrorReason;
use crate::outbox::Outbox;
use crate::registry::{Subscriber, SubscriberKey};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stompede_protocol::{Command, Frame, HeartBeat, Version};

const SUPPORTED_VERSIONS: &str = "1.0,1.1,1.2";
const SERVER_NAME: &str = concat!("stompede/", env!("CARGO_PKG_VERSION"));

/// Whether the connection stays open after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Write what was produced, then close.
    Close,
    /// The frame was refused: write the replies, which end in an ERROR, then
    /// close. The reason labels the `errors_total` metric.
    Refused(ErrorReason),
}

/// Heart-beat intervals agreed in CONNECT/CONNECTED (zero: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartBeats {
    /// How often the server must send something.
    pub send: Duration,
    /// How often the client promised to send something.
    pub receive: Duration,
}

#[derive(Debug)]
struct SubscriptionEntry {
    destination: Arc<str>,
    key: SubscriberKey,
    /// The id its subscriber was registered with (the same `Arc`, so its
    /// queued deliveries can be told apart from a later subscription's).
    subscription: Arc<str>,
}

/// A protocol error: becomes an ERROR frame, then the connection closes.
#[derive(Debug)]
struct Refusal {
    message: String,
    /// Extra headers (for example `version` on a failed negotiation).
    headers: Vec<(&'static str, String)>,
    /// Becomes [`Flow::Refused`]'s metric label.
    reason: ErrorReason,
}

impl Refusal {
    /// A frame that breaks the protocol (the most common refusal).
    fn new(message: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            headers: Vec::new(),
            reason: ErrorReason::InvalidFrame,
        }
    }

    fn because(self, reason: ErrorReason) -> Refusal {
        Refusal { reason, ..self }
    }
}

type Outcome = Result<(), Refusal>;

pub struct Session {
    broker: Arc<Broker>,
    connection_id: u64,
    outbox: Arc<Outbox>,
    /// `None` until CONNECT succeeds.
    version: Option<Version>,
    heart_beats: HeartBeats,
    subscriptions: HashMap<String, SubscriptionEntry>,
    next_subscription_sequence: u32,
    /// Open transactions and the SEND/ACK/NACK frames they hold.
    transactions: HashMap<String, Vec<Frame>>,
    /// BEGINs plus frames held by open transactions (bounded by `max-transaction-frames`).
    transaction_frames: usize,
    /// Bytes of the frames held by open transactions (bounded by `max-transaction-bytes`).
    transaction_bytes: usize,
    /// Who CONNECT proved this session is (`Anonymous` until then).
    identity: Identity,
    /// Bounds this session's SENDs (`max-sends-per-second`, `send-burst`).
    send_budget: TokenBucket,
    /// What the frame being handled left for the connection to finish.
    pending: Pending,
    /// Headers the frame being handled adds to its RECEIPT (a SUBSCRIBE's
    /// history position).
    receipt_headers: ReceiptHeaders,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Session {
    pub fn new(broker: Arc<Broker>, connection_id: u64, outbox: Arc<Outbox>) -> Session {
        let send_budget = TokenBucket::new(
            broker.config().max_sends_per_second,
            broker.config().send_burst,
        );
        Session {
            identity: Identity::Anonymous,
            send_budget,
            broker,
            connection_id,
            outbox,
            version: None,
            heart_beats: HeartBeats::default(),
            subscriptions: HashMap::new(),
            next_subscription_sequence: 0,
            transactions: HashMap::new(),
            transaction_frames: 0,
            pending: Pending::default(),
            receipt_headers: Vec::new(),
            transaction_bytes: 0,
        }
    }

    /// The negotiated version, once connected.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    pub fn heart_beats(&self) -> HeartBeats {
        self.heart_beats
    }

    /// What the last frame left to finish before its replies go out and the
    /// next frame is handled: subscriptions the engine must confirm, and
    /// messages to publish. `None` when there is nothing to wait for.
    pub fn take_pending(&mut self) -> Option<Pending> {
        let pending = std::mem::take(&mut self.pending);
        (!pending.is_empty()).then_some(pending)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Handles one frame from the client, pushing replies to `out`.
    pub fn handle(&mut self, frame: Frame, out: &mut Vec<Frame>) -> Flow {
        let receipt = frame.headers.get("receipt").map(str::to_owned);
        let command = frame.command;
        let result = match self.check_shape(&frame) {
            Err(refusal) => Err(refusal),
            Ok(()) => match self.version {
                None => self.handle_connect(frame, out),
                Some(version) => self.handle_connected(frame, version),
            },
        };
        match result {
            Err(refusal) => {
                let reason = refusal.reason;
                out.push(error_frame(refusal, receipt.as_deref()));
                Flow::Refused(reason)
            }
            Ok(()) => {
                if let Some(receipt) = receipt {
                    if !matches!(command, Command::Connect | Command::Stomp) {
                        let mut frame = Frame::new(Command::Receipt).header("receipt-id", receipt);
                        for (name, value) in self.receipt_headers.drain(..) {
                            frame = frame.header(name, value);
                        }
                        out.push(frame);
                    }
                }
                self.receipt_headers.clear();
                if command == Command::Disconnect {
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// Checks every frame gets before its command is handled: only SEND may
    /// carry a body (a body elsewhere is a client bug or an attempt to make
    /// the broker hold bytes), and the ids the broker may store are at most
    /// `max-id-bytes` long.
    fn check_shape(&self, frame: &Frame) -> Outcome {
        let command = frame.command;
        if !frame.body.is_empty() && command.is_client_command() && command != Command::Send {
            return Err(Refusal::new(format!(
                "{command} frame must not have a body"
            )));
        }
        let limit = self.broker.config().max_id_bytes;
        let stored = match command {
            Command::Subscribe => Some(("subscription", "id")),
            Command::Begin => Some(("transaction", "transaction")),
            _ => None,
        };
        let ids = stored
            .into_iter()
            .chain(std::iter::once(("receipt", "receipt")));
        for (what, header) in ids {
            if frame.headers.get(header).is_some_and(|id| id.len() > limit) {
                return Err(Refusal::new(format!(
                    "{what} id is longer than {limit} bytes (max-id-bytes)"
                ))
                .because(ErrorReason::Limit));
            }
        }
        Ok(())
    }

    /// An ERROR frame for a reason found outside a frame (a decode error, a
    /// timeout, shutdown).
    pub fn error(message: impl Into<String>) -> Frame {
        error_frame(Refusal::new(message), None)
    }

    /// An ERROR frame refusing a frame that had `receipt` (when its work failed).
    pub fn refusal(message: impl Into<String>, receipt: Option<&str>) -> Frame {
        error_frame(Refusal::new(message), receipt)
    }

    fn handle_connect(&mut self, frame: Frame, out: &mut Vec<Frame>) -> Outcome {
        if !matches!(frame.command, Command::Connect | Command::Stomp) {
            return Err(Refusal::new(format!(
                "expected a CONNECT or STOMP frame, got {}",
                frame.command
            )));
        }
        let headers = &frame.headers;
        let version = match headers.get("accept-version") {
            None => Version::V1_0,
            Some(list) => list
                .split(',')
                .filter_map(Version::parse)
                .max()
                .ok_or_else(|| Refusal {
                    message: format!(
                        "no common protocol version: this server supports {SUPPORTED_VERSIONS}"
                    ),
                    headers: vec![("version", SUPPORTED_VERSIONS.to_owned())],
                    reason: ErrorReason::Version,
                })?,
        };
        let identity = self
            .broker
            .auth()
            .authenticate(headers)
            .map_err(|message| Refusal::new(message).because(ErrorReason::Auth))?;
        let server = self.broker.config().heartbeat;
        let mut connected = Frame::new(Command::Connected);
        if version >= Version::V1_1 {
            let client = match headers.get("heart-beat") {
                None => HeartBeat::default(),
                Some(value) => HeartBeat::parse(value).ok_or_else(|| {
                    Refusal::new(format!(
                        "invalid heart-beat header {value:?}: expected two numbers, cx,cy"
                    ))
                })?,
            };
            self.heart_beats = HeartBeats {
                send: negotiate(server.can_send, client.wants_to_receive),
                receive: negotiate(client.can_send, server.wants_to_receive),
            };
            connected = connected
                .header("version", version.as_str())
                .header("heart-beat", server.to_string());
        }
        connected = connected
            .header("session", format!("session-{}", self.connection_id))
            .header("server", SERVER_NAME);
        self.version = Some(version);
        self.identity = identity;
        out.push(connected);
        Ok(())
    }

    fn handle_connected(&mut self, frame: Frame, version: Version) -> Outcome {
        match frame.command {
            Command::Connect | Command::Stomp => Err(Refusal::new("already connected")),
            Command::Subscribe => self.subscribe(&frame, version),
            Command::Unsubscribe => self.unsubscribe(&frame, version),
            Command::Send => self.send(frame),
            Command::Ack | Command::Nack => self.acknowledge(frame, version),
            Command::Begin => self.begin(&frame),
            Command::Commit => self.commit(&frame),
            Command::Abort => self.abort(&frame),
            Command::Disconnect => Ok(()),
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                Err(Refusal::new(format!(
                    "{} is a server frame; a client may not send it",
                    frame.command
                )))
            }
        }
    }

    fn subscribe(&mut self, frame: &Frame, version: Version) -> Outcome {
        let destination = required(frame, "destination")?;
        destination::validate(destination).map_err(Refusal::new)?;
        destination::check_subscribe(destination, &self.broker.config().subscribe_prefixes)
            .map_err(forbidden)?;
        if !self.identity.may_subscribe(destination) {
            return Err(forbidden(format!(
                "not allowed to subscribe to {destination:?}: the token does not grant it"
            )));
        }
        let id = match frame.headers.get("id") {
            Some(id) => id,
            // STOMP 1.0 makes `id` optional: the destination names the subscription.
            None if version == Version::V1_0 => destination,
            None => return Err(missing(frame, "id")),
        };
        if self.subscriptions.contains_key(id) {
            return Err(Refusal::new(format!(
                "subscription id {id:?} is already in use in this session"
            )));
        }
        let limit = self.broker.config().max_subscriptions_per_session;
        if self.subscriptions.len() >= limit {
            return Err(Refusal::new(format!(
                "too many subscriptions: this server allows {limit} per session"
            ))
            .because(ErrorReason::Limit));
        }
        let ack = match frame.headers.get("ack").unwrap_or("auto") {
            "auto" => false,
            "client" | "client-individual" => true,
            other => {
                return Err(Refusal::new(format!(
                    "invalid ack mode {other:?}: use auto, client or client-individual"
                )))
            }
        };
        let request = replay_request(frame)?;
        let key = SubscriberKey {
            connection: self.connection_id,
            sequence: self.next_subscription_sequence,
        };
        self.next_subscription_sequence = self.next_subscription_sequence.wrapping_add(1);
        let subscription: Arc<str> = Arc::from(id);
        let subscriber = Subscriber {
            outbox: self.outbox.clone(),
            subscription: subscription.clone(),
            ack,
            version,
        };
        let subscribed = self
            .broker
            .subscribe(destination, key, subscriber, &request);
        if !subscribed.confirmation.is_ready() {
            self.pending.confirmations.push(subscribed.confirmation);
        }
        if let Some(resume) = subscribed.resume {
            // Its RECEIPT's headers come when the history is read.
            self.pending.resumes.push(resume);
        }
        self.receipt_headers.extend(receipt_headers(
            subscribed.position.as_ref(),
            subscribed.recovered,
        ));
        self.subscriptions.insert(
            id.to_owned(),
            SubscriptionEntry {
                destination: Arc::from(destination),
                key,
                subscription,
            },
        );
        Ok(())
    }

    fn unsubscribe(&mut self, frame: &Frame, version: Version) -> Outcome {
        let id = match (frame.headers.get("id"), version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => {
                let destination = required(frame, "destination")?;
                return self.unsubscribe_destination(destination);
            }
            (None, _) => return Err(missing(frame, "id")),
        };
        let entry = self.subscriptions.remove(id).ok_or_else(|| {
            Refusal::new(format!("no subscription with id {id:?} in this session"))
        })?;
        self.end_subscription(entry);
        Ok(())
    }

    /// STOMP 1.0's UNSUBSCRIBE by `destination`: ends this session's
    /// subscriptions to it, whether or not their SUBSCRIBE gave an `id`
    /// (a walk over at most `max-subscriptions-per-session` entries).
    fn unsubscribe_destination(&mut self, destination: &str) -> Outcome {
        let ids: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, entry)| &*entry.destination == destination)
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            return Err(Refusal::new(format!(
                "no subscription to {destination:?} in this session"
            )));
        }
        for id in ids {
            if let Some(entry) = self.subscriptions.remove(&id) {
                self.end_subscription(entry);
            }
        }
        Ok(())
    }

    fn end_subscription(&self, entry: SubscriptionEntry) {
        self.broker.unsubscribe(&entry.destination, entry.key);
        self.forget_queued(&entry);
    }

    /// Drops what is still queued for a subscription that ended.
    fn forget_queued(&self, entry: &SubscriptionEntry) {
        let dropped = self.outbox.retire(&entry.subscription);
        self.broker.metrics().outbound_queued.sub(dropped as i64);
    }

    fn send(&mut self, frame: Frame) -> Outcome {
        if self.broker.config().client_send == ClientSend::Deny {
            return Err(Refusal::new(
                "SEND is disabled on this server: messages are published through the HTTP API \
                 (start stompede with --client-send allow to let clients SEND)",
            )
            .because(ErrorReason::SendDisabled));
        }
        let destination = required(&frame, "destination")?;
        destination::validate(destination).map_err(Refusal::new)?;
        let config = self.broker.config();
        destination::check_send(destination, &config.send_prefixes).map_err(forbidden)?;
        check_passable_headers(&frame)?;
        if !self.send_budget.take(Instant::now()) {
            return Err(Refusal::new(format!(
                "too many SENDs: this server allows {} per second per session (burst {})",
                config.max_sends_per_second, config.send_burst
            ))
            .because(ErrorReason::Limit));
        }
        // Held in a transaction or queued in outboxes: keep a copy, not the read buffer.
        let frame = detached(frame);
        if let Some(transaction) = frame.headers.get("transaction") {
            return self.hold_in_transaction(transaction.to_owned(), frame);
        }
        self.publish(frame);
        Ok(())
    }

    /// Leaves the message for the connection to publish: the engine may have
    /// to wait for Redis, and the frame's RECEIPT waits for it.
    fn publish(&mut self, frame: Frame) {
        let destination = frame
            .headers
            .get("destination")
            .unwrap_or_default()
            .to_owned();
        let publication =
            self.broker
                .publication(vec![destination], frame.headers, frame.body, None);
        self.pending.publications.push(publication);
    }

    fn acknowledge(&mut self, frame: Frame, version: Version) -> Outcome {
        match version {
            Version::V1_2 => {
                let id = required(&frame, "id")?;
                self.check_ack_id(frame.command, id)?;
            }
            Version::V1_1 => {
                required(&frame, "message-id")?;
                let subscription = required(&frame, "subscription")?;
                if !self.subscriptions.contains_key(subscription) {
                    return Err(Refusal::new(format!(
                        "no subscription with id {subscription:?} in this session"
                    )));
                }
            }
            Version::V1_0 => {
                required(&frame, "message-id")?;
            }
        }
        if let Some(transaction) = frame.headers.get("transaction") {
            return self.hold_in_transaction(transaction.to_owned(), detached(frame));
        }
        // Messages are not persisted, so there is nothing to redeliver or forget:
        // a valid ACK or NACK needs no further work.
        Ok(())
    }

    /// STOMP 1.2: whether `id` is an `ack` id this session was sent
    /// (`{connection}.{n}`, see `session::writer`): checked by its parts,
    /// with no memory per message.
    fn check_ack_id(&self, command: Command, id: &str) -> Outcome {
        let sent = id
            .split_once('.')
            .and_then(|(connection, n)| {
                Some((connection.parse::<u64>().ok()?, n.parse::<u64>().ok()?))
            })
            .is_some_and(|(connection, n)| {
                connection == self.connection_id && n < self.outbox.acks_issued()
            });
        if sent {
            Ok(())
        } else {
            Err(Refusal::new(format!(
                "{command} of id {id:?}: this session was never sent a message with that ack id"
            )))
        }
    }

    fn begin(&mut self, frame: &Frame) -> Outcome {
        let transaction = required(frame, "transaction")?;
        if self.transactions.contains_key(transaction) {
            return Err(Refusal::new(format!(
                "transaction {transaction:?} is already open"
            )));
        }
        self.reserve_transaction_frame()?;
        self.transactions.insert(transaction.to_owned(), Vec::new());
        Ok(())
    }

    fn commit(&mut self, frame: &Frame) -> Outcome {
        let frames = self.close_transaction(frame)?;
        for held in frames {
            if held.command == Command::Send {
                self.publish(held);
            }
        }
        Ok(())
    }

    fn abort(&mut self, frame: &Frame) -> Outcome {
        self.close_transaction(frame).map(drop)
    }

    fn close_transaction(&mut self, frame: &Frame) -> Result<Vec<Frame>, Refusal> {
        let transaction = required(frame, "transaction")?;
        let frames = self
            .transactions
            .remove(transaction)
            .ok_or_else(|| Refusal::new(format!("no open transaction {transaction:?}")))?;
        self.transaction_frames -= frames.len() + 1;
        self.transaction_bytes -= frames.iter().map(held_bytes).sum::<usize>();
        Ok(frames)
    }

    fn hold_in_transaction(&mut self, transaction: String, frame: Frame) -> Outcome {
        if !self.transactions.contains_key(&transaction) {
            return Err(Refusal::new(format!("no open transaction {transaction:?}")));
        }
        let bytes = held_bytes(&frame);
        let limit = self.broker.config().max_transaction_bytes;
        if self.transaction_bytes + bytes > limit {
            return Err(Refusal::new(format!(
                "too many bytes in open transactions: this server holds at most {limit} per \
                 session (max-transaction-bytes)"
            ))
            .because(ErrorReason::Limit));
        }
        self.reserve_transaction_frame()?;
        self.transaction_bytes += bytes;
        self.transactions
            .get_mut(&transaction)
            .expect("checked above")
            .push(frame);
        Ok(())
    }

    fn reserve_transaction_frame(&mut self) -> Outcome {
        let limit = self.broker.config().max_transaction_frames;
        if self.transaction_frames >= limit {
            return Err(Refusal::new(format!(
                "too many frames in open transactions: this server holds at most {limit} per session"
            ))
            .because(ErrorReason::Limit));
        }
        self.transaction_frames += 1;
        Ok(())
    }

    /// Removes every subscription of this session from the registry.
    pub fn close(&mut self) {
        for (_, entry) in self.subscriptions.drain() {
            self.broker.unsubscribe(&entry.destination, entry.key);
        }
        self.transactions.clear();
        self.transaction_frames = 0;
        self.transaction_bytes = 0;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// The interval for one direction: zero if either side does not want it,
/// otherwise the larger of what one can do and the other wants.
fn negotiate(can: Duration, wants: Duration) -> Duration {
    if can.is_zero() || wants.is_zero() {
        Duration::ZERO
    } else {
        can.max(wants)
    }
}

/// What a frame held in a transaction costs `max-transaction-bytes`.
fn held_bytes(frame: &Frame) -> usize {
    frame.body.len() + frame.headers.byte_len()
}

/// A SEND's headers go to subscribers of every version, and STOMP 1.0
/// escapes nothing: a control character (a NUL ends the frame for parsers
/// that cut at NUL, a CR or LF starts a new header line) or a colon in a
/// name cannot be written safely to all of them, so it is refused here, as
/// the HTTP API refuses control characters.
fn check_passable_headers(frame: &Frame) -> Outcome {
    for (name, value) in frame.headers.iter() {
        let reason = if name.chars().chain(value.chars()).any(char::is_control) {
            "it contains a control character (NUL, CR, LF, ...)"
        } else if name.contains(':') {
            "its name contains a colon"
        } else {
            continue;
        };
        return Err(Refusal::new(format!(
            "header {name:?} cannot be passed on to every subscriber: {reason}"
        )));
    }
    Ok(())
}

/// `frame` with its body copied into a buffer of its own size, and its
/// headers' storage shrunk to what they use. A decoded body is a view into
/// the connection's read buffer (up to one WebSocket message), and keeping
/// the view would keep all of it; the decoder grows header storage by
/// doubling.
fn detached(mut frame: Frame) -> Frame {
    frame.body = Bytes::copy_from_slice(&frame.body);
    frame.headers.shrink_to_fit();
    frame
}

/// What a SUBSCRIBE asks of the destination's history: `x-since-offset`
/// with `x-since-epoch` (resume), `x-history` (the last N messages).
fn replay_request(frame: &Frame) -> Result<ReplayRequest, Refusal> {
    let number = |name: &str| -> Result<Option<u64>, Refusal> {
        frame
            .headers
            .get(name)
            .map(|value| {
                value.parse::<u64>().map_err(|_| {
                    Refusal::new(format!(
                        "{name} must be a whole number from 0 to {}, not {value:?}",
                        u64::MAX
                    ))
                })
            })
            .transpose()
    };
    let since_offset = number(SINCE_OFFSET_HEADER)?;
    let since_epoch = frame.headers.get(SINCE_EPOCH_HEADER);
    let since = match (since_offset, since_epoch) {
        (Some(offset), Some(epoch)) => Some((epoch.to_owned(), offset)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Refusal::new(format!(
                "{SINCE_OFFSET_HEADER} needs {SINCE_EPOCH_HEADER}: offsets count within one epoch \
                 (both are in every MESSAGE as {OFFSET_HEADER} and {EPOCH_HEADER})"
            )))
        }
        (None, Some(_)) => {
            return Err(Refusal::new(format!(
                "{SINCE_EPOCH_HEADER} needs {SINCE_OFFSET_HEADER}"
            )))
        }
    };
    let last = number(HISTORY_HEADER)?.unwrap_or(0);
    Ok(ReplayRequest {
        since,
        last: usize::try_from(last).unwrap_or(usize::MAX),
    })
}

fn required<'a>(frame: &'a Frame, name: &str) -> Result<&'a str, Refusal> {
    frame.headers.get(name).ok_or_else(|| missing(frame, name))
}

fn forbidden(message: impl Into<String>) -> Refusal {
    Refusal::new(message).because(ErrorReason::Forbidden)
}

fn missing(frame: &Frame, name: &str) -> Refusal {
    Refusal::new(format!("{} frame has no {name} header", frame.command))
}

fn error_frame(refusal: Refusal, receipt: Option<&str>) -> Frame {
    let mut frame = Frame::new(Command::Error).header("message", refusal.message.clone());
    for (name, value) in refusal.headers {
        frame = frame.header(name, value);
    }
    if let Some(receipt) = receipt {
        frame = frame.header("receipt-id", receipt);
    }
    frame
        .header("content-type", "text/plain")
        .body(refusal.message.into_bytes())
}

/// The state machine frame by frame: frames in, frames out, no socket.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;
    use crate::config::Config;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    struct Harness {
        broker: Arc<Broker>,
        session: Session,
        outbox: Arc<Outbox>,
    }

    impl Harness {
        fn new(config: Config) -> Harness {
            let broker = Arc::new(Broker::new(config));
            let outbox = Arc::new(Outbox::new(16, 1 << 20, None));
            let session = Session::new(broker.clone(), 7, outbox.clone());
            Harness {
                broker,
                session,
                outbox,
            }
        }

        /// A session that has CONNECTed with STOMP 1.2 and no heart-beats.
        fn connected(config: Config) -> Harness {
            let mut harness = Harness::new(config);
            let (flow, replies) = harness.feed(connect("1.2"));
            assert_eq!(flow, Flow::Continue);
            assert_eq!(replies[0].command, Command::Connected);
            harness
        }

        /// Handles one frame, and finishes its pending work as the connection would.
        fn feed(&mut self, frame: Frame) -> (Flow, Vec<Frame>) {
            let mut replies = Vec::new();
            let flow = self.session.handle(frame, &mut replies);
            if let Some(pending) = self.session.take_pending() {
                let mut work = std::pin::pin!(self.broker.complete(pending));
                let mut context = std::task::Context::from_waker(std::task::Waker::noop());
                let done = std::future::Future::poll(work.as_mut(), &mut context);
                assert!(
                    matches!(done, std::task::Poll::Ready(Ok(_))),
                    "the memory engine finishes at once"
                );
            }
            (flow, replies)
        }

        /// Feeds a frame that must be refused; returns the ERROR's message and the reason.
        fn refused(&mut self, frame: Frame) -> (String, ErrorReason) {
            let (flow, replies) = self.feed(frame);
            let Flow::Refused(reason) = flow else {
                panic!("not refused: {flow:?} {replies:?}")
            };
            let error = replies.last().expect("an ERROR");
            assert_eq!(error.command, Command::Error);
            let message = error.headers.get("message").unwrap().to_owned();
            assert_eq!(
                &error.body[..],
                message.as_bytes(),
                "the body repeats the message"
            );
            (message, reason)
        }
    }

    fn connect(version: &str) -> Frame {
        Frame::new(Command::Connect).header("accept-version", version)
    }

    fn subscribe(id: &str, destination: &str) -> Frame {
        Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", destination)
    }

    fn send(destination: &str) -> Frame {
        Frame::new(Command::Send)
            .header("destination", destination)
            .body("hi")
    }

    fn allowing_send() -> Config {
        Config {
            client_send: ClientSend::Allow,
            ..Config::default()
        }
    }

    #[test]
    fn heart_beats_are_negotiated_per_direction() {
        let server = |cx, cy| Config {
            heartbeat: HeartBeat {
                can_send: MS(cx),
                wants_to_receive: MS(cy),
            },
            ..Config::default()
        };
        // (server cx,cy), client's header, expected (send, receive)
        let cases = [
            ((1000, 1000), Some("500,2000"), (2000, 1000)),
            ((1000, 1000), Some("0,0"), (0, 0)),
            ((1000, 0), Some("500,500"), (1000, 0)),
            ((0, 1000), Some("500,500"), (0, 1000)),
            ((1000, 1000), None, (0, 0)),
            ((10000, 10000), Some(" 3000 , 20000 "), (20000, 10000)),
        ];
        for ((cx, cy), header, (send, receive)) in cases {
            let mut harness = Harness::new(server(cx, cy));
            let mut frame = connect("1.1,1.2");
            if let Some(header) = header {
                frame = frame.header("heart-beat", header);
            }
            let (_, replies) = harness.feed(frame);
            assert_eq!(
                replies[0].headers.get("heart-beat"),
                Some(format!("{cx},{cy}").as_str())
            );
            assert_eq!(
                harness.session.heart_beats(),
                HeartBeats {
                    send: MS(send),
                    receive: MS(receive)
                },
                "server {cx},{cy}, client {header:?}"
            );
        }
        // STOMP 1.0 has no heart-beats, whatever the client says.
        let mut harness = Harness::new(server(1000, 1000));
        let (_, replies) = harness.feed(Frame::new(Command::Connect).header("heart-beat", "10,10"));
        assert_eq!(replies[0].headers.get("heart-beat"), None);
        assert_eq!(harness.session.heart_beats(), HeartBeats::default());
        // A header that is not cx,cy is refused.
        let mut harness = Harness::new(Config::default());
        let (message, reason) = harness.refused(connect("1.2").header("heart-beat", "often"));
        assert_eq!(
            message,
            "invalid heart-beat header \"often\": expected two numbers, cx,cy"
        );
        assert_eq!(reason, ErrorReason::InvalidFrame);
    }

    #[test]
    fn the_highest_common_version_is_chosen_or_the_connect_refused() {
        for (offered, chosen) in [("1.0,1.1", "1.1"), ("1.2,1.0", "1.2"), ("1.0", "1.0")] {
            let mut harness = Harness::new(Config::default());
            let (_, replies) = harness.feed(connect(offered));
            let expected = (chosen != "1.0").then_some(chosen);
            assert_eq!(replies[0].headers.get("version"), expected, "{offered}");
            assert_eq!(harness.session.version().unwrap().as_str(), chosen);
        }
        let mut harness = Harness::new(Config::default());
        let (flow, replies) = harness.feed(connect("2.0,3.1"));
        assert_eq!(flow, Flow::Refused(ErrorReason::Version));
        assert_eq!(replies[0].headers.get("version"), Some("1.0,1.1,1.2"));
        assert_eq!(harness.session.version(), None);
    }

    #[test]
    fn transactions_hold_sends_until_commit_and_drop_them_on_abort() {
        let mut harness = Harness::connected(allowing_send());
        harness.feed(subscribe("0", "/topic/a"));
        let begin = |tx: &str| Frame::new(Command::Begin).header("transaction", tx);
        let end = |command, tx: &str| Frame::new(command).header("transaction", tx);
        assert_eq!(harness.feed(begin("t1")).0, Flow::Continue);
        assert_eq!(
            harness.feed(send("/topic/a").header("transaction", "t1")).0,
            Flow::Continue
        );
        assert_eq!(
            harness.feed(send("/topic/a").header("transaction", "t1")).0,
            Flow::Continue
        );
        assert!(
            harness.outbox.is_empty(),
            "nothing is published before COMMIT"
        );
        assert_eq!(harness.feed(end(Command::Commit, "t1")).0, Flow::Continue);
        assert_eq!(
            harness.outbox.len(),
            2,
            "COMMIT publishes what the transaction held"
        );

        harness.feed(begin("t2"));
        harness.feed(send("/topic/a").header("transaction", "t2"));
        assert_eq!(harness.feed(end(Command::Abort, "t2")).0, Flow::Continue);
        assert_eq!(
            harness.outbox.len(),
            2,
            "ABORT drops what the transaction held"
        );
        assert_eq!(harness.session.transaction_frames, 0);

        let (message, _) = harness.refused(end(Command::Commit, "t2"));
        assert_eq!(message, "no open transaction \"t2\"");
    }

    #[test]
    fn transaction_refusals() {
        let begin = |tx: &str| Frame::new(Command::Begin).header("transaction", tx);
        let mut harness = Harness::connected(allowing_send());
        harness.feed(begin("t"));
        assert_eq!(
            harness.refused(begin("t")).0,
            "transaction \"t\" is already open"
        );

        let mut harness = Harness::connected(allowing_send());
        let (message, _) = harness.refused(send("/topic/a").header("transaction", "nope"));
        assert_eq!(message, "no open transaction \"nope\"");

        let mut harness = Harness::connected(Config {
            max_transaction_frames: 3,
            ..allowing_send()
        });
        harness.feed(begin("t"));
        harness.feed(send("/topic/a").header("transaction", "t"));
        harness.feed(send("/topic/a").header("transaction", "t"));
        let (message, reason) = harness.refused(send("/topic/a").header("transaction", "t"));
        assert_eq!(
            message,
            "too many frames in open transactions: this server holds at most 3 per session"
        );
        assert_eq!(reason, ErrorReason::Limit);

        let mut harness = Harness::connected(Config::default());
        let (message, _) = harness.refused(Frame::new(Command::Begin));
        assert_eq!(message, "BEGIN frame has no transaction header");
    }

    #[test]
    fn every_refusal_names_its_reason() {
        let limits = || Config {
            max_subscriptions_per_session: 1,
            subscribe_prefixes: vec!["/topic/".into()],
            ..Config::default()
        };
        let refused = |config: Config, frames: Vec<Frame>, reason: ErrorReason, expected: &str| {
            let mut harness = Harness::connected(config);
            let (last, before) = frames.split_last().unwrap();
            for frame in before {
                assert_eq!(harness.feed(frame.clone()).0, Flow::Continue, "{frame:?}");
            }
            let (message, refusal) = harness.refused(last.clone().header("receipt", "r-1"));
            assert_eq!(message, expected);
            assert_eq!(refusal, reason, "{expected}");
        };
        refused(
            limits(),
            vec![subscribe("0", "/queue/a")],
            ErrorReason::Forbidden,
            concat!(
                "not allowed to subscribe to \"/queue/a\": destinations must ",
                "start with \"/topic/\""
            ),
        );
        refused(
            limits(),
            vec![Frame::new(Command::Subscribe).header("id", "0")],
            ErrorReason::InvalidFrame,
            "SUBSCRIBE frame has no destination header",
        );
        refused(
            limits(),
            vec![Frame::new(Command::Subscribe).header("destination", "/topic/a")],
            ErrorReason::InvalidFrame,
            "SUBSCRIBE frame has no id header",
        );
        refused(
            limits(),
            vec![subscribe("0", "/topic/\u{1}")],
            ErrorReason::InvalidFrame,
            "destination contains a control character",
        );
        refused(
            limits(),
            vec![subscribe("0", "/topic/a"), subscribe("0", "/topic/b")],
            ErrorReason::InvalidFrame,
            "subscription id \"0\" is already in use in this session",
        );
        refused(
            limits(),
            vec![subscribe("0", "/topic/a"), subscribe("1", "/topic/b")],
            ErrorReason::Limit,
            "too many subscriptions: this server allows 1 per session",
        );
        refused(
            limits(),
            vec![subscribe("0", "/topic/a").header("ack", "sometimes")],
            ErrorReason::InvalidFrame,
            concat!(
                "invalid ack mode \"sometimes\": use auto, client or ",
                "client-individual"
            ),
        );
        refused(
            limits(),
            vec![Frame::new(Command::Unsubscribe).header("id", "9")],
            ErrorReason::InvalidFrame,
            "no subscription with id \"9\" in this session",
        );
        refused(
            limits(),
            vec![send("/topic/a")],
            ErrorReason::SendDisabled,
            concat!(
                "SEND is disabled on this server: messages are published ",
                "through the HTTP API (start stompede with --client-send ",
                "allow to let clients SEND)"
            ),
        );
        refused(
            Config {
                send_prefixes: vec!["/chat/".into()],
                ..allowing_send()
            },
            vec![send("/topic/a")],
            ErrorReason::Forbidden,
            concat!(
                "not allowed to send to \"/topic/a\": destinations must ",
                "start with \"/chat/\""
            ),
        );
        refused(
            Config {
                send_burst: 2,
                max_sends_per_second: 0.001,
                ..allowing_send()
            },
            vec![send("/topic/a"), send("/topic/a"), send("/topic/a")],
            ErrorReason::Limit,
            concat!(
                "too many SENDs: this server allows 0.001 per second per ",
                "session (burst 2)"
            ),
        );
        refused(
            limits(),
            vec![Frame::new(Command::Ack)],
            ErrorReason::InvalidFrame,
            "ACK frame has no id header",
        );
        refused(
            limits(),
            vec![Frame::new(Command::Message)],
            ErrorReason::InvalidFrame,
            "MESSAGE is a server frame; a client may not send it",
        );
        refused(
            limits(),
            vec![connect("1.2")],
            ErrorReason::InvalidFrame,
            "already connected",
        );
    }

    #[test]
    fn refusals_before_connect() {
        let mut harness = Harness::new(Config::default());
        let (message, reason) = harness.refused(subscribe("0", "/topic/a"));
        assert_eq!(message, "expected a CONNECT or STOMP frame, got SUBSCRIBE");
        assert_eq!(reason, ErrorReason::InvalidFrame);

        let users = Config {
            users: vec![User {
                login: "ann".into(),
                passcode: "pw".into(),
            }],
            ..Config::default()
        };
        let mut harness = Harness::new(users.clone());
        let (message, reason) = harness.refused(connect("1.2"));
        assert_eq!(
            message,
            "authentication required: send login and passcode, or a token"
        );
        assert_eq!(reason, ErrorReason::Auth);
        let mut harness = Harness::new(users);
        let (flow, _) = harness.feed(
            connect("1.2")
                .header("login", "ann")
                .header("passcode", "pw"),
        );
        assert_eq!(flow, Flow::Continue);
    }

    #[test]
    fn receipts_and_an_error_carry_the_receipt_id() {
        let mut harness = Harness::connected(Config::default());
        let (flow, replies) = harness.feed(subscribe("0", "/topic/a").header("receipt", "77"));
        assert_eq!(flow, Flow::Continue);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].command, Command::Receipt);
        assert_eq!(replies[0].headers.get("receipt-id"), Some("77"));
        assert_eq!(harness.broker.subscriber_count("/topic/a"), 1);

        let (_, replies) = harness.feed(subscribe("0", "/topic/b").header("receipt", "78"));
        assert_eq!(
            replies.len(),
            1,
            "a refused frame gets no RECEIPT, only the ERROR"
        );
        assert_eq!(replies[0].headers.get("receipt-id"), Some("78"));

        let (flow, replies) =
            harness.feed(Frame::new(Command::Disconnect).header("receipt", "bye"));
        assert_eq!(flow, Flow::Close);
        assert_eq!(replies[0].headers.get("receipt-id"), Some("bye"));
    }

    #[test]
    fn closing_the_session_leaves_nothing_in_the_registry() {
        let mut harness = Harness::connected(Config::default());
        harness.feed(subscribe("0", "/topic/a"));
        harness.feed(subscribe("1", "/topic/b"));
        assert_eq!(harness.broker.destination_count(), 2);
        harness.feed(Frame::new(Command::Unsubscribe).header("id", "0"));
        assert_eq!(harness.broker.destination_count(), 1);
        drop(harness.session);
        assert_eq!(harness.broker.destination_count(), 0);
    }

    #[test]
    fn stomp_1_0_subscriptions_are_named_by_their_destination() {
        let mut harness = Harness::new(Config::default());
        harness.feed(Frame::new(Command::Connect));
        let (flow, _) =
            harness.feed(Frame::new(Command::Subscribe).header("destination", "/topic/a"));
        assert_eq!(flow, Flow::Continue);
        let (flow, _) =
            harness.feed(Frame::new(Command::Unsubscribe).header("destination", "/topic/a"));
        assert_eq!(flow, Flow::Continue);
        assert_eq!(harness.broker.subscriber_count("/topic/a"), 0);
    }
}

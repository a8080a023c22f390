//! The STOMP session state machine: fed decoded frames, it answers with
//! frames to write and says whether to close. It touches the registry and
//! publishes through the broker, but owns no socket, so it can be tested
//! frame by frame.

use crate::auth::Identity;
use crate::broker::Broker;
use crate::config::ClientSend;
use crate::destination;
use crate::metrics::ErrorReason;
use crate::outbox::Outbox;
use crate::registry::{Subscriber, SubscriberKey};
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
    /// Who CONNECT proved this session is (`Anonymous` until then).
    identity: Identity,
    /// Bounds this session's SENDs (`max-sends-per-second`, `send-burst`).
    send_budget: TokenBucket,
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
        }
    }

    /// The negotiated version, once connected.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    pub fn heart_beats(&self) -> HeartBeats {
        self.heart_beats
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Handles one frame from the client, pushing replies to `out`.
    pub fn handle(&mut self, frame: Frame, out: &mut Vec<Frame>) -> Flow {
        let receipt = frame.headers.get("receipt").map(str::to_owned);
        let command = frame.command;
        let result = match self.version {
            None => self.handle_connect(frame, out),
            Some(version) => self.handle_connected(frame, version),
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
                        out.push(Frame::new(Command::Receipt).header("receipt-id", receipt));
                    }
                }
                if command == Command::Disconnect {
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// An ERROR frame for a reason found outside a frame (a decode error, a
    /// timeout, shutdown).
    pub fn error(message: impl Into<String>) -> Frame {
        error_frame(Refusal::new(message), None)
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
        let key = SubscriberKey {
            connection: self.connection_id,
            sequence: self.next_subscription_sequence,
        };
        self.next_subscription_sequence = self.next_subscription_sequence.wrapping_add(1);
        let subscriber = Subscriber {
            outbox: self.outbox.clone(),
            subscription: Arc::from(id),
            ack,
            version,
        };
        self.broker.subscribe(destination, key, subscriber);
        self.subscriptions.insert(
            id.to_owned(),
            SubscriptionEntry {
                destination: Arc::from(destination),
                key,
            },
        );
        Ok(())
    }

    fn unsubscribe(&mut self, frame: &Frame, version: Version) -> Outcome {
        let id = match (frame.headers.get("id"), version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => required(frame, "destination")?,
            (None, _) => return Err(missing(frame, "id")),
        };
        let entry = self.subscriptions.remove(id).ok_or_else(|| {
            Refusal::new(format!("no subscription with id {id:?} in this session"))
        })?;
        self.broker.unsubscribe(&entry.destination, entry.key);
        Ok(())
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
        if !self.send_budget.take(Instant::now()) {
            return Err(Refusal::new(format!(
                "too many SENDs: this server allows {} per second per session (burst {})",
                config.max_sends_per_second, config.send_burst
            ))
            .because(ErrorReason::Limit));
        }
        if let Some(transaction) = frame.headers.get("transaction") {
            return self.hold_in_transaction(transaction.to_owned(), frame);
        }
        self.publish(frame);
        Ok(())
    }

    fn publish(&self, frame: Frame) {
        let destination = frame.headers.get("destination").unwrap_or_default();
        self.broker
            .publish(&[destination], &frame.headers, frame.body);
    }

    fn acknowledge(&mut self, frame: Frame, version: Version) -> Outcome {
        match version {
            Version::V1_2 => {
                required(&frame, "id")?;
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
            return self.hold_in_transaction(transaction.to_owned(), frame);
        }
        // Messages are not persisted, so there is nothing to redeliver or forget:
        // a valid ACK or NACK needs no further work.
        Ok(())
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
        Ok(frames)
    }

    fn hold_in_transaction(&mut self, transaction: String, frame: Frame) -> Outcome {
        if !self.transactions.contains_key(&transaction) {
            return Err(Refusal::new(format!("no open transaction {transaction:?}")));
        }
        self.reserve_transaction_frame()?;
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

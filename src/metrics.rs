//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Counters on the per-delivery path are bumped once per publish or once per
//! write batch, not once per message, so metrics cost little at high fan-out.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use stompede_protocol::Version;

pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Connected STOMP sessions, by negotiated version.
    pub sessions: IntGaugeVec,
    pub subscriptions: IntGauge,
    /// Destinations with at least one subscriber (set when scraped).
    pub destinations: IntGauge,
    pub messages_published: IntCounter,
    /// MESSAGE frames written to sockets.
    pub messages_delivered: IntCounter,
    /// Of those, written by the fan-out straight into an idle connection's socket.
    pub messages_delivered_direct: IntCounter,
    pub slow_consumer_disconnects: IntCounter,
    pub slow_consumer_drops: IntCounter,
    /// WebSocket handshakes answered 503 past `max-handshakes-per-second`.
    pub handshakes_refused: IntCounter,
    /// ERROR frames sent, by reason.
    pub errors: IntCounterVec,
    /// Deliveries waiting in outbound queues, all connections together.
    pub outbound_queued: IntGauge,
    /// Frames written per batch (one flush).
    pub outbound_batch_frames: Histogram,
    /// From the publish call to the MESSAGE being handed to the socket.
    pub delivery_latency: Histogram,
    /// HTTP requests by route and status.
    pub http_requests: IntCounterVec,
    /// HTTP request handling time by route.
    pub http_duration: HistogramVec,
    /// 1 while the engine can publish (always for memory), 0 while Redis is unreachable.
    pub engine_up: IntGauge,
    /// Publishes this node sent to Redis.
    pub engine_publishes: IntCounter,
    /// Messages this node received from Redis (each fanned out locally once).
    pub engine_received: IntCounter,
    /// Destinations this node subscribed to / unsubscribed from in Redis.
    pub engine_interest_subscribes: IntCounter,
    pub engine_interest_unsubscribes: IntCounter,
    /// Redis SUBSCRIBE commands sent (each covers many destinations when they arrive together).
    pub engine_subscribe_commands: IntCounter,
    /// Times the Redis links came back after being lost.
    pub engine_reconnects: IntCounter,
    /// Messages from Redis waiting for the local fan-out.
    pub engine_input_queued: IntGauge,
    /// Messages from Redis lost because the local fan-out fell behind (a gap).
    pub engine_input_dropped: IntCounter,
    /// Messages from Redis this node could not read (an unknown format version).
    pub engine_input_invalid: IntCounter,
    /// Messages this node missed from Redis (its link dropped, its input
    /// overflowed) and read back from history for its subscribers.
    pub engine_gap_filled: IntCounter,
    /// Gaps history could not fill (the next message carries `x-gap:true`).
    pub engine_gap_unfilled: IntCounter,
    /// Destinations whose Redis subscription was dropped without this node
    /// asking (a Redis Cluster slot moved, a failover): a gap, subscribed again.
    pub engine_subscriptions_lost: IntCounter,
    /// Redis round trip of a publish, of a count, of an interest change.
    pub engine_roundtrip: HistogramVec,
    /// Bytes of history held in this process (`history-max-bytes`; the redis engine keeps a
    /// copy of what its node received, to answer resumes without reading Redis).
    pub history_bytes: IntGauge,
    /// Destinations with a history in this process (an offset, an epoch, maybe messages).
    pub history_destinations: IntGauge,
    /// Destinations forgotten past `history-max-bytes` (memory engine: their readers' next
    /// resume gets `x-recovered:false`; redis engine: it reads Redis instead).
    pub history_evictions: IntCounter,
    /// Messages sent from history (`x-since-offset`, `x-history`), before the live stream.
    pub history_replayed: IntCounter,
    /// SUBSCRIBEs with `x-since-offset`, by whether history covered the gap.
    pub resumes: IntCounterVec,
}

/// Why a session was sent an ERROR frame: the `reason` label of `errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    // A frame the session refused (see session/state.rs).
    InvalidFrame,
    Version,
    Auth,
    Forbidden,
    Limit,
    SendDisabled,
    // Outside any one frame (see session/connection.rs).
    Decode,
    InvalidUtf8,
    TooLarge,
    WebSocket,
    ConnectTimeout,
    HeartbeatTimeout,
    SlowConsumer,
    WriteTimeout,
    Shutdown,
    /// The engine could not carry out a frame (Redis unreachable).
    Unavailable,
}

impl ErrorReason {
    /// Every reason, exported at zero from the start so dashboards and alerts
    /// see each series before it first moves.
    pub const ALL: [ErrorReason; 16] = [
        ErrorReason::InvalidFrame,
        ErrorReason::Version,
        ErrorReason::Auth,
        ErrorReason::Forbidden,
        ErrorReason::Limit,
        ErrorReason::SendDisabled,
        ErrorReason::Decode,
        ErrorReason::InvalidUtf8,
        ErrorReason::TooLarge,
        ErrorReason::WebSocket,
        ErrorReason::ConnectTimeout,
        ErrorReason::HeartbeatTimeout,
        ErrorReason::SlowConsumer,
        ErrorReason::WriteTimeout,
        ErrorReason::Shutdown,
        ErrorReason::Unavailable,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorReason::InvalidFrame => "invalid_frame",
            ErrorReason::Version => "version",
            ErrorReason::Auth => "auth",
            ErrorReason::Forbidden => "forbidden",
            ErrorReason::Limit => "limit",
            ErrorReason::SendDisabled => "send_disabled",
            ErrorReason::Decode => "decode",
            ErrorReason::InvalidUtf8 => "invalid_utf8",
            ErrorReason::TooLarge => "too_large",
            ErrorReason::WebSocket => "websocket",
            ErrorReason::ConnectTimeout => "connect_timeout",
            ErrorReason::HeartbeatTimeout => "heartbeat_timeout",
            ErrorReason::SlowConsumer => "slow_consumer",
            ErrorReason::WriteTimeout => "write_timeout",
            ErrorReason::Shutdown => "shutdown",
            ErrorReason::Unavailable => "unavailable",
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("stompede".into()), None).expect("a valid prefix");
        let metrics = Metrics {
            connections: register(
                &registry,
                IntGauge::new("connections", "Open WebSocket connections"),
            ),
            sessions: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("sessions", "Connected STOMP sessions by protocol version"),
                    &["version"],
                ),
            ),
            subscriptions: register(
                &registry,
                IntGauge::new("subscriptions", "Active subscriptions"),
            ),
            destinations: register(
                &registry,
                IntGauge::new("destinations", "Destinations with at least one subscriber"),
            ),
            messages_published: register(
                &registry,
                IntCounter::new(
                    "messages_published_total",
                    "Messages published (HTTP API and client SEND)",
                ),
            ),
            messages_delivered: register(
                &registry,
                IntCounter::new(
                    "messages_delivered_total",
                    "MESSAGE frames written to subscriber sockets",
                ),
            ),
            messages_delivered_direct: register(
                &registry,
                IntCounter::new(
                    "messages_delivered_direct_total",
                    "Of messages_delivered_total, those the fan-out wrote straight into an idle connection's socket",
                ),
            ),
            slow_consumer_disconnects: register(
                &registry,
                IntCounter::new(
                    "slow_consumer_disconnects_total",
                    "Subscribers disconnected because their outbound queue was full",
                ),
            ),
            slow_consumer_drops: register(
                &registry,
                IntCounter::new(
                    "slow_consumer_drops_total",
                    "Messages dropped for a subscriber whose outbound queue was full \
                     (slow-consumer = drop)",
                ),
            ),
            handshakes_refused: register(
                &registry,
                IntCounter::new(
                    "handshakes_refused_total",
                    "WebSocket handshakes answered 503 past max-handshakes-per-second",
                ),
            ),
            errors: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("errors_total", "ERROR frames sent, by reason"),
                    &["reason"],
                ),
            ),
            outbound_queued: register(
                &registry,
                IntGauge::new(
                    "outbound_queued_frames",
                    "Deliveries waiting in outbound queues across all connections",
                ),
            ),
            outbound_batch_frames: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("outbound_batch_frames", "Frames written per socket flush")
                        .buckets(prometheus::exponential_buckets(1.0, 2.0, 11).expect("valid")),
                ),
            ),
            delivery_latency: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "delivery_latency_seconds",
                        "Time from publish to the MESSAGE being handed to the subscriber's socket",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                ),
            ),
            http_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("http_requests_total", "HTTP requests by route and status"),
                    &["route", "status"],
                ),
            ),
            http_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "http_request_duration_seconds",
                        "HTTP request handling time by route",
                    )
                    .buckets(HTTP_BUCKETS.to_vec()),
                    &["route"],
                ),
            ),
            engine_up: register(
                &registry,
                IntGauge::new("engine_up", "1 while the engine can publish, 0 while it cannot"),
            ),
            engine_publishes: register(
                &registry,
                IntCounter::new("engine_publishes_total", "Publishes this node sent to Redis"),
            ),
            engine_received: register(
                &registry,
                IntCounter::new(
                    "engine_messages_received_total",
                    "Messages this node received from Redis",
                ),
            ),
            engine_interest_subscribes: register(
                &registry,
                IntCounter::new(
                    "engine_interest_subscribes_total",
                    "Destinations this node subscribed to in Redis",
                ),
            ),
            engine_interest_unsubscribes: register(
                &registry,
                IntCounter::new(
                    "engine_interest_unsubscribes_total",
                    "Destinations this node unsubscribed from in Redis",
                ),
            ),
            engine_subscribe_commands: register(
                &registry,
                IntCounter::new(
                    "engine_subscribe_commands_total",
                    "Redis SUBSCRIBE commands sent (one covers every destination waiting)",
                ),
            ),
            engine_reconnects: register(
                &registry,
                IntCounter::new("engine_reconnects_total", "Times the Redis links came back"),
            ),
            engine_input_queued: register(
                &registry,
                IntGauge::new(
                    "engine_input_queued",
                    "Messages from Redis waiting for the local fan-out",
                ),
            ),
            engine_input_dropped: register(
                &registry,
                IntCounter::new(
                    "engine_input_dropped_total",
                    "Messages from Redis lost because the local fan-out fell behind (a gap)",
                ),
            ),
            engine_gap_filled: register(
                &registry,
                IntCounter::new(
                    "engine_gap_filled_messages_total",
                    "Messages this node missed from Redis and read back from history",
                ),
            ),
            engine_gap_unfilled: register(
                &registry,
                IntCounter::new(
                    "engine_gaps_unfilled_total",
                    "Gaps in what this node received that history could not fill (x-gap:true)",
                ),
            ),
            engine_input_invalid: register(
                &registry,
                IntCounter::new(
                    "engine_input_invalid_total",
                    "Messages from Redis in a format this node cannot read",
                ),
            ),
            engine_subscriptions_lost: register(
                &registry,
                IntCounter::new(
                    "engine_subscriptions_lost_total",
                    "Destinations whose Redis subscription was dropped without this node asking (a slot moved, a failover): a gap, subscribed again",
                ),
            ),
            engine_roundtrip: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "engine_roundtrip_seconds",
                        "Redis round trip, by operation (publish, count, subscribe, unsubscribe, report)",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["operation"],
                ),
            ),
            history_bytes: register(
                &registry,
                IntGauge::new(
                    "history_bytes",
                    "Bytes of history held in this process (memory engine: all of it; redis engine: what this node received)",
                ),
            ),
            history_destinations: register(
                &registry,
                IntGauge::new(
                    "history_destinations",
                    "Destinations with a history in this process: an offset, an epoch, maybe messages",
                ),
            ),
            history_evictions: register(
                &registry,
                IntCounter::new(
                    "history_evicted_destinations_total",
                    "Destinations whose history in this process was forgotten past history-max-bytes",
                ),
            ),
            history_replayed: register(
                &registry,
                IntCounter::new(
                    "history_replayed_messages_total",
                    "Messages sent from history (x-since-offset, x-history) before the live stream",
                ),
            ),
            resumes: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "resumes_total",
                        "SUBSCRIBEs with x-since-offset, by whether history covered the gap",
                    ),
                    &["recovered"],
                ),
            ),
            registry,
        };
        metrics.engine_up.set(1);
        for recovered in ["true", "false"] {
            metrics.resumes.with_label_values(&[recovered]);
        }
        for reason in ErrorReason::ALL {
            metrics.errors.with_label_values(&[reason.label()]);
        }
        for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
            metrics.sessions.with_label_values(&[version.as_str()]);
        }
        metrics
    }

    /// Counts one ERROR frame sent, by reason.
    pub fn count_error(&self, reason: ErrorReason) {
        self.errors.with_label_values(&[reason.label()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Latency buckets, in seconds: 100 us to 2.5 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// HTTP handling time buckets, in seconds: 100 us to 1 s.
const HTTP_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Registers a new metric (the names are fixed, so neither step can fail).
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_reason_has_its_own_label_and_is_exported_at_zero() {
        let labels: std::collections::HashSet<_> = ErrorReason::ALL.map(ErrorReason::label).into();
        assert_eq!(labels.len(), ErrorReason::ALL.len(), "labels are unique");
        let text = Metrics::new().render();
        for label in labels {
            assert!(
                text.contains(&format!("stompede_errors_total{{reason=\"{label}\"}} 0")),
                "{label} missing from /metrics"
            );
        }
    }
}

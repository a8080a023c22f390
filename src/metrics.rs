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
    pub slow_consumer_disconnects: IntCounter,
    pub slow_consumer_drops: IntCounter,
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
    Shutdown,
}

impl ErrorReason {
    /// Every reason, exported at zero from the start so dashboards and alerts
    /// see each series before it first moves.
    pub const ALL: [ErrorReason; 14] = [
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
        ErrorReason::Shutdown,
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
            ErrorReason::Shutdown => "shutdown",
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("stompede".into()), None).expect("a valid prefix");
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let metrics = Metrics {
            connections: IntGauge::with_opts(opts("connections", "Open WebSocket connections")).unwrap(),
            sessions: IntGaugeVec::new(opts("sessions", "Connected STOMP sessions by protocol version"), &["version"])
                .unwrap(),
            subscriptions: IntGauge::with_opts(opts("subscriptions", "Active subscriptions")).unwrap(),
            destinations: IntGauge::with_opts(opts("destinations", "Destinations with at least one subscriber"))
                .unwrap(),
            messages_published: IntCounter::with_opts(opts(
                "messages_published_total",
                "Messages published (HTTP API and client SEND)",
            ))
            .unwrap(),
            messages_delivered: IntCounter::with_opts(opts(
                "messages_delivered_total",
                "MESSAGE frames written to subscriber sockets",
            ))
            .unwrap(),
            slow_consumer_disconnects: IntCounter::with_opts(opts(
                "slow_consumer_disconnects_total",
                "Subscribers disconnected because their outbound queue was full",
            ))
            .unwrap(),
            slow_consumer_drops: IntCounter::with_opts(opts(
                "slow_consumer_drops_total",
                "Messages dropped for a subscriber whose outbound queue was full (slow-consumer = drop)",
            ))
            .unwrap(),
            errors: IntCounterVec::new(opts("errors_total", "ERROR frames sent, by reason"), &["reason"]).unwrap(),
            outbound_queued: IntGauge::with_opts(opts(
                "outbound_queued_frames",
                "Deliveries waiting in outbound queues across all connections",
            ))
            .unwrap(),
            outbound_batch_frames: Histogram::with_opts(
                HistogramOpts::new("outbound_batch_frames", "Frames written per socket flush")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
            )
            .unwrap(),
            delivery_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "delivery_latency_seconds",
                    "Time from publish to the MESSAGE being handed to the subscriber's socket",
                )
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            )
            .unwrap(),
            http_requests: IntCounterVec::new(
                opts("http_requests_total", "HTTP requests by route and status"),
                &["route", "status"],
            )
            .unwrap(),
            http_duration: HistogramVec::new(
                HistogramOpts::new("http_request_duration_seconds", "HTTP request handling time by route")
                    .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
                &["route"],
            )
            .unwrap(),
            registry,
        };
        for collector in [
            Box::new(metrics.connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.sessions.clone()),
            Box::new(metrics.subscriptions.clone()),
            Box::new(metrics.destinations.clone()),
            Box::new(metrics.messages_published.clone()),
            Box::new(metrics.messages_delivered.clone()),
            Box::new(metrics.slow_consumer_disconnects.clone()),
            Box::new(metrics.slow_consumer_drops.clone()),
            Box::new(metrics.errors.clone()),
            Box::new(metrics.outbound_queued.clone()),
            Box::new(metrics.outbound_batch_frames.clone()),
            Box::new(metrics.delivery_latency.clone()),
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.http_duration.clone()),
        ] {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
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

//! Every setting: a `--flag`, a `STOMPEDE_*` env var and a key in the TOML
//! file given by `--config`. Flags beat env beat file beat defaults.

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub use crate::auth::{JwtSettings, JwtVerifier};

/// Room for WebSocket framing around the largest STOMP frame (the default
/// `ws-max-message-bytes` and `ws-max-frame-bytes` are `max-frame-bytes` plus this).
pub const WS_FRAMING_SLACK: usize = 1024;
/// The default `jwt-destinations-claim`.
pub const DEFAULT_DESTINATIONS_CLAIM: &str = "destinations";
/// The default `jwt-leeway`, in seconds.
pub const DEFAULT_JWT_LEEWAY_SECONDS: u64 = 30;

/// Settings as given (each optional); resolved into a [`Config`].
///
/// The same struct is parsed from the command line (with env fallbacks) and
/// from the TOML file, so a setting cannot exist in one place and not the other.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(
    name = "stompede",
    version,
    about = "A STOMP-over-WebSocket broker for live comments",
    long_about = "A STOMP-over-WebSocket broker for live comments.\n\n\
                  Every setting is a flag, an environment variable STOMPEDE_<NAME> and a key in the \
                  TOML file given with --config (the flag name without --). Flags beat the environment, \
                  which beats the file, which beats the defaults shown here."
)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// TOML file with settings (keys are the flag names without `--`).
    #[arg(long, env = "STOMPEDE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on for WebSocket and HTTP. [default: 127.0.0.1:8080]
    #[arg(long, env = "STOMPEDE_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Path of the WebSocket endpoint. [default: /ws]
    #[arg(long, env = "STOMPEDE_WS_PATH")]
    pub ws_path: Option<String>,

    /// A bearer token accepted by /api/v1/* (repeatable, so a new token can be rolled out before the old
    /// one is removed). Without one, only loopback peers may call the API. [default: none]
    #[arg(long = "api-token", env = "STOMPEDE_API_TOKEN", value_delimiter = ',')]
    #[serde(default, rename = "api-token", deserialize_with = "one_or_many")]
    pub api_tokens: Vec<String>,

    /// Whether STOMP clients may SEND: `deny` or `allow`. [default: deny]
    #[arg(long, env = "STOMPEDE_CLIENT_SEND")]
    pub client_send: Option<ClientSend>,

    /// A `login:passcode` that CONNECT must match (repeatable). With none, anonymous sessions are accepted.
    #[arg(long = "user", env = "STOMPEDE_USER", value_delimiter = ',')]
    #[serde(default, rename = "user")]
    pub users: Vec<String>,

    /// Whether a CONNECT without credentials (no login/passcode, no bearer token) is accepted.
    /// [default: true, unless a `user` or a JWT key is configured]
    #[arg(long, env = "STOMPEDE_ALLOW_ANONYMOUS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_anonymous: Option<bool>,

    /// HS256 secret for subscriber JWTs (given as the CONNECT `passcode` or an `Authorization: Bearer` header). [default: none]
    #[arg(long, env = "STOMPEDE_JWT_SECRET")]
    pub jwt_secret: Option<String>,

    /// PEM file with the RS256 (RSA) or ES256 (P-256) public key for subscriber JWTs. [default: none]
    #[arg(long, env = "STOMPEDE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Claim listing the destinations a JWT's session may subscribe to: exact strings, or prefixes ending in `*`.
    /// A token without the claim may subscribe wherever `subscribe-prefix` allows. [default: destinations]
    #[arg(long, env = "STOMPEDE_JWT_DESTINATIONS_CLAIM")]
    pub jwt_destinations_claim: Option<String>,

    /// Required `aud` of subscriber JWTs. [default: none (not checked)]
    #[arg(long, env = "STOMPEDE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` of subscriber JWTs. [default: none (not checked)]
    #[arg(long, env = "STOMPEDE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew allowed when checking a JWT's `exp` and `nbf`, in seconds. [default: 30]
    #[arg(long, env = "STOMPEDE_JWT_LEEWAY")]
    pub jwt_leeway: Option<u64>,

    /// A destination prefix clients may SUBSCRIBE under (repeatable). [default: /topic/]
    #[arg(
        long = "subscribe-prefix",
        env = "STOMPEDE_SUBSCRIBE_PREFIX",
        value_delimiter = ','
    )]
    #[serde(default, rename = "subscribe-prefix")]
    pub subscribe_prefixes: Vec<String>,

    /// A destination prefix clients may SEND to when `client-send` is `allow` (repeatable). [default: /topic/]
    #[arg(
        long = "send-prefix",
        env = "STOMPEDE_SEND_PREFIX",
        value_delimiter = ','
    )]
    #[serde(default, rename = "send-prefix")]
    pub send_prefixes: Vec<String>,

    /// SENDs one session may make per second, on average (a token bucket). [default: 20]
    #[arg(long, env = "STOMPEDE_MAX_SENDS_PER_SECOND")]
    pub max_sends_per_second: Option<f64>,

    /// SENDs one session may make in a burst above `max-sends-per-second`. [default: 20]
    #[arg(long, env = "STOMPEDE_SEND_BURST")]
    pub send_burst: Option<u32>,

    /// An allowed browser `Origin` for the WebSocket handshake (repeatable; `*` allows any).
    /// Without one, requests without `Origin` and same-host origins are accepted.
    #[arg(
        long = "allowed-origin",
        env = "STOMPEDE_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    #[serde(default, rename = "allowed-origin")]
    pub allowed_origins: Vec<String>,

    /// Largest STOMP frame a client may send, and largest body the HTTP API accepts, in bytes. [default: 65536]
    #[arg(long, env = "STOMPEDE_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,

    /// Largest frame a client may send before its CONNECT succeeds, in bytes, so an unauthenticated
    /// socket cannot make the broker buffer much. [default: 4096]
    #[arg(long, env = "STOMPEDE_MAX_FRAME_BYTES_BEFORE_CONNECT")]
    pub max_frame_bytes_before_connect: Option<usize>,

    /// Largest WebSocket message a client may send, in bytes (its fragments together). [default: max-frame-bytes + 1024]
    #[arg(long, env = "STOMPEDE_WS_MAX_MESSAGE_BYTES")]
    pub ws_max_message_bytes: Option<usize>,

    /// Largest single WebSocket frame a client may send, in bytes. [default: max-frame-bytes + 1024]
    #[arg(long, env = "STOMPEDE_WS_MAX_FRAME_BYTES")]
    pub ws_max_frame_bytes: Option<usize>,

    /// Largest HTTP API request body, in bytes. [default: 262144]
    #[arg(long, env = "STOMPEDE_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,

    /// Most headers in one client frame (and in one HTTP publish). [default: 64]
    #[arg(long, env = "STOMPEDE_MAX_HEADERS")]
    pub max_headers: Option<usize>,

    /// Longest header line in a client frame, in bytes. [default: 8192]
    #[arg(long, env = "STOMPEDE_MAX_HEADER_LINE_BYTES")]
    pub max_header_line_bytes: Option<usize>,

    /// Most open WebSocket sessions; the next upgrade is refused with 503. [default: 16384]
    #[arg(long, env = "STOMPEDE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most open WebSocket sessions from one client IP address; the next upgrade is refused with 429 (0: no limit). [default: 1024]
    #[arg(long, env = "STOMPEDE_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,

    /// Whether loopback peers are exempt from `max-connections-per-ip` (behind a reverse proxy on the same
    /// host every peer is loopback; limit per client in the proxy then). [default: true]
    #[arg(long, env = "STOMPEDE_PER_IP_LIMIT_EXEMPTS_LOOPBACK", num_args = 0..=1, default_missing_value = "true")]
    pub per_ip_limit_exempts_loopback: Option<bool>,

    /// Most connections still speaking HTTP (API calls, handshakes in progress); past it, new ones wait in the listen backlog. [default: 1024]
    #[arg(long, env = "STOMPEDE_MAX_HTTP_CONNECTIONS")]
    pub max_http_connections: Option<usize>,

    /// Most subscriptions one session may hold. [default: 64]
    #[arg(long, env = "STOMPEDE_MAX_SUBSCRIPTIONS_PER_SESSION")]
    pub max_subscriptions_per_session: Option<usize>,

    /// Most SEND/ACK/NACK frames buffered by a session's open transactions. [default: 256]
    #[arg(long, env = "STOMPEDE_MAX_TRANSACTION_FRAMES")]
    pub max_transaction_frames: Option<usize>,

    /// The server's heart-beat `cx,cy` in milliseconds: how often it can send, how often it wants to hear. [default: 10000,10000]
    #[arg(long, env = "STOMPEDE_HEARTBEAT")]
    pub heartbeat: Option<String>,

    /// Seconds a new WebSocket may take to send CONNECT. [default: 10]
    #[arg(long, env = "STOMPEDE_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<f64>,

    /// Seconds a client may take to send its HTTP request headers (handshake included). [default: 10]
    #[arg(long, env = "STOMPEDE_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<f64>,

    /// Most frames waiting in one connection's outbound queue. [default: 1024]
    #[arg(long, env = "STOMPEDE_OUTBOUND_QUEUE_FRAMES")]
    pub outbound_queue_frames: Option<usize>,

    /// Most bytes waiting in one connection's outbound queue. [default: 1048576]
    #[arg(long, env = "STOMPEDE_OUTBOUND_QUEUE_BYTES")]
    pub outbound_queue_bytes: Option<usize>,

    /// What happens to a subscriber whose outbound queue is full: `disconnect` (ERROR "slow consumer", then close) or `drop` (the message is dropped for it and counted). [default: disconnect]
    #[arg(long, env = "STOMPEDE_SLOW_CONSUMER")]
    pub slow_consumer: Option<SlowConsumerPolicy>,

    /// WebSocket read buffer per connection, in bytes: allocated for every connection and the most read per syscall; browsers send small frames. [default: 2048]
    #[arg(long, env = "STOMPEDE_WS_READ_BUFFER_BYTES")]
    pub ws_read_buffer_bytes: Option<usize>,

    /// Most bytes of queued frames gathered into one socket write; the buffer is given back once the connection's queue is empty. [default: 16384]
    #[arg(long, env = "STOMPEDE_WS_WRITE_BUFFER_BYTES")]
    pub ws_write_buffer_bytes: Option<usize>,

    /// Seconds to wait for sessions to close on SIGINT/SIGTERM before exiting. [default: 5]
    #[arg(long, env = "STOMPEDE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<f64>,

    /// Log format: `text` or `json`. [default: text]
    #[arg(long, env = "STOMPEDE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ClientSend {
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    Disconnect,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

/// A configured `login:passcode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub login: String,
    pub passcode: String,
}

/// The resolved configuration the broker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub ws_path: String,
    /// Accepted API bearer tokens (empty: loopback peers only).
    pub api_tokens: Vec<String>,
    pub client_send: ClientSend,
    pub users: Vec<User>,
    /// `None`: anonymous unless `users` or `jwt` is configured (see [`Config::anonymous_allowed`]).
    pub allow_anonymous: Option<bool>,
    /// The key subscriber JWTs are checked with, if any.
    pub jwt: Option<Arc<JwtVerifier>>,
    pub subscribe_prefixes: Vec<String>,
    pub send_prefixes: Vec<String>,
    pub max_sends_per_second: f64,
    pub send_burst: u32,
    pub allowed_origins: Vec<String>,
    pub max_frame_bytes: usize,
    pub max_frame_bytes_before_connect: usize,
    pub ws_max_message_bytes: usize,
    pub ws_max_frame_bytes: usize,
    pub max_request_bytes: usize,
    pub max_headers: usize,
    pub max_header_line_bytes: usize,
    pub max_connections: usize,
    /// 0: no limit.
    pub max_connections_per_ip: usize,
    pub per_ip_limit_exempts_loopback: bool,
    pub max_http_connections: usize,
    pub max_subscriptions_per_session: usize,
    pub max_transaction_frames: usize,
    /// How often the server can send heart-beats (0: never).
    pub heartbeat_send: Duration,
    /// How often the server wants to hear from clients (0: no check).
    pub heartbeat_receive: Duration,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub outbound_queue_frames: usize,
    pub outbound_queue_bytes: usize,
    pub slow_consumer: SlowConsumerPolicy,
    pub ws_read_buffer_bytes: usize,
    pub ws_write_buffer_bytes: usize,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ws_path: "/ws".into(),
            api_tokens: Vec::new(),
            client_send: ClientSend::Deny,
            users: Vec::new(),
            allow_anonymous: None,
            jwt: None,
            subscribe_prefixes: vec!["/topic/".into()],
            send_prefixes: vec!["/topic/".into()],
            max_sends_per_second: 20.0,
            send_burst: 20,
            allowed_origins: Vec::new(),
            max_frame_bytes: 64 * 1024,
            max_frame_bytes_before_connect: 4096,
            ws_max_message_bytes: 64 * 1024 + WS_FRAMING_SLACK,
            ws_max_frame_bytes: 64 * 1024 + WS_FRAMING_SLACK,
            max_request_bytes: 256 * 1024,
            max_headers: 64,
            max_header_line_bytes: 8192,
            max_connections: 16384,
            max_connections_per_ip: 1024,
            per_ip_limit_exempts_loopback: true,
            max_http_connections: 1024,
            max_subscriptions_per_session: 64,
            max_transaction_frames: 256,
            heartbeat_send: Duration::from_secs(10),
            heartbeat_receive: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ws_read_buffer_bytes: 2048,
            ws_write_buffer_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(5),
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

impl Settings {
    /// Fills every setting not given here from `lower`.
    fn or(self, lower: Settings) -> Settings {
        fn list<T>(high: Vec<T>, low: Vec<T>) -> Vec<T> {
            if high.is_empty() {
                low
            } else {
                high
            }
        }
        Settings {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            ws_path: self.ws_path.or(lower.ws_path),
            api_tokens: list(self.api_tokens, lower.api_tokens),
            client_send: self.client_send.or(lower.client_send),
            users: list(self.users, lower.users),
            allow_anonymous: self.allow_anonymous.or(lower.allow_anonymous),
            jwt_secret: self.jwt_secret.or(lower.jwt_secret),
            jwt_public_key: self.jwt_public_key.or(lower.jwt_public_key),
            jwt_destinations_claim: self.jwt_destinations_claim.or(lower.jwt_destinations_claim),
            jwt_audience: self.jwt_audience.or(lower.jwt_audience),
            jwt_issuer: self.jwt_issuer.or(lower.jwt_issuer),
            jwt_leeway: self.jwt_leeway.or(lower.jwt_leeway),
            subscribe_prefixes: list(self.subscribe_prefixes, lower.subscribe_prefixes),
            send_prefixes: list(self.send_prefixes, lower.send_prefixes),
            max_sends_per_second: self.max_sends_per_second.or(lower.max_sends_per_second),
            send_burst: self.send_burst.or(lower.send_burst),
            allowed_origins: list(self.allowed_origins, lower.allowed_origins),
            max_frame_bytes: self.max_frame_bytes.or(lower.max_frame_bytes),
            max_frame_bytes_before_connect: self
                .max_frame_bytes_before_connect
                .or(lower.max_frame_bytes_before_connect),
            ws_max_message_bytes: self.ws_max_message_bytes.or(lower.ws_max_message_bytes),
            ws_max_frame_bytes: self.ws_max_frame_bytes.or(lower.ws_max_frame_bytes),
            max_request_bytes: self.max_request_bytes.or(lower.max_request_bytes),
            max_headers: self.max_headers.or(lower.max_headers),
            max_header_line_bytes: self.max_header_line_bytes.or(lower.max_header_line_bytes),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(lower.max_connections_per_ip),
            per_ip_limit_exempts_loopback: self
                .per_ip_limit_exempts_loopback
                .or(lower.per_ip_limit_exempts_loopback),
            max_http_connections: self.max_http_connections.or(lower.max_http_connections),
            max_subscriptions_per_session: self
                .max_subscriptions_per_session
                .or(lower.max_subscriptions_per_session),
            max_transaction_frames: self.max_transaction_frames.or(lower.max_transaction_frames),
            heartbeat: self.heartbeat.or(lower.heartbeat),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            handshake_timeout: self.handshake_timeout.or(lower.handshake_timeout),
            outbound_queue_frames: self.outbound_queue_frames.or(lower.outbound_queue_frames),
            outbound_queue_bytes: self.outbound_queue_bytes.or(lower.outbound_queue_bytes),
            slow_consumer: self.slow_consumer.or(lower.slow_consumer),
            ws_read_buffer_bytes: self.ws_read_buffer_bytes.or(lower.ws_read_buffer_bytes),
            ws_write_buffer_bytes: self.ws_write_buffer_bytes.or(lower.ws_write_buffer_bytes),
            shutdown_grace: self.shutdown_grace.or(lower.shutdown_grace),
            log_format: self.log_format.or(lower.log_format),
        }
    }

    /// Flags and env (already in `self`) over the TOML file over defaults.
    pub fn load(self) -> Result<Config, ConfigError> {
        let settings = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let file: Settings =
                    toml::from_str(&text).map_err(|source| ConfigError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                self.or(file)
            }
            None => self,
        };
        settings.resolve()
    }

    /// Resolves these settings over the defaults, without reading any file.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let (heartbeat_send, heartbeat_receive) = match &self.heartbeat {
            Some(text) => parse_heartbeat(text).ok_or_else(|| {
                invalid(
                    "heartbeat",
                    format!("{text:?} is not `cx,cy` in milliseconds"),
                )
            })?,
            None => (d.heartbeat_send, d.heartbeat_receive),
        };
        let users = self
            .users
            .iter()
            .map(|user| {
                user.split_once(':')
                    .map(|(login, passcode)| User {
                        login: login.into(),
                        passcode: passcode.into(),
                    })
                    .ok_or_else(|| invalid("user", format!("{user:?} is not login:passcode")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let jwt = JwtVerifier::from_settings(&JwtSettings {
            secret: self
                .jwt_secret
                .as_deref()
                .filter(|secret| !secret.is_empty()),
            public_key: self.jwt_public_key.as_deref(),
            destinations_claim: self
                .jwt_destinations_claim
                .as_deref()
                .unwrap_or(DEFAULT_DESTINATIONS_CLAIM),
            audience: self.jwt_audience.as_deref(),
            issuer: self.jwt_issuer.as_deref(),
            leeway_seconds: self.jwt_leeway.unwrap_or(DEFAULT_JWT_LEEWAY_SECONDS),
        })
        .map_err(|reason| invalid("jwt-secret/jwt-public-key", reason))?
        .map(Arc::new);
        let max_frame_bytes = self.max_frame_bytes.unwrap_or(d.max_frame_bytes);
        let config = Config {
            listen: self.listen.unwrap_or(d.listen),
            ws_path: self.ws_path.unwrap_or(d.ws_path),
            api_tokens: self
                .api_tokens
                .into_iter()
                .filter(|token| !token.is_empty())
                .collect(),
            client_send: self.client_send.unwrap_or(d.client_send),
            users,
            allow_anonymous: self.allow_anonymous,
            jwt,
            subscribe_prefixes: non_empty_or(self.subscribe_prefixes, d.subscribe_prefixes),
            send_prefixes: non_empty_or(self.send_prefixes, d.send_prefixes),
            max_sends_per_second: self.max_sends_per_second.unwrap_or(d.max_sends_per_second),
            send_burst: self.send_burst.unwrap_or(d.send_burst),
            allowed_origins: self.allowed_origins,
            max_frame_bytes,
            max_frame_bytes_before_connect: self
                .max_frame_bytes_before_connect
                .unwrap_or(d.max_frame_bytes_before_connect),
            ws_max_message_bytes: self
                .ws_max_message_bytes
                .unwrap_or(max_frame_bytes + WS_FRAMING_SLACK),
            ws_max_frame_bytes: self
                .ws_max_frame_bytes
                .unwrap_or(max_frame_bytes + WS_FRAMING_SLACK),
            max_request_bytes: self.max_request_bytes.unwrap_or(d.max_request_bytes),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            max_header_line_bytes: self
                .max_header_line_bytes
                .unwrap_or(d.max_header_line_bytes),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(d.max_connections_per_ip),
            per_ip_limit_exempts_loopback: self
                .per_ip_limit_exempts_loopback
                .unwrap_or(d.per_ip_limit_exempts_loopback),
            max_http_connections: self.max_http_connections.unwrap_or(d.max_http_connections),
            max_subscriptions_per_session: self
                .max_subscriptions_per_session
                .unwrap_or(d.max_subscriptions_per_session),
            max_transaction_frames: self
                .max_transaction_frames
                .unwrap_or(d.max_transaction_frames),
            heartbeat_send,
            heartbeat_receive,
            connect_timeout: seconds("connect-timeout", self.connect_timeout, d.connect_timeout)?,
            handshake_timeout: seconds(
                "handshake-timeout",
                self.handshake_timeout,
                d.handshake_timeout,
            )?,
            outbound_queue_frames: self
                .outbound_queue_frames
                .unwrap_or(d.outbound_queue_frames),
            outbound_queue_bytes: self.outbound_queue_bytes.unwrap_or(d.outbound_queue_bytes),
            slow_consumer: self.slow_consumer.unwrap_or(d.slow_consumer),
            ws_read_buffer_bytes: self.ws_read_buffer_bytes.unwrap_or(d.ws_read_buffer_bytes),
            ws_write_buffer_bytes: self
                .ws_write_buffer_bytes
                .unwrap_or(d.ws_write_buffer_bytes),
            shutdown_grace: seconds("shutdown-grace", self.shutdown_grace, d.shutdown_grace)?,
            log_format: self.log_format.unwrap_or(d.log_format),
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Whether a CONNECT without credentials is accepted: as configured, else
    /// only when neither static users nor a JWT key are configured.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous
            .unwrap_or(self.users.is_empty() && self.jwt.is_none())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.ws_path.starts_with('/') || self.ws_path.starts_with("/api/") {
            return Err(invalid(
                "ws-path",
                "must start with / and not be under /api/",
            ));
        }
        for (setting, value) in [
            ("max-frame-bytes", self.max_frame_bytes),
            (
                "max-frame-bytes-before-connect",
                self.max_frame_bytes_before_connect,
            ),
            ("ws-max-message-bytes", self.ws_max_message_bytes),
            ("ws-max-frame-bytes", self.ws_max_frame_bytes),
            ("send-burst", self.send_burst as usize),
            ("max-request-bytes", self.max_request_bytes),
            ("max-headers", self.max_headers),
            ("max-header-line-bytes", self.max_header_line_bytes),
            ("max-connections", self.max_connections),
            ("max-http-connections", self.max_http_connections),
            (
                "max-subscriptions-per-session",
                self.max_subscriptions_per_session,
            ),
            ("outbound-queue-frames", self.outbound_queue_frames),
            ("outbound-queue-bytes", self.outbound_queue_bytes),
            ("ws-read-buffer-bytes", self.ws_read_buffer_bytes),
        ] {
            if value == 0 {
                return Err(invalid(setting, "must be greater than 0"));
            }
        }
        if !(self.max_sends_per_second.is_finite() && self.max_sends_per_second > 0.0) {
            return Err(invalid(
                "max-sends-per-second",
                "must be a number greater than 0",
            ));
        }
        for (setting, prefixes) in [
            ("subscribe-prefix", &self.subscribe_prefixes),
            ("send-prefix", &self.send_prefixes),
        ] {
            for prefix in prefixes.iter() {
                crate::destination::validate(prefix)
                    .map_err(|reason| invalid(setting, format!("{prefix:?}: {reason}")))?;
            }
        }
        if self.connect_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return Err(invalid(
                "connect-timeout/handshake-timeout",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

fn non_empty_or(given: Vec<String>, default: Vec<String>) -> Vec<String> {
    if given.is_empty() {
        default
    } else {
        given
    }
}

/// A TOML value that may be one string or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn seconds(
    setting: &'static str,
    value: Option<f64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) => Duration::try_from_secs_f64(s)
            .map_err(|_| invalid(setting, format!("{s} is not a number of seconds"))),
    }
}

/// Parses `cx,cy` in milliseconds.
pub fn parse_heartbeat(text: &str) -> Option<(Duration, Duration)> {
    let (cx, cy) = text.split_once(',')?;
    let cx: u64 = cx.trim().parse().ok()?;
    let cy: u64 = cy.trim().parse().ok()?;
    Some((Duration::from_millis(cx), Duration::from_millis(cy)))
}

//! Every setting, declared once: each field of [`Config`] is a `--flag`, an
//! environment variable `STOMPEDE_<NAME>` (added to every flag by
//! [`Config::load_from`]) and a key of the TOML file given by `--config`.
//! Its doc comment is the help text and its `default_value` the default, so
//! `--help` and the README cannot drift from the code.
//!
//! Precedence: flags beat the environment, which beats the file, which beats
//! the defaults. The file's values are installed as clap defaults before the
//! command line is parsed, so clap itself applies that order.

use crate::auth::{self, AuthPolicy, JwtSettings, JwtVerifier, User};
use crate::client_addr::Cidr;
use clap::{Arg, CommandFactory, FromArgMatches, Parser};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stompede_protocol::HeartBeat;
use thiserror::Error;

/// Room for WebSocket framing around the largest STOMP frame (the default
/// `ws-max-message-bytes` and `ws-max-frame-bytes` are `max-frame-bytes` plus this).
pub const WS_FRAMING_SLACK: usize = 1024;

/// The configuration the broker runs with.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "stompede",
    version,
    about = "A STOMP-over-WebSocket broker for live comments",
    long_about = "A STOMP-over-WebSocket broker for live comments.\n\n\
                  Every setting is a flag, an environment variable STOMPEDE_<NAME> and a key in the \
                  TOML file given with --config (the flag name without --). Flags beat the environment, \
                  which beats the file, which beats the defaults shown here."
)]
pub struct Config {
    /// TOML file with settings (keys are the flag names without `--`).
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Address to listen on for WebSocket and HTTP.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Path of the WebSocket endpoint.
    #[arg(long, default_value = "/ws", value_parser = parse_ws_path)]
    pub ws_path: String,

    /// A bearer token accepted by /api/v1/* (repeat the flag, or give a TOML list, so a new token
    /// can be rolled out before the old one is removed). Without one, only loopback peers may call
    /// the API. Not empty, no ',' (a list delimiter must not turn one token into two).
    #[arg(long = "api-token", value_parser = parse_api_token)]
    pub api_tokens: Vec<String>,

    /// Whether STOMP clients may SEND.
    #[arg(long, value_enum, default_value = "deny")]
    pub client_send: ClientSend,

    /// A `login:passcode` that CONNECT must match (repeat the flag, or give a TOML list; the
    /// passcode is everything after the first `:`, commas included, and must not be empty). With
    /// none, anonymous sessions are accepted.
    #[arg(long = "user")]
    pub users: Vec<User>,

    /// Whether a CONNECT without credentials (no login/passcode, no bearer token) is accepted.
    /// Unset: yes, unless a `user` or a JWT key is configured.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub allow_anonymous: Option<bool>,

    /// HS256 secret for subscriber JWTs (given as the CONNECT `passcode` or an
    /// `Authorization: Bearer` header). Must not be empty.
    #[arg(long, value_parser = non_empty_secret)]
    pub jwt_secret: Option<String>,

    /// PEM file with the RS256 (RSA) or ES256 (P-256) public key for subscriber JWTs.
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,

    /// Claim listing the destinations a JWT's session may subscribe to: exact strings, or
    /// prefixes ending in `*`. A token without the claim may subscribe wherever
    /// `subscribe-prefix` allows.
    #[arg(long, default_value = auth::DEFAULT_DESTINATIONS_CLAIM)]
    pub jwt_destinations_claim: String,

    /// Required `aud` of subscriber JWTs: a token without `aud` is refused (not checked when unset).
    #[arg(long)]
    pub jwt_audience: Option<String>,

    /// Required `iss` of subscriber JWTs: a token without `iss` is refused (not checked when unset).
    #[arg(long)]
    pub jwt_issuer: Option<String>,

    /// Clock skew allowed when checking a JWT's `exp` and `nbf`, in seconds.
    #[arg(long, default_value_t = auth::DEFAULT_JWT_LEEWAY_SECONDS)]
    pub jwt_leeway: u64,

    /// A destination prefix clients may SUBSCRIBE under (repeatable).
    #[arg(
        long = "subscribe-prefix",
        value_delimiter = ',',
        default_value = "/topic/",
        value_parser = parse_prefix
    )]
    pub subscribe_prefixes: Vec<String>,

    /// A destination prefix clients may SEND to when `client-send` is `allow` (repeatable).
    #[arg(
        long = "send-prefix",
        value_delimiter = ',',
        default_value = "/topic/",
        value_parser = parse_prefix
    )]
    pub send_prefixes: Vec<String>,

    /// SENDs one session may make per second, on average (a token bucket).
    #[arg(long, default_value_t = 20.0, value_parser = positive_rate)]
    pub max_sends_per_second: f64,

    /// SENDs one session may make in a burst above `max-sends-per-second`.
    #[arg(long, default_value_t = 20, value_parser = at_least_one::<u32>)]
    pub send_burst: u32,

    /// An allowed browser `Origin` for the WebSocket handshake (repeatable; `*` allows any).
    /// Without one, requests without `Origin` and same-host origins are accepted.
    #[arg(long = "allowed-origin", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Largest STOMP frame a client may send, and largest body the HTTP API accepts, in bytes.
    #[arg(long, default_value_t = 64 * 1024, value_parser = at_least_one::<usize>)]
    pub max_frame_bytes: usize,

    /// Largest frame a client may send before its CONNECT succeeds, in bytes, so an
    /// unauthenticated socket cannot make the broker buffer much.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one::<usize>)]
    pub max_frame_bytes_before_connect: usize,

    /// Largest WebSocket message a client may send, in bytes (its fragments together).
    /// Unset: max-frame-bytes + 1024.
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub ws_max_message_bytes: Option<usize>,

    /// Largest single WebSocket frame a client may send, in bytes. Unset: max-frame-bytes + 1024.
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub ws_max_frame_bytes: Option<usize>,

    /// Largest HTTP API request body, in bytes.
    #[arg(long, default_value_t = 256 * 1024, value_parser = at_least_one::<usize>)]
    pub max_request_bytes: usize,

    /// Most headers in one client frame (and in one HTTP publish).
    #[arg(long, default_value_t = 64, value_parser = at_least_one::<usize>)]
    pub max_headers: usize,

    /// Longest header line in a client frame, in bytes.
    #[arg(long, default_value_t = 8192, value_parser = at_least_one::<usize>)]
    pub max_header_line_bytes: usize,

    /// Most open WebSocket sessions; the next upgrade is refused with 503.
    #[arg(long, default_value_t = 16384, value_parser = at_least_one::<usize>)]
    pub max_connections: usize,

    /// Most open WebSocket sessions from one client IP address; the next upgrade is refused with
    /// 429 (0: no limit).
    #[arg(long, default_value_t = 1024)]
    pub max_connections_per_ip: usize,

    /// A reverse proxy (address or CIDR network, repeatable) whose `X-Forwarded-For` (else
    /// `X-Real-IP`) names the client for every per-IP rule; anyone else's is ignored. Trusted
    /// proxies are exempt from `max-http-connections-per-ip`.
    #[arg(long = "trusted-proxy", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,

    /// Leading bits of an IPv6 address that `max-connections-per-ip` counts as one client (a host
    /// is commonly given a whole /64); IPv4 addresses are counted one by one.
    #[arg(long, default_value_t = crate::ip_limit::DEFAULT_IPV6_PREFIX_LENGTH,
          value_parser = clap::value_parser!(u8).range(1..=128))]
    pub ipv6_prefix_length: u8,

    /// Whether loopback peers are exempt from `max-connections-per-ip` (behind a reverse proxy on
    /// the same host every peer is loopback; limit per client in the proxy then).
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          default_value_t = true)]
    pub per_ip_limit_exempts_loopback: bool,

    /// Most connections still speaking HTTP (API calls, handshakes in progress); past it, new
    /// ones wait in the listen backlog.
    #[arg(long, default_value_t = 1024, value_parser = at_least_one::<usize>)]
    pub max_http_connections: usize,

    /// Most connections still speaking HTTP from one client IP (an IPv6 client by its
    /// `ipv6-prefix-length` network); past it a new one gets 429 at once (0: no limit; loopback
    /// exempt when `per-ip-limit-exempts-loopback`).
    #[arg(long, default_value_t = 64)]
    pub max_http_connections_per_ip: usize,

    /// Seconds an HTTP connection may sit with no request in flight (before the first, between
    /// keep-alive requests) before it is closed.
    #[arg(long, default_value = "10", value_parser = positive_seconds)]
    pub http_idle_timeout: Duration,

    /// WebSocket handshakes admitted per second on average, past `handshake-burst`; the next get
    /// 503 with `Retry-After` (0: no limit), so a connect storm cannot starve the readers already
    /// connected.
    #[arg(long, default_value_t = crate::admission::DEFAULT_HANDSHAKES_PER_SECOND)]
    pub max_handshakes_per_second: u32,

    /// WebSocket handshakes admitted at once above `max-handshakes-per-second`.
    #[arg(long, default_value_t = crate::admission::DEFAULT_HANDSHAKE_BURST,
          value_parser = at_least_one::<u32>)]
    pub handshake_burst: u32,

    /// Threads of the handshake runtime, apart from the one serving established sessions: new
    /// connections are accepted there, and those whose first request is the WebSocket handshake
    /// are served there until upgraded, so that a connect storm waits behind itself rather than
    /// ahead of the deliveries to readers already connected (other HTTP connections move to the
    /// API runtime after their first bytes, or with `api-threads 0` to the sessions' runtime).
    /// Each upgraded session is set up there too (its CONNECT and the frame after it answered),
    /// then moves to the sessions' runtime, 1 s after CONNECT at the latest. 0: one runtime for
    /// everything.
    #[arg(long, default_value_t = 1)]
    pub handshake_threads: usize,

    /// How much lower the handshake threads' CPU priority is than the rest of the broker's: a
    /// Linux nice increment (0-19; 0: the same). Ignored elsewhere.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub handshake_nice: u8,

    /// Threads of the API runtime: HTTP connections that are not WebSocket handshakes (the HTTP
    /// API, health checks, metrics) are served there, at the broker's own priority, so that a
    /// publish's answer (and, with the redis engine, its Redis round trip) does not wait in the
    /// run queue behind the writer tasks the last fan-out woke; a connection's requests are
    /// answered in order, so that wait would cap the publishes per connection. Needs
    /// `handshake-threads` above 0 (connections are sorted there). 0: on the sessions' runtime.
    /// Default: 1 with the redis engine, 0 with memory (whose publish does the fan-out itself,
    /// which costs less on the sessions' workers than woken from another thread).
    #[arg(long)]
    pub api_threads: Option<usize>,

    /// Most subscriptions one session may hold.
    #[arg(long, default_value_t = 64, value_parser = at_least_one::<usize>)]
    pub max_subscriptions_per_session: usize,

    /// Most BEGINs plus SEND/ACK/NACK frames buffered by a session's open transactions.
    #[arg(long, default_value_t = 256)]
    pub max_transaction_frames: usize,

    /// Most bytes (bodies and headers) of the SEND/ACK/NACK frames buffered by a session's open
    /// transactions.
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_transaction_bytes: usize,

    /// Longest id the broker stores for a session: subscription ids, transaction ids and receipt
    /// ids, in bytes.
    #[arg(long, default_value_t = 256, value_parser = at_least_one::<usize>)]
    pub max_id_bytes: usize,

    /// The server's heart-beat `cx,cy` in milliseconds: how often it can send, how often it wants
    /// to hear from clients (a client silent for twice the negotiated interval is disconnected).
    #[arg(long, default_value = "10000,10000", value_parser = parse_heartbeat)]
    pub heartbeat: HeartBeat,

    /// Seconds a new WebSocket may take to send CONNECT.
    #[arg(long, default_value = "10", value_parser = positive_seconds)]
    pub connect_timeout: Duration,

    /// Seconds a client may take to send its HTTP request headers (handshake included).
    #[arg(long, default_value = "10", value_parser = positive_seconds)]
    pub handshake_timeout: Duration,

    /// Most frames waiting in one connection's outbound queue.
    #[arg(long, default_value_t = 1024, value_parser = at_least_one::<usize>)]
    pub outbound_queue_frames: usize,

    /// Most bytes waiting in one connection's outbound queue; each delivery counts its body,
    /// twice its headers (as given and encoded) and 128 bytes of bookkeeping.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = at_least_one::<usize>)]
    pub outbound_queue_bytes: usize,

    /// What happens to a subscriber whose outbound queue is full: `disconnect` (ERROR "slow
    /// consumer", then close) or `drop` (the message is dropped for it and counted).
    #[arg(long, value_enum, default_value = "disconnect")]
    pub slow_consumer: SlowConsumerPolicy,

    /// WebSocket read buffer per connection, in bytes: allocated for every connection and the
    /// most read per syscall; browsers send small frames.
    #[arg(long, default_value_t = 2048, value_parser = at_least_one::<usize>)]
    pub ws_read_buffer_bytes: usize,

    /// Most bytes of queued frames gathered into one socket write; the buffer is given back once
    /// the connection's queue is empty.
    #[arg(long, default_value_t = 16 * 1024)]
    pub ws_write_buffer_bytes: usize,

    /// Seconds a socket write may stall (no byte accepted by the kernel) before the session is
    /// ended: a peer that stops reading cannot pin its session, and replies, heart-beats and
    /// queued messages all race this deadline. Also the accepted sockets' TCP_USER_TIMEOUT, so
    /// the kernel drops a peer that vanished with data unacknowledged.
    #[arg(long, default_value = "30", value_parser = positive_seconds)]
    pub write_timeout: Duration,

    /// Seconds a connection may be idle before TCP keepalive probes start (every 10 s, 6 of them
    /// unanswered close it), so dead peers behind a NAT are reaped even without STOMP heart-beats
    /// (0: no keepalive).
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub tcp_keepalive: Duration,

    /// Seconds to wait for sessions to close on SIGINT/SIGTERM before exiting.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,

    /// Where publishes go: `memory` (one process, nothing external) or `redis` (several nodes
    /// acting as one broker on Redis; see docs/cluster.md).
    #[arg(long, value_enum, default_value = "memory")]
    pub engine: EngineKind,

    /// Redis for the `redis` engine: `redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS; a Redis Cluster as `redis-cluster://host:port?node=host:port...`; a master
    /// found through Sentinel as
    /// `redis-sentinel://[user:password@]sentinel:port[/db]?sentinelServiceName=NAME[&node=sentinel2:port...]`
    /// (the credentials go to the sentinels and the master alike; no TLS through Sentinel).
    #[arg(long, default_value = "redis://127.0.0.1:6379", value_parser = parse_redis_url)]
    pub redis_url: String,

    /// PEM file with the CA certificate(s) that a `rediss://` Redis's certificate must chain to.
    /// Unset: the system's trusted roots.
    #[arg(long, value_name = "FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,

    /// PEM file with a client certificate (and its chain) for `rediss://`, for a Redis that
    /// asks for one (`tls-auth-clients yes`); goes with `redis-tls-key-file`.
    #[arg(long, value_name = "FILE")]
    pub redis_tls_cert_file: Option<PathBuf>,

    /// PEM file with the private key of `redis-tls-cert-file`.
    #[arg(long, value_name = "FILE")]
    pub redis_tls_key_file: Option<PathBuf>,

    /// This node's name in logs, `/readyz`, message ids and Redis (unique per node).
    /// Unset: 8 random hex digits at start.
    #[arg(long, value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// Prefix of every Redis key and channel, so several stompede clusters can share one Redis
    /// (no `{` or `}`: they would change the key's hash slot).
    #[arg(long, default_value = "stompede:", value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,

    /// Seconds a Redis command may take before the publish (or count) fails with 503.
    #[arg(long, default_value = "2", value_parser = positive_seconds)]
    pub redis_command_timeout: Duration,

    /// Most seconds between two attempts to reconnect to Redis (the delay doubles from 100 ms up
    /// to this, with jitter).
    #[arg(long, default_value = "5", value_parser = positive_seconds)]
    pub redis_reconnect_max_delay: Duration,

    /// Messages from Redis waiting for the local fan-out; past it the node drops the oldest and
    /// counts a gap (`engine_input_dropped_total`).
    #[arg(long, default_value_t = 8192, value_parser = at_least_one::<usize>)]
    pub redis_input_queue: usize,

    /// Most commands one Redis client queues while waiting for Redis (publishes fill it); past
    /// it a publish answers 503 at once.
    #[arg(long, default_value_t = 65_536, value_parser = at_least_one::<usize>)]
    pub redis_max_queued_commands: usize,

    /// Seconds between two reports of this node's reader counts to Redis; cluster-wide counts
    /// are at most about this old, and a dead node's readers stop counting within 3 intervals.
    #[arg(long, default_value = "1", value_parser = positive_seconds)]
    pub reader_count_interval: Duration,

    /// Seconds a node stays subscribed to a destination's Redis channel after its last local
    /// reader left, so a destination that flaps does not hammer Redis.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub interest_linger: Duration,

    /// Seconds a publish's `Idempotency-Key` is remembered: a retry within it is answered like
    /// the first and not delivered again.
    #[arg(long, default_value = "600", value_parser = positive_seconds)]
    pub idempotency_window: Duration,

    /// Most idempotency keys the memory engine remembers; past it the oldest is forgotten early
    /// (the Redis engine keeps them in Redis, each expiring with the window).
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one::<usize>)]
    pub idempotency_keys_max: usize,

    /// Messages each destination keeps for resume (`x-since-offset`) and catch-up
    /// (`x-history`); 0 keeps none (offsets are still assigned, so readers see gaps).
    #[arg(long, default_value_t = 100)]
    pub history_size: usize,

    /// Seconds a destination's messages are kept after its last publish; its offset and epoch
    /// outlive them (see `history-max-bytes`).
    #[arg(long, default_value = "300", value_parser = positive_seconds)]
    pub history_ttl: Duration,

    /// Memory engine: most bytes the history of all destinations may hold, offsets and epochs
    /// included; past it whole destinations are forgotten, least recently published first.
    #[arg(long, default_value_t = 256 * 1024 * 1024, value_parser = at_least_one::<usize>)]
    pub history_max_bytes: usize,

    /// Redis engine: seconds a destination's offset and epoch are kept in Redis after its last
    /// publish (they outlive its messages, so a quiet article's readers still resume).
    #[arg(long, default_value = "604800", value_parser = positive_seconds)]
    pub history_epoch_ttl: Duration,

    /// Log format (filter with RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// The key subscriber JWTs are checked with, built from `jwt-*` by [`Config::finish`].
    #[arg(skip)]
    pub jwt: Option<Arc<JwtVerifier>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientSend {
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowConsumerPolicy {
    Disconnect,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    /// A bad flag or value, or `--help`/`--version` (see [`clap::Error::exit`]).
    #[error("{0}")]
    Args(#[from] clap::Error),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

impl Default for Config {
    /// Every default, with no flag, environment variable or file.
    fn default() -> Config {
        Config::try_parse_from(["stompede"]).expect("the defaults parse")
    }
}

impl Config {
    /// Reads `args` (the first is the program name), the `STOMPEDE_*`
    /// environment and the TOML file named by `--config` or `STOMPEDE_CONFIG`.
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Config::command().mut_args(with_env_var);
        if let Some(path) = config_file_named(&args) {
            command = with_file_defaults(command, &path)?;
        }
        let matches = command.try_get_matches_from(args)?;
        Config::from_arg_matches(&matches)?.finish()
    }

    /// Builds what needs code: the JWT key (each value was checked by its parser).
    pub fn finish(mut self) -> Result<Config, ConfigError> {
        if self.jwt.is_none() {
            self.jwt = JwtVerifier::from_settings(&JwtSettings {
                secret: self.jwt_secret.as_deref(),
                public_key: self.jwt_public_key.as_deref(),
                destinations_claim: &self.jwt_destinations_claim,
                audience: self.jwt_audience.as_deref(),
                issuer: self.jwt_issuer.as_deref(),
                leeway_seconds: self.jwt_leeway,
            })
            .map_err(|reason| ConfigError::Invalid {
                setting: "jwt-secret/jwt-public-key",
                reason,
            })?
            .map(Arc::new);
        }
        self.check_redis_tls()
            .map_err(|reason| ConfigError::Invalid {
                setting: "redis-tls-*",
                reason,
            })?;
        Ok(self)
    }

    /// The `redis-tls-*` files, as the redis engine reads them.
    pub fn redis_tls_files(&self) -> crate::engine::redis::tls::TlsFiles {
        crate::engine::redis::tls::TlsFiles {
            ca: self.redis_tls_ca_file.clone(),
            cert: self.redis_tls_cert_file.clone(),
            key: self.redis_tls_key_file.clone(),
        }
    }

    /// With `rediss://`, the TLS files make a configuration; without it, none is given.
    fn check_redis_tls(&self) -> Result<(), String> {
        use crate::engine::redis::tls;
        let files = self.redis_tls_files();
        if tls::url_uses_tls(&self.redis_url) {
            tls::config(&files).map(drop)
        } else if files != tls::TlsFiles::default() {
            Err("redis-tls-* files are set but redis-url is not rediss:// (TLS)".into())
        } else {
            Ok(())
        }
    }

    /// `api-threads`, or its default for the engine.
    pub fn api_threads(&self) -> usize {
        self.api_threads.unwrap_or(match self.engine {
            EngineKind::Redis => 1,
            EngineKind::Memory => 0,
        })
    }

    /// Whether a CONNECT without credentials is accepted: as configured, else
    /// only when neither static users nor a JWT key are configured.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous
            .unwrap_or(self.users.is_empty() && self.jwt.is_none())
    }

    /// Who may connect and call the API.
    pub fn auth_policy(&self) -> AuthPolicy {
        AuthPolicy {
            users: self.users.clone(),
            jwt: self.jwt.clone(),
            allow_anonymous: self.anonymous_allowed(),
            api_tokens: self.api_tokens.clone(),
        }
    }

    /// `ws-max-message-bytes`, or its default.
    pub fn ws_max_message_bytes(&self) -> usize {
        self.ws_max_message_bytes
            .unwrap_or(self.max_frame_bytes + WS_FRAMING_SLACK)
    }

    /// The largest WebSocket message before CONNECT succeeds: the pre-CONNECT
    /// frame budget plus framing slack (at most `ws-max-message-bytes`).
    pub fn ws_max_message_bytes_before_connect(&self) -> usize {
        let frame = self
            .max_frame_bytes_before_connect
            .min(self.max_frame_bytes);
        (frame + WS_FRAMING_SLACK).min(self.ws_max_message_bytes())
    }

    /// `ws-max-frame-bytes`, or its default.
    pub fn ws_max_frame_bytes(&self) -> usize {
        self.ws_max_frame_bytes
            .unwrap_or(self.max_frame_bytes + WS_FRAMING_SLACK)
    }
}

/// Gives a flag its environment variable: `--max-connections` reads
/// `STOMPEDE_MAX_CONNECTIONS`.
fn with_env_var(arg: Arg) -> Arg {
    match arg.get_long() {
        Some(long) => {
            let name = format!("STOMPEDE_{}", long.to_ascii_uppercase().replace('-', "_"));
            arg.env(name)
        }
        None => arg,
    }
}

/// The `--config FILE` (or `--config=FILE`) in `args`, else `STOMPEDE_CONFIG`.
fn config_file_named(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("STOMPEDE_CONFIG").map(PathBuf::from)
}

/// Installs the file's values as the defaults of their flags, so that flags
/// and the environment still beat them.
fn with_file_defaults(
    mut command: clap::Command,
    path: &Path,
) -> Result<clap::Command, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file_error = |reason: String| ConfigError::File {
        path: path.to_owned(),
        reason,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(e.to_string()))?;
    for (key, value) in table {
        let id = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(key.as_str()) && key != "config")
            .map(|arg| arg.get_id().clone())
            .ok_or_else(|| file_error(format!("unknown setting {key:?}")))?;
        let values = match value {
            toml::Value::Array(items) => items.into_iter().map(toml_scalar).collect(),
            scalar => toml_scalar(scalar).map(|value| vec![value]),
        }
        .ok_or_else(|| {
            file_error(format!(
                "{key} must be a string, number, boolean or a list of them"
            ))
        })?;
        if !values.is_empty() {
            command = command.mut_arg(id, |arg| arg.default_values(values));
        }
    }
    Ok(command)
}

/// A TOML scalar as the text a flag would be given.
fn toml_scalar(value: toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}

// Value parsers: each setting's check lives beside its declaration.

fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(number) if number >= T::from(1) => Ok(number),
        _ => Err(format!("{text:?} is not a whole number greater than 0")),
    }
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a number greater than 0")),
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

fn positive_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds(text)? {
        seconds if seconds.is_zero() => Err("must be greater than 0".into()),
        seconds => Ok(seconds),
    }
}

/// An empty secret would be a silent "auth off" (or a key anyone can sign with).
fn non_empty_secret(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.to_owned())
    }
}

fn parse_api_token(text: &str) -> Result<String, String> {
    let token = non_empty_secret(text)?;
    if token.contains(',') {
        return Err(
            "must not contain ',': give several tokens as repeated --api-token flags or \
                    a TOML list"
                .into(),
        );
    }
    Ok(token)
}

fn parse_heartbeat(text: &str) -> Result<HeartBeat, String> {
    HeartBeat::parse(text).ok_or_else(|| format!("{text:?} is not `cx,cy` in milliseconds"))
}

fn parse_ws_path(text: &str) -> Result<String, String> {
    if text.starts_with('/') && !text.starts_with("/api/") {
        Ok(text.to_owned())
    } else {
        Err("must start with / and not be under /api/".into())
    }
}

fn parse_redis_url(text: &str) -> Result<String, String> {
    let plain = crate::engine::redis::tls::without_tls_scheme(text);
    const FORMS: &str = "use redis://[user:password@]host:port[/db], \
        redis-cluster://host:port?node=host:port (rediss:// and rediss-cluster:// for TLS) \
        or redis-sentinel://sentinel:port?sentinelServiceName=NAME";
    let schemes = ["redis://", "redis-cluster://", "redis-sentinel://"];
    if !schemes.iter().any(|scheme| plain.starts_with(scheme)) {
        return Err(FORMS.into());
    }
    match fred::types::config::Config::from_url(&plain) {
        Ok(_) => Ok(text.to_owned()),
        Err(error) => Err(format!("not a Redis URL ({error}): {FORMS}")),
    }
}

fn parse_node_id(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err("use 1 to 64 letters, digits, '-', '_' or '.'".into())
    }
}

fn parse_key_prefix(text: &str) -> Result<String, String> {
    if text.contains(['{', '}']) || text.chars().any(char::is_control) {
        Err("must not contain '{', '}' or control characters".into())
    } else {
        Ok(text.to_owned())
    }
}

fn parse_prefix(text: &str) -> Result<String, String> {
    crate::destination::validate(text)?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's settings table lists every setting with the default clap
    /// shows in `--help`, so the two cannot drift apart silently.
    #[test]
    fn the_readme_lists_every_setting() {
        let readme = include_str!("../README.md");
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "config" {
                continue;
            }
            let row = readme
                .lines()
                .find(|line| line.starts_with(&format!("| `{long}` |")))
                .unwrap_or_else(|| panic!("README's settings table has no row for `{long}`"));
            for default in arg.get_default_values() {
                let default = default.to_string_lossy();
                assert!(
                    row.contains(&format!("`{default}`")),
                    "README row for {long} does not say `{default}`: {row}"
                );
            }
        }
    }

    #[test]
    fn each_value_is_checked_by_its_parser() {
        let refused = |args: &[&str]| {
            let args = std::iter::once("stompede").chain(args.iter().copied());
            Config::try_parse_from(args).unwrap_err().to_string()
        };
        assert!(refused(&["--max-connections", "0"]).contains("greater than 0"));
        assert!(refused(&["--max-sends-per-second", "NaN"]).contains("greater than 0"));
        assert!(refused(&["--connect-timeout", "0"]).contains("greater than 0"));
        assert!(refused(&["--ws-path", "/api/v1/ws"]).contains("not be under /api/"));
        assert!(refused(&["--heartbeat", "10"]).contains("cx,cy"));
        assert!(refused(&["--subscribe-prefix", "/topic/\u{7}"]).contains("control character"));
        assert!(refused(&["--user", "nocolon"]).contains("login:passcode"));
        assert!(refused(&["--redis-url", "http://x"]).contains("use redis://"));
        assert!(refused(&["--redis-url", "rediss-sentinel://x:1"]).contains("use redis://"));
        assert!(Config::try_parse_from(["stompede", "--redis-url", "rediss://x:1"]).is_ok());
        let sentinel = "redis-sentinel://x:26379?sentinelServiceName=m&node=y:26379";
        assert!(Config::try_parse_from(["stompede", "--redis-url", sentinel]).is_ok());
        assert!(
            refused(&["--redis-url", "redis-sentinel://x:26379"]).contains("sentinel service name")
        );
        let invalid = |args: &[&str]| {
            let args = std::iter::once("stompede").chain(args.iter().copied());
            Config::try_parse_from(args)
                .unwrap()
                .finish()
                .unwrap_err()
                .to_string()
        };
        let tls = ["--redis-url", "rediss://x:1"];
        let missing_ca = [&tls[..], &["--redis-tls-ca-file", "/nonexistent/ca.pem"]].concat();
        assert!(invalid(&missing_ca).contains("/nonexistent/ca.pem"));
        assert!(invalid(&["--redis-tls-ca-file", "/x.pem"]).contains("not rediss://"));
        assert!(refused(&["--redis-url", "redis://x:port"]).contains("not a Redis URL"));
        assert!(refused(&["--node-id", "a b"]).contains("letters, digits"));
        assert!(refused(&["--redis-key-prefix", "a{b}"]).contains("'{'"));
        let config =
            Config::try_parse_from(["stompede", "--shutdown-grace", "0", "--heartbeat", "0,500"])
                .unwrap();
        assert_eq!(config.shutdown_grace, Duration::ZERO);
        assert_eq!(
            config.heartbeat.wants_to_receive,
            Duration::from_millis(500)
        );
    }
}

//! stompede-load: a load generator for STOMP-over-WebSocket brokers.
//!
//! Layers, from the top: this file (the command line); `scenario/` (the
//! coordinator: one file per scenario, `RunContext` for what they share);
//! `fleet.rs` (the coordinator's handle on its workers); `wire.rs` (what
//! coordinator and workers say to each other); `worker/` (the connections,
//! several processes of them when a run needs more sockets than one process
//! may open); then `conn.rs`, `publisher.rs`, `frames.rs` (the wire to the
//! broker), and `report.rs`, `format.rs`, `stats.rs`, `sys.rs`, `target.rs`,
//! `broker_metrics.rs` underneath.

mod broker_metrics;
mod cluster;
mod conn;
mod fleet;
mod floor;
mod format;
mod frames;
mod ideal;
mod publisher;
mod report;
mod scenario;
mod stats;
mod sys;
mod target;
mod wire;
mod worker;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

/// Hard bounds on any run, whatever the flags say.
pub const MAX_CONNECTIONS: u64 = 250_000;
pub const MAX_SECONDS: f64 = 3600.0;

#[derive(Parser, Debug)]
#[command(
    name = "stompede-load",
    version,
    about = "Load generator for STOMP-over-WebSocket brokers (loopback only)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options every scenario shares.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// The broker's WebSocket URL (loopback only). Repeatable, one per node
    /// of a cluster: connections are dealt over the URLs in turn (connection
    /// i to URL i mod N, in worker processes too).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: Vec<String>,
    /// How to publish: `api` (POST /api/v1/publish on the first --url's host
    /// and port), an explicit `http://.../api/v1/publish` URL, or `stomp`
    /// (STOMP SEND over WebSocket to the first --url, for brokers without
    /// the HTTP API).
    #[arg(long, global = true, default_value = "api")]
    pub publish: String,
    /// With several --urls and `--publish api` or `stomp`: each publisher
    /// sends message k to node k mod N (one HTTP connection, or one STOMP
    /// session, per node) instead of all to the first.
    #[arg(long, global = true)]
    pub publish_round_robin: bool,
    /// The engine to record in the report (e.g. `rabbitmq`); without it the
    /// tool reads `engine.name` from each node's GET /readyz (stompede).
    #[arg(long, global = true)]
    pub engine_label: Option<String>,
    /// CONNECT `login` header.
    #[arg(long, global = true)]
    pub login: Option<String>,
    /// CONNECT `passcode` header.
    #[arg(long, global = true)]
    pub passcode: Option<String>,
    /// CONNECT `host` header (RabbitMQ: the virtual host, `/`).
    #[arg(long, global = true)]
    pub vhost: Option<String>,
    /// Destinations are this prefix plus an index (RabbitMQ: keep `/topic/`).
    #[arg(long, global = true, default_value = "/topic/load.")]
    pub dest_prefix: String,
    /// Bytes of each message body (a stamp padded with dots).
    #[arg(long, global = true, default_value_t = 64)]
    pub body_size: usize,
    /// The broker's pid, to report its memory and CPU from /proc.
    #[arg(long, global = true)]
    pub broker_pid: Option<u32>,
    /// Where to write the JSON report (default: stompede-load-SCENARIO-TIME.json).
    #[arg(long, global = true)]
    pub json: Option<String>,
    /// Most connections per worker process (this box allows 20,000 open
    /// files per process).
    #[arg(long, global = true, default_value_t = 18_000)]
    pub per_worker: u64,
    /// Use worker processes even when one would do.
    #[arg(long, global = true)]
    pub processes: bool,
    /// Seconds one connection setup (TCP, handshake, CONNECT, SUBSCRIBE) may take.
    #[arg(long, global = true, default_value_t = 15.0)]
    pub setup_timeout: f64,
    /// Subscriber setups in flight at once (per worker) before a scenario starts.
    #[arg(long, global = true, default_value_t = 256)]
    pub setup_concurrency: usize,
    /// No progress line.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// stompede's `/metrics` URL (http://, loopback); `churn` then reports the
    /// broker's connection, subscription and destination counts before and after.
    #[arg(long, global = true)]
    pub metrics_url: Option<String>,
    /// The whole run is aborted after this many seconds.
    #[arg(long, global = true, default_value_t = 900.0)]
    pub max_runtime: f64,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Subscribers on D destinations, open-loop publishing at one or more rates.
    Fanout(scenario::fanout::FanoutArgs),
    /// Opens N subscribed connections at a target rate, optionally during a fan-out.
    Storm(scenario::storm::StormArgs),
    /// A steady rate of connects and disconnects; the broker's memory before, during, after.
    Churn(scenario::churn::ChurnArgs),
    /// Holds N idle subscribed connections; the broker's memory per connection.
    Idle(scenario::idle::IdleArgs),
    /// Kills one node of a cluster while comments are published; its readers resume elsewhere.
    Failover(scenario::failover::FailoverArgs),
    /// Measures this box's floor (as every scenario does first) and prints it, N times.
    Floor {
        #[arg(long, default_value_t = 1)]
        times: u32,
    },
    /// The least a broker can do for `fanout --publish stomp` (see `ideal.rs`):
    /// a peer to run beside a broker, never a broker.
    IdealBroker(ideal::IdealArgs),
    /// Internal: a worker process driven by the coordinator over stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// Internal: a `failover` worker process.
    #[command(hide = true)]
    FailoverWorker,
}

pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Worker => worker::process_main(),
        Scenario::FailoverWorker => worker::failover::process_main(),
        Scenario::IdealBroker(args) => ideal::run(&args),
        Scenario::Floor { times } => (0..times.clamp(1, 100)).try_for_each(|_| {
            let floor = floor::Floor::measure()?;
            println!("{}", floor.describe());
            Ok(())
        }),
        scenario => runtime().and_then(|runtime| {
            runtime.block_on(async move {
                let limit = std::time::Duration::from_secs_f64(
                    cli.common.max_runtime.clamp(1.0, MAX_SECONDS * 2.0),
                );
                let run = async {
                    match scenario {
                        Scenario::Fanout(args) => scenario::fanout::run(&cli.common, args).await,
                        Scenario::Storm(args) => scenario::storm::run(&cli.common, args).await,
                        Scenario::Churn(args) => scenario::churn::run(&cli.common, args).await,
                        Scenario::Idle(args) => scenario::idle::run(&cli.common, args).await,
                        Scenario::Failover(args) => {
                            scenario::failover::run(&cli.common, args).await
                        }
                        Scenario::Worker
                        | Scenario::FailoverWorker
                        | Scenario::Floor { .. }
                        | Scenario::IdealBroker(_) => {
                            unreachable!()
                        }
                    }
                };
                tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                    Err(format!(
                        "aborted: the run exceeded --max-runtime {}s",
                        cli.common.max_runtime
                    ))
                })
            })
        }),
    };
    if let Err(error) = result {
        eprintln!("stompede-load: {error}");
        std::process::exit(1);
    }
}

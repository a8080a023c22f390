//! `idle`: N idle subscribed connections held; the broker's resident memory
//! per connection.

use super::{plan, setup_rows, RunContext};
use crate::format::{kb, mib};
use crate::Common;
use clap::Args;
use serde::Serialize;
use std::time::Duration;

/// RSS samples taken once settled, a second apart; the median is the figure.
const RSS_SAMPLES: usize = 3;

#[derive(Args, Debug, Clone, Serialize)]
pub struct IdleArgs {
    /// Idle subscribed connections to hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: u64,
    /// Destinations they subscribe to.
    #[arg(long, default_value_t = 100)]
    pub destinations: u32,
    /// Seconds to wait after the last subscription before measuring.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Further seconds to hold the connections after measuring.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
}

pub async fn run(common: &Common, args: IdleArgs) -> Result<(), String> {
    let mut run =
        RunContext::new(common, "idle", args.connections, args.settle + args.hold).await?;
    if common.broker_pid.is_none() {
        eprintln!("stompede-load: no --broker-pid: the broker's memory cannot be measured, only the connections held");
    }
    let rss_empty = run.meter.broker_at_start.map(|s| s.rss_bytes);
    let subscribers = plan::assign(args.connections, args.destinations, "uniform")?;
    let specs = run.worker_specs(args.connections, args.destinations, &subscribers);
    let label = format!("idle: opening {} subscribed connections", args.connections);
    let (mut fleet, subscribed) = run.start_workers(specs, label, args.destinations).await?;
    fleet.label = "idle: settling".into();
    fleet.pump(Duration::from_secs_f64(args.settle)).await?;
    let mut rss_samples: Vec<u64> = Vec::new();
    for sample in 0..RSS_SAMPLES {
        if sample > 0 {
            fleet.pump(Duration::from_secs(1)).await?;
        }
        if let Some(broker) = run.meter.broker_now() {
            rss_samples.push(broker.rss_bytes);
        }
    }
    rss_samples.sort_unstable();
    let rss_loaded = rss_samples.get(rss_samples.len() / 2).copied();
    fleet.label = "idle: holding".into();
    fleet.pump(Duration::from_secs_f64(args.hold)).await?;
    let open_at_end: u64 = fleet.progress.iter().map(|p| p.open).sum();
    let finals = fleet.stop().await?;
    let held = subscribed.summary.subscribed;
    let per_connection = match (rss_empty, rss_loaded) {
        (Some(empty), Some(loaded)) if held > 0 => {
            Some((loaded as f64 - empty as f64) / held as f64)
        }
        _ => None,
    };
    let tool = run.tool_usage(&finals);
    let mut report = run.report(&args);
    setup_rows(&mut report, &subscribed.summary, "connections");
    report.row("still open at the end", open_at_end.to_string());
    let or_na = |text: Option<String>| text.unwrap_or_else(|| "n/a".into());
    report.row("broker RSS empty", or_na(rss_empty.map(mib)));
    report.row("broker RSS loaded", or_na(rss_loaded.map(mib)));
    report.row(
        "broker memory per connection",
        or_na(per_connection.map(|bytes| format!("{} ({bytes:.0} bytes)", kb(bytes)))),
    );
    report.row(
        "tool memory per connection",
        kb(tool.rss_bytes as f64 / held.max(1) as f64),
    );
    report.set("setup", &subscribed.summary);
    report.set("open_at_end", open_at_end);
    report.set("broker_rss_before", rss_empty);
    report.set("broker_rss_loaded", rss_loaded);
    report.set("broker_bytes_per_connection", per_connection);
    run.finish(report, &tool, &finals, None, &[])
}

//! `churn`: a steady rate of subscribed connects and, `--hold` later,
//! disconnects; the broker's memory (and, with `--metrics-url`, its
//! registry) before, during and after.

use super::merge;
use super::{plan, rate, RunContext};
use crate::broker_metrics::{self, RegistryCounts};
use crate::format::{self, human, mib, mib_change};
use crate::sys::ProcSample;
use crate::wire::{ChurnSpec, Command};
use crate::Common;
use clap::Args;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Connections open at once are planned at 1.5 times rate x hold, plus this.
const OPEN_HEADROOM: u64 = 100;
/// Churn connection indexes of worker w start at w times this (source
/// addresses and subscription ids apart from every other worker's).
const INDEXES_PER_WORKER: u64 = 10_000_000;
/// Shortest pause between memory samples.
const MIN_SAMPLE_EVERY_SECS: f64 = 0.1;
/// How much longer than duration + hold + two setup timeouts the churn may
/// take before the run gives up.
const FINISH_GRACE_SECS: f64 = 30.0;
/// How long the workers may take to send their results once finished.
const RESULTS_WAIT: Duration = Duration::from_secs(5);

#[derive(Args, Debug, Clone, Serialize)]
pub struct ChurnArgs {
    /// Connections opened (and, `--hold` later, closed) per second.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Seconds each connection stays subscribed.
    #[arg(long, default_value_t = 1.0)]
    pub hold: f64,
    /// Churning connections subscribe to `PREFIXchurn.0` .. this many.
    #[arg(long, default_value_t = 100)]
    pub destinations: u32,
    /// Every n-th connection drops its socket without DISCONNECT (0: never).
    #[arg(long, default_value_t = 10)]
    pub abrupt_every: u64,
    /// Seconds to wait after the churn before the "after" memory sample.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Seconds between memory samples during the churn.
    #[arg(long, default_value_t = 1.0)]
    pub sample_every: f64,
}

/// The broker's RSS during the churn (`broker_rss_during`).
#[derive(Debug, Serialize)]
struct MemorySample {
    t_secs: f64,
    rss_bytes: u64,
    open: u64,
}

async fn registry(metrics_url: Option<&str>) -> Result<Option<RegistryCounts>, String> {
    match metrics_url {
        Some(url) => Ok(Some(broker_metrics::scrape(url).await?)),
        None => Ok(None),
    }
}

pub async fn run(common: &Common, args: ChurnArgs) -> Result<(), String> {
    // Written so that NaN fails too.
    if args.rate.is_nan() || args.rate <= 0.0 || args.hold.is_nan() || args.hold < 0.0 {
        return Err("--rate must be positive and --hold not negative".into());
    }
    let steady_open = (args.rate * args.hold * 1.5) as u64 + OPEN_HEADROOM;
    let mut run = RunContext::new(
        common,
        "churn",
        steady_open,
        args.duration + args.settle + args.hold,
    )
    .await?;
    let workers = plan::worker_count(steady_open, common.per_worker);
    let specs = (0..workers)
        .map(|worker| {
            let mut spec = run.worker_spec(worker, 1);
            spec.churn = Some(ChurnSpec {
                rate: args.rate / workers as f64,
                duration_ms: (args.duration * 1000.0) as u64,
                hold_ms: (args.hold * 1000.0) as u64,
                destinations: args.destinations,
                first_conn: worker as u64 * INDEXES_PER_WORKER,
                abrupt_every: args.abrupt_every,
                max_open: common.per_worker as usize,
            });
            spec
        })
        .collect();
    let rss_before = run.meter.broker_at_start;
    let registry_before = registry(common.metrics_url.as_deref()).await?;
    let (mut fleet, _) = run.start_workers(specs, "churn: starting", 1).await?;
    fleet.label = format!("churn at {}/s, hold {} s", human(args.rate), args.hold);
    fleet.send_all(Command::Start);
    let started = Instant::now();
    let deadline_secs = args.duration + args.hold + common.setup_timeout * 2.0 + FINISH_GRACE_SECS;
    let mut samples = Vec::new();
    while !fleet.activity_finished() {
        fleet
            .pump(Duration::from_secs_f64(
                args.sample_every.max(MIN_SAMPLE_EVERY_SECS),
            ))
            .await?;
        if let Some(sample) = run.meter.broker_now() {
            samples.push(MemorySample {
                t_secs: started.elapsed().as_secs_f64(),
                rss_bytes: sample.rss_bytes,
                open: fleet.progress.iter().map(|p| p.open).sum(),
            });
        }
        if started.elapsed().as_secs_f64() > deadline_secs {
            return Err("churn did not finish in time".into());
        }
    }
    let activity = fleet.wait_activity(RESULTS_WAIT).await?;
    fleet.label = "churn done: settling".into();
    fleet.pump(Duration::from_secs_f64(args.settle)).await?;
    let rss_after = run.meter.broker_now();
    let registry_after = registry(common.metrics_url.as_deref()).await?;
    let finals = fleet.stop().await?;
    let (churn, setup_latency) = merge::activities(&activity);
    let achieved_rate = rate(churn.ok, churn.elapsed_secs);
    let mut report = run.report(&args);
    let vs_floor = report.in_floors(achieved_rate);
    report.row(
        "connects",
        format!(
            "{} of {} in {:.1} s = {}/s (target {}/s); skipped at the open limit {}{vs_floor}",
            churn.ok,
            churn.attempted,
            churn.elapsed_secs,
            human(achieved_rate),
            human(args.rate),
            churn.skipped_at_limit
        ),
    );
    let abrupt = if args.abrupt_every > 0 {
        format!("every {}th dropped without DISCONNECT", args.abrupt_every)
    } else {
        "all with DISCONNECT".into()
    };
    report.row(
        "disconnects",
        format!(
            "{} closed ({abrupt}; {} DISCONNECTs answered by a close without RECEIPT); failures: {}",
            churn.closed_ok,
            churn.closed_without_receipt,
            format::failures(&churn.close_failures)
        ),
    );
    report.row("setup failures", format::failures(&churn.failures));
    report.latency_row("setup latency", &setup_latency);
    report.row("peak open", churn.peak_open.to_string());
    let rss = |sample: Option<ProcSample>| {
        sample
            .map(|sample| mib(sample.rss_bytes))
            .unwrap_or_else(|| "n/a (no --broker-pid)".into())
    };
    report.row("broker RSS before", rss(rss_before));
    let during_min = samples.iter().map(|s| s.rss_bytes).min();
    let during_max = samples.iter().map(|s| s.rss_bytes).max();
    if let (Some(low), Some(high)) = (during_min, during_max) {
        report.row(
            "broker RSS during",
            format!("{} .. {}", mib(low), mib(high)),
        );
    }
    report.row(
        "broker RSS after",
        format!("{} ({} s after the churn)", rss(rss_after), args.settle),
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.row(
            "after - before",
            mib_change(before.rss_bytes, after.rss_bytes),
        );
    }
    if let (Some(before), Some(after)) = (registry_before, registry_after) {
        report.row("broker registry before", before.to_string());
        report.row(
            "broker registry after",
            format!("{after} ({} s after the churn)", args.settle),
        );
    }
    report.set("broker_registry_before", registry_before);
    report.set("broker_registry_after", registry_after);
    report.set(
        "churn",
        serde_json::json!({
            "attempted": churn.attempted,
            "ok": churn.ok,
            "closed_ok": churn.closed_ok,
            "closed_without_receipt": churn.closed_without_receipt,
            "failures": churn.failures,
            "close_failures": churn.close_failures,
            "skipped_at_limit": churn.skipped_at_limit,
            "elapsed_secs": churn.elapsed_secs,
            "achieved_rate": achieved_rate,
            "setup_latency": setup_latency,
            "peak_open": churn.peak_open,
        }),
    );
    report.set("broker_rss_before", rss_before.map(|s| s.rss_bytes));
    report.set("broker_rss_after", rss_after.map(|s| s.rss_bytes));
    report.set("broker_rss_during", &samples);
    let tool = run.tool_usage(&finals);
    run.finish(report, &tool, &finals, None, &[])
}

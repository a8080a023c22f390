//! `fanout`: checking subscribers on D destinations, publishers publishing
//! open-loop at one rate per step (a ramp when `--rate` is a list).

use super::step::{drain_idle, step_rows, FanOut, StepPlan};
use super::{plan, setup_rows, RunContext};
use crate::format::{human, ms, verdict};
use crate::Common;
use clap::Args;
use serde::Serialize;
use std::time::Duration;

/// Highest `--rate`, messages per second.
const MAX_RATE: f64 = 10_000_000.0;

#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    /// Checking subscribers (each on its own connection).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u64,
    /// Destinations the subscribers are spread over.
    #[arg(long, default_value_t = 1)]
    pub destinations: u32,
    /// How subscribers spread: `uniform`, or `zipf[:S]` (a hot-article
    /// skew; destination d gets a share proportional to 1/(d+1)^S, S=1 by default).
    #[arg(long, default_value = "uniform")]
    pub skew: String,
    /// Messages published per second, in total; a comma list runs one step
    /// per rate on the same connections (a ramp).
    #[arg(long, default_value = "100")]
    pub rate: String,
    /// Seconds each step publishes.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publishing connections; destinations are dealt out among them.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Most seconds to wait after a step for late deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// The wait for late deliveries ends early once nothing has arrived for
    /// this many seconds (a longer stall counts as loss).
    #[arg(long, default_value_t = 2.0)]
    pub drain_idle: f64,
    /// A step passes if nothing is lost or duplicated, no subscriber
    /// dropped, nothing failed to publish, and p99 is at most this.
    #[arg(long, default_value_t = 1000.0)]
    pub max_p99_ms: f64,
    /// End the ramp at the first step that fails.
    #[arg(long)]
    pub stop_on_fail: bool,
    /// Also write a latency percentile plot (SVG) here.
    #[arg(long)]
    pub svg: Option<String>,
}

fn parse_rates(list: &str) -> Result<Vec<f64>, String> {
    let rates: Vec<f64> = list
        .split(',')
        .map(|rate| {
            rate.trim()
                .parse::<f64>()
                .map_err(|_| format!("bad --rate {rate:?}"))
        })
        .collect::<Result<_, _>>()?;
    if rates.iter().any(|&rate| !(rate > 0.0 && rate <= MAX_RATE)) {
        return Err("each --rate must be in (0, 10,000,000] messages/s".into());
    }
    Ok(rates)
}

pub async fn run(common: &Common, args: FanoutArgs) -> Result<(), String> {
    let rates = parse_rates(&args.rate)?;
    let drain_idle = drain_idle(args.drain_idle)?;
    let mut run = RunContext::new(
        common,
        "fanout",
        args.subscribers,
        args.duration * rates.len() as f64,
    )
    .await?;
    let subscribers = plan::assign(args.subscribers, args.destinations, &args.skew)?;
    let specs = run.worker_specs(args.subscribers, args.destinations, &subscribers);
    let (mut fleet, subscribed) = run
        .start_workers(specs, "fanout: connecting subscribers", args.destinations)
        .await?;
    let mut fan_out = FanOut::connect(
        common,
        &run.dialer,
        args.publishers,
        args.destinations,
        subscribed.per_dest,
    )
    .await?;
    let mut report = run.report(&args);
    report.row("publishing via", common.publish.clone());
    setup_rows(&mut report, &subscribed.summary, "subscribers");
    let mut steps = Vec::new();
    let mut latencies = Vec::new();
    for (index, &rate) in rates.iter().enumerate() {
        let plan = StepPlan {
            index: index as u32,
            label: format!(
                "fanout step {}/{} at {}/s",
                index + 1,
                rates.len(),
                human(rate)
            ),
            rate,
            duration: Duration::from_secs_f64(args.duration),
            drain_secs: args.drain,
            drain_idle,
            max_p99_ms: args.max_p99_ms,
            end_early: None,
        };
        let (step, histogram) = fan_out.run_step(&mut fleet, &run.meter, plan).await?;
        let passed = step.passed;
        if !common.quiet {
            eprintln!(
                "step {}: {}/s -> {} deliveries/s, p99 {} ms, lost {}, {}",
                index + 1,
                human(rate),
                human(step.deliveries_per_sec),
                ms(step.latency.p99_ms),
                step.lost,
                verdict(passed)
            );
        }
        steps.push(step);
        latencies.push((format!("{}/s", human(rate)), histogram));
        if args.stop_on_fail && !passed {
            break;
        }
    }
    drop(fan_out);
    let finals = fleet.stop().await?;
    for step in &steps {
        step_rows(&mut report, step);
    }
    let best = steps
        .iter()
        .filter(|step| step.passed)
        .max_by(|x, y| x.deliveries_per_sec.total_cmp(&y.deliveries_per_sec));
    report.section("summary");
    match best {
        Some(best) => report.row(
            "highest passing step",
            format!(
                "{}/s published -> {} deliveries/s, p99 {} ms",
                human(best.target_rate),
                human(best.deliveries_per_sec),
                ms(best.latency.p99_ms)
            ),
        ),
        None => report.row("highest passing step", "none passed"),
    }
    report.set(
        "best_passing",
        best.map(|best| {
            serde_json::json!({
                "rate": best.target_rate,
                "deliveries_per_sec": best.deliveries_per_sec,
                "p99_ms": best.latency.p99_ms,
            })
        }),
    );
    report.set("setup", &subscribed.summary);
    report.set("steps", &steps);
    let tool = run.tool_usage(&finals);
    run.finish(report, &tool, &finals, args.svg.as_deref(), &latencies)
}

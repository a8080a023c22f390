//! `storm`: N subscribed connections opened at a target rate, optionally
//! while background subscribers receive a fan-out (measured before the
//! storm and during it).

use super::merge;
use super::step::{drain_idle, step_rows, FanOut, StepPlan};
use super::{plan, rate, setup_rows, RunContext};
use crate::fleet::Fleet;
use crate::format::{self, human, mib, of_one_core};
use crate::wire::{Command, StormSpec};
use crate::Common;
use clap::Args;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The background fan-out's steps pass with a p99 up to this.
const BACKGROUND_MAX_P99_MS: f64 = 1000.0;
/// How much longer than `--timeout` the workers may take to report.
const REPORT_GRACE_SECS: f64 = 30.0;

#[derive(Args, Debug, Clone, Serialize)]
pub struct StormArgs {
    /// Connections to open (each: TCP, WebSocket handshake, CONNECT, SUBSCRIBE + RECEIPT).
    #[arg(long, default_value_t = 10_000)]
    pub connections: u64,
    /// Connections started per second (open loop).
    #[arg(long, default_value_t = 5_000.0)]
    pub rate: f64,
    /// Most setups in flight at once.
    #[arg(long, default_value_t = 1_000)]
    pub concurrency: usize,
    /// Storm connections subscribe to `PREFIXstorm.0` .. this many.
    #[arg(long, default_value_t = 100)]
    pub storm_destinations: u32,
    /// Checking subscribers that receive a fan-out during the storm (0: none).
    #[arg(long, default_value_t = 0)]
    pub background_subscribers: u64,
    #[arg(long, default_value_t = 1)]
    pub background_destinations: u32,
    /// Messages per second published to the background subscribers.
    #[arg(long, default_value_t = 100.0)]
    pub background_rate: f64,
    /// Where the background subscribers live: `separate` (a worker process
    /// of their own that holds no storm connection, so their receive
    /// timestamps are not taken behind the storm's handshakes in the same
    /// process), or `shared` (dealt out over the storm's workers, as before).
    #[arg(long, value_enum, default_value_t = BackgroundWorker::Separate)]
    pub background_worker: BackgroundWorker,
    /// The storm's worker processes run this many nice steps below normal
    /// CPU priority (0-19), the background subscribers' worker and the
    /// publisher at normal: on this box the storm's clients (17,000
    /// handshakes) take CPU that, in a real stampede, runs on the readers'
    /// own machines. 0: all at the same priority.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub storm_nice: u8,
    /// Seconds of background fan-out measured before the storm starts.
    #[arg(long, default_value_t = 3.0)]
    pub baseline: f64,
    /// Most seconds the storm may take.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Seconds a storm connection refused with 503 (admission control:
    /// max-handshakes-per-second) keeps trying, as a browser backing off with
    /// jitter would (0.5-1 s, doubling, at most 8 s between tries); retries
    /// are counted apart from failures, and a setup's time runs from its
    /// first try. 0: a refusal is a failure.
    #[arg(long, default_value_t = 0.0)]
    pub retry_refused: f64,
    /// Most seconds to wait after a step for late deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// The wait for late deliveries ends early once nothing has arrived for
    /// this many seconds (a longer stall counts as loss).
    #[arg(long, default_value_t = 2.0)]
    pub drain_idle: f64,
    #[arg(long)]
    pub svg: Option<String>,
}

/// Where the background subscribers live (`--background-worker`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundWorker {
    Separate,
    Shared,
}

pub async fn run(common: &Common, args: StormArgs) -> Result<(), String> {
    // Written so that NaN fails too.
    if args.rate.is_nan() || args.rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    let drain_idle = drain_idle(args.drain_idle)?;
    let mut run = RunContext::new(
        common,
        "storm",
        args.connections + args.background_subscribers,
        args.timeout + args.baseline,
    )
    .await?;
    let subscribers = plan::assign(
        args.background_subscribers,
        args.background_destinations,
        "uniform",
    )?;
    let separate = args.background_worker == BackgroundWorker::Separate && !subscribers.is_empty();
    if separate && subscribers.len() as u64 > common.per_worker {
        return Err(format!(
            "--background-worker separate: {} background subscribers do not fit in one worker of --per-worker {}",
            subscribers.len(),
            common.per_worker
        ));
    }
    if args.storm_nice > 0 && !separate && !subscribers.is_empty() {
        return Err(
            "--storm-nice needs --background-worker separate (the background subscribers keep normal priority)"
                .into(),
        );
    }
    let mut specs = if separate {
        run.worker_specs(args.connections, args.background_destinations, &[])
    } else {
        run.worker_specs(
            subscribers.len() as u64 + args.connections,
            args.background_destinations,
            &subscribers,
        )
    };
    let workers = specs.len();
    for (worker, spec) in specs.iter_mut().enumerate() {
        let (count, before) = plan::share(args.connections, workers, worker);
        spec.storm = Some(StormSpec {
            count,
            rate: args.rate / workers as f64,
            concurrency: (args.concurrency / workers).max(1),
            destinations: args.storm_destinations,
            first_conn: subscribers.len() as u64 + before,
            retry_refused_ms: (args.retry_refused * 1000.0) as u64,
        });
        if separate || subscribers.is_empty() {
            spec.nice = args.storm_nice;
        }
    }
    if separate {
        // One more worker, last, with every background subscriber and no storm share.
        let mut background = run.worker_spec(specs.len(), args.background_destinations);
        background.subscribers = subscribers.clone();
        specs.push(background);
    }
    let (mut fleet, subscribed) = run
        .start_workers(
            specs,
            "storm: connecting background subscribers",
            args.background_destinations,
        )
        .await?;
    let mut report = run.report(&args);
    let mut steps = Vec::new();
    let mut latencies = Vec::new();
    let mut background = None;
    if args.background_subscribers > 0 {
        let mut fan_out = FanOut::connect(
            common,
            &run.dialer,
            1,
            args.background_destinations,
            subscribed.per_dest,
        )
        .await?;
        setup_rows(&mut report, &subscribed.summary, "background subscribers");
        report.row(
            "background subscribers live",
            if separate {
                "in a worker process of their own (--background-worker separate)"
            } else {
                "in the storm's worker processes (--background-worker shared)"
            },
        );
        let baseline = background_step(
            &args,
            drain_idle,
            0,
            "background fan-out before the storm".into(),
        );
        let (step, histogram) = fan_out.run_step(&mut fleet, &run.meter, baseline).await?;
        steps.push(step);
        latencies.push(("before storm".to_string(), histogram));
        background = Some(fan_out);
    }
    let broker_before = run.meter.broker_now();
    let storm_started = Instant::now();
    fleet.send_all(Command::Start);
    let storm_label = format!(
        "storm of {} connections at {}/s",
        args.connections,
        human(args.rate)
    );
    if let Some(fan_out) = &mut background {
        let mut during = background_step(
            &args,
            drain_idle,
            1,
            format!("{storm_label}, fan-out continues"),
        );
        during.duration = Duration::from_secs_f64(args.timeout);
        during.end_early = Some(Fleet::activity_finished);
        let (step, histogram) = fan_out.run_step(&mut fleet, &run.meter, during).await?;
        steps.push(step);
        latencies.push(("during storm".to_string(), histogram));
    } else {
        fleet.label = storm_label;
    }
    let activity = fleet
        .wait_activity(Duration::from_secs_f64(args.timeout + REPORT_GRACE_SECS))
        .await?;
    let storm_secs = storm_started.elapsed().as_secs_f64();
    let broker_after = run.meter.broker_now();
    drop(background);
    let finals = fleet.stop().await?;
    let (storm, setup_latency) = merge::activities(&activity);
    let achieved_rate = rate(storm.ok, storm.elapsed_secs);
    report.section("storm");
    report.row(
        "connections",
        format!(
            "{} of {} set up (TCP + handshake + CONNECT + SUBSCRIBE/RECEIPT)",
            storm.ok, storm.attempted
        ),
    );
    let vs_floor = report.in_floors(achieved_rate);
    report.row(
        "time to set up all",
        format!(
            "{:.2} s (target rate {}/s, achieved {}/s){vs_floor}",
            storm.elapsed_secs,
            human(args.rate),
            human(achieved_rate)
        ),
    );
    report.row("failures", format::failures(&storm.failures));
    report.latency_row("setup latency", &setup_latency);
    if let (Some(before), Some(after)) = (broker_before, broker_after) {
        report.row(
            "broker during storm",
            format!(
                "CPU {}, RSS {} -> {}",
                of_one_core((after.cpu_secs - before.cpu_secs) / storm_secs * 100.0),
                mib(before.rss_bytes),
                mib(after.rss_bytes)
            ),
        );
    }
    for step in &steps {
        step_rows(&mut report, step);
    }
    report.set(
        "storm",
        serde_json::json!({
            "attempted": storm.attempted,
            "ok": storm.ok,
            "failures": storm.failures,
            "failed": storm.attempted - storm.ok.min(storm.attempted),
            "elapsed_secs": storm.elapsed_secs,
            "achieved_rate": achieved_rate,
            "setup_latency": setup_latency,
        }),
    );
    report.set("background_setup", &subscribed.summary);
    report.set("background_steps", &steps);
    let tool = run.tool_usage(&finals);
    run.finish(report, &tool, &finals, args.svg.as_deref(), &latencies)
}

/// A step of the background fan-out, `--baseline` seconds long.
fn background_step(args: &StormArgs, drain_idle: Duration, index: u32, label: String) -> StepPlan {
    StepPlan {
        index,
        label,
        rate: args.background_rate,
        duration: Duration::from_secs_f64(args.baseline),
        drain_secs: args.drain,
        drain_idle,
        max_p99_ms: BACKGROUND_MAX_P99_MS,
        end_early: None,
    }
}

//! The four scenarios. Each builds worker specs, drives the fleet through
//! its phases, and reports.

use crate::conn::Dialer;
use crate::fleet::{human, Fleet};
use crate::publisher::{PublishStep, Publisher, Via};
use crate::report::{latency_svg, mib, ms, Report};
use crate::stats::{new_histogram, HistData, Percentiles};
use crate::sys::{proc_sample, self_cpu_secs, self_rss_bytes, ProcSample};
use crate::target::Target;
use crate::worker::{ActivityResult, ChurnSpec, Final, Ready, StepResult, StormSpec, WorkerSpec};
use crate::{Common, MAX_CONNECTIONS, MAX_SECONDS};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
    /// Seconds of background fan-out measured before the storm starts.
    #[arg(long, default_value_t = 3.0)]
    pub baseline: f64,
    /// Most seconds the storm may take.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    #[arg(long)]
    pub svg: Option<String>,
}

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

/// Checks bounds shared by every scenario and builds the dialer.
fn setup(c: &Common, connections: u64, seconds: f64) -> Result<Arc<Dialer>, String> {
    if connections > MAX_CONNECTIONS {
        return Err(format!(
            "{connections} connections is above this tool's bound of {MAX_CONNECTIONS}"
        ));
    }
    if !(0.0..=MAX_SECONDS).contains(&seconds) {
        return Err(format!(
            "a run of {seconds}s is outside this tool's bound of {MAX_SECONDS}s"
        ));
    }
    if c.per_worker == 0 || c.per_worker > 19_500 {
        return Err(
            "--per-worker must be between 1 and 19500 (20,000 open files per process)".into(),
        );
    }
    let target = Target::parse(&c.url, "ws")?;
    let creds = crate::frames::Credentials {
        login: c.login.clone(),
        passcode: c.passcode.clone(),
        vhost: c.vhost.clone(),
    };
    Ok(Dialer::new(
        target,
        creds,
        Duration::from_secs_f64(c.setup_timeout),
    ))
}

fn via(c: &Common) -> Result<Via, String> {
    match c.publish.as_str() {
        "stomp" => Ok(Via::Stomp),
        "api" => {
            let ws = Target::parse(&c.url, "ws")?;
            Ok(Via::Http(Target::parse(
                &format!("http://{}/api/v1/publish", ws.authority),
                "http",
            )?))
        }
        url => Ok(Via::Http(Target::parse(url, "http")?)),
    }
}

fn base_spec(c: &Common, index: usize, destinations: u32) -> WorkerSpec {
    WorkerSpec {
        index,
        url: c.url.clone(),
        creds: crate::frames::Credentials {
            login: c.login.clone(),
            passcode: c.passcode.clone(),
            vhost: c.vhost.clone(),
        },
        setup_timeout_ms: (c.setup_timeout * 1000.0) as u64,
        dest_prefix: c.dest_prefix.clone(),
        destinations,
        first_conn: 0,
        subscribers: Vec::new(),
        subscribe_concurrency: c.setup_concurrency,
        storm: None,
        churn: None,
    }
}

/// Deals `subs` (destination per subscriber) and `storm` connections out to
/// as few workers as the per-process bound allows.
fn split(
    c: &Common,
    destinations: u32,
    subs: &[u32],
    storm: Option<&StormArgs>,
) -> Vec<WorkerSpec> {
    let storm_n = storm.map_or(0, |s| s.connections);
    let total = subs.len() as u64 + storm_n;
    let workers = total.div_ceil(c.per_worker).max(1) as usize;
    let per = subs.len().div_ceil(workers).max(1);
    (0..workers)
        .map(|w| {
            let mut spec = base_spec(c, w, destinations);
            let lo = (w * per).min(subs.len());
            let hi = ((w + 1) * per).min(subs.len());
            spec.subscribers = subs[lo..hi].to_vec();
            spec.first_conn = lo as u64;
            if let Some(s) = storm {
                let count =
                    storm_n / workers as u64 + u64::from((w as u64) < storm_n % workers as u64);
                let before: u64 = (0..w as u64)
                    .map(|i| storm_n / workers as u64 + u64::from(i < storm_n % workers as u64))
                    .sum();
                spec.storm = Some(StormSpec {
                    count,
                    rate: s.rate / workers as f64,
                    concurrency: (s.concurrency / workers).max(1),
                    destinations: s.storm_destinations,
                    first_conn: subs.len() as u64 + before,
                });
            }
            spec
        })
        .collect()
}

/// Destination index for each of `n` subscribers.
fn assign(n: u64, destinations: u32, skew: &str) -> Result<Vec<u32>, String> {
    let d = destinations.max(1) as usize;
    let weights: Vec<f64> = match skew {
        "uniform" => vec![1.0; d],
        s if s.starts_with("zipf") => {
            let exp: f64 = match s.strip_prefix("zipf:") {
                Some(x) => x
                    .parse()
                    .map_err(|_| format!("bad zipf exponent in {s:?}"))?,
                None if s == "zipf" => 1.0,
                None => return Err(format!("unknown --skew {s:?}")),
            };
            (0..d).map(|i| 1.0 / ((i + 1) as f64).powf(exp)).collect()
        }
        s => return Err(format!("unknown --skew {s:?} (uniform or zipf[:S])")),
    };
    // Largest-remainder apportionment, then subscribers in order.
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| w / sum * n as f64).collect();
    let mut counts: Vec<u64> = exact.iter().map(|x| x.floor() as u64).collect();
    let mut rest: Vec<usize> = (0..d).collect();
    rest.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let short = n - counts.iter().sum::<u64>();
    for &i in rest.iter().take(short as usize) {
        counts[i] += 1;
    }
    // Interleave so that each worker's slice has every destination.
    let mut out = Vec::with_capacity(n as usize);
    let mut left = counts.clone();
    while out.len() < n as usize {
        for (i, l) in left.iter_mut().enumerate() {
            if *l > 0 {
                *l -= 1;
                out.push(i as u32);
            }
        }
    }
    Ok(out)
}

fn merge_hist(parts: impl IntoIterator<Item = HistData>) -> Histogram<u64> {
    let mut h = new_histogram();
    for p in parts {
        p.add_to(&mut h);
    }
    h
}

fn merge_failures<'a>(
    maps: impl IntoIterator<Item = &'a BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}

fn failures_text(f: &BTreeMap<String, u64>) -> String {
    if f.is_empty() {
        return "none".into();
    }
    f.iter()
        .map(|(k, v)| format!("{v} x {k}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Serialize)]
struct SetupSummary {
    subscribed: u64,
    failures: BTreeMap<String, u64>,
    seconds: f64,
    latency: Percentiles,
}

fn merge_ready(r: &[Ready], destinations: u32) -> (SetupSummary, Vec<u64>) {
    let mut per_dest = vec![0u64; destinations.max(1) as usize];
    for x in r {
        for (i, n) in x.per_dest.iter().enumerate() {
            if let Some(p) = per_dest.get_mut(i) {
                *p += n;
            }
        }
    }
    let h = merge_hist(r.iter().map(|x| x.setup.clone()));
    let s = SetupSummary {
        subscribed: r.iter().map(|x| x.subscribed).sum(),
        failures: merge_failures(r.iter().map(|x| &x.failures)),
        seconds: r.iter().map(|x| x.setup_secs).fold(0.0, f64::max),
        latency: Percentiles::of(&h),
    };
    (s, per_dest)
}

/// Watches our own CPU and, if given, the broker's.
struct Meter {
    t0: Instant,
    cpu0: f64,
    broker_pid: Option<u32>,
    broker0: Option<ProcSample>,
}

impl Meter {
    fn new(broker_pid: Option<u32>) -> Meter {
        Meter {
            t0: Instant::now(),
            cpu0: self_cpu_secs(),
            broker_pid,
            broker0: broker_pid.and_then(proc_sample),
        }
    }

    fn broker_now(&self) -> Option<ProcSample> {
        self.broker_pid.and_then(proc_sample)
    }
}

#[derive(Debug, Serialize)]
struct ToolUsage {
    wall_secs: f64,
    cpu_secs: f64,
    /// CPU seconds per wall second: 100 means one whole core (this box has 2).
    cpu_percent: f64,
    worker_processes: usize,
    rss_bytes: u64,
}

fn tool_usage(m: &Meter, finals: &[Final], processes: bool) -> ToolUsage {
    let wall = m.t0.elapsed().as_secs_f64();
    let children: f64 = if processes {
        finals.iter().map(|f| f.cpu_secs).sum()
    } else {
        0.0
    };
    let cpu = self_cpu_secs() - m.cpu0 + children;
    let rss = self_rss_bytes()
        + if processes {
            finals.iter().map(|f| f.rss_bytes).sum()
        } else {
            0
        };
    ToolUsage {
        wall_secs: wall,
        cpu_secs: cpu,
        cpu_percent: cpu / wall * 100.0,
        worker_processes: if processes { finals.len() } else { 0 },
        rss_bytes: rss,
    }
}

fn tool_rows(rep: &mut Report, t: &ToolUsage, finals: &[Final]) {
    rep.section("the load tool itself");
    let workers = if t.worker_processes == 0 {
        "in-process worker".to_string()
    } else {
        format!("{} worker processes", t.worker_processes)
    };
    rep.row(
        "tool CPU",
        format!(
            "{:.1} s over {:.1} s wall = {:.0}% of one core ({workers})",
            t.cpu_secs, t.wall_secs, t.cpu_percent
        ),
    );
    rep.row("tool memory", mib(t.rss_bytes as f64));
    let stale: u64 = finals.iter().map(|f| f.stale).sum();
    let foreign: u64 = finals
        .iter()
        .map(|f| f.non_load_messages + f.untracked)
        .sum();
    if stale + foreign > 0 {
        rep.row(
            "late/foreign messages",
            format!(
                "{stale} arrived after their step was counted; {foreign} not ours or untracked"
            ),
        );
    }
}

/// Runs the publishers for one step, pumping the fleet's progress meanwhile.
async fn publish_step(
    fleet: &mut Fleet,
    pubs: Vec<Publisher>,
    step: u32,
    rate: f64,
    duration: Duration,
    stop: Option<watch::Receiver<bool>>,
    mut until: impl FnMut(&Fleet) -> bool,
    stop_tx: Option<&watch::Sender<bool>>,
) -> Result<(Vec<Publisher>, Vec<PublishStep>), String> {
    let n = pubs.len().max(1) as f64;
    let handles: Vec<_> = pubs
        .into_iter()
        .map(|mut p| {
            let (stop, counter) = (stop.clone(), fleet.published.clone());
            tokio::spawn(async move {
                let r = p.run_step(step, rate / n, duration, stop, counter).await;
                (p, r)
            })
        })
        .collect();
    let mut signalled = false;
    while !handles.iter().all(|h| h.is_finished()) {
        fleet.pump(Duration::from_millis(100)).await?;
        if !signalled && until(fleet) {
            if let Some(tx) = stop_tx {
                let _ = tx.send(true);
            }
            signalled = true;
        }
    }
    let mut pubs = Vec::new();
    let mut steps = Vec::new();
    for h in handles {
        let (p, r) = h.await.map_err(|e| format!("publisher task: {e}"))?;
        pubs.push(p);
        steps.push(r);
    }
    Ok((pubs, steps))
}

/// Waits until every expected delivery arrived, nothing arrived for a
/// while, or `max` passed. Returns (seconds waited, seconds until the last
/// delivery seen).
async fn drain(fleet: &mut Fleet, expected: u64, max: f64) -> Result<(f64, f64), String> {
    let t0 = Instant::now();
    let mut last = fleet.step_received();
    let mut last_change = Instant::now();
    let mut active = 0.0;
    while t0.elapsed().as_secs_f64() < max {
        if fleet.step_received() >= expected {
            active = t0.elapsed().as_secs_f64();
            break;
        }
        fleet.pump(Duration::from_millis(100)).await?;
        let now = fleet.step_received();
        if now != last {
            last = now;
            last_change = Instant::now();
            active = t0.elapsed().as_secs_f64();
        } else if last_change.elapsed() > Duration::from_millis(2000) {
            break;
        }
    }
    // One more progress round so the collected figures include the tail.
    fleet.pump(Duration::from_millis(300)).await?;
    Ok((t0.elapsed().as_secs_f64(), active))
}

#[derive(Debug, Serialize)]
struct StepReport {
    step: u32,
    label: String,
    target_rate: f64,
    publish_secs: f64,
    drain_secs: f64,
    published: u64,
    publish_failed: u64,
    publish_max_lag_ms: f64,
    publish_error: Option<String>,
    subscribers: u64,
    expected_deliveries: u64,
    delivered: u64,
    deliveries_per_sec: f64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    misrouted: u64,
    subscribers_with_loss: u64,
    subscribers_with_dups: u64,
    subscribers_with_reorder: u64,
    subscribers_disconnected: u64,
    latency: Percentiles,
    broker_cpu_percent: Option<f64>,
    broker_rss_bytes: Option<u64>,
    /// The load tool's CPU over the step (100 = one core).
    tool_cpu_percent: f64,
    passed: bool,
}

/// Publishes one step, drains, collects, and summarises it.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    fleet: &mut Fleet,
    pubs: Vec<Publisher>,
    per_dest_subs: &[u64],
    step: u32,
    label: String,
    rate: f64,
    duration: Duration,
    drain_max: f64,
    max_p99_ms: f64,
    meter: &Meter,
    during: Option<(
        watch::Receiver<bool>,
        &watch::Sender<bool>,
        &mut dyn FnMut(&Fleet) -> bool,
    )>,
) -> Result<(Vec<Publisher>, StepReport, Histogram<u64>), String> {
    fleet.label = label.clone();
    let b0 = meter.broker_now();
    let cpu0 = fleet.tool_cpu_secs();
    let t0 = Instant::now();
    let (pubs, steps) = match during {
        None => publish_step(fleet, pubs, step, rate, duration, None, |_| false, None).await?,
        Some((rx, tx, until)) => {
            publish_step(
                fleet,
                pubs,
                step,
                rate,
                duration,
                Some(rx),
                |f| until(f),
                Some(tx),
            )
            .await?
        }
    };
    let publish_secs = t0.elapsed().as_secs_f64();
    let mut sent = vec![0u64; per_dest_subs.len()];
    for s in &steps {
        for &(d, n) in &s.sent {
            if let Some(x) = sent.get_mut(d as usize) {
                *x += n;
            }
        }
    }
    let expected: u64 = sent.iter().zip(per_dest_subs).map(|(s, n)| s * n).sum();
    fleet.label = format!("{label}: draining");
    let (drain_secs, drain_active) = drain(fleet, expected, drain_max).await?;
    let b1 = meter.broker_now();
    let tool_cpu_percent = (fleet.tool_cpu_secs() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let results: Vec<StepResult> = fleet.collect(step, sent).await?;
    let hist = merge_hist(results.iter().map(|r| r.latency.clone()));
    let sum = |f: fn(&StepResult) -> u64| results.iter().map(f).sum::<u64>();
    let latency = Percentiles::of(&hist);
    let mut r = StepReport {
        step,
        label,
        target_rate: rate,
        publish_secs,
        drain_secs,
        published: steps.iter().map(|s| s.published).sum(),
        publish_failed: steps.iter().map(|s| s.failed).sum(),
        publish_max_lag_ms: steps.iter().map(|s| s.max_lag_ms).fold(0.0, f64::max),
        publish_error: steps.iter().find_map(|s| s.first_error.clone()),
        subscribers: sum(|r| r.subscribers),
        expected_deliveries: sum(|r| r.expected),
        delivered: sum(|r| r.received),
        // Over the time from the first publish to the last delivery seen.
        deliveries_per_sec: sum(|r| r.received) as f64 / (publish_secs + drain_active),
        lost: sum(|r| r.lost),
        duplicated: sum(|r| r.duplicated),
        reordered: sum(|r| r.reordered),
        misrouted: sum(|r| r.misrouted),
        subscribers_with_loss: sum(|r| r.subs_with_loss),
        subscribers_with_dups: sum(|r| r.subs_with_dups),
        subscribers_with_reorder: sum(|r| r.subs_with_reorder),
        subscribers_disconnected: sum(|r| r.subs_disconnected),
        latency,
        broker_cpu_percent: match (b0, b1) {
            (Some(a), Some(b)) => {
                Some((b.cpu_secs - a.cpu_secs) / (publish_secs + drain_secs) * 100.0)
            }
            _ => None,
        },
        broker_rss_bytes: b1.map(|b| b.rss_bytes),
        tool_cpu_percent,
        passed: false,
    };
    r.passed = r.lost == 0
        && r.duplicated == 0
        && r.misrouted == 0
        && r.subscribers_disconnected == 0
        && r.publish_failed == 0
        && r.publish_error.is_none()
        && r.latency.count > 0
        && r.latency.p99_ms <= max_p99_ms;
    Ok((pubs, r, hist))
}

fn step_rows(rep: &mut Report, s: &StepReport) {
    rep.section(&format!("step {}: {}", s.step, s.label));
    rep.row(
        "published",
        format!(
            "{} in {:.1} s ({}/s, target {}/s), failed {}, max lag {} ms",
            s.published,
            s.publish_secs,
            human(s.published as f64 / s.publish_secs),
            human(s.target_rate),
            s.publish_failed,
            ms(s.publish_max_lag_ms)
        ),
    );
    if let Some(e) = &s.publish_error {
        rep.row("publish error", e.clone());
    }
    rep.row(
        "delivered",
        format!(
            "{} of {} to {} subscribers = {}/s (drain {:.1} s)",
            s.delivered,
            s.expected_deliveries,
            s.subscribers,
            human(s.deliveries_per_sec),
            s.drain_secs
        ),
    );
    rep.latency_row("publish-to-receive", &s.latency);
    rep.row(
        "lost / dup / reordered",
        format!(
            "{} / {} / {} (subscribers affected: {} / {} / {}; misrouted {}; disconnected {})",
            s.lost,
            s.duplicated,
            s.reordered,
            s.subscribers_with_loss,
            s.subscribers_with_dups,
            s.subscribers_with_reorder,
            s.misrouted,
            s.subscribers_disconnected
        ),
    );
    if let (Some(cpu), Some(rss)) = (s.broker_cpu_percent, s.broker_rss_bytes) {
        rep.row(
            "broker",
            format!("CPU {cpu:.0}% of one core, RSS {}", mib(rss as f64)),
        );
    }
    rep.row(
        "load tool",
        format!("CPU {:.0}% of one core", s.tool_cpu_percent),
    );
    rep.row(
        "verdict",
        if s.passed {
            "PASS".to_string()
        } else {
            "FAIL".to_string()
        },
    );
}

async fn connect_publishers(
    c: &Common,
    dialer: &Dialer,
    n: u32,
    destinations: u32,
) -> Result<Vec<Publisher>, String> {
    let via = via(c)?;
    let n = n.clamp(1, destinations.max(1));
    let mut pubs = Vec::new();
    for p in 0..n {
        let dests: Vec<u32> = (0..destinations.max(1)).filter(|d| d % n == p).collect();
        // Publishers use source indexes far from the subscribers'.
        pubs.push(
            Publisher::connect(
                &via,
                dialer,
                5_000_000 + p as u64,
                dests,
                &c.dest_prefix,
                c.body_size,
            )
            .await?,
        );
    }
    Ok(pubs)
}

fn setup_rows(rep: &mut Report, s: &SetupSummary, what: &str) {
    rep.row(
        what,
        format!(
            "{} subscribed in {:.1} s; failures: {}",
            s.subscribed,
            s.seconds,
            failures_text(&s.failures)
        ),
    );
    rep.latency_row("setup latency", &s.latency);
}

pub async fn fanout(c: &Common, a: FanoutArgs) -> Result<(), String> {
    let rates: Vec<f64> = a
        .rate
        .split(',')
        .map(|r| {
            r.trim()
                .parse::<f64>()
                .map_err(|_| format!("bad --rate {r:?}"))
        })
        .collect::<Result<_, _>>()?;
    if rates.iter().any(|&r| !(r > 0.0 && r <= 10_000_000.0)) {
        return Err("each --rate must be in (0, 10,000,000] messages/s".into());
    }
    let dialer = setup(c, a.subscribers, a.duration * rates.len() as f64)?;
    let meter = Meter::new(c.broker_pid);
    let subs = assign(a.subscribers, a.destinations, &a.skew)?;
    let specs = split(c, a.destinations, &subs, None);
    let processes = c.processes || specs.len() > 1;
    let mut fleet = Fleet::spawn(specs, c.processes, c.quiet)?;
    fleet.label = "fanout: connecting subscribers".into();
    let readies = fleet
        .wait_ready(Duration::from_secs_f64(
            c.setup_timeout * 2.0 + a.subscribers as f64 / 50.0 + 30.0,
        ))
        .await?;
    let (setup_summary, per_dest) = merge_ready(&readies, a.destinations);
    let mut pubs = connect_publishers(c, &dialer, a.publishers, a.destinations).await?;
    let mut rep = Report::new("fanout", serde_json::json!({ "common": c, "fanout": &a }));
    rep.row("broker", c.url.clone());
    rep.row("publishing via", c.publish.clone());
    setup_rows(&mut rep, &setup_summary, "subscribers");
    let mut steps = Vec::new();
    let mut hists = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        let label = format!("fanout step {}/{} at {}/s", i + 1, rates.len(), human(rate));
        let (p, r, h) = run_step(
            &mut fleet,
            pubs,
            &per_dest,
            i as u32,
            label,
            rate,
            Duration::from_secs_f64(a.duration),
            a.drain,
            a.max_p99_ms,
            &meter,
            None,
        )
        .await?;
        pubs = p;
        let passed = r.passed;
        if !c.quiet {
            eprintln!(
                "step {}: {}/s -> {} deliveries/s, p99 {} ms, lost {}, {}",
                i + 1,
                human(rate),
                human(r.deliveries_per_sec),
                ms(r.latency.p99_ms),
                r.lost,
                if passed { "PASS" } else { "FAIL" }
            );
        }
        steps.push(r);
        hists.push((format!("{}/s", human(rate)), h));
        if a.stop_on_fail && !passed {
            break;
        }
    }
    drop(pubs);
    let finals = fleet.stop().await?;
    for s in &steps {
        step_rows(&mut rep, s);
    }
    let best = steps
        .iter()
        .filter(|s| s.passed)
        .max_by(|x, y| x.deliveries_per_sec.total_cmp(&y.deliveries_per_sec));
    rep.section("summary");
    match best {
        Some(b) => rep.row(
            "highest passing step",
            format!(
                "{}/s published -> {} deliveries/s, p99 {} ms",
                human(b.target_rate),
                human(b.deliveries_per_sec),
                ms(b.latency.p99_ms)
            ),
        ),
        None => rep.row("highest passing step", "none passed"),
    }
    rep.set("best_passing", best.map(|b| serde_json::json!({"rate": b.target_rate, "deliveries_per_sec": b.deliveries_per_sec, "p99_ms": b.latency.p99_ms})));
    let tool = tool_usage(&meter, &finals, processes);
    tool_rows(&mut rep, &tool, &finals);
    rep.set("setup", &setup_summary);
    rep.set("steps", &steps);
    rep.set("tool", &tool);
    if let Some(path) = &a.svg {
        let series: Vec<(String, &Histogram<u64>)> =
            hists.iter().map(|(l, h)| (l.clone(), h)).collect();
        std::fs::write(path, latency_svg(&series)).map_err(|e| format!("writing {path}: {e}"))?;
        rep.row("latency plot", path.clone());
    }
    rep.finish(c.json.as_deref())?;
    Ok(())
}

pub async fn storm(c: &Common, a: StormArgs) -> Result<(), String> {
    if !(a.rate > 0.0) {
        return Err("--rate must be positive".into());
    }
    let dialer = setup(
        c,
        a.connections + a.background_subscribers,
        a.timeout + a.baseline,
    )?;
    let meter = Meter::new(c.broker_pid);
    let subs = assign(
        a.background_subscribers,
        a.background_destinations,
        "uniform",
    )?;
    let specs = split(c, a.background_destinations, &subs, Some(&a));
    let processes = c.processes || specs.len() > 1;
    let mut fleet = Fleet::spawn(specs, c.processes, c.quiet)?;
    fleet.label = "storm: connecting background subscribers".into();
    let readies = fleet
        .wait_ready(Duration::from_secs_f64(
            c.setup_timeout * 2.0 + a.background_subscribers as f64 / 50.0 + 30.0,
        ))
        .await?;
    let (setup_summary, per_dest) = merge_ready(&readies, a.background_destinations);
    let mut rep = Report::new("storm", serde_json::json!({ "common": c, "storm": &a }));
    rep.row("broker", c.url.clone());
    let background = a.background_subscribers > 0;
    let mut steps = Vec::new();
    let mut hists = Vec::new();
    let mut pubs = if background {
        connect_publishers(c, &dialer, 1, a.background_destinations).await?
    } else {
        Vec::new()
    };
    if background {
        setup_rows(&mut rep, &setup_summary, "background subscribers");
        let (p, r, h) = run_step(
            &mut fleet,
            pubs,
            &per_dest,
            0,
            "background fan-out before the storm".into(),
            a.background_rate,
            Duration::from_secs_f64(a.baseline),
            a.drain,
            1000.0,
            &meter,
            None,
        )
        .await?;
        pubs = p;
        steps.push(r);
        hists.push(("before storm".to_string(), h));
    }
    let b0 = meter.broker_now();
    let storm_started = Instant::now();
    fleet.send_all(crate::worker::Command::Start);
    let activity: Vec<ActivityResult> = if background {
        let (tx, rx) = watch::channel(false);
        let mut until = |f: &Fleet| f.activity_finished();
        let label = format!(
            "storm of {} connections at {}/s, fan-out continues",
            a.connections,
            human(a.rate)
        );
        let (p, r, h) = run_step(
            &mut fleet,
            pubs,
            &per_dest,
            1,
            label,
            a.background_rate,
            Duration::from_secs_f64(a.timeout),
            a.drain,
            1000.0,
            &meter,
            Some((rx, &tx, &mut until)),
        )
        .await?;
        pubs = p;
        steps.push(r);
        hists.push(("during storm".to_string(), h));
        fleet
            .wait_activity(Duration::from_secs_f64(a.timeout + 30.0))
            .await?
    } else {
        fleet.label = format!(
            "storm of {} connections at {}/s",
            a.connections,
            human(a.rate)
        );
        fleet
            .wait_activity(Duration::from_secs_f64(a.timeout + 30.0))
            .await?
    };
    let storm_wall = storm_started.elapsed().as_secs_f64();
    let b1 = meter.broker_now();
    drop(pubs);
    let finals = fleet.stop().await?;
    let ok: u64 = activity.iter().map(|x| x.ok).sum();
    let attempted: u64 = activity.iter().map(|x| x.attempted).sum();
    let elapsed = activity.iter().map(|x| x.elapsed_secs).fold(0.0, f64::max);
    let failures = merge_failures(activity.iter().map(|x| &x.failures));
    let setup_lat = Percentiles::of(&merge_hist(activity.iter().map(|x| x.setup.clone())));
    rep.section("storm");
    rep.row(
        "connections",
        format!("{ok} of {attempted} set up (TCP + handshake + CONNECT + SUBSCRIBE/RECEIPT)"),
    );
    rep.row(
        "time to set up all",
        format!(
            "{elapsed:.2} s (target rate {}/s, achieved {}/s)",
            human(a.rate),
            human(ok as f64 / elapsed.max(1e-9))
        ),
    );
    rep.row("failures", failures_text(&failures));
    rep.latency_row("setup latency", &setup_lat);
    if let (Some(x), Some(y)) = (b0, b1) {
        rep.row(
            "broker during storm",
            format!(
                "CPU {:.0}% of one core, RSS {} -> {}",
                (y.cpu_secs - x.cpu_secs) / storm_wall * 100.0,
                mib(x.rss_bytes as f64),
                mib(y.rss_bytes as f64)
            ),
        );
    }
    for s in &steps {
        step_rows(&mut rep, s);
    }
    let tool = tool_usage(&meter, &finals, processes);
    tool_rows(&mut rep, &tool, &finals);
    rep.set(
        "storm",
        serde_json::json!({
            "attempted": attempted, "ok": ok, "failures": failures, "failed": attempted - ok.min(attempted),
            "elapsed_secs": elapsed, "achieved_rate": ok as f64 / elapsed.max(1e-9), "setup_latency": setup_lat,
        }),
    );
    rep.set("background_setup", &setup_summary);
    rep.set("background_steps", &steps);
    rep.set("tool", &tool);
    if let Some(path) = &a.svg {
        let series: Vec<(String, &Histogram<u64>)> =
            hists.iter().map(|(l, h)| (l.clone(), h)).collect();
        std::fs::write(path, latency_svg(&series)).map_err(|e| format!("writing {path}: {e}"))?;
        rep.row("latency plot", path.clone());
    }
    rep.finish(c.json.as_deref())?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct MemSample {
    t_secs: f64,
    rss_bytes: u64,
    open: u64,
}

pub async fn churn(c: &Common, a: ChurnArgs) -> Result<(), String> {
    if !(a.rate > 0.0) || !(a.hold >= 0.0) {
        return Err("--rate must be positive and --hold not negative".into());
    }
    let steady = (a.rate * a.hold * 1.5) as u64 + 100;
    setup(c, steady, a.duration + a.settle + a.hold)?;
    let meter = Meter::new(c.broker_pid);
    let workers = steady.div_ceil(c.per_worker).max(1) as usize;
    let specs: Vec<WorkerSpec> = (0..workers)
        .map(|w| {
            let mut s = base_spec(c, w, 1);
            s.churn = Some(ChurnSpec {
                rate: a.rate / workers as f64,
                duration_ms: (a.duration * 1000.0) as u64,
                hold_ms: (a.hold * 1000.0) as u64,
                destinations: a.destinations,
                first_conn: w as u64 * 10_000_000,
                abrupt_every: a.abrupt_every,
                max_open: c.per_worker as usize,
            });
            s
        })
        .collect();
    let processes = c.processes || workers > 1;
    let before = meter.broker0;
    let registry_before = match &c.metrics_url {
        Some(url) => Some(crate::broker_metrics::scrape(url).await?),
        None => None,
    };
    let mut fleet = Fleet::spawn(specs, c.processes, c.quiet)?;
    fleet.wait_ready(Duration::from_secs(30)).await?;
    fleet.label = format!("churn at {}/s, hold {} s", human(a.rate), a.hold);
    fleet.send_all(crate::worker::Command::Start);
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while !fleet.activity_finished() {
        fleet
            .pump(Duration::from_secs_f64(a.sample_every.max(0.1)))
            .await?;
        if let Some(s) = meter.broker_now() {
            let open = fleet.progress.iter().map(|p| p.open).sum();
            samples.push(MemSample {
                t_secs: t0.elapsed().as_secs_f64(),
                rss_bytes: s.rss_bytes,
                open,
            });
        }
        if t0.elapsed().as_secs_f64() > a.duration + a.hold + c.setup_timeout * 2.0 + 30.0 {
            return Err("churn did not finish in time".into());
        }
    }
    let activity = fleet.wait_activity(Duration::from_secs(5)).await?;
    fleet.label = "churn done: settling".into();
    fleet.pump(Duration::from_secs_f64(a.settle)).await?;
    let after = meter.broker_now();
    let registry_after = match &c.metrics_url {
        Some(url) => Some(crate::broker_metrics::scrape(url).await?),
        None => None,
    };
    let finals = fleet.stop().await?;
    let ok: u64 = activity.iter().map(|x| x.ok).sum();
    let attempted: u64 = activity.iter().map(|x| x.attempted).sum();
    let closed: u64 = activity.iter().map(|x| x.closed_ok).sum();
    let no_receipt: u64 = activity.iter().map(|x| x.closed_without_receipt).sum();
    let skipped: u64 = activity.iter().map(|x| x.skipped_at_limit).sum();
    let elapsed = activity.iter().map(|x| x.elapsed_secs).fold(0.0, f64::max);
    let failures = merge_failures(activity.iter().map(|x| &x.failures));
    let close_failures = merge_failures(activity.iter().map(|x| &x.close_failures));
    let setup_lat = Percentiles::of(&merge_hist(activity.iter().map(|x| x.setup.clone())));
    let peak: u64 = activity.iter().map(|x| x.peak_open).sum();
    let mut rep = Report::new("churn", serde_json::json!({ "common": c, "churn": &a }));
    rep.row("broker", c.url.clone());
    rep.row("connects", format!("{ok} of {attempted} in {elapsed:.1} s = {}/s (target {}/s); skipped at the open limit {skipped}", human(ok as f64 / elapsed.max(1e-9)), human(a.rate)));
    let abrupt = if a.abrupt_every > 0 {
        format!("every {}th dropped without DISCONNECT", a.abrupt_every)
    } else {
        "all with DISCONNECT".into()
    };
    rep.row(
        "disconnects",
        format!("{closed} closed ({abrupt}; {no_receipt} DISCONNECTs answered by a close without RECEIPT); failures: {}", failures_text(&close_failures)),
    );
    rep.row("setup failures", failures_text(&failures));
    rep.latency_row("setup latency", &setup_lat);
    rep.row("peak open", peak.to_string());
    let rss = |s: Option<ProcSample>| {
        s.map(|s| mib(s.rss_bytes as f64))
            .unwrap_or_else(|| "n/a (no --broker-pid)".into())
    };
    let during_max = samples.iter().map(|s| s.rss_bytes).max();
    let during_min = samples.iter().map(|s| s.rss_bytes).min();
    rep.row("broker RSS before", rss(before));
    if let (Some(lo), Some(hi)) = (during_min, during_max) {
        rep.row(
            "broker RSS during",
            format!("{} .. {}", mib(lo as f64), mib(hi as f64)),
        );
    }
    rep.row(
        "broker RSS after",
        format!("{} ({} s after the churn)", rss(after), a.settle),
    );
    if let (Some(b), Some(x)) = (before, after) {
        rep.row(
            "after - before",
            format!(
                "{:+.1} MiB",
                (x.rss_bytes as f64 - b.rss_bytes as f64) / 1048576.0
            ),
        );
    }
    if let (Some(b), Some(x)) = (registry_before, registry_after) {
        rep.row("broker registry before", b.to_string());
        rep.row(
            "broker registry after",
            format!("{x} ({} s after the churn)", a.settle),
        );
    }
    let tool = tool_usage(&meter, &finals, processes);
    tool_rows(&mut rep, &tool, &finals);
    rep.set("broker_registry_before", registry_before);
    rep.set("broker_registry_after", registry_after);
    rep.set(
        "churn",
        serde_json::json!({
            "attempted": attempted, "ok": ok, "closed_ok": closed, "closed_without_receipt": no_receipt, "failures": failures, "close_failures": close_failures,
            "skipped_at_limit": skipped, "elapsed_secs": elapsed, "achieved_rate": ok as f64 / elapsed.max(1e-9),
            "setup_latency": setup_lat, "peak_open": peak,
        }),
    );
    rep.set("broker_rss_before", before.map(|s| s.rss_bytes));
    rep.set("broker_rss_after", after.map(|s| s.rss_bytes));
    rep.set("broker_rss_during", &samples);
    rep.set("tool", &tool);
    rep.finish(c.json.as_deref())?;
    Ok(())
}

pub async fn idle(c: &Common, a: IdleArgs) -> Result<(), String> {
    setup(c, a.connections, a.settle + a.hold)?;
    if c.broker_pid.is_none() {
        eprintln!("stompede-load: no --broker-pid: the broker's memory cannot be measured, only the connections held");
    }
    let meter = Meter::new(c.broker_pid);
    let before = meter.broker0;
    let subs = assign(a.connections, a.destinations, "uniform")?;
    let specs = split(c, a.destinations, &subs, None);
    let processes = c.processes || specs.len() > 1;
    let mut fleet = Fleet::spawn(specs, c.processes, c.quiet)?;
    fleet.label = format!("idle: opening {} subscribed connections", a.connections);
    let readies = fleet
        .wait_ready(Duration::from_secs_f64(
            c.setup_timeout * 2.0 + a.connections as f64 / 50.0 + 30.0,
        ))
        .await?;
    let (setup_summary, _) = merge_ready(&readies, a.destinations);
    fleet.label = "idle: settling".into();
    fleet.pump(Duration::from_secs_f64(a.settle)).await?;
    // Three samples a second apart; the median is the figure.
    let mut rss: Vec<u64> = Vec::new();
    for i in 0..3 {
        if i > 0 {
            fleet.pump(Duration::from_secs(1)).await?;
        }
        if let Some(s) = meter.broker_now() {
            rss.push(s.rss_bytes);
        }
    }
    rss.sort_unstable();
    let after = rss.get(rss.len() / 2).copied();
    fleet.label = "idle: holding".into();
    fleet.pump(Duration::from_secs_f64(a.hold)).await?;
    let open_at_end: u64 = fleet.progress.iter().map(|p| p.open).sum();
    let finals = fleet.stop().await?;
    let n = setup_summary.subscribed;
    let per_conn = match (before, after) {
        (Some(b), Some(x)) if n > 0 => Some((x as f64 - b.rss_bytes as f64) / n as f64),
        _ => None,
    };
    let tool = tool_usage(&meter, &finals, processes);
    let mut rep = Report::new("idle", serde_json::json!({ "common": c, "idle": &a }));
    rep.row("broker", c.url.clone());
    setup_rows(&mut rep, &setup_summary, "connections");
    rep.row("still open at the end", open_at_end.to_string());
    rep.row(
        "broker RSS empty",
        before
            .map(|b| mib(b.rss_bytes as f64))
            .unwrap_or_else(|| "n/a".into()),
    );
    rep.row(
        "broker RSS loaded",
        after.map(|b| mib(b as f64)).unwrap_or_else(|| "n/a".into()),
    );
    rep.row(
        "broker memory per connection",
        per_conn
            .map(|p| format!("{:.1} KB ({:.0} bytes)", p / 1000.0, p))
            .unwrap_or_else(|| "n/a".into()),
    );
    rep.row(
        "tool memory per connection",
        format!("{:.1} KB", tool.rss_bytes as f64 / n.max(1) as f64 / 1000.0),
    );
    tool_rows(&mut rep, &tool, &finals);
    rep.set("setup", &setup_summary);
    rep.set("open_at_end", open_at_end);
    rep.set("broker_rss_before", before.map(|s| s.rss_bytes));
    rep.set("broker_rss_loaded", after);
    rep.set("broker_bytes_per_connection", per_conn);
    rep.set("tool", &tool);
    rep.finish(c.json.as_deref())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_is_balanced_and_skewed() {
        let u = assign(10, 3, "uniform").unwrap();
        assert_eq!(u.len(), 10);
        assert_eq!(u.iter().filter(|&&d| d == 0).count(), 4);
        let z = assign(1000, 10, "zipf").unwrap();
        let c0 = z.iter().filter(|&&d| d == 0).count();
        let c9 = z.iter().filter(|&&d| d == 9).count();
        assert!(c0 > 5 * c9, "{c0} {c9}");
        assert!(assign(5, 2, "pareto").is_err());
    }
}

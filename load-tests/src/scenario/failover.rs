//! `failover`: readers on every node of a cluster (a destination each),
//! comments published at a steady rate to the nodes that stay up; one node
//! is killed (SIGKILL, `--kill-pid`) and its readers come back on the other
//! nodes the way the example page does (jittered backoff, then SUBSCRIBE
//! with `x-since-offset`/`x-since-epoch` from the last MESSAGE seen). The
//! report: how long until every one of them had resumed (its RECEIPT, which
//! comes after the messages from history), what the RECEIPTs said
//! (`x-recovered`), whether every reader ended with every offset of its
//! destination exactly once, and what the resumes cost in Redis reads (the
//! nodes' `stompede_engine_roundtrip_seconds_count{operation="history"}`,
//! and Redis's own `INFO commandstats` with `--redis`).
//!
//! The readers live in child processes (`worker/failover.rs`), `--per-worker`
//! each; reader `i` starts on `--url` `i mod N`, subscribed to destination
//! `(i / N) mod D`.

use super::{rate, RunContext};
use crate::broker_metrics;
use crate::format::{self, human, mib};
use crate::publisher::{PublishStep, Publisher, Via};
use crate::stats::{new_histogram, Percentiles};
use crate::sys::now_ns;
use crate::target::Target;
use crate::wire::{from_line, to_line, Failures, Final};
use crate::worker::failover::{
    FailoverCommand, FailoverEvent, FailoverProgress, FailoverReady, FailoverResult, FailoverSpec,
    LATENCY_BIN_NS,
};
use crate::Common;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

#[derive(Args, Debug, Clone, Serialize)]
pub struct FailoverArgs {
    /// Readers on each node (each `--url`) before the kill.
    #[arg(long, default_value_t = 12_000)]
    pub readers_per_node: u64,
    /// Destinations the readers are spread over (equally, on every node).
    #[arg(long, default_value_t = 10)]
    pub destinations: u32,
    /// Comments per second, round-robin over the destinations, by HTTP POST
    /// to the nodes that are not killed, in turn (not `--publish`).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing before the kill.
    #[arg(long, default_value_t = 5.0)]
    pub before: f64,
    /// Seconds publishing goes on after the last reader has resumed.
    #[arg(long, default_value_t = 3.0)]
    pub after: f64,
    /// Which `--url`'s node is killed (0-based; default: the last).
    #[arg(long)]
    pub kill_node: Option<usize>,
    /// That node's pid (it gets SIGKILL). It must be a process whose
    /// command line names the node's address (host:port), or the run stops.
    #[arg(long)]
    pub kill_pid: u32,
    /// Most seconds from the kill until every reader has resumed.
    #[arg(long, default_value_t = 60.0)]
    pub resume_timeout: f64,
    /// After a drop a reader waits this many ms first (stompjs' `reconnectDelay` on the page) ...
    #[arg(long, default_value_t = 100)]
    pub reconnect_delay_ms: u64,
    /// ... then half of this plus up to as much again (the page's first
    /// backoff: 0.5-1 s); each failed try doubles it ...
    #[arg(long, default_value_t = 1000)]
    pub backoff_ms: u64,
    /// ... up to this (the page's cap).
    #[arg(long, default_value_t = 15_000)]
    pub backoff_cap_ms: u64,
    /// Redis (`host:port`, loopback) whose `INFO commandstats` is read
    /// before the kill, once every reader has resumed, and at the end.
    #[arg(long)]
    pub redis: Option<String>,
    /// Most seconds to wait at the end for every reader to have the last message.
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
}

/// What the nodes' `/metrics` and Redis said at one moment.
#[derive(Debug, Clone, Default, Serialize)]
struct Sample {
    /// Per node (`--url` order; `None`: no answer, e.g. the killed node).
    history_reads: Vec<Option<f64>>,
    resumes_true: Vec<Option<f64>>,
    resumes_false: Vec<Option<f64>>,
    replayed: Vec<Option<f64>>,
    connections: Vec<Option<f64>>,
    /// Redis `cmdstat_*` calls, by command.
    redis_calls: BTreeMap<String, u64>,
    /// Publishes the tool had sent so far.
    published: u64,
}

pub async fn run(common: &Common, args: FailoverArgs) -> Result<(), String> {
    let nodes = common.url.len();
    if nodes < 2 {
        return Err("failover needs at least two --urls (the killed node and the others)".into());
    }
    let kill_node = args.kill_node.unwrap_or(nodes - 1);
    if kill_node >= nodes {
        return Err(format!("--kill-node {kill_node}: there are {nodes} --urls"));
    }
    if args.rate.is_nan() || args.rate <= 0.0 || args.destinations == 0 {
        return Err("--rate and --destinations must be positive".into());
    }
    let ws = super::ws_targets(common)?;
    check_pid(args.kill_pid, &ws[kill_node].authority)?;
    let total = args.readers_per_node * nodes as u64;
    let mut run = RunContext::new(
        common,
        "failover",
        total,
        args.before + args.resume_timeout + args.after + args.drain,
    )
    .await?;
    let survivors: Vec<usize> = (0..nodes).filter(|&n| n != kill_node).collect();
    let publish_targets = survivors
        .iter()
        .map(|&n| {
            Target::parse(
                &format!("http://{}/api/v1/publish", ws[n].authority),
                "http",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let via = Via::Http(publish_targets);
    run.cluster.publishing = via.describe(nodes);
    let http = |n: usize| format!("http://{}", ws[n].authority);
    let reader = http(survivors[0]);
    let dest_names: Vec<String> = (0..args.destinations)
        .map(|d| format!("{}{d}", common.dest_prefix))
        .collect();

    // The readers, in worker processes.
    let workers = total.div_ceil(common.per_worker).max(1);
    let mut specs = Vec::new();
    for w in 0..workers {
        let first = w * common.per_worker;
        let readers = common.per_worker.min(total - first);
        specs.push(FailoverSpec {
            worker: w as usize,
            urls: common.url.clone(),
            creds: super::credentials(common),
            dest_prefix: common.dest_prefix.clone(),
            destinations: args.destinations,
            first_reader: first,
            readers,
            setup_timeout_ms: (common.setup_timeout * 1000.0) as u64,
            setup_concurrency: common.setup_concurrency,
            reconnect_delay_ms: args.reconnect_delay_ms,
            backoff_ms: args.backoff_ms,
            backoff_cap_ms: args.backoff_cap_ms,
            retry_for_ms: (args.resume_timeout * 1000.0) as u64,
        });
    }
    let mut fleet = Workers::spawn(specs, common.quiet)?;
    let ready_timeout =
        Duration::from_secs_f64(common.setup_timeout * 2.0 + total as f64 / 50.0 + 30.0);
    let readies = fleet.wait_ready(ready_timeout).await?;
    let subscribed: u64 = readies.iter().map(|r| r.subscribed).sum();
    let mut per_node = vec![0u64; nodes];
    let mut setup_failures = Failures::new();
    let mut setup_latency = new_histogram();
    for ready in &readies {
        for (n, count) in ready.per_node.iter().enumerate() {
            per_node[n] += count;
        }
        for (cause, count) in &ready.failures {
            *setup_failures.entry(cause.clone()).or_default() += count;
        }
        ready.setup.add_to(&mut setup_latency);
    }
    let setup_secs = readies.iter().map(|r| r.setup_secs).fold(0.0, f64::max);
    let on_killed = per_node[kill_node];

    let mut report = run.report(&args);
    report.section("readers");
    report.row(
        "subscribed",
        format!(
            "{subscribed} of {total} in {setup_secs:.1} s ({} per --url); failures: {}",
            per_node
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            format::failures(&setup_failures)
        ),
    );
    report.latency_row("setup latency", &Percentiles::of(&setup_latency));

    // Where the destinations start.
    let mut start = Vec::new();
    for name in &dest_names {
        start.push(position(&reader, name).await?.0);
    }

    // Publishing, from now until told to stop.
    let published = Arc::new(AtomicU64::new(0));
    let mut publisher = Publisher::connect(
        &via,
        &run.dialer,
        total + 17,
        (0..args.destinations).collect(),
        &common.dest_prefix,
        common.body_size,
    )
    .await?;
    let (stop_publishing, stop_rx) = watch::channel(false);
    let publishing = {
        let (published, rate) = (published.clone(), args.rate);
        tokio::spawn(async move {
            publisher
                .run_step(
                    0,
                    rate,
                    Duration::from_secs_f64(crate::MAX_SECONDS),
                    Some(stop_rx),
                    published,
                )
                .await
        })
    };
    fleet.label = format!("publishing {}/s before the kill", human(args.rate));
    fleet.pump(Duration::from_secs_f64(args.before)).await?;

    // The kill.
    let before = sample(&ws, args.redis.as_deref(), &published).await;
    let kill_ns = now_ns();
    let killed_at = Instant::now();
    // SAFETY: kill(2) with a pid checked above to be the node's.
    if unsafe { libc::kill(args.kill_pid as libc::pid_t, libc::SIGKILL) } != 0 {
        return Err(format!(
            "kill -KILL {}: {}",
            args.kill_pid,
            std::io::Error::last_os_error()
        ));
    }
    fleet.label = format!("killed node {kill_node}; its readers resume");
    let deadline = killed_at + Duration::from_secs_f64(args.resume_timeout + 5.0);
    let all_back = loop {
        let p = fleet.totals();
        if p.dropped >= on_killed && p.up + p.gave_up >= subscribed {
            break p.gave_up == 0;
        }
        if Instant::now() >= deadline {
            break false;
        }
        fleet.pump(Duration::from_millis(100)).await?;
    };
    let seen_back_secs = killed_at.elapsed().as_secs_f64();
    let resumed_sample = sample(&ws, args.redis.as_deref(), &published).await;
    fleet.label = "every reader back; publishing goes on".into();
    fleet.pump(Duration::from_secs_f64(args.after)).await?;
    let _ = stop_publishing.send(true);
    let step: PublishStep = publishing
        .await
        .map_err(|e| format!("publisher task: {e}"))?;

    // Before the history reads of the next lines (one per destination).
    let after = sample(&ws, args.redis.as_deref(), &published).await;
    // Where the destinations end.
    let mut last = Vec::new();
    let mut epochs = Vec::new();
    for name in &dest_names {
        let (offset, epoch) = position(&reader, name).await?;
        last.push(offset);
        epochs.push(epoch);
    }
    fleet.label = "waiting for the last messages".into();
    fleet.send_all(&FailoverCommand::Finish {
        start: start.clone(),
        last: last.clone(),
        epoch: epochs.clone(),
        kill_ns,
        drain_ms: (args.drain * 1000.0) as u64,
    });
    let results = fleet
        .wait_done(Duration::from_secs_f64(args.drain + 60.0))
        .await?;
    fleet.wait_exit().await;

    // Merged.
    let mut all = FailoverResult {
        per_node_end: vec![0; nodes],
        ..Default::default()
    };
    let (mut since_kill, mut since_drop, mut replay) =
        (new_histogram(), new_histogram(), new_histogram());
    for r in &results {
        all.readers += r.readers;
        all.dropped_readers += r.dropped_readers;
        all.drops += r.drops;
        all.recovered_true += r.recovered_true;
        all.recovered_false += r.recovered_false;
        all.recovered_missing += r.recovered_missing;
        all.not_resumed += r.not_resumed;
        all.gave_up += r.gave_up;
        all.complete += r.complete;
        all.missed += r.missed;
        all.duplicated += r.duplicated;
        all.readers_missing += r.readers_missing;
        all.readers_duplicated += r.readers_duplicated;
        all.other_epoch += r.other_epoch;
        all.replayed += r.replayed;
        all.received += r.received;
        all.tries += r.tries;
        for (cause, count) in &r.failures {
            *all.failures.entry(cause.clone()).or_default() += count;
        }
        for (n, count) in r.per_node_end.iter().enumerate() {
            all.per_node_end[n] += count;
        }
        all.last_resume_ns = all.last_resume_ns.max(r.last_resume_ns);
        r.since_kill.add_to(&mut since_kill);
        r.since_drop.add_to(&mut since_drop);
        r.subscribe_to_receipt.add_to(&mut replay);
    }
    // Live latencies: before the kill, from the kill to the last resume, after.
    let all_resumed_ns = all.last_resume_ns.max(kill_ns);
    let (mut live_before, mut live_during, mut live_after, mut replayed_latency) = (
        new_histogram(),
        new_histogram(),
        new_histogram(),
        new_histogram(),
    );
    let mut by_second: BTreeMap<i64, Histogram<u64>> = BTreeMap::new();
    for r in &results {
        r.replayed_latency.add_to(&mut replayed_latency);
        for (i, bin) in r.live_latency.iter().enumerate() {
            let from = r.latency_t0_ns + i as u64 * LATENCY_BIN_NS;
            let to = from + LATENCY_BIN_NS;
            let phase = if to <= kill_ns {
                &mut live_before
            } else if from >= all_resumed_ns {
                &mut live_after
            } else {
                &mut live_during
            };
            bin.add_to(phase);
            let second = (from as i64 - kill_ns as i64).div_euclid(1_000_000_000);
            bin.add_to(by_second.entry(second).or_insert_with(new_histogram));
        }
    }
    let all_resumed_secs = if all.last_resume_ns > kill_ns {
        (all.last_resume_ns - kill_ns) as f64 / 1e9
    } else {
        0.0
    };

    report.section("publishing");
    let pub_secs = step.published as f64 / args.rate;
    report.row(
        "comments",
        format!(
            "{} published at {}/s over {pub_secs:.1} s ({} accepted, {} failed{}); max lag {:.1} ms",
            step.published,
            human(args.rate),
            step.accepted,
            step.failed,
            step.first_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            step.max_lag_ms
        ),
    );
    report.row(
        "offsets",
        format!(
            "{} (start -> last, per destination); epochs: {}",
            start
                .iter()
                .zip(&last)
                .map(|(a, b)| format!("{a}->{b}"))
                .collect::<Vec<_>>()
                .join(" "),
            distinct(&epochs)
        ),
    );
    report.section(&format!(
        "the kill: node {kill_node} ({}), pid {}, after {:.1} s of publishing",
        ws[kill_node].authority, args.kill_pid, args.before
    ));
    report.row(
        "readers dropped",
        format!(
            "{} (of {on_killed} on the killed node), {} drops in all",
            all.dropped_readers, all.drops
        ),
    );
    report.row(
        "resumed",
        format!(
            "x-recovered:true {}, x-recovered:false {}, no x-recovered {}; not back at the end {}, gave up {}",
            all.recovered_true,
            all.recovered_false,
            all.recovered_missing,
            all.not_resumed,
            all.gave_up
        ),
    );
    report.row(
        "all resumed",
        format!(
            "{} {all_resumed_secs:.2} s after the kill (the last RECEIPT; the coordinator saw it at {seen_back_secs:.1} s)",
            if all_back { "yes:" } else { "NO: by" }
        ),
    );
    report.latency_row("resumed, from the kill", &Percentiles::of(&since_kill));
    report.latency_row("resumed, from the drop", &Percentiles::of(&since_drop));
    report.latency_row("resuming SUBSCRIBE to RECEIPT", &Percentiles::of(&replay));
    report.row(
        "tries",
        format!(
            "{} reconnect tries for {} resumes; failed tries: {}",
            all.tries,
            all.recovered_true + all.recovered_false + all.recovered_missing,
            format::failures(&all.failures)
        ),
    );
    report.row(
        "readers per --url at the end",
        all.per_node_end
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" / "),
    );
    report.latency_row(
        "missed comments, publish to replay",
        &Percentiles::of(&replayed_latency),
    );
    report.section("live publish-to-receive latency, by when the message was published");
    report.latency_row("before the kill", &Percentiles::of(&live_before));
    report.latency_row("kill to last resume", &Percentiles::of(&live_during));
    report.latency_row("after", &Percentiles::of(&live_after));
    report.row(
        "p99 per second (0 = the kill's)",
        by_second
            .iter()
            .map(|(second, h)| format!("{second}: {}", format::ms(Percentiles::of(h).p99_ms)))
            .collect::<Vec<_>>()
            .join(", ")
            + " ms",
    );
    report.section("every reader checked (offsets start+1..=last, once each)");
    let nothing_missed = all.missed == 0
        && all.duplicated == 0
        && all.other_epoch == 0
        && all.complete == subscribed;
    report.row(
        "complete",
        format!(
            "{} of {subscribed} readers: {}",
            all.complete,
            format::verdict(nothing_missed)
        ),
    );
    report.row(
        "missed / duplicated",
        format!(
            "{} missed ({} readers), {} duplicated ({} readers), {} readers saw another epoch",
            all.missed,
            all.readers_missing,
            all.duplicated,
            all.readers_duplicated,
            all.other_epoch
        ),
    );
    report.row(
        "messages",
        format!(
            "{} received, {} of them replayed from history (before a resume's RECEIPT)",
            all.received, all.replayed
        ),
    );

    report.section("what the resumes cost");
    let delta = |a: &[Option<f64>], b: &[Option<f64>]| -> Vec<Option<f64>> {
        a.iter()
            .zip(b)
            .map(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => Some(y - x),
                _ => None,
            })
            .collect()
    };
    let show = |v: &[Option<f64>]| {
        v.iter()
            .map(|x| x.map_or("-".to_string(), |x| format!("{x:.0}")))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let sum = |v: &[Option<f64>]| v.iter().flatten().sum::<f64>();
    let reads = delta(&before.history_reads, &resumed_sample.history_reads);
    let reads_all = delta(&before.history_reads, &after.history_reads);
    report.row(
        "history reads (nodes)",
        format!(
            "{:.0} from the kill to the last resume ({} per --url; \"-\": the killed node), {:.0} until publishing stopped; {:.2} per resume",
            sum(&reads),
            show(&reads),
            sum(&reads_all),
            sum(&reads) / (all.recovered_true + all.recovered_false).max(1) as f64
        ),
    );
    report.row(
        "resumes (nodes)",
        format!(
            "recovered true {:.0}, false {:.0}; replayed {:.0} messages",
            sum(&delta(&before.resumes_true, &after.resumes_true)),
            sum(&delta(&before.resumes_false, &after.resumes_false)),
            sum(&delta(&before.replayed, &after.replayed))
        ),
    );
    if args.redis.is_some() {
        let calls = |s: &Sample, c: &str| s.redis_calls.get(c).copied().unwrap_or(0);
        let window_publishes = resumed_sample.published - before.published;
        for (label, a, b, publishes) in [
            (
                "Redis, kill -> last resume",
                &before,
                &resumed_sample,
                window_publishes,
            ),
            (
                "Redis, kill -> end",
                &before,
                &after,
                after.published - before.published,
            ),
        ] {
            let evalsha = calls(b, "evalsha").saturating_sub(calls(a, "evalsha"));
            let eval = calls(b, "eval").saturating_sub(calls(a, "eval"));
            let all_calls: u64 = b.redis_calls.values().sum::<u64>()
                - a.redis_calls
                    .values()
                    .sum::<u64>()
                    .min(b.redis_calls.values().sum());
            report.row(
                label,
                format!(
                    "evalsha {evalsha}, eval {eval}, all commands {all_calls}; publishes sent meanwhile {publishes} (each is one evalsha)"
                ),
            );
        }
    }
    report.row(
        "reader memory (workers)",
        mib(results.iter().map(|r| r.rss_bytes).sum()),
    );
    report.set(
        "failover",
        serde_json::json!({
            "subscribed": subscribed,
            "per_node": per_node,
            "on_killed_node": on_killed,
            "kill_node": kill_node,
            "all_back": all_back,
            "all_resumed_secs": all_resumed_secs,
            "seen_back_secs": seen_back_secs,
            "nothing_missed": nothing_missed,
            "result": all,
            "since_kill": Percentiles::of(&since_kill),
            "since_drop": Percentiles::of(&since_drop),
            "subscribe_to_receipt": Percentiles::of(&replay),
            "replayed_latency": Percentiles::of(&replayed_latency),
            "live_before": Percentiles::of(&live_before),
            "live_during": Percentiles::of(&live_during),
            "live_after": Percentiles::of(&live_after),
            "live_by_second_from_kill": by_second
                .iter()
                .map(|(second, h)| (second.to_string(), Percentiles::of(h)))
                .collect::<BTreeMap<_, _>>(),
            "start": start,
            "last": last,
            "epochs": epochs,
            "published": step,
            "publish_rate_achieved": rate(step.published, pub_secs),
            "setup_failures": setup_failures,
            "setup_latency": Percentiles::of(&setup_latency),
        }),
    );
    report.set(
        "samples",
        serde_json::json!({ "before_kill": before, "all_resumed": resumed_sample, "end": after }),
    );
    let finals: Vec<Final> = results
        .iter()
        .map(|r| Final {
            cpu_secs: r.cpu_secs,
            rss_bytes: r.rss_bytes,
            ..Default::default()
        })
        .collect();
    let tool = run.meter.tool_usage(&finals, true);
    run.finish(report, &tool, &finals, None, &[])
}

/// Refuses a pid whose command line does not name `authority` (so that a
/// wrong pid kills nothing else).
fn check_pid(pid: u32, authority: &str) -> Result<(), String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| format!("--kill-pid {pid}: {e}"))?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if cmdline.contains(authority) {
        Ok(())
    } else {
        Err(format!(
            "--kill-pid {pid} ({cmdline:?}) does not name {authority}: not killing it"
        ))
    }
}

/// Destination `name`'s latest offset and epoch, from `GET /api/v1/history`.
async fn position(http: &str, name: &str) -> Result<(u64, Option<String>), String> {
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("{http}/api/v1/history?destination={encoded}&limit=0");
    let (status, body) = broker_metrics::get(&url).await?;
    if status != 200 {
        return Err(format!("{url}: HTTP {status}: {body}"));
    }
    let value: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| format!("{url}: {e}: {body}"))?;
    Ok((
        value["offset"].as_u64().unwrap_or(0),
        value["epoch"].as_str().map(str::to_string),
    ))
}

/// "10 (one per destination): a, b, ..." (the first three).
fn distinct(epochs: &[Option<String>]) -> String {
    let mut all: Vec<String> = epochs
        .iter()
        .map(|e| e.clone().unwrap_or_else(|| "none".into()))
        .collect();
    all.sort();
    all.dedup();
    let shown: Vec<&str> = all.iter().take(3).map(String::as_str).collect();
    format!(
        "{} distinct: {}{}",
        all.len(),
        shown.join(", "),
        if all.len() > 3 { ", ..." } else { "" }
    )
}

/// Every node's counters, Redis's command counts, and the publishes so far.
async fn sample(ws: &[Target], redis: Option<&str>, published: &AtomicU64) -> Sample {
    let mut s = Sample {
        published: published.load(Ordering::Relaxed),
        ..Default::default()
    };
    for target in ws {
        let url = format!("http://{}/metrics", target.authority);
        let body = match broker_metrics::get(&url).await {
            Ok((200, body)) => Some(body),
            _ => None,
        };
        let get =
            |name: &str, label: Option<&str>| body.as_deref().map(|b| metric_sum(b, name, label));
        s.history_reads.push(get(
            "stompede_engine_roundtrip_seconds_count",
            Some("operation=\"history\""),
        ));
        s.resumes_true
            .push(get("stompede_resumes_total", Some("recovered=\"true\"")));
        s.resumes_false
            .push(get("stompede_resumes_total", Some("recovered=\"false\"")));
        s.replayed
            .push(get("stompede_history_replayed_messages_total", None));
        s.connections.push(get("stompede_connections", None));
    }
    if let Some(addr) = redis {
        match redis_info(addr).await {
            Ok(info) => {
                for line in info.lines() {
                    let Some(rest) = line.strip_prefix("cmdstat_") else {
                        continue;
                    };
                    let Some((command, stats)) = rest.split_once(':') else {
                        continue;
                    };
                    let calls = stats
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("calls="))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    s.redis_calls.insert(command.to_string(), calls);
                }
            }
            Err(e) => eprintln!("stompede-load: redis INFO: {e}"),
        }
    }
    s
}

/// The sum of every series `name` (with `label` among its labels, if
/// given) in a Prometheus text answer.
fn metric_sum(body: &str, name: &str, label: Option<&str>) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l),
                None => (series, ""),
            };
            if series_name != name || label.is_some_and(|l| !labels.contains(l)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// `INFO commandstats` from a loopback Redis (RESP, one inline command).
async fn redis_info(addr: &str) -> Result<String, String> {
    let target = Target::parse(&format!("http://{addr}/"), "http")?;
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"INFO commandstats\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        reader
            .read_line(&mut head)
            .await
            .map_err(|e| e.to_string())?;
        let len: usize = head
            .trim()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unexpected answer {head:?}"))?;
        let mut body = vec![0u8; len];
        reader
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

/// The coordinator's handle on its failover worker processes.
struct Workers {
    stdins: Vec<mpsc::UnboundedSender<String>>,
    events: mpsc::UnboundedReceiver<(usize, FailoverEvent)>,
    pending: Vec<(usize, FailoverEvent)>,
    progress: Vec<FailoverProgress>,
    children: Vec<tokio::process::Child>,
    label: String,
    quiet: bool,
    started: Instant,
    last_print: Instant,
}

impl Workers {
    fn spawn(specs: Vec<FailoverSpec>, quiet: bool) -> Result<Workers, String> {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let mut stdins = Vec::new();
        let mut children = Vec::new();
        let count = specs.len();
        for (worker, spec) in specs.into_iter().enumerate() {
            let mut child = tokio::process::Command::new(&exe)
                .arg("failover-worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start a failover worker: {e}"))?;
            let mut stdin = child.stdin.take().ok_or("worker stdin")?;
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            tx.send(to_line(&spec)?).map_err(|_| "worker stdin")?;
            tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    if stdin.write_all(line.as_bytes()).await.is_err()
                        || stdin.flush().await.is_err()
                    {
                        return;
                    }
                }
            });
            stdins.push(tx);
            let ev_tx = ev_tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let mut finished = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    match from_line::<FailoverEvent>(&line) {
                        Ok(event) => {
                            finished |=
                                matches!(event, FailoverEvent::Done(_) | FailoverEvent::Fatal(_));
                            if ev_tx.send((worker, event)).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("failover worker {worker}: unreadable {line:?}: {e}"),
                    }
                }
                if !finished {
                    let _ = ev_tx.send((
                        worker,
                        FailoverEvent::Fatal(format!("failover worker {worker} exited early")),
                    ));
                }
            });
            children.push(child);
        }
        Ok(Workers {
            stdins,
            events: ev_rx,
            pending: Vec::new(),
            progress: vec![FailoverProgress::default(); count],
            children,
            label: "connecting readers".into(),
            quiet,
            started: Instant::now(),
            last_print: Instant::now(),
        })
    }

    fn send_all(&self, command: &FailoverCommand) {
        if let Ok(line) = to_line(command) {
            for tx in &self.stdins {
                let _ = tx.send(line.clone());
            }
        }
    }

    fn totals(&self) -> FailoverProgress {
        let mut t = FailoverProgress::default();
        for p in &self.progress {
            t.up += p.up;
            t.dropped += p.dropped;
            t.resumed += p.resumed;
            t.gave_up += p.gave_up;
            t.received += p.received;
        }
        t
    }

    /// Takes events for `wait` (progress is kept, anything else queued).
    async fn pump(&mut self, wait: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(()),
                // Gone after their last event: let the caller look at it.
                Ok(None) if !self.pending.is_empty() => return Ok(()),
                Ok(None) => return Err("all failover workers are gone".into()),
                Ok(Some((worker, FailoverEvent::Progress(p)))) => {
                    self.progress[worker] = p;
                    self.print();
                }
                Ok(Some((_, FailoverEvent::Fatal(e)))) => return Err(e),
                Ok(Some(other)) => self.pending.push(other),
            }
        }
    }

    fn print(&mut self) {
        if self.quiet || self.last_print.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_print = Instant::now();
        let t = self.totals();
        eprintln!(
            "[{:6.1}s] {} | up {} | dropped {} | resumed {} | gave up {} | received {}",
            self.started.elapsed().as_secs_f64(),
            self.label,
            t.up,
            t.dropped,
            t.resumed,
            t.gave_up,
            t.received
        );
    }

    async fn gather<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        pick: impl Fn(&FailoverEvent) -> Option<T>,
    ) -> Result<Vec<T>, String> {
        let deadline = Instant::now() + timeout;
        let mut got: Vec<Option<T>> = (0..self.stdins.len()).map(|_| None).collect();
        loop {
            for (worker, event) in self.pending.drain(..) {
                if let Some(value) = pick(&event) {
                    got[worker] = Some(value);
                }
            }
            if got.iter().all(Option::is_some) {
                return Ok(got.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out waiting for the workers' {what}"));
            }
            self.pump(Duration::from_millis(100)).await?;
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<Vec<FailoverReady>, String> {
        self.gather(timeout, "readers", |e| match e {
            FailoverEvent::Ready(r) => Some(r.clone()),
            _ => None,
        })
        .await
    }

    async fn wait_done(&mut self, timeout: Duration) -> Result<Vec<FailoverResult>, String> {
        self.gather(timeout, "results", |e| match e {
            FailoverEvent::Done(r) => Some((**r).clone()),
            _ => None,
        })
        .await
    }

    async fn wait_exit(&mut self) {
        // Their stdin closes: nothing more to read.
        self.stdins.clear();
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metrics_are_summed_by_name_and_label() {
        let body = "# HELP x\nstompede_resumes_total{recovered=\"true\"} 5\nstompede_resumes_total{recovered=\"false\"} 2\nstompede_engine_roundtrip_seconds_count{operation=\"history\"} 7\nstompede_engine_roundtrip_seconds_count{operation=\"publish\"} 9\n";
        assert_eq!(
            metric_sum(body, "stompede_resumes_total", Some("recovered=\"true\"")),
            5.0
        );
        assert_eq!(metric_sum(body, "stompede_resumes_total", None), 7.0);
        assert_eq!(
            metric_sum(
                body,
                "stompede_engine_roundtrip_seconds_count",
                Some("operation=\"history\"")
            ),
            7.0
        );
    }
}

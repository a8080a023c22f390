//! One fan-out step: publish open-loop at a rate for a while, wait for the
//! late deliveries, collect every worker's checks and sum them up.

use super::meter::Meter;
use crate::broker_metrics::{self, BrokerLatency, Buckets};
use crate::conn::Dialer;
use crate::fleet::Fleet;
use crate::format::{human, mib, ms, of_one_core, verdict};
use crate::publisher::{PublishStep, Publisher, Via};
use crate::report::Report;
use crate::stats::Percentiles;
use crate::target::Target;
use crate::wire::{StepResult, Tally};
use crate::Common;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Publishers dial from source indexes this far from the subscribers'.
const PUBLISHER_FIRST_INDEX: u64 = 5_000_000;
/// How often the coordinator looks at the workers' progress meanwhile.
const POLL: Duration = Duration::from_millis(100);
/// After the drain, one more progress round so the figures include the tail.
const DRAIN_TAIL: Duration = Duration::from_millis(300);

/// `--drain-idle` as a duration, if it is one.
pub fn drain_idle(secs: f64) -> Result<Duration, String> {
    if !(0.0..=crate::MAX_SECONDS).contains(&secs) {
        return Err(format!(
            "--drain-idle {secs} is outside 0 ..= {} s",
            crate::MAX_SECONDS
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// How `--publish` and `--publish-round-robin` say to publish: to the
/// first `--url` (or the explicit URL), or to every `--url` in turn.
pub fn publish_via(common: &Common) -> Result<Via, String> {
    let first = common.url.first().ok_or("give at least one --url")?;
    let round_robin = common.publish_round_robin;
    let api = |ws_url: &String| {
        let ws = Target::parse(ws_url, "ws")?;
        Target::parse(&format!("http://{}/api/v1/publish", ws.authority), "http")
    };
    match common.publish.as_str() {
        "stomp" => Ok(Via::Stomp { round_robin }),
        "api" if round_robin => Ok(Via::Http(
            common.url.iter().map(api).collect::<Result<_, _>>()?,
        )),
        "api" => Ok(Via::Http(vec![api(first)?])),
        _ if round_robin => Err(
            "--publish-round-robin goes with --publish api or stomp (the nodes are the --urls)"
                .into(),
        ),
        url => Ok(Via::Http(vec![Target::parse(url, "http")?])),
    }
}

/// What one step does.
pub struct StepPlan {
    pub index: u32,
    /// The progress line's and the table's name for it.
    pub label: String,
    /// Messages per second, all publishers together.
    pub rate: f64,
    pub duration: Duration,
    /// Most seconds to wait for late deliveries.
    pub drain_secs: f64,
    /// The wait ends early once nothing has arrived for this long.
    pub drain_idle: Duration,
    /// A p99 above this fails the step.
    pub max_p99_ms: f64,
    /// Publishing ends before `duration` once this says so.
    pub end_early: Option<fn(&Fleet) -> bool>,
}

/// The publishers of a fan-out, and what each message should reach.
pub struct FanOut {
    publishers: Vec<Publisher>,
    /// Subscribed connections per destination.
    per_dest_subscribers: Vec<u64>,
    /// stompede's `/metrics` (`--metrics-url`): each step also reports the
    /// broker's own delivery latency.
    metrics_url: Option<String>,
}

impl FanOut {
    /// Connects `publishers` publishers (at most one per destination), the
    /// destinations dealt out among them in turn.
    pub async fn connect(
        common: &Common,
        dialer: &Dialer,
        publishers: u32,
        destinations: u32,
        per_dest_subscribers: Vec<u64>,
    ) -> Result<FanOut, String> {
        let via = publish_via(common)?;
        let destinations = destinations.max(1);
        let count = publishers.clamp(1, destinations);
        let mut connected = Vec::new();
        for publisher in 0..count {
            let dests: Vec<u32> = (0..destinations)
                .filter(|d| d % count == publisher)
                .collect();
            connected.push(
                Publisher::connect(
                    &via,
                    dialer,
                    PUBLISHER_FIRST_INDEX + u64::from(publisher),
                    dests,
                    &common.dest_prefix,
                    common.body_size,
                )
                .await?,
            );
        }
        Ok(FanOut {
            publishers: connected,
            per_dest_subscribers,
            metrics_url: common.metrics_url.clone(),
        })
    }

    /// Publishes one step, drains, collects and sums it up; also returns
    /// the step's latency histogram (for the plot).
    pub async fn run_step(
        &mut self,
        fleet: &mut Fleet,
        meter: &Meter,
        plan: StepPlan,
    ) -> Result<(StepReport, Histogram<u64>), String> {
        fleet.label = plan.label.clone();
        let delivery_before = self.broker_delivery_latency().await;
        let broker_before = meter.broker_now();
        let tool_cpu_before = fleet.tool_cpu_secs();
        let started = Instant::now();
        let published = self.publish(fleet, &plan).await?;
        let publish_secs = started.elapsed().as_secs_f64();
        let mut sent = vec![0u64; self.per_dest_subscribers.len()];
        for publisher in &published {
            for &(dest, count) in &publisher.sent {
                if let Some(total) = sent.get_mut(dest as usize) {
                    *total += count;
                }
            }
        }
        let expected: u64 = sent
            .iter()
            .zip(&self.per_dest_subscribers)
            .map(|(messages, subscribers)| messages * subscribers)
            .sum();
        fleet.label = format!("{}: draining", plan.label);
        let (drain_secs, drain_active) =
            drain(fleet, expected, plan.drain_secs, plan.drain_idle).await?;
        let broker_after = meter.broker_now();
        let broker_delivery = match (delivery_before, self.broker_delivery_latency().await) {
            (Some(before), Some(after)) => BrokerLatency::of(&after.since(&before)),
            _ => None,
        };
        let tool_cpu_percent =
            (fleet.tool_cpu_secs() - tool_cpu_before) / started.elapsed().as_secs_f64() * 100.0;
        let results: Vec<StepResult> = fleet.collect(plan.index, sent).await?;
        let histogram = super::merge::histograms(results.iter().map(|r| r.latency.clone()));
        let sum = |field: fn(&StepResult) -> u64| results.iter().map(field).sum::<u64>();
        let mut tally = Tally::default();
        for result in &results {
            tally.add(&result.tally);
        }
        let mut report = StepReport {
            step: plan.index,
            label: plan.label,
            target_rate: plan.rate,
            publish_secs,
            drain_secs,
            published: published.iter().map(|p| p.published).sum(),
            publish_failed: published.iter().map(|p| p.failed).sum(),
            publish_max_lag_ms: published.iter().map(|p| p.max_lag_ms).fold(0.0, f64::max),
            publish_answered: {
                let mut all = crate::stats::new_histogram();
                for histogram in published.iter().filter_map(|p| p.answered_in.as_ref()) {
                    let _ = all.add(histogram);
                }
                Percentiles::of(&all)
            },
            broker_delivery,
            publish_error: published.iter().find_map(|p| p.first_error.clone()),
            subscribers: sum(|r| r.subscribers),
            expected_deliveries: tally.expected,
            delivered: tally.received,
            // Over the time from the first publish to the last delivery seen.
            deliveries_per_sec: tally.received as f64 / (publish_secs + drain_active),
            lost: tally.lost,
            duplicated: tally.duplicated,
            reordered: tally.reordered,
            misrouted: tally.misrouted,
            subscribers_with_loss: sum(|r| r.subs_with_loss),
            subscribers_with_dups: sum(|r| r.subs_with_dups),
            subscribers_with_reorder: sum(|r| r.subs_with_reorder),
            subscribers_disconnected: sum(|r| r.subs_disconnected),
            latency: Percentiles::of(&histogram),
            broker_cpu_percent: match (broker_before, broker_after) {
                (Some(before), Some(after)) => {
                    Some((after.cpu_secs - before.cpu_secs) / (publish_secs + drain_secs) * 100.0)
                }
                _ => None,
            },
            broker_cpu_us_per_delivery: match (broker_before, broker_after) {
                (Some(before), Some(after)) if tally.received > 0 => {
                    Some((after.cpu_secs - before.cpu_secs) * 1e6 / tally.received as f64)
                }
                _ => None,
            },
            broker_rss_bytes: broker_after.map(|b| b.rss_bytes),
            tool_cpu_percent,
            passed: false,
        };
        report.passed = report.lost == 0
            && report.duplicated == 0
            && report.misrouted == 0
            && report.subscribers_disconnected == 0
            && report.publish_failed == 0
            && report.publish_error.is_none()
            && report.latency.count > 0
            && report.latency.p99_ms <= plan.max_p99_ms;
        Ok((report, histogram))
    }

    /// The broker's delivery latency histogram so far (`None` without
    /// `--metrics-url`, or when it cannot be read: the step goes on).
    async fn broker_delivery_latency(&self) -> Option<Buckets> {
        let url = self.metrics_url.as_deref()?;
        match broker_metrics::scrape_histogram(url, broker_metrics::DELIVERY_LATENCY).await {
            Ok(buckets) => Some(buckets),
            Err(error) => {
                eprintln!("stompede-load: broker delivery latency: {error}");
                None
            }
        }
    }

    /// Runs every publisher's share of the step, pumping the fleet's
    /// progress meanwhile.
    async fn publish(
        &mut self,
        fleet: &mut Fleet,
        plan: &StepPlan,
    ) -> Result<Vec<PublishStep>, String> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = plan.end_early.map(|_| stop_rx);
        let per_publisher = plan.rate / self.publishers.len().max(1) as f64;
        let tasks: Vec<_> = std::mem::take(&mut self.publishers)
            .into_iter()
            .map(|mut publisher| {
                let (stop, counter) = (stop.clone(), fleet.published.clone());
                let (step, duration) = (plan.index, plan.duration);
                tokio::spawn(async move {
                    let done = publisher
                        .run_step(step, per_publisher, duration, stop, counter)
                        .await;
                    (publisher, done)
                })
            })
            .collect();
        let mut signalled = false;
        while !tasks.iter().all(|task| task.is_finished()) {
            fleet.pump(POLL).await?;
            if let Some(end_early) = plan.end_early {
                if !signalled && end_early(fleet) {
                    let _ = stop_tx.send(true);
                    signalled = true;
                }
            }
        }
        let mut published = Vec::new();
        for task in tasks {
            let (publisher, done) = task.await.map_err(|e| format!("publisher task: {e}"))?;
            self.publishers.push(publisher);
            published.push(done);
        }
        Ok(published)
    }
}

/// Waits until every expected delivery arrived, nothing arrived for
/// `idle`, or `max_secs` passed. Returns (seconds waited, seconds until the
/// last delivery seen).
async fn drain(
    fleet: &mut Fleet,
    expected: u64,
    max_secs: f64,
    idle: Duration,
) -> Result<(f64, f64), String> {
    let started = Instant::now();
    let mut last_count = fleet.step_received();
    let mut last_change = Instant::now();
    let mut active_secs = 0.0;
    while started.elapsed().as_secs_f64() < max_secs {
        if fleet.step_received() >= expected {
            active_secs = started.elapsed().as_secs_f64();
            break;
        }
        fleet.pump(POLL).await?;
        let count = fleet.step_received();
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
            active_secs = started.elapsed().as_secs_f64();
        } else if last_change.elapsed() > idle {
            break;
        }
    }
    fleet.pump(DRAIN_TAIL).await?;
    Ok((started.elapsed().as_secs_f64(), active_secs))
}

/// One step as reported (an element of `steps` or `background_steps`).
#[derive(Debug, Serialize)]
pub struct StepReport {
    pub step: u32,
    pub label: String,
    pub target_rate: f64,
    pub publish_secs: f64,
    pub drain_secs: f64,
    pub published: u64,
    pub publish_failed: u64,
    pub publish_max_lag_ms: f64,
    /// HTTP publishing: from writing each request to reading its answer
    /// (count 0 for STOMP SEND).
    pub publish_answered: Percentiles,
    /// The broker's own view (`--metrics-url`, stompede): from the publish
    /// call to the MESSAGE handed to each subscriber's socket.
    pub broker_delivery: Option<BrokerLatency>,
    pub publish_error: Option<String>,
    pub subscribers: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub deliveries_per_sec: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub misrouted: u64,
    pub subscribers_with_loss: u64,
    pub subscribers_with_dups: u64,
    pub subscribers_with_reorder: u64,
    pub subscribers_disconnected: u64,
    pub latency: Percentiles,
    pub broker_cpu_percent: Option<f64>,
    /// The broker's CPU over the step (heart-beats and the API included)
    /// divided by the deliveries.
    pub broker_cpu_us_per_delivery: Option<f64>,
    pub broker_rss_bytes: Option<u64>,
    /// The load tool's CPU over the step (100 = one core).
    pub tool_cpu_percent: f64,
    pub passed: bool,
}

/// A step's section of the table.
pub fn step_rows(report: &mut Report, step: &StepReport) {
    report.section(&format!("step {}: {}", step.step, step.label));
    report.row(
        "published",
        format!(
            "{} in {:.1} s ({}/s, target {}/s), failed {}, max lag {} ms",
            step.published,
            step.publish_secs,
            human(step.published as f64 / step.publish_secs),
            human(step.target_rate),
            step.publish_failed,
            ms(step.publish_max_lag_ms)
        ),
    );
    if step.publish_answered.count > 0 {
        report.row(
            "publish answered in",
            crate::format::percentiles(&step.publish_answered),
        );
    }
    if let Some(error) = &step.publish_error {
        report.row("publish error", error.clone());
    }
    let vs_floor = report.in_floors(step.deliveries_per_sec);
    report.row(
        "delivered",
        format!(
            "{} of {} to {} subscribers = {}/s (drain {:.1} s){vs_floor}",
            step.delivered,
            step.expected_deliveries,
            step.subscribers,
            human(step.deliveries_per_sec),
            step.drain_secs
        ),
    );
    report.latency_row("publish-to-receive", &step.latency);
    if let Some(sends) = report.in_fanout_sends(step.latency.p99_ms, step.subscribers) {
        report.row("p99 against the fan-out floor", sends);
    }
    if let Some(broker) = &step.broker_delivery {
        report.row("broker's own view", broker.to_string());
    }
    report.row(
        "lost / dup / reordered",
        format!(
            "{} / {} / {} (subscribers affected: {} / {} / {}; misrouted {}; disconnected {})",
            step.lost,
            step.duplicated,
            step.reordered,
            step.subscribers_with_loss,
            step.subscribers_with_dups,
            step.subscribers_with_reorder,
            step.misrouted,
            step.subscribers_disconnected
        ),
    );
    if let (Some(cpu), Some(rss)) = (step.broker_cpu_percent, step.broker_rss_bytes) {
        report.row(
            "broker",
            format!("CPU {}, RSS {}", of_one_core(cpu), mib(rss)),
        );
    }
    if let Some(per_delivery) = step.broker_cpu_us_per_delivery {
        let vs_floor = report.in_fanout_cpu(per_delivery);
        report.row(
            "broker CPU per delivery",
            format!("{per_delivery:.2} us{vs_floor}"),
        );
    }
    report.row(
        "load tool",
        format!("CPU {}", of_one_core(step.tool_cpu_percent)),
    );
    report.row("verdict", verdict(step.passed));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn common(args: &[&str]) -> Common {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            common: Common,
        }
        let mut argv = vec!["stompede-load"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).common
    }

    fn hosts(via: &Via) -> Vec<String> {
        via.http_targets()
            .iter()
            .map(|t| t.authority.clone())
            .collect()
    }

    #[test]
    fn publishing_goes_to_the_first_node_or_round_robin() {
        let two = [
            "--url",
            "ws://127.0.0.1:1/ws",
            "--url",
            "ws://127.0.0.1:2/ws",
        ];
        let via = publish_via(&common(&two)).unwrap();
        assert_eq!(hosts(&via), ["127.0.0.1:1"]);
        let mut args = two.to_vec();
        args.push("--publish-round-robin");
        let via = publish_via(&common(&args)).unwrap();
        assert_eq!(hosts(&via), ["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(via.describe(2).contains("round-robin"));
        args.extend(["--publish", "http://127.0.0.1:3/api/v1/publish"]);
        assert!(publish_via(&common(&args)).is_err());
        let mut explicit = two.to_vec();
        explicit.extend(["--publish", "http://127.0.0.1:3/api/v1/publish"]);
        let via = publish_via(&common(&explicit)).unwrap();
        assert_eq!(hosts(&via), ["127.0.0.1:3"]);
        let via = publish_via(&common(&["--publish", "stomp"])).unwrap();
        assert!(via.http_targets().is_empty());
        // One --url is the default, as before.
        assert_eq!(common(&[]).url, ["ws://127.0.0.1:8080/ws"]);
    }
}

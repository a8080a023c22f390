//! The coordinator's side of a run, one file per scenario (`fanout.rs`,
//! `storm.rs`, `churn.rs`, `idle.rs`: its flags and its phases). What every
//! scenario does the same way is `RunContext`'s: the bounds every run obeys,
//! the dialer, starting the workers (in this process or as worker
//! processes) and waiting for their subscribers, and the report's header
//! and footer. Beside it: `plan.rs` (who holds what), `step.rs` (one fan-out
//! step), `merge.rs` (many workers' answers as one), `meter.rs` (what the
//! run costs, broker and tool).

pub mod churn;
pub mod failover;
pub mod fanout;
pub mod idle;
mod merge;
mod meter;
mod plan;
mod step;
pub mod storm;

use crate::cluster::Cluster;
use crate::conn::Dialer;
use crate::fleet::Fleet;
use crate::floor::Floor;
use crate::format;
use crate::frames::Credentials;
use crate::report::{latency_svg, Report};
use crate::target::Target;
use crate::wire::{Final, WorkerSpec};
use crate::{Common, MAX_CONNECTIONS, MAX_SECONDS};
use hdrhistogram::Histogram;
use merge::SetupSummary;
use meter::{Meter, ToolUsage};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Most `--per-worker`: this box allows 20,000 open files per process, and
/// a worker needs a few besides its sockets.
const MAX_PER_WORKER: u64 = 19_500;

/// What every scenario's run shares.
pub struct RunContext<'a> {
    pub common: &'a Common,
    /// The scenario's name (the report's title and its parameters' key).
    scenario: &'static str,
    pub dialer: Arc<Dialer>,
    pub meter: Meter,
    /// Whether the workers are child processes (known once started).
    worker_processes: bool,
    /// This box's floor, measured as the run began.
    floor: Result<Floor, String>,
    /// The nodes and engine, as they answered when the run began.
    pub cluster: Cluster,
}

/// The checking subscribers once every worker has set its up.
pub struct Subscribed {
    pub summary: SetupSummary,
    /// Subscribed connections per destination.
    pub per_dest: Vec<u64>,
}

impl<'a> RunContext<'a> {
    /// Checks the bounds every run obeys (`connections` at once, phases of
    /// `seconds` in all), builds the dialer, measures the box's floor, asks
    /// the nodes who they are, and takes the "before" samples.
    pub async fn new(
        common: &'a Common,
        scenario: &'static str,
        connections: u64,
        seconds: f64,
    ) -> Result<RunContext<'a>, String> {
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
        if common.per_worker == 0 || common.per_worker > MAX_PER_WORKER {
            return Err(
                "--per-worker must be between 1 and 19500 (20,000 open files per process)".into(),
            );
        }
        let targets = ws_targets(common)?;
        let via = step::publish_via(common)?;
        let floor = tokio::task::spawn_blocking(Floor::measure)
            .await
            .unwrap_or_else(|e| Err(format!("floor: {e}")));
        let cluster = Cluster::probe(
            &targets,
            via.http_targets(),
            via.describe(targets.len()),
            common.engine_label.as_deref(),
        )
        .await;
        let dialer = Dialer::new(
            targets,
            credentials(common),
            Duration::from_secs_f64(common.setup_timeout),
        );
        Ok(RunContext {
            common,
            scenario,
            dialer,
            meter: Meter::new(common.broker_pid),
            worker_processes: false,
            floor,
            cluster,
        })
    }

    /// Worker `index`'s spec with nothing to hold yet, for `destinations`
    /// fan-out destinations.
    pub fn worker_spec(&self, index: usize, destinations: u32) -> WorkerSpec {
        WorkerSpec {
            index,
            urls: self.common.url.clone(),
            creds: credentials(self.common),
            setup_timeout_ms: (self.common.setup_timeout * 1000.0) as u64,
            dest_prefix: self.common.dest_prefix.clone(),
            destinations,
            first_conn: 0,
            subscribers: Vec::new(),
            subscribe_concurrency: self.common.setup_concurrency,
            storm: None,
            churn: None,
            nice: 0,
        }
    }

    /// Specs for as many workers as `connections` need at `--per-worker`
    /// each, the checking `subscribers` (a destination each) dealt out to
    /// them in equal slices.
    pub fn worker_specs(
        &self,
        connections: u64,
        destinations: u32,
        subscribers: &[u32],
    ) -> Vec<WorkerSpec> {
        let workers = plan::worker_count(connections, self.common.per_worker);
        (0..workers)
            .map(|worker| {
                let mut spec = self.worker_spec(worker, destinations);
                let (first, end) = plan::slice(subscribers.len(), workers, worker);
                spec.subscribers = subscribers[first..end].to_vec();
                spec.first_conn = first as u64;
                spec
            })
            .collect()
    }

    /// Starts one worker per spec and waits until each has set up its
    /// checking subscribers. The workers are child processes when there is
    /// more than one or `--processes` asks; else the one worker runs here.
    pub async fn start_workers(
        &mut self,
        specs: Vec<WorkerSpec>,
        label: impl Into<String>,
        destinations: u32,
    ) -> Result<(Fleet, Subscribed), String> {
        let subscribers: u64 = specs.iter().map(|s| s.subscribers.len() as u64).sum();
        self.worker_processes = self.common.processes || specs.len() > 1;
        let mut fleet = Fleet::spawn(specs, self.worker_processes, self.common.quiet)?;
        fleet.label = label.into();
        let readies = fleet.wait_ready(self.ready_timeout(subscribers)).await?;
        let (summary, per_dest) = merge::readies(&readies, destinations);
        Ok((fleet, Subscribed { summary, per_dest }))
    }

    /// How long the workers may take to set up `subscribers` checking
    /// subscribers: two setup timeouts, 50 setups a second, and 30 s to
    /// start.
    fn ready_timeout(&self, subscribers: u64) -> Duration {
        Duration::from_secs_f64(self.common.setup_timeout * 2.0 + subscribers as f64 / 50.0 + 30.0)
    }

    /// A report with the run's parameters (the common options and
    /// `args`, under the scenario's name) and the broker's URL first.
    pub fn report(&self, args: &impl Serialize) -> Report {
        let mut params = serde_json::Map::new();
        params.insert("common".into(), to_json(self.common));
        params.insert(self.scenario.into(), to_json(args));
        let mut report = Report::new(self.scenario, Value::Object(params));
        report.row("broker", self.common.url.join(" "));
        report.row("engine", self.cluster.describe());
        for node in &self.cluster.node_list {
            let who = match (&node.node, &node.error) {
                (Some(id), _) => format!(
                    "node {id}, engine {}{}",
                    node.engine.as_deref().unwrap_or("?"),
                    match node.engine_up {
                        Some(false) => " (DOWN)",
                        _ => "",
                    }
                ),
                (None, Some(error)) => format!("no /readyz: {error}"),
                (None, None) => "no /readyz".into(),
            };
            report.row(
                format!("  {}", node.readyz),
                format!("{} ({who})", node.role),
            );
        }
        report.row("publishing", self.cluster.publishing.clone());
        report.set("cluster", &self.cluster);
        report.set_floor(self.floor.clone());
        report
    }

    /// The tool's own cost, given the workers' last words.
    pub fn tool_usage(&self, finals: &[Final]) -> ToolUsage {
        self.meter.tool_usage(finals, self.worker_processes)
    }

    /// Ends the report: the tool's own cost, the latency plot when `svg`
    /// names a file, then the table on stdout and the JSON file.
    pub fn finish(
        &self,
        mut report: Report,
        tool: &ToolUsage,
        finals: &[Final],
        svg: Option<&str>,
        latencies: &[(String, Histogram<u64>)],
    ) -> Result<(), String> {
        meter::tool_rows(&mut report, tool, finals);
        report.set("tool", tool);
        if let Some(path) = svg {
            std::fs::write(path, latency_svg(latencies))
                .map_err(|e| format!("writing {path}: {e}"))?;
            report.row("latency plot", path);
        }
        report.finish(self.common.json.as_deref())?;
        Ok(())
    }
}

/// The checking subscribers' setup, as rows of the table.
pub fn setup_rows(report: &mut Report, summary: &SetupSummary, what: &str) {
    report.row(
        what,
        format!(
            "{} subscribed in {:.1} s; failures: {}",
            summary.subscribed,
            summary.seconds,
            format::failures(&summary.failures)
        ),
    );
    if summary.per_node.len() > 1 {
        let counts: Vec<String> = summary.per_node.iter().map(u64::to_string).collect();
        report.row(
            format!("{what} per --url"),
            format!("{} (in --url order)", counts.join(" / ")),
        );
    }
    report.latency_row("setup latency", &summary.latency);
}

/// The `--url`s, parsed (loopback only).
fn ws_targets(common: &Common) -> Result<Vec<Target>, String> {
    if common.url.is_empty() {
        return Err("give at least one --url".into());
    }
    Target::parse_all(&common.url, "ws")
}

fn credentials(common: &Common) -> Credentials {
    Credentials {
        login: common.login.clone(),
        passcode: common.passcode.clone(),
        vhost: common.vhost.clone(),
    }
}

fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `count` per second over `secs` (0 s counts as a nanosecond).
pub fn rate(count: u64, secs: f64) -> f64 {
    count as f64 / secs.max(1e-9)
}

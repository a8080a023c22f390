//! What a run costs: the broker's CPU and RSS (from `/proc`, given
//! `--broker-pid`) and the load tool's own, workers included.

use crate::format::{mib, of_one_core};
use crate::report::Report;
use crate::sys::{proc_sample, self_cpu_secs, self_rss_bytes, ProcSample};
use crate::wire::Final;
use serde::Serialize;
use std::time::Instant;

/// Watches our own CPU and, if given, the broker's.
pub struct Meter {
    started: Instant,
    cpu_secs_at_start: f64,
    broker_pid: Option<u32>,
    /// The broker as the run began (`None` without `--broker-pid`).
    pub broker_at_start: Option<ProcSample>,
}

impl Meter {
    pub fn new(broker_pid: Option<u32>) -> Meter {
        Meter {
            started: Instant::now(),
            cpu_secs_at_start: self_cpu_secs(),
            broker_pid,
            broker_at_start: broker_pid.and_then(proc_sample),
        }
    }

    /// The broker now (`None` without `--broker-pid`, or once it is gone).
    pub fn broker_now(&self) -> Option<ProcSample> {
        self.broker_pid.and_then(proc_sample)
    }

    /// The tool's cost since the start, given the workers' last words and
    /// whether they were child processes (else their cost is already ours).
    pub fn tool_usage(&self, finals: &[Final], worker_processes: bool) -> ToolUsage {
        let wall_secs = self.started.elapsed().as_secs_f64();
        let (children_cpu_secs, children_rss_bytes) = if worker_processes {
            (
                finals.iter().map(|f| f.cpu_secs).sum(),
                finals.iter().map(|f| f.rss_bytes).sum(),
            )
        } else {
            (0.0, 0)
        };
        let cpu_secs = self_cpu_secs() - self.cpu_secs_at_start + children_cpu_secs;
        ToolUsage {
            wall_secs,
            cpu_secs,
            cpu_percent: cpu_secs / wall_secs * 100.0,
            worker_processes: if worker_processes { finals.len() } else { 0 },
            rss_bytes: self_rss_bytes() + children_rss_bytes,
        }
    }
}

/// The tool's own cost, as reported (`tool` in the JSON).
#[derive(Debug, Serialize)]
pub struct ToolUsage {
    pub wall_secs: f64,
    pub cpu_secs: f64,
    /// CPU seconds per wall second: 100 means one whole core (this box has 2).
    pub cpu_percent: f64,
    pub worker_processes: usize,
    pub rss_bytes: u64,
}

/// The table's "the load tool itself" section.
pub fn tool_rows(report: &mut Report, tool: &ToolUsage, finals: &[Final]) {
    report.section("the load tool itself");
    let workers = if tool.worker_processes == 0 {
        "in-process worker".to_string()
    } else {
        format!("{} worker processes", tool.worker_processes)
    };
    report.row(
        "tool CPU",
        format!(
            "{:.1} s over {:.1} s wall = {} ({workers})",
            tool.cpu_secs,
            tool.wall_secs,
            of_one_core(tool.cpu_percent)
        ),
    );
    report.row("tool memory", mib(tool.rss_bytes));
    let stale: u64 = finals.iter().map(|f| f.stale).sum();
    let foreign: u64 = finals
        .iter()
        .map(|f| f.non_load_messages + f.untracked)
        .sum();
    if stale + foreign > 0 {
        report.row(
            "late/foreign messages",
            format!(
                "{stale} arrived after their step was counted; {foreign} not ours or untracked"
            ),
        );
    }
}

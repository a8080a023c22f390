//! The coordinator's side of the workers: starts them (in this process or
//! as child processes), prints the progress line, and gathers their events.

use crate::worker::{
    self, ActivityResult, Command, Event, Final, ProgressData, Ready, StepResult, WorkerSpec,
};
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

pub struct Fleet {
    cmds: Vec<mpsc::UnboundedSender<Command>>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    pending: VecDeque<(usize, Event)>,
    pub progress: Vec<ProgressData>,
    children: Vec<tokio::process::Child>,
    /// What the progress line says the run is doing.
    pub label: String,
    /// Messages published so far (shown on the progress line).
    pub published: Arc<AtomicU64>,
    started: Instant,
    last_print: Instant,
    last_received: u64,
    quiet: bool,
    in_process: bool,
}

impl Fleet {
    /// Starts one worker per spec: in this process when there is only one
    /// and `processes` is false, otherwise as child processes.
    pub fn spawn(specs: Vec<WorkerSpec>, processes: bool, quiet: bool) -> Result<Fleet, String> {
        let n = specs.len();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let mut cmds = Vec::new();
        let mut children = Vec::new();
        let in_process = n == 1 && !processes;
        for (i, spec) in specs.into_iter().enumerate() {
            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Command>();
            cmds.push(cmd_tx);
            if in_process {
                let (tx, mut rx) = mpsc::unbounded_channel();
                tokio::spawn(worker::run(spec, cmd_rx, tx));
                let ev_tx = ev_tx.clone();
                tokio::spawn(async move {
                    while let Some(ev) = rx.recv().await {
                        if ev_tx.send((i, ev)).is_err() {
                            break;
                        }
                    }
                });
                continue;
            }
            let exe =
                std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
            let mut child = tokio::process::Command::new(exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start worker process: {e}"))?;
            let mut stdin = child.stdin.take().ok_or("worker stdin")?;
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            let spec_line = serde_json::to_string(&spec).map_err(|e| e.to_string())? + "\n";
            let mut cmd_rx = cmd_rx;
            tokio::spawn(async move {
                if stdin.write_all(spec_line.as_bytes()).await.is_err() {
                    return;
                }
                while let Some(c) = cmd_rx.recv().await {
                    let line = serde_json::to_string(&c).unwrap_or_default() + "\n";
                    if stdin.write_all(line.as_bytes()).await.is_err()
                        || stdin.flush().await.is_err()
                    {
                        return;
                    }
                }
            });
            let ev_tx = ev_tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let mut finished = false;
                while let Ok(Some(l)) = lines.next_line().await {
                    match serde_json::from_str::<Event>(&l) {
                        Ok(ev) => {
                            finished |= matches!(ev, Event::Final(_) | Event::Fatal(_));
                            if ev_tx.send((i, ev)).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("worker {i}: unreadable event {l:?}: {e}"),
                    }
                }
                if !finished {
                    let _ =
                        ev_tx.send((i, Event::Fatal(format!("worker process {i} exited early"))));
                }
            });
            children.push(child);
        }
        Ok(Fleet {
            cmds,
            events: ev_rx,
            pending: VecDeque::new(),
            progress: vec![ProgressData::default(); n],
            children,
            label: String::new(),
            published: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            last_print: Instant::now(),
            last_received: 0,
            quiet,
            in_process,
        })
    }

    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    pub fn send_all(&self, c: Command) {
        for tx in &self.cmds {
            let _ = tx.send(c.clone());
        }
    }

    /// CPU seconds used so far by the whole tool: this process plus any
    /// worker processes (as of their last progress report).
    pub fn tool_cpu_secs(&self) -> f64 {
        let children: f64 = if self.in_process {
            0.0
        } else {
            self.progress.iter().map(|p| p.cpu_secs).sum()
        };
        crate::sys::self_cpu_secs() + children
    }

    pub fn received(&self) -> u64 {
        self.progress.iter().map(|p| p.received).sum()
    }

    pub fn step_received(&self) -> u64 {
        self.progress.iter().map(|p| p.step_received).sum()
    }

    /// Takes progress events for up to `d` (printing the progress line);
    /// returns early when another event arrives, which is kept for the
    /// `wait_*` calls.
    pub async fn pump(&mut self, d: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(()),
                Ok(None) => return Err("all workers are gone".into()),
                Ok(Some((i, Event::Progress(p)))) => {
                    self.progress[i] = p;
                    self.print_progress();
                }
                Ok(Some((_, Event::Fatal(e)))) => return Err(e),
                Ok(Some(other)) => {
                    // Let the caller look at it now.
                    self.pending.push_back(other);
                    return Ok(());
                }
            }
        }
    }

    fn print_progress(&mut self) {
        if self.quiet || self.last_print.elapsed() < Duration::from_secs(1) {
            return;
        }
        let dt = self.last_print.elapsed().as_secs_f64();
        self.last_print = Instant::now();
        let received = self.received();
        let rate = (received - self.last_received.min(received)) as f64 / dt;
        self.last_received = received;
        let open: u64 = self.progress.iter().map(|p| p.open).sum();
        let ok: u64 = self.progress.iter().map(|p| p.activity_ok).sum();
        let failed: u64 = self.progress.iter().map(|p| p.activity_failed).sum();
        let dropped: u64 = self.progress.iter().map(|p| p.dropped).sum();
        eprintln!(
            "[{:6.1}s] {} | open {} | published {} | delivered {} ({}/s) | setups ok {} failed {} | dropped {}",
            self.started.elapsed().as_secs_f64(),
            self.label,
            open,
            self.published.load(Ordering::Relaxed),
            received,
            human(rate),
            ok,
            failed,
            dropped
        );
    }

    /// Waits for one event of the kind `pick` accepts from every worker.
    async fn gather<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        pick: impl Fn(Event) -> Result<T, Event>,
    ) -> Result<Vec<T>, String> {
        let n = self.len();
        let mut got: Vec<Option<T>> = (0..n).map(|_| None).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let mut keep = VecDeque::new();
            while let Some((i, ev)) = self.pending.pop_front() {
                match pick(ev) {
                    Ok(t) if got[i].is_none() => got[i] = Some(t),
                    Ok(_) => {}
                    Err(ev) => keep.push_back((i, ev)),
                }
            }
            self.pending = keep;
            if got.iter().all(|g| g.is_some()) {
                return Ok(got.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out waiting for the workers' {what}"));
            }
            self.pump(Duration::from_millis(100)).await?;
        }
    }

    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Vec<Ready>, String> {
        self.gather(timeout, "subscriber setup", |e| match e {
            Event::Ready(r) => Ok(r),
            e => Err(e),
        })
        .await
    }

    pub async fn collect(
        &mut self,
        step: u32,
        expected: Vec<u64>,
    ) -> Result<Vec<StepResult>, String> {
        self.send_all(Command::Collect { step, expected });
        self.gather(Duration::from_secs(60), "step results", |e| match e {
            Event::Step(r) => Ok(r),
            e => Err(e),
        })
        .await
    }

    pub async fn wait_activity(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<ActivityResult>, String> {
        self.gather(timeout, "storm/churn results", |e| match e {
            Event::ActivityDone(r) => Ok(r),
            e => Err(e),
        })
        .await
    }

    /// Whether every worker has reported its activity finished (without
    /// taking the reports).
    pub fn activity_finished(&self) -> bool {
        let done = self
            .pending
            .iter()
            .filter(|(_, e)| matches!(e, Event::ActivityDone(_)))
            .count();
        done >= self.len()
    }

    pub async fn stop(mut self) -> Result<Vec<Final>, String> {
        self.send_all(Command::Stop);
        let r = self
            .gather(Duration::from_secs(30), "final report", |e| match e {
                Event::Final(f) => Ok(f),
                e => Err(e),
            })
            .await;
        for c in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
        r
    }
}

/// 1234567 -> "1.23M".
pub fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

//! The coordinator's side of the workers: starts them (in this process or
//! as child processes), prints the progress line, and gathers their events.

use crate::format::human;
use crate::wire::{
    self, ActivityResult, Command, Event, Final, Progress, Ready, StepResult, WorkerSpec,
};
use crate::worker;
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// How often `gather` looks again for the events it waits for.
const GATHER_POLL: Duration = Duration::from_millis(100);
/// How long the workers may take to answer `Collect`.
const COLLECT_WAIT: Duration = Duration::from_secs(60);
/// How long the workers may take to answer `Stop`.
const FINAL_WAIT: Duration = Duration::from_secs(30);
/// How long each worker process may take to exit after its last event.
const EXIT_WAIT: Duration = Duration::from_secs(5);

pub struct Fleet {
    cmds: Vec<mpsc::UnboundedSender<Command>>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    pending: VecDeque<(usize, Event)>,
    pub progress: Vec<Progress>,
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
    /// Starts one worker per spec: as child processes when `processes`
    /// (the caller's rule: more than one worker, or `--processes`),
    /// otherwise the one worker in this process.
    pub fn spawn(specs: Vec<WorkerSpec>, processes: bool, quiet: bool) -> Result<Fleet, String> {
        let count = specs.len();
        if !processes && count != 1 {
            return Err(format!("{count} workers cannot all run in this process"));
        }
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let mut cmds = Vec::new();
        let mut children = Vec::new();
        let in_process = !processes;
        for (worker, spec) in specs.into_iter().enumerate() {
            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Command>();
            cmds.push(cmd_tx);
            if in_process {
                let (tx, mut rx) = mpsc::unbounded_channel();
                tokio::spawn(worker::run(spec, cmd_rx, tx));
                let ev_tx = ev_tx.clone();
                tokio::spawn(async move {
                    while let Some(event) = rx.recv().await {
                        if ev_tx.send((worker, event)).is_err() {
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
            let spec_line = wire::to_line(&spec)?;
            let mut cmd_rx = cmd_rx;
            tokio::spawn(async move {
                if stdin.write_all(spec_line.as_bytes()).await.is_err() {
                    return;
                }
                while let Some(command) = cmd_rx.recv().await {
                    let line = wire::to_line(&command).unwrap_or_default();
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
                while let Ok(Some(line)) = lines.next_line().await {
                    match wire::from_line::<Event>(&line) {
                        Ok(event) => {
                            finished |= event.is_last();
                            if ev_tx.send((worker, event)).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("worker {worker}: unreadable event {line:?}: {e}"),
                    }
                }
                if !finished {
                    let _ = ev_tx.send((
                        worker,
                        Event::Fatal(format!("worker process {worker} exited early")),
                    ));
                }
            });
            children.push(child);
        }
        Ok(Fleet {
            cmds,
            events: ev_rx,
            pending: VecDeque::new(),
            progress: vec![Progress::default(); count],
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

    pub fn send_all(&self, command: Command) {
        for tx in &self.cmds {
            let _ = tx.send(command.clone());
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

    /// Takes progress events for up to `wait` (printing the progress line);
    /// returns early when another event arrives, which is kept for the
    /// `wait_*` calls.
    pub async fn pump(&mut self, wait: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(()),
                Ok(None) => return Err("all workers are gone".into()),
                Ok(Some((worker, Event::Progress(progress)))) => {
                    self.progress[worker] = progress;
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
        let since_last_secs = self.last_print.elapsed().as_secs_f64();
        self.last_print = Instant::now();
        let received = self.received();
        let rate = (received - self.last_received.min(received)) as f64 / since_last_secs;
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
        let mut got: Vec<Option<T>> = (0..self.len()).map(|_| None).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let mut keep = VecDeque::new();
            while let Some((worker, event)) = self.pending.pop_front() {
                match pick(event) {
                    Ok(picked) if got[worker].is_none() => got[worker] = Some(picked),
                    Ok(_) => {}
                    Err(event) => keep.push_back((worker, event)),
                }
            }
            self.pending = keep;
            if got.iter().all(|g| g.is_some()) {
                return Ok(got.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out waiting for the workers' {what}"));
            }
            self.pump(GATHER_POLL).await?;
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
        self.gather(COLLECT_WAIT, "step results", |e| match e {
            Event::Step(result) => Ok(*result),
            e => Err(e),
        })
        .await
    }

    pub async fn wait_activity(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<ActivityResult>, String> {
        self.gather(timeout, "storm/churn results", |e| match e {
            Event::ActivityDone(result) => Ok(*result),
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
        let finals = self
            .gather(FINAL_WAIT, "final report", |e| match e {
                Event::Final(last) => Ok(last),
                e => Err(e),
            })
            .await;
        for child in &mut self.children {
            let _ = tokio::time::timeout(EXIT_WAIT, child.wait()).await;
        }
        finals
    }
}

//! The contract between the coordinator (`fleet.rs`) and its workers
//! (`worker/`): what a worker is told to hold (`WorkerSpec`), the commands
//! it obeys and the events it sends back. A worker in the coordinator's own
//! process gets these over channels; a worker process (`stompede-load
//! worker`) gets them as JSON lines: the spec, then commands, on stdin, and
//! events on stdout, one value a line.

use crate::frames::Credentials;
use crate::stats::HistData;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Setup failures, counted by cause (`SetupError::cause`).
pub type Failures = BTreeMap<String, u64>;

/// Everything one worker holds for the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    /// The nodes' WebSocket URLs: connection `i` (a global index) goes to
    /// `urls[i % len]`.
    pub urls: Vec<String>,
    pub creds: Credentials,
    pub setup_timeout_ms: u64,
    pub dest_prefix: String,
    /// Number of fan-out destinations (sizes the per-destination arrays).
    pub destinations: u32,
    /// Global index of this worker's first subscriber: picks source
    /// addresses and subscription ids.
    pub first_conn: u64,
    /// The destination index of each long-lived, checking subscriber.
    pub subscribers: Vec<u32>,
    /// Most subscriber setups in flight at once.
    pub subscribe_concurrency: usize,
    pub storm: Option<StormSpec>,
    pub churn: Option<ChurnSpec>,
    /// A worker process lowers its CPU priority by this many nice steps
    /// before it starts (0: not at all; in-process workers ignore it).
    #[serde(default)]
    pub nice: u8,
}

/// This worker's share of a connect storm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormSpec {
    pub count: u64,
    /// Connections started per second (open loop).
    pub rate: f64,
    pub concurrency: usize,
    /// Storm connections subscribe to `{prefix}storm.{i % destinations}`.
    pub destinations: u32,
    pub first_conn: u64,
    /// A setup refused with a 503 handshake is tried again, with jittered
    /// backoff, until this long after its first try (0: never).
    #[serde(default)]
    pub retry_refused_ms: u64,
}

/// This worker's share of the churn.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnSpec {
    /// Connections opened (and later closed) per second.
    pub rate: f64,
    pub duration_ms: u64,
    /// How long each connection stays subscribed.
    pub hold_ms: u64,
    pub destinations: u32,
    pub first_conn: u64,
    /// Every n-th connection drops its socket without DISCONNECT (0: never).
    pub abrupt_every: u64,
    /// Most connections open at once in this worker.
    pub max_open: usize,
}

/// Coordinator to worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Begin the storm or churn.
    Start,
    /// Report the step's checks, given how many messages were published to
    /// each destination in it, and reset for the next step.
    Collect { step: u32, expected: Vec<u64> },
    /// Close everything and report the final figures.
    Stop,
}

/// Worker to coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    Ready(Ready),
    Progress(Progress),
    // The two largest payloads are boxed, so that an `Event` stays small
    // to move through the channels and the coordinator's queue.
    Step(Box<StepResult>),
    ActivityDone(Box<ActivityResult>),
    Final(Final),
    Fatal(String),
}

/// Sent once every checking subscriber has been set up (or failed to be).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ready {
    pub subscribed: u64,
    /// Subscribed connections per destination.
    pub per_dest: Vec<u64>,
    /// Subscribed connections per node (`urls`' order).
    #[serde(default)]
    pub per_node: Vec<u64>,
    pub failures: Failures,
    pub setup: HistData,
    pub setup_secs: f64,
}

/// Running totals, sent every 250 ms (the progress line).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub received: u64,
    pub step_received: u64,
    pub open: u64,
    pub activity_ok: u64,
    pub activity_failed: u64,
    pub dropped: u64,
    /// CPU seconds this worker's process has used so far.
    pub cpu_secs: f64,
}

/// What checking subscribers saw of one step against what was published
/// to them: one subscriber's (the sequence checker's answer), or many
/// added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub expected: u64,
    /// Distinct messages of the step that arrived.
    pub received: u64,
    /// Expected and never arrived.
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub misrouted: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.expected += other.expected;
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.misrouted += other.misrouted;
    }
}

/// The answer to `Collect`: this worker's subscribers' checks for one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepResult {
    pub step: u32,
    pub subscribers: u64,
    /// Every subscriber's tally, added up.
    pub tally: Tally,
    pub subs_with_loss: u64,
    pub subs_with_dups: u64,
    pub subs_with_reorder: u64,
    /// Subscribers whose connection ended during the step.
    pub subs_disconnected: u64,
    pub latency: HistData,
}

/// The end of the storm or churn this worker ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActivityResult {
    pub attempted: u64,
    pub ok: u64,
    pub failures: Failures,
    pub setup: HistData,
    /// From Start until the last setup finished.
    pub elapsed_secs: f64,
    pub closed_ok: u64,
    /// Of `closed_ok`: DISCONNECTs the broker answered by closing, without RECEIPT.
    pub closed_without_receipt: u64,
    pub close_failures: Failures,
    pub skipped_at_limit: u64,
    pub peak_open: u64,
}

/// The answer to `Stop`, the worker's last event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Final {
    pub cpu_secs: f64,
    pub rss_bytes: u64,
    /// Messages that arrived after their step had been collected.
    pub stale: u64,
    pub untracked: u64,
    pub non_load_messages: u64,
}

impl StepResult {
    /// Counts one subscriber in: its tally, and whether it lost,
    /// duplicated or reordered anything or disconnected.
    pub fn count_subscriber(&mut self, tally: &Tally, disconnected: bool) {
        self.subscribers += 1;
        self.tally.add(tally);
        self.subs_with_loss += u64::from(tally.lost > 0);
        self.subs_with_dups += u64::from(tally.duplicated > 0);
        self.subs_with_reorder += u64::from(tally.reordered > 0);
        self.subs_disconnected += u64::from(disconnected);
    }
}

impl Event {
    /// Whether nothing follows this event.
    pub fn is_last(&self) -> bool {
        matches!(self, Event::Final(_) | Event::Fatal(_))
    }
}

/// One value as one line of JSON, newline included.
pub fn to_line(value: &impl Serialize) -> Result<String, String> {
    serde_json::to_string(value)
        .map(|line| line + "\n")
        .map_err(|e| e.to_string())
}

/// One value back from a line of JSON.
pub fn from_line<T: DeserializeOwned>(line: &str) -> Result<T, String> {
    serde_json::from_str(line).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_a_line_each_way() {
        let command = Command::Collect {
            step: 3,
            expected: vec![10, 0, 7],
        };
        let line = to_line(&command).unwrap();
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        match from_line::<Command>(&line).unwrap() {
            Command::Collect { step, expected } => {
                assert_eq!((step, expected), (3, vec![10, 0, 7]))
            }
            other => panic!("{other:?}"),
        }
        let event = Event::Fatal("worker process 1 exited early".into());
        let back: Event = from_line(&to_line(&event).unwrap()).unwrap();
        assert!(back.is_last());
        assert!(!Event::Progress(Progress::default()).is_last());
        assert!(from_line::<Event>("{\"Nonsense\":1}").is_err());
    }
}

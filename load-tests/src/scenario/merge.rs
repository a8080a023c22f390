//! Many workers' answers as one: histograms added, failures summed by cause,
//! per-destination counts added.

use crate::stats::{new_histogram, HistData, Percentiles};
use crate::wire::{ActivityResult, Failures, Ready};
use hdrhistogram::Histogram;
use serde::Serialize;

pub fn histograms(parts: impl IntoIterator<Item = HistData>) -> Histogram<u64> {
    let mut merged = new_histogram();
    for part in parts {
        part.add_to(&mut merged);
    }
    merged
}

pub fn failures<'a>(maps: impl IntoIterator<Item = &'a Failures>) -> Failures {
    let mut merged = Failures::new();
    for map in maps {
        for (cause, count) in map {
            *merged.entry(cause.clone()).or_default() += count;
        }
    }
    merged
}

/// How the checking subscribers were set up (`setup` or `background_setup`
/// in the JSON).
#[derive(Debug, Serialize)]
pub struct SetupSummary {
    pub subscribed: u64,
    pub failures: Failures,
    pub seconds: f64,
    pub latency: Percentiles,
    /// Subscribed connections per node (the `--url`s' order).
    pub per_node: Vec<u64>,
}

/// The workers' `Ready`s: the summary, and the subscribed connections per
/// destination (each destination's share of every published message).
pub fn readies(readies: &[Ready], destinations: u32) -> (SetupSummary, Vec<u64>) {
    let mut per_dest = vec![0u64; destinations.max(1) as usize];
    for ready in readies {
        for (dest, count) in ready.per_dest.iter().enumerate() {
            if let Some(total) = per_dest.get_mut(dest) {
                *total += count;
            }
        }
    }
    let mut per_node: Vec<u64> = Vec::new();
    for ready in readies {
        if per_node.len() < ready.per_node.len() {
            per_node.resize(ready.per_node.len(), 0);
        }
        for (node, count) in ready.per_node.iter().enumerate() {
            per_node[node] += count;
        }
    }
    let latency = histograms(readies.iter().map(|r| r.setup.clone()));
    let summary = SetupSummary {
        per_node,
        subscribed: readies.iter().map(|r| r.subscribed).sum(),
        failures: failures(readies.iter().map(|r| &r.failures)),
        seconds: readies.iter().map(|r| r.setup_secs).fold(0.0, f64::max),
        latency: Percentiles::of(&latency),
    };
    (summary, per_dest)
}

/// The workers' storm or churn results as one: counts and failures added,
/// the elapsed time the longest worker's; and the setup latencies.
pub fn activities(results: &[ActivityResult]) -> (ActivityResult, Percentiles) {
    let sum = |field: fn(&ActivityResult) -> u64| results.iter().map(field).sum::<u64>();
    let setup = histograms(results.iter().map(|r| r.setup.clone()));
    let merged = ActivityResult {
        attempted: sum(|r| r.attempted),
        ok: sum(|r| r.ok),
        failures: failures(results.iter().map(|r| &r.failures)),
        setup: HistData::from_hist(&setup),
        elapsed_secs: results.iter().map(|r| r.elapsed_secs).fold(0.0, f64::max),
        closed_ok: sum(|r| r.closed_ok),
        closed_without_receipt: sum(|r| r.closed_without_receipt),
        close_failures: failures(results.iter().map(|r| &r.close_failures)),
        skipped_at_limit: sum(|r| r.skipped_at_limit),
        peak_open: sum(|r| r.peak_open),
    };
    (merged, Percentiles::of(&setup))
}

//! Latency histograms (HDR, microseconds) and how they travel between
//! worker processes and get merged.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Highest latency we can record: 10 minutes, in microseconds.
const MAX_US: u64 = 600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds are valid")
}

/// A histogram behind a few mutexes, so that tasks on different threads
/// rarely touch the same lock. Each subscriber always uses the same shard.
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl ShardedHistogram {
    pub fn new(shards: usize) -> ShardedHistogram {
        ShardedHistogram {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    pub fn shard(&self, key: usize) -> &Mutex<Histogram<u64>> {
        &self.shards[key % self.shards.len()]
    }

    /// Merges every shard into one and resets them.
    pub fn take(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            let mut h = s.lock().unwrap_or_else(|e| e.into_inner());
            let _ = all.add(&*h);
            h.reset();
        }
        all
    }
}

/// Records a latency in nanoseconds, clamped into the histogram's range.
#[inline]
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record((ns / 1000).clamp(1, MAX_US));
}

/// A histogram as (value, count) pairs of its non-empty buckets: compact
/// JSON for the trip from a worker process to the coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

impl HistData {
    pub fn from_hist(h: &Histogram<u64>) -> HistData {
        HistData(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(v, c) in &self.0 {
            let _ = h.record_n(v.clamp(1, MAX_US), c);
        }
    }
}

/// Percentiles in milliseconds, as reported.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

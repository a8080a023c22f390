//! How numbers read in the table, the progress line and the plot: every
//! unit and precision the tool prints is chosen here.

use crate::stats::Percentiles;
use crate::wire::Failures;

/// A count or rate: 1234567 -> "1.23M", 23456 -> "23.5k", 999 -> "999".
pub fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// Milliseconds with three significant digits or so: "123", "12.3", "1.23".
pub fn ms(millis: f64) -> String {
    if millis >= 100.0 {
        format!("{millis:.0}")
    } else if millis >= 10.0 {
        format!("{millis:.1}")
    } else {
        format!("{millis:.2}")
    }
}

/// Bytes in MiB: "12.3 MiB".
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The change from `before` to `after` bytes, signed, in MiB: "+0.1 MiB".
pub fn mib_change(before: u64, after: u64) -> String {
    format!(
        "{:+.1} MiB",
        (after as f64 - before as f64) / (1024.0 * 1024.0)
    )
}

/// Bytes in (decimal) KB: "6.7 KB".
pub fn kb(bytes: f64) -> String {
    format!("{:.1} KB", bytes / 1000.0)
}

/// CPU time per wall time, where 100 is one whole core: "45% of one core".
pub fn of_one_core(percent: f64) -> String {
    format!("{percent:.0}% of one core")
}

/// Latency percentiles: "p50 1.23 p90 … max 45.6 ms (n=1000)".
pub fn percentiles(latency: &Percentiles) -> String {
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} ms (n={})",
        ms(latency.p50_ms),
        ms(latency.p90_ms),
        ms(latency.p99_ms),
        ms(latency.p999_ms),
        ms(latency.max_ms),
        latency.count
    )
}

/// Failures by cause: "3 x tcp: connection refused; 1 x timeout …", or "none".
pub fn failures(failures: &Failures) -> String {
    if failures.is_empty() {
        return "none".into();
    }
    failures
        .iter()
        .map(|(cause, count)| format!("{count} x {cause}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A step's or run's verdict.
pub fn verdict(passed: bool) -> &'static str {
    if passed {
        "PASS"
    } else {
        "FAIL"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_before() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(23_456.0), "23.5k");
        assert_eq!(human(999.4), "999");
        assert_eq!(
            (ms(123.4), ms(12.34), ms(1.234)),
            ("123".into(), "12.3".into(), "1.23".into())
        );
        assert_eq!(mib(14 * 1024 * 1024 + 200 * 1024), "14.2 MiB");
        assert_eq!(mib_change(10 << 20, (10 << 20) + 100_000), "+0.1 MiB");
        assert_eq!(mib_change(10 << 20, 9 << 20), "-1.0 MiB");
        assert_eq!(kb(6_700.0), "6.7 KB");
        assert_eq!(of_one_core(44.6), "45% of one core");
        let mut by_cause = Failures::new();
        assert_eq!(failures(&by_cause), "none");
        by_cause.insert("tcp: connection refused".into(), 3);
        by_cause.insert("timeout waiting for CONNECTED".into(), 1);
        assert_eq!(
            failures(&by_cause),
            "3 x tcp: connection refused; 1 x timeout waiting for CONNECTED"
        );
    }
}

//! The end of a run: a human-readable table on stdout and a JSON file with
//! every figure and the exact parameters.

use crate::floor::Floor;
use crate::format::{self, ms};
use crate::stats::Percentiles;
use serde::Serialize;
use serde_json::Value;

/// Collects rows for the table and fields for the JSON report.
pub struct Report {
    pub scenario: &'static str,
    pub json: serde_json::Map<String, Value>,
    rows: Vec<(String, String)>,
    /// This box's floor, if measured: latency and rate rows are also read
    /// against it.
    floor: Option<Floor>,
}

impl Report {
    pub fn new(scenario: &'static str, params: Value) -> Report {
        let mut json = serde_json::Map::new();
        json.insert("scenario".into(), scenario.into());
        json.insert(
            "command".into(),
            Value::from(std::env::args().collect::<Vec<_>>()),
        );
        json.insert("params".into(), params);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json.insert("started_unix".into(), unix.into());
        Report {
            scenario,
            json,
            rows: Vec::new(),
            floor: None,
        }
    }

    /// Records this box's floor (`floor` in the JSON, a row in the table);
    /// from then on latency rows and `in_floors` read figures against it.
    pub fn set_floor(&mut self, floor: Result<Floor, String>) {
        match floor {
            Ok(floor) => {
                self.row("box floor", floor.describe());
                self.set("floor", &floor);
                self.floor = Some(floor);
            }
            Err(error) => {
                self.row("box floor", format!("not measured: {error}"));
                self.set("floor", Value::Null);
            }
        }
    }

    /// " [= N cores of unbatched send()]" for a rate of `per_sec` sends'
    /// worth of work (deliveries, setups), or "" without a floor.
    pub fn in_floors(&self, per_sec: f64) -> String {
        match &self.floor {
            Some(floor) => format!(
                " [x floor {:.1} us = {:.2} cores of unbatched send()]",
                floor.send_us,
                floor.rate_in_floors(per_sec)
            ),
            None => String::new(),
        }
    }

    /// " = N x the fan-out floor's CPU per send" for CPU microseconds per
    /// delivery, or "" without that floor.
    pub fn in_fanout_cpu(&self, cpu_us: f64) -> String {
        match self.floor.as_ref().and_then(|floor| floor.fanout.as_ref()) {
            Some(fanout) => format!(
                " = {:.2} x the fan-out floor's {:.1} us CPU per send",
                cpu_us / fanout.cpu_us.max(1e-3),
                fanout.cpu_us
            ),
            None => String::new(),
        }
    }

    /// A latency against the wall time of one unbatched send to each of
    /// `readers` (the fan-out floor), or `None` without that floor.
    pub fn in_fanout_sends(&self, millis: f64, readers: u64) -> Option<String> {
        let fanout = self.floor.as_ref()?.fanout.as_ref()?;
        let sends_ms = fanout.send_us * readers as f64 / 1000.0;
        Some(format!(
            "{:.2} x the {:.1} ms that {readers} unbatched sends take ({:.1} us each)",
            millis / sends_ms.max(1e-6),
            sends_ms,
            fanout.send_us
        ))
    }

    pub fn set(&mut self, key: &str, value: impl Serialize) {
        self.json.insert(
            key.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    pub fn row(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.rows.push((name.into(), value.into()));
    }

    pub fn section(&mut self, title: &str) {
        self.rows.push((format!("-- {title}"), String::new()));
    }

    /// Percentiles, and with a floor, p50 and p99 in floors (how many
    /// unbatched loopback sends each is worth).
    pub fn latency_row(&mut self, name: &str, percentiles: &Percentiles) {
        let mut text = format::percentiles(percentiles);
        if let Some(floor) = &self.floor {
            text += &format!(
                " [p50 {:.0}, p99 {:.0} floors]",
                floor.latency_in_floors(percentiles.p50_ms),
                floor.latency_in_floors(percentiles.p99_ms)
            );
        }
        self.row(name, text);
    }

    /// Prints the table and writes the JSON file; returns its path.
    pub fn finish(self, path: Option<&str>) -> Result<String, String> {
        let width = self
            .rows
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.len())
            .max()
            .unwrap_or(0);
        println!("== stompede-load {} ==", self.scenario);
        for (name, value) in &self.rows {
            if value.is_empty() {
                println!("{name}");
            } else {
                println!("  {name:<width$}  {value}");
            }
        }
        let path = match path {
            Some(path) => path.to_string(),
            None => {
                let started = self
                    .json
                    .get("started_unix")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                format!("stompede-load-{}-{started}.json", self.scenario)
            }
        };
        let text =
            serde_json::to_string_pretty(&Value::Object(self.json)).map_err(|e| e.to_string())?;
        std::fs::write(&path, text + "\n").map_err(|e| format!("writing {path}: {e}"))?;
        println!("  {:<width$}  {path}", "JSON report");
        Ok(path)
    }
}

/// A latency percentile plot (SVG): one line per series, x = percentile on
/// a log scale of 1/(1-q) (50% .. 99.995%), y = milliseconds.
pub fn latency_svg(series: &[(String, hdrhistogram::Histogram<u64>)]) -> String {
    const W: f64 = 720.0; // width
    const H: f64 = 400.0; // height
    const L: f64 = 60.0; // left margin (the y labels)
    const B: f64 = 40.0; // bottom margin (the x labels)
    let qs: Vec<f64> = (0..=80)
        .map(|i| 1.0 - 0.5 * 10f64.powf(-(i as f64) / 20.0))
        .collect();
    let ymax = series
        .iter()
        .filter(|(_, histogram)| !histogram.is_empty())
        .map(|(_, histogram)| histogram.max() as f64 / 1000.0)
        .fold(1.0, f64::max);
    // x: 0 at the 50th percentile (1/(1-q) = 2), four decades across.
    let x = |q: f64| L + (-(1.0 - q).log10() - std::f64::consts::LOG10_2) / 4.0 * (W - L - 20.0);
    let y = |v: f64| H - B - v / ymax * (H - B - 20.0);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    svg += &format!(
        r#"<rect width="{W}" height="{H}" fill="white"/><line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{L}" y1="20" x2="{L}" y2="{}" stroke="black"/>"#,
        H - B,
        W - 20.0,
        H - B,
        H - B
    );
    for (label, q) in [
        ("50%", 0.5),
        ("90%", 0.9),
        ("99%", 0.99),
        ("99.9%", 0.999),
        ("99.99%", 0.9999),
    ] {
        svg += &format!(
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            x(q),
            H - B + 15.0
        );
    }
    for i in 0..=4 {
        let value = ymax * i as f64 / 4.0;
        svg += &format!(
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            L - 4.0,
            y(value) + 4.0,
            ms(value)
        );
    }
    svg += &format!(
        r#"<text x="12" y="{}" transform="rotate(-90 12 {})">latency, ms</text>"#,
        H / 2.0,
        H / 2.0
    );
    for (i, (label, histogram)) in series.iter().enumerate() {
        if histogram.is_empty() {
            continue;
        }
        let colour = colors[i % colors.len()];
        let points: Vec<String> = qs
            .iter()
            .map(|&q| {
                format!(
                    "{:.1},{:.1}",
                    x(q),
                    y(histogram.value_at_quantile(q) as f64 / 1000.0)
                )
            })
            .collect();
        svg += &format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        svg += &format!(
            r#"<text x="{}" y="{}" fill="{colour}">{label}</text>"#,
            L + 10.0,
            30 + 14 * i
        );
    }
    svg + "</svg>\n"
}

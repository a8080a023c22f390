//! The end of a run: a human-readable table on stdout and a JSON file with
//! every figure and the exact parameters.

use crate::stats::Percentiles;
use serde::Serialize;
use serde_json::Value;

/// Collects rows for the table and fields for the JSON report.
pub struct Report {
    pub scenario: &'static str,
    pub json: serde_json::Map<String, Value>,
    rows: Vec<(String, String)>,
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
        }
    }

    pub fn set(&mut self, key: &str, v: impl Serialize) {
        self.json
            .insert(key.into(), serde_json::to_value(v).unwrap_or(Value::Null));
    }

    pub fn row(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.rows.push((name.into(), value.into()));
    }

    pub fn section(&mut self, title: &str) {
        self.rows.push((format!("-- {title}"), String::new()));
    }

    pub fn latency_row(&mut self, name: &str, p: &Percentiles) {
        self.row(
            name,
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} max {} ms (n={})",
                ms(p.p50_ms),
                ms(p.p90_ms),
                ms(p.p99_ms),
                ms(p.p999_ms),
                ms(p.max_ms),
                p.count
            ),
        );
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
        for (k, v) in &self.rows {
            if v.is_empty() {
                println!("{k}");
            } else {
                println!("  {k:<width$}  {v}");
            }
        }
        let path = match path {
            Some(p) => p.to_string(),
            None => {
                let t = self
                    .json
                    .get("started_unix")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                format!("stompede-load-{}-{t}.json", self.scenario)
            }
        };
        let text =
            serde_json::to_string_pretty(&Value::Object(self.json)).map_err(|e| e.to_string())?;
        std::fs::write(&path, text + "\n").map_err(|e| format!("writing {path}: {e}"))?;
        println!("  {:<width$}  {path}", "JSON report");
        Ok(path)
    }
}

pub fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// A latency percentile plot (SVG): one line per series, x = percentile on
/// a log scale of 1/(1-q) (50% .. 99.995%), y = milliseconds.
pub fn latency_svg(series: &[(String, &hdrhistogram::Histogram<u64>)]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const L: f64 = 60.0;
    const B: f64 = 40.0;
    let qs: Vec<f64> = (0..=80)
        .map(|i| 1.0 - 0.5 * 10f64.powf(-(i as f64) / 20.0))
        .collect();
    let ymax = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(_, h)| h.max() as f64 / 1000.0)
        .fold(1.0, f64::max);
    let x = |q: f64| L + (-(1.0 - q).log10() - 0.30103) / 4.0 * (W - L - 20.0);
    let y = |v: f64| H - B - v / ymax * (H - B - 20.0);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    s += &format!(
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
        s += &format!(
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            x(q),
            H - B + 15.0
        );
    }
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        s += &format!(
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            L - 4.0,
            y(v) + 4.0,
            ms(v)
        );
    }
    s += &format!(
        r#"<text x="12" y="{}" transform="rotate(-90 12 {})">latency, ms</text>"#,
        H / 2.0,
        H / 2.0
    );
    for (i, (label, h)) in series.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        let c = colors[i % colors.len()];
        let pts: Vec<String> = qs
            .iter()
            .map(|&q| {
                format!(
                    "{:.1},{:.1}",
                    x(q),
                    y(h.value_at_quantile(q) as f64 / 1000.0)
                )
            })
            .collect();
        s += &format!(
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        s += &format!(
            r#"<text x="{}" y="{}" fill="{c}">{label}</text>"#,
            L + 10.0,
            30 + 14 * i
        );
    }
    s + "</svg>\n"
}

//! The broker's own figures, read from stompede's `GET /metrics`
//! (Prometheus text): its counts of connections, subscriptions and
//! destinations, so that `churn` can show the registry ends where it
//! started; and its delivery latency histogram (publish to the MESSAGE
//! handed to the subscriber's socket), so that a fan-out step can show the
//! broker's own view beside the tool's. Other brokers have no such
//! endpoint; `--metrics-url` is for stompede only.

use crate::target::Target;
use serde::Serialize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Larger answers are refused: /metrics is a few KiB.
const MAX_ANSWER_BYTES: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RegistryCounts {
    pub connections: f64,
    pub subscriptions: f64,
    pub destinations: f64,
}

impl std::fmt::Display for RegistryCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections, {} subscriptions, {} destinations",
            self.connections, self.subscriptions, self.destinations
        )
    }
}

/// One `GET` of the metrics URL (loopback only, like every target).
pub async fn scrape(url: &str) -> Result<RegistryCounts, String> {
    let (status, body) = get(url).await?;
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    parse(&body).map_err(|e| format!("{url}: {e}"))
}

/// One `GET` of a loopback `http://` URL: the status and the body (read
/// to the end; the request asks the server to close). At most 1 MiB and 5 s.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    let target = Target::parse(url, "http")?;
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            target.path, target.authority
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, fetch)
        .await
        .map_err(|_| format!("{url}: no answer within {TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    Ok((status, body.to_string()))
}

/// stompede's histogram of the time from a publish to the MESSAGE handed to
/// the subscriber's socket (one sample per socket write batch: its oldest
/// delivery).
pub const DELIVERY_LATENCY: &str = "stompede_delivery_latency_seconds";

/// A Prometheus histogram's cumulative buckets: (upper bound in seconds,
/// samples at or below it), in increasing order, `+Inf` last.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Buckets(pub Vec<(f64, u64)>);

/// One `GET` of the metrics URL, and the histogram `name` out of it.
pub async fn scrape_histogram(url: &str, name: &str) -> Result<Buckets, String> {
    let (status, body) = get(url).await?;
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    parse_histogram(&body, name).map_err(|e| format!("{url}: {e}"))
}

fn parse_histogram(text: &str, name: &str) -> Result<Buckets, String> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let (labels, count) = rest
            .rsplit_once("} ")
            .ok_or_else(|| format!("bad bucket line {line:?}"))?;
        let le = labels
            .split(',')
            .find_map(|label| label.trim().strip_prefix("le=\"")?.strip_suffix('"'))
            .ok_or_else(|| format!("no le in {line:?}"))?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().map_err(|e| format!("bucket {le:?}: {e}"))?
        };
        let count = count
            .trim()
            .parse::<f64>()
            .map_err(|e| format!("bucket count in {line:?}: {e}"))?;
        buckets.push((le, count as u64));
    }
    if buckets.is_empty() {
        return Err(format!(
            "no {name} histogram (is this stompede's /metrics?)"
        ));
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Buckets(buckets))
}

impl Buckets {
    /// What was recorded between `before` and `self` (same bucket bounds).
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, count)| {
                    let earlier = before
                        .0
                        .iter()
                        .find(|&&(bound, _)| bound == le)
                        .map_or(0, |&(_, count)| count);
                    (le, count.saturating_sub(earlier))
                })
                .collect(),
        )
    }

    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |&(_, count)| count)
    }

    /// The bucket holding quantile `q`: (lower bound, upper bound) in
    /// seconds; `None` when empty.
    pub fn quantile_bucket(&self, q: f64) -> Option<(f64, f64)> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut lower = 0.0;
        for &(le, count) in &self.0 {
            if count >= rank {
                return Some((lower, le));
            }
            lower = le;
        }
        None
    }
}

/// The broker's own delivery latency over a step, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerLatency {
    /// Samples (socket write batches) in the step.
    pub samples: u64,
    /// The bucket of each quantile, in ms: (above, at most).
    pub p50_ms: (f64, f64),
    pub p99_ms: (f64, f64),
    pub max_ms: (f64, f64),
}

impl BrokerLatency {
    pub fn of(buckets: &Buckets) -> Option<BrokerLatency> {
        let ms = |(low, high): (f64, f64)| (low * 1000.0, high * 1000.0);
        Some(BrokerLatency {
            samples: buckets.count(),
            p50_ms: ms(buckets.quantile_bucket(0.50)?),
            p99_ms: ms(buckets.quantile_bucket(0.99)?),
            max_ms: ms(buckets.quantile_bucket(1.0)?),
        })
    }
}

impl std::fmt::Display for BrokerLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let range = |(low, high): (f64, f64)| {
            if high.is_infinite() {
                format!("> {low} ms")
            } else {
                format!("{low}-{high} ms")
            }
        };
        write!(
            f,
            "p50 {}, p99 {}, max {} ({} write batches; buckets of /metrics)",
            range(self.p50_ms),
            range(self.p99_ms),
            range(self.max_ms),
            self.samples
        )
    }
}

/// Reads the three gauges out of Prometheus text.
fn parse(text: &str) -> Result<RegistryCounts, String> {
    let gauge = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .ok_or_else(|| format!("no {name} sample (is this stompede's /metrics?)"))?
            .trim()
            .parse::<f64>()
            .map_err(|e| format!("{name}: {e}"))
    };
    Ok(RegistryCounts {
        connections: gauge("stompede_connections")?,
        subscriptions: gauge("stompede_subscriptions")?,
        destinations: gauge("stompede_destinations")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gauges_and_names_what_is_missing() {
        let text = "# HELP stompede_connections Open WebSocket connections\n\
                    # TYPE stompede_connections gauge\n\
                    stompede_connections 3\n\
                    stompede_connections_other 9\n\
                    stompede_destinations 2\n\
                    stompede_subscriptions 5\n";
        assert_eq!(
            parse(text),
            Ok(RegistryCounts {
                connections: 3.0,
                subscriptions: 5.0,
                destinations: 2.0
            })
        );
        let err = parse("stompede_connections 1\n").unwrap_err();
        assert!(err.contains("stompede_subscriptions"), "{err}");
    }

    #[test]
    fn reads_a_histogram_and_its_quantiles_over_a_step() {
        let at = |a: u64, b: u64, c: u64| {
            format!(
                "# TYPE stompede_delivery_latency_seconds histogram\n\
                 stompede_delivery_latency_seconds_bucket{{le=\"0.001\"}} {a}\n\
                 stompede_delivery_latency_seconds_bucket{{le=\"0.01\"}} {b}\n\
                 stompede_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {c}\n\
                 stompede_delivery_latency_seconds_sum 1\n\
                 stompede_delivery_latency_seconds_count {c}\n"
            )
        };
        let before = parse_histogram(&at(5, 5, 5), DELIVERY_LATENCY).unwrap();
        let after = parse_histogram(&at(55, 104, 105), DELIVERY_LATENCY).unwrap();
        let step = after.since(&before);
        assert_eq!(step.count(), 100);
        assert_eq!(step.quantile_bucket(0.5), Some((0.0, 0.001)));
        assert_eq!(step.quantile_bucket(0.99), Some((0.001, 0.01)));
        assert_eq!(step.quantile_bucket(1.0), Some((0.01, f64::INFINITY)));
        let latency = BrokerLatency::of(&step).unwrap();
        assert_eq!(latency.p99_ms, (1.0, 10.0));
        assert!(latency.to_string().contains("max > 10 ms"), "{latency}");
        assert_eq!(
            BrokerLatency::of(&before.since(&before)).map(|l| l.samples),
            None
        );
        assert!(parse_histogram("x 1\n", DELIVERY_LATENCY).is_err());
    }
}

//! The broker's own counts of connections, subscriptions and destinations,
//! read from stompede's `GET /metrics` (Prometheus text), so that `churn` can
//! show the registry ends where it started. Other brokers have no such
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
}

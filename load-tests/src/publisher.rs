//! Open-loop publishers: each sends on a fixed schedule, never waiting for
//! the previous message's answer, either as HTTP/1.1 requests pipelined on
//! one keep-alive connection (`POST /api/v1/publish`, stompede) or as STOMP
//! SEND frames on one WebSocket (any broker).

use crate::conn::{tcp_connect, Dialer};
use crate::frames::{send_frame, write_body, Incoming, Stamp};
use crate::stats::{new_histogram, record_ns};
use crate::sys::{due_ns, now_ns};
use crate::target::Target;
use bytes::{Bytes, BytesMut};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stompede_protocol::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Most messages sent in one burst when a publisher is behind schedule.
const MAX_BURST: u64 = 4096;
/// Most unanswered HTTP requests whose write time is kept (to time their
/// answers); beyond it, requests go untimed.
const MAX_TIMED_UNANSWERED: usize = 64 * 1024;

/// Where a publisher's messages go.
#[derive(Debug, Clone)]
pub enum Via {
    /// HTTP API endpoints: one, or several taken in turn (message k to
    /// endpoint k mod N), each over its own keep-alive connection.
    Http(Vec<Target>),
    /// STOMP SEND: to the dialer's first node, or with `round_robin` to
    /// each of its nodes in turn (one session per node).
    Stomp { round_robin: bool },
}

impl Via {
    /// The HTTP endpoints (none for STOMP SEND).
    pub fn http_targets(&self) -> &[Target] {
        match self {
            Via::Http(targets) => targets,
            Via::Stomp { .. } => &[],
        }
    }

    /// For the report: where publishes go, given how many `--url`s there are.
    pub fn describe(&self, nodes: usize) -> String {
        match self {
            Via::Http(targets) if targets.len() == 1 => {
                format!("POST {} (one node)", targets[0].url)
            }
            Via::Http(targets) => format!(
                "POST round-robin over {} nodes: {}",
                targets.len(),
                targets
                    .iter()
                    .map(|t| t.authority.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Via::Stomp { round_robin: true } if nodes > 1 => {
                format!("STOMP SEND round-robin over the {nodes} --urls")
            }
            Via::Stomp { .. } => "STOMP SEND to the first --url".into(),
        }
    }
}

/// Answers and errors seen by a publisher's reader.
struct Answers {
    accepted: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// HTTP: requests written and answers read so far, numbering both.
    requests: AtomicU64,
    answers: AtomicU64,
    /// HTTP: (request number, CLOCK_MONOTONIC ns it was written) of the
    /// unanswered requests being timed, oldest first; answers come back in
    /// order. At most `MAX_TIMED_UNANSWERED`: past it, requests go untimed.
    written_at: Mutex<VecDeque<(u64, u64)>>,
    /// HTTP: from a request's write to its answer, this step.
    answered_in: Mutex<Histogram<u64>>,
}

impl Default for Answers {
    fn default() -> Answers {
        Answers {
            accepted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
            requests: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            written_at: Mutex::new(VecDeque::new()),
            answered_in: Mutex::new(new_histogram()),
        }
    }
}

impl Answers {
    /// Notes that `count` requests were written at `now`.
    fn written(&self, count: u64, now: u64) {
        let first = self.requests.fetch_add(count, Ordering::Relaxed);
        let mut written_at = self.written_at.lock().unwrap_or_else(|e| e.into_inner());
        for request in first..first + count {
            if written_at.len() >= MAX_TIMED_UNANSWERED {
                break;
            }
            written_at.push_back((request, now));
        }
    }

    /// The next answer arrived at `now`.
    fn answered(&self, now: u64) {
        let answer = self.answers.fetch_add(1, Ordering::Relaxed);
        let mut written_at = self.written_at.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(request, at)) = written_at.front() {
            if request > answer {
                break;
            }
            written_at.pop_front();
            if request == answer {
                let mut answered_in = self.answered_in.lock().unwrap_or_else(|e| e.into_inner());
                record_ns(&mut answered_in, now.saturating_sub(at));
            }
        }
    }
}

/// One connection to one node.
enum Link {
    Http {
        write: OwnedWriteHalf,
        host: String,
        path: String,
        /// Requests due in this burst.
        buf: Vec<u8>,
    },
    Stomp {
        sink: SplitSink<crate::conn::Ws, Message>,
        /// Whether this burst fed it anything to flush.
        fed: bool,
    },
}

pub struct Publisher {
    /// One link per node published to; message k goes to `links[k % len]`.
    links: Vec<Link>,
    answers: Arc<Answers>,
    /// Destination indexes this publisher owns, and their names.
    dests: Vec<u32>,
    names: Vec<String>,
    body_size: usize,
    /// Requests written so far (HTTP answers are matched against it).
    written: u64,
}

/// What one publisher did in one step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishStep {
    /// (destination index, messages published to it).
    #[serde(skip)]
    pub sent: Vec<(u32, u64)>,
    pub published: u64,
    pub accepted: u64,
    pub failed: u64,
    /// The furthest the publisher fell behind its schedule.
    pub max_lag_ms: f64,
    /// HTTP: from writing a request to reading its answer (the broker's
    /// handling, which includes queueing every subscriber's copy, plus the
    /// loopback round trip); empty for STOMP SEND, which has no answer.
    #[serde(skip)]
    pub answered_in: Option<Histogram<u64>>,
    pub first_error: Option<String>,
}

impl Publisher {
    pub async fn connect(
        via: &Via,
        dialer: &Dialer,
        index: u64,
        dests: Vec<u32>,
        prefix: &str,
        body_size: usize,
    ) -> Result<Publisher, String> {
        let answers = Arc::new(Answers::default());
        let names = dests.iter().map(|d| format!("{prefix}{d}")).collect();
        let mut links = Vec::new();
        match via {
            Via::Http(targets) => {
                for (node, t) in targets.iter().enumerate() {
                    // Source addresses apart for each node's connection.
                    let source = index * targets.len() as u64 + node as u64;
                    let stream = tcp_connect(t.addr, source)
                        .await
                        .map_err(|e| format!("publisher: connecting to {}: {e}", t.url))?;
                    let (read, write) = stream.into_split();
                    tokio::spawn(read_http_answers(read, answers.clone()));
                    links.push(Link::Http {
                        write,
                        host: t.authority.clone(),
                        path: t.path.clone(),
                        buf: Vec::with_capacity(64 * 1024),
                    });
                }
            }
            Via::Stomp { round_robin } => {
                let nodes = if *round_robin {
                    dialer.targets.len()
                } else {
                    1
                };
                for node in 0..nodes {
                    let source = index * nodes as u64 + node as u64;
                    let s = dialer
                        .open_on(node, source)
                        .await
                        .map_err(|e| format!("publisher: {}", e.cause()))?;
                    let (sink, stream) = s.ws.split();
                    tokio::spawn(read_stomp_answers(stream, s.inbox, answers.clone()));
                    links.push(Link::Stomp { sink, fed: false });
                }
            }
        }
        Ok(Publisher {
            links,
            answers,
            dests,
            names,
            body_size,
            written: 0,
        })
    }

    /// Publishes at `rate` messages/s over this publisher's destinations in
    /// turn, for `duration` or until `stop` turns true. Message `k` is due
    /// at `start + k / rate` and is stamped with that time.
    pub async fn run_step(
        &mut self,
        step: u32,
        rate: f64,
        duration: Duration,
        stop: Option<watch::Receiver<bool>>,
        counter: Arc<AtomicU64>,
    ) -> PublishStep {
        let n = self.dests.len() as u64;
        let start = now_ns() + 1_000_000;
        let end = start + duration.as_nanos() as u64;
        let before = (
            self.answers.accepted.load(Ordering::Relaxed),
            self.answers.failed.load(Ordering::Relaxed),
        );
        let mut k: u64 = 0;
        let mut max_lag = 0u64;
        let mut body: Vec<u8> = Vec::with_capacity(self.body_size + 64);
        let mut error: Option<String> = None;
        let links = self.links.len() as u64;
        'run: loop {
            let now = now_ns();
            let mut burst = 0;
            loop {
                let due = due_ns(start, k, rate);
                if due > now || due >= end || burst >= MAX_BURST {
                    break;
                }
                let j = (k % n) as usize;
                body.clear();
                write_body(
                    &Stamp {
                        step,
                        dest: self.dests[j],
                        seq: k / n,
                        sent_ns: due,
                    },
                    self.body_size,
                    &mut body,
                );
                match &mut self.links[(k % links) as usize] {
                    Link::Http {
                        host, path, buf, ..
                    } => http_request(buf, host, path, &self.names[j], &body),
                    Link::Stomp { sink, fed } => {
                        *fed = true;
                        if let Err(e) = sink
                            .feed(Message::Binary(send_frame(
                                &self.names[j],
                                Bytes::copy_from_slice(&body),
                            )))
                            .await
                        {
                            error = Some(format!("STOMP send: {e}"));
                            break 'run;
                        }
                    }
                }
                max_lag = max_lag.max(now - due);
                k += 1;
                burst += 1;
            }
            if burst > 0 {
                if matches!(self.links[0], Link::Http { .. }) {
                    self.answers.written(burst, now_ns());
                }
                let mut r = Ok(());
                for link in &mut self.links {
                    let written = match link {
                        Link::Http { write, buf, .. } if !buf.is_empty() => {
                            let written = write
                                .write_all(buf)
                                .await
                                .map_err(|e| format!("HTTP write: {e}"));
                            buf.clear();
                            written
                        }
                        Link::Stomp { sink, fed } if *fed => {
                            *fed = false;
                            sink.flush().await.map_err(|e| format!("STOMP send: {e}"))
                        }
                        _ => Ok(()),
                    };
                    r = r.and(written);
                }
                self.written += burst;
                counter.fetch_add(burst, Ordering::Relaxed);
                if let Err(e) = r {
                    error = Some(e);
                    break;
                }
            }
            let next = due_ns(start, k, rate);
            if next >= end || stop.as_ref().is_some_and(|s| *s.borrow()) {
                break;
            }
            let now = now_ns();
            if next > now {
                tokio::time::sleep(Duration::from_nanos(next - now)).await;
            }
        }
        // HTTP: wait (bounded) for the answers to everything written.
        if matches!(self.links[0], Link::Http { .. }) {
            let deadline = now_ns() + 10_000_000_000;
            while self.answers.accepted.load(Ordering::Relaxed)
                + self.answers.failed.load(Ordering::Relaxed)
                < self.written
                && now_ns() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut sent = Vec::with_capacity(n as usize);
        for (j, &d) in self.dests.iter().enumerate() {
            let j = j as u64;
            sent.push((d, k / n + u64::from(j < k % n)));
        }
        let accepted = self.answers.accepted.load(Ordering::Relaxed) - before.0;
        let failed = self.answers.failed.load(Ordering::Relaxed) - before.1;
        let first_error = error.or_else(|| {
            self.answers
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        let answered_in = match self.links[0] {
            Link::Http { .. } => {
                let mut histogram = self
                    .answers
                    .answered_in
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let taken = histogram.clone();
                histogram.reset();
                Some(taken)
            }
            Link::Stomp { .. } => None,
        };
        PublishStep {
            answered_in,
            sent,
            published: k,
            // A STOMP SEND without receipt gets no answer: "accepted" means written.
            accepted: if matches!(self.links[0], Link::Stomp { .. }) {
                k - failed.min(k)
            } else {
                accepted
            },
            failed,
            max_lag_ms: max_lag as f64 / 1e6,
            first_error,
        }
    }
}

fn http_request(out: &mut Vec<u8>, host: &str, path: &str, destination: &str, body: &[u8]) {
    // The body is digits, spaces and dots, and the destination is ours:
    // nothing needs JSON escaping.
    let json_len = r#"{"destination":"","body":""}"#.len() + destination.len() + body.len();
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(json_len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n{\"destination\":\"");
    out.extend_from_slice(destination.as_bytes());
    out.extend_from_slice(b"\",\"body\":\"");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\"}");
}

/// Reads pipelined HTTP/1.1 answers in order: 2xx counts as accepted,
/// anything else as failed (the first one is kept for the report).
async fn read_http_answers(mut read: tokio::net::tcp::OwnedReadHalf, answers: Arc<Answers>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some((len, status)) = parse_http_answer(&buf) {
            answers.answered(now_ns());
            let answer = buf.split_to(len);
            if (200..300).contains(&status) {
                answers.accepted.fetch_add(1, Ordering::Relaxed);
            } else {
                answers.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = answers
                    .first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    let text = String::from_utf8_lossy(&answer[..answer.len().min(300)])
                        .replace("\r\n", " | ");
                    *first = Some(format!("HTTP {status}: {text}"));
                }
            }
        }
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let mut first = answers
                    .first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| "the broker closed the HTTP connection".into());
                return;
            }
            Ok(_) => {}
        }
    }
}

/// `Some((bytes, status))` when `buf` starts with a whole answer.
fn parse_http_answer(buf: &[u8]) -> Option<(usize, u16)> {
    let head_end = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let mut content_length = 0usize;
    let mut chunked = false;
    for line in head.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.trim().parse().ok()?;
        } else if k.eq_ignore_ascii_case("transfer-encoding")
            && v.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    if chunked {
        let end = memchr::memmem::find(&buf[head_end..], b"0\r\n\r\n")? + 5;
        return Some((head_end + end, status));
    }
    (buf.len() >= head_end + content_length).then_some((head_end + content_length, status))
}

async fn read_stomp_answers(
    mut stream: futures_util::stream::SplitStream<crate::conn::Ws>,
    mut inbox: crate::frames::Inbox,
    answers: Arc<Answers>,
) {
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Binary(b) => inbox.push(&b),
            Message::Text(t) => inbox.push(t.as_bytes()),
            _ => continue,
        }
        while let Ok(Some(item)) = inbox.next() {
            if let Incoming::Other(f) = item {
                if f.command == Command::Error {
                    answers.failed.fetch_add(1, Ordering::Relaxed);
                    let mut first = answers
                        .first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert_with(|| {
                        format!("STOMP ERROR: {}", crate::conn::error_text(&f))
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_parse() {
        let a = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\n{\"a\"}HTTP/1.1";
        assert_eq!(parse_http_answer(a), Some((a.len() - 8, 202)));
        assert_eq!(parse_http_answer(&a[..20]), None);
        let c =
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(parse_http_answer(c), Some((c.len(), 400)));
    }

    #[test]
    fn http_request_is_well_formed() {
        let mut out = Vec::new();
        http_request(
            &mut out,
            "127.0.0.1:8080",
            "/api/v1/publish",
            "/topic/a",
            b"1 2 3 4 ",
        );
        let s = String::from_utf8(out).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["destination"], "/topic/a");
    }
}

//! Smoke runs: each scenario for a couple of seconds against a real broker,
//! so the tool keeps working. Not a benchmark: the figures are only checked
//! for sanity (nothing lost, every connection set up).
//!
//! The broker under test:
//! - by default a `stompede` binary: `$STOMPEDE_BIN`, or the one cargo built
//!   next to `stompede-load` (`cargo test --workspace` builds both), started
//!   on a free loopback port with `--client-send allow`;
//! - or any running broker: `STOMPEDE_LOAD_SMOKE_URL=ws://127.0.0.1:15674/ws`
//!   plus `STOMPEDE_LOAD_SMOKE_ARGS="--publish stomp --login guest --passcode guest --vhost /"`
//!   (that is how these tests were first run, against RabbitMQ).
//!
//! TODO(broker): once `stompede::run(config, listener, shutdown)` is usable
//! from tests, start the broker in-process on 127.0.0.1:0 instead of
//! spawning the binary (and drop the skip below), as DESIGN §5 asks.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOAD: &str = env!("CARGO_BIN_EXE_stompede-load");

struct Broker {
    url: String,
    extra: Vec<String>,
    pid: Option<u32>,
    child: Option<Child>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stompede_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("STOMPEDE_BIN") {
        return Some(PathBuf::from(p));
    }
    let next_to_us = Path::new(LOAD).with_file_name("stompede");
    next_to_us.exists().then_some(next_to_us)
}

/// Starts (or finds) the broker; `None` means "skip": no broker available.
fn broker() -> Option<Broker> {
    if let Ok(url) = std::env::var("STOMPEDE_LOAD_SMOKE_URL") {
        let extra = std::env::var("STOMPEDE_LOAD_SMOKE_ARGS").unwrap_or_default();
        return Some(Broker { url, extra: extra.split_whitespace().map(String::from).collect(), pid: None, child: None });
    }
    let Some(bin) = stompede_bin() else {
        eprintln!("SKIPPED: no stompede binary (set STOMPEDE_BIN, or build the workspace) and no STOMPEDE_LOAD_SMOKE_URL");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--client-send", "allow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let pid = child.id();
    let b = Broker { url: format!("ws://127.0.0.1:{port}/ws"), extra: Vec::new(), pid: Some(pid), child: Some(child) };
    wait_healthy(port);
    Some(b)
}

fn wait_healthy(port: u16) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the broker did not answer /healthz on port {port} within 20 s");
}

/// Runs one scenario and returns its JSON report.
fn run(b: &Broker, scenario: &[&str]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("stompede-load-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join(format!("{}.json", scenario[0]));
    let mut cmd = Command::new(LOAD);
    cmd.args(["--url", &b.url, "--quiet", "--max-runtime", "120", "--json"]).arg(&json);
    cmd.args(&b.extra);
    if let Some(pid) = b.pid {
        cmd.args(["--broker-pid", &pid.to_string()]);
    }
    cmd.args(scenario);
    let out = cmd.output().expect("running stompede-load");
    assert!(
        out.status.success(),
        "stompede-load {scenario:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    v
}

#[test]
fn fanout_smoke() {
    let Some(b) = broker() else { return };
    let v = run(&b, &["fanout", "--subscribers", "50", "--destinations", "3", "--skew", "zipf", "--rate", "20,100", "--duration", "1.5"]);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for s in steps {
        assert!(s["published"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["lost"], 0, "{s}");
        assert_eq!(s["duplicated"], 0, "{s}");
        assert_eq!(s["misrouted"], 0, "{s}");
        assert_eq!(s["delivered"], s["expected_deliveries"], "{s}");
        assert!(s["latency"]["count"].as_u64().unwrap() > 0);
    }
    assert!(v["tool"]["cpu_secs"].as_f64().unwrap() > 0.0);
}

#[test]
fn fanout_in_worker_processes() {
    let Some(b) = broker() else { return };
    // Two worker processes of 30 connections each.
    let v = run(&b, &["--per-worker", "30", "fanout", "--subscribers", "60", "--rate", "50", "--duration", "1"]);
    assert_eq!(v["tool"]["worker_processes"], 2);
    assert_eq!(v["setup"]["subscribed"], 60);
    assert_eq!(v["steps"][0]["lost"], 0);
    assert_eq!(v["steps"][0]["subscribers"], 60);
}

#[test]
fn storm_smoke() {
    let Some(b) = broker() else { return };
    let v = run(
        &b,
        &["storm", "--connections", "300", "--rate", "300", "--concurrency", "50", "--background-subscribers", "20", "--background-rate", "20", "--baseline", "1"],
    );
    assert_eq!(v["storm"]["ok"], 300, "{}", v["storm"]);
    assert_eq!(v["storm"]["failed"], 0);
    let steps = v["background_steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s["lost"] == 0));
}

#[test]
fn churn_smoke() {
    let Some(b) = broker() else { return };
    let v = run(&b, &["churn", "--rate", "100", "--duration", "2", "--hold", "0.2", "--settle", "0.5"]);
    let c = &v["churn"];
    assert!(c["ok"].as_u64().unwrap() >= 150, "{c}");
    assert_eq!(c["ok"], c["closed_ok"], "{c}");
    if b.pid.is_some() {
        assert!(v["broker_rss_after"].as_u64().unwrap() > 0);
    }
}

#[test]
fn idle_smoke() {
    let Some(b) = broker() else { return };
    let v = run(&b, &["idle", "--connections", "200", "--destinations", "10", "--settle", "1"]);
    assert_eq!(v["setup"]["subscribed"], 200);
    assert_eq!(v["open_at_end"], 200);
    if b.pid.is_some() {
        assert!(v["broker_bytes_per_connection"].as_f64().is_some());
    }
}

#[test]
fn refuses_non_loopback_targets() {
    let out = Command::new(LOAD).args(["--url", "ws://10.1.2.3:80/ws", "idle", "--connections", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not loopback"));
}

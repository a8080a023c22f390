//! Smoke runs: each scenario for a couple of seconds against a real broker,
//! so the tool keeps working. Not a benchmark: the figures are only checked
//! for sanity (nothing lost, every connection set up).
//!
//! The broker under test:
//! - by default stompede itself, in this test process: `stompede::serve` on
//!   127.0.0.1:0 with client SEND allowed, on a runtime of its own thread
//!   (so `--broker-pid` is this process and the memory rows are exercised);
//! - or any running broker: `STOMPEDE_LOAD_SMOKE_URL=ws://127.0.0.1:15674/ws`
//!   plus `STOMPEDE_LOAD_SMOKE_ARGS="--publish stomp --login guest --passcode guest --vhost /"`
//!   (that is how these tests were first run, against RabbitMQ).

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOAD: &str = env!("CARGO_BIN_EXE_stompede-load");

/// How long a fan-out step (`fanout`'s, and `storm`'s background) waits for
/// late deliveries, and for a stall to end, before it counts what has not
/// arrived as lost. Generous, so that a
/// slow delivery on a busy box reads as slow (the latency figures) rather
/// than lost; a healthy step stops waiting as soon as all have arrived.
const DRAIN: [&str; 4] = ["--drain", "30", "--drain-idle", "30"];

/// How long the broker may take, after the churn, to forget its
/// connections (it learns of an abrupt close only when the socket ends).
const REGISTRY_DEADLINE: Duration = Duration::from_secs(10);

struct Broker {
    url: String,
    extra: Vec<String>,
    pid: Option<u32>,
    /// stompede's `/metrics`, when the broker is stompede.
    metrics_url: Option<String>,
    /// Stops the in-process broker; its thread is joined on drop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts stompede in this process, or names the external broker to test.
fn broker() -> Broker {
    if let Ok(url) = std::env::var("STOMPEDE_LOAD_SMOKE_URL") {
        let extra = std::env::var("STOMPEDE_LOAD_SMOKE_ARGS").unwrap_or_default();
        let extra = extra.split_whitespace().map(String::from).collect();
        return Broker {
            url,
            extra,
            pid: None,
            metrics_url: None,
            stop: None,
            thread: None,
        };
    }
    let config = stompede::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        client_send: stompede::config::ClientSend::Allow,
        shutdown_grace: Duration::from_secs(2),
        ..stompede::Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, address) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = stompede::bind(config.listen).expect("bind 127.0.0.1:0");
            bound.send(listener.local_addr().unwrap()).unwrap();
            let broker = Arc::new(stompede::Broker::new(config));
            stompede::serve(broker, listener, async move {
                let _ = stopped.await;
            })
            .await;
        });
    });
    let addr = address
        .recv_timeout(Duration::from_secs(10))
        .expect("the broker binds");
    Broker {
        url: format!("ws://{addr}/ws"),
        extra: Vec::new(),
        pid: Some(std::process::id()),
        metrics_url: Some(format!("http://{addr}/metrics")),
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// Runs one scenario and returns its JSON report.
fn run(b: &Broker, scenario: &[&str]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("stompede-load-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join(format!("{}.json", scenario[0]));
    let mut cmd = Command::new(LOAD);
    cmd.args(["--url", &b.url, "--quiet", "--max-runtime", "120", "--json"])
        .arg(&json);
    cmd.args(&b.extra);
    if let Some(pid) = b.pid {
        cmd.args(["--broker-pid", &pid.to_string()]);
    }
    cmd.args(scenario);
    if scenario
        .iter()
        .any(|arg| matches!(*arg, "fanout" | "storm"))
    {
        cmd.args(DRAIN);
    }
    let out = cmd.output().expect("running stompede-load");
    assert!(
        out.status.success(),
        "stompede-load {scenario:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    v
}

#[test]
fn fanout_smoke() {
    let b = broker();
    let v = run(
        &b,
        &[
            "fanout",
            "--subscribers",
            "50",
            "--destinations",
            "3",
            "--skew",
            "zipf",
            "--rate",
            "20,100",
            "--duration",
            "1.5",
        ],
    );
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
    let b = broker();
    // Two worker processes of 30 connections each.
    let v = run(
        &b,
        &[
            "--per-worker",
            "30",
            "fanout",
            "--subscribers",
            "60",
            "--rate",
            "50",
            "--duration",
            "1",
        ],
    );
    assert_eq!(v["tool"]["worker_processes"], 2);
    assert_eq!(v["setup"]["subscribed"], 60);
    assert_eq!(v["steps"][0]["lost"], 0);
    assert_eq!(v["steps"][0]["subscribers"], 60);
}

#[test]
fn storm_smoke() {
    let b = broker();
    let v = run(
        &b,
        &[
            "storm",
            "--connections",
            "300",
            "--rate",
            "300",
            "--concurrency",
            "50",
            "--background-subscribers",
            "20",
            "--background-rate",
            "20",
            "--baseline",
            "1",
        ],
    );
    assert_eq!(v["storm"]["ok"], 300, "{}", v["storm"]);
    assert_eq!(v["storm"]["failed"], 0);
    let steps = v["background_steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s["lost"] == 0));
}

#[test]
fn churn_smoke() {
    let b = broker();
    let mut args = vec![
        "churn",
        "--rate",
        "100",
        "--duration",
        "2",
        "--hold",
        "0.2",
        "--settle",
        "0.5",
    ];
    if let Some(url) = &b.metrics_url {
        args.extend(["--metrics-url", url.as_str()]);
    }
    let v = run(&b, &args);
    let c = &v["churn"];
    assert!(c["ok"].as_u64().unwrap() >= 150, "{c}");
    assert_eq!(c["ok"], c["closed_ok"], "{c}");
    if b.pid.is_some() {
        assert!(v["broker_rss_after"].as_u64().unwrap() > 0);
    }
    if let Some(url) = &b.metrics_url {
        // Every connection the churn opened is gone from the broker again,
        // within a deadline (the report's own "after" is taken only
        // `--settle` s after the churn).
        let (before, after) = (&v["broker_registry_before"], &v["broker_registry_after"]);
        assert_eq!(before["connections"], 0.0, "{before}");
        assert!(after.is_object(), "no registry after the churn: {v}");
        let before = [
            before["connections"].as_f64().unwrap(),
            before["subscriptions"].as_f64().unwrap(),
            before["destinations"].as_f64().unwrap(),
        ];
        let deadline = Instant::now() + REGISTRY_DEADLINE;
        let mut now = registry(url);
        while now != before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            now = registry(url);
        }
        assert_eq!(
            now, before,
            "registry (connections, subscriptions, destinations) {REGISTRY_DEADLINE:?} after the churn vs before"
        );
    }
}

/// stompede's connection, subscription and destination gauges, read from
/// its `/metrics` (`http://ADDR/metrics`).
fn registry(metrics_url: &str) -> [f64; 3] {
    [
        metric(metrics_url, "stompede_connections"),
        metric(metrics_url, "stompede_subscriptions"),
        metric(metrics_url, "stompede_destinations"),
    ]
}

/// One sample (`name` with its labels, as written) of stompede's `/metrics`.
fn metric(metrics_url: &str, name: &str) -> f64 {
    let rest = metrics_url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {answer}"))
        .trim()
        .parse()
        .unwrap()
}

/// Several `--url`s: connections are dealt over them in turn, in worker
/// processes too (each node's count of upgrades says so), and the report
/// names the nodes, their engine (from `/readyz`) and the box's floor.
#[test]
fn subscribers_are_spread_over_several_urls() {
    if std::env::var("STOMPEDE_LOAD_SMOKE_URL").is_ok() {
        return; // needs two stompede nodes
    }
    let (mut first, second) = (broker(), broker());
    first.extra.extend(
        ["--url", &second.url, "--per-worker", "100"]
            .iter()
            .map(|s| s.to_string()),
    );
    let v = run(
        &first,
        &[
            "idle",
            "--connections",
            "200",
            "--destinations",
            "4",
            "--settle",
            "0",
        ],
    );
    assert_eq!(v["setup"]["subscribed"], 200);
    assert_eq!(v["setup"]["per_node"], serde_json::json!([100, 100]), "{v}");
    assert_eq!(v["tool"]["worker_processes"], 2);
    let upgrades = r#"stompede_http_requests_total{route="websocket",status="101"}"#;
    for node in [&first, &second] {
        assert_eq!(metric(node.metrics_url.as_ref().unwrap(), upgrades), 100.0);
    }
    let cluster = &v["cluster"];
    assert_eq!(cluster["nodes"], 2, "{cluster}");
    assert_eq!(cluster["engine"], "memory", "{cluster}");
    assert_eq!(cluster["engine_source"], "readyz", "{cluster}");
    assert!(v["floor"]["send_us"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn idle_smoke() {
    let b = broker();
    let v = run(
        &b,
        &[
            "idle",
            "--connections",
            "200",
            "--destinations",
            "10",
            "--settle",
            "1",
        ],
    );
    assert_eq!(v["setup"]["subscribed"], 200);
    assert_eq!(v["open_at_end"], 200);
    if b.pid.is_some() {
        assert!(v["broker_bytes_per_connection"].as_f64().is_some());
    }
}

#[test]
fn refuses_non_loopback_targets() {
    let out = Command::new(LOAD)
        .args(["--url", "ws://10.1.2.3:80/ws", "idle", "--connections", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not loopback"));
}

/// The ideal peer takes the tool's readers and delivers every message to
/// every one of them, so that a run beside a broker reads as a floor.
#[test]
fn ideal_broker_delivers_to_every_reader() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut ideal = Command::new(LOAD)
        .args(["ideal-broker", "--listen", &addr.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting ideal-broker");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "ideal-broker never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let peer = Broker {
        url: format!("ws://{addr}/ws"),
        extra: vec!["--publish".into(), "stomp".into()],
        pid: Some(ideal.id()),
        metrics_url: None,
        stop: None,
        thread: None,
    };
    let v = run(
        &peer,
        &[
            "fanout",
            "--subscribers",
            "40",
            "--destinations",
            "2",
            "--rate",
            "20",
            "--duration",
            "1.5",
        ],
    );
    let _ = ideal.kill();
    let _ = ideal.wait();
    let step = &v["steps"][0];
    assert!(step["published"].as_u64().unwrap() > 0, "{step}");
    assert_eq!(step["lost"], 0, "{step}");
    assert_eq!(step["delivered"], step["expected_deliveries"], "{step}");
    // Read from the peer's /proc (a step this short may take under one
    // clock tick of it, so only its presence is certain).
    assert!(
        step["broker_cpu_us_per_delivery"].as_f64().is_some(),
        "{step}"
    );
}

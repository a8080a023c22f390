//! The real `stompede` binary, as an operator runs it: where its settings
//! come from (flags over `STOMPEDE_*` over `--config FILE` over defaults),
//! what SIGTERM and SIGINT do, and `--log-format json`. Observed from the
//! outside only: the stdout banner, HTTP answers, STOMP frames, the exit code.

mod common;

use common::{http, Client};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use stompede_protocol::Command as Stomp;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long the binary may take to start (it is already built).
const START_PATIENCE: Duration = Duration::from_secs(30);

/// The binary, without any `STOMPEDE_*` variable of the test's environment.
fn stompede_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stompede"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STOMPEDE_") {
            command.env_remove(name);
        }
    }
    command
}

/// A running `stompede` process; killed when dropped.
struct Stompede {
    child: Child,
    addr: SocketAddr,
    /// The WebSocket path the banner names.
    ws_path: String,
    /// When the banner was read.
    started: Instant,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Stompede {
    /// Starts the binary with `args` and `env` (and no other `STOMPEDE_*`
    /// variable), and reads its banner.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Stompede {
        let mut command = stompede_command();
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.env("RUST_LOG", "info");
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("the stompede binary starts");
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        let stdout = child.stdout.take().unwrap();
        let (banner_tx, banner_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = banner_tx.send(line);
            }
            // Keep draining, so the process never blocks on a full pipe.
            for _ in lines {}
        });
        let mut process = Stompede {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            ws_path: String::new(),
            started: Instant::now(),
            stderr: Some(stderr),
        };
        let banner = match banner_rx.recv_timeout(START_PATIENCE) {
            Ok(banner) => banner,
            Err(_) => {
                let status = process.child.try_wait().ok().flatten();
                let _ = process.child.kill();
                let _ = process.child.wait();
                let stderr = process.stderr.take().unwrap().join().unwrap_or_default();
                panic!("no banner on stdout (exit {status:?}); stderr:\n{stderr}");
            }
        };
        let (addr, ws_path) = parse_banner(&banner);
        process.addr = addr;
        process.ws_path = ws_path;
        process.started = Instant::now();
        process
    }

    /// Sends signal `name` at once: the binary installs its SIGTERM/SIGINT
    /// handlers before it prints the banner, so even a signal sent as soon as
    /// the banner is read must drain, not kill the process.
    fn signal(&self, name: &str) {
        self.signal_now(name);
    }

    fn signal_now(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `limit`; returns its status,
    /// how long it took, and its stderr.
    fn wait(mut self, limit: Duration) -> (ExitStatus, Duration, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
                return (status, started.elapsed(), stderr);
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
                panic!("still running {limit:?} after being told to stop; stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, self.ws_path)
    }
}

impl Drop for Stompede {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `stompede listening: WebSocket ws://ADDR/PATH , HTTP API http://ADDR/api/v1/`
fn parse_banner(banner: &str) -> (SocketAddr, String) {
    let rest = banner
        .strip_prefix("stompede listening: WebSocket ws://")
        .unwrap_or_else(|| panic!("unexpected banner {banner:?}"));
    let (ws, api) = rest
        .split_once(" , HTTP API ")
        .unwrap_or_else(|| panic!("unexpected banner {banner:?}"));
    let slash = ws.find('/').expect("a path in the WebSocket URL");
    let addr: SocketAddr = ws[..slash].parse().expect("an address in the banner");
    assert_eq!(api, format!("http://{addr}/api/v1/"), "{banner:?}");
    (addr, ws[slash..].to_owned())
}

/// A TOML file of its own in the temporary directory; removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "stompede-test-{}-{}.toml",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The status of a publish with `token` (none: no Authorization header).
async fn publish_status(addr: SocketAddr, token: Option<&str>) -> u16 {
    let request = r#"{"destination": "/topic/a", "body": "x"}"#;
    let auth = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = auth
        .iter()
        .map(|auth| ("authorization", auth.as_str()))
        .collect();
    http(addr, "POST", "/api/v1/publish", Some(request), &headers)
        .await
        .0
}

/// Opens a WebSocket at `url` and completes a STOMP CONNECT.
async fn stomp_connects(url: &str) -> Client {
    let mut client = Client::open(url, &["v12.stomp"])
        .await
        .unwrap_or_else(|error| panic!("{url}: {error}"));
    client
        .send("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Stomp::Connected);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_over_env_over_the_file_over_defaults() {
    // Defaults: the WebSocket at /ws, and (no token) loopback may publish.
    let broker = Stompede::start(&["--listen", "127.0.0.1:0"], &[]);
    assert_eq!(broker.ws_path, "/ws");
    stomp_connects(&broker.ws_url()).await;
    assert_eq!(publish_status(broker.addr, None).await, 202);
    drop(broker);

    let file = TempFile::new(
        r#"
        listen = "127.0.0.1:0"
        ws-path = "/from-file"
        api-token = "file-token"
        "#,
    );
    // The file alone: every key in it applies.
    let broker = Stompede::start(&["--config", file.path()], &[]);
    assert_eq!(broker.ws_path, "/from-file");
    stomp_connects(&broker.ws_url()).await;
    assert_eq!(publish_status(broker.addr, Some("file-token")).await, 202);
    assert_eq!(publish_status(broker.addr, None).await, 401);
    drop(broker);

    // The environment beats the file, key by key: the file's token still holds.
    let broker = Stompede::start(
        &["--config", file.path()],
        &[("STOMPEDE_WS_PATH", "/from-env")],
    );
    assert_eq!(broker.ws_path, "/from-env");
    stomp_connects(&broker.ws_url()).await;
    let (status, _) = http(broker.addr, "GET", "/from-file", None, &[]).await;
    assert_eq!(status, 404, "the file's ws-path is not served");
    assert_eq!(publish_status(broker.addr, Some("file-token")).await, 202);
    drop(broker);

    // Flags beat the environment, which beats the file.
    let broker = Stompede::start(
        &["--config", file.path(), "--ws-path", "/from-flag"],
        &[
            ("STOMPEDE_WS_PATH", "/from-env"),
            ("STOMPEDE_API_TOKEN", "env-token"),
        ],
    );
    assert_eq!(broker.ws_path, "/from-flag");
    stomp_connects(&broker.ws_url()).await;
    assert_eq!(publish_status(broker.addr, Some("env-token")).await, 202);
    let file_token = publish_status(broker.addr, Some("file-token")).await;
    assert!(
        file_token == 401 || file_token == 403,
        "the file's token is replaced by the environment's: {file_token}"
    );
    drop(broker);

    // A file that cannot be read is a configuration error: exit code 2.
    let output = stompede_command()
        .args(["--config", "/nonexistent/stompede.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/stompede.toml"),
        "the error names the file: {stderr}"
    );
}

/// Sends all but the last byte of an HTTP request, so the connection is
/// busy with a request when shutdown starts.
async fn half_request(addr: SocketAddr, request: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&request.as_bytes()[..request.len() - 1])
        .await
        .unwrap();
    stream
}

/// Sends the last byte; returns the status and body of the answer.
async fn finish_request(mut stream: TcpStream, request: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    stream
        .write_all(&request.as_bytes()[request.len() - 1..])
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(common::PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Starts the binary, opens a session and three requests that are under way
/// (all but their last byte sent), sends `signal`, and checks the drain:
/// the session gets its ERROR, new connections are refused, the requests
/// under way are answered 503 (the publish only when `check_api`), and the
/// process exits 0 once `shutdown-grace` is over, though one request never
/// finishes.
async fn shutdown_on(signal: &str, check_api: bool) {
    let grace = Duration::from_secs(3);
    let broker = Stompede::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "3",
            // Long, so only the grace period can end the stubborn connection.
            "--handshake-timeout",
            "120",
            "--heartbeat",
            "0,0",
        ],
        &[],
    );
    let addr = broker.addr;
    let mut session = stomp_connects(&broker.ws_url()).await;
    let readyz = format!("GET /readyz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    let body = r#"{"destination": "/topic/a", "body": "x"}"#;
    let publish = format!(
        "POST /api/v1/publish HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let upgrade = upgrade_request(addr);
    // Requests under way when the signal comes; one never finishes.
    let ready_probe = half_request(addr, &readyz).await;
    let api_probe = half_request(addr, &publish).await;
    let upgrade_probe = half_request(addr, &upgrade).await;
    let _stubborn = half_request(addr, &readyz).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    broker.signal(signal);
    // The session is told why, then closed.
    assert_eq!(session.expect_error().await, "server is shutting down");
    // New connections are refused once the listener is gone.
    let deadline = Instant::now() + common::PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections after {signal}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Requests already under way are answered, as refusals.
    let (status, body) = finish_request(ready_probe, &readyz).await;
    assert_eq!(status, 503, "/readyz while draining: {body}");
    assert!(body.contains("shutting down"), "{body}");
    let (status, body) = finish_request(upgrade_probe, &upgrade).await;
    assert_eq!(status, 503, "a WebSocket upgrade while draining: {body}");
    let (status, body) = finish_request(api_probe, &publish).await;
    if check_api {
        assert_eq!(status, 503, "a publish while draining: {body}");
    }
    // The stubborn request holds the process until the grace period ends.
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || broker.wait(grace + Duration::from_secs(10)))
            .await
            .unwrap();
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after {signal}: {stderr}"
    );
    eprintln!("exited {took:?} after {signal} (shutdown-grace {grace:?})");
    assert!(
        took >= grace - Duration::from_millis(500),
        "exited after {took:?}, before the {grace:?} grace period, with a request under way"
    );
}

fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_refuses_and_exits_zero_within_the_grace_period() {
    shutdown_on("TERM", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_does_the_same() {
    shutdown_on("INT", false).await;
}

/// The README promises 503 from the API while draining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_503_while_draining() {
    shutdown_on("TERM", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let broker = Stompede::start(
        &["--listen", "127.0.0.1:0", "--log-format", "json"],
        &[("RUST_LOG", "stompede=debug")],
    );
    let mut client = stomp_connects(&broker.ws_url()).await;
    client.send("FLY\n\n\0").await;
    client.expect_error().await;
    broker.signal("TERM");
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || broker.wait(Duration::from_secs(20)))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines:\n{stderr}");
    let mut messages = Vec::new();
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not one JSON object per line ({error}): {line:?}"));
        assert!(value.is_object(), "{line:?}");
        assert!(value["level"].is_string(), "no level: {line:?}");
        if let Some(message) = value["fields"]["message"].as_str() {
            messages.push(message.to_owned());
        }
    }
    assert!(
        messages.iter().any(|message| message == "listening"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|message| message == "shutting down"),
        "{messages:?}"
    );
}

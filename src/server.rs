//! The listener: accepts TCP connections and serves each with hyper's HTTP/1
//! (with upgrades), until shutdown.
//!
//! With `handshake-threads` above 0, connections are accepted on a runtime
//! of their own (the handshake runtime, its threads at `handshake-nice`
//! lower priority). A connection whose first bytes are the WebSocket
//! handshake's request line is served there until it is upgraded, and its
//! session is set up there (CONNECT, and the frame after it: a reader's
//! SUBSCRIBE); then the session and its socket move to the runtime the
//! broker was started on (the sessions' runtime), see `session::relocation`. Any other connection (the HTTP API,
//! health checks, metrics) moves at once to the API runtime (`api-threads`,
//! at the broker's own priority), or with 0 to the sessions' runtime. So
//! during a connect storm the handshakes queue behind each other, not ahead
//! of the established sessions' deliveries, and the operating system gives
//! the sessions' threads the CPU first; and a publish is answered without
//! waiting behind the writer tasks of the last fan-out.

use crate::broker::Broker;
use crate::http;
use crate::ip_limit::{is_loopback, IpLimiter, IpSlot};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The listen backlog: deep enough for a connect storm (the default of 128
/// refuses connections when thousands of readers arrive in a second).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a [`LISTEN_BACKLOG`]-deep queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Refused HTTP connections (over `max-http-connections-per-ip`) being
/// closed politely at once; past it a refused connection is just dropped.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;
/// How long a refused connection's further bytes are read and discarded,
/// so the peer reads the 429 instead of a reset.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// While a handshake is served on the handshake runtime: the sessions'
    /// runtime, where the upgraded session is to run (see [`session_runtime`]).
    static SESSIONS: SessionRuntime;
}

/// Where the session of a handshake served on the handshake runtime runs.
#[derive(Clone)]
pub struct SessionRuntime {
    pub handle: Handle,
    /// The handshake runtime's tasks, which it is kept for at shutdown: a
    /// session being set up there is one (see `session::relocation`).
    pub served: TaskTracker,
}

/// The runtime the session of a handshake being served now should run on,
/// if not the current one (`None` outside the handshake runtime).
pub fn session_runtime() -> Option<SessionRuntime> {
    SESSIONS.try_with(SessionRuntime::clone).ok()
}

/// Accepts connections until the broker shuts down: on a handshake runtime
/// of `handshake-threads` threads, or, with 0 (or if that runtime cannot be
/// started), on the current runtime.
pub async fn accept_loop(broker: Arc<Broker>, listener: TcpListener) {
    let config = broker.config();
    if config.handshake_threads == 0 {
        if config.api_threads.is_some_and(|threads| threads > 0) {
            tracing::warn!(
                "api-threads needs handshake-threads above 0 (connections are sorted there): \
                 the API is served with the sessions"
            );
        }
        return accept_on(broker, listener, None).await;
    }
    let runtime = match handshake_runtime(config.handshake_threads, config.handshake_nice) {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::warn!(%error, "cannot start the handshake runtime; serving handshakes with the sessions");
            return accept_on(broker, listener, None).await;
        }
    };
    // The listener is registered with this runtime's I/O driver: move it.
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot move the listener to the handshake runtime");
            return;
        }
    };
    let api = match config.api_threads() {
        0 => None,
        threads => api_runtime(threads)
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot start the API runtime; serving the API with the sessions")
            })
            .ok(),
    };
    let api_handle = api
        .as_ref()
        .map_or_else(Handle::current, |api| api.handle().clone());
    let handshakes = HandshakeRuntime {
        runtimes: std::iter::once(runtime).chain(api).collect(),
        served: TaskTracker::new(),
        stop: CancellationToken::new(),
        linger: config.shutdown_grace + config.handshake_timeout,
    };
    let sessions = Sessions {
        runtime: Handle::current(),
        api: api_handle,
        served: handshakes.served.clone(),
        stop: handshakes.stop.clone(),
    };
    let accepting = handshakes.spawn(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => accept_on(broker, listener, Some(sessions)).await,
            Err(error) => tracing::error!(%error, "cannot listen on the handshake runtime"),
        }
    });
    if let Some(accepting) = accepting {
        let _ = accepting.await;
    }
    // Dropping `handshakes` (here, or with this future) stops it.
}

/// The handshake runtime (and the API runtime, if any), as the accept loop
/// on the sessions' runtime holds them. Dropped (the broker shut down, or
/// the future holding it was dropped), it stops accepting, and a thread
/// keeps the runtimes until the connections still served there end (within
/// their own bounds, at most `linger`), since a runtime cannot be dropped on
/// an async worker.
struct HandshakeRuntime {
    /// The handshake runtime first.
    runtimes: Vec<tokio::runtime::Runtime>,
    /// The tasks serving connections there.
    served: TaskTracker,
    /// Stops its accept loop.
    stop: CancellationToken,
    linger: Duration,
}

impl HandshakeRuntime {
    fn spawn(
        &self,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        Some(self.runtimes.first()?.spawn(task))
    }
}

impl Drop for HandshakeRuntime {
    fn drop(&mut self) {
        self.stop.cancel();
        self.served.close();
        let runtimes = std::mem::take(&mut self.runtimes);
        if runtimes.is_empty() {
            return;
        }
        let (served, linger) = (self.served.clone(), self.linger);
        let keeper = std::thread::Builder::new()
            .name("stompede-handshake-exit".into())
            .spawn(move || {
                // `served` holds every connection's task, the API's included
                // (its sorting task waits for it).
                runtimes[0].block_on(async {
                    let _ = tokio::time::timeout(linger, served.wait()).await;
                });
                for runtime in runtimes {
                    runtime.shutdown_background();
                }
            });
        if let Err(error) = keeper {
            tracing::warn!(%error, "cannot start a thread to wait for the handshake runtime");
        }
    }
}

/// What the accept loop on the handshake runtime knows of the sessions'.
struct Sessions {
    runtime: Handle,
    /// Where connections other than WebSocket handshakes are served.
    api: Handle,
    served: TaskTracker,
    stop: CancellationToken,
}

/// The handshake runtime: `threads` workers, each `nice` steps below the
/// broker's CPU priority (Linux).
fn handshake_runtime(threads: usize, nice: u8) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("stompede-handshake")
        .on_thread_start(move || {
            if let Err(error) = crate::net::lower_thread_priority(nice) {
                tracing::warn!(%error, nice, "cannot lower the handshake thread's priority");
            }
        })
        .enable_all()
        .build()
}

/// The API runtime: `threads` workers at the broker's own priority.
fn api_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("stompede-api")
        .enable_all()
        .build()
}

/// Accepts connections on the current runtime until the broker shuts down.
/// With `sessions`, this is the handshake runtime: each connection is sorted
/// by its first bytes (see [`sort`]).
async fn accept_on(broker: Arc<Broker>, listener: TcpListener, sessions: Option<Sessions>) {
    let stop = sessions
        .as_ref()
        .map_or_else(CancellationToken::new, |sessions| sessions.stop.clone());
    // Connections still speaking HTTP (not yet upgraded) are bounded by
    // `max-http-connections`: past it, new ones wait in the listen backlog.
    let http_connections = Arc::new(Semaphore::new(broker.config().max_http_connections));
    // And by `max-http-connections-per-ip`, so one host cannot hold them all.
    let http_per_ip = Arc::new(IpLimiter::new(broker.config().ipv6_prefix_length));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    loop {
        // Cancel safety: `acquire_owned` and `accept` lose nothing when dropped.
        let permit = tokio::select! {
            _ = broker.shutting_down() => return,
            _ = stop.cancelled() => return,
            permit = http_connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = broker.shutting_down() => return,
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let config = broker.config();
        if let Err(error) =
            crate::net::configure_accepted(&stream, config.tcp_keepalive, config.write_timeout)
        {
            tracing::debug!(%error, %peer, "cannot set socket options");
        }
        let ip_slot = match admit_http(&broker, &http_per_ip, peer) {
            Ok(ip_slot) => ip_slot,
            Err(message) => {
                drop(permit);
                refuse(&broker, stream, &message, &refusals);
                continue;
            }
        };
        let broker = broker.clone();
        match &sessions {
            None => broker.clone().spawn(async move {
                let headers_within = broker.config().handshake_timeout;
                serve_http(broker, stream, peer, headers_within).await;
                drop(ip_slot);
                drop(permit);
            }),
            Some(Sessions {
                runtime,
                api,
                served,
                ..
            }) => {
                let sessions = SessionRuntime {
                    handle: runtime.clone(),
                    served: served.clone(),
                };
                let api = api.clone();
                broker.clone().spawn(served.track_future(async move {
                    sort(broker, stream, peer, sessions, api).await;
                    drop(ip_slot);
                    drop(permit);
                }))
            }
        }
    }
}

/// On the handshake runtime: waits (up to `handshake-timeout`) for the
/// connection's first bytes. The WebSocket handshake's request line is
/// served here (its session will run on `sessions`); anything else moves to
/// `api` and is served there.
async fn sort(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    sessions: SessionRuntime,
    api: Handle,
) {
    let config = broker.config();
    let wanted = HANDSHAKE_METHOD.len() + config.ws_path.len() + 1;
    let mut first = vec![0u8; wanted];
    let started = Instant::now();
    let peeked = match tokio::time::timeout(config.handshake_timeout, stream.peek(&mut first)).await
    {
        Ok(Ok(peeked)) => peeked,
        // Nothing within the timeout, or the peer is gone: hyper would close it too.
        Ok(Err(_)) | Err(_) => return,
    };
    // What is left of `handshake-timeout` for the rest of the request's headers.
    let headers_within = config
        .handshake_timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    if is_handshake(&first[..peeked], &config.ws_path) {
        SESSIONS
            .scope(sessions, serve_http(broker, stream, peer, headers_within))
            .await;
        return;
    }
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%error, %peer, "cannot move the connection to the API runtime");
            return;
        }
    };
    // Served there; this task (and so the HTTP permit and the per-IP slot)
    // ends when it does.
    let served = api.spawn(async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => serve_http(broker, stream, peer, headers_within).await,
            Err(error) => tracing::debug!(%error, %peer, "cannot register the connection"),
        }
    });
    let _ = served.await;
}

/// The start of a WebSocket handshake's request line, before the path.
const HANDSHAKE_METHOD: &[u8] = b"GET ";

/// Whether `first` (a connection's first bytes) begins the request line
/// `GET <ws_path>` followed by a space or a query. Fewer bytes than that
/// (a client sending its request in pieces) count as not a handshake: the
/// connection is then served on the sessions' runtime, correctly, only
/// without the lower priority.
fn is_handshake(first: &[u8], ws_path: &str) -> bool {
    let Some(rest) = first.strip_prefix(HANDSHAKE_METHOD) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(ws_path.as_bytes()) else {
        return false;
    };
    matches!(rest.first(), Some(b' ' | b'?'))
}

/// One of the peer's `max-http-connections-per-ip` (loopback exempt by the
/// same rule as WebSocket sessions), or why not.
fn admit_http(
    broker: &Broker,
    http_per_ip: &Arc<IpLimiter>,
    peer: SocketAddr,
) -> Result<Option<IpSlot>, String> {
    let config = broker.config();
    let limit = config.max_http_connections_per_ip;
    let exempt_loopback = config.per_ip_limit_exempts_loopback && is_loopback(peer.ip());
    // A trusted proxy carries many clients, told apart only once its request is read.
    let proxy = config
        .trusted_proxies
        .iter()
        .any(|proxy| proxy.contains(peer.ip()));
    if limit == 0 || exempt_loopback || proxy {
        return Ok(None);
    }
    http_per_ip
        .try_acquire(peer.ip(), limit)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "too many HTTP connections from {}: at most {limit} (max-http-connections-per-ip)",
                http_per_ip.client(peer.ip())
            )
        })
}

/// Answers 429 without reading the request (it is never waited for), then
/// closes the way a lingering close does, so the peer reads the answer.
fn refuse(broker: &Broker, stream: TcpStream, message: &str, refusals: &Arc<Semaphore>) {
    tracing::debug!(reason = message, "http connection refused");
    let body = serde_json::json!({ "error": message }).to_string();
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's buffer takes the few bytes at once; nothing waits.
    let _ = stream.try_write(response.as_bytes());
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    broker.spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_LINGER, linger(stream)).await;
        drop(permit);
    });
}

/// Shuts down our sending side, then reads and discards until the peer closes.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0u8; 1024];
    while let Ok(read) = stream.read(&mut discard).await {
        if read == 0 {
            break;
        }
    }
}

/// When a keep-alive HTTP connection last finished a request, and how many
/// it has in flight: idle for `http-idle-timeout` with none in flight, it is
/// closed.
struct Activity {
    started: Instant,
    /// Milliseconds after `started` that the last request finished.
    last_done: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn idle_since(&self) -> Instant {
        self.started + Duration::from_millis(self.last_done.load(Relaxed))
    }

    /// Resolves once the connection has been idle for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = self.idle_since() + timeout;
            tokio::time::sleep_until(deadline).await;
            if self.in_flight.load(Relaxed) == 0 && Instant::now() >= self.idle_since() + timeout {
                return;
            }
            if self.in_flight.load(Relaxed) > 0 {
                tokio::time::sleep(timeout).await;
            }
        }
    }
}

/// Counts one request in flight; finishing (or dropping) it marks the time.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = self.0.started.elapsed().as_millis() as u64;
        self.0.last_done.store(elapsed, Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Serves one HTTP connection; its request headers must arrive within
/// `headers_within` (`handshake-timeout`, less any time already waited for
/// its first bytes).
async fn serve_http(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    headers_within: Duration,
) {
    let activity = Arc::new(Activity {
        started: Instant::now(),
        last_done: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let service = {
        let broker = broker.clone();
        let activity = activity.clone();
        service_fn(move |request| {
            let broker = broker.clone();
            let in_flight = InFlight::new(activity.clone());
            async move {
                let response = http::route(broker, peer, request).await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(headers_within)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    // Cancel safety: on shutdown or idleness the connection is told to finish
    // its current request and is polled again, never dropped mid-request.
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "http connection ended with an error");
            }
        }
        _ = broker.shutting_down() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(broker.config().shutdown_grace, connection).await;
        }
        _ = activity.idle_for(broker.config().http_idle_timeout) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(broker.config().handshake_timeout, connection).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PATIENCE: Duration = Duration::from_secs(5);

    #[test]
    fn only_the_websocket_request_line_counts_as_a_handshake() {
        assert!(is_handshake(b"GET /ws HTTP/1.1\r\n", "/ws"));
        assert!(is_handshake(b"GET /ws?token=1 HTTP/1.1", "/ws"));
        assert!(is_handshake(b"GET /live HTTP/1.1", "/live"));
        assert!(!is_handshake(b"GET /wsx HTTP/1.1", "/ws"));
        assert!(!is_handshake(b"GET /ws", "/ws"), "cut short: not known yet");
        assert!(!is_handshake(b"POST /ws HTTP/1.1", "/ws"));
        assert!(!is_handshake(b"POST /api/v1/publish HTTP/1.1", "/ws"));
        assert!(!is_handshake(b"GET /metrics HTTP/1.1", "/ws"));
        assert!(!is_handshake(b"G", "/ws"));
        assert!(!is_handshake(b"", "/ws"));
    }

    /// A broker on 127.0.0.1:0 with `handshake_threads`, until `stop` is sent.
    async fn start(
        handshake_threads: usize,
    ) -> (SocketAddr, Arc<Broker>, tokio::sync::oneshot::Sender<()>) {
        start_with(Config {
            handshake_threads,
            ..Config::default()
        })
        .await
    }

    /// A broker on 127.0.0.1:0 with `config`, until `stop` is sent.
    async fn start_with(
        config: Config,
    ) -> (SocketAddr, Arc<Broker>, tokio::sync::oneshot::Sender<()>) {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        };
        let listener = bind(config.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let broker = Arc::new(Broker::new(config));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::serve(broker.clone(), listener, async move {
            let _ = stopped.await;
        }));
        (addr, broker, stop)
    }

    /// One masked WebSocket text frame, as a client sends it.
    fn client_frame(payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// Reads until `needle` has arrived (or fails after PATIENCE).
    async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]) {
        tokio::time::timeout(PATIENCE, async {
            while !seen.windows(needle.len()).any(|window| window == needle) {
                let mut chunk = [0u8; 4096];
                let read = stream.read(&mut chunk).await.unwrap();
                assert!(
                    read > 0,
                    "closed before {:?}",
                    String::from_utf8_lossy(needle)
                );
                seen.extend_from_slice(&chunk[..read]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {:?} in time", String::from_utf8_lossy(needle)));
    }

    /// A subscriber whose CONNECT and SUBSCRIBE come in the same write as
    /// its handshake request (so hyper has read them before the upgrade),
    /// then a publish over the HTTP API, with and without the handshake
    /// runtime: the session gets its replies and the message either way.
    async fn subscribe_and_publish(handshake_threads: usize) {
        let (addr, broker, stop) = start(handshake_threads).await;
        let mut subscriber = TcpStream::connect(addr).await.unwrap();
        let mut bytes = format!(
            "GET /ws HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
             sec-websocket-protocol: v12.stomp\r\n\r\n"
        )
        .into_bytes();
        bytes.extend(client_frame(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0"));
        bytes.extend(client_frame(
            b"SUBSCRIBE\nid:0\ndestination:/topic/t\nreceipt:r\n\n\0",
        ));
        subscriber.write_all(&bytes).await.unwrap();
        let mut seen = Vec::new();
        read_until(&mut subscriber, &mut seen, b"101 Switching Protocols").await;
        read_until(&mut subscriber, &mut seen, b"CONNECTED").await;
        read_until(&mut subscriber, &mut seen, b"receipt-id:r").await;

        let mut api = TcpStream::connect(addr).await.unwrap();
        let body = r#"{"destination":"/topic/t","body":"hello"}"#;
        let request = format!(
            "POST /api/v1/publish HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        api.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        read_until(&mut api, &mut answer, b"202 Accepted").await;
        read_until(&mut subscriber, &mut seen, b"hello").await;
        assert_eq!(broker.subscriber_count("/topic/t"), 1);
        let _ = stop.send(());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_work_with_the_handshake_runtime() {
        subscribe_and_publish(1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_work_without_the_handshake_runtime() {
        subscribe_and_publish(0).await;
    }

    /// How long `GET /healthz` takes to be answered while the sessions'
    /// runtime (one worker here) is kept busy for `BUSY`.
    async fn health_answered_while_the_sessions_are_busy(api_threads: usize) -> Duration {
        const BUSY: Duration = Duration::from_secs(3);
        let (addr, _broker, stop) = start_with(Config {
            handshake_threads: 1,
            api_threads: Some(api_threads),
            ..Config::default()
        })
        .await;
        // The client runs on a runtime of its own: the test's is the one kept busy.
        let health = move || {
            std::thread::spawn(move || {
                let client = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                client.block_on(async move {
                    let mut api = TcpStream::connect(addr).await.unwrap();
                    let request = format!(
                        "GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
                    );
                    api.write_all(request.as_bytes()).await.unwrap();
                    let mut answer = Vec::new();
                    let asked = Instant::now();
                    read_until(&mut api, &mut answer, b"200 OK").await;
                    asked.elapsed()
                })
            })
        };
        // The accept loop is on the handshake runtime once this is answered.
        health().join().unwrap();
        // Stands for a fan-out's writer tasks: the one worker is taken.
        let (busy_tx, busy) = std::sync::mpsc::channel();
        tokio::spawn(async move {
            let _ = busy_tx.send(());
            std::thread::sleep(BUSY)
        });
        busy.recv().unwrap();
        let answered_in = health().join().unwrap();
        let _ = stop.send(());
        answered_in
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_api_is_answered_on_its_own_runtime_while_the_sessions_are_busy() {
        let answered_in = health_answered_while_the_sessions_are_busy(1).await;
        assert!(
            answered_in < Duration::from_millis(1500),
            "answered in {answered_in:?}: it waited for the sessions' runtime"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn without_the_api_runtime_the_api_waits_for_the_sessions() {
        // The counterpart of the test above: it shows that test can fail.
        let answered_in = health_answered_while_the_sessions_are_busy(0).await;
        assert!(
            answered_in > Duration::from_millis(1500),
            "answered in {answered_in:?} while the only sessions' worker was busy"
        );
    }

    /// A session's handshake, CONNECT and a SUBSCRIBE to `destination`
    /// with a receipt, in one write; returns its socket once the RECEIPT is
    /// in. Without a destination, only the handshake and CONNECT.
    async fn set_up_session(addr: SocketAddr, destination: Option<&str>) -> TcpStream {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let mut bytes = format!(
            "GET /ws HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
             sec-websocket-protocol: v12.stomp\r\n\r\n"
        )
        .into_bytes();
        bytes.extend(client_frame(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0"));
        let Some(destination) = destination else {
            socket.write_all(&bytes).await.unwrap();
            read_until(&mut socket, &mut Vec::new(), b"CONNECTED").await;
            return socket;
        };
        let subscribe = format!("SUBSCRIBE\nid:0\ndestination:{destination}\nreceipt:set-up\n\n\0");
        bytes.extend(client_frame(subscribe.as_bytes()));
        socket.write_all(&bytes).await.unwrap();
        read_until(&mut socket, &mut Vec::new(), b"receipt-id:set-up").await;
        socket
    }

    /// Sends a SUBSCRIBE with a receipt; how long after `started` it came.
    async fn receipt_after(session: &mut TcpStream, started: Instant) -> Duration {
        let frame = client_frame(b"SUBSCRIBE\nid:1\ndestination:/topic/b\nreceipt:again\n\n\0");
        session.write_all(&frame).await.unwrap();
        read_until(session, &mut Vec::new(), b"receipt-id:again").await;
        started.elapsed()
    }

    /// With the sessions' runtime (one worker) kept busy: a new session is
    /// set up all the same (on the handshake runtime), while a session set
    /// up before waits (it has moved to the sessions' runtime), and so does
    /// one that only sent CONNECT, `SETUP_PHASE_LIMIT` before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn sessions_are_set_up_on_the_handshake_runtime_then_move() {
        const BUSY: Duration = Duration::from_secs(3);
        let (addr, _broker, stop) = start(1).await;
        let (set_up_tx, set_up) = std::sync::mpsc::channel();
        let (busy_tx, busy) = std::sync::mpsc::channel();
        // The clients run on a runtime of their own: the test's is the one kept busy.
        let clients = std::thread::spawn(move || {
            let client = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            client.block_on(async move {
                let mut earlier = set_up_session(addr, Some("/topic/earlier")).await;
                let mut connected = set_up_session(addr, None).await;
                tokio::time::sleep(Duration::from_millis(1300)).await;
                set_up_tx.send(()).unwrap();
                busy.recv().unwrap();
                let started = Instant::now();
                let new_one = async {
                    set_up_session(addr, Some("/topic/new")).await;
                    started.elapsed()
                };
                tokio::join!(
                    new_one,
                    receipt_after(&mut earlier, started),
                    receipt_after(&mut connected, started)
                )
            })
        });
        set_up.recv().unwrap();
        // Stands for a fan-out's writer tasks: the one worker is taken.
        tokio::spawn(async move {
            let _ = busy_tx.send(());
            std::thread::sleep(BUSY)
        });
        let (new_one, earlier_one, connected_one) = clients.join().unwrap();
        let _ = stop.send(());
        assert!(
            new_one < Duration::from_millis(1500),
            "a new session was set up in {new_one:?}: it waited for the sessions' runtime"
        );
        assert!(
            earlier_one > Duration::from_millis(1500),
            "a set-up session answered in {earlier_one:?} while the only sessions' worker \
             was busy: it did not move there"
        );
        assert!(
            connected_one > Duration::from_millis(1500),
            "a session connected for over a second answered in {connected_one:?}: \
             it did not move to the sessions' runtime"
        );
    }

    #[tokio::test]
    async fn the_handshake_runtime_stops_with_the_broker() {
        let (addr, broker, stop) = start(1).await;
        let _ = stop.send(());
        tokio::time::timeout(PATIENCE, async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the listener closes once the broker has shut down");
        assert_eq!(broker.open_sessions(), 0);
    }
}

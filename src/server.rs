//! The listener: accepts TCP connections and serves each with hyper's HTTP/1
//! (with upgrades), until shutdown.

use crate::broker::Broker;
use crate::http;
use crate::ip_limit::{is_loopback, IpLimiter, IpSlot};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

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

/// Accepts connections until the broker shuts down.
pub async fn accept_loop(broker: Arc<Broker>, listener: TcpListener) {
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
            permit = http_connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = broker.shutting_down() => return,
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
        broker.clone().spawn(async move {
            serve_http(broker, stream, peer).await;
            drop(ip_slot);
            drop(permit);
        });
    }
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

async fn serve_http(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
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
        .header_read_timeout(broker.config().handshake_timeout)
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

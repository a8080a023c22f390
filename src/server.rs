//! The listener: accepts TCP connections and serves each with hyper's HTTP/1
//! (with upgrades), until shutdown.

use crate::broker::Broker;
use crate::http;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

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

/// Accepts connections until the broker shuts down.
pub async fn accept_loop(broker: Arc<Broker>, listener: TcpListener) {
    // Connections still speaking HTTP (not yet upgraded) are bounded by
    // `max-http-connections`: past it, new ones wait in the listen backlog.
    let http_connections = Arc::new(Semaphore::new(broker.config().max_http_connections));
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
        let broker = broker.clone();
        broker.clone().spawn(async move {
            serve_http(broker, stream, peer).await;
            drop(permit);
        });
    }
}

async fn serve_http(broker: Arc<Broker>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let service = {
        let broker = broker.clone();
        service_fn(move |request| {
            let broker = broker.clone();
            async move { Ok::<_, Infallible>(http::route(broker, peer, request).await) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(broker.config().handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    // Cancel safety: on shutdown the connection is told to finish its current
    // request and is polled again, never dropped mid-request.
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
    }
}

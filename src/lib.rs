//! stompede: a STOMP-over-WebSocket broker for live comments.
//!
//! Browsers connect over WebSocket and SUBSCRIBE to exact destinations; the
//! comment API POSTs each new comment to `/api/v1/publish`, and the broker
//! pushes it to every subscriber. See the README for the architecture.

pub mod admission;
pub mod auth;
pub mod broker;
pub mod client_addr;
pub mod config;
pub mod destination;
pub mod engine;
pub mod fanout;
pub mod history;
pub mod http;
pub mod hub;
pub mod ip_limit;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod registry;
pub mod server;
pub mod session;

pub use broker::Broker;
pub use config::Config;
pub use server::bind;

use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Runs a broker on `listener` until `shutdown` completes, then closes every
/// session (each gets an ERROR frame saying why) and waits up to
/// `shutdown-grace` for them.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    serve(Arc::new(Broker::new(config)), listener, shutdown).await
}

/// Like [`run`], with a broker the caller can inspect.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let accept = tokio::spawn(server::accept_loop(broker.clone(), listener));
    shutdown.await;
    tracing::info!(sessions = broker.open_sessions(), "shutting down");
    broker.begin_shutdown();
    let _ = accept.await;
    if !broker
        .wait_for_connections(broker.config().shutdown_grace)
        .await
    {
        tracing::warn!(
            sessions = broker.open_sessions(),
            "grace period over; dropping the remaining connections"
        );
    }
}

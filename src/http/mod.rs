//! The HTTP side of the one listener: the WebSocket upgrade and the JSON API.

pub mod api;
pub mod raw_json;
pub mod upgrade;

use crate::broker::Broker;
use crate::client_addr;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

pub type HttpResponse = Response<Full<Bytes>>;

/// Routes one request and counts it in the HTTP metrics.
pub async fn route(
    broker: Arc<Broker>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    let started = std::time::Instant::now();
    let label = route_label(&broker, request.uri().path());
    // Behind a trusted proxy, the client it names is the peer for every per-IP rule.
    let client = client_addr::client_ip(
        peer.ip(),
        request.headers(),
        &broker.config().trusted_proxies,
    );
    let peer = SocketAddr::new(client, peer.port());
    let response = dispatch(broker.clone(), peer, request).await;
    let metrics = broker.metrics();
    metrics
        .http_requests
        .with_label_values(&[label, response.status().as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The route as a metric label: a fixed set, whatever paths clients try.
fn route_label(broker: &Broker, path: &str) -> &'static str {
    match path {
        _ if path == broker.config().ws_path => "websocket",
        "/api/v1/publish" => "/api/v1/publish",
        "/api/v1/broadcast" => "/api/v1/broadcast",
        "/api/v1/history" => "/api/v1/history",
        _ if path.starts_with("/api/v1/destinations/") => "/api/v1/destinations",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

async fn dispatch(
    broker: Arc<Broker>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    let path = request.uri().path();
    if path == broker.config().ws_path {
        return upgrade::handle(broker, peer, request);
    }
    match (request.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            json(StatusCode::OK, serde_json::json!({"status": "ok"}))
        }
        (&Method::GET | &Method::HEAD, "/readyz") => readiness(&broker),
        (&Method::GET, "/metrics") => metrics(&broker),
        (_, "/healthz" | "/readyz" | "/metrics") => method_not_allowed("GET"),
        (_, path) if path.starts_with("/api/v1/") => api::handle(broker, peer, request).await,
        _ => error(StatusCode::NOT_FOUND, format!("no route for {path}")),
    }
}

fn metrics(broker: &Broker) -> HttpResponse {
    broker
        .metrics()
        .destinations
        .set(broker.destination_count() as i64);
    Response::builder()
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(broker.metrics().render())))
        .expect("static response parts are valid")
}

/// 503 while draining or at `max-connections`; the engine's state is in
/// the body but does not change the status: when Redis is down every node is
/// equally affected, and taking them all out of the load balancer would turn
/// a Redis blip into a total outage.
fn readiness(broker: &Broker) -> HttpResponse {
    let engine = broker.engine_status();
    let body = |status: &str| {
        serde_json::json!({
            "status": status,
            "node": broker.node_id(),
            "engine": { "name": engine.engine, "up": engine.up, "detail": engine.detail },
        })
    };
    let refusal = if broker.is_shutting_down() {
        "shutting down"
    } else if broker.is_at_capacity() {
        "connection limit reached"
    } else {
        return json(StatusCode::OK, body("ready"));
    };
    let mut refused = body("not ready");
    refused["error"] = refusal.into();
    json(StatusCode::SERVICE_UNAVAILABLE, refused)
}

pub fn json(status: StatusCode, value: serde_json::Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("static response parts are valid")
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    json(status, serde_json::json!({ "error": message.into() }))
}

pub fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    response
        .headers_mut()
        .insert("allow", hyper::header::HeaderValue::from_static(allow));
    response
}

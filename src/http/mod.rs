//! The HTTP side of the one listener: the WebSocket upgrade and the JSON API.

pub mod api;
pub mod upgrade;

use crate::broker::Broker;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

pub type HttpResponse = Response<Full<Bytes>>;

/// Routes one request.
pub async fn route(broker: Arc<Broker>, peer: SocketAddr, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path();
    if path == broker.config.ws_path {
        return upgrade::handle(broker, peer, request);
    }
    match (request.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET | &Method::HEAD, "/readyz") => readiness(&broker),
        (_, "/healthz" | "/readyz") => method_not_allowed("GET"),
        (_, path) if path.starts_with("/api/v1/") => api::handle(broker, peer, request).await,
        _ => error(StatusCode::NOT_FOUND, format!("no route for {path}")),
    }
}

fn readiness(broker: &Broker) -> HttpResponse {
    if broker.shutdown.is_cancelled() {
        error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if broker.is_at_capacity() {
        error(StatusCode::SERVICE_UNAVAILABLE, "connection limit reached")
    } else {
        json(StatusCode::OK, serde_json::json!({"status": "ready"}))
    }
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
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, format!("method not allowed; use {allow}"));
    response.headers_mut().insert("allow", hyper::header::HeaderValue::from_static(allow));
    response
}

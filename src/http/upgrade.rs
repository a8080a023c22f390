//! `GET /ws`: checks the WebSocket handshake, picks the STOMP subprotocol,
//! answers 101 and hands the upgraded connection to a session.

use super::{error, HttpResponse};
use crate::admission;
use crate::broker::{AdmissionRefusal, Broker};
use crate::session::connection;
use crate::session::message_limit::MessageLimit;
use crate::session::writer::Gated;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

/// STOMP subprotocols, best first.
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

pub fn handle(
    broker: Arc<Broker>,
    peer: std::net::SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    if request.method() != Method::GET {
        return super::method_not_allowed("GET");
    }
    let headers = request.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request (Upgrade: websocket)",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = error(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version; use 13",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if let Err(refusal) = check_origin(&broker.config().allowed_origins, headers) {
        return error(StatusCode::FORBIDDEN, refusal);
    }
    let subprotocol = match choose_subprotocol(headers) {
        Ok(subprotocol) => subprotocol,
        Err(offered) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unsupported WebSocket subprotocol {offered:?}; offer v12.stomp, v11.stomp or v10.stomp"),
            )
        }
    };
    if let Err(wait) = broker.admit_handshake() {
        return too_many_handshakes(&broker, wait);
    }
    let slot = match broker.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => {
            let status = match refusal {
                AdmissionRefusal::ShuttingDown | AdmissionRefusal::AtCapacity => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                AdmissionRefusal::TooManyFromIp { .. } => StatusCode::TOO_MANY_REQUESTS,
            };
            return error(status, refusal.to_string());
        }
    };

    let accept = derive_accept_key(key.as_bytes());
    let config = broker.config();
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        // tungstenite writes only control frames (pongs, close): the writer
        // in `session::writer` writes everything else itself.
        .write_buffer_size(0)
        .max_message_size(Some(config.ws_max_message_bytes()))
        .max_frame_size(Some(config.ws_max_frame_bytes()));
    let before_connect_limit = config.ws_max_message_bytes_before_connect();
    let connection_id = broker.next_connection_id();
    let span = tracing::info_span!("session", id = connection_id, %peer);
    let on_upgrade = hyper::upgrade::on(request);
    // One task per connection, bounded by `max-connections` (the slot).
    broker.spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        Gated::new(MessageLimit::new(
                            TokioIo::new(upgraded),
                            before_connect_limit,
                        )),
                        Role::Server,
                        Some(ws_config),
                    )
                    .await;
                    connection::serve(slot, ws, connection_id).await;
                }
                Err(error) => tracing::debug!(%error, "upgrade failed"),
            }
        }
        .instrument(span),
    );

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(subprotocol) = subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, subprotocol);
    }
    response
        .body(Full::default())
        .expect("static response parts are valid")
}

/// 503 with `Retry-After`, counted: past `max-handshakes-per-second`.
/// (Browsers cannot read it; the example page's jittered backoff is what
/// spreads them.)
fn too_many_handshakes(broker: &Broker, wait: std::time::Duration) -> HttpResponse {
    broker.metrics().handshakes_refused.inc();
    let seconds = admission::retry_after_seconds(wait);
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("too many handshakes; try again in {seconds} s (max-handshakes-per-second)"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// The best STOMP subprotocol offered; `Ok(None)` when none was offered,
/// `Err(offered)` when only unknown ones were.
fn choose_subprotocol(headers: &HeaderMap) -> Result<Option<&'static str>, String> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    SUBPROTOCOLS
        .iter()
        .find(|supported| {
            offered
                .iter()
                .any(|protocol| protocol.eq_ignore_ascii_case(supported))
        })
        .map(|supported| Some(*supported))
        .ok_or_else(|| offered.join(", "))
}

/// Cross-site WebSocket hijacking defence: a browser always sends `Origin`.
/// With no `allowed-origin`, only same-host origins (and non-browser clients,
/// which send none) are accepted; `*` accepts any.
fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if allowed
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    if allowed.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
            return Ok(());
        }
    }
    Err(format!(
        "origin {origin:?} is not allowed (see the allowed-origin setting)"
    ))
}

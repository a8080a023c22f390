//! `/api/v1/*`: how the comment API publishes, and how anyone reads counts.

use super::{error, json, method_not_allowed, HttpResponse};
use crate::auth::ApiRefusal;
use crate::broker::Broker;
use crate::destination;
use crate::engine::Publication;
use crate::fanout;
use crate::history::Since;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{header, Method, Request, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use stompede_protocol::{Headers, PreparedMessage};

/// The body of `POST /api/v1/publish` and `POST /api/v1/broadcast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    /// Publish: the one destination.
    destination: Option<String>,
    /// Broadcast: every destination.
    destinations: Option<Vec<String>>,
    /// A string is sent as is (text/plain); anything else as the JSON text
    /// the publisher wrote, compacted at most (see `raw_json`).
    body: Option<Box<serde_json::value::RawValue>>,
    /// A binary body, base64-encoded (application/octet-stream).
    body_base64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

pub async fn handle(
    broker: Arc<Broker>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    if let Err(response) = authorize(&broker, peer, &request) {
        return *response;
    }
    let path = request.uri().path();
    if path == "/api/v1/history" {
        if request.method() != Method::GET {
            return method_not_allowed("GET");
        }
        return history(&broker, request.uri().query().unwrap_or_default()).await;
    }
    if let Some(encoded) = path.strip_prefix("/api/v1/destinations/") {
        if request.method() != Method::GET {
            return method_not_allowed("GET");
        }
        return destination_info(&broker, encoded).await;
    }
    let broadcast = match path {
        "/api/v1/publish" => false,
        "/api/v1/broadcast" => true,
        _ => return error(StatusCode::NOT_FOUND, format!("no route for {path}")),
    };
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let idempotency_key = match idempotency_key(&request) {
        Ok(key) => key,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let body = match read_body(&broker, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let publication = match publication(&broker, request, broadcast, idempotency_key) {
        Ok(publication) => publication,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // Checked once the body is in: a request that began before the drain ends here too.
    if broker.is_shutting_down() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    }
    match broker.publish(&publication).await {
        Ok(published) => json(
            StatusCode::ACCEPTED,
            serde_json::json!({
                "message_id": published.message_id,
                "subscribers": published.subscribers,
            }),
        ),
        // Never a 202 for a message that no other node will get.
        Err(engine_error) => error(StatusCode::SERVICE_UNAVAILABLE, engine_error.to_string()),
    }
}

/// Longest `Idempotency-Key` accepted, in bytes.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 200;

/// The `Idempotency-Key` header, if any: visible ASCII, at most
/// [`MAX_IDEMPOTENCY_KEY_BYTES`].
fn idempotency_key(request: &Request<Incoming>) -> Result<Option<String>, String> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let valid = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY_BYTES
        && value.as_bytes().iter().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
        ));
    }
    Ok(value.to_str().ok().map(str::to_owned))
}

/// The API's credential check (see [`crate::auth::AuthPolicy::check_api_request`]),
/// as an HTTP answer.
fn authorize(
    broker: &Broker,
    peer: SocketAddr,
    request: &Request<Incoming>,
) -> Result<(), Box<HttpResponse>> {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    broker
        .auth()
        .check_api_request(peer.ip(), authorization)
        .map_err(|refusal| {
            let status = match refusal {
                ApiRefusal::NotLoopback | ApiRefusal::InvalidToken => StatusCode::FORBIDDEN,
                ApiRefusal::MissingToken => StatusCode::UNAUTHORIZED,
            };
            let mut response = error(status, refusal.message());
            if refusal == ApiRefusal::MissingToken {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            Box::new(response)
        })
}

async fn read_body(broker: &Broker, request: Request<Incoming>) -> Result<Bytes, HttpResponse> {
    let limit = broker.config().max_request_bytes;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes (max-request-bytes)"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read request body: {e}"),
        )),
    }
}

/// The message a publish or broadcast request asks for, or why it is refused.
fn publication(
    broker: &Broker,
    request: PublishRequest,
    broadcast: bool,
    idempotency_key: Option<String>,
) -> Result<Publication, String> {
    let destinations: Vec<String> = match (broadcast, request.destination, request.destinations) {
        (false, Some(destination), None) => vec![destination],
        (false, _, _) => {
            return Err(
                "publish needs \"destination\" (use /api/v1/broadcast for \"destinations\")".into(),
            )
        }
        (true, None, Some(mut destinations)) => {
            destinations.sort();
            destinations.dedup();
            if destinations.is_empty() {
                return Err("\"destinations\" is empty".into());
            }
            destinations
        }
        (true, _, _) => {
            return Err("broadcast needs \"destinations\" (a list), not \"destination\"".into())
        }
    };
    for destination in &destinations {
        destination::validate(destination)
            .map_err(|reason| format!("{reason}: {destination:?}"))?;
    }
    let (body, default_content_type) = match (request.body, request.body_base64) {
        (Some(raw), None) if raw.get().starts_with('"') => {
            let text: String = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
            (Bytes::from(text), "text/plain;charset=utf-8")
        }
        (Some(raw), None) => (
            Bytes::from(super::raw_json::compact(raw.get())),
            "application/json",
        ),
        (None, Some(encoded)) => (
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Bytes::from)
                .map_err(|e| format!("body_base64 is not valid base64: {e}"))?,
            "application/octet-stream",
        ),
        (None, None) => return Err("missing \"body\" (or \"body_base64\")".into()),
        (Some(_), Some(_)) => {
            return Err("give either \"body\" or \"body_base64\", not both".into())
        }
    };
    let max_body = broker.config().max_frame_bytes;
    if body.len() > max_body {
        return Err(format!(
            "message body is {} bytes; the limit is {max_body} (max-frame-bytes)",
            body.len()
        ));
    }
    let mut headers = Headers::with_capacity(request.headers.len() + 1);
    if !request.headers.contains_key("content-type") {
        headers.push("content-type", default_content_type);
    }
    if request.headers.len() > broker.config().max_headers {
        return Err(format!(
            "too many headers: at most {}",
            broker.config().max_headers
        ));
    }
    for (name, value) in request.headers {
        if name.is_empty() || name.chars().chain(value.chars()).any(char::is_control) {
            return Err(format!(
                "header {name:?} must be non-empty and contain no control characters"
            ));
        }
        if !fanout::is_reserved(&name) {
            headers.push(name, value);
        }
    }
    Ok(broker.publication(destinations, headers, body, idempotency_key))
}

async fn destination_info(broker: &Broker, encoded: &str) -> HttpResponse {
    let destination = match percent_encoding::percent_decode_str(encoded).decode_utf8() {
        Ok(destination) => destination,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "destination is not valid UTF-8 once percent-decoded",
            )
        }
    };
    if let Err(reason) = destination::validate(&destination) {
        return error(StatusCode::BAD_REQUEST, reason);
    }
    match broker.cluster_subscriber_count(&destination).await {
        Ok(subscribers) => json(
            StatusCode::OK,
            serde_json::json!({ "destination": destination, "subscribers": subscribers }),
        ),
        Err(engine_error) => error(StatusCode::SERVICE_UNAVAILABLE, engine_error.to_string()),
    }
}

/// `GET /api/v1/history?destination=D[&since=N[&epoch=E]][&limit=M]`: the
/// messages of D after offset N (in epoch E, default the current one), or
/// without `since` its last ones; at most M (default and most: `history-size`).
async fn history(broker: &Broker, query: &str) -> HttpResponse {
    let mut destination = None;
    let mut since = None;
    let mut epoch = None;
    let history_size = broker.config().history_size;
    let mut limit = history_size;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.replace('+', " ");
        let Ok(value) = percent_encoding::percent_decode_str(&value).decode_utf8() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{name} is not valid UTF-8 once percent-decoded"),
            );
        };
        let number = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{name} must be a whole number of 0 or more, not {value:?}"))
        };
        match name {
            "destination" => destination = Some(value.into_owned()),
            "epoch" => epoch = Some(value.into_owned()),
            "since" => match number(&value) {
                Ok(offset) => since = Some(offset),
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            },
            "limit" => match number(&value) {
                Ok(wanted) => {
                    limit = usize::try_from(wanted)
                        .unwrap_or(usize::MAX)
                        .min(history_size)
                }
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            },
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}: use destination, since, epoch, limit"),
                )
            }
        }
    }
    let Some(destination) = destination else {
        return error(StatusCode::BAD_REQUEST, "missing ?destination=");
    };
    if let Err(reason) = destination::validate(&destination) {
        return error(StatusCode::BAD_REQUEST, reason);
    }
    if epoch.is_some() && since.is_none() {
        return error(StatusCode::BAD_REQUEST, "epoch needs since");
    }
    let page = match broker
        .history(&destination, epoch.as_deref(), since, limit)
        .await
    {
        Ok(page) => page,
        Err(engine_error) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, engine_error.to_string())
        }
    };
    let (recovered, messages) = match page.since {
        Since::Covered(messages) => (true, messages),
        Since::Lost => (false, Vec::new()),
    };
    let messages: Vec<serde_json::Value> = messages
        .iter()
        .map(|message| history_entry(message))
        .collect();
    let mut answer = serde_json::json!({
        "destination": destination,
        "epoch": page.position.as_ref().map(|position| position.epoch.to_string()),
        "offset": page.position.as_ref().map_or(0, |position| position.offset),
        "messages": messages,
    });
    if since.is_some() {
        answer["recovered"] = serde_json::Value::Bool(recovered && page.position.is_some());
    }
    json(StatusCode::OK, answer)
}

/// One stored MESSAGE as JSON: its offset and id, the publisher's headers,
/// and its body as text (or base64 when it is not UTF-8).
fn history_entry(message: &PreparedMessage) -> serde_json::Value {
    let headers = message.headers();
    let offset: u64 = headers
        .get(fanout::OFFSET_HEADER)
        .and_then(|offset| offset.parse().ok())
        .unwrap_or_default();
    let publisher_headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| !fanout::is_reserved(name))
        .map(|(name, value)| (name.to_owned(), serde_json::Value::from(value)))
        .collect();
    let mut entry = serde_json::json!({
        "offset": offset,
        "message_id": headers.get("message-id").unwrap_or_default(),
        "headers": publisher_headers,
    });
    match std::str::from_utf8(message.body()) {
        Ok(text) => entry["body"] = serde_json::Value::from(text),
        Err(_) => {
            entry["body_base64"] = serde_json::Value::from(
                base64::engine::general_purpose::STANDARD.encode(message.body()),
            )
        }
    }
    entry
}

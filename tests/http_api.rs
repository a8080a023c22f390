//! The HTTP API: publish, broadcast, counts, health, auth and errors.

mod common;

use common::{config, http, http_raw, start};
use stompede_protocol::Command;

#[tokio::test]
async fn health_and_readiness() {
    let broker = start(config()).await;
    assert_eq!(
        broker.http("GET", "/healthz", None).await,
        (200, serde_json::json!({"status": "ok"}))
    );
    let (status, ready) = broker.http("GET", "/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    // The node and its engine are named (the engine's state never makes it 503).
    assert_eq!(ready["node"], broker.broker.node_id());
    assert_eq!(ready["engine"]["name"], "memory");
    assert_eq!(ready["engine"]["up"], true);
    assert_eq!(broker.http("POST", "/healthz", None).await.0, 405);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let broker = start(config()).await;
    let (status, body) = broker.http("GET", "/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no route for /nope");
    let (status, body) = broker.http("GET", "/api/v1/publish", None).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"], "method not allowed; use POST");
    let (status, _) = broker.http("DELETE", "/api/v1/destinations/x", None).await;
    assert_eq!(status, 405);
    // A plain GET on the WebSocket path is not an upgrade.
    let (status, body) = broker.http("GET", "/ws", None).await;
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("WebSocket upgrade"));
}

#[tokio::test]
async fn publish_errors_are_400_with_a_reason() {
    let broker = start(config()).await;
    let cases = [
        ("{", "invalid JSON"),
        (r#"{"destination": "/topic/a"}"#, "missing \"body\""),
        (r#"{"body": "x"}"#, "publish needs \"destination\""),
        (
            r#"{"destination": "", "body": "x"}"#,
            "destination is empty",
        ),
        (
            r#"{"destination": "/topic/a\u0001", "body": "x"}"#,
            "control character",
        ),
        (
            r#"{"destination": "/topic/a", "body": "x", "colour": 1}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"destination": "/topic/a", "body": "x", "headers": {"a": 1}}"#,
            "invalid type",
        ),
        (
            r#"{"destination": "/topic/a", "body": "x", "headers": {"a": "b\nc"}}"#,
            "control characters",
        ),
        (
            r#"{"destination": "/topic/a", "body_base64": "%%%"}"#,
            "not valid base64",
        ),
    ];
    for (request, reason) in cases {
        let (status, body) = broker.http("POST", "/api/v1/publish", Some(request)).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{request}: {body}"
        );
    }
}

#[tokio::test]
async fn oversized_requests_and_bodies_are_413_or_400() {
    let mut config = config();
    config.max_request_bytes = 1000;
    config.max_frame_bytes = 100;
    let broker = start(config).await;
    let big = format!(
        r#"{{"destination": "/topic/a", "body": "{}"}}"#,
        "x".repeat(2000)
    );
    let (status, body) = broker.http("POST", "/api/v1/publish", Some(&big)).await;
    assert_eq!(status, 413);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("max-request-bytes"));
    let over_frame = format!(
        r#"{{"destination": "/topic/a", "body": "{}"}}"#,
        "x".repeat(200)
    );
    let (status, body) = broker
        .http("POST", "/api/v1/publish", Some(&over_frame))
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("max-frame-bytes"));
}

#[tokio::test]
async fn a_json_body_is_sent_compact_as_application_json() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/comments.7\nreceipt:r\n\n\0")
        .await;
    client.frame().await;
    let request = r#"{"destination": "/topic/comments.7", "body": {"id": 1, "text": "héllo"}, "headers": {"x-author": "ann", "subscription": "forged", "destination": "/topic/other"}}"#;
    let (status, response) = broker.http("POST", "/api/v1/publish", Some(request)).await;
    assert_eq!(status, 202);
    assert_eq!(response["subscribers"], 1);
    let message = client.frame().await;
    assert_eq!(message.command, Command::Message);
    assert_eq!(
        message.headers.get("content-type"),
        Some("application/json")
    );
    assert_eq!(message.headers.get("x-author"), Some("ann"));
    assert_eq!(
        message.headers.get_all("subscription").collect::<Vec<_>>(),
        ["0"]
    );
    assert_eq!(
        message.headers.get_all("destination").collect::<Vec<_>>(),
        ["/topic/comments.7"]
    );
    assert_eq!(
        std::str::from_utf8(&message.body).unwrap(),
        r#"{"id":1,"text":"héllo"}"#
    );
}

#[tokio::test]
async fn broadcast_reaches_every_destination_and_counts_subscribers() {
    let broker = start(config()).await;
    let mut a = broker.connected().await;
    a.send("SUBSCRIBE\nid:0\ndestination:/topic/a\nreceipt:r\n\n\0")
        .await;
    a.frame().await;
    let mut b = broker.connected().await;
    b.send("SUBSCRIBE\nid:0\ndestination:/topic/b\nreceipt:r\n\n\0")
        .await;
    b.frame().await;
    let request = r#"{"destinations": ["/topic/a", "/topic/b", "/topic/c"], "body": "to all"}"#;
    let (status, response) = broker
        .http("POST", "/api/v1/broadcast", Some(request))
        .await;
    assert_eq!(status, 202, "{response}");
    assert_eq!(response["subscribers"], 2);
    let from_a = a.frame().await;
    let from_b = b.frame().await;
    assert_eq!(from_a.headers.get("destination"), Some("/topic/a"));
    assert_eq!(from_b.headers.get("destination"), Some("/topic/b"));
    assert_eq!(
        from_a.headers.get("message-id"),
        from_b.headers.get("message-id")
    );
    assert_eq!(&from_b.body[..], b"to all");
}

#[tokio::test]
async fn destination_counts_take_a_percent_encoded_destination() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client.send("SUBSCRIBE\nid:0\ndestination:/topic/comments.42\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/comments.42\nreceipt:r\n\n\0").await;
    client.frame().await;
    let (status, body) = broker
        .http("GET", "/api/v1/destinations/%2Ftopic%2Fcomments.42", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"destination": "/topic/comments.42", "subscribers": 2})
    );
    let (_, body) = broker
        .http("GET", "/api/v1/destinations/%2Ftopic%2Fnone", None)
        .await;
    assert_eq!(body["subscribers"], 0);
}

#[tokio::test]
async fn the_api_token_is_required_when_configured() {
    let mut config = config();
    config.api_tokens = vec!["t0ken".into()];
    let broker = start(config).await;
    let request = r#"{"destination": "/topic/a", "body": "x"}"#;
    let (status, body) = http(broker.addr, "POST", "/api/v1/publish", Some(request), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "missing Authorization: Bearer token");
    let wrong = [("authorization", "Bearer nope")];
    assert_eq!(
        http(
            broker.addr,
            "POST",
            "/api/v1/publish",
            Some(request),
            &wrong
        )
        .await
        .0,
        403
    );
    let right = [("authorization", "Bearer t0ken")];
    assert_eq!(
        http(
            broker.addr,
            "POST",
            "/api/v1/publish",
            Some(request),
            &right
        )
        .await
        .0,
        202
    );
    // Health stays open.
    assert_eq!(
        http_raw(broker.addr, "GET", "/healthz", None, &[]).await.0,
        200
    );
}

/// The value of one sample line of the Prometheus text, e.g. `stompede_connections`.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {name} in\n{metrics}"))
        .parse()
        .unwrap()
}

async fn scrape(broker: &common::TestBroker) -> String {
    let (status, body) = http_raw(broker.addr, "GET", "/metrics", None, &[]).await;
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let broker = start(config()).await;
    let before = scrape(&broker).await;
    assert_eq!(sample(&before, "stompede_connections"), 0.0);
    // Labelled series exist at zero before they first move.
    assert_eq!(sample(&before, "stompede_sessions{version=\"1.0\"}"), 0.0);
    for reason in stompede::metrics::ErrorReason::ALL.map(|reason| reason.label()) {
        assert_eq!(
            sample(
                &before,
                &format!("stompede_errors_total{{reason=\"{reason}\"}}")
            ),
            0.0
        );
    }
    assert_eq!(sample(&before, "stompede_messages_published_total"), 0.0);

    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/m\nreceipt:r\n\n\0")
        .await;
    client.frame().await;
    broker.publish("/topic/m", "one").await;
    broker.publish("/topic/m", "two").await;
    client.frame().await;
    client.frame().await;
    let mut refused = broker.connected().await;
    refused.send("NOPE\n\n\0").await;
    refused.expect_error().await;
    let mut forbidden = broker.connected().await;
    forbidden
        .send("SUBSCRIBE\nid:0\ndestination:/queue/elsewhere\n\n\0")
        .await;
    forbidden.expect_error().await;

    let after = scrape(&broker).await;
    assert_eq!(sample(&after, "stompede_connections"), 1.0);
    assert_eq!(sample(&after, "stompede_sessions{version=\"1.2\"}"), 1.0);
    assert_eq!(sample(&after, "stompede_subscriptions"), 1.0);
    assert_eq!(sample(&after, "stompede_destinations"), 1.0);
    assert_eq!(sample(&after, "stompede_messages_published_total"), 2.0);
    assert_eq!(sample(&after, "stompede_messages_delivered_total"), 2.0);
    assert_eq!(sample(&after, "stompede_outbound_queued_frames"), 0.0);
    assert_eq!(
        sample(&after, "stompede_errors_total{reason=\"decode\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "stompede_errors_total{reason=\"forbidden\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "stompede_errors_total{reason=\"invalid_frame\"}"),
        0.0
    );
    assert!(sample(&after, "stompede_delivery_latency_seconds_count") >= 1.0);
    assert_eq!(
        sample(
            &after,
            "stompede_http_requests_total{route=\"/api/v1/publish\",status=\"202\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            "stompede_http_requests_total{route=\"/metrics\",status=\"200\"}"
        ),
        1.0
    );
    for name in [
        "stompede_slow_consumer_disconnects_total",
        "stompede_slow_consumer_drops_total",
    ] {
        assert_eq!(sample(&after, name), 0.0);
    }
}

#[tokio::test]
async fn a_content_type_in_headers_wins_over_the_default() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/md\nreceipt:r\n\n\0")
        .await;
    client.frame().await;
    for (body, given) in [
        (r#""*bold*""#, "text/markdown"),
        (r#"{"a": 1}"#, "application/vnd.comment+json"),
    ] {
        let request = format!(
            r#"{{"destination": "/topic/md", "body": {body}, "headers": {{"content-type": "{given}"}}}}"#
        );
        let (status, response) = broker.http("POST", "/api/v1/publish", Some(&request)).await;
        assert_eq!(status, 202, "{response}");
        let message = client.frame().await;
        assert_eq!(
            message.headers.get_all("content-type").collect::<Vec<_>>(),
            [given],
            "{body}"
        );
    }
}

#[tokio::test]
async fn max_headers_limits_the_headers_of_a_publish() {
    let mut config = config();
    config.max_headers = 2;
    let broker = start(config).await;
    let mut client = broker.connected().await;
    // (The limit holds for client frames too: no receipt header here.)
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/h\n\n\0")
        .await;
    broker.wait_for_subscribers("/topic/h", 1).await;
    let two = r#"{"destination": "/topic/h", "body": "x", "headers": {"a": "1", "b": "2"}}"#;
    let (status, response) = broker.http("POST", "/api/v1/publish", Some(two)).await;
    assert_eq!(status, 202, "{response}");
    let message = client.frame().await;
    assert_eq!(
        (message.headers.get("a"), message.headers.get("b")),
        (Some("1"), Some("2"))
    );
    let three =
        r#"{"destination": "/topic/h", "body": "x", "headers": {"a": "1", "b": "2", "c": "3"}}"#;
    let (status, response) = broker.http("POST", "/api/v1/publish", Some(three)).await;
    assert_eq!(status, 400, "{response}");
    assert_eq!(response["error"], "too many headers: at most 2");
    assert_eq!(response.get("subscribers"), None);
}

#[tokio::test]
async fn a_json_body_arrives_as_the_publisher_wrote_it_compacted_at_most() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/raw\nreceipt:r\n\n\0")
        .await;
    client.frame().await;
    // Key order, a big integer (a comment id), floats as written, escaped
    // Unicode, and whitespace inside strings all survive; only whitespace
    // between tokens goes.
    let body = r#"{ "zeta": 1, "id" : 12345678901234567890123, "score": 1.10, "tiny": 1e-400,
        "text": "caf\u00e9 \ud83d\ude00 \"quoted\"  two  spaces", "list": [ 3 , 2 , 1 ], "nested": {"b": null, "a": true} }"#;
    let request = format!(r#"{{"destination": "/topic/raw", "body": {body}}}"#);
    let (status, response) = broker.http("POST", "/api/v1/publish", Some(&request)).await;
    assert_eq!(status, 202, "{response}");
    let message = client.frame().await;
    assert_eq!(
        message.headers.get("content-type"),
        Some("application/json")
    );
    assert_eq!(
        std::str::from_utf8(&message.body).unwrap(),
        r#"{"zeta":1,"id":12345678901234567890123,"score":1.10,"tiny":1e-400,"text":"caf\u00e9 \ud83d\ude00 \"quoted\"  two  spaces","list":[3,2,1],"nested":{"b":null,"a":true}}"#
    );
}

//! Who may subscribe, send and publish, and the per-IP and rate limits.

mod common;

mod raw;

use common::{config, http, start};
use stompede::config::ClientSend;
use stompede_protocol::Command;

#[tokio::test]
async fn subscribe_is_limited_to_the_subscribe_prefixes() {
    let broker = start(config()).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/queue/admin\n\n\0")
        .await;
    assert_eq!(
        client.expect_error().await,
        "not allowed to subscribe to \"/queue/admin\": destinations must start with \"/topic/\""
    );
    let mut config = config();
    config.subscribe_prefixes = vec!["/live/".into()];
    let broker = start(config).await;
    let mut client = broker.connected().await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/live/42\nreceipt:r\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);
    client
        .send("SUBSCRIBE\nid:1\ndestination:/topic/42\n\n\0")
        .await;
    assert!(client
        .expect_error()
        .await
        .starts_with("not allowed to subscribe to \"/topic/42\""));
}

#[tokio::test]
async fn client_send_is_limited_to_the_send_prefixes() {
    let mut config = config();
    config.client_send = ClientSend::Allow;
    config.send_prefixes = vec!["/topic/chat.".into()];
    let broker = start(config).await;
    let mut client = broker.connected().await;
    client
        .send("SEND\ndestination:/topic/chat.1\nreceipt:r\n\nhi\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);
    client
        .send("SEND\ndestination:/topic/comments.1\n\nspoofed comment\0")
        .await;
    assert_eq!(
        client.expect_error().await,
        "not allowed to send to \"/topic/comments.1\": destinations must start with \"/topic/chat.\""
    );
}

#[tokio::test]
async fn sends_past_the_rate_are_refused() {
    let mut config = config();
    config.client_send = ClientSend::Allow;
    config.max_sends_per_second = 1.0;
    config.send_burst = 3;
    let broker = start(config).await;
    let mut bystander = broker.connected().await;
    bystander
        .send("SUBSCRIBE\nid:0\ndestination:/topic/a\nreceipt:r\n\n\0")
        .await;
    assert_eq!(bystander.frame().await.command, Command::Receipt);
    let mut client = broker.connected().await;
    // Five SENDs in one WebSocket message: the burst of 3 passes, the 4th is refused.
    client
        .send(&"SEND\ndestination:/topic/a\n\nx\0".repeat(5))
        .await;
    assert_eq!(
        client.expect_error().await,
        "too many SENDs: this server allows 1 per second per session (burst 3)"
    );
    for _ in 0..3 {
        assert_eq!(bystander.frame().await.command, Command::Message);
    }
    broker.publish("/topic/a", "after").await;
    assert_eq!(
        &bystander.frame().await.body[..],
        b"after",
        "exactly three SENDs got through"
    );
}

#[tokio::test]
async fn connections_per_ip_are_limited_with_429() {
    let mut config = config();
    config.max_connections_per_ip = 2;
    config.per_ip_limit_exempts_loopback = false;
    let broker = start(config).await;
    let first = broker.connected().await;
    let _second = broker.connected().await;
    let refused = common::Client::open(&broker.ws_url(), &[])
        .await
        .err()
        .expect("a third connection is refused");
    assert!(refused.to_string().contains("429"), "{refused}");
    let (status, body) = common::upgrade(broker.addr, &[]).await;
    assert_eq!(status, 429);
    assert_eq!(
        body["error"],
        "too many connections from 127.0.0.1: at most 2 (max-connections-per-ip)"
    );
    // A closed session gives its slot back.
    drop(first);
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while broker.broker.sessions_from("127.0.0.1".parse().unwrap()) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    broker.connected().await;
}

#[tokio::test]
async fn loopback_peers_are_exempt_from_the_per_ip_limit_by_default() {
    let mut config = config();
    config.max_connections_per_ip = 1;
    let broker = start(config).await;
    let _first = broker.connected().await;
    let _second = broker.connected().await;
}

#[tokio::test]
async fn several_api_tokens_are_accepted_for_rotation() {
    let mut config = config();
    config.api_tokens = vec!["old-token".into(), "new-token".into()];
    let broker = start(config).await;
    let request = r#"{"destination": "/topic/a", "body": "x"}"#;
    for token in ["old-token", "new-token"] {
        let auth = format!("Bearer {token}");
        let (status, body) = http(
            broker.addr,
            "POST",
            "/api/v1/publish",
            Some(request),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(status, 202, "{token}: {body}");
    }
    for wrong in ["old-toke", "new-token2", "", "old-tokennew-token"] {
        let auth = format!("Bearer {wrong}");
        let (status, body) = http(
            broker.addr,
            "POST",
            "/api/v1/publish",
            Some(request),
            &[("authorization", &auth)],
        )
        .await;
        assert!(status == 403 || status == 401, "{wrong:?}: {status} {body}");
    }
    let (status, _) = http(broker.addr, "POST", "/api/v1/publish", Some(request), &[]).await;
    assert_eq!(status, 401);
}

#[test]
fn every_new_setting_has_a_flag_and_a_toml_key() {
    let config = stompede::Config::load_from([
        "stompede",
        "--api-token",
        "a",
        "--api-token",
        "b",
        "--allow-anonymous",
        "false",
        "--subscribe-prefix",
        "/live/",
        "--send-prefix",
        "/chat/",
        "--max-sends-per-second",
        "5",
        "--send-burst",
        "7",
        "--max-frame-bytes-before-connect",
        "2048",
        "--ws-max-message-bytes",
        "9000",
        "--ws-max-frame-bytes",
        "8000",
        "--max-connections-per-ip",
        "10",
        "--per-ip-limit-exempts-loopback",
        "false",
        "--jwt-secret",
        "s",
        "--jwt-leeway",
        "5",
    ])
    .unwrap();
    assert_eq!(config.api_tokens, ["a", "b"]);
    assert!(!config.anonymous_allowed());
    assert_eq!(config.subscribe_prefixes, ["/live/"]);
    assert_eq!(config.send_prefixes, ["/chat/"]);
    assert_eq!((config.max_sends_per_second, config.send_burst), (5.0, 7));
    assert_eq!(config.max_frame_bytes_before_connect, 2048);
    assert_eq!(
        (config.ws_max_message_bytes(), config.ws_max_frame_bytes()),
        (9000, 8000)
    );
    assert_eq!(config.max_connections_per_ip, 10);
    assert!(!config.per_ip_limit_exempts_loopback);
    assert!(config.jwt.is_some());

    let file = std::env::temp_dir().join(format!("stompede-limits-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        r#"
        api-token = "only-one"
        subscribe-prefix = ["/a/", "/b/"]
        allow-anonymous = true
        jwt-destinations-claim = "rooms"
        max-connections-per-ip = 0
        "#,
    )
    .unwrap();
    let config =
        stompede::Config::load_from(["stompede".as_ref(), "--config".as_ref(), file.as_os_str()])
            .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(config.api_tokens, ["only-one"]);
    assert_eq!(config.subscribe_prefixes, ["/a/", "/b/"]);
    assert!(config.anonymous_allowed());
    assert_eq!(config.max_connections_per_ip, 0);

    let defaults = stompede::Config::default();
    assert_eq!(defaults.subscribe_prefixes, ["/topic/"]);
    assert_eq!(defaults.max_frame_bytes_before_connect, 4096);
    assert_eq!(defaults.ws_max_message_bytes(), 65536 + 1024);
    assert!(defaults.anonymous_allowed() && defaults.jwt.is_none());
}

mod jwt_settings {
    //! `jwt-leeway` and `jwt-destinations-claim` change what a token may do.
    use super::common::{config, start, Client, TestBroker};
    use jsonwebtoken::{encode, get_current_timestamp as now, EncodingKey, Header};
    use serde_json::json;
    use std::sync::Arc;
    use stompede::auth::{JwtSettings, JwtVerifier};
    use stompede_protocol::{Command, Frame};

    const SECRET: &str = "a test secret of reasonable length";

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    async fn broker(leeway_seconds: u64, destinations_claim: &str) -> TestBroker {
        let verifier = JwtVerifier::from_settings(&JwtSettings {
            secret: Some(SECRET),
            public_key: None,
            destinations_claim,
            audience: None,
            issuer: None,
            leeway_seconds,
        })
        .unwrap()
        .expect("a verifier");
        start(stompede::Config {
            jwt: Some(Arc::new(verifier)),
            ..config()
        })
        .await
    }

    async fn connect(broker: &TestBroker, token: &str) -> (Client, Frame) {
        let mut client = broker.client().await;
        client
            .send(&format!(
                "CONNECT\naccept-version:1.2\npasscode:{token}\n\n\0"
            ))
            .await;
        let reply = client.frame().await;
        (client, reply)
    }

    #[tokio::test]
    async fn a_token_expired_within_the_leeway_is_accepted() {
        let expired_a_minute_ago = token(json!({"exp": now() - 60}));
        let expired_ten_minutes_ago = token(json!({"exp": now() - 600}));
        let not_valid_for_a_minute = token(json!({"exp": now() + 600, "nbf": now() + 60}));
        // The default leeway (30 s) refuses a token expired a minute ago...
        let default = broker(30, "destinations").await;
        let (_, reply) = connect(&default, &expired_a_minute_ago).await;
        assert_eq!(
            reply.headers.get("message"),
            Some("bad token: it has expired (exp)")
        );
        // ...five minutes of leeway accept it, and one not valid for a minute.
        let lenient = broker(300, "destinations").await;
        for token in [&expired_a_minute_ago, &not_valid_for_a_minute] {
            let (_, reply) = connect(&lenient, token).await;
            assert_eq!(reply.command, Command::Connected, "{reply:?}");
        }
        // But not one expired ten minutes ago.
        let (_, reply) = connect(&lenient, &expired_ten_minutes_ago).await;
        assert_eq!(
            reply.headers.get("message"),
            Some("bad token: it has expired (exp)")
        );
    }

    #[tokio::test]
    async fn a_renamed_destinations_claim_is_the_one_that_limits() {
        let broker = broker(30, "rooms").await;
        let (mut client, reply) = connect(
            &broker,
            &token(json!({"exp": now() + 600, "rooms": ["/topic/comments.42"]})),
        )
        .await;
        assert_eq!(reply.command, Command::Connected, "{reply:?}");
        client
            .send("SUBSCRIBE\nid:0\ndestination:/topic/comments.42\nreceipt:r\n\n\0")
            .await;
        assert_eq!(client.frame().await.command, Command::Receipt);
        client
            .send("SUBSCRIBE\nid:1\ndestination:/topic/comments.43\nreceipt:no\n\n\0")
            .await;
        assert_eq!(
            client.expect_error().await,
            "not allowed to subscribe to \"/topic/comments.43\": the token does not grant it"
        );
        // The default name means nothing now: the token is not limited by it.
        let (mut client, reply) = connect(
            &broker,
            &token(json!({"exp": now() + 600, "destinations": ["/topic/comments.42"]})),
        )
        .await;
        assert_eq!(reply.command, Command::Connected, "{reply:?}");
        client
            .send("SUBSCRIBE\nid:0\ndestination:/topic/comments.43\nreceipt:r\n\n\0")
            .await;
        assert_eq!(client.frame().await.command, Command::Receipt);
        // And the renamed claim is checked like the default one.
        let (_, reply) = connect(&broker, &token(json!({"exp": now() + 600, "rooms": 7}))).await;
        assert_eq!(
            reply.headers.get("message"),
            Some("bad token: claim \"rooms\" must be a list of strings")
        );
    }
}

#[tokio::test]
async fn connections_past_max_http_connections_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = config();
    config.max_http_connections = 1;
    let broker = start(config).await;
    let request = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", broker.addr);
    // The first connection is served and stays open (keep-alive)...
    let mut first = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    first.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(common::PATIENCE, first.read(&mut buf))
        .await
        .expect("the first connection is answered")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    // ...so the second waits in the backlog, unanswered...
    let second = tokio::spawn(http(broker.addr, "GET", "/healthz", None, &[]));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second HTTP connection was served while max-http-connections = 1 was in use"
    );
    // ...until the first closes.
    drop(first);
    let (status, _) = tokio::time::timeout(common::PATIENCE, second)
        .await
        .expect("served once the first connection closed")
        .unwrap();
    assert_eq!(status, 200);
}

/// Opens a WebSocket whose handshake carries `Origin: origin`.
async fn open_with_origin(
    broker: &common::TestBroker,
    origin: &str,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = broker.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.map(|_| ())
}

#[tokio::test]
async fn allowed_origin_star_accepts_any_origin() {
    let mut config = config();
    config.allowed_origins = vec!["*".into()];
    let broker = start(config).await;
    for origin in ["https://news.example", "http://evil.example:8080", "null"] {
        open_with_origin(&broker, origin)
            .await
            .unwrap_or_else(|error| panic!("{origin}: {error}"));
    }
}

#[tokio::test]
async fn without_allowed_origin_only_same_host_origins_are_accepted() {
    let broker = start(config()).await;
    // The page's origin is the broker's own host and port.
    let origin = format!("http://{}", broker.addr);
    open_with_origin(&broker, &origin)
        .await
        .unwrap_or_else(|error| panic!("{origin}: {error}"));
    // Another port, or another host, is another site.
    for origin in [
        format!("http://127.0.0.1:{}", broker.addr.port() + 1),
        format!("http://localhost.evil.example:{}", broker.addr.port()),
    ] {
        let refused = open_with_origin(&broker, &origin)
            .await
            .err()
            .unwrap_or_else(|| panic!("{origin} was accepted"));
        assert!(refused.to_string().contains("403"), "{origin}: {refused}");
    }
    // A listed origin replaces the same-host rule.
    let mut config = config();
    config.allowed_origins = vec!["https://news.example".into()];
    let broker = start(config).await;
    open_with_origin(&broker, "https://news.example")
        .await
        .unwrap();
    let refused = open_with_origin(&broker, &format!("http://{}", broker.addr))
        .await
        .expect_err("same-host is not implied once origins are listed");
    assert!(refused.to_string().contains("403"), "{refused}");
}

#[test]
fn ipv6_clients_are_limited_per_64_bit_prefix() {
    let mut config = config();
    config.max_connections_per_ip = 2;
    let broker = std::sync::Arc::new(stompede::Broker::new(config));
    let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
    // One host hands itself addresses from its /64 at will: they count as one.
    let _a = broker.admit(ip("2001:db8:1:2::1")).unwrap();
    let _b = broker.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
    let refused = broker.admit(ip("2001:db8:1:2::3")).err().expect("refused");
    assert_eq!(
        refused.to_string(),
        "too many connections from 2001:db8:1:2::/64: at most 2 (max-connections-per-ip)"
    );
    // Another /64 has its own slots; IPv4 addresses are counted one by one.
    let _c = broker.admit(ip("2001:db8:1:3::1")).unwrap();
    let _d = broker.admit(ip("192.0.2.1")).unwrap();
    let _e = broker.admit(ip("192.0.2.1")).unwrap();
    let _f = broker.admit(ip("192.0.2.2")).unwrap();

    // The prefix length is a setting.
    let mut config = common::config();
    config.max_connections_per_ip = 1;
    config.ipv6_prefix_length = 128;
    let broker = std::sync::Arc::new(stompede::Broker::new(config));
    let _a = broker.admit(ip("2001:db8::1")).unwrap();
    let _b = broker.admit(ip("2001:db8::2")).unwrap();
}

/// A keep-alive HTTP connection that has had one `/healthz` answered.
async fn kept_alive(addr: std::net::SocketAddr) -> Result<tokio::net::TcpStream, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(common::PATIENCE, stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("closed without an answer".into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{head}{}", String::from_utf8_lossy(&body)));
    }
    Ok(stream)
}

#[tokio::test]
async fn an_idle_keep_alive_http_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let mut config = config();
    config.http_idle_timeout = std::time::Duration::from_secs(1);
    let broker = start(config).await;
    let mut stream = kept_alive(broker.addr).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(common::PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the idle connection was still open after {:?}",
        common::PATIENCE
    );
}

#[tokio::test]
async fn http_connections_per_ip_are_limited() {
    let mut config = config();
    config.max_http_connections_per_ip = 2;
    config.per_ip_limit_exempts_loopback = false;
    let broker = start(config).await;
    let first = kept_alive(broker.addr).await.unwrap();
    let _second = kept_alive(broker.addr).await.unwrap();
    let refused = kept_alive(broker.addr)
        .await
        .expect_err("a third is refused");
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(
        refused.contains(
            "too many HTTP connections from 127.0.0.1: at most 2 (max-http-connections-per-ip)"
        ),
        "{refused}"
    );
    drop(first);
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while kept_alive(broker.addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The status line of a WebSocket upgrade sent with `extra` headers.
async fn upgrade_status(
    addr: std::net::SocketAddr,
    extra: &str,
) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = raw::upgrade_request(addr, extra);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(common::PATIENCE, stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(read, 1, "closed early: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut body = Vec::new();
    if let Some(length) = head.lines().find_map(|line| {
        let line = line.to_ascii_lowercase();
        line.strip_prefix("content-length: ")?
            .trim()
            .parse::<usize>()
            .ok()
    }) {
        body.resize(length, 0);
        stream.read_exact(&mut body).await.unwrap();
    }
    let status = head.lines().next().unwrap();
    (
        format!("{status} {}", String::from_utf8_lossy(&body)),
        stream,
    )
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_address_is_the_client_for_per_ip_limits() {
    let mut config = config();
    config.max_connections_per_ip = 1;
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let broker = start(config).await;
    let (status, _first) = upgrade_status(broker.addr, "X-Forwarded-For: 198.51.100.7\r\n").await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    // Its claim of another address further left is not believed.
    let (status, _) = upgrade_status(
        broker.addr,
        "X-Forwarded-For: 203.0.113.9, 198.51.100.7\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 429"), "{status}");
    assert!(
        status.contains("too many connections from 198.51.100.7"),
        "{status}"
    );
    let (status, _other) = upgrade_status(broker.addr, "X-Real-IP: 198.51.100.8\r\n").await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    // The proxy's own requests (no header) are loopback, exempt.
    let (status, _proxy) = upgrade_status(broker.addr, "").await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    // A forwarded client is not loopback for the API either.
    let (status, body) = http(
        broker.addr,
        "GET",
        "/api/v1/destinations/%2Ftopic%2Fa",
        None,
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn forwarded_addresses_from_anyone_else_are_ignored() {
    let mut config = config();
    config.max_connections_per_ip = 1;
    config.per_ip_limit_exempts_loopback = false;
    config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    let broker = start(config).await;
    let (status, _first) = upgrade_status(broker.addr, "X-Forwarded-For: 198.51.100.7\r\n").await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let (status, _) = upgrade_status(broker.addr, "X-Forwarded-For: 198.51.100.8\r\n").await;
    assert!(
        status.contains("too many connections from 127.0.0.1"),
        "{status}"
    );
}

#[tokio::test]
async fn handshakes_past_the_rate_get_503_with_retry_after() {
    let mut config = config();
    config.max_handshakes_per_second = 1;
    config.handshake_burst = 2;
    let broker = start(config).await;
    let (status, _a) = upgrade_status(broker.addr, "").await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let (status, _b) = upgrade_status(broker.addr, "").await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let (status, _) = upgrade_status(broker.addr, "").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert!(status.contains("too many handshakes"), "{status}");
    let (code, body) = common::upgrade(broker.addr, &[]).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(broker.broker.metrics().handshakes_refused.get(), 2);
    // Later on, handshakes are admitted again.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let (status, _c) = upgrade_status(broker.addr, "").await;
        if status.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(status.starts_with("HTTP/1.1 503"), "{status}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never admitted again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_503_for_the_handshake_rate_says_when_to_retry() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = config();
    config.max_handshakes_per_second = 1;
    config.handshake_burst = 1;
    let broker = start(config).await;
    let (status, _a) = upgrade_status(broker.addr, "").await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let request = raw::upgrade_request(broker.addr, "");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{head}");
    let retry_after: u64 = head
        .lines()
        .find_map(|line| line.strip_prefix("retry-after: "))
        .expect("a Retry-After header")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
}

//! Subscriber authentication with JWTs (HS256, RS256, ES256), as the CONNECT
//! passcode or an `Authorization: Bearer` header, and the destinations claim.

mod common;

use common::{config, start, TestBroker};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use stompede::auth::JwtVerifier;
use stompede_protocol::Command;

const SECRET: &[u8] = b"a test secret of reasonable length";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

async fn hs256_broker() -> TestBroker {
    let mut config = config();
    config.jwt = Some(Arc::new(JwtVerifier::hs256(SECRET)));
    start(config).await
}

/// Sends CONNECT with `headers`; returns the client and the reply.
async fn connect(broker: &TestBroker, headers: &str) -> (common::Client, stompede_protocol::Frame) {
    let mut client = broker.client().await;
    client
        .send(&format!(
            "CONNECT\naccept-version:1.2\nhost:localhost\n{headers}\n\0"
        ))
        .await;
    let reply = client.frame().await;
    (client, reply)
}

#[tokio::test]
async fn a_valid_token_connects_as_passcode_or_bearer_header() {
    let broker = hs256_broker().await;
    let token = hs256(json!({"sub": "reader-1", "exp": now() + 600}));
    let (_, reply) = connect(&broker, &format!("login:reader-1\npasscode:{token}\n")).await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
    let (_, reply) = connect(&broker, &format!("Authorization:Bearer {token}\n")).await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
}

#[tokio::test]
async fn anonymous_sessions_are_refused_once_a_key_is_configured() {
    let broker = hs256_broker().await;
    let (mut client, reply) = connect(&broker, "").await;
    assert_eq!(reply.command, Command::Error);
    assert_eq!(
        reply.headers.get("message"),
        Some("authentication required: send login and passcode, or a token")
    );
    client.expect_closed().await;
    // Unless explicitly allowed.
    let mut config = config();
    config.jwt = Some(Arc::new(JwtVerifier::hs256(SECRET)));
    config.allow_anonymous = Some(true);
    let broker = start(config).await;
    let (_, reply) = connect(&broker, "").await;
    assert_eq!(reply.command, Command::Connected);
    // A bad token is still refused, for its own fault: anonymous access is
    // not a fallback. One fault per token, so the message must name it.
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 600}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let expired = hs256(json!({"exp": now() - 3600}));
    for (token, expected) in [
        (wrong_key, "bad token: its signature does not match"),
        (expired, "bad token: it has expired (exp)"),
    ] {
        let (mut client, reply) = connect(&broker, &format!("passcode:{token}\n")).await;
        assert_eq!(reply.command, Command::Error, "{expected}");
        assert_eq!(reply.headers.get("message"), Some(expected));
        client.expect_closed().await;
    }
}

#[tokio::test]
async fn bad_tokens_get_an_error_that_says_why() {
    let broker = hs256_broker().await;
    let other_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 600}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let cases = [
        (
            hs256(json!({"exp": now() - 3600})),
            "bad token: it has expired (exp)",
        ),
        (
            hs256(json!({"exp": now() + 3600, "nbf": now() + 3600})),
            "bad token: it is not valid yet (nbf)",
        ),
        (
            hs256(json!({"sub": "no-exp"})),
            "bad token: it has no exp claim",
        ),
        (other_key, "bad token: its signature does not match"),
        (
            hs256(json!({"exp": now() + 600, "destinations": [1, 2]})),
            "bad token: claim \"destinations\" must be a list of strings",
        ),
        (
            "not.a.jwt".to_owned(),
            "bad token: it is not a well-formed JWT",
        ),
    ];
    for (token, expected) in cases {
        let (mut client, reply) =
            connect(&broker, &format!("Authorization:Bearer {token}\n")).await;
        assert_eq!(reply.command, Command::Error, "{expected}");
        assert_eq!(reply.headers.get("message"), Some(expected));
        client.expect_closed().await;
    }
    // `alg: none` is never accepted (jsonwebtoken does not know the
    // algorithm "none", so the header does not parse).
    let unsigned = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.";
    let (mut client, reply) = connect(&broker, &format!("Authorization:Bearer {unsigned}\n")).await;
    assert_eq!(reply.command, Command::Error);
    assert_eq!(
        reply.headers.get("message"),
        Some("bad token: it is not a well-formed JWT")
    );
    client.expect_closed().await;
}

#[tokio::test]
async fn the_destinations_claim_limits_subscriptions() {
    let broker = hs256_broker().await;
    let token = hs256(json!({
        "exp": now() + 600,
        "destinations": ["/topic/comments.42", "/topic/live.*"],
    }));
    let (mut client, reply) = connect(&broker, &format!("passcode:{token}\n")).await;
    assert_eq!(reply.command, Command::Connected);
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/comments.42\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/live.7\nreceipt:r\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);
    client
        .send("SUBSCRIBE\nid:2\ndestination:/topic/comments.43\n\n\0")
        .await;
    assert_eq!(
        client.expect_error().await,
        "not allowed to subscribe to \"/topic/comments.43\": the token does not grant it"
    );
    broker.wait_for_subscribers("/topic/comments.42", 0).await;
    // A token without the claim may subscribe wherever subscribe-prefix allows.
    let token = hs256(json!({"exp": now() + 600}));
    let (mut client, _) = connect(&broker, &format!("passcode:{token}\n")).await;
    client
        .send("SUBSCRIBE\nid:0\ndestination:/topic/anything\nreceipt:r\n\n\0")
        .await;
    assert_eq!(client.frame().await.command, Command::Receipt);
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_checked_with_a_public_key_file() {
    for (public, private, algorithm) in [
        (
            "jwt-rs256-public.pem",
            "jwt-rs256-private.pem",
            Algorithm::RS256,
        ),
        (
            "jwt-es256-public.pem",
            "jwt-es256-private.pem",
            Algorithm::ES256,
        ),
    ] {
        let config = stompede::Config {
            jwt_public_key: Some(fixture(public)),
            ..config()
        };
        let broker = start(config.finish().unwrap()).await;
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let claims = json!({"exp": now() + 600, "destinations": ["/topic/a"]});
        let token = encode(&Header::new(algorithm), &claims, &key).unwrap();
        let (mut client, reply) = connect(&broker, &format!("passcode:{token}\n")).await;
        assert_eq!(
            reply.command,
            Command::Connected,
            "{algorithm:?}: {reply:?}"
        );
        client
            .send("SUBSCRIBE\nid:0\ndestination:/topic/b\n\n\0")
            .await;
        assert!(client
            .expect_error()
            .await
            .starts_with("not allowed to subscribe"));
        // An HS256 token signed with the public key as the secret (algorithm confusion) is refused.
        let public_pem = std::fs::read(fixture(public)).unwrap();
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        let (_, reply) = connect(&broker, &format!("passcode:{confused}\n")).await;
        assert_eq!(
            reply.headers.get("message"),
            Some("bad token: its algorithm is not the configured one")
        );
    }
}

#[test]
fn a_bad_key_file_is_a_config_error() {
    let settings = stompede::Config {
        jwt_public_key: Some(fixture("README.md")),
        ..Default::default()
    };
    let error = settings.finish().unwrap_err().to_string();
    assert!(error.contains("not an RSA or EC public key"), "{error}");
    let settings = stompede::Config {
        jwt_public_key: Some(fixture("jwt-rs256-public.pem")),
        jwt_secret: Some("s".into()),
        ..Default::default()
    };
    assert!(settings
        .finish()
        .unwrap_err()
        .to_string()
        .contains("not both"));
}

#[tokio::test]
async fn static_users_still_work_beside_tokens() {
    let mut config = config();
    config.jwt = Some(Arc::new(JwtVerifier::hs256(SECRET)));
    config.users = vec![stompede::auth::User {
        login: "ops".into(),
        passcode: "pw".into(),
    }];
    let broker = start(config).await;
    let (_, reply) = connect(&broker, "login:ops\npasscode:pw\n").await;
    assert_eq!(reply.command, Command::Connected);
    let (_, reply) = connect(&broker, "login:ops\npasscode:nope\n").await;
    assert_eq!(reply.headers.get("message"), Some("bad credentials"));
}

/// What a test secret looks like on the command line.
const SECRET_TEXT: &str = "a test secret of reasonable length";

#[tokio::test]
async fn jwt_audience_and_issuer_make_their_claims_required() {
    for (flag, claim, value) in [
        ("--jwt-audience", "aud", "comments"),
        ("--jwt-issuer", "iss", "https://auth.example"),
    ] {
        let args = [
            "stompede",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET_TEXT,
            flag,
            value,
        ];
        let broker = start(stompede::Config::load_from(args).unwrap()).await;
        let with = hs256(json!({"exp": now() + 600, claim: value}));
        let (_, reply) = connect(&broker, &format!("passcode:{with}\n")).await;
        assert_eq!(reply.command, Command::Connected, "{flag}: {reply:?}");
        let without = hs256(json!({"exp": now() + 600}));
        let (mut client, reply) = connect(&broker, &format!("passcode:{without}\n")).await;
        assert_eq!(reply.command, Command::Error, "{flag}: {reply:?}");
        assert_eq!(
            reply.headers.get("message"),
            Some(format!("bad token: it has no {claim} claim").as_str())
        );
        client.expect_closed().await;
    }
}

#[test]
fn empty_credentials_and_delimiters_in_tokens_are_startup_errors() {
    let refused = |args: &[&str]| {
        let args = std::iter::once("stompede").chain(args.iter().copied());
        stompede::Config::load_from(args)
            .expect_err("a startup error")
            .to_string()
    };
    let message = refused(&["--jwt-secret", ""]);
    assert!(message.contains("must not be empty"), "{message}");
    let message = refused(&["--api-token", ""]);
    assert!(message.contains("must not be empty"), "{message}");
    let message = refused(&["--user", "ann:"]);
    assert!(message.contains("empty passcode"), "{message}");
    // A token with a comma is not split into two shorter valid tokens.
    let message = refused(&["--api-token", "long-secret,x"]);
    assert!(message.contains("must not contain ','"), "{message}");
    // A passcode with a comma is one passcode, not a second user.
    let config = stompede::Config::load_from(["stompede", "--user", "ann:pw,bob:x"]).unwrap();
    assert_eq!(config.users.len(), 1);
    assert_eq!(config.users[0].passcode, "pw,bob:x");
    // Several tokens: the flag repeated.
    let config =
        stompede::Config::load_from(["stompede", "--api-token", "old", "--api-token", "new"])
            .unwrap();
    assert_eq!(config.api_tokens, ["old", "new"]);
}

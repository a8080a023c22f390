//! Who may connect: static `login:passcode` users, JWTs (HS256 with a
//! secret, RS256 or ES256 with a public key), or anonymous readers; and,
//! for a token, which destinations its session may subscribe to.
//!
//! A token is given as the CONNECT `passcode` (what browser STOMP clients can
//! always send) or as an `Authorization: Bearer TOKEN` CONNECT header.
//!
//! Every credential check lives here: CONNECT logins and tokens, and the
//! bearer token of the HTTP API, all from one [`AuthPolicy`] that the
//! configuration builds.

use crate::ip_limit::is_loopback;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use stompede_protocol::Headers;
use subtle::ConstantTimeEq;

/// The default `jwt-destinations-claim`.
pub const DEFAULT_DESTINATIONS_CLAIM: &str = "destinations";
/// The default `jwt-leeway`, in seconds.
pub const DEFAULT_JWT_LEEWAY_SECONDS: u64 = 30;

/// A configured `login:passcode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub login: String,
    pub passcode: String,
}

impl FromStr for User {
    type Err = String;

    fn from_str(text: &str) -> Result<User, String> {
        let (login, passcode) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not login:passcode"))?;
        if login.is_empty() {
            return Err(format!(
                "{text:?} has an empty login (expected login:passcode)"
            ));
        }
        if passcode.is_empty() {
            return Err(format!(
                "user {login:?} has an empty passcode (expected login:passcode)"
            ));
        }
        Ok(User {
            login: login.into(),
            passcode: passcode.into(),
        })
    }
}

/// Who may connect and who may call the HTTP API.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Static `login:passcode` pairs CONNECT may give.
    pub users: Vec<User>,
    /// The key subscriber JWTs are checked with, if any.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Whether a CONNECT without credentials is accepted.
    pub allow_anonymous: bool,
    /// Accepted API bearer tokens (empty: loopback peers only).
    pub api_tokens: Vec<String>,
}

/// Why an HTTP API request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRefusal {
    /// No `api-token` is configured and the peer is not on loopback.
    NotLoopback,
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// A bearer token that is not one of `api-token`.
    InvalidToken,
}

impl ApiRefusal {
    pub fn message(self) -> &'static str {
        match self {
            ApiRefusal::NotLoopback => {
                "the API only accepts loopback clients unless an api-token is configured"
            }
            ApiRefusal::MissingToken => "missing Authorization: Bearer token",
            ApiRefusal::InvalidToken => "invalid API token",
        }
    }
}

impl AuthPolicy {
    /// Whether an HTTP API request from `peer` with this `Authorization`
    /// header value may go on.
    pub fn check_api_request(
        &self,
        peer: IpAddr,
        authorization: Option<&str>,
    ) -> Result<(), ApiRefusal> {
        if self.api_tokens.is_empty() {
            return if is_loopback(peer) {
                Ok(())
            } else {
                Err(ApiRefusal::NotLoopback)
            };
        }
        let given = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiRefusal::MissingToken)?
            .trim();
        // Every configured token is compared in full (no early exit), so the
        // time taken says neither which token matched nor how much of one.
        let known = self
            .api_tokens
            .iter()
            .fold(false, |found, token| found | constant_time_eq(given, token));
        if known {
            Ok(())
        } else {
            Err(ApiRefusal::InvalidToken)
        }
    }

    /// Decides who a CONNECT frame is, or why it is refused.
    pub fn authenticate(&self, headers: &Headers) -> Result<Identity, String> {
        let bearer = headers
            .get("Authorization")
            .or_else(|| headers.get("authorization"))
            .map(|value| value.strip_prefix("Bearer ").unwrap_or(value).trim());
        let login = headers.get("login");
        let passcode = headers.get("passcode");

        if let Some(token) = bearer {
            let Some(jwt) = &self.jwt else {
                return Err(
                    "bearer tokens are not accepted by this server (no JWT key is configured)"
                        .into(),
                );
            };
            return jwt.verify(token).map(Identity::Token);
        }
        if login.is_none() && passcode.is_none() {
            return if self.allow_anonymous {
                Ok(Identity::Anonymous)
            } else {
                Err("authentication required: send login and passcode, or a token".into())
            };
        }
        if !self.users.is_empty() {
            let (login, passcode) = (login.unwrap_or_default(), passcode.unwrap_or_default());
            // Every user is compared, so the time taken does not say which matched.
            let known = self.users.iter().fold(None, |found, user| {
                let matches = constant_time_eq(&user.login, login)
                    & constant_time_eq(&user.passcode, passcode);
                found.or(matches.then(|| user.login.clone()))
            });
            if let Some(login) = known {
                return Ok(Identity::User(login));
            }
        }
        if let (Some(jwt), Some(passcode)) = (&self.jwt, passcode) {
            if looks_like_jwt(passcode) {
                return jwt.verify(passcode).map(Identity::Token);
            }
        }
        if self.users.is_empty() && self.jwt.is_none() && self.allow_anonymous {
            // Nothing to check credentials against: they are ignored, as STOMP
            // brokers without authentication do.
            return Ok(Identity::Anonymous);
        }
        Err("bad credentials".into())
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// What a session proved in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    /// A configured `login:passcode`.
    User(String),
    /// A valid JWT.
    Token(Grant),
}

impl Identity {
    /// Whether this identity may subscribe to `destination` (the
    /// `subscribe-prefix` check is separate and applies to everyone).
    pub fn may_subscribe(&self, destination: &str) -> bool {
        match self {
            Identity::Anonymous | Identity::User(_) => true,
            Identity::Token(grant) => grant.allows(destination),
        }
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`, for logs.
    pub subject: Option<String>,
    /// The destinations claim; `None` when the token has none (no restriction
    /// beyond `subscribe-prefix`).
    pub destinations: Option<Vec<DestinationRule>>,
}

impl Grant {
    pub fn allows(&self, destination: &str) -> bool {
        match &self.destinations {
            None => true,
            Some(rules) => rules.iter().any(|rule| rule.matches(destination)),
        }
    }
}

/// One entry of the destinations claim: `/topic/comments.42` (exact) or
/// `/topic/comments.*` (every destination starting with `/topic/comments.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationRule {
    Exact(String),
    Prefix(String),
}

impl DestinationRule {
    pub fn parse(entry: &str) -> DestinationRule {
        match entry.strip_suffix('*') {
            Some(prefix) => DestinationRule::Prefix(prefix.to_owned()),
            None => DestinationRule::Exact(entry.to_owned()),
        }
    }

    pub fn matches(&self, destination: &str) -> bool {
        match self {
            DestinationRule::Exact(exact) => exact == destination,
            DestinationRule::Prefix(prefix) => destination.starts_with(prefix.as_str()),
        }
    }
}

/// The JWT settings, as given.
#[derive(Debug, Clone, Copy)]
pub struct JwtSettings<'a> {
    pub secret: Option<&'a str>,
    pub public_key: Option<&'a Path>,
    pub destinations_claim: &'a str,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub leeway_seconds: u64,
}

/// Checks subscriber JWTs against one key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    destinations_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    // The key is a secret (or at least not worth printing).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("destinations_claim", &self.destinations_claim)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for the configured key, `None` when no key is configured.
    pub fn from_settings(settings: &JwtSettings<'_>) -> Result<Option<JwtVerifier>, String> {
        let mut verifier = match (settings.secret, settings.public_key) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return Err("give jwt-secret or jwt-public-key, not both".into()),
            (Some(secret), None) => JwtVerifier::hs256(secret.as_bytes()),
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                JwtVerifier::from_public_key_pem(&pem)
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
        };
        verifier.destinations_claim = settings.destinations_claim.to_owned();
        verifier.validation.leeway = settings.leeway_seconds;
        // A configured audience or issuer makes its claim required: a token
        // without it is refused, not waved through.
        let mut required = vec!["exp"];
        if let Some(audience) = settings.audience {
            verifier.validation.set_audience(&[audience]);
            verifier.validation.validate_aud = true;
            required.push("aud");
        }
        if let Some(issuer) = settings.issuer {
            verifier.validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        verifier.validation.set_required_spec_claims(&required);
        Ok(Some(verifier))
    }

    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> JwtVerifier {
        JwtVerifier::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 for an RSA public key, ES256 for a P-256 one (PEM).
    pub fn from_public_key_pem(pem: &[u8]) -> Result<JwtVerifier, String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(JwtVerifier::new(key, Algorithm::RS256));
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(JwtVerifier::new(key, Algorithm::ES256)),
            Err(e) => Err(format!("not an RSA or EC public key in PEM: {e}")),
        }
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> JwtVerifier {
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = DEFAULT_JWT_LEEWAY_SECONDS;
        JwtVerifier {
            key,
            validation,
            destinations_claim: DEFAULT_DESTINATIONS_CLAIM.to_owned(),
        }
    }

    /// Checks the signature, the algorithm, `exp` (required), `nbf`, and
    /// `aud`/`iss` when configured; returns what the token grants.
    pub fn verify(&self, token: &str) -> Result<Grant, String> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| describe(e.kind()))?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(|sub| sub.as_str())
            .map(str::to_owned);
        let destinations = match claims.get(&self.destinations_claim) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(entries)) => Some(
                entries
                    .iter()
                    .map(|entry| entry.as_str().map(DestinationRule::parse))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        format!(
                            "bad token: claim {:?} must be a list of strings",
                            self.destinations_claim
                        )
                    })?,
            ),
            Some(serde_json::Value::String(one)) => Some(vec![DestinationRule::parse(one)]),
            Some(_) => {
                return Err(format!(
                    "bad token: claim {:?} must be a list of strings",
                    self.destinations_claim
                ))
            }
        };
        Ok(Grant {
            subject,
            destinations,
        })
    }
}

fn describe(kind: &ErrorKind) -> String {
    let reason = match kind {
        ErrorKind::ExpiredSignature => "it has expired (exp)".to_owned(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "its signature does not match".to_owned(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "its algorithm is not the configured one".to_owned()
        }
        ErrorKind::InvalidAudience => "its audience (aud) is not accepted".to_owned(),
        ErrorKind::InvalidIssuer => "its issuer (iss) is not accepted".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim} claim"),
        _ => "it is not a well-formed JWT".to_owned(),
    };
    format!("bad token: {reason}")
}

/// Whether `text` has the shape of a compact JWS (three base64url parts).
fn looks_like_jwt(text: &str) -> bool {
    text.split('.').count() == 3
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_rules_are_exact_or_prefixes() {
        let grant = Grant {
            subject: None,
            destinations: Some(vec![
                DestinationRule::parse("/topic/comments.42"),
                DestinationRule::parse("/topic/live.*"),
            ]),
        };
        assert!(grant.allows("/topic/comments.42"));
        assert!(!grant.allows("/topic/comments.421"));
        assert!(grant.allows("/topic/live.7"));
        assert!(!grant.allows("/topic/other"));
        assert!(Grant {
            subject: None,
            destinations: None
        }
        .allows("/topic/anything"));
    }

    #[test]
    fn the_api_takes_loopback_peers_without_a_token_and_only_bearer_tokens_with_one() {
        let mut policy = AuthPolicy {
            users: Vec::new(),
            jwt: None,
            allow_anonymous: true,
            api_tokens: Vec::new(),
        };
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped_loopback: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(policy.check_api_request(loopback, None), Ok(()));
        assert_eq!(policy.check_api_request(mapped_loopback, None), Ok(()));
        assert_eq!(
            policy.check_api_request("::1".parse().unwrap(), None),
            Ok(())
        );
        assert_eq!(
            policy.check_api_request(remote, None),
            Err(ApiRefusal::NotLoopback)
        );
        assert_eq!(
            policy.check_api_request(remote, Some("Bearer anything")),
            Err(ApiRefusal::NotLoopback)
        );

        policy.api_tokens = vec!["old".into(), "new".into()];
        assert_eq!(policy.check_api_request(remote, Some("Bearer new")), Ok(()));
        assert_eq!(policy.check_api_request(remote, Some("Bearer old")), Ok(()));
        assert_eq!(
            policy.check_api_request(loopback, None),
            Err(ApiRefusal::MissingToken)
        );
        assert_eq!(
            policy.check_api_request(remote, Some("new")),
            Err(ApiRefusal::MissingToken)
        );
        assert_eq!(
            policy.check_api_request(remote, Some("Bearer ne")),
            Err(ApiRefusal::InvalidToken)
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq("s3cret", "s3cret"));
        assert!(!constant_time_eq("s3cret", "s3cre"));
        assert!(!constant_time_eq("s3cret", "s3creT"));
        assert!(constant_time_eq("", ""));
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("s3cret"));
        assert!(!looks_like_jwt("a.b"));
    }
}

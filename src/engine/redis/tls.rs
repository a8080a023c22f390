//! TLS to Redis (`rediss://`, `rediss-cluster://`): rustls on the ring
//! provider, trusting the CA in `redis-tls-ca-file` or else the system's
//! roots (rustls-native-certs), with a client certificate when
//! `redis-tls-cert-file` and `redis-tls-key-file` are given (a Redis with
//! `tls-auth-clients yes`, its default, asks for one).
//!
//! The server's name is checked against its certificate: the host of
//! `redis-url` (an IP address matches an IP SAN), and on a Redis Cluster
//! each master's address as CLUSTER SLOTS announces it.

use fred::types::config::{TlsConfig, TlsConnector, TlsHostMapping};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The files that make the TLS client configuration (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Whether `url` asks for TLS.
pub fn url_uses_tls(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("rediss-cluster://")
}

/// `url` with its TLS scheme made plain, for fred's URL parser: the engine
/// sets the TLS configuration itself (fred's default for `rediss` fails when
/// any system certificate does not parse, and knows no CA file).
pub fn without_tls_scheme(url: &str) -> String {
    match url.strip_prefix("rediss") {
        Some(rest) => format!("redis{rest}"),
        None => url.to_owned(),
    }
}

/// The TLS configuration for fred, or why it cannot be made (a file that
/// cannot be read, holds no certificate or key, or a certificate without its key).
pub fn config(files: &TlsFiles) -> Result<TlsConfig, String> {
    if files.cert.is_some() != files.key.is_some() {
        return Err(
            "redis-tls-cert-file and redis-tls-key-file go together (a client certificate and its key)"
                .into(),
        );
    }
    let roots = match &files.ca {
        Some(path) => roots_from(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates_in("redis-tls-cert-file", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|error| format!("redis-tls-key-file {}: {error}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("redis-tls-cert-file/redis-tls-key-file: {error}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConfig {
        connector: TlsConnector::from(config),
        hostnames: TlsHostMapping::None,
    })
}

/// A configuration that trusts no server: every handshake fails. For when
/// the configured one cannot be made, so that nothing goes out in the clear.
pub fn trusting_nothing() -> TlsConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    TlsConfig {
        connector: TlsConnector::from(config),
        hostnames: TlsHostMapping::None,
    }
}

fn certificates_in(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let named = |error: &dyn std::fmt::Display| format!("{setting} {}: {error}", path.display());
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| named(&error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| named(&error))?;
    if certificates.is_empty() {
        return Err(named(&"no PEM certificate in it"));
    }
    Ok(certificates)
}

fn roots_from(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates_in("redis-tls-ca-file", path)? {
        roots
            .add(certificate)
            .map_err(|error| format!("redis-tls-ca-file {}: {error}", path.display()))?;
    }
    Ok(roots)
}

/// The system's trusted roots; certificates that do not parse are skipped
/// (as browsers do), but none at all is an error.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no trusted root certificates found on this system ({:?}); give redis-tls-ca-file",
            found.errors
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_scheme_is_recognised_and_made_plain_for_fred() {
        assert!(url_uses_tls("rediss://h:1"));
        assert!(url_uses_tls("rediss-cluster://h:1?node=h:2"));
        assert!(!url_uses_tls("redis://h:1"));
        assert_eq!(
            without_tls_scheme("rediss://u:p@h:1/2"),
            "redis://u:p@h:1/2"
        );
        assert_eq!(
            without_tls_scheme("rediss-cluster://h:1?node=h:2"),
            "redis-cluster://h:1?node=h:2"
        );
        assert_eq!(without_tls_scheme("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn bad_files_are_refused_with_their_name() {
        let missing = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        assert!(config(&missing)
            .unwrap_err()
            .contains("/nonexistent/ca.pem"));
        let empty = std::env::temp_dir().join(format!("stompede-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let no_pem = TlsFiles {
            ca: Some(empty.clone()),
            ..TlsFiles::default()
        };
        assert!(config(&no_pem).unwrap_err().contains("no PEM certificate"));
        let half = TlsFiles {
            ca: None,
            cert: Some(empty.clone()),
            key: None,
        };
        assert!(config(&half).unwrap_err().contains("go together"));
        let _ = std::fs::remove_file(empty);
    }
}

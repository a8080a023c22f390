//! Where the traffic goes. Every target must resolve to loopback only
//! (127.0.0.0/8 or ::1): the tool refuses anything else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// A parsed `ws://` or `http://` URL that resolved to a loopback address.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as written, for the `Host` header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
    pub url: String,
}

impl Target {
    /// Parses every one of `urls` with [`Target::parse`].
    pub fn parse_all(urls: &[String], scheme: &str) -> Result<Vec<Target>, String> {
        urls.iter().map(|url| Target::parse(url, scheme)).collect()
    }

    /// Parses `url` with the given scheme (`ws` or `http`) and refuses
    /// non-loopback hosts.
    pub fn parse(url: &str, scheme: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(|| format!("{url}: expected a {scheme}:// URL (TLS is not supported)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let with_port = if authority.starts_with('[') {
            if authority.contains("]:") {
                authority.to_string()
            } else {
                format!("{authority}:80")
            }
        } else if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{url}: {authority} resolves to nothing"));
        }
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(format!(
                "{url}: {authority} resolves to {}, which is not loopback; this tool only sends traffic to 127.0.0.0/8 or ::1",
                bad.ip()
            ));
        }
        // Prefer IPv4 so that source addresses can be spread over 127.0.0.0/8.
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .copied()
            .unwrap_or(addrs[0]);
        Ok(Target {
            addr,
            authority: authority.to_string(),
            path: path.to_string(),
            url: url.to_string(),
        })
    }
}

/// How many loopback source addresses connections are spread over. With
/// ~28k ephemeral ports per source address, 250 addresses allow ~7M sockets.
pub const SOURCE_ADDRESSES: u64 = 250;

/// The source address for the `i`-th connection of a run: 127.0.0.1 ..
/// 127.0.0.250 in turn. Any 127.x.y.z reaches the loopback interface.
pub fn source_ip(i: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCE_ADDRESSES) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_accepted() {
        let t = Target::parse("ws://127.0.0.1:15674/ws", "ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:15674".parse().unwrap());
        assert_eq!(t.path, "/ws");
        let t = Target::parse("http://localhost:8080", "http").unwrap();
        assert!(t.addr.ip().is_loopback());
        assert_eq!(t.path, "/");
        assert!(Target::parse("ws://[::1]:9/ws", "ws").is_ok());
    }

    #[test]
    fn other_addresses_are_refused() {
        for url in [
            "ws://10.0.0.1:80/ws",
            "ws://192.168.1.1/ws",
            "ws://8.8.8.8:1/",
        ] {
            let err = Target::parse(url, "ws").unwrap_err();
            assert!(err.contains("not loopback"), "{err}");
        }
        assert!(Target::parse("wss://127.0.0.1/ws", "ws").is_err());
    }

    #[test]
    fn sources_stay_in_loopback() {
        for i in [0, 1, 249, 250, 1_000_000] {
            assert!(source_ip(i).is_loopback());
        }
        assert_ne!(source_ip(0), source_ip(1));
    }
}

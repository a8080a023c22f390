//! Who the client is behind a reverse proxy: a connection from a
//! `trusted-proxy` address is believed about the client's address
//! (`X-Forwarded-For`, else `X-Real-IP`); anyone else's headers are ignored.
//! Every per-IP rule (session limits, the API's loopback rule) then applies
//! to the client, not to the proxy.

use hyper::header::HeaderMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address or a network (`10.0.0.0/8`, `2001:db8::/32`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = mask(self.prefix, 32) as u32;
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = mask(self.prefix, 128);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-bit address set.
fn mask(prefix: u8, bits: u32) -> u128 {
    match u32::from(prefix) {
        0 => 0,
        prefix => (u128::MAX << (128 - prefix)) >> (128 - bits),
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not an IP address or a CIDR network (10.0.0.0/8)");
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network = IpAddr::from_str(address).map_err(|_| bad())?.to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(bad)?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The client's address: `peer` itself unless `peer` is a trusted proxy;
/// then the right-most `X-Forwarded-For` entry that is not itself a trusted
/// proxy (entries to its left are what the client claimed, and anyone may
/// claim anything), else `X-Real-IP`, else `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|proxy| proxy.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    for entry in forwarded.iter().rev() {
        match parse_forwarded(entry) {
            Some(ip) if is_trusted(ip) => continue,
            Some(ip) => return ip,
            // Garbage where an address should be: believe nothing further left.
            None => break,
        }
    }
    headers
        .get("x-real-ip")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_forwarded(value.trim()))
        .filter(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1`, and with a
/// port, `192.0.2.1:4711` or `[2001:db8::1]:4711`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(entry) {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (address, _) = rest.split_once(']')?;
        return Ipv6Addr::from_str(address).ok().map(IpAddr::V6);
    }
    let (address, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    Ipv4Addr::from_str(address).ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("192.0.2.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("proxy.local".parse::<Cidr>().is_err());
    }

    #[test]
    fn only_trusted_proxies_are_believed() {
        let trusted: Vec<Cidr> = vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.9".parse().unwrap();
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.1, 198.51.100.7, 10.0.0.2")]);
        // The right-most entry that is not a proxy; the client's own claim (left) is not believed.
        assert_eq!(
            client_ip(proxy, &forwarded, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(stranger, &forwarded, &trusted), stranger);
        let real = headers(&[("x-real-ip", "198.51.100.8")]);
        assert_eq!(
            client_ip(proxy, &real, &trusted),
            "198.51.100.8".parse::<IpAddr>().unwrap()
        );
        let with_port = headers(&[("x-forwarded-for", "[2001:db8::7]:4711")]);
        assert_eq!(
            client_ip(proxy, &with_port, &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &headers(&[]), &trusted), proxy);
        assert_eq!(
            client_ip(proxy, &headers(&[("x-forwarded-for", "junk")]), &trusted),
            proxy
        );
    }
}

//! `max-connections-per-ip`: open WebSocket sessions counted per client
//! address, so one host cannot take every `max-connections` slot. IPv4
//! addresses count one by one; IPv6 clients by their network prefix
//! (`ipv6-prefix-length`, a /64 by default), since one host is commonly
//! given a whole /64 and can use any address in it.

use dashmap::DashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// The default `ipv6-prefix-length`.
pub const DEFAULT_IPV6_PREFIX_LENGTH: u8 = 64;

/// Whether `ip` is a loopback address, IPv4-mapped IPv6 ones included. The
/// one loopback rule, for the API without a token and the per-IP exemption.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// What one client is counted as: an IPv4 address, or an IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientNet {
    /// The address with the bits past the prefix cleared.
    network: IpAddr,
    /// 32 for IPv4; `ipv6-prefix-length` for IPv6.
    prefix: u8,
}

impl ClientNet {
    /// The group `ip` is counted in (IPv4-mapped IPv6 addresses are IPv4).
    pub fn of(ip: IpAddr, ipv6_prefix: u8) -> ClientNet {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientNet {
                network: IpAddr::V4(v4),
                prefix: 32,
            },
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.clamp(1, 128);
                let mask = u128::MAX << (128 - u32::from(prefix));
                ClientNet {
                    network: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                    prefix,
                }
            }
        }
    }
}

impl std::fmt::Display for ClientNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.network {
            IpAddr::V6(_) if self.prefix < 128 => write!(f, "{}/{}", self.network, self.prefix),
            network => write!(f, "{network}"),
        }
    }
}

/// Sessions per client (address or IPv6 network). A client is in the map
/// only while it has at least one session, so the map is bounded by
/// `max-connections`.
#[derive(Debug)]
pub struct IpLimiter {
    open: DashMap<ClientNet, usize>,
    ipv6_prefix: u8,
}

impl Default for IpLimiter {
    fn default() -> IpLimiter {
        IpLimiter::new(DEFAULT_IPV6_PREFIX_LENGTH)
    }
}

impl IpLimiter {
    /// Counts IPv6 clients by their first `ipv6_prefix` bits.
    pub fn new(ipv6_prefix: u8) -> IpLimiter {
        IpLimiter {
            open: DashMap::new(),
            ipv6_prefix,
        }
    }

    /// The group `ip` is counted in.
    pub fn client(&self, ip: IpAddr) -> ClientNet {
        ClientNet::of(ip, self.ipv6_prefix)
    }

    /// Takes one of `ip`'s `limit` slots, or `None` if it has none left.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let client = self.client(ip);
        let mut open = self.open.entry(client).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(IpSlot {
            limiter: self.clone(),
            client,
        })
    }

    /// Sessions open from `ip`'s group.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.get(&self.client(ip)).map_or(0, |open| *open)
    }

    /// Clients with at least one session.
    pub fn addresses(&self) -> usize {
        self.open.len()
    }
}

/// One session's slot for its IP; given back when dropped.
#[derive(Debug)]
pub struct IpSlot {
    limiter: Arc<IpLimiter>,
    client: ClientNet,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        // `remove_if` takes the shard lock once: decrement, and remove at zero.
        if let Some(mut open) = self.limiter.open.get_mut(&self.client) {
            *open -= 1;
        }
        self.limiter
            .open
            .remove_if(&self.client, |_, open| *open == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_given_back() {
        let limiter = Arc::new(IpLimiter::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limiter.try_acquire(a, 2).unwrap();
        let _second = limiter.try_acquire(a, 2).unwrap();
        assert!(limiter.try_acquire(a, 2).is_none());
        let _other = limiter.try_acquire(b, 2).unwrap();
        // An IPv4-mapped IPv6 address is the same client.
        assert!(limiter
            .try_acquire("::ffff:192.0.2.1".parse().unwrap(), 2)
            .is_none());
        drop(first);
        assert_eq!(limiter.open(a), 1);
        assert!(limiter.try_acquire(a, 2).is_some());
        assert_eq!(limiter.addresses(), 2);
    }

    #[test]
    fn an_address_leaves_the_map_with_its_last_session() {
        let limiter = Arc::new(IpLimiter::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        drop(limiter.try_acquire(a, 1).unwrap());
        assert_eq!(limiter.addresses(), 0);
    }
}

//! `max-connections-per-ip`: open WebSocket sessions counted per client IP
//! address, so one host cannot take every `max-connections` slot.

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Whether `ip` is a loopback address, IPv4-mapped IPv6 ones included. The
/// one loopback rule, for the API without a token and the per-IP exemption.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Sessions per client IP. An address is in the map only while it has at
/// least one session, so the map is bounded by `max-connections`.
#[derive(Debug, Default)]
pub struct IpLimiter {
    open: DashMap<IpAddr, usize>,
}

impl IpLimiter {
    /// Takes one of `ip`'s `limit` slots, or `None` if it has none left.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.entry(ip).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(IpSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Sessions open from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.get(&ip.to_canonical()).map_or(0, |open| *open)
    }

    /// Addresses with at least one session.
    pub fn addresses(&self) -> usize {
        self.open.len()
    }
}

/// One session's slot for its IP; given back when dropped.
#[derive(Debug)]
pub struct IpSlot {
    limiter: Arc<IpLimiter>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        // `remove_if` takes the shard lock once: decrement, and remove at zero.
        if let Some(mut open) = self.limiter.open.get_mut(&self.ip) {
            *open -= 1;
        }
        self.limiter.open.remove_if(&self.ip, |_, open| *open == 0);
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

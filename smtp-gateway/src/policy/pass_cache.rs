//! Clients that passed, remembered for a while (postscreen's cache): a client that recently
//! delivered mail without any check firing skips the slow checks (greet pause, DNSBL) next time.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The cache: client address -> when it passed.
pub struct PassCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<IpAddr, Instant>>,
}

impl PassCache {
    /// A cache keeping up to `capacity` clients for `ttl`. A zero TTL or capacity disables it.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` passed within the TTL.
    pub fn contains(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(entries) = self.entries.lock() else {
            return false;
        };
        entries
            .get(&ip)
            .is_some_and(|at| now.duration_since(*at) < self.ttl)
    }

    /// Remembers that `ip` passed at `now`. When full, expired entries go first; if none expired,
    /// the oldest is evicted.
    pub fn insert(&self, ip: IpAddr, now: Instant) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity && !entries.contains_key(&ip) {
            let ttl = self.ttl;
            entries.retain(|_, at| now.duration_since(*at) < ttl);
            if entries.len() >= self.capacity
                && let Some(oldest) = entries.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(ip, now);
    }

    /// Clients remembered (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, last])
    }

    #[test]
    fn remembers_for_the_ttl_only() {
        let cache = PassCache::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        cache.insert(ip(1), t0);
        assert!(cache.contains(ip(1), t0 + Duration::from_secs(59)));
        assert!(!cache.contains(ip(1), t0 + Duration::from_secs(60)));
        assert!(!cache.contains(ip(2), t0));
    }

    #[test]
    fn bounded_evicting_expired_then_oldest() {
        let cache = PassCache::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        cache.insert(ip(1), t0);
        cache.insert(ip(2), t0 + Duration::from_secs(1));
        cache.insert(ip(3), t0 + Duration::from_secs(2));
        assert_eq!(cache.len(), 2);
        assert!(
            !cache.contains(ip(1), t0 + Duration::from_secs(2)),
            "oldest evicted"
        );
        assert!(cache.contains(ip(3), t0 + Duration::from_secs(2)));
        // At t0+62 both remaining entries are expired: they go before anything live would.
        cache.insert(ip(4), t0 + Duration::from_secs(62));
        assert!(cache.contains(ip(4), t0 + Duration::from_secs(62)));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn zero_ttl_disables() {
        let cache = PassCache::new(Duration::ZERO, 10);
        cache.insert(ip(1), Instant::now());
        assert!(cache.is_empty());
    }
}

//! Clients that passed, remembered for a while (postscreen's cache): a client that recently
//! delivered mail without any check firing skips the slow checks (greet pause, DNSBL) next time.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The cache: client address -> when it passed. TTL and capacity change on reload
/// ([`configure`](PassCache::configure)); the clients remembered are kept.
pub struct PassCache {
    /// Settings and entries, under one lock (a reload and an insert never interleave).
    inner: Mutex<Inner>,
}

/// What the lock of a [`PassCache`] guards.
struct Inner {
    /// How long a pass counts (`smtp.pass_cache_ttl`; zero disables the cache).
    ttl: Duration,
    /// Clients remembered at most (`smtp.pass_cache_size`; zero disables the cache).
    capacity: usize,
    /// Client address -> when it last passed.
    entries: HashMap<IpAddr, Instant>,
}

impl Inner {
    /// Frees room for one more entry at `now`: expired entries first, then the oldest.
    fn evict_to(&mut self, room_for: usize, now: Instant) {
        if self.entries.len() <= room_for {
            return;
        }
        let ttl = self.ttl;
        self.entries
            .retain(|_, at| now.saturating_duration_since(*at) < ttl);
        if self.entries.len() <= room_for {
            return;
        }
        let mut by_age: Vec<(IpAddr, Instant)> =
            self.entries.iter().map(|(ip, at)| (*ip, *at)).collect();
        let excess = self.entries.len() - room_for;
        // The `excess` oldest first, in linear time (an insert into a full cache pays this).
        by_age.select_nth_unstable_by_key(excess - 1, |(_, at)| *at);
        for (ip, _) in by_age.into_iter().take(excess) {
            self.entries.remove(&ip);
        }
    }
}

impl PassCache {
    /// A cache keeping up to `capacity` clients for `ttl`. A zero TTL or capacity disables it.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                ttl,
                capacity,
                entries: HashMap::new(),
            }),
        }
    }

    /// Applies reloaded settings: the remembered clients are judged by the new TTL from now on,
    /// and a smaller capacity forgets the expired, then the oldest ones at once. A zero TTL or
    /// capacity empties and disables the cache.
    pub fn configure(&self, ttl: Duration, capacity: usize) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.ttl = ttl;
        inner.capacity = capacity;
        if ttl.is_zero() || capacity == 0 {
            inner.entries = HashMap::new();
            return;
        }
        inner.evict_to(capacity, Instant::now());
    }

    /// Whether `ip` passed within the TTL.
    pub fn contains(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        inner
            .entries
            .get(&ip)
            .is_some_and(|at| now.saturating_duration_since(*at) < inner.ttl)
    }

    /// Remembers that `ip` passed at `now`. When full, expired entries go first; if none expired,
    /// the oldest is evicted.
    pub fn insert(&self, ip: IpAddr, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.ttl.is_zero() || inner.capacity == 0 {
            return;
        }
        if inner.entries.len() >= inner.capacity && !inner.entries.contains_key(&ip) {
            let room_for = inner.capacity - 1;
            inner.evict_to(room_for, now);
        }
        inner.entries.insert(ip, now);
    }

    /// Clients remembered (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
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
    fn a_reload_re_ttls_and_resizes_the_cache() {
        let cache = PassCache::new(Duration::from_secs(3600), 10);
        let t0 = Instant::now();
        for last in 1..=4 {
            cache.insert(ip(last), t0 + Duration::from_secs(u64::from(last)));
        }
        // A shorter TTL judges the remembered clients from now on.
        cache.configure(Duration::from_secs(2), 10);
        assert!(!cache.contains(ip(1), t0 + Duration::from_secs(4)));
        assert!(cache.contains(ip(4), t0 + Duration::from_secs(5)));
        // A smaller size forgets the oldest at once, and stays the bound.
        cache.configure(Duration::from_secs(3600), 2);
        assert_eq!(cache.len(), 2);
        assert!(cache.contains(ip(4), t0 + Duration::from_secs(5)));
        assert!(
            !cache.contains(ip(2), t0 + Duration::from_secs(5)),
            "oldest gone"
        );
        cache.insert(ip(5), t0 + Duration::from_secs(6));
        assert_eq!(cache.len(), 2);
        // Zero disables and empties it.
        cache.configure(Duration::ZERO, 2);
        assert!(cache.is_empty());
        cache.insert(ip(6), t0 + Duration::from_secs(7));
        assert!(cache.is_empty());
    }

    #[test]
    fn zero_ttl_disables() {
        let cache = PassCache::new(Duration::ZERO, 10);
        cache.insert(ip(1), Instant::now());
        assert!(cache.is_empty());
    }
}

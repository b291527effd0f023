//! Clients that passed, remembered for a while (postscreen's cache): a client that recently
//! delivered mail without any check firing skips the slow checks (greet pause, DNSBL) next time.
//!
//! With a state store attached ([`PassCache::attach`]) a pass is written through, and a client
//! this node does not know is asked of the store within `store.budget` ([`PassCache::lookup`]):
//! passes survive a restart, and with Redis a client that passed on one node skips the slow
//! checks on every node.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::store::{OnTimeout, Space, Store, records::unix_now_ms};

/// What a session learns about its client before the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassLookup {
    /// It passed within the TTL (here, or on a node sharing the store).
    Passed,
    /// Nothing known: the client goes through every check.
    Unknown,
    /// The store did not answer in time and `store.on_timeout = "closed"`: answer 421.
    Refuse,
}

/// A pass as stored (`pass/<address>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassRecord {
    /// When the client passed, Unix milliseconds.
    pub at_unix_ms: u64,
    /// The node it passed on.
    pub node: String,
}

/// The cache: client address -> when it passed. TTL and capacity change on reload
/// ([`configure`](PassCache::configure)); the clients remembered are kept.
pub struct PassCache {
    /// Settings and entries, under one lock (a reload and an insert never interleave).
    inner: Mutex<Inner>,
    /// The state store passes are written through and local misses asked of, once attached.
    store: OnceLock<Store>,
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
            store: OnceLock::new(),
        }
    }

    /// Writes passes through `store` from now on, and asks it about clients not known here.
    pub fn attach(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Whether `ip` passed: here, else (with a store) in the store, waiting at most
    /// `store.budget`. A pass found in the store is remembered here for the rest of its TTL.
    pub async fn lookup(&self, ip: IpAddr) -> PassLookup {
        let now = Instant::now();
        if self.contains(ip, now) {
            return PassLookup::Passed;
        }
        let ttl = match self.inner.lock() {
            Ok(inner) if !inner.ttl.is_zero() && inner.capacity > 0 => inner.ttl,
            _ => return PassLookup::Unknown,
        };
        let Some(store) = self.store.get() else {
            return PassLookup::Unknown;
        };
        match store.get::<PassRecord>(Space::Pass, &ip.to_string()).await {
            Ok(Some(record)) => {
                let age = Duration::from_millis(unix_now_ms().saturating_sub(record.at_unix_ms));
                match now.checked_sub(age) {
                    Some(at) if age < ttl => {
                        self.remember(ip, at, now);
                        PassLookup::Passed
                    }
                    _ => PassLookup::Unknown,
                }
            }
            Ok(None) => PassLookup::Unknown,
            // Garbage, too large, another type: unknown (a pass rewrites it), not a store down.
            Err(e) if e.is_bad_value() => {
                tracing::debug!(%ip, error = %e, "pass cache: stored pass unusable, taken as unknown");
                PassLookup::Unknown
            }
            Err(e) => {
                tracing::debug!(%ip, error = %e, "pass cache: the store did not answer");
                match store.on_timeout() {
                    OnTimeout::Open => PassLookup::Unknown,
                    OnTimeout::Closed => PassLookup::Refuse,
                }
            }
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

    /// Remembers that `ip` passed at `now`, and writes it through to the store. When full,
    /// expired entries go first; if none expired, the oldest is evicted.
    pub fn insert(&self, ip: IpAddr, now: Instant) {
        let ttl = self.remember(ip, now, now);
        if let (Some(store), Some(ttl)) = (self.store.get(), ttl) {
            let record = PassRecord {
                at_unix_ms: unix_now_ms(),
                node: store.node().to_string(),
            };
            store.put(Space::Pass, &ip.to_string(), &record, ttl);
        }
    }

    /// Remembers locally that `ip` passed at `at` (evicting as of `now`); the TTL, when the
    /// cache is on.
    fn remember(&self, ip: IpAddr, at: Instant, now: Instant) -> Option<Duration> {
        let Ok(mut inner) = self.inner.lock() else {
            return None;
        };
        if inner.ttl.is_zero() || inner.capacity == 0 {
            return None;
        }
        if inner.entries.len() >= inner.capacity && !inner.entries.contains_key(&ip) {
            let room_for = inner.capacity - 1;
            inner.evict_to(room_for, now);
        }
        inner.entries.insert(ip, at);
        Some(inner.ttl)
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

    fn started(cfg: &crate::store::StoreConfig) -> (Store, tokio::sync::watch::Sender<bool>) {
        let (store, writer) = crate::store::Opened::open(cfg)
            .expect("open")
            .expect("an engine")
            .start(std::sync::Arc::new(crate::metrics::Metrics::new()))
            .expect("start");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(writer.run(stop_rx));
        (store, stop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_written_through_is_found_by_another_cache() {
        let dir = std::env::temp_dir().join(format!("sgw-pass-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = crate::store::StoreConfig {
            path: dir.join("state.redb"),
            ..crate::store::StoreConfig::default()
        };
        let (store, _stop) = started(&cfg);
        let here = PassCache::new(Duration::from_secs(60), 10);
        here.attach(store.clone());
        here.insert(ip(1), Instant::now());
        // Another node (or this one after a restart) sharing the store.
        let there = PassCache::new(Duration::from_secs(60), 10);
        there.attach(store);
        let deadline = Instant::now() + Duration::from_secs(10);
        while there.lookup(ip(1)).await != PassLookup::Passed {
            assert!(
                Instant::now() < deadline,
                "the pass never reached the store"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            there.contains(ip(1), Instant::now()),
            "remembered locally once found"
        );
        assert_eq!(there.lookup(ip(2)).await, PassLookup::Unknown);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_does_not_answer_fails_open_or_closed_as_configured() {
        let dir = std::env::temp_dir().join(format!("sgw-pass-down-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        for (on_timeout, want) in [
            (OnTimeout::Open, PassLookup::Unknown),
            (OnTimeout::Closed, PassLookup::Refuse),
        ] {
            // Nobody listens on this socket: every read fails.
            let cfg = crate::store::StoreConfig {
                engine: crate::store::EngineKind::Redis,
                redis_url: format!("unix://{}", dir.join("nobody.sock").display()),
                on_timeout,
                budget: Duration::from_millis(50),
                ..crate::store::StoreConfig::default()
            };
            let (store, _stop) = started(&cfg);
            let cache = PassCache::new(Duration::from_secs(60), 10);
            cache.attach(store);
            let started = Instant::now();
            assert_eq!(cache.lookup(ip(1)).await, want, "{on_timeout:?}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
            // A client known here never asks the store.
            cache.insert(ip(2), Instant::now());
            assert_eq!(cache.lookup(ip(2)).await, PassLookup::Passed);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Waits until the writer has written `id` of `space` (whatever it holds).
    async fn written(store: &Store, space: Space, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(None) = store.get::<serde_json::Value>(space, id).await {
            assert!(Instant::now() < deadline, "{id} never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A stored pass that does not decode (garbage, too large, a Redis key of another type)
    /// counts as unknown: the client goes through the checks, even with `on_timeout = "closed"`
    /// (it was refused with 421 on every connection, for as long as the garbage lived).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_that_does_not_decode_is_a_miss_not_a_store_down() {
        let dir = std::env::temp_dir().join(format!("sgw-pass-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let base = crate::store::StoreConfig {
            on_timeout: OnTimeout::Closed,
            budget: Duration::from_secs(2),
            max_value_bytes: 1024,
            ..crate::store::StoreConfig::default()
        };
        // Embedded: values of another shape, written through the store.
        let cfg = crate::store::StoreConfig {
            path: dir.join("state.redb"),
            ..base.clone()
        };
        let (store, _stop) = started(&cfg);
        let ttl = Duration::from_secs(60);
        store.put(Space::Pass, &ip(1).to_string(), &"garbage", ttl);
        store.put(Space::Pass, &ip(2).to_string(), &"x".repeat(4096), ttl);
        written(&store, Space::Pass, &ip(1).to_string()).await;
        written(&store, Space::Pass, &ip(2).to_string()).await;
        let cache = PassCache::new(Duration::from_secs(60), 10);
        cache.attach(store);
        assert_eq!(cache.lookup(ip(1)).await, PassLookup::Unknown, "garbage");
        assert_eq!(cache.lookup(ip(2)).await, PassLookup::Unknown, "too large");
        // Redis: garbage, too large, a list.
        let redis = crate::store::test_redis::RedisServer::start(&dir);
        let cfg = crate::store::StoreConfig {
            engine: crate::store::EngineKind::Redis,
            redis_url: redis.url(),
            ..base
        };
        let key = |n: u8| format!("{}pass/{}", cfg.key_prefix, ip(n));
        redis.cli(&["SET", &key(1), "garbage"]);
        redis.cli(&["SET", &key(2), &"x".repeat(4096)]);
        redis.cli(&["RPUSH", &key(3), "a", "b"]);
        let (store, _stop) = started(&cfg);
        let cache = PassCache::new(Duration::from_secs(60), 10);
        cache.attach(store);
        assert_eq!(cache.lookup(ip(1)).await, PassLookup::Unknown, "garbage");
        assert_eq!(cache.lookup(ip(2)).await, PassLookup::Unknown, "too large");
        assert_eq!(cache.lookup(ip(3)).await, PassLookup::Unknown, "a list");
        drop(redis);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn zero_ttl_disables() {
        let cache = PassCache::new(Duration::ZERO, 10);
        cache.insert(ip(1), Instant::now());
        assert!(cache.is_empty());
    }
}

//! Connection slots per source, and who makes room at capacity.
//!
//! Every session holds one slot of its source (IPv4 address or IPv6 /64; at most
//! `smtp.max_connections_per_source`) and carries an [`Idle`] mark that its connection sets
//! while it waits for the client ([`Idle::wait`]): for a command, for message text, for the
//! client to read its replies or to go on with its TLS handshake, or in the tarpit. When
//! `smtp.max_connections` are taken, a new client does not simply get `421`:
//! the session that has waited longest for its client, among the sources holding the most slots
//! (never one holding fewer than the newcomer would), is told to make room if it has waited at
//! least `smtp.evict_idle_after`. It answers `421 4.7.0` without waiting and ends; the newcomer
//! gets its slot. So an attacker holding connections open (trickling, parking in DATA, never
//! reading) cannot lock clients of other sources out, while a session doing work (talking to
//! the backend, receiving text) is never interrupted.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// The per-source key: IPv4 address or IPv6 /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
    }
}

/// Milliseconds on a monotonic clock private to this process (never 0).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Whether a session is waiting for its client, since when, and whether it was told to make
/// room. Shared by the session's connection (which sets it) and the slot table (which reads it).
#[derive(Default, Debug)]
pub struct Idle {
    /// `now_ms()` when the current wait for the client began; 0 while the session works.
    since_ms: AtomicU64,
    /// Told to make room (once).
    evicted: AtomicBool,
    /// Wakes the wait that must end.
    wake: Notify,
}

impl Idle {
    /// The session starts waiting for its client.
    fn begin(&self) {
        self.since_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The session has something to do again.
    fn end(&self) {
        self.since_ms.store(0, Ordering::Relaxed);
    }

    /// How long the session has been waiting for its client (`None`: it is working).
    fn waited(&self, now: u64) -> Option<Duration> {
        match self.since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now.saturating_sub(since))),
        }
    }

    /// Whether the session was told to make room.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Tells the session to make room; `false` when it already was.
    fn evict(&self) -> bool {
        if self.evicted.swap(true, Ordering::Relaxed) {
            return false;
        }
        // A stored permit: a session that is between two waits ends at its next one.
        self.wake.notify_one();
        true
    }

    /// Resolves once the session was told to make room.
    pub async fn evicted(&self) {
        while !self.is_evicted() {
            self.wake.notified().await;
        }
    }

    /// Runs `wait` (for the client) as an idle session: `None` once the session was told to
    /// make room first. `wait` is polled first, so a wait that is over at once (input already
    /// there, a reply the socket takes) never registers for the eviction.
    pub async fn wait<F: Future>(&self, wait: F) -> Option<F::Output> {
        self.begin();
        let outcome = tokio::select! {
            biased;
            outcome = wait => Some(outcome),
            () = self.evicted() => None,
        };
        self.end();
        outcome
    }
}

/// The sessions of every source, each with its [`Idle`] mark.
#[derive(Default)]
pub struct Slots(Mutex<HashMap<IpAddr, Vec<Arc<Idle>>>>);

/// A slot of the per-source cap, released on drop.
pub struct SourceSlot {
    slots: Arc<Slots>,
    key: IpAddr,
    idle: Arc<Idle>,
}

impl SourceSlot {
    /// The session's idle mark, for its connection to set.
    pub fn idle(&self) -> Arc<Idle> {
        self.idle.clone()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.slots.0.lock()
            && let Some(sessions) = map.get_mut(&self.key)
        {
            sessions.retain(|s| !Arc::ptr_eq(s, &self.idle));
            if sessions.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

impl Slots {
    /// A slot for a session from `ip`, unless its source already holds `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut map = self.0.lock().ok()?;
        let sessions = map.entry(key).or_default();
        if sessions.len() >= max {
            return None;
        }
        let idle = Arc::new(Idle::default());
        sessions.push(idle.clone());
        Some(SourceSlot {
            slots: self.clone(),
            key,
            idle,
        })
    }

    /// At capacity, for a newcomer holding `newcomer`: tells the session to make room that has
    /// waited longest for its client (at least `min_idle`) among the sources holding the most
    /// slots, none holding fewer than the newcomer's source (its new slot included). Returns
    /// whether one was told. One pass over the sessions, only when every slot is taken.
    pub fn evict_for(&self, newcomer: &SourceSlot, min_idle: Duration) -> bool {
        self.evict_at(newcomer, min_idle, now_ms())
    }

    /// [`Slots::evict_for`] at `now` (milliseconds of [`now_ms`]'s clock).
    fn evict_at(&self, newcomer: &SourceSlot, min_idle: Duration, now: u64) -> bool {
        let Ok(map) = self.0.lock() else {
            return false;
        };
        let floor = map.get(&newcomer.key).map_or(1, Vec::len);
        let victim = map
            .values()
            .filter(|sessions| sessions.len() >= floor)
            .flat_map(|sessions| {
                sessions.iter().filter_map(move |s| {
                    let waited = s.waited(now)?;
                    (waited >= min_idle && !s.is_evicted()).then_some(((sessions.len(), waited), s))
                })
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, s)| s.clone());
        drop(map);
        victim.is_some_and(|s| s.evict())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let a = ip("2001:db8:1:2:3::1");
        let b = ip("2001:db8:1:2:ffff::9");
        assert_eq!(source_key(a), source_key(b));
        let v4 = ip("198.51.100.7");
        assert_eq!(source_key(v4), v4);
        assert_eq!(source_key(ip("::ffff:198.51.100.7")), v4);
    }

    #[test]
    fn per_source_cap_counts_and_releases() {
        let slots = Arc::new(Slots::default());
        let a = slots.acquire(ip("198.51.100.7"), 2).expect("first");
        let _b = slots.acquire(ip("198.51.100.7"), 2).expect("second");
        assert!(slots.acquire(ip("198.51.100.7"), 2).is_none());
        drop(a);
        assert!(slots.acquire(ip("198.51.100.7"), 2).is_some());
    }

    /// The test clock's "now" (ms), far enough from 0 for every wait below.
    const NOW: u64 = 1_000_000;

    /// Marks `slot` as waiting for its client since `ago` before [`NOW`].
    fn waiting(slot: &SourceSlot, ago: Duration) {
        let ago = u64::try_from(ago.as_millis()).expect("ms");
        slot.idle.since_ms.store(NOW - ago, Ordering::Relaxed);
    }

    fn evict(slots: &Slots, newcomer: &SourceSlot) -> bool {
        slots.evict_at(newcomer, Duration::from_secs(2), NOW)
    }

    #[test]
    fn the_longest_idle_session_of_the_largest_source_makes_room() {
        let slots = Arc::new(Slots::default());
        let big: Vec<SourceSlot> = (0..3)
            .map(|_| slots.acquire(ip("198.18.2.10"), 20).expect("slot"))
            .collect();
        let small = slots.acquire(ip("198.18.2.11"), 20).expect("slot");
        waiting(&big[0], Duration::from_secs(5));
        waiting(&big[1], Duration::from_secs(9));
        // Working: never chosen, however long the session has been open.
        big[2].idle.end();
        // Idle longer, but its source holds fewer slots.
        waiting(&small, Duration::from_secs(60));
        let newcomer = slots.acquire(ip("198.18.4.1"), 20).expect("slot");
        assert!(evict(&slots, &newcomer));
        assert!(
            big[1].idle.is_evicted(),
            "the longest idle of the largest source"
        );
        assert!(!big[0].idle.is_evicted() && !small.idle.is_evicted());
        // Told once: the next newcomer takes the next one.
        let second = slots.acquire(ip("198.18.4.2"), 20).expect("slot");
        assert!(evict(&slots, &second));
        assert!(big[0].idle.is_evicted());
    }

    #[test]
    fn no_session_makes_room_for_a_source_holding_as_many_or_when_all_work() {
        let slots = Arc::new(Slots::default());
        let a = slots.acquire(ip("198.18.2.10"), 20).expect("slot");
        waiting(&a, Duration::from_secs(30));
        let b1 = slots.acquire(ip("198.18.2.11"), 20).expect("slot");
        let b2 = slots.acquire(ip("198.18.2.11"), 20).expect("slot");
        waiting(&b1, Duration::from_millis(500));
        // The newcomer's source would hold 3, more than any other: only its own sessions may
        // lose one, and b1 has not waited the minimum while b2 works.
        let newcomer = slots.acquire(ip("198.18.2.11"), 20).expect("slot");
        assert!(!evict(&slots, &newcomer));
        assert!(!a.idle.is_evicted() && !b1.idle.is_evicted() && !b2.idle.is_evicted());
        // A newcomer from a fresh source may take a lone session's slot.
        drop(newcomer);
        let fresh = slots.acquire(ip("198.18.4.1"), 20).expect("slot");
        assert!(evict(&slots, &fresh));
        assert!(a.idle.is_evicted());
    }

    #[tokio::test]
    async fn an_eviction_wakes_the_wait_even_when_told_between_two_waits() {
        let idle = Arc::new(Idle::default());
        assert!(idle.evict());
        // Told before anybody waited: the next wait ends at once.
        tokio::time::timeout(Duration::from_secs(5), idle.evicted())
            .await
            .expect("woken");
        assert!(!idle.evict(), "told once");
    }
}

//! Greylisting (issue 12 §3): the first RCPT of a triplet (client network, normalised sender,
//! recipient) is answered `451 4.7.1`; a retry after `greylist.delay` and within
//! `greylist.retry_window` passes, and the triplet keeps passing for `greylist.pass_ttl`. A
//! client network whose triplets passed in `greylist.auto_allowlist_after` sessions skips
//! greylisting for `greylist.auto_allowlist_ttl`.
//!
//! State lives in a bounded local table ([`Greylist`], kept across reloads) and, with a state
//! store attached ([`Greylist::attach`]), in the store too (spaces `greylist` and `greypass`):
//! with Redis, a retry that reaches another gateway of the fleet passes, and a network's passes
//! are one counter every gateway adds to (`INCR`), so passes spread over the MX hosts add up to
//! the auto-allowlist. A triplet not known here, or a network not yet allowlisted here, is
//! asked of the store within `store.budget`; when the store fails to answer, `store.on_timeout`
//! decides (`open`: not greylisted; `closed`: deferred), and it is counted.
//!
//! What never is greylisted (authenticated sessions, DNSWL-listed clients, SPF `pass` for a
//! big-sender domain, clients that passed recently, profiles with `greylist = false`) is the
//! session's decision (`smtp/session/rcpt.rs`); this module judges triplets.
//!
//! - `config.rs`: `[greylist]`;
//! - `triplet.rs`: client networks, sender normalisation, triplet keys.

pub mod config;
pub mod triplet;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use config::GreylistConfig;

use crate::store::{OnTimeout, Space, Store, records::unix_now_ms};

/// What greylisting says about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First sight, or a retry before `delay`: answer `451 4.7.1`.
    Deferred,
    /// A retry after the delay, or a triplet that passed before: go on.
    Passed,
    /// The client's network is auto-allowlisted: go on.
    Allowlisted,
    /// The store did not answer and `store.on_timeout = "open"`: go on (not greylisted).
    StoreOpen,
    /// The store did not answer and `store.on_timeout = "closed"`: answer `451 4.7.1`.
    StoreClosed,
}

impl Verdict {
    /// Whether the recipient is refused for now.
    pub fn defers(self) -> bool {
        matches!(self, Verdict::Deferred | Verdict::StoreClosed)
    }

    /// The `result` label of `greylist_total`.
    pub fn metric(self) -> &'static str {
        match self {
            Verdict::Deferred => "deferred",
            Verdict::Passed => "passed",
            Verdict::Allowlisted => "allowlisted",
            Verdict::StoreOpen | Verdict::StoreClosed => "store_error",
        }
    }
}

/// A triplet as stored (`greylist/<sha256>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TripletRecord {
    /// When the triplet was first seen (Unix milliseconds).
    pub first_unix_ms: u64,
    /// Whether a retry passed.
    pub passed: bool,
}

/// A client network's passes, as the local table keeps them (the store holds a counter,
/// `greypass/<network>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRecord {
    /// Sessions whose triplets passed greylisting.
    pub passes: u32,
}

/// A local entry: the record and when it expires (Unix milliseconds).
type Entry<V> = (V, u64);

/// A bounded local table: expired entries go first, then those expiring soonest.
struct Table<V> {
    /// Key -> record and expiry.
    entries: HashMap<String, Entry<V>>,
}

impl<V: Copy> Table<V> {
    /// An empty table.
    fn new() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }

    /// The live record of `key` at `now`.
    fn get(&self, key: &str, now: u64) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| *v)
    }

    /// Sets `key`, keeping at most `capacity` entries.
    fn insert(&mut self, key: String, value: V, until: u64, now: u64, capacity: usize) {
        if !self.entries.contains_key(&key) {
            self.shrink_to(capacity.saturating_sub(1), now);
        }
        if capacity > 0 {
            self.entries.insert(key, (value, until));
        }
    }

    /// Frees room: at most `room_for` entries are left.
    fn shrink_to(&mut self, room_for: usize, now: u64) {
        if self.entries.len() <= room_for {
            return;
        }
        self.entries.retain(|_, (_, until)| *until > now);
        if self.entries.len() <= room_for {
            return;
        }
        let excess = self.entries.len() - room_for;
        let mut by_expiry: Vec<(String, u64)> = self
            .entries
            .iter()
            .map(|(k, (_, until))| (k.clone(), *until))
            .collect();
        by_expiry.select_nth_unstable_by_key(excess - 1, |(_, until)| *until);
        for (key, _) in by_expiry.into_iter().take(excess) {
            self.entries.remove(&key);
        }
    }
}

/// What the lock of a [`Greylist`] guards.
struct Tables {
    /// Entries kept at most per table (`greylist.local_capacity`).
    capacity: usize,
    /// Triplets by key.
    triplets: Table<TripletRecord>,
    /// Client networks' passes.
    clients: Table<ClientRecord>,
}

/// The greylisting state of the whole run (reload generations share it).
pub struct Greylist {
    /// The local tables.
    tables: Mutex<Tables>,
    /// The state store, once attached.
    store: OnceLock<Store>,
}

/// The store did not answer (a value it holds that is unusable is no answer's fault: that
/// entry counts as unknown).
struct StoreDown;

impl Greylist {
    /// Empty tables of at most `capacity` entries each.
    pub fn new(capacity: usize) -> Self {
        Self {
            tables: Mutex::new(Tables {
                capacity,
                triplets: Table::new(),
                clients: Table::new(),
            }),
            store: OnceLock::new(),
        }
    }

    /// Writes through `store` from now on, and asks it about what is not known here.
    pub fn attach(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Applies a reloaded `greylist.local_capacity` (a smaller one forgets at once).
    pub fn configure(&self, capacity: usize) {
        let Ok(mut t) = self.tables.lock() else {
            return;
        };
        t.capacity = capacity;
        let now = unix_now_ms();
        t.triplets.shrink_to(capacity, now);
        t.clients.shrink_to(capacity, now);
    }

    /// Triplets and clients remembered here (expired ones until evicted).
    pub fn len(&self) -> usize {
        self.tables
            .lock()
            .map(|t| t.triplets.entries.len() + t.clients.entries.len())
            .unwrap_or(0)
    }

    /// Whether nothing is remembered here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Judges the triplet (`client`'s network, `sender`, `recipient`) now.
    pub async fn check(
        &self,
        config: &GreylistConfig,
        client: IpAddr,
        sender: &str,
        recipient: &str,
    ) -> Verdict {
        self.check_at(config, client, sender, recipient, unix_now_ms())
            .await
    }

    /// [`check`](Self::check) at `now` (Unix milliseconds).
    pub async fn check_at(
        &self,
        config: &GreylistConfig,
        client: IpAddr,
        sender: &str,
        recipient: &str,
        now: u64,
    ) -> Verdict {
        let network = triplet::client_network(client, config.ipv4_prefix, config.ipv6_prefix);
        if config.auto_allowlist_after > 0 {
            match self
                .client(&network.to_string(), config.auto_allowlist_after, now)
                .await
            {
                Ok(Some(c)) if c.passes >= config.auto_allowlist_after => {
                    return Verdict::Allowlisted;
                }
                Ok(_) => {}
                Err(StoreDown) => return self.store_down(),
            }
        }
        let key = triplet::triplet_key(&network, sender, recipient);
        let record = match self.triplet(&key, now).await {
            Ok(r) => r,
            Err(StoreDown) => return self.store_down(),
        };
        let delay = ms(config.delay);
        let window_end = delay.saturating_add(ms(config.retry_window));
        match record {
            Some(r) if r.passed => {
                // Passing again: the triplet lives `pass_ttl` from its last use.
                self.put_triplet(key, r, config.pass_ttl, now);
                Verdict::Passed
            }
            Some(r) if now.saturating_sub(r.first_unix_ms) < delay => Verdict::Deferred,
            Some(r) if now.saturating_sub(r.first_unix_ms) <= window_end => {
                let passed = TripletRecord { passed: true, ..r };
                self.put_triplet(key, passed, config.pass_ttl, now);
                Verdict::Passed
            }
            // Never seen, or not retried in time: the delay starts now.
            _ => {
                let first = TripletRecord {
                    first_unix_ms: now,
                    passed: false,
                };
                let ttl = config.delay.saturating_add(config.retry_window);
                self.put_triplet(key, first, ttl, now);
                Verdict::Deferred
            }
        }
    }

    /// Counts one session whose triplets passed for `client`'s network (auto-allowlist).
    pub async fn record_pass(&self, config: &GreylistConfig, client: IpAddr) {
        self.record_pass_at(config, client, unix_now_ms()).await;
    }

    /// [`record_pass`](Self::record_pass) at `now` (Unix milliseconds). With a store, the
    /// network's count is one counter every gateway adds to (Redis `INCR`), living
    /// `auto_allowlist_ttl` from its last pass; the local table keeps the latest value.
    pub async fn record_pass_at(&self, config: &GreylistConfig, client: IpAddr, now: u64) {
        if config.auto_allowlist_after == 0 {
            return;
        }
        let network =
            triplet::client_network(client, config.ipv4_prefix, config.ipv6_prefix).to_string();
        let ttl = config.auto_allowlist_ttl;
        let counted = match self.store.get() {
            Some(store) => match store.incr_renewed(Space::GreyAllow, &network, ttl).await {
                Ok(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
                Err(e) => {
                    tracing::debug!(error = %e, "greylist: pass not counted in the store");
                    None
                }
            },
            None => None,
        };
        // Without a store (or one that does not answer), count from what is known here.
        let passes = match counted {
            Some(n) => n,
            None => self
                .local_client(&network, now)
                .map_or(0, |c| c.passes)
                .saturating_add(1),
        };
        if let Ok(mut t) = self.tables.lock() {
            let capacity = t.capacity;
            t.clients.insert(
                network,
                ClientRecord { passes },
                now.saturating_add(ms(ttl)),
                now,
                capacity,
            );
        }
    }

    /// What `store.on_timeout` makes of a store that did not answer.
    fn store_down(&self) -> Verdict {
        match self.store.get().map(Store::on_timeout) {
            Some(OnTimeout::Closed) => Verdict::StoreClosed,
            _ => Verdict::StoreOpen,
        }
    }

    /// The triplet `key`: here, else in the store.
    async fn triplet(&self, key: &str, now: u64) -> Result<Option<TripletRecord>, StoreDown> {
        let local = self
            .tables
            .lock()
            .ok()
            .and_then(|t| t.triplets.get(key, now));
        if local.is_some() {
            return Ok(local);
        }
        self.fetch(Space::Greylist, key).await
    }

    /// The client network `network`'s passes: here when that already allowlists it (`after`),
    /// else the fleet's count in the store (other gateways may have counted passes), else here.
    async fn client(
        &self,
        network: &str,
        after: u32,
        now: u64,
    ) -> Result<Option<ClientRecord>, StoreDown> {
        let local = self.local_client(network, now);
        if local.is_some_and(|c| c.passes >= after) {
            return Ok(local);
        }
        let Some(store) = self.store.get() else {
            return Ok(local);
        };
        let within = store.config().budget;
        match store
            .counter_within(Space::GreyAllow, network, within)
            .await
        {
            Ok(Some(n)) => Ok(Some(ClientRecord {
                passes: u32::try_from(n).unwrap_or(u32::MAX),
            })),
            Ok(None) => Ok(local),
            // Not a counter (garbage, another type, overflowing): unknown, and removed so
            // that the next pass counts from one again.
            Err(e) if e.is_bad_value() => {
                tracing::debug!(error = %e, "greylist: stored count unusable, taken as unknown");
                store.delete(Space::GreyAllow, network);
                Ok(local)
            }
            Err(e) => {
                tracing::debug!(error = %e, "greylist: the store did not answer");
                Err(StoreDown)
            }
        }
    }

    /// The client network `network`'s passes in the local table.
    fn local_client(&self, network: &str, now: u64) -> Option<ClientRecord> {
        self.tables
            .lock()
            .ok()
            .and_then(|t| t.clients.get(network, now))
    }

    /// `id` of `space` from the store (none without a store), within `store.budget`.
    async fn fetch<T: DeserializeOwned>(
        &self,
        space: Space,
        id: &str,
    ) -> Result<Option<T>, StoreDown> {
        let Some(store) = self.store.get() else {
            return Ok(None);
        };
        match store.get::<T>(space, id).await {
            Ok(record) => Ok(record),
            // Garbage, too large, another type: unknown (a new triplet overwrites it).
            Err(e) if e.is_bad_value() => {
                tracing::debug!(space = space.name(), error = %e, "greylist: stored record unusable, taken as unknown");
                Ok(None)
            }
            Err(e) => {
                tracing::debug!(space = space.name(), error = %e, "greylist: the store did not answer");
                Err(StoreDown)
            }
        }
    }

    /// Remembers a triplet here and writes it through, for `ttl`.
    fn put_triplet(&self, key: String, record: TripletRecord, ttl: Duration, now: u64) {
        if let Some(store) = self.store.get() {
            store.put(Space::Greylist, &key, &record, ttl);
        }
        if let Ok(mut t) = self.tables.lock() {
            let capacity = t.capacity;
            t.triplets
                .insert(key, record, now.saturating_add(ms(ttl)), now, capacity);
        }
    }
}

/// A duration in milliseconds (saturating).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;

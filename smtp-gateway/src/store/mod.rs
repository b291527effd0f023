//! The state that outlives a restart and, with Redis, spans a fleet: the pass cache, auto-ban
//! counts and waiting bans, per-source session outcomes, greylisting triplets and auto-allowlist
//! counts, and the ban/allowlist records the fleet will share. One interface ([`Store`]), two engines: `embedded` (a redb file, the default) and
//! `redis`.
//!
//! The pinned kernel maps stay the local truth on the packet path: nothing here sits between a
//! SYN and its verdict. Sessions never wait on a write (writes are queued, batched and written
//! by one task, [`Writer`]; a store that is down keeps them, bounded by `store.queue`, and gets
//! them when it returns); a read waits at most `store.budget`, and then `store.on_timeout`
//! decides. Every entry has a TTL. Every value read back is hostile (`records.rs`).
//!
//! - `mod.rs`: [`Store`] (the interface), [`Writer`] (the task that writes), [`StoreError`];
//! - `queue.rs`: the bounded write queue (the oldest dropped when full);
//! - `config.rs`: `[store]`;
//! - `records.rs`: keys ([`Space`]), the ban record, the bounded codec;
//! - `embedded.rs`: the redb engine (synchronous, run on the blocking pool);
//! - `contain.rs`: a panic inside a dependency (redb on a damaged file) as an error;
//! - `redis.rs`: the Redis engine (connection manager, native expiry);
//! - `test_redis.rs` (tests only): a private `redis-server` for unit tests.

pub mod config;
mod contain;
mod embedded;
mod queue;
pub mod records;
mod redis;
#[cfg(test)]
pub(crate) mod test_redis;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;

pub use config::{Engine as EngineKind, OnTimeout, StoreConfig};
pub use records::{BanRecord, Space};

use self::queue::{Pushed, Queue};
use crate::metrics::Metrics;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database refused (I/O, corruption).
    #[error("embedded store: {0}")]
    Embedded(Box<redb::Error>),
    /// The embedded file could not be opened (I/O, not a redb file, lock held by another
    /// process). The redb error is part of the text, not a source: it is printed once.
    #[error("embedded store {}: {error}", path.display())]
    Open {
        /// The file (`store.path`).
        path: std::path::PathBuf,
        /// Why.
        error: Box<redb::DatabaseError>,
    },
    /// Redis refused or is unreachable.
    #[error("redis: {0}")]
    Redis(Box<::redis::RedisError>),
    /// A TLS file of a `rediss://` Redis (`store.redis_ca_file`, ...) cannot be read or does
    /// not hold what the option wants.
    #[error("{option}: {}: {reason}", path.display())]
    TlsFile {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The store did not answer in time.
    #[error("the store did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A value read back is larger than `store.max_value_bytes`.
    #[error("{key}: value of {len} bytes, over the {max} allowed")]
    TooLarge {
        /// The key read.
        key: String,
        /// Its size.
        len: usize,
        /// `store.max_value_bytes`.
        max: usize,
    },
    /// A value read back is not what the key's space holds.
    #[error("{key}: cannot decode the value: {reason}")]
    Decode {
        /// The key read.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store's directory could not be created.
    #[error("cannot create {path}: {source}")]
    Directory {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded file is damaged (torn by a power loss or a full disk, or overwritten):
    /// redb could not open it.
    #[error("{}: the file is damaged ({reason}); move it away to start with an empty store", path.display())]
    Damaged {
        /// The file.
        path: std::path::PathBuf,
        /// What redb found.
        reason: String,
    },
    /// A blocking operation of the embedded engine panicked.
    #[error("store task failed: {0}")]
    Task(String),
    /// A blocking operation of the embedded engine was cancelled: the daemon is stopping (its
    /// runtime shut down before the operation ran). Not a store failure: logged at debug.
    #[error("the daemon is stopping: store operation cancelled")]
    Stopping,
}

impl StoreError {
    /// Whether the value read is at fault, not the store: it does not decode, is larger than
    /// `store.max_value_bytes`, or (Redis) its key holds another type. Such an entry counts as
    /// unknown (absent), never as a store that is down (`store.on_timeout` is not for it).
    pub fn is_bad_value(&self) -> bool {
        matches!(
            self,
            StoreError::Decode { .. } | StoreError::TooLarge { .. }
        )
    }
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        StoreError::Redis(Box::new(e))
    }
}

/// One queued write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    /// Sets `key` to `value` for `ttl`.
    Put {
        /// The key (`<space>/<id>`).
        key: String,
        /// The encoded value.
        value: Vec<u8>,
        /// How long it lives.
        ttl: Duration,
    },
    /// Removes `key`.
    Delete {
        /// The key (`<space>/<id>`).
        key: String,
    },
}

impl Write {
    /// The key written.
    fn key(&self) -> &str {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }
}

/// One entry an engine's scan read: its key (without the engine's prefix), its value, and what
/// is left of its life by the engine's own clock (none: it never expires).
#[derive(Debug, PartialEq, Eq)]
struct Scanned {
    key: String,
    value: Vec<u8>,
    left: Option<Duration>,
}

/// What an engine's scan read: the entries, and how many it skipped (each engine logs the
/// first it skipped; [`Store::load_with_life`] counts them).
type Scan = (Vec<Scanned>, usize);

/// Keys an engine's scan reads per round (Redis: per `SCAN` and per pipeline of reads).
const SCAN_ROUND: usize = 1000;

/// The rounds a running scan has completed: [`Store::load_with_life`] reads them to tell a load
/// that is long (a fleet's bans over a distant Redis) from one that is stuck.
#[derive(Debug, Default, Clone)]
struct ScanProgress(Arc<std::sync::atomic::AtomicU64>);

impl ScanProgress {
    fn round_done(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn rounds(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Awaits `scan` for as long as it completes a round within every `round_timeout`; one
    /// that completes none in one is a timeout (the whole load is never bounded by one).
    async fn await_while_moving<T>(
        &self,
        scan: impl std::future::Future<Output = Result<T, StoreError>>,
        round_timeout: Duration,
    ) -> Result<T, StoreError> {
        tokio::pin!(scan);
        let mut seen = self.rounds();
        loop {
            match tokio::time::timeout(round_timeout, &mut scan).await {
                Ok(result) => return result,
                Err(_) if self.rounds() == seen => return Err(StoreError::Timeout(round_timeout)),
                Err(_) => seen = self.rounds(),
            }
        }
    }
}

/// One entry [`Store::load_with_life`] read: its id, its value, and what is left of its life by
/// the engine's clock (Redis's for a fleet: one clock for every gateway), none when it never
/// expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<T> {
    /// The id in its space.
    pub id: String,
    /// The value.
    pub value: T,
    /// What is left of the entry's life.
    pub left: Option<Duration>,
}

/// How long a counter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterLife {
    /// `ttl` from its first increment (a window: auto-ban counts).
    Window,
    /// `ttl` from its last increment (greylisting's auto-allowlist).
    Renewed,
}

enum Engine {
    /// A redb file.
    Embedded(embedded::Embedded),
    /// A Redis server.
    Redis(redis::Redis),
}

impl Engine {
    /// Applies a batch of writes at once.
    async fn apply(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        match self {
            Engine::Embedded(e) => e.apply(batch).await,
            Engine::Redis(r) => r.apply(batch).await,
        }
    }

    /// The raw value of `key`, unless missing or expired (at most `max` bytes).
    async fn get(&self, key: String, max: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Engine::Embedded(e) => e.get(key, max).await,
            Engine::Redis(r) => r.get(key, max).await,
        }
    }

    /// Adds one to the counter `key`; its new value.
    async fn incr(&self, key: String, ttl: Duration, life: CounterLife) -> Result<u64, StoreError> {
        match self {
            Engine::Embedded(e) => e.incr(key, ttl, life).await,
            Engine::Redis(r) => r.incr(key, ttl, life).await,
        }
    }

    /// A counter's value as the engine stores it: 8 bytes big-endian in the embedded file,
    /// decimal text in Redis.
    fn decode_counter(&self, key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
        let bad = || StoreError::Decode {
            key: key.to_string(),
            reason: "not a counter".into(),
        };
        match self {
            Engine::Embedded(_) => <[u8; 8]>::try_from(bytes)
                .map(u64::from_be_bytes)
                .map_err(|_| bad()),
            Engine::Redis(_) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .map(|n| u64::try_from(n).unwrap_or(0))
                .ok_or_else(bad),
        }
    }

    /// Up to `limit` live entries whose key starts with `prefix`, and how many entries the
    /// engine skipped (damaged, too large, a Redis key of another type).
    async fn scan(
        &self,
        prefix: String,
        limit: usize,
        max: usize,
        progress: ScanProgress,
    ) -> Result<Scan, StoreError> {
        match self {
            Engine::Embedded(e) => e.scan(prefix, limit, max, progress).await,
            Engine::Redis(r) => r.scan(prefix, limit, max, progress).await,
        }
    }

    /// Deletes expired entries (Redis expires them itself); how many went.
    async fn purge(&self) -> Result<usize, StoreError> {
        match self {
            Engine::Embedded(e) => e.purge().await,
            Engine::Redis(_) => Ok(0),
        }
    }

    /// The engine's name in logs and metrics.
    fn name(&self) -> &'static str {
        match self {
            Engine::Embedded(_) => "embedded",
            Engine::Redis(_) => "redis",
        }
    }
}

/// What [`Opened::open`] reads for `store.engine = "redis"`, without connecting: the URL and,
/// with `rediss://`, the TLS files (`check-config`).
pub fn check_redis(config: &StoreConfig) -> Result<(), StoreError> {
    redis::client(config).map(drop)
}

/// A store opened while the daemon still has its privileges (the embedded file under
/// `/var/lib`, the TLS files of a `rediss://` Redis), started later on the runtime by
/// [`Opened::start`].
pub struct Opened {
    /// The section it was opened with.
    config: StoreConfig,
    /// The engine, opened.
    engine: OpenedEngine,
}

/// An engine opened, not yet started.
enum OpenedEngine {
    /// The embedded database.
    Embedded(embedded::Embedded),
    /// The Redis client (its TLS files read); it connects once started.
    Redis(::redis::Client),
}

impl Opened {
    /// Opens the configured engine: the embedded file now (creating its directory); Redis only
    /// parses its URL and reads its TLS files here ([`check_redis`]) and connects on first use
    /// (a Redis that is down never stops a start). `None` when `store.engine = "off"`.
    pub fn open(config: &StoreConfig) -> Result<Option<Self>, StoreError> {
        let engine = match config.engine {
            EngineKind::Off => return Ok(None),
            EngineKind::Embedded => OpenedEngine::Embedded(embedded::Embedded::open(config)?),
            EngineKind::Redis => OpenedEngine::Redis(redis::client(config)?),
        };
        Ok(Some(Self {
            config: config.clone(),
            engine,
        }))
    }

    /// Starts the store on the running runtime: the handle sessions and tasks use, and the
    /// writer that must run (and be stopped after the last write, see [`Writer::run`]).
    pub fn start(self, metrics: Arc<Metrics>) -> Result<(Store, Writer), StoreError> {
        let config = self.config;
        let node = if config.node.is_empty() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        } else {
            config.node.clone()
        };
        let engine = match self.engine {
            OpenedEngine::Embedded(e) => Engine::Embedded(e),
            OpenedEngine::Redis(client) => {
                Engine::Redis(redis::Redis::connect(client, &config, &node)?)
            }
        };
        let engine = Arc::new(engine);
        let queue = Arc::new(Queue::new(config.queue));
        tracing::info!(engine = engine.name(), node, "state store opened");
        let store = Store {
            inner: Arc::new(Inner {
                engine: engine.clone(),
                writes: queue.clone(),
                node,
                config: config.clone(),
                metrics: metrics.clone(),
            }),
        };
        let writer = Writer {
            engine,
            writes: queue,
            config,
            metrics,
        };
        Ok((store, writer))
    }
}

/// The store as sessions and tasks use it: cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

/// What the clones of a [`Store`] share.
struct Inner {
    /// The engine.
    engine: Arc<Engine>,
    /// The write queue ([`Writer`] drains it).
    writes: Arc<Queue>,
    /// This node's name.
    node: String,
    /// `[store]`.
    config: StoreConfig,
    /// Operation counters.
    metrics: Arc<Metrics>,
}

impl Drop for Inner {
    /// The last handle is gone: no write will come any more (the writer stops).
    fn drop(&mut self) {
        self.writes.close();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.inner.engine.name())
            .field("node", &self.inner.node)
            .finish()
    }
}

impl Store {
    /// This node's name (`store.node`, or the host name).
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The engine's name (`embedded`, `redis`).
    pub fn engine_name(&self) -> &'static str {
        self.inner.engine.name()
    }

    /// The Redis client (with its TLS settings), for another connection to the same server
    /// (the fleet's pub/sub); `None` with another engine.
    pub fn redis_client(&self) -> Option<::redis::Client> {
        match &*self.inner.engine {
            Engine::Redis(r) => Some(r.client().clone()),
            Engine::Embedded(_) => None,
        }
    }

    /// The store's own Redis connection (multiplexed, reconnecting, timed by `io_timeout`), for
    /// a few commands beside the store's (the fleet's presence key); `None` with another engine.
    pub fn redis_connection(&self) -> Option<::redis::aio::ConnectionManager> {
        match &*self.inner.engine {
            Engine::Redis(r) => Some(r.connection().clone()),
            Engine::Embedded(_) => None,
        }
    }

    /// Whether bans are shared with a fleet through Redis (`store.engine = "redis"` and
    /// `store.fleet`).
    pub fn fleet(&self) -> bool {
        matches!(*self.inner.engine, Engine::Redis(_)) && self.inner.config.fleet
    }

    /// What a session does when the store does not answer in time.
    pub fn on_timeout(&self) -> OnTimeout {
        self.inner.config.on_timeout
    }

    /// `[store]`.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Queues `value` under `id` in `space` for `ttl`; never waits. A full queue drops its
    /// oldest write (counted); a zero TTL writes nothing.
    pub fn put<T: Serialize>(&self, space: Space, id: &str, value: &T, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let key = space.key(id);
        match records::encode(&key, value) {
            Ok(value) => self.queue(Write::Put { key, value, ttl }),
            Err(e) => tracing::error!(error = %e, "store: not written"),
        }
    }

    /// Queues the removal of `id` from `space`; never waits.
    pub fn delete(&self, space: Space, id: &str) {
        self.queue(Write::Delete { key: space.key(id) });
    }

    /// Hands a write to the writer; a full queue drops its oldest (counted).
    fn queue(&self, write: Write) {
        match self.inner.writes.push(write) {
            Pushed::Queued {
                dropped_oldest,
                len,
            } => {
                if dropped_oldest {
                    self.inner.metrics.store_queue_overflow();
                }
                self.inner.metrics.store_queued(len);
            }
            Pushed::Refused => self.inner.metrics.store_op("put", "error"),
        }
    }

    /// The value of `id` in `space`, waiting at most `store.budget` (for sessions). A timeout,
    /// an engine error and a hostile value are errors (counted); the caller applies
    /// [`on_timeout`](Self::on_timeout) to the first two and takes a hostile value
    /// ([`StoreError::is_bad_value`]) as no value.
    pub async fn get<T: DeserializeOwned>(
        &self,
        space: Space,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        self.get_within(space, id, self.inner.config.budget).await
    }

    /// [`get`](Self::get) with another bound.
    pub async fn get_within<T: DeserializeOwned>(
        &self,
        space: Space,
        id: &str,
        within: Duration,
    ) -> Result<Option<T>, StoreError> {
        let key = space.key(id);
        let max = self.inner.config.max_value_bytes;
        let result =
            match tokio::time::timeout(within, self.inner.engine.get(key.clone(), max)).await {
                Ok(Ok(Some(bytes))) => records::decode(&key, &bytes, max).map(Some),
                Ok(Ok(None)) => Ok(None),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(StoreError::Timeout(within)),
            };
        self.count("get", &result);
        result
    }

    /// Adds one to the counter `id` of `space` and returns its new value, atomically for every
    /// gateway sharing the engine (Redis `INCR`). A new counter lives `ttl` from this first
    /// increment (a window, not renewed). Waits at most `store.io_timeout` (for tasks, not
    /// sessions); counted as `incr`. A stored value that is not a counter is an error.
    pub async fn incr(&self, space: Space, id: &str, ttl: Duration) -> Result<u64, StoreError> {
        let within = self.inner.config.io_timeout;
        self.incr_as(space, id, ttl, CounterLife::Window, within)
            .await
    }

    /// [`incr`](Self::incr) for a session: every increment makes the counter live `ttl` from
    /// now (renewed), and it waits at most `store.budget`.
    pub async fn incr_renewed(
        &self,
        space: Space,
        id: &str,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        let within = self.inner.config.budget;
        self.incr_as(space, id, ttl, CounterLife::Renewed, within)
            .await
    }

    async fn incr_as(
        &self,
        space: Space,
        id: &str,
        ttl: Duration,
        life: CounterLife,
        within: Duration,
    ) -> Result<u64, StoreError> {
        let increment = self.inner.engine.incr(space.key(id), ttl, life);
        let result = match tokio::time::timeout(within, increment).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(within)),
        };
        self.count("incr", &result);
        result
    }

    /// The value of the counter `id` of `space` (see [`incr`](Self::incr)), within
    /// `store.io_timeout`; `None` when there is none. A value that is not a counter is an error.
    pub async fn counter(&self, space: Space, id: &str) -> Result<Option<u64>, StoreError> {
        self.counter_within(space, id, self.inner.config.io_timeout)
            .await
    }

    /// [`counter`](Self::counter), waiting at most `within` (`store.budget` for a session).
    pub async fn counter_within(
        &self,
        space: Space,
        id: &str,
        within: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let key = space.key(id);
        let read = self.inner.engine.get(key.clone(), 32);
        let result = match tokio::time::timeout(within, read).await {
            Ok(Ok(Some(bytes))) => self.inner.engine.decode_counter(&key, &bytes).map(Some),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Timeout(within)),
        };
        self.count("get", &result);
        result
    }

    /// Up to `store.load_limit` live entries of `space` (ids and values), within
    /// `store.io_timeout`: what a task loads at start. Entries that do not decode are skipped
    /// (logged and counted), never fatal.
    pub async fn load<T: DeserializeOwned>(
        &self,
        space: Space,
    ) -> Result<Vec<(String, T)>, StoreError> {
        Ok(self
            .load_with_life(space)
            .await?
            .into_iter()
            .map(|l| (l.id, l.value))
            .collect())
    }

    /// [`load`](Self::load), with what is left of each entry's life by the engine's clock.
    pub async fn load_with_life<T: DeserializeOwned>(
        &self,
        space: Space,
    ) -> Result<Vec<Loaded<T>>, StoreError> {
        let cfg = &self.inner.config;
        let prefix = space.key("");
        // io_timeout bounds each round of the scan, not the whole: a space may hold more than
        // one io_timeout reads (load_limit goes to 10 million).
        let progress = ScanProgress::default();
        let scan = self.inner.engine.scan(
            prefix,
            cfg.load_limit,
            cfg.max_value_bytes,
            progress.clone(),
        );
        let raw = progress.await_while_moving(scan, cfg.io_timeout).await;
        self.count("scan", &raw);
        let (entries, skipped) = raw?;
        if skipped > 0 {
            self.inner.metrics.store_ops(
                "decode",
                "error",
                u64::try_from(skipped).unwrap_or(u64::MAX),
            );
        }
        let mut out = Vec::new();
        // Whoever writes to the store may fill a space with garbage: one warning per load (the
        // first error, and how many), not one per entry at every reconcile.
        let mut undecodable: Option<(StoreError, usize)> = None;
        for Scanned { key, value, left } in entries {
            let Some(id) = space.id_of(&key) else {
                continue;
            };
            match records::decode(&key, &value, cfg.max_value_bytes) {
                Ok(value) => out.push(Loaded {
                    id: id.to_string(),
                    value,
                    left,
                }),
                Err(e) => {
                    self.inner.metrics.store_op("decode", "error");
                    match &mut undecodable {
                        Some((_, n)) => *n += 1,
                        None => undecodable = Some((e, 1)),
                    }
                }
            }
        }
        if let Some((first, skipped)) = undecodable {
            tracing::warn!(error = %first, skipped, "store: entry skipped (the first of this load)");
        }
        Ok(out)
    }

    /// Counts an operation by outcome.
    fn count<T>(&self, op: &'static str, result: &Result<T, StoreError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(StoreError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        self.inner.metrics.store_op(op, outcome);
    }
}

/// The one task that writes: drains the queue in batches, leaves what a store that is down
/// refused in the queue (bounded by `store.queue`, the oldest dropped and counted) and tries
/// again every `store.retry_interval`, and purges expired entries of the embedded file.
pub struct Writer {
    /// The engine.
    engine: Arc<Engine>,
    /// The queue sessions and tasks fill.
    writes: Arc<Queue>,
    /// `[store]`.
    config: StoreConfig,
    /// Operation counters.
    metrics: Arc<Metrics>,
}

/// Writes applied in one batch at most.
const BATCH: usize = 512;

impl Writer {
    /// Writes until `stop` turns true (send it after the last task that writes has finished)
    /// or every store handle is gone, then flushes what is queued, bounded by
    /// `store.io_timeout`. Returns the writes lost (the store refused them to the end).
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> usize {
        let mut retry_at: Option<Instant> = None;
        let mut purge_at = Instant::now() + self.config.purge_interval;
        let mut down = false;
        loop {
            if self.writes.is_closed() {
                break;
            }
            if self.writes.is_empty() {
                // Nothing left to retry (never a wake-up for an empty queue).
                retry_at = None;
            }
            let wake = match retry_at {
                Some(at) => at.min(purge_at),
                None => purge_at,
            };
            if retry_at.is_some() || self.writes.is_empty() {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    () = self.writes.woken(), if retry_at.is_none() => {}
                    () = tokio::time::sleep_until(wake.into()) => {}
                }
            } else if stop.has_changed().unwrap_or(true) {
                break;
            }
            let now = Instant::now();
            if now >= purge_at {
                purge_at = now + self.config.purge_interval;
                match self.engine.purge().await {
                    Ok(n) if n > 0 => tracing::debug!(expired = n, "store: purged"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "store: purge failed"),
                }
            }
            if retry_at.is_some_and(|at| now < at) || self.writes.is_empty() {
                continue;
            }
            match self.flush().await {
                Ok(()) => {
                    retry_at = None;
                    if down {
                        down = false;
                        tracing::info!("state store reachable again; queued writes written");
                    }
                }
                Err(e) => {
                    retry_at = Some(Instant::now() + self.config.retry_interval);
                    if !down {
                        down = true;
                        tracing::warn!(error = %e, queued = self.writes.len(), "state store unavailable; writes kept and retried (local state keeps serving)");
                    }
                }
            }
        }
        // The last writes (auto-ban's at shutdown among them), bounded in time.
        let deadline = Instant::now() + self.config.io_timeout;
        while !self.writes.is_empty() && Instant::now() < deadline {
            if self.flush().await.is_err() {
                break;
            }
        }
        self.writes.stop();
        let lost = self.writes.len();
        if lost > 0 {
            tracing::warn!(lost, "store: writes not written at stop");
        }
        lost
    }

    /// Writes the queue from its front, one batch at a time; on failure the batch stays there.
    async fn flush(&self) -> Result<(), StoreError> {
        loop {
            let batch = self.writes.begin(BATCH);
            if batch.is_empty() {
                return Ok(());
            }
            let n = batch.len();
            // Each key written is traced (tests and an operator debugging wait for a key).
            let keys: Vec<String> = if tracing::enabled!(tracing::Level::TRACE) {
                batch.iter().map(|w| w.key().to_string()).collect()
            } else {
                Vec::new()
            };
            let timeout = self.config.io_timeout;
            let result = match tokio::time::timeout(timeout, self.engine.apply(batch)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout(timeout)),
            };
            let outcome = match &result {
                Ok(()) => "ok",
                Err(StoreError::Timeout(_)) => "timeout",
                Err(_) => "error",
            };
            self.metrics.store_ops("write", outcome, n as u64);
            if let Err(e) = result {
                self.writes.failed();
                return Err(e);
            }
            for key in &keys {
                tracing::trace!(key, "store: written");
            }
            let left = self.writes.written();
            self.metrics.store_queued(left);
        }
    }
}

#[cfg(test)]
mod tests;

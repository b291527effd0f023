//! Session verdicts feeding the kernel: a source that fails a configured check often enough is
//! added to the XDP blocklist with a TTL and the check as reason, so its next SYN is dropped in the
//! kernel. Allowlisted sources are never banned; expired bans leave the maps through the sweeper.
//!
//! Firings are counted on the ban target (the address, or the prefix a ban covers) inside
//! `autoban.window` ([`Tally`], pure); decided bans wait for the offending session to close and
//! are then written in batches off the event loop ([`run`]), so a busy data plane lock never makes
//! the loop miss events, and a decided ban is never forgotten. Memory is bounded by
//! `autoban.track_sources` (counts, waiting bans, the batch being written).
//!
//! With a state store, counts and waiting bans are written through and loaded back at start
//! ([`restore`]): a restart (even `kill -9`) forgets neither a count nor a decided ban, and the
//! bans that were waiting are written to the kernel right after it. Every ban written is also
//! stored as a [`BanRecord`] (target, reason, origin node, expiry) for the fleet.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use smtp_gateway_common::{BlockEntry, origin};
use tokio::{
    sync::{broadcast, watch},
    task::{JoinError, JoinHandle},
};

use crate::{
    checks::{Action, Check},
    dataplane::{Dataplane, SharedDataplane, Target, clock, reasons},
    events::{Event, SessionEnd},
    invalid::Invalid,
    metrics::Metrics,
    store::{BanRecord, Space, Store, records::unix_now_ms},
};

/// Largest `autoban.ttl` (a year; the kernel clock holds centuries, the operator's intent not).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest `autoban.window`.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest `autoban.grace`.
pub const MAX_GRACE: Duration = Duration::from_secs(60);
/// Largest count in `autoban.checks`.
pub const MAX_FIRINGS: u32 = 10_000;
/// Largest `autoban.track_sources`.
pub const MAX_TRACK_SOURCES: usize = 10_000_000;

/// `[autoban]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AutobanConfig {
    /// Whether session verdicts ban sources in the kernel.
    pub enabled: bool,
    /// How long a ban lasts.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Check name -> how many times it must fire for one source before the ban (1 = at once).
    /// Checks whose action is `ignore` never ban.
    pub checks: HashMap<String, u32>,
    /// How long firings count: a ban target's count of one check starts over once its first
    /// firing is this old (a legitimate sender's rare mistakes never add up to a ban).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Ban targets whose firings are being counted at most; beyond, expired counts go and, if
    /// that frees little, the counts start over (bounded memory under a flood of distinct
    /// sources). Also the most bans waiting for their sessions to close (beyond, they are
    /// written at once).
    pub track_sources: usize,
    /// How long after the offending session closed the ban is written. Banning while the
    /// session still closes would drop the client's last ACK and FIN in the kernel, leaving the
    /// gateway's socket retransmitting into the ban (and the drops counting those).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Prefix length an IPv4 ban covers (32: the address).
    pub ipv4_prefix: u8,
    /// Prefix length an IPv6 ban covers (64 by default, like the SYN rate limiter: a host given
    /// a /64 picks any address in it).
    pub ipv6_prefix: u8,
}

impl Default for AutobanConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(3600),
            checks: [
                ("pregreet", 1),
                ("non_smtp", 1),
                ("too_many_errors", 1),
                ("relay_attempt", 5),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            window: Duration::from_secs(3600),
            track_sources: 100_000,
            grace: Duration::from_secs(2),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

impl AutobanConfig {
    /// Checks names and values.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (check, count) in &self.checks {
            if Check::from_name(check).is_none() {
                return Err(Invalid::new(
                    "autoban.checks",
                    format!(
                        "{check:?} is not a check (one of {})",
                        Check::ALL.map(Check::name).join(", ")
                    ),
                ));
            }
            Invalid::in_range(&format!("autoban.checks.{check}"), *count, 1, MAX_FIRINGS)?;
        }
        Invalid::in_range(
            "autoban.track_sources",
            self.track_sources,
            1,
            MAX_TRACK_SOURCES,
        )?;
        Invalid::duration_in("autoban.ttl", self.ttl, Duration::from_secs(1), MAX_TTL)?;
        Invalid::duration_in(
            "autoban.window",
            self.window,
            Duration::from_secs(1),
            MAX_WINDOW,
        )?;
        Invalid::duration_in("autoban.grace", self.grace, Duration::ZERO, MAX_GRACE)?;
        if !(8..=32).contains(&self.ipv4_prefix) {
            return Err(Invalid::new("autoban.ipv4_prefix", "must be 8..=32"));
        }
        if !(32..=128).contains(&self.ipv6_prefix) {
            return Err(Invalid::new("autoban.ipv6_prefix", "must be 32..=128"));
        }
        Ok(())
    }
}

/// Firings of one check by one ban target, inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    /// Firings counted since `since`.
    n: u32,
    /// The first firing counted: the count starts over once this is `window` old.
    since: Instant,
}

/// A count as stored (`count/<target>#<check>`), aging out with `autoban.window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountRecord {
    /// Firings counted.
    n: u32,
    /// The first firing counted, Unix milliseconds.
    since_unix_ms: u64,
}

/// The store id of a count: `<target>#<check>`.
fn count_id(target: Target, check: Check) -> String {
    format!("{target}#{}", check.name())
}

/// The origin of auto-ban records in the store.
const ORIGIN: &str = "autoban";

/// The reason written with a ban decided by `check`.
fn reason_of(check: &str) -> String {
    format!("autoban: {check}")
}

/// What one firing changed in a [`Tally`] (to write through to the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A count grew.
    Counted(Target, Check, Count),
    /// A ban was decided (the count is gone).
    Decided(Target, Check, Pending),
}

/// A ban decided, waiting for the offending session to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    /// The address whose firing decided the ban (checked against the allowlist, logged).
    source: IpAddr,
    /// The check that decided it (the reason written with the ban).
    check: &'static str,
    /// Set when a session of the target ended (or the table filled up): the ban is written then.
    due: Option<Instant>,
}

/// One ban handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ban {
    /// The address whose firing decided it.
    source: IpAddr,
    /// What the ban covers ([`ban_target`] of `source` when it was decided).
    target: Target,
    /// The check that decided it.
    check: &'static str,
    /// How long it lasts (`autoban.ttl` when it is written).
    ttl: Duration,
}

/// What became of one ban.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// In the kernel blocklist.
    Banned,
    /// Not written: the source is allowlisted.
    Allowlisted,
    /// Not written: the data plane refused (the error).
    Failed(String),
}

/// The counting and the decided bans, without I/O: the caller gives the time and the section.
/// Both tables are keyed by the ban target, so every address a ban would cover counts towards it.
#[derive(Default)]
struct Tally {
    /// Firings per ban target and check, inside `autoban.window`.
    counts: HashMap<(Target, Check), Count>,
    /// Bans decided and not yet handed to the writer (at most `autoban.track_sources`).
    pending: HashMap<Target, Pending>,
}

impl Tally {
    /// Counts a fired check; once it fired the configured number of times inside the window for
    /// one ban target, the target's ban is pending. A full table of pending bans makes all of
    /// them due at once (they are written, never forgotten).
    fn fired(&mut self, cfg: &AutobanConfig, event: &Event, now: Instant) -> Option<Change> {
        let needed = match cfg.checks.get(event.check.name()) {
            Some(needed) if cfg.enabled && event.action != Action::Ignore && event.permanent => {
                *needed
            }
            _ => return None,
        };
        let target = ban_target(event.source, cfg.ipv4_prefix, cfg.ipv6_prefix);
        if self.counts.len() >= cfg.track_sources {
            // Expired counts go first; when that frees little, the counts start over (bounded
            // memory under a flood of distinct sources, without a scan for every event).
            self.counts
                .retain(|_, c| now.saturating_duration_since(c.since) < cfg.window);
            if self.counts.len() >= cfg.track_sources / 4 * 3 {
                self.counts.clear();
            }
        }
        let count = self
            .counts
            .entry((target, event.check))
            .or_insert(Count { n: 0, since: now });
        if now.saturating_duration_since(count.since) >= cfg.window {
            *count = Count { n: 0, since: now };
        }
        count.n = count.n.saturating_add(1);
        if count.n < needed {
            return Some(Change::Counted(target, event.check, *count));
        }
        self.counts.remove(&(target, event.check));
        let mut decided = None;
        self.pending.entry(target).or_insert_with(|| {
            let p = Pending {
                source: event.source,
                check: event.check.name(),
                due: None,
            };
            decided = Some(Change::Decided(target, event.check, p));
            p
        });
        if self.pending.len() >= cfg.track_sources {
            // Sessions end within their timeouts, so this takes a flood of distinct offenders
            // faster than that: their bans are written now rather than memory grown or
            // decisions forgotten.
            tracing::warn!(
                track = cfg.track_sources,
                "auto-ban: too many bans waiting for their sessions to close; writing them now"
            );
            self.all_due(now);
        }
        decided
    }

    /// A session of `source` ended: its target's pending ban is due after the grace.
    fn session_ended(&mut self, cfg: &AutobanConfig, source: IpAddr, now: Instant) {
        let target = ban_target(source, cfg.ipv4_prefix, cfg.ipv6_prefix);
        if let Some(p) = self.pending.get_mut(&target) {
            p.due.get_or_insert(now + cfg.grace);
        }
    }

    /// Every pending ban is due now (session ends were missed, or the table is full).
    fn all_due(&mut self, now: Instant) {
        for p in self.pending.values_mut() {
            p.due.get_or_insert(now);
        }
    }

    /// When the next pending ban is due.
    fn next_due(&self) -> Option<Instant> {
        self.pending.values().filter_map(|p| p.due).min()
    }

    /// Takes the bans due at `now` (all of them with `now = None`), for the writer.
    fn take_due(&mut self, now: Option<Instant>, ttl: Duration) -> Vec<Ban> {
        let due: Vec<Target> = self
            .pending
            .iter()
            .filter(|(_, p)| match now {
                Some(now) => p.due.is_some_and(|d| d <= now),
                None => true,
            })
            .map(|(target, _)| *target)
            .collect();
        due.into_iter()
            .filter_map(|target| {
                self.pending.remove(&target).map(|p| Ban {
                    source: p.source,
                    target,
                    check: p.check,
                    ttl,
                })
            })
            .collect()
    }
}

/// Consumes verdict events until shutdown, banning as configured. Returns the number of bans.
/// A ban is decided when a check fires often enough inside `autoban.window` for one ban target,
/// and written `autoban.grace` after a session of that target ends (sessions end within their
/// timeouts). Bans are written off the event loop, one batch at a time under one lock of the
/// data plane, so a slow lock never makes the loop miss events.
pub async fn run(
    config: watch::Receiver<AutobanConfig>,
    dataplane: SharedDataplane,
    events: broadcast::Receiver<Event>,
    ends: broadcast::Receiver<SessionEnd>,
    metrics: Arc<Metrics>,
    store: Option<Store>,
    shutdown: watch::Receiver<bool>,
) -> u64 {
    let write = move |bans: Vec<Ban>| write_bans(&dataplane, bans);
    serve(config, write, events, ends, metrics, store, shutdown).await
}

/// Takes back the counts and waiting bans kept by the store (at start, before any event):
/// counts still inside the window, and every waiting ban, due at once (its session ended with
/// the previous run). The store's values are hostile: unknown targets and checks are skipped,
/// and `autoban.track_sources` bounds both tables. Returns (counts, bans) taken back.
async fn restore(tally: &mut Tally, store: &Store, cfg: &AutobanConfig) -> (usize, usize) {
    let counts = match store.load::<CountRecord>(Space::Count).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "auto-ban: counts not loaded from the store");
            Vec::new()
        }
    };
    let pending = match store.load::<BanRecord>(Space::Pending).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "auto-ban: waiting bans not loaded from the store");
            Vec::new()
        }
    };
    let now = Instant::now();
    let unix_now = unix_now_ms();
    let mut restored = (0, 0);
    for (id, record) in counts {
        if tally.counts.len() >= cfg.track_sources {
            break;
        }
        let Some((target, check)) = id.rsplit_once('#') else {
            continue;
        };
        let (Ok(target), Some(check)) = (target.parse::<Target>(), Check::from_name(check)) else {
            continue;
        };
        let age = Duration::from_millis(unix_now.saturating_sub(record.since_unix_ms));
        let Some(since) = now.checked_sub(age) else {
            continue;
        };
        if age >= cfg.window || record.n == 0 {
            continue;
        }
        tally
            .counts
            .insert((target, check), Count { n: record.n, since });
        restored.0 += 1;
    }
    for (id, record) in pending {
        if tally.pending.len() >= cfg.track_sources {
            break;
        }
        let Ok(target) = id.parse::<Target>() else {
            continue;
        };
        let Some(check) = record
            .reason
            .strip_prefix("autoban: ")
            .and_then(Check::from_name)
        else {
            continue;
        };
        let source = record
            .source
            .as_deref()
            .and_then(|s| s.parse::<IpAddr>().ok())
            .unwrap_or(match target {
                Target::V4(a) => IpAddr::V4(a),
                Target::V6(a) => IpAddr::V6(a),
                Target::NetV4(n) => IpAddr::V4(n.network()),
                Target::NetV6(n) => IpAddr::V6(n.network()),
            });
        tally.pending.entry(target).or_insert(Pending {
            source,
            check: check.name(),
            due: Some(now),
        });
        restored.1 += 1;
    }
    restored
}

/// Writes what one firing changed through to the store: a count (for the rest of its window),
/// or a decided ban (kept until written, at most `autoban.ttl`).
fn persist(store: &Store, cfg: &AutobanConfig, change: Change, now: Instant) {
    match change {
        Change::Counted(target, check, count) => {
            let age = now.saturating_duration_since(count.since);
            let record = CountRecord {
                n: count.n,
                since_unix_ms: unix_now_ms()
                    .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            };
            let ttl = cfg.window.saturating_sub(age);
            store.put(Space::Count, &count_id(target, check), &record, ttl);
        }
        Change::Decided(target, check, pending) => {
            store.delete(Space::Count, &count_id(target, check));
            let record = BanRecord {
                target: target.to_string(),
                source: Some(pending.source.to_string()),
                reason: reason_of(pending.check),
                origin: ORIGIN.into(),
                node: store.node().to_string(),
                added_unix_ms: unix_now_ms(),
                expires_unix_ms: None,
            };
            store.put(Space::Pending, &target.to_string(), &record, cfg.ttl);
        }
    }
}

/// Writes what became of a written batch through to the store: a ban in the kernel is a
/// [`BanRecord`] until it expires; banned or allowlisted, it no longer waits.
fn persist_written(store: &Store, written: &[(Ban, Written)]) {
    for (ban, outcome) in written {
        let id = ban.target.to_string();
        match outcome {
            Written::Banned => {
                let now = unix_now_ms();
                let record = BanRecord {
                    target: id.clone(),
                    source: Some(ban.source.to_string()),
                    reason: reason_of(ban.check),
                    origin: ORIGIN.into(),
                    node: store.node().to_string(),
                    added_unix_ms: now,
                    expires_unix_ms: Some(
                        now.saturating_add(u64::try_from(ban.ttl.as_millis()).unwrap_or(u64::MAX)),
                    ),
                };
                store.delete(Space::Pending, &id);
                store.put(Space::Ban, &id, &record, ban.ttl);
            }
            Written::Allowlisted => store.delete(Space::Pending, &id),
            // Kept: the next start tries again.
            Written::Failed(_) => {}
        }
    }
}

/// The event loop of [`run`], writing bans with `write` (a blocking function, run on the
/// blocking pool; the tests give one that stands for a busy data plane).
async fn serve<W>(
    mut config: watch::Receiver<AutobanConfig>,
    write: W,
    mut events: broadcast::Receiver<Event>,
    mut ends: broadcast::Receiver<SessionEnd>,
    metrics: Arc<Metrics>,
    store: Option<Store>,
    mut shutdown: watch::Receiver<bool>,
) -> u64
where
    W: Fn(Vec<Ban>) -> Vec<(Ban, Written)> + Clone + Send + 'static,
{
    let mut tally = Tally::default();
    if let Some(store) = &store {
        let cfg = config.borrow().clone();
        let (counts, bans) = restore(&mut tally, store, &cfg).await;
        if counts + bans > 0 {
            tracing::info!(
                counts,
                waiting_bans = bans,
                "auto-ban: counts and waiting bans taken back from the store"
            );
        }
    }
    let persist = |change: Option<Change>, cfg: &AutobanConfig, now: Instant| {
        if let (Some(store), Some(change)) = (&store, change) {
            persist(store, cfg, change, now);
        }
    };
    let report = |metrics: &Metrics, written: Result<Vec<(Ban, Written)>, JoinError>| {
        if let (Some(store), Ok(written)) = (&store, &written) {
            persist_written(store, written);
        }
        report(metrics, written)
    };
    // The batch being written; the next one waits for it (one lock holder at a time).
    let mut writing: Option<JoinHandle<Vec<(Ban, Written)>>> = None;
    let mut bans = 0;
    // Reloads wake the loop (a smaller track_sources may concern bans already waiting).
    let mut reloads = true;
    loop {
        let track = config.borrow().track_sources;
        if tally.pending.len() >= track {
            // A reload lowered track_sources below the bans waiting: they are written now.
            tally.all_due(Instant::now());
        }
        if writing.is_none() {
            let batch = tally.take_due(Some(Instant::now()), config.borrow().ttl);
            if !batch.is_empty() {
                let write = write.clone();
                writing = Some(tokio::task::spawn_blocking(move || write(batch)));
            }
        }
        // While a batch is written, its end wakes the loop for the next one.
        let next_due = writing.is_none().then(|| tally.next_due()).flatten();
        // A full table of decided bans (all due, waiting for the writer) holds the events back
        // instead of growing: a missed firing costs a count, never a decided ban. Ends wait too,
        // so a session's events are still read before its end.
        let room = tally.pending.len() < track;
        tokio::select! {
            biased;
            written = finished(&mut writing) => {
                writing = None;
                bans += report(&metrics, written);
            }
            // Check events before ends: a session's events are all sent before its end.
            event = events.recv(), if room => match event {
                Ok(event) => {
                    let cfg = config.borrow();
                    let now = Instant::now();
                    persist(tally.fired(&cfg, &event, now), &cfg, now);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "auto-ban fell behind the session events");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            end = ends.recv(), if room => match end {
                Ok(end) => {
                    let cfg = config.borrow();
                    let now = Instant::now();
                    for change in end_session(&mut tally, &cfg, &mut events, end.source, now) {
                        persist(Some(change), &cfg, now);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "auto-ban fell behind the session ends; banning the pending sources now");
                    tally.all_due(Instant::now());
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = sleep_until(next_due) => {}
            changed = config.changed(), if reloads => reloads = changed.is_ok(),
            _ = shutdown.changed() => break,
        }
    }
    // Decided bans are not lost to a restart: they are written now.
    if let Some(batch) = writing.take() {
        bans += report(&metrics, batch.await);
    }
    let batch = tally.take_due(None, config.borrow().ttl);
    if !batch.is_empty() {
        bans += report(
            &metrics,
            tokio::task::spawn_blocking(move || write(batch)).await,
        );
    }
    bans
}

/// A session's end. Its events were all sent before it, but the loop may have found the event
/// channel empty just before both arrived and then polled the ends: the events still waiting are
/// read first, or the ban they decide would wait for a due time that never comes.
fn end_session(
    tally: &mut Tally,
    cfg: &AutobanConfig,
    events: &mut broadcast::Receiver<Event>,
    source: IpAddr,
    now: Instant,
) -> Vec<Change> {
    let mut changes = Vec::new();
    // Bounded like the loop's own reads: a full table holds the rest back (and is all due).
    while tally.pending.len() < cfg.track_sources {
        match events.try_recv() {
            Ok(event) => changes.extend(tally.fired(cfg, &event, now)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "auto-ban fell behind the session events");
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                break;
            }
        }
    }
    tally.session_ended(cfg, source, now);
    changes
}

/// The end of the batch being written (never, when none is).
async fn finished<T>(writing: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match writing {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at` (forever without one).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Logs and counts a written batch; the number of bans written.
fn report(metrics: &Metrics, written: Result<Vec<(Ban, Written)>, JoinError>) -> u64 {
    let written = match written {
        Ok(written) => written,
        Err(e) => {
            tracing::error!(error = %e, "auto-ban task failed");
            return 0;
        }
    };
    let mut bans = 0;
    for (ban, outcome) in written {
        let Ban {
            source,
            target,
            check,
            ttl,
        } = ban;
        match outcome {
            Written::Banned => {
                metrics.ban();
                tracing::info!(%source, %target, check, ttl = %humantime::format_duration(ttl), "source banned in the kernel");
                bans += 1;
            }
            Written::Allowlisted => {
                tracing::info!(%source, check, "not banned: source is allowlisted");
            }
            Written::Failed(error) => {
                tracing::error!(%source, check, %error, "auto-ban failed");
            }
        }
    }
    bans
}

/// What a ban of `source` covers: the address, or its prefix of the configured length.
pub fn ban_target(source: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> Target {
    let prefix = match source {
        IpAddr::V4(_) => ipv4_prefix,
        IpAddr::V6(_) => ipv6_prefix,
    };
    let net = ipnet::IpNet::new(source, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| ipnet::IpNet::from(source));
    // A truncated network is always a valid target (host bits are zero).
    Target::from_net(net).unwrap_or(match source {
        IpAddr::V4(a) => Target::V4(a),
        IpAddr::V6(a) => Target::V6(a),
    })
}

/// Writes a batch of bans under one lock of the data plane, leaving out allowlisted sources.
fn write_bans(dp: &SharedDataplane, bans: Vec<Ban>) -> Vec<(Ban, Written)> {
    let mut dp = match dp.lock() {
        Ok(dp) => dp,
        Err(_) => {
            let error = crate::dataplane::DataplaneError::Poisoned.to_string();
            return bans
                .into_iter()
                .map(|b| (b, Written::Failed(error.clone())))
                .collect();
        }
    };
    // Read once for the batch (a source is allowlisted when a prefix covers it).
    let allowed = dp.allowed().unwrap_or_default();
    bans.into_iter()
        .map(|b| {
            if allowed.iter().any(|r| r.net.contains(&b.source)) {
                return (b, Written::Allowlisted);
            }
            let outcome = match ban(&mut dp, &b) {
                Ok(()) => Written::Banned,
                Err(e) => Written::Failed(e.to_string()),
            };
            (b, outcome)
        })
        .collect()
}

/// Adds one ban to the blocklist.
fn ban(dp: &mut Dataplane, b: &Ban) -> Result<(), crate::dataplane::DataplaneError> {
    let reason = reasons::intern(dp, &format!("autoban: {}", b.check))?;
    dp.block(
        b.target,
        BlockEntry {
            expires_at_ns: clock::expiry_after(Some(b.ttl)),
            added_at_s: clock::unix_now_s(),
            reason,
            origin: origin::AUTOBAN,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(last: u8, check: Check, action: Action) -> Event {
        Event {
            source: IpAddr::from([198, 18, 0, last]),
            check,
            action,
            detail: String::new(),
            permanent: action != Action::Ignore,
        }
    }

    fn config(checks: &[(&str, u32)], track_sources: usize) -> AutobanConfig {
        AutobanConfig {
            checks: checks.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            track_sources,
            ..AutobanConfig::default()
        }
    }

    fn pending_check(tally: &Tally, target: &str) -> Option<&'static str> {
        let target: Target = target.parse().expect("target");
        tally.pending.get(&target).map(|p| p.check)
    }

    #[test]
    fn a_ban_is_decided_after_the_configured_firings_and_never_for_ignore() {
        let cfg = config(&[("relay_attempt", 2), ("pregreet", 1)], 3);
        let mut tally = Tally::default();
        let now = Instant::now();

        tally.fired(&cfg, &event(1, Check::RelayAttempt, Action::Score), now);
        assert!(tally.pending.is_empty(), "one of two relay attempts");
        tally.fired(&cfg, &event(1, Check::RelayAttempt, Action::Score), now);
        assert_eq!(pending_check(&tally, "198.18.0.1"), Some("relay_attempt"));
        assert_eq!(tally.next_due(), None, "waits for the session");

        tally.fired(&cfg, &event(2, Check::Pregreet, Action::Ignore), now);
        tally.fired(&cfg, &event(3, Check::NonSmtp, Action::Drop), now);
        assert_eq!(
            tally.pending.len(),
            1,
            "ignored and unconfigured checks never ban"
        );

        tally.session_ended(&cfg, IpAddr::from([198, 18, 0, 1]), now);
        assert_eq!(tally.next_due(), Some(now + cfg.grace));
        assert!(tally.take_due(Some(now), cfg.ttl).is_empty(), "grace");
        let due = tally.take_due(Some(now + cfg.grace), cfg.ttl);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].check, "relay_attempt");
        assert!(tally.pending.is_empty());
    }

    #[test]
    fn an_ipv6_prober_rotating_inside_its_64_is_counted_on_the_ban_target() {
        let cfg = config(&[("relay_attempt", 3)], 100);
        let mut tally = Tally::default();
        let now = Instant::now();
        for last in 1..=3u16 {
            let e = Event {
                source: IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, last]),
                check: Check::RelayAttempt,
                action: Action::Score,
                detail: String::new(),
                permanent: true,
            };
            tally.fired(&cfg, &e, now);
        }
        assert_eq!(
            pending_check(&tally, "2001:db8::/64"),
            Some("relay_attempt"),
            "three firings inside one /64 ban it"
        );
        // A session of any address of the /64 ending makes the ban due.
        tally.session_ended(&cfg, "2001:db8::99".parse().expect("ip"), now);
        assert_eq!(tally.next_due(), Some(now + cfg.grace));
    }

    #[test]
    fn counts_age_out_after_the_window() {
        let cfg = AutobanConfig {
            window: Duration::from_secs(60),
            ..config(&[("relay_attempt", 2)], 100)
        };
        let mut tally = Tally::default();
        let t0 = Instant::now();
        let e = event(1, Check::RelayAttempt, Action::Score);
        tally.fired(&cfg, &e, t0);
        tally.fired(&cfg, &e, t0 + Duration::from_secs(60));
        assert!(tally.pending.is_empty(), "the first firing aged out");
        tally.fired(&cfg, &e, t0 + Duration::from_secs(119));
        assert_eq!(pending_check(&tally, "198.18.0.1"), Some("relay_attempt"));
    }

    #[test]
    fn a_full_table_of_decided_bans_writes_them_instead_of_forgetting_them() {
        let cfg = config(&[("pregreet", 1)], 3);
        let mut tally = Tally::default();
        let now = Instant::now();
        for last in 10..13 {
            tally.fired(&cfg, &event(last, Check::Pregreet, Action::Drop), now);
        }
        assert_eq!(tally.pending.len(), 3, "bounded, nothing forgotten");
        let due = tally.take_due(Some(now), cfg.ttl);
        let mut written: Vec<String> = due.iter().map(|b| b.target.to_string()).collect();
        written.sort();
        assert_eq!(written, ["198.18.0.10", "198.18.0.11", "198.18.0.12"]);
    }

    #[test]
    fn counts_stay_bounded_under_a_flood_of_distinct_sources() {
        let cfg = config(&[("relay_attempt", 5)], 8);
        let mut tally = Tally::default();
        let now = Instant::now();
        for last in 0..=255 {
            tally.fired(&cfg, &event(last, Check::RelayAttempt, Action::Score), now);
            assert!(tally.counts.len() <= 8, "{} counts", tally.counts.len());
        }
    }

    /// A writer standing for a data plane whose lock is held: each batch waits for a go, then
    /// is recorded as written.
    #[derive(Clone)]
    struct BlockedWriter {
        /// One message per batch allowed through.
        go: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
        /// Every ban written.
        written: Arc<std::sync::Mutex<Vec<Ban>>>,
    }

    impl BlockedWriter {
        fn write(&self, bans: Vec<Ban>) -> Vec<(Ban, Written)> {
            if let Ok(go) = self.go.lock() {
                let _ = go.recv();
            }
            if let Ok(mut written) = self.written.lock() {
                written.extend(bans.iter().copied());
            }
            bans.into_iter().map(|b| (b, Written::Banned)).collect()
        }
    }

    /// The auto-ban loop running on a [`BlockedWriter`], with every channel a test drives it by.
    struct Running {
        /// Reloads.
        config: watch::Sender<AutobanConfig>,
        /// Check firings.
        events: crate::events::EventSender,
        /// Session ends.
        ends: crate::events::EndSender,
        /// Stops the loop.
        stop: watch::Sender<bool>,
        /// Lets one blocked write through per message.
        go: std::sync::mpsc::Sender<()>,
        /// Every ban written.
        written: Arc<std::sync::Mutex<Vec<Ban>>>,
        /// The loop; returns how many bans it wrote.
        task: tokio::task::JoinHandle<u64>,
    }

    impl Running {
        /// Starts the loop with `cfg`; every write waits for a go.
        fn start(cfg: AutobanConfig) -> Self {
            let (config, config_rx) = watch::channel(cfg);
            let (events, events_rx) = crate::events::channel();
            let (ends, ends_rx) = crate::events::ends_channel();
            let (stop, stop_rx) = watch::channel(false);
            let (go, go_rx) = std::sync::mpsc::channel();
            let writer = BlockedWriter {
                go: Arc::new(std::sync::Mutex::new(go_rx)),
                written: Arc::default(),
            };
            let written = writer.written.clone();
            let task = tokio::spawn(serve(
                config_rx,
                move |bans| writer.write(bans),
                events_rx,
                ends_rx,
                Arc::new(Metrics::new()),
                None,
                stop_rx,
            ));
            Self {
                config,
                events,
                ends,
                stop,
                go,
                written,
                task,
            }
        }

        /// Lets writes through until `count` bans are written.
        async fn until_written(&self, what: &str, count: usize) {
            let all = |w: &Arc<std::sync::Mutex<Vec<Ban>>>| w.lock().map(|w| w.len()).unwrap_or(0);
            until(what, || {
                let _ = self.go.send(());
                all(&self.written) == count
            })
            .await;
        }

        /// Stops the loop; how many bans it wrote.
        async fn stop(self) -> u64 {
            let _ = self.stop.send(true);
            drop(self.go);
            self.task.await.expect("auto-ban task")
        }
    }

    /// Waits (yielding) until `done` holds, for at most 10 s.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_data_plane_never_loses_ban_decisions() {
        let offenders = crate::events::EVENT_BUFFER + 1000;
        let cfg = AutobanConfig {
            grace: Duration::ZERO,
            ..config(&[("pregreet", 1)], offenders * 2)
        };
        let run = Running::start(cfg);
        let offend = |i: usize| {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0xC612_0000 + i as u32));
            let _ = run.events.send(Event {
                source,
                check: Check::Pregreet,
                action: Action::Drop,
                detail: String::new(),
                permanent: true,
            });
            let _ = run.ends.send(SessionEnd {
                source,
                verdict: crate::events::SessionVerdict::Dropped,
                delivered: 0,
                checks: vec!["pregreet"],
            });
        };
        // The first ban's write blocks (the lock is held elsewhere)...
        offend(0);
        until("the first event to be read", || {
            run.events.is_empty() && run.ends.is_empty()
        })
        .await;
        // ...while more offenders than the event buffer holds keep coming; the loop reads them.
        for chunk in (1..offenders).collect::<Vec<_>>().chunks(500) {
            for &i in chunk {
                offend(i);
            }
            until(
                "the loop to read the events while the write is blocked",
                || run.events.is_empty() && run.ends.is_empty(),
            )
            .await;
        }
        // The lock is free again: every decided ban is written.
        run.until_written("every ban to be written", offenders)
            .await;
        assert_eq!(run.stop().await, offenders as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_below_the_waiting_bans_writes_them() {
        let run = Running::start(config(&[("pregreet", 1)], 10));
        // Two bans wait for sessions that have not ended...
        for last in 1..=2 {
            let _ = run.events.send(event(last, Check::Pregreet, Action::Drop));
        }
        until("the events to be read", || run.events.is_empty()).await;
        // ...when a reload makes the table smaller than that: they are written, not stuck.
        run.config.send_modify(|c| c.track_sources = 1);
        run.until_written("both bans to be written", 2).await;
        assert_eq!(run.stop().await, 2);
    }

    #[test]
    fn an_end_read_before_its_sessions_events_still_makes_the_ban_due() {
        // The race CI once lost: the loop polled the (empty) event channel, the session then sent
        // its event and its end, and the loop's next branch read the end first.
        let cfg = AutobanConfig {
            grace: Duration::ZERO,
            ..config(&[("pregreet", 1)], 10)
        };
        let (events, mut events_rx) = crate::events::channel();
        events
            .send(event(1, Check::Pregreet, Action::Drop))
            .expect("a receiver");
        let mut tally = Tally::default();
        let now = Instant::now();
        end_session(
            &mut tally,
            &cfg,
            &mut events_rx,
            IpAddr::from([198, 18, 0, 1]),
            now,
        );
        assert_eq!(
            tally.next_due(),
            Some(now),
            "the ban is due at the session's end"
        );
        assert!(events_rx.is_empty(), "the event was read with the end");
    }

    #[test]
    fn a_check_that_only_scored_never_bans() {
        // Issue 10 section 1.3: a score-action check leads at most to a 4xx; that never bans.
        let config = AutobanConfig {
            checks: [("helo_dynamic".to_string(), 1)].into_iter().collect(),
            ..AutobanConfig::default()
        };
        let mut tally = Tally::default();
        let mut scored = event(1, Check::HeloDynamic, Action::Score);
        scored.permanent = false;
        tally.fired(&config, &scored, Instant::now());
        assert!(tally.pending.is_empty(), "a scored check is not a refusal");
    }

    /// A started embedded store in a temp dir, its writer running.
    fn store_in(dir: &std::path::Path) -> (Store, watch::Sender<bool>, JoinHandle<usize>) {
        let cfg = crate::store::StoreConfig {
            path: dir.join("state.redb"),
            ..crate::store::StoreConfig::default()
        };
        let (store, writer) = crate::store::Opened::open(&cfg)
            .expect("open")
            .expect("embedded")
            .start(Arc::new(Metrics::new()))
            .expect("start");
        let (stop, stop_rx) = watch::channel(false);
        (store, stop, tokio::spawn(writer.run(stop_rx)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_and_waiting_bans_survive_a_restart_through_the_store() {
        let dir = std::env::temp_dir().join(format!("sgw-ab-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = config(&[("relay_attempt", 3), ("pregreet", 1)], 100);
        let now = Instant::now();
        {
            let (store, stop, writer) = store_in(&dir);
            let mut tally = Tally::default();
            for e in [
                event(1, Check::RelayAttempt, Action::Score),
                event(1, Check::RelayAttempt, Action::Score),
                event(2, Check::Pregreet, Action::Drop),
                event(3, Check::Pregreet, Action::Drop),
            ] {
                if let Some(change) = tally.fired(&cfg, &e, now) {
                    persist(&store, &cfg, change, now);
                }
            }
            // .3's ban was written: it no longer waits, and is stored as a ban record.
            let ban = Ban {
                source: IpAddr::from([198, 18, 0, 3]),
                target: "198.18.0.3".parse().expect("target"),
                check: "pregreet",
                ttl: cfg.ttl,
            };
            persist_written(&store, &[(ban, Written::Banned)]);
            // Hostile entries written behind auto-ban's back are skipped on load.
            let junk = CountRecord {
                n: 1,
                since_unix_ms: unix_now_ms(),
            };
            for id in [
                "not-a-target#pregreet",
                "198.18.0.9#no_such_check",
                "no-separator",
            ] {
                store.put(Space::Count, id, &junk, Duration::from_secs(60));
            }
            store.put(
                Space::Pending,
                "198.18.0.8",
                &"garbage",
                Duration::from_secs(60),
            );
            drop(store);
            let _ = stop.send(true);
            assert_eq!(writer.await.expect("writer"), 0, "every write flushed");
        }
        let (store, stop, writer) = store_in(&dir);
        let mut tally = Tally::default();
        assert_eq!(restore(&mut tally, &store, &cfg).await, (1, 1));
        let relay = (
            "198.18.0.1".parse::<Target>().expect("target"),
            Check::RelayAttempt,
        );
        assert_eq!(tally.counts.get(&relay).map(|c| c.n), Some(2));
        assert_eq!(pending_check(&tally, "198.18.0.2"), Some("pregreet"));
        assert!(
            tally.next_due().is_some(),
            "a waiting ban is due at once after a restart"
        );
        // The third relay attempt after the restart decides the ban.
        tally.fired(
            &cfg,
            &event(1, Check::RelayAttempt, Action::Score),
            Instant::now(),
        );
        assert_eq!(pending_check(&tally, "198.18.0.1"), Some("relay_attempt"));
        let record = store
            .get::<BanRecord>(Space::Ban, "198.18.0.3")
            .await
            .expect("get")
            .expect("the written ban is stored");
        assert_eq!(
            (record.origin.as_str(), record.reason.as_str()),
            ("autoban", "autoban: pregreet")
        );
        assert_eq!(record.node, store.node());
        drop(store);
        let _ = stop.send(true);
        let _ = writer.await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bans_cover_the_configured_prefix() {
        let cases = [
            ("198.18.0.7", 32, 64, "198.18.0.7"),
            ("198.18.0.7", 24, 64, "198.18.0.0/24"),
            ("2001:db8::7", 32, 64, "2001:db8::/64"),
            ("2001:db8::7", 32, 128, "2001:db8::7"),
            ("2001:db8:1:2:3:4:5:6", 32, 48, "2001:db8:1::/48"),
        ];
        for (source, v4, v6, want) in cases {
            let got = ban_target(source.parse().unwrap(), v4, v6);
            assert_eq!(got.to_string(), want, "{source} /{v4} /{v6}");
        }
    }

    #[test]
    fn durations_and_counts_are_bounded() {
        for (cfg, key) in [
            (
                AutobanConfig {
                    window: MAX_WINDOW + Duration::from_secs(1),
                    ..AutobanConfig::default()
                },
                "autoban.window",
            ),
            (
                AutobanConfig {
                    ttl: MAX_TTL + Duration::from_secs(1),
                    ..AutobanConfig::default()
                },
                "autoban.ttl",
            ),
            (
                config(&[("relay_attempt", MAX_FIRINGS + 1)], 10),
                "autoban.checks.relay_attempt",
            ),
            (
                config(&[("relay_attempt", 1)], MAX_TRACK_SOURCES + 1),
                "autoban.track_sources",
            ),
        ] {
            let err = cfg.validate().expect_err(key);
            assert_eq!(err.key, key);
            assert!(err.reason.starts_with("must be at most"), "{err}");
        }
    }

    #[test]
    fn prefix_lengths_are_validated() {
        for (v4, v6, ok) in [
            (32, 64, true),
            (7, 64, false),
            (32, 31, false),
            (33, 64, false),
        ] {
            let cfg = AutobanConfig {
                ipv4_prefix: v4,
                ipv6_prefix: v6,
                ..AutobanConfig::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "/{v4} /{v6}");
        }
    }
}

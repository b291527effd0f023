//! The auto-ban's state in the store: counts and waiting bans written through
//! ([`persist`]) and taken back at start ([`restore`]), and a [`BanRecord`] for every ban
//! written (target, reason, origin node, expiry) for the fleet.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    AutobanConfig,
    tally::{Change, Count, Pending, Tally},
    write::{Ban, Written},
};
use crate::{
    checks::Check,
    dataplane::Target,
    store::{BanRecord, Space, Store, StoreError, records::unix_now_ms},
};

/// A count as stored (`count/<target>#<check>`), aging out with `autoban.window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CountRecord {
    /// Firings counted.
    pub(super) n: u32,
    /// The first firing counted, Unix milliseconds.
    pub(super) since_unix_ms: u64,
}

/// The store id of a count: `<target>#<check>`.
pub(super) fn count_id(target: Target, check: Check) -> String {
    format!("{target}#{}", check.name())
}

/// The origin of auto-ban records in the store.
pub(super) const ORIGIN: &str = "autoban";

/// The reason written with a ban decided by `check`.
pub(super) fn reason_of(check: &str) -> String {
    format!("autoban: {check}")
}

/// Takes back the counts and waiting bans kept by the store (at start, before any event):
/// counts still inside the window, and every waiting ban, due at once (its session ended with
/// the previous run). The store's values are hostile: unknown targets and checks are skipped,
/// and `autoban.track_sources` bounds both tables. Returns (counts, bans) taken back.
pub(super) async fn restore(
    tally: &mut Tally,
    store: &Store,
    cfg: &AutobanConfig,
) -> (usize, usize) {
    let counts = match store.load::<CountRecord>(Space::Count).await {
        Ok(c) => c,
        Err(StoreError::Stopping) => return (0, 0),
        Err(e) => {
            tracing::warn!(error = %e, "auto-ban: counts not loaded from the store");
            Vec::new()
        }
    };
    let pending = match store.load::<BanRecord>(Space::Pending).await {
        Ok(p) => p,
        Err(StoreError::Stopping) => return (0, 0),
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
    let mut refused = 0usize;
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
        // Only what this gateway's auto-ban would have decided: its own record (a shared Redis
        // holds every node's), on the target its prefix lengths make of the source (never
        // wider). Anything else would go to the kernel as this node's own ban, past every limit
        // a fleet record meets.
        if !own_waiting_ban(&record, target, source, store.node(), cfg) {
            refused += 1;
            continue;
        }
        tally.pending.entry(target).or_insert(Pending {
            source,
            check: check.name(),
            due: Some(now),
        });
        restored.1 += 1;
    }
    if refused > 0 {
        tracing::warn!(
            refused,
            "auto-ban: waiting bans in the store that this gateway did not decide (another node's, \
             or a target its prefix lengths do not make) were not taken back"
        );
    }
    restored
}

/// Whether a waiting ban read from the store is one this gateway's auto-ban decided: written
/// by `node`, on the target `autoban.ipv4_prefix`/`ipv6_prefix` make of its `source` (so never
/// wider than those: `0.0.0.0/1` or `127.0.0.0/8` is no auto-ban's target).
fn own_waiting_ban(
    record: &BanRecord,
    target: Target,
    source: IpAddr,
    node: &str,
    cfg: &AutobanConfig,
) -> bool {
    record.node == node
        && super::tally::ban_target(source.to_canonical(), cfg.ipv4_prefix, cfg.ipv6_prefix)
            == target
}

/// Writes what one firing changed through to the store: a count (for the rest of its window),
/// or a decided ban (kept until written, at most `autoban.ttl`). A fleet's counts are its shared
/// counters (`fleet.rs`), not this gateway's.
pub(super) fn persist(store: &Store, cfg: &AutobanConfig, change: Change, now: Instant) {
    match change {
        Change::Counted(..) if store.fleet() => {}
        Change::Counted(target, check, count, _) => {
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
pub(super) fn persist_written(store: &Store, written: &[(Ban, Written)]) {
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

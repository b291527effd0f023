//! This gateway's own bans that the fleet holds no record of: entries that `block import` (or a
//! `block add` without the daemon) wrote straight into the pinned maps, and every ban of this
//! node after Redis lost its data. At each reconcile they become ban records (origin, reason,
//! remaining TTL, this node), written — and so published — through the store, and every other
//! gateway applies them. Only this node's origins are published (`cli`, `import`, `autoban`):
//! a `fleet` entry is someone else's, and CrowdSec decisions come to every node from its LAPI.
//! A target whose deletion the fleet remembers (`unban/<target>`) is left alone.
//!
//! The allowlist likewise: this node's operator entries (origin `cli`) without a record become
//! allowlist records, unless their deletion is remembered (`unallow/<target>`). Entries of the
//! configuration file stay each node's own (every node reads its own `dataplane.allowlist`).

use std::{collections::HashSet, time::Duration};

use smtp_gateway_common::origin;

use crate::{
    dataplane::{Dataplane, DataplaneError, Target, clock, reasons},
    store::{BanRecord, records::unix_now_ms},
};

/// The origins whose entries this node publishes.
const PUBLISHED: [u32; 3] = [origin::CLI, origin::IMPORT, origin::AUTOBAN];

/// Up to `limit` active entries of this node's origins whose target is neither in `recorded`
/// (the stored ban records) nor in `deleted` (remembered deletions), as records to store with
/// their TTL (`permanent` for an entry that never expires).
pub fn unrecorded(
    dp: &Dataplane,
    recorded: &HashSet<String>,
    deleted: &HashSet<String>,
    node: &str,
    limit: usize,
    permanent: Duration,
) -> Result<Vec<(BanRecord, Duration)>, DataplaneError> {
    let now = clock::monotonic_ns();
    let unix_now = unix_now_ms();
    let mut out = Vec::new();
    for record in dp.blocked()? {
        if out.len() >= limit {
            break;
        }
        let entry = record.entry;
        if !PUBLISHED.contains(&entry.origin) || !entry.is_active(now) {
            continue;
        }
        let target = record.target.to_string();
        if recorded.contains(&target) || deleted.contains(&target) {
            continue;
        }
        let left = clock::remaining(entry.expires_at_ns, now);
        let ttl = left.unwrap_or(permanent).min(permanent);
        if ttl.is_zero() {
            continue;
        }
        out.push((
            BanRecord {
                target,
                source: None,
                reason: reasons::resolve(dp, entry.reason).unwrap_or_default(),
                origin: origin::name(entry.origin).into(),
                node: node.into(),
                added_unix_ms: entry.added_at_s.saturating_mul(1000),
                expires_unix_ms: left.map(|d| {
                    unix_now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                }),
            },
            ttl,
        ));
    }
    Ok(out)
}

/// Up to `limit` of this node's operator allowlist entries (origin `cli`) whose target is neither
/// in `recorded` (the stored allowlist records) nor in `deleted` (remembered deletions), as
/// records to store for `permanent` (an allowlist entry never expires).
pub fn unrecorded_allows(
    dp: &Dataplane,
    recorded: &HashSet<String>,
    deleted: &HashSet<String>,
    node: &str,
    limit: usize,
    permanent: Duration,
) -> Result<Vec<(BanRecord, Duration)>, DataplaneError> {
    let mut out = Vec::new();
    for record in dp.allowed()? {
        if out.len() >= limit {
            break;
        }
        if record.entry.origin != origin::CLI {
            continue;
        }
        let Ok(target) = Target::from_net(record.net) else {
            continue;
        };
        let target = target.to_string();
        if recorded.contains(&target) || deleted.contains(&target) {
            continue;
        }
        out.push((
            BanRecord {
                target,
                source: None,
                reason: reasons::resolve(dp, record.entry.reason).unwrap_or_default(),
                origin: origin::name(record.entry.origin).into(),
                node: node.into(),
                added_unix_ms: record.entry.added_at_s.saturating_mul(1000),
                expires_unix_ms: None,
            },
            permanent,
        ));
    }
    Ok(out)
}

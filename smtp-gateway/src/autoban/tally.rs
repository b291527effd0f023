//! The counting and the decided bans ([`Tally`]), without I/O: the caller gives the time and
//! the section. Firings are counted on the ban target ([`ban_target`]: the address, or the
//! prefix a ban covers), so every address a ban would cover counts towards it.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{AutobanConfig, write::Ban};
use crate::{
    checks::{Action, Check},
    dataplane::Target,
    events::Event,
};

/// Firings of one check by one ban target, inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Count {
    /// Firings counted since `since`.
    pub(super) n: u32,
    /// The first firing counted: the count starts over once this is `window` old.
    pub(super) since: Instant,
}

/// What one firing changed in a [`Tally`] (to write through to the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// A count grew.
    Counted(Target, Check, Count, IpAddr),
    /// A ban was decided (the count is gone).
    Decided(Target, Check, Pending),
}

/// A ban decided, waiting for the offending session to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pending {
    /// The address whose firing decided the ban (checked against the allowlist, logged).
    pub(super) source: IpAddr,
    /// The check that decided it (the reason written with the ban).
    pub(super) check: &'static str,
    /// Set when a session of the target ended (or the table filled up): the ban is written then.
    pub(super) due: Option<Instant>,
}

/// The counting and the decided bans, without I/O: the caller gives the time and the section.
/// Both tables are keyed by the ban target, so every address a ban would cover counts towards it.
#[derive(Default)]
pub(super) struct Tally {
    /// Firings per ban target and check, inside `autoban.window`.
    pub(super) counts: HashMap<(Target, Check), Count>,
    /// Bans decided and not yet handed to the writer (at most `autoban.track_sources`).
    pub(super) pending: HashMap<Target, Pending>,
}

impl Tally {
    /// Counts a fired check; once it fired the configured number of times inside the window for
    /// one ban target, the target's ban is pending. A full table of pending bans makes all of
    /// them due at once (they are written, never forgotten).
    pub(super) fn fired(
        &mut self,
        cfg: &AutobanConfig,
        event: &Event,
        now: Instant,
    ) -> Option<Change> {
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
            return Some(Change::Counted(target, event.check, *count, event.source));
        }
        self.counts.remove(&(target, event.check));
        self.decide(cfg, target, event.check, event.source, None, now)
    }

    /// The ban of `target` is decided (by its local count, or by the fleet's count of `check`
    /// that `source`'s firing completed), due at `due` or when a session of the target ends.
    /// A ban already waiting for the target stays as it was (only its due time may come).
    pub(super) fn decide(
        &mut self,
        cfg: &AutobanConfig,
        target: Target,
        check: Check,
        source: IpAddr,
        due: Option<Instant>,
        now: Instant,
    ) -> Option<Change> {
        self.counts.remove(&(target, check));
        let mut decided = None;
        let pending = self.pending.entry(target).or_insert_with(|| {
            let p = Pending {
                source,
                check: check.name(),
                due: None,
            };
            decided = Some(Change::Decided(target, check, p));
            p
        });
        if let Some(due) = due {
            pending.due.get_or_insert(due);
        }
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
    pub(super) fn session_ended(&mut self, cfg: &AutobanConfig, source: IpAddr, now: Instant) {
        let target = ban_target(source, cfg.ipv4_prefix, cfg.ipv6_prefix);
        if let Some(p) = self.pending.get_mut(&target) {
            p.due.get_or_insert(now + cfg.grace);
        }
    }

    /// Every pending ban is due now (session ends were missed, or the table is full).
    pub(super) fn all_due(&mut self, now: Instant) {
        for p in self.pending.values_mut() {
            p.due.get_or_insert(now);
        }
    }

    /// When the next pending ban is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.pending.values().filter_map(|p| p.due).min()
    }

    /// Takes the bans due at `now` (all of them with `now = None`), for the writer.
    pub(super) fn take_due(&mut self, now: Option<Instant>, ttl: Duration) -> Vec<Ban> {
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

//! The decisions in force and how they reach the kernel blocklist.
//!
//! A ban decision becomes a blocklist entry of origin `crowdsec`, reason `crowdsec: <scenario>`,
//! expiring with the decision. Several decisions may cover one target: it stays blocked until
//! the last of them is deleted (or expires, which the kernel entry does by itself). An entry the
//! operator or another feature wrote (`block add`, an import, auto-ban) is never replaced nor
//! removed by CrowdSec. After a start (or a change of LAPI), the first answer holds every
//! decision in force: entries of origin `crowdsec` it no longer holds (deleted while the gateway
//! was down) are removed. An allowlisted source is written like any other; the XDP program never
//! drops what the allowlist covers.

use std::collections::{BTreeSet, HashMap};

use smtp_gateway_common::{BlockEntry, origin};

use super::stream::{Decision, DecisionStream, Meaning};
use crate::dataplane::{Dataplane, DataplaneError, Target, clock, reasons};

/// The decisions the gateway applied, by id and by target.
#[derive(Debug, Default)]
pub struct Bouncer {
    /// The target of each decision id.
    by_id: HashMap<i64, Target>,
    /// The decision ids holding each target.
    by_target: HashMap<Target, BTreeSet<i64>>,
    /// The next poll must ask for every decision in force (`startup=true`).
    startup: bool,
}

/// What one answer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Entries written (new, or a later expiry).
    pub banned: usize,
    /// Entries removed (their last decision deleted, or gone at a startup answer).
    pub removed: usize,
    /// Decisions not for the blocklist, malformed, or over `crowdsec.max_decisions`.
    pub ignored: usize,
    /// Decisions on a target that holds an entry of another origin (left as it is).
    pub kept: usize,
    /// Map operations that failed.
    pub failed: usize,
}

impl Bouncer {
    /// No decision known; the first poll asks for all of them.
    pub fn new() -> Self {
        Self {
            startup: true,
            ..Self::default()
        }
    }

    /// Whether the next poll must ask for every decision in force.
    pub fn needs_startup(&self) -> bool {
        self.startup
    }

    /// The next poll asks for every decision in force again (another LAPI, or a failed
    /// startup answer).
    pub fn restart(&mut self) {
        self.startup = true;
    }

    /// Decisions tracked.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Applies one answer of the stream to `dp`; `startup`: it holds every decision in force.
    /// Returns what it did and the first map error, if any.
    pub fn apply(
        &mut self,
        dp: &mut Dataplane,
        stream: DecisionStream,
        startup: bool,
        max_decisions: usize,
    ) -> (Applied, Option<DataplaneError>) {
        let mut done = Applied::default();
        let mut first_error = None;
        let mut fail = |done: &mut Applied, e: DataplaneError| {
            done.failed += 1;
            first_error.get_or_insert(e);
        };
        if startup {
            self.by_id.clear();
            self.by_target.clear();
        }
        // Decisions past crowdsec.max_decisions in the answer itself were never held.
        done.ignored += stream.skipped;
        // The entries of deleted decisions go in one batch (their reasons freed in one walk).
        let mut doomed = Vec::new();
        for decision in stream.deleted.unwrap_or_default() {
            match self.forget(dp, decision.id) {
                Ok(Some(target)) => doomed.push(target),
                Ok(None) => {}
                Err(e) => fail(&mut done, e),
            }
        }
        match dp.unblock_many(&doomed) {
            Ok(n) => done.removed += n,
            Err(e) => fail(&mut done, e),
        }
        for decision in stream.new.unwrap_or_default() {
            match self.ban(dp, &decision, max_decisions) {
                Ok(Outcome::Banned) => done.banned += 1,
                Ok(Outcome::Kept) => done.kept += 1,
                Ok(Outcome::Known) => {}
                Ok(Outcome::Ignored(why)) => {
                    done.ignored += 1;
                    if let Some(why) = why {
                        tracing::debug!(id = decision.id, value = %decision.value, why, "CrowdSec decision ignored");
                    }
                }
                Err(e) => fail(&mut done, e),
            }
        }
        if startup {
            match self.remove_stale(dp) {
                Ok(n) => done.removed += n,
                Err(e) => fail(&mut done, e),
            }
            self.startup = false;
        }
        (done, first_error)
    }

    /// Applies one new decision.
    fn ban(
        &mut self,
        dp: &mut Dataplane,
        decision: &Decision,
        max_decisions: usize,
    ) -> Result<Outcome, DataplaneError> {
        let (target, ttl) = match decision.meaning() {
            Meaning::Ban { target, ttl } => (target, ttl),
            Meaning::NotOurs => return Ok(Outcome::Ignored(None)),
            Meaning::Invalid(why) => return Ok(Outcome::Ignored(Some(why))),
        };
        if self.by_id.get(&decision.id) == Some(&target) {
            // Seen before (a repeated answer): the entry is written already.
            return Ok(Outcome::Known);
        }
        if self.by_id.len() >= max_decisions && !self.by_id.contains_key(&decision.id) {
            return Ok(Outcome::Ignored(Some(
                "crowdsec.max_decisions reached".into(),
            )));
        }
        let expires_at_ns = clock::expiry_after(Some(ttl));
        let existing = dp.block_entry(target)?;
        // An active entry of another origin is the operator's (or auto-ban's) to manage.
        let owned = !existing.is_some_and(|e| e.origin != origin::CROWDSEC && active(&e));
        self.track(decision.id, target);
        if !owned {
            return Ok(Outcome::Kept);
        }
        if let Some(entry) = existing
            && entry.origin == origin::CROWDSEC
            && entry.expires_at_ns >= expires_at_ns
        {
            // Another decision keeps the target blocked longer.
            return Ok(Outcome::Known);
        }
        let reason = reasons::intern(dp, &decision.reason())?;
        dp.block(
            target,
            BlockEntry {
                expires_at_ns,
                added_at_s: clock::unix_now_s(),
                reason,
                origin: origin::CROWDSEC,
            },
        )?;
        Ok(Outcome::Banned)
    }

    /// Notes that decision `id` holds `target`.
    fn track(&mut self, id: i64, target: Target) {
        if let Some(old) = self.by_id.insert(id, target)
            && old != target
            && let Some(ids) = self.by_target.get_mut(&old)
        {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_target.remove(&old);
            }
        }
        self.by_target.entry(target).or_default().insert(id);
    }

    /// Forgets deleted decision `id`; returns its target when it was the last decision holding
    /// it and the entry is CrowdSec's (the caller removes those entries together).
    fn forget(&mut self, dp: &Dataplane, id: i64) -> Result<Option<Target>, DataplaneError> {
        let Some(target) = self.by_id.remove(&id) else {
            return Ok(None);
        };
        let Some(ids) = self.by_target.get_mut(&target) else {
            return Ok(None);
        };
        ids.remove(&id);
        if !ids.is_empty() {
            return Ok(None);
        }
        self.by_target.remove(&target);
        Ok(match dp.block_entry(target)? {
            Some(entry) if entry.origin == origin::CROWDSEC => Some(target),
            _ => None,
        })
    }

    /// Removes the entries of origin `crowdsec` no decision in force holds.
    fn remove_stale(&mut self, dp: &mut Dataplane) -> Result<usize, DataplaneError> {
        let stale: Vec<Target> = dp
            .blocked()?
            .into_iter()
            .filter(|r| {
                r.entry.origin == origin::CROWDSEC && !self.by_target.contains_key(&r.target)
            })
            .map(|r| r.target)
            .collect();
        dp.unblock_many(&stale)
    }
}

/// What one new decision did.
enum Outcome {
    /// Its entry was written.
    Banned,
    /// Its target has an entry of another origin, left as it is.
    Kept,
    /// Already applied (or a longer one of CrowdSec's covers it).
    Known,
    /// Not applied (and why, when it is worth a log line).
    Ignored(Option<String>),
}

/// Whether `entry` still drops (never expires, or expires later).
fn active(entry: &BlockEntry) -> bool {
    entry.expires_at_ns == 0 || entry.expires_at_ns > clock::monotonic_ns()
}

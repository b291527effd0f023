//! Counting across a fleet. With a shared store (`store.fleet`), every firing this gateway
//! counts is also added to one counter per ban target and check in Redis ([`Store::incr`]:
//! `INCR`, living `autoban.window` from the first firing anywhere). A bot that fails a check on
//! one MX and then tries another is counted once across the fleet: the gateway whose firing
//! brings the shared count to the configured number decides the ban, and the fleet's ban
//! propagation drops it on every gateway.
//!
//! The increments run off the event loop (a store never delays it); their answers come back on
//! a bounded channel. A session may end before its firing's answer arrives: the targets with an
//! answer still out remember whether one of their sessions ended meanwhile, so a ban decided on
//! an answer is due at once then, and otherwise when the session ends (as a local decision).
//! A store that does not answer costs nothing but the shared count: the local count still bans.

use std::{collections::HashMap, net::IpAddr};

use tokio::sync::mpsc;

use super::{AutobanConfig, store::count_id};
use crate::{
    checks::Check,
    dataplane::Target,
    store::{Space, Store},
};

/// The shared count of one firing, as the store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counted {
    /// The ban target counted.
    pub(super) target: Target,
    /// The check that fired.
    pub(super) check: Check,
    /// The address whose firing it was.
    pub(super) source: IpAddr,
    /// The fleet's count after this firing; `None` when the store failed (logged, counted).
    pub(super) total: Option<u64>,
}

impl Counted {
    /// Whether the fleet's count reaches what its check needs (with auto-ban on and the check
    /// configured).
    pub(super) fn reaches(&self, cfg: &AutobanConfig) -> bool {
        match (cfg.checks.get(self.check.name()), self.total) {
            (Some(needed), Some(total)) => cfg.enabled && total >= u64::from(*needed),
            _ => false,
        }
    }
}

/// Increments whose answer is still out, per ban target.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    /// Answers still out.
    n: usize,
    /// A session of the target ended since the first of them was sent.
    ended: bool,
}

/// The fleet counter of one auto-ban loop.
pub(super) struct FleetCounter {
    /// The shared store.
    store: Store,
    /// Where the answers go (the loop reads them).
    answers: mpsc::Sender<Counted>,
    /// Targets with answers still out (at most `autoban.track_sources`).
    in_flight: HashMap<Target, InFlight>,
}

impl FleetCounter {
    /// A counter on `store` when it is shared by a fleet (`None` otherwise), and the channel its
    /// answers come back on (`track` answers at most wait there).
    pub(super) fn new(
        store: Option<&Store>,
        track: usize,
    ) -> (Option<Self>, Option<mpsc::Receiver<Counted>>) {
        match store.filter(|s| s.fleet()) {
            Some(store) => {
                let (answers, rx) = mpsc::channel(track.max(1));
                let counter = Self {
                    store: store.clone(),
                    answers,
                    in_flight: HashMap::new(),
                };
                (Some(counter), Some(rx))
            }
            None => (None, None),
        }
    }

    /// Adds one firing of `check` by `source` (counted on `target`) to the fleet's count, for
    /// `window` from the first firing. Never waits: the answer comes on the channel. With
    /// `track` targets already waiting for answers, the firing counts locally only.
    pub(super) fn count(
        &mut self,
        target: Target,
        check: Check,
        source: IpAddr,
        window: std::time::Duration,
        track: usize,
    ) {
        if self.in_flight.len() >= track && !self.in_flight.contains_key(&target) {
            return;
        }
        let permit = match self.answers.clone().try_reserve_owned() {
            Ok(permit) => permit,
            // The loop is behind on answers: this firing counts locally only.
            Err(_) => return,
        };
        let entry = self.in_flight.entry(target).or_default();
        entry.n += 1;
        let store = self.store.clone();
        tokio::spawn(async move {
            let total = match store
                .incr(Space::FleetCount, &count_id(target, check), window)
                .await
            {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(%target, check = check.name(), error = %e, "auto-ban: fleet count not updated");
                    None
                }
            };
            permit.send(Counted {
                target,
                check,
                source,
                total,
            });
        });
    }

    /// A session of `target` ended: an answer still out decides a ban that is due at once.
    pub(super) fn session_ended(&mut self, target: Target) {
        if let Some(entry) = self.in_flight.get_mut(&target) {
            entry.ended = true;
        }
    }

    /// An answer came back: whether a session of its target ended while it was out.
    pub(super) fn answered(&mut self, counted: &Counted) -> bool {
        let Some(entry) = self.in_flight.get_mut(&counted.target) else {
            return false;
        };
        let ended = entry.ended;
        entry.n = entry.n.saturating_sub(1);
        if entry.n == 0 {
            self.in_flight.remove(&counted.target);
        }
        ended
    }

    /// A ban of `target` for `check` was decided: its shared count starts over.
    pub(super) fn decided(&self, target: Target, check: Check) {
        self.store
            .delete(Space::FleetCount, &count_id(target, check));
    }
}

//! The log of the records of other nodes this node refuses (`apply::refusal`: too wide, or a
//! ban on reserved addresses). Such a record comes back at every reconcile, and a bad node may
//! publish many: each is told once while it stays refused, and the warnings are throttled — the
//! end of a reconcile may write one line, a message one line per `store.fleet_reconcile_interval`
//! — each line naming the first new refusal (target, node, why) and counting the others. The
//! memory of what was told is bounded by `store.load_limit` and forgets, at each complete
//! reconcile, what was not refused since the one before (a record deleted, then written again,
//! is told again).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use super::apply::Refused;
use crate::{dataplane::Target, store::records::FleetList};

/// What the log line of a [`Line`] says of the node: the record's text, cut to this many
/// characters (a node name has at most `store::config::MAX_NAME_BYTES` bytes; a longer one is
/// hostile).
const NODE_CHARS: usize = crate::store::config::MAX_NAME_BYTES;

/// One warning to write: the first new refusal and how many others are new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The first refusal not told yet.
    pub first: Refused,
    /// Further refusals not told yet (not named).
    pub more: usize,
}

impl Line {
    /// Writes the warning.
    pub fn log(&self) {
        let node: String = self.first.node.chars().take(NODE_CHARS).collect();
        tracing::warn!(
            record = %self.first.target,
            list = ?self.first.list,
            node = ?node,
            more_refused = self.more,
            "fleet: record of another gateway refused, {}; the record stays in Redis",
            self.first.why
        );
    }
}

/// Refusals told, and those waiting for their line.
#[derive(Debug)]
pub struct RefusalLog {
    /// Refused records already told (named or counted), by list and target.
    told: HashSet<(FleetList, Target)>,
    /// Refused records seen since the last complete reconcile.
    seen: HashSet<(FleetList, Target)>,
    /// The first refusal not told yet.
    first: Option<Refused>,
    /// Refusals not told yet besides `first`.
    more: usize,
    /// When the last line was written.
    last_line: Option<Instant>,
    /// At most one line from messages per this (`store.fleet_reconcile_interval`).
    every: Duration,
    /// At most this many records remembered in each set (`store.load_limit`).
    cap: usize,
}

impl RefusalLog {
    /// An empty log: one line from messages per `every`, `cap` records remembered.
    pub fn new(every: Duration, cap: usize) -> Self {
        Self {
            told: HashSet::new(),
            seen: HashSet::new(),
            first: None,
            more: 0,
            last_line: None,
            every,
            cap,
        }
    }

    /// Notes the refusals of one message or reconcile.
    pub fn note(&mut self, refused: Vec<Refused>) {
        for r in refused {
            let key = (r.list, r.target);
            if self.seen.len() < self.cap {
                self.seen.insert(key);
            }
            if self.told.contains(&key) {
                continue;
            }
            // Past the cap it is told without being remembered (told again later, within the
            // lines' throttle).
            if self.told.len() < self.cap {
                self.told.insert(key);
            }
            if self.first.is_none() {
                self.first = Some(r);
            } else {
                self.more += 1;
            }
        }
    }

    /// A reconcile that read every record of both lists ended: what was not refused since the
    /// previous one is forgotten (told again if it comes back).
    pub fn reconciled(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        self.told.retain(|key| seen.contains(key));
    }

    /// The line to write now, if any: at the end of a reconcile (`at_reconcile`) whenever
    /// something is new, after a message only when no line was written within `every`.
    pub fn due(&mut self, now: Instant, at_reconcile: bool) -> Option<Line> {
        let recent = self
            .last_line
            .is_some_and(|at| now.saturating_duration_since(at) < self.every);
        if recent && !at_reconcile {
            return None;
        }
        let first = self.first.take()?;
        self.last_line = Some(now);
        Some(Line {
            first,
            more: std::mem::take(&mut self.more),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::apply::Refusal;

    fn refused(target: &str) -> Refused {
        Refused {
            list: FleetList::Blocklist,
            target: target.parse().unwrap_or_else(|e| panic!("{target}: {e}")),
            node: "bad\u{1b}[31m".into(),
            why: Refusal::TooWide(8),
        }
    }

    #[test]
    fn each_refusal_is_told_once_and_lines_are_throttled() {
        let minute = Duration::from_secs(60);
        let mut log = RefusalLog::new(minute, 100);
        let t0 = Instant::now();
        let halves = || vec![refused("0.0.0.0/1"), refused("128.0.0.0/1")];
        // A reconcile finds both: one line, the first named, the other counted.
        log.note(halves());
        let line = log.due(t0, true).expect("a line");
        assert_eq!(
            (line.first.target.to_string(), line.more),
            ("0.0.0.0/1".into(), 1)
        );
        // The same records at every reconcile and in messages: nothing more to say.
        for i in 1..10 {
            log.note(halves());
            assert_eq!(log.due(t0 + minute * i, i % 2 == 0), None);
            log.reconciled();
        }
        // A new one by message right after a line: it waits for the interval (or a reconcile).
        let t1 = t0 + minute * 10;
        log.note(vec![refused("127.0.0.1")]);
        assert!(log.due(t1, true).is_some());
        log.note(vec![refused("224.0.0.1")]);
        log.note(vec![refused("224.0.0.2")]);
        assert_eq!(log.due(t1 + minute / 2, false), None);
        let line = log.due(t1 + minute, false).expect("after the interval");
        assert_eq!(
            (line.first.target.to_string(), line.more),
            ("224.0.0.1".into(), 1)
        );
    }

    #[test]
    fn a_refusal_gone_at_a_reconcile_is_told_again_when_it_comes_back() {
        let mut log = RefusalLog::new(Duration::from_secs(60), 100);
        let now = Instant::now();
        log.note(vec![refused("0.0.0.0/1")]);
        assert!(log.due(now, true).is_some());
        log.reconciled();
        // A reconcile without it (its record deleted): forgotten.
        log.reconciled();
        log.note(vec![refused("0.0.0.0/1")]);
        assert!(log.due(now, true).is_some());
    }

    #[test]
    fn memory_is_bounded_and_past_it_refusals_are_still_counted() {
        let mut log = RefusalLog::new(Duration::from_secs(60), 2);
        let many: Vec<Refused> = (0..10).map(|i| refused(&format!("127.0.0.{i}"))).collect();
        log.note(many.clone());
        assert!(log.told.len() <= 2 && log.seen.len() <= 2);
        let line = log.due(Instant::now(), true).expect("a line");
        assert_eq!(line.more, 9);
        // Those it could not remember are counted again, never named twice in a line.
        log.note(many);
        let line = log.due(Instant::now(), true).expect("a line");
        assert_eq!(line.more, 7);
    }
}

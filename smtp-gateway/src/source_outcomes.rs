//! What each source's SMTP sessions came to, kept by the daemon so `stats`, `top` and the
//! per-source metrics can show kernel counters and session verdicts side by side. Bounded:
//! past `metrics.session_sources` sources, the least recently seen tenth is forgotten at once
//! (one sort per many inserts, not one scan per insert).
//!
//! With a state store attached ([`SourceOutcomes::attach`]) every source's counts are written
//! through (kept `store.outcomes_ttl` after its last session) and loaded back at start
//! ([`SourceOutcomes::restore`]), so a restart does not forget them.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, OnceLock},
    time::Instant,
};

use serde::{Deserialize, Serialize};

use crate::{
    checks::Check,
    events::{SessionEnd, SessionVerdict},
    store::{Space, Store},
};

/// What a source's SMTP sessions came to (since the daemon started, or as kept by the store).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCounts {
    /// Sessions that ended.
    pub sessions: u64,
    /// Messages the backend accepted.
    pub delivered: u64,
    /// Sessions by verdict: `clean`, `delivered`, `tempfailed`, `rejected`, `dropped`.
    pub by_verdict: std::collections::BTreeMap<String, u64>,
    /// The verdict of the latest session.
    pub last_verdict: String,
    /// Checks fired in the latest session.
    pub last_checks: Vec<String>,
}

/// One source's tally.
#[derive(Debug, Clone)]
struct Tally {
    sessions: u64,
    delivered: u64,
    by_verdict: [u64; SessionVerdict::ALL.len()],
    last_verdict: SessionVerdict,
    last_checks: Vec<&'static str>,
    last_seen: Instant,
}

/// Per-source session outcomes since the daemon started.
#[derive(Debug)]
pub struct SourceOutcomes {
    /// Source -> its tally.
    tallies: Mutex<HashMap<IpAddr, Tally>>,
    /// Sources held at most (`metrics.session_sources`).
    capacity: usize,
    /// The state store counts are written through, once attached.
    store: OnceLock<Store>,
}

impl SourceOutcomes {
    /// A table holding at most `capacity` sources (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            tallies: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            store: OnceLock::new(),
        }
    }

    /// Writes every source's counts through `store` from now on.
    pub fn attach(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Takes back counts kept by the store (at start, before any session): what they say of
    /// verdicts and checks this build knows; sources already held keep their own counts. The
    /// store's values are hostile: ids that are not addresses are skipped; the capacity holds.
    pub fn restore(&self, kept: Vec<(String, SessionCounts)>) -> usize {
        let Ok(mut tallies) = self.tallies.lock() else {
            return 0;
        };
        let now = Instant::now();
        let mut restored = 0;
        for (id, c) in kept {
            if tallies.len() >= self.capacity {
                break;
            }
            let Ok(ip) = id.parse::<IpAddr>() else {
                continue;
            };
            let mut by_verdict = [0; SessionVerdict::ALL.len()];
            for (name, n) in &c.by_verdict {
                if let Some(v) = SessionVerdict::ALL.iter().find(|v| v.name() == name) {
                    by_verdict[*v as usize] = *n;
                }
            }
            let Some(last_verdict) = SessionVerdict::ALL
                .iter()
                .copied()
                .find(|v| v.name() == c.last_verdict)
            else {
                continue;
            };
            let last_checks = c
                .last_checks
                .iter()
                .filter_map(|name| Check::from_name(name).map(Check::name))
                .collect();
            tallies.entry(ip).or_insert_with(|| {
                restored += 1;
                Tally {
                    sessions: c.sessions,
                    delivered: c.delivered,
                    by_verdict,
                    last_verdict,
                    last_checks,
                    last_seen: now,
                }
            });
        }
        restored
    }

    /// Records a finished session.
    pub fn record(&self, end: &SessionEnd) {
        let Ok(mut tallies) = self.tallies.lock() else {
            return;
        };
        if !tallies.contains_key(&end.source) && tallies.len() >= self.capacity {
            evict_oldest(&mut tallies, self.capacity.div_ceil(10));
        }
        let now = Instant::now();
        let t = tallies.entry(end.source).or_insert_with(|| Tally {
            sessions: 0,
            delivered: 0,
            by_verdict: [0; SessionVerdict::ALL.len()],
            last_verdict: end.verdict,
            last_checks: Vec::new(),
            last_seen: now,
        });
        t.sessions += 1;
        t.delivered += end.delivered;
        t.by_verdict[end.verdict as usize] += 1;
        t.last_verdict = end.verdict;
        t.last_checks.clone_from(&end.checks);
        t.last_seen = now;
        if let Some(store) = self.store.get() {
            let ttl = store.config().outcomes_ttl;
            store.put(Space::Outcome, &end.source.to_string(), &counts(t), ttl);
        }
    }

    /// The source's counts, if it had a session.
    pub fn get(&self, source: IpAddr) -> Option<SessionCounts> {
        let tallies = self.tallies.lock().ok()?;
        tallies.get(&source).map(counts)
    }

    /// Every source with its counts (for the metrics' top-N when the kernel has no rows).
    pub fn snapshot(&self) -> Vec<(IpAddr, SessionCounts)> {
        match self.tallies.lock() {
            Ok(t) => t.iter().map(|(ip, t)| (*ip, counts(t))).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Sources held.
    pub fn len(&self) -> usize {
        self.tallies.lock().map_or(0, |t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn counts(t: &Tally) -> SessionCounts {
    SessionCounts {
        sessions: t.sessions,
        delivered: t.delivered,
        by_verdict: SessionVerdict::ALL
            .iter()
            .filter(|v| t.by_verdict[**v as usize] > 0)
            .map(|v| (v.name().to_string(), t.by_verdict[*v as usize]))
            .collect(),
        last_verdict: t.last_verdict.name().into(),
        last_checks: t.last_checks.iter().map(|c| c.to_string()).collect(),
    }
}

/// Forgets the `n` least recently seen sources.
fn evict_oldest(tallies: &mut HashMap<IpAddr, Tally>, n: usize) {
    let mut by_age: Vec<(Instant, IpAddr)> =
        tallies.iter().map(|(ip, t)| (t.last_seen, *ip)).collect();
    by_age.sort_unstable();
    for (_, ip) in by_age.into_iter().take(n) {
        tallies.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(last: u8, verdict: SessionVerdict, delivered: u64) -> SessionEnd {
        SessionEnd {
            source: IpAddr::from([198, 18, 0, last]),
            verdict,
            delivered,
            checks: vec!["pregreet"],
        }
    }

    #[test]
    fn tallies_sessions_by_verdict() {
        let t = SourceOutcomes::new(10);
        t.record(&end(1, SessionVerdict::Delivered, 2));
        t.record(&end(1, SessionVerdict::Rejected, 0));
        let c = t.get(IpAddr::from([198, 18, 0, 1])).unwrap();
        assert_eq!((c.sessions, c.delivered), (2, 2));
        assert_eq!(c.by_verdict["delivered"], 1);
        assert_eq!(c.by_verdict["rejected"], 1);
        assert_eq!(c.last_verdict, "rejected");
        assert_eq!(c.last_checks, ["pregreet"]);
        assert!(t.get(IpAddr::from([198, 18, 0, 2])).is_none());
    }

    #[test]
    fn stays_within_capacity_forgetting_the_oldest() {
        let t = SourceOutcomes::new(10);
        for i in 0..25 {
            t.record(&end(i, SessionVerdict::Clean, 0));
        }
        assert!(t.len() <= 10, "{} sources held", t.len());
        // The newest is always kept.
        assert!(t.get(IpAddr::from([198, 18, 0, 24])).is_some());
        assert!(t.get(IpAddr::from([198, 18, 0, 0])).is_none());
    }

    #[test]
    fn restores_what_it_knows_and_skips_hostile_entries() {
        let t = SourceOutcomes::new(3);
        t.record(&end(1, SessionVerdict::Delivered, 1));
        let kept = SourceOutcomes::new(10);
        kept.record(&end(1, SessionVerdict::Rejected, 0));
        kept.record(&end(2, SessionVerdict::Dropped, 0));
        let mut entries: Vec<(String, SessionCounts)> = kept
            .snapshot()
            .into_iter()
            .map(|(ip, c)| (ip.to_string(), c))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut bad = entries[1].1.clone();
        bad.last_verdict = "nonsense".into();
        bad.last_checks = vec!["no_such_check".into()];
        entries.push(("not an address".into(), SessionCounts::default()));
        entries.push(("198.18.0.3".into(), bad));
        // 198.18.0.1 is held already (its own counts stay); .2 is taken back; the others are
        // refused (not an address; a verdict this build does not know).
        assert_eq!(t.restore(entries), 1);
        assert_eq!(t.len(), 2);
        let two = t.get(IpAddr::from([198, 18, 0, 2])).unwrap();
        assert_eq!((two.sessions, two.last_verdict.as_str()), (1, "dropped"));
        assert_eq!(two.last_checks, ["pregreet"]);
        let one = t.get(IpAddr::from([198, 18, 0, 1])).unwrap();
        assert_eq!(one.last_verdict, "delivered");
    }
}

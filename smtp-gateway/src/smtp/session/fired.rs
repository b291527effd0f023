//! The checks that fired in one session, bounded: one counter per check in the order each first
//! fired, so a client repeating an offending HELO grows a count, not a list (the session line,
//! the session end and the per-source table copy it).

use crate::checks::Check;

/// Which checks fired in a session and how often; at most one entry per [`Check`].
#[derive(Debug, Default, Clone)]
pub(super) struct FiredChecks {
    /// (check, times it fired), in the order each first fired.
    counts: Vec<(Check, u32)>,
}

impl FiredChecks {
    /// Records one firing of `check`.
    pub(super) fn record(&mut self, check: Check) {
        match self.counts.iter_mut().find(|(c, _)| *c == check) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => self.counts.push((check, 1)),
        }
    }

    /// Whether `check` fired already.
    pub(super) fn contains(&self, check: Check) -> bool {
        self.counts.iter().any(|(c, _)| *c == check)
    }

    /// No check fired.
    pub(super) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The names of the checks that fired, each once, in the order they first fired.
    pub(super) fn names(&self) -> Vec<&'static str> {
        self.counts.iter().map(|(c, _)| c.name()).collect()
    }

    /// `name` or `name(count)` for each check, comma-separated (the score's `550` text).
    pub(super) fn summary(&self) -> String {
        self.counts
            .iter()
            .map(|(c, n)| match n {
                1 => c.name().to_string(),
                n => format!("{}({n})", c.name()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_firings_are_counted_not_listed() {
        let mut f = FiredChecks::default();
        assert!(f.is_empty());
        for _ in 0..10_000 {
            f.record(Check::HeloDynamic);
        }
        assert!(!f.contains(Check::HeloNotFqdn));
        f.record(Check::HeloNotFqdn);
        f.record(Check::HeloDynamic);
        assert!(f.contains(Check::HeloNotFqdn) && f.contains(Check::HeloDynamic));
        assert_eq!(f.names(), ["helo_dynamic", "helo_not_fqdn"]);
        assert_eq!(f.summary(), "helo_dynamic(10001), helo_not_fqdn");
        assert!(!f.is_empty());
    }
}

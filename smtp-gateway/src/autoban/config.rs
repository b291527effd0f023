//! `[autoban]`: which checks ban, after how many firings inside which window, for how long,
//! and what a ban covers (the address or its prefix).

use std::{collections::HashMap, time::Duration};

use serde::Deserialize;

use crate::{checks::Check, invalid::Invalid};

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

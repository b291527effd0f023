//! Session verdicts feeding the kernel: a source that fails a configured check often enough is
//! added to the XDP blocklist with a TTL and the check as reason, so its next SYN is dropped in the
//! kernel. Allowlisted sources are never banned; expired bans leave the maps through the sweeper.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Deserialize;
use smtp_gateway_common::{BlockEntry, origin};
use tokio::sync::{broadcast, watch};

use crate::{
    checks::{Action, Check},
    config::invalid::Invalid,
    dataplane::{SharedDataplane, Target, clock, reasons},
    events::{Event, SessionEnd},
};

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
    /// Sources whose firings are being counted at most; beyond, the counts start over (bounded
    /// memory under a flood of distinct sources).
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
            if *count == 0 {
                return Err(Invalid::new(
                    format!("autoban.checks.{check}"),
                    "must be at least 1",
                ));
            }
        }
        if self.track_sources == 0 {
            return Err(Invalid::new("autoban.track_sources", "must be at least 1"));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(Invalid::new("autoban.ttl", "must be at least 1s"));
        }
        if self.grace > Duration::from_secs(60) {
            return Err(Invalid::new("autoban.grace", "must be at most 60s"));
        }
        if !(8..=32).contains(&self.ipv4_prefix) {
            return Err(Invalid::new("autoban.ipv4_prefix", "must be 8..=32"));
        }
        if !(32..=128).contains(&self.ipv6_prefix) {
            return Err(Invalid::new("autoban.ipv6_prefix", "must be 32..=128"));
        }
        Ok(())
    }
}

/// A ban decided, waiting for the offending session to close.
struct Pending {
    check: &'static str,
    /// Set when a session of the source ended: the ban is written then.
    due: Option<Instant>,
}

/// Consumes verdict events until shutdown, banning as configured. Returns the number of bans.
/// A ban is decided when a check fires often enough, and written `autoban.grace` after a
/// session of that source ends (sessions end within their timeouts).
pub async fn run(
    config: watch::Receiver<AutobanConfig>,
    dataplane: SharedDataplane,
    mut events: broadcast::Receiver<Event>,
    mut ends: broadcast::Receiver<SessionEnd>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> u64 {
    let mut counts: HashMap<(IpAddr, Check), u32> = HashMap::new();
    let mut pending: HashMap<IpAddr, Pending> = HashMap::new();
    let mut bans = 0;
    loop {
        let next_due = pending.values().filter_map(|p| p.due).min();
        let wait_due = async {
            match next_due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Check events first: a session's events are all sent before its end.
            biased;
            event = events.recv() => match event {
                Ok(event) => decide(&config, &mut counts, &mut pending, &event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "auto-ban fell behind the session events");
                }
                Err(broadcast::error::RecvError::Closed) => return bans,
            },
            end = ends.recv() => match end {
                Ok(end) => {
                    if let Some(p) = pending.get_mut(&end.source) {
                        let grace = config.borrow().grace;
                        p.due.get_or_insert(Instant::now() + grace);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "auto-ban fell behind the session ends; banning the pending sources now");
                    let now = Instant::now();
                    for p in pending.values_mut() {
                        p.due.get_or_insert(now);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return bans,
            },
            () = wait_due => {
                let now = Instant::now();
                let due: Vec<IpAddr> = pending
                    .iter()
                    .filter(|(_, p)| p.due.is_some_and(|d| d <= now))
                    .map(|(ip, _)| *ip)
                    .collect();
                for source in due {
                    if let Some(p) = pending.remove(&source) {
                        bans += apply(&config, &dataplane, &metrics, source, p.check).await;
                    }
                }
            }
            _ = shutdown.changed() => {
                // Decided bans are not lost to a restart: they are written now.
                for (source, p) in std::mem::take(&mut pending) {
                    bans += apply(&config, &dataplane, &metrics, source, p.check).await;
                }
                return bans;
            }
        }
    }
}

/// Counts a fired check; past the configured number of firings the source's ban is pending.
fn decide(
    config: &watch::Receiver<AutobanConfig>,
    counts: &mut HashMap<(IpAddr, Check), u32>,
    pending: &mut HashMap<IpAddr, Pending>,
    event: &Event,
) {
    let (needed, track) = {
        let cfg = config.borrow();
        match cfg.checks.get(event.check.name()) {
            Some(needed) if cfg.enabled && event.action != Action::Ignore => {
                (*needed, cfg.track_sources)
            }
            _ => return,
        }
    };
    if counts.len() >= track {
        counts.clear();
    }
    if pending.len() >= track {
        // Sessions end within their timeouts, so this takes a flood of distinct offenders
        // faster than that; their bans are dropped rather than memory grown without bound.
        tracing::warn!(track, "auto-ban: too many pending bans; forgetting them");
        pending.clear();
    }
    let n = counts.entry((event.source, event.check)).or_insert(0);
    *n += 1;
    if *n < needed {
        return;
    }
    counts.remove(&(event.source, event.check));
    pending.entry(event.source).or_insert(Pending {
        check: event.check.name(),
        due: None,
    });
}

/// Writes one ban; 1 when it was written.
async fn apply(
    config: &watch::Receiver<AutobanConfig>,
    dataplane: &SharedDataplane,
    metrics: &crate::metrics::Metrics,
    source: IpAddr,
    check: &'static str,
) -> u64 {
    let (ttl, target) = {
        let cfg = config.borrow();
        (
            cfg.ttl,
            ban_target(source, cfg.ipv4_prefix, cfg.ipv6_prefix),
        )
    };
    let dp = dataplane.clone();
    let result = tokio::task::spawn_blocking(move || ban(&dp, source, target, check, ttl)).await;
    match result {
        Ok(Ok(true)) => {
            metrics.ban();
            tracing::info!(%source, %target, check, ttl = %humantime::format_duration(ttl), "source banned in the kernel");
            1
        }
        Ok(Ok(false)) => {
            tracing::info!(%source, check, "not banned: source is allowlisted");
            0
        }
        Ok(Err(e)) => {
            tracing::error!(%source, check, error = %e, "auto-ban failed");
            0
        }
        Err(e) => {
            tracing::error!(error = %e, "auto-ban task failed");
            0
        }
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

/// Adds the ban unless the source is allowlisted; `Ok(false)` when it is.
fn ban(
    dp: &SharedDataplane,
    source: IpAddr,
    target: Target,
    check: &str,
    ttl: Duration,
) -> Result<bool, crate::dataplane::DataplaneError> {
    let mut dp = dp
        .lock()
        .map_err(|_| crate::dataplane::DataplaneError::Poisoned)?;
    if dp.allowlisted(source).is_some() {
        return Ok(false);
    }
    let reason = reasons::intern(&mut dp, &format!("autoban: {check}"))?;
    dp.block(
        target,
        BlockEntry {
            expires_at_ns: clock::expiry_after(Some(ttl)),
            added_at_s: clock::unix_now_s(),
            reason,
            origin: origin::AUTOBAN,
        },
    )?;
    Ok(true)
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
        }
    }

    #[test]
    fn a_ban_is_decided_after_the_configured_firings_and_never_for_ignore() {
        let config = AutobanConfig {
            checks: [
                ("relay_attempt".to_string(), 2),
                ("pregreet".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            track_sources: 3,
            ..AutobanConfig::default()
        };
        let (_tx, rx) = watch::channel(config);
        let (mut counts, mut pending) = (HashMap::new(), HashMap::new());

        decide(
            &rx,
            &mut counts,
            &mut pending,
            &event(1, Check::RelayAttempt, Action::Score),
        );
        assert!(pending.is_empty(), "one of two relay attempts");
        decide(
            &rx,
            &mut counts,
            &mut pending,
            &event(1, Check::RelayAttempt, Action::Score),
        );
        assert_eq!(
            pending[&IpAddr::from([198, 18, 0, 1])].check,
            "relay_attempt"
        );
        assert!(
            pending[&IpAddr::from([198, 18, 0, 1])].due.is_none(),
            "waits for the session"
        );

        decide(
            &rx,
            &mut counts,
            &mut pending,
            &event(2, Check::Pregreet, Action::Ignore),
        );
        decide(
            &rx,
            &mut counts,
            &mut pending,
            &event(3, Check::NonSmtp, Action::Drop),
        );
        assert_eq!(
            pending.len(),
            1,
            "ignored and unconfigured checks never ban"
        );

        // Bounded: past track_sources pending bans, they are forgotten rather than grown.
        for last in 10..13 {
            decide(
                &rx,
                &mut counts,
                &mut pending,
                &event(last, Check::Pregreet, Action::Drop),
            );
        }
        assert!(pending.len() <= 3, "{} pending", pending.len());
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

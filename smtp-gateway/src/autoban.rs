//! Session verdicts feeding the kernel: a source that fails a configured check often enough is
//! added to the XDP blocklist with a TTL and the check as reason, so its next SYN is dropped in the
//! kernel. Allowlisted sources are never banned; expired bans leave the maps through the sweeper.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use serde::Deserialize;
use smtp_gateway_common::{BlockEntry, origin};
use tokio::sync::{broadcast, watch};

use crate::{
    daemon::SharedDataplane,
    dataplane::{Target, clock, reasons},
    smtp::{
        config::{Action, Check},
        events::Event,
    },
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
        }
    }
}

impl AutobanConfig {
    /// Checks names and values; returns the key and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (check, count) in &self.checks {
            if Check::from_name(check).is_none() {
                return Err((
                    "autoban.checks".into(),
                    format!(
                        "{check:?} is not a check (one of {})",
                        Check::ALL.map(Check::name).join(", ")
                    ),
                ));
            }
            if *count == 0 {
                return Err((
                    format!("autoban.checks.{check}"),
                    "must be at least 1".into(),
                ));
            }
        }
        if self.track_sources == 0 {
            return Err(("autoban.track_sources".into(), "must be at least 1".into()));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(("autoban.ttl".into(), "must be at least 1s".into()));
        }
        Ok(())
    }
}

/// Consumes verdict events until shutdown, banning as configured. Returns the number of bans.
pub async fn run(
    config: watch::Receiver<crate::config::Config>,
    dataplane: SharedDataplane,
    mut events: broadcast::Receiver<Event>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> u64 {
    let mut counts: HashMap<(IpAddr, Check), u32> = HashMap::new();
    let mut bans = 0;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.changed() => return bans,
        };
        let event = match event {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "auto-ban fell behind the session events");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return bans,
        };
        let (needed, ttl, track) = {
            let cfg = &config.borrow().autoban;
            match cfg.checks.get(event.check.name()) {
                Some(needed) if cfg.enabled && event.action != Action::Ignore => {
                    (*needed, cfg.ttl, cfg.track_sources)
                }
                _ => continue,
            }
        };
        if counts.len() >= track {
            counts.clear();
        }
        let n = counts.entry((event.source, event.check)).or_insert(0);
        *n += 1;
        if *n < needed {
            continue;
        }
        counts.remove(&(event.source, event.check));
        let dp = dataplane.clone();
        let check = event.check.name();
        let source = event.source;
        let result = tokio::task::spawn_blocking(move || ban(&dp, source, check, ttl)).await;
        match result {
            Ok(Ok(true)) => {
                bans += 1;
                metrics.ban();
                tracing::info!(%source, check, ttl = %humantime::format_duration(ttl), bans, "source banned in the kernel");
            }
            Ok(Ok(false)) => tracing::info!(%source, check, "not banned: source is allowlisted"),
            Ok(Err(e)) => tracing::error!(%source, check, error = %e, "auto-ban failed"),
            Err(e) => tracing::error!(error = %e, "auto-ban task failed"),
        }
    }
}

/// Adds the ban unless the source is allowlisted; `Ok(false)` when it is.
fn ban(
    dp: &SharedDataplane,
    source: IpAddr,
    check: &str,
    ttl: Duration,
) -> Result<bool, crate::dataplane::DataplaneError> {
    let mut dp = dp
        .lock()
        .map_err(|_| crate::dataplane::DataplaneError::Poisoned)?;
    if dp.allowlisted(source).is_some() {
        return Ok(false);
    }
    let target = Target::from_net(ipnet::IpNet::from(source))
        .map_err(|e| crate::dataplane::DataplaneError::ReasonsFull(e.to_string()))?;
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

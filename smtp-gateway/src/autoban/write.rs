//! Bans written to the kernel blocklist: a batch under one lock of the data plane, leaving out
//! allowlisted sources ([`write_bans`]), then logged and counted ([`report`]).

use std::{net::IpAddr, time::Duration};

use smtp_gateway_common::{BlockEntry, origin};
use tokio::task::JoinError;

use crate::{
    dataplane::{Dataplane, SharedDataplane, Target, clock, reasons},
    metrics::Metrics,
};

/// One ban handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ban {
    /// The address whose firing decided it.
    pub(super) source: IpAddr,
    /// What the ban covers ([`ban_target`] of `source` when it was decided).
    pub(super) target: Target,
    /// The check that decided it.
    pub(super) check: &'static str,
    /// How long it lasts (`autoban.ttl` when it is written).
    pub(super) ttl: Duration,
}

/// What became of one ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Written {
    /// In the kernel blocklist.
    Banned,
    /// Not written: the source is allowlisted.
    Allowlisted,
    /// Not written: the data plane refused (the error).
    Failed(String),
}

/// Logs and counts a written batch; the number of bans written.
pub(super) fn report(metrics: &Metrics, written: Result<Vec<(Ban, Written)>, JoinError>) -> u64 {
    let written = match written {
        Ok(written) => written,
        Err(e) => {
            tracing::error!(error = %e, "auto-ban task failed");
            return 0;
        }
    };
    let mut bans = 0;
    for (ban, outcome) in written {
        let Ban {
            source,
            target,
            check,
            ttl,
        } = ban;
        match outcome {
            Written::Banned => {
                metrics.ban();
                tracing::info!(%source, %target, check, ttl = %humantime::format_duration(ttl), "source banned in the kernel");
                bans += 1;
            }
            Written::Allowlisted => {
                tracing::info!(%source, check, "not banned: source is allowlisted");
            }
            Written::Failed(error) => {
                tracing::error!(%source, check, %error, "auto-ban failed");
            }
        }
    }
    bans
}

/// Writes a batch of bans under one lock of the data plane, leaving out allowlisted sources.
pub(super) fn write_bans(dp: &SharedDataplane, bans: Vec<Ban>) -> Vec<(Ban, Written)> {
    let mut dp = match dp.lock() {
        Ok(dp) => dp,
        Err(_) => {
            let error = crate::dataplane::DataplaneError::Poisoned.to_string();
            return bans
                .into_iter()
                .map(|b| (b, Written::Failed(error.clone())))
                .collect();
        }
    };
    // Read once for the batch (a source is allowlisted when a prefix covers it).
    let allowed = dp.allowed().unwrap_or_default();
    bans.into_iter()
        .map(|b| {
            if allowed.iter().any(|r| r.net.contains(&b.source)) {
                return (b, Written::Allowlisted);
            }
            let outcome = match ban(&mut dp, &b) {
                Ok(()) => Written::Banned,
                Err(e) => Written::Failed(e.to_string()),
            };
            (b, outcome)
        })
        .collect()
}

/// Adds one ban to the blocklist.
pub(super) fn ban(dp: &mut Dataplane, b: &Ban) -> Result<(), crate::dataplane::DataplaneError> {
    let reason = reasons::intern(dp, &format!("autoban: {}", b.check))?;
    dp.block(
        b.target,
        BlockEntry {
            expires_at_ns: clock::expiry_after(Some(b.ttl)),
            added_at_s: clock::unix_now_s(),
            reason,
            origin: origin::AUTOBAN,
        },
    )
}

//! The operations behind the control requests, on a [`Dataplane`]: the daemon runs them on its
//! own, the CLI on the pinned maps when no daemon answers. One implementation, two callers.

use std::time::Duration;

use smtp_gateway_common::{AllowEntry, BlockEntry, origin};

use super::protocol::{AllowRow, BlockRow, Response, SourceReport, StatsReport, VerdictRow};
use crate::dataplane::{
    Dataplane, DataplaneError, Target, TargetError, clock,
    lists::BlockRecord,
    reasons,
    stats::{SourceRow, top_by},
};

/// Why an operation failed (the message goes back to the CLI).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("{0} is not in the blocklist (use the exact address or prefix listed by `block list`)")]
    NotBlocked(Target),
    #[error("{0} is not in the allowlist")]
    NotAllowed(Target),
    /// `why` was given a prefix (which `block` and `allow` take).
    #[error(
        "{given:?} is a prefix, and `why` takes one address (IPv4 or IPv6): ask about an address \
         inside it (`why {inside}`), or see the prefixes entered with `block list` and `allow list`"
    )]
    WhyPrefix {
        given: String,
        inside: std::net::IpAddr,
    },
    /// `why` was given something that is neither an address nor a prefix.
    #[error("{0:?} is not an IP address (`why` takes one address, IPv4 or IPv6)")]
    WhyNotAnAddress(String),
}

/// Adds a blocklist entry of origin `cli`; warns when an allowlist entry covers it.
pub fn block_add(
    dp: &mut Dataplane,
    target: &str,
    ttl: Option<Duration>,
    reason: Option<&str>,
) -> Result<Response, OpError> {
    let target: Target = target.parse()?;
    let mut warnings = Vec::new();
    if let Some(net) = dp.allowlisted(target.net().addr()) {
        warnings.push(format!(
            "{target} is covered by allowlist entry {net}, which wins"
        ));
    }
    let reason_id = match reason {
        Some(text) => reasons::intern(dp, text)?,
        None => 0,
    };
    dp.block(
        target,
        BlockEntry {
            expires_at_ns: clock::expiry_after(ttl),
            added_at_s: clock::unix_now_s(),
            reason: reason_id,
            origin: origin::CLI,
        },
    )?;
    let message = match ttl {
        Some(ttl) => format!("blocked {target} for {}", human_duration(ttl)),
        None => format!("blocked {target}"),
    };
    Ok(Response::Done { message, warnings })
}

/// Removes exactly this blocklist entry.
pub fn block_del(dp: &mut Dataplane, target: &str) -> Result<Response, OpError> {
    let target: Target = target.parse()?;
    if !dp.unblock(target)? {
        return Err(OpError::NotBlocked(target));
    }
    Ok(done(format!("unblocked {target}")))
}

/// Every blocklist entry, sorted by target.
pub fn block_list(dp: &Dataplane) -> Result<Vec<BlockRow>, OpError> {
    let now = clock::monotonic_ns();
    let mut records = dp.blocked()?;
    records.sort_by_key(|r| r.target);
    Ok(records.iter().map(|r| block_row(dp, r, now)).collect())
}

/// One blocklist entry as `block list` and `why` show it, at `now` (monotonic ns).
pub fn block_row(dp: &Dataplane, r: &BlockRecord, now: u64) -> BlockRow {
    BlockRow {
        target: r.target.to_string(),
        kind: match r.target {
            Target::V4(_) | Target::V6(_) => "exact",
            _ => "prefix",
        }
        .into(),
        reason: reasons::resolve(dp, r.entry.reason),
        origin: origin::name(r.entry.origin).into(),
        expires_in_secs: clock::remaining(r.entry.expires_at_ns, now).map(|d| d.as_secs()),
        active: r.entry.is_active(now),
        added_at: r.entry.added_at_s,
    }
}

/// Adds an allowlist entry of origin `cli`.
pub fn allow_add(
    dp: &mut Dataplane,
    target: &str,
    reason: Option<&str>,
) -> Result<Response, OpError> {
    let target: Target = target.parse()?;
    let reason = match reason {
        Some(text) => reasons::intern(dp, text)?,
        None => 0,
    };
    dp.allow(
        target.net(),
        AllowEntry {
            reason,
            origin: origin::CLI,
            added_at_s: clock::unix_now_s(),
        },
    )?;
    Ok(done(format!("allowed {target}")))
}

/// Removes exactly this allowlist entry.
pub fn allow_del(dp: &mut Dataplane, target: &str) -> Result<Response, OpError> {
    let target: Target = target.parse()?;
    if !dp.disallow(target.net())? {
        return Err(OpError::NotAllowed(target));
    }
    Ok(done(format!("removed {target} from the allowlist")))
}

/// Every allowlist entry, sorted by prefix.
pub fn allow_list(dp: &Dataplane) -> Result<Vec<AllowRow>, OpError> {
    let mut records = dp.allowed()?;
    records.sort_by_key(|r| r.net);
    Ok(records
        .iter()
        .map(|r| AllowRow {
            prefix: r.net.to_string(),
            reason: reasons::resolve(dp, r.entry.reason),
            origin: origin::name(r.entry.origin).into(),
            added_at: r.entry.added_at_s,
        })
        .collect())
}

/// Kernel totals and the `top` sources by drops and by packets (no session outcomes).
pub fn stats(dp: &Dataplane, top: usize) -> Result<StatsReport, OpError> {
    let verdicts = dp
        .verdict_totals()?
        .into_iter()
        .map(|v| VerdictRow {
            verdict: v.verdict.into(),
            packets: v.packets,
            bytes: v.bytes,
        })
        .collect();
    let rows = dp.source_rows()?;
    let report = |rows: Vec<SourceRow>| rows.into_iter().map(source_report).collect();
    Ok(StatsReport {
        verdicts,
        top_by_drops: report(top_by(&rows, top, |r| r.drops)),
        top_by_packets: report(top_by(&rows, top, |r| r.packets)),
        tracked_sources: rows.len(),
        session_sources: None,
    })
}

/// A kernel row without session outcomes.
pub fn source_report(kernel: SourceRow) -> SourceReport {
    SourceReport {
        kernel,
        sessions: None,
    }
}

fn done(message: String) -> Response {
    Response::Done {
        message,
        warnings: Vec::new(),
    }
}

/// "1h 2m" style, whole seconds.
pub fn human_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

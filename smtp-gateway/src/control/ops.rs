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

/// Longest blocklist TTL (`--ttl`, a control request's `ttl_secs`): the longest the store keeps
/// a ban (`store.permanent_ban_ttl`'s bound, 36500 days). A longer one would saturate the kernel
/// entry while the store record kept an expiry past year 9999, so the two disagreed.
pub const MAX_TTL: Duration = crate::store::config::MAX_PERMANENT_BAN_TTL;

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
    /// A TTL over [`MAX_TTL`].
    #[error(
        "a ban TTL of {given_secs}s is too long: --ttl must be at most {} (leave it out for a \
         permanent entry)",
        human_duration(MAX_TTL)
    )]
    TtlTooLong { given_secs: u64 },
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
    if let Some(ttl) = ttl.filter(|t| *t > MAX_TTL) {
        return Err(OpError::TtlTooLong {
            given_secs: ttl.as_secs(),
        });
    }
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

/// "6d 23h", "1h 30m", "59s": the two largest units, the smaller one rounded (so a week's ban
/// a second old is "7d"), short enough for `block list`'s EXPIRES column. humantime's full form
/// ("6days 23h 59m 59s", "1year 1month 4days 7h 26m 24s" for 400 days) overflowed it.
pub fn human_duration(d: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let secs = d.as_secs();
    let Some(i) = UNITS.iter().position(|(size, _)| secs >= *size) else {
        return "0s".into();
    };
    let (big, big_name) = UNITS[i];
    let Some(&(small, small_name)) = UNITS.get(i + 1) else {
        return format!("{secs}{big_name}");
    };
    let rounded = secs.saturating_add(small / 2) / small * small;
    // Rounded up into the next unit (23h 59m 40s is a day): said in that unit.
    if i > 0 && rounded >= UNITS[i - 1].0 {
        return human_duration(Duration::from_secs(rounded));
    }
    match (rounded / big, rounded % big / small) {
        (whole, 0) => format!("{whole}{big_name}"),
        (whole, part) => format!("{whole}{big_name} {part}{small_name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `block list`'s EXPIRES column overflowed with "6days 23h 59m 59s", and `--ttl 400d`
    /// came back as "1year 1month 4days 7h 26m 24s": the two largest units, rounded.
    #[test]
    fn durations_are_said_in_their_two_largest_units_rounded() {
        let secs = |s: u64| human_duration(Duration::from_secs(s));
        for (given, said) in [
            (0, "0s"),
            (59, "59s"),
            (90, "1m 30s"),
            (3599, "59m 59s"),
            (3600, "1h"),
            (3661, "1h 1m"),
            (2 * 3600 + 30 * 60 + 29, "2h 30m"),
            (2 * 3600 + 30 * 60 + 30, "2h 31m"),
            (86_400 - 1, "1d"),
            (7 * 86_400 - 1, "7d"),
            (86_400 + 12 * 3600 + 60, "1d 12h"),
            (400 * 86_400, "400d"),
        ] {
            assert_eq!(secs(given), said, "{given}s");
        }
    }
}

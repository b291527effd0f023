//! `smtp-gateway why <address> [--json] [--follow [--for DURATION]]`: why a source is dropped (or
//! not). Through the daemon when it runs (its SMTP session outcomes included), else on the pinned
//! maps; `--follow` then traces its packets live (`follow.rs`).

use std::process::ExitCode;

use anyhow::bail;
use smtp_gateway::{
    config::Config,
    control::{
        protocol::{Request, Response, StoreView, WhyReport},
        why,
    },
    source_outcomes::SessionCounts,
};

pub fn run(config: &Config, args: &crate::cli::WhyArgs) -> anyhow::Result<ExitCode> {
    let request = Request::Why {
        address: args.address.clone(),
    };
    let report = match super::call(config, request, super::open_pinned, |dp| {
        Ok(Response::Why(Box::new(why::why(dp, &args.address)?)))
    })? {
        Response::Why(report) => *report,
        other => {
            super::report(other)?;
            bail!("the daemon sent no answer about {}", args.address)
        }
    };
    if args.json && args.follow {
        // JSON Lines: the report, then one object per packet.
        out!("{}", serde_json::to_string(&report)?);
    } else if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    if args.follow {
        return super::follow::run(config, report.address, args.duration, args.json);
    }
    Ok(ExitCode::SUCCESS)
}

/// `writeln!` into the report being built (writing to a `String` cannot fail).
macro_rules! line {
    ($o:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($arg)*);
    }};
}

fn print(r: &WhyReport) {
    let text = render(r, now_unix_ms());
    out!("{}", text.strip_suffix('\n').unwrap_or(&text));
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The human report, at `now_unix_ms` (for the time left of the store's records).
fn render(r: &WhyReport, now_unix_ms: u64) -> String {
    let mut text = String::new();
    let o = &mut text;
    line!(o, "{}: {}", r.address, r.verdict);
    if r.blocks.is_empty() {
        line!(o, "  blocklist: no entry covers it");
    }
    for b in &r.blocks {
        let left = match b.expires_in_secs {
            Some(s) => format!(
                "{} left",
                super::human_duration(std::time::Duration::from_secs(s))
            ),
            None => "permanent".into(),
        };
        line!(
            o,
            "  blocklist: {} ({}) origin {}, {left}{}{}",
            b.target,
            b.kind,
            b.origin,
            b.reason
                .as_deref()
                .map(|r| format!(", reason {r:?}"))
                .unwrap_or_default(),
            if b.active { "" } else { " (expired)" }
        );
    }
    for a in &r.allows {
        line!(
            o,
            "  allowlist: {} origin {}{}",
            a.prefix,
            a.origin,
            a.reason
                .as_deref()
                .map(|r| format!(", reason {r:?}"))
                .unwrap_or_default()
        );
    }
    match &r.rate {
        Some(b) => line!(
            o,
            "  rate limit: bucket {}: {} of {} SYNs left, full in {} ms",
            b.key,
            b.syns_left,
            b.burst,
            b.full_in_ms
        ),
        None => line!(
            o,
            "  rate limit: no bucket (not seen, or the limiter is off)"
        ),
    }
    match &r.kernel {
        Some(k) => line!(
            o,
            "  kernel: {} packets, {} SYNs, {} drops, last seen {} s ago",
            k.packets,
            k.syns,
            k.drops,
            k.last_seen_secs_ago
        ),
        None => line!(o, "  kernel: not in the per-source table"),
    }
    match &r.sessions {
        Some(s) => line!(o, "  sessions: {}", session_counts(s)),
        None => line!(o, "  sessions: none known (or no daemon answered)"),
    }
    match &r.store {
        Some(view) => render_store(o, view, now_unix_ms),
        None => line!(o, "  store: not read (no daemon answered, or no store)"),
    }
    text
}

/// "9 (delivered 1, rejected 8), 1 message delivered, last: rejected (checks pregreet)".
fn session_counts(s: &SessionCounts) -> String {
    let verdicts: Vec<String> = s
        .by_verdict
        .iter()
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    let checks = if s.last_checks.is_empty() {
        String::new()
    } else {
        format!(" (checks {})", s.last_checks.join(", "))
    };
    format!(
        "{} ({}), {} {} delivered, last: {}{checks}",
        s.sessions,
        verdicts.join(", "),
        s.delivered,
        if s.delivered == 1 {
            "message"
        } else {
            "messages"
        },
        s.last_verdict
    )
}

/// "until 2026-11-23T10:00:00Z (in 6d 23h)", or "(expired)": the end of a record, at
/// `now_unix_ms`, in the times `block list` prints.
fn until(expires_unix_ms: u64, now_unix_ms: u64) -> String {
    let at = super::human_time(expires_unix_ms / 1000);
    match expires_unix_ms.checked_sub(now_unix_ms) {
        Some(left) if left > 0 => format!(
            "until {at} (in {})",
            super::human_duration(std::time::Duration::from_millis(left))
        ),
        _ => format!("until {at} (expired)"),
    }
}

/// What the state store holds about it.
fn render_store(o: &mut String, v: &StoreView, now_unix_ms: u64) {
    line!(
        o,
        "  store: {} (node {}{})",
        v.engine,
        v.node,
        if v.fleet { ", shared by the fleet" } else { "" }
    );
    for b in &v.bans {
        let until = match b.expires_unix_ms {
            Some(ms) => until(ms, now_unix_ms),
            None => "permanent".into(),
        };
        line!(
            o,
            "    ban record: {} by node {} (origin {}), {until}{}",
            b.target,
            b.node,
            b.origin,
            if b.reason.is_empty() {
                String::new()
            } else {
                format!(", reason {:?}", b.reason)
            }
        );
    }
    for a in &v.allows {
        line!(
            o,
            "    allowlist record: {} by node {} (origin {}){}",
            a.target,
            a.node,
            a.origin,
            if a.reason.is_empty() {
                String::new()
            } else {
                format!(", reason {:?}", a.reason)
            }
        );
    }
    if let Some(b) = &v.waiting_ban {
        line!(
            o,
            "    waiting ban: {} ({}), written when its session closes",
            b.target,
            b.reason
        );
    }
    for c in &v.counts {
        line!(
            o,
            "    auto-ban count: {} {} {} of {}{}",
            c.target,
            c.check,
            c.firings,
            c.needed,
            if c.shared { " (fleet-wide)" } else { "" }
        );
    }
    if let Some(g) = &v.greylist {
        line!(
            o,
            "    greylist: network {} passed {} time(s){}",
            g.network,
            g.passes,
            if g.allowlisted_after > 0 && g.passes >= g.allowlisted_after {
                " (auto-allowlisted)"
            } else {
                ""
            }
        );
    }
    if let Some(s) = &v.sessions {
        line!(o, "    stored sessions: {}", session_counts(s));
    }
    for e in &v.errors {
        line!(o, "    not read: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_gateway::store::BanRecord;

    fn counts() -> SessionCounts {
        SessionCounts {
            sessions: 9,
            delivered: 1,
            by_verdict: [("delivered".to_string(), 1), ("rejected".to_string(), 8)]
                .into_iter()
                .collect(),
            last_verdict: "rejected".into(),
            last_checks: vec!["pregreet".into(), "dnsbl".into()],
        }
    }

    /// The human report said the session counts and the stored sessions in raw JSON, and a ban
    /// record's end as `until unix 1796427573`.
    #[test]
    fn sessions_and_ban_ends_are_readable_fields_and_times() {
        let now_ms = 1_796_000_000_000;
        let report = WhyReport {
            address: [198, 18, 0, 7].into(),
            blocks: Vec::new(),
            allows: Vec::new(),
            rate: None,
            kernel: None,
            sessions: Some(counts()),
            verdict: "passed".into(),
            store: Some(StoreView {
                engine: "embedded".into(),
                node: "gw1".into(),
                fleet: false,
                bans: vec![BanRecord {
                    target: "198.18.0.7".into(),
                    source: None,
                    reason: "autoban: pregreet".into(),
                    origin: "autoban".into(),
                    node: "gw1".into(),
                    added_unix_ms: now_ms,
                    expires_unix_ms: Some(now_ms + 7 * 86_400_000),
                }],
                allows: Vec::new(),
                waiting_ban: None,
                counts: Vec::new(),
                greylist: None,
                sessions: Some(counts()),
                errors: Vec::new(),
            }),
        };
        let text = render(&report, now_ms);
        assert!(!text.contains('{') && !text.contains("unix"), "{text}");
        let expected = "9 (delivered 1, rejected 8), 1 message delivered, last: rejected \
                        (checks pregreet, dnsbl)";
        assert!(
            text.contains(&format!("  sessions: {expected}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("    stored sessions: {expected}\n")),
            "{text}"
        );
        assert!(
            text.contains("until 2026-12-07T00:53:20Z (in 7d)"),
            "{text}"
        );
    }

    /// A record's expiry is whatever the store holds (a `--ttl 99999999999d` wrote
    /// 8640001796356484426): `why` panicked in `human_time` past year 9999 (humantime cannot say
    /// it) and would overflow `SystemTime` further on. Any value is said, never a panic.
    #[test]
    fn an_expiry_past_year_9999_is_said_without_a_panic() {
        let now_ms = 1_796_000_000_000;
        for expires in [
            u64::MAX,
            u64::MAX - 1,
            8_640_001_796_356_484_426,
            i64::MAX as u64,
            253_402_300_800_000,
        ] {
            let text = until(expires, now_ms);
            assert!(
                text.starts_with("until after 9999-12-31T23:59:59Z (in "),
                "{expires}: {text}"
            );
        }
        assert_eq!(
            until(253_402_300_799_000, 253_402_300_799_000),
            "until 9999-12-31T23:59:59Z (expired)"
        );
        assert_eq!(until(0, now_ms), "until - (expired)");
        assert_eq!(
            until(1_000, u64::MAX),
            "until 1970-01-01T00:00:01Z (expired)"
        );
    }
}

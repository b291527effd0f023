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

fn print(r: &WhyReport) {
    out!("{}: {}", r.address, r.verdict);
    if r.blocks.is_empty() {
        out!("  blocklist: no entry covers it");
    }
    for b in &r.blocks {
        let left = match b.expires_in_secs {
            Some(s) => format!(
                "{} left",
                super::human_duration(std::time::Duration::from_secs(s))
            ),
            None => "permanent".into(),
        };
        out!(
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
        out!(
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
        Some(b) => out!(
            "  rate limit: bucket {}: {} of {} SYNs left, full in {} ms",
            b.key,
            b.syns_left,
            b.burst,
            b.full_in_ms
        ),
        None => out!("  rate limit: no bucket (not seen, or the limiter is off)"),
    }
    match &r.kernel {
        Some(k) => out!(
            "  kernel: {} packets, {} SYNs, {} drops, last seen {} s ago",
            k.packets,
            k.syns,
            k.drops,
            k.last_seen_secs_ago
        ),
        None => out!("  kernel: not in the per-source table"),
    }
    match &r.sessions {
        Some(s) => out!(
            "  sessions: {}",
            serde_json::to_string(s).unwrap_or_default()
        ),
        None => out!("  sessions: none known (or no daemon answered)"),
    }
    match &r.store {
        Some(view) => print_store(view),
        None => out!("  store: not read (no daemon answered, or no store)"),
    }
}

/// What the state store holds about it.
fn print_store(v: &StoreView) {
    out!(
        "  store: {} (node {}{})",
        v.engine,
        v.node,
        if v.fleet { ", shared by the fleet" } else { "" }
    );
    for b in &v.bans {
        let until = match b.expires_unix_ms {
            Some(ms) => format!("until unix {}", ms / 1000),
            None => "permanent".into(),
        };
        out!(
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
        out!(
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
        out!(
            "    waiting ban: {} ({}), written when its session closes",
            b.target,
            b.reason
        );
    }
    for c in &v.counts {
        out!(
            "    auto-ban count: {} {} {} of {}{}",
            c.target,
            c.check,
            c.firings,
            c.needed,
            if c.shared { " (fleet-wide)" } else { "" }
        );
    }
    if let Some(g) = &v.greylist {
        out!(
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
        out!(
            "    stored sessions: {}",
            serde_json::to_string(s).unwrap_or_default()
        );
    }
    for e in &v.errors {
        out!("    not read: {e}");
    }
}

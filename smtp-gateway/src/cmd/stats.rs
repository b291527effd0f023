//! `smtp-gateway stats [--json] [--top N]`: kernel counters, with each source's SMTP session
//! verdicts when the daemon answers (the maps alone know packets, not sessions).

use std::process::ExitCode;

use anyhow::bail;
use smtp_gateway::{
    config::Config,
    control::{
        ops,
        protocol::{Request, Response, SourceReport, StatsReport},
    },
};

pub fn run(config: &Config, args: &crate::cli::StatsArgs) -> anyhow::Result<ExitCode> {
    let stats = fetch(config, args.top)?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!("{:<24} {:>14} {:>16}", "VERDICT", "PACKETS", "BYTES");
    for v in &stats.verdicts {
        out!("{:<24} {:>14} {:>16}", v.verdict, v.packets, v.bytes);
    }
    for (title, rows) in [
        ("by drops", &stats.top_by_drops),
        ("by packets", &stats.top_by_packets),
    ] {
        out!(
            "\nTop {} sources {title} ({} tracked)",
            args.top,
            stats.tracked_sources
        );
        out!(
            "{:<40} {:>10} {:>12} {:>8} {:>10} {:>10}  SESSIONS",
            "SOURCE",
            "PACKETS",
            "BYTES",
            "SYNS",
            "DROPS",
            "LAST SEEN"
        );
        for r in rows.iter() {
            let k = &r.kernel;
            out!(
                "{:<40} {:>10} {:>12} {:>8} {:>10} {:>9}s  {}",
                k.source.to_string(),
                k.packets,
                k.bytes,
                k.syns,
                k.drops,
                k.last_seen_secs_ago,
                sessions_cell(r)
            );
        }
    }
    if stats.session_sources.is_none() {
        out!("\n(no daemon answers: session verdicts are not shown)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The stats from the daemon (with session outcomes), or from the pinned maps.
pub fn fetch(config: &Config, top: usize) -> anyhow::Result<StatsReport> {
    match super::call(config, Request::Stats { top }, super::open_pinned, |dp| {
        Ok(Response::Stats(ops::stats(dp, top)?))
    })? {
        Response::Stats(stats) => Ok(stats),
        other => {
            super::report(other)?;
            bail!("the daemon sent no statistics")
        }
    }
}

/// "3 (delivered 2, rejected 1) last: rejected" or "-".
fn sessions_cell(r: &SourceReport) -> String {
    match &r.sessions {
        None => "-".into(),
        Some(s) => {
            let verdicts: Vec<String> = s
                .by_verdict
                .iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect();
            format!(
                "{} ({}) last: {}",
                s.sessions,
                verdicts.join(", "),
                s.last_verdict
            )
        }
    }
}

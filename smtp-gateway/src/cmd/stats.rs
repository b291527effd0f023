//! `smtp-gateway stats [--json] [--top N]`.

use std::process::ExitCode;

use anyhow::bail;
use serde::Serialize;
use smtp_gateway::{
    config::Config,
    dataplane::{
        loader,
        stats::{SourceRow, VerdictTotal, top_by},
    },
};

#[derive(Serialize)]
struct StatsJson {
    verdicts: Vec<VerdictTotal>,
    top_by_drops: Vec<SourceRow>,
    top_by_packets: Vec<SourceRow>,
    tracked_sources: usize,
}

pub fn run(config: &Config, args: &crate::cli::StatsArgs) -> anyhow::Result<ExitCode> {
    let Some(dp) = loader::open_existing(&config.dataplane)? else {
        bail!(
            "no pinned data plane under {}: start `smtp-gateway run` first",
            config.dataplane.pin_dir.display()
        );
    };
    let verdicts = dp.verdict_totals()?;
    let rows = dp.source_rows()?;
    let stats = StatsJson {
        top_by_drops: top_by(&rows, args.top, |r| r.drops),
        top_by_packets: top_by(&rows, args.top, |r| r.packets),
        tracked_sources: rows.len(),
        verdicts,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:>14} {:>16}", "VERDICT", "PACKETS", "BYTES");
    for v in &stats.verdicts {
        println!("{:<24} {:>14} {:>16}", v.verdict, v.packets, v.bytes);
    }
    for (title, rows) in [
        ("by drops", &stats.top_by_drops),
        ("by packets", &stats.top_by_packets),
    ] {
        println!(
            "\nTop {} sources {title} ({} tracked)",
            args.top, stats.tracked_sources
        );
        println!(
            "{:<40} {:>10} {:>12} {:>8} {:>10} {:>10}",
            "SOURCE", "PACKETS", "BYTES", "SYNS", "DROPS", "LAST SEEN"
        );
        for r in rows.iter() {
            println!(
                "{:<40} {:>10} {:>12} {:>8} {:>10} {:>9}s",
                r.source.to_string(),
                r.packets,
                r.bytes,
                r.syns,
                r.drops,
                r.last_seen_secs_ago
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `smtp-gateway block add|del|list|import`.

use std::{fs::File, io::BufReader, process::ExitCode};

use anyhow::{Context, bail};
use serde::Serialize;
use smtp_gateway::{
    config::Config,
    dataplane::{
        Target, clock,
        import::{self, ImportOptions},
        loader, reasons,
    },
};
use smtp_gateway_common::{BlockEntry, origin};

use super::{human_duration, human_time};
use crate::cli::BlockCommand;

/// One entry as `block list --json` prints it.
#[derive(Serialize)]
struct EntryJson {
    target: String,
    kind: &'static str,
    reason: Option<String>,
    origin: &'static str,
    /// Seconds left; null when permanent.
    expires_in_secs: Option<u64>,
    active: bool,
    added_at: u64,
}

pub fn run(config: &Config, command: BlockCommand) -> anyhow::Result<ExitCode> {
    let mut dp = loader::ensure_maps(&config.dataplane)?;
    match command {
        BlockCommand::Add {
            target,
            ttl,
            reason,
        } => {
            let target: Target = target.parse()?;
            if let Some(net) = dp.allowlisted(target.net().addr()) {
                eprintln!("warning: {target} is covered by allowlist entry {net}, which wins");
            }
            let reason_id = match &reason {
                Some(text) => reasons::intern(&mut dp, text)?,
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
            match ttl {
                Some(ttl) => println!("blocked {target} for {}", human_duration(ttl)),
                None => println!("blocked {target}"),
            }
        }
        BlockCommand::Del { target } => {
            let target: Target = target.parse()?;
            if !dp.unblock(target)? {
                bail!(
                    "{target} is not in the blocklist (use the exact address or prefix listed by `block list`)"
                );
            }
            println!("unblocked {target}");
        }
        BlockCommand::List { json } => {
            let now = clock::monotonic_ns();
            let mut records = dp.blocked()?;
            records.sort_by_key(|r| r.target);
            let rows: Vec<EntryJson> = records
                .iter()
                .map(|r| EntryJson {
                    target: r.target.to_string(),
                    kind: match r.target {
                        Target::V4(_) | Target::V6(_) => "exact",
                        _ => "prefix",
                    },
                    reason: reasons::resolve(&dp, r.entry.reason),
                    origin: origin::name(r.entry.origin),
                    expires_in_secs: clock::remaining(r.entry.expires_at_ns, now)
                        .map(|d| d.as_secs()),
                    active: r.entry.is_active(now),
                    added_at: r.entry.added_at_s,
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<43} {:<7} {:<8} {:<14} {:<21} REASON",
                    "TARGET", "KIND", "ORIGIN", "EXPIRES", "ADDED"
                );
                for r in &rows {
                    let expires = match (r.expires_in_secs, r.active) {
                        (_, false) => "expired".to_string(),
                        (Some(s), true) => {
                            format!("in {}", human_duration(std::time::Duration::from_secs(s)))
                        }
                        (None, true) => "never".to_string(),
                    };
                    println!(
                        "{:<43} {:<7} {:<8} {:<14} {:<21} {}",
                        r.target,
                        r.kind,
                        r.origin,
                        expires,
                        human_time(r.added_at),
                        r.reason.as_deref().unwrap_or("-")
                    );
                }
                println!("{} entries", rows.len());
            }
        }
        BlockCommand::Import {
            file,
            strict,
            ttl,
            reason,
        } => {
            let reader = BufReader::new(
                File::open(&file).with_context(|| format!("cannot open {}", file.display()))?,
            );
            let (lines, errors) = import::parse(reader);
            for e in &errors {
                eprintln!("{}:{}", file.display(), e);
            }
            if strict && !errors.is_empty() {
                bail!(
                    "{} bad line(s) in {}; --strict: nothing was applied",
                    errors.len(),
                    file.display()
                );
            }
            let reason = reason.or_else(|| {
                file.file_name()
                    .map(|n| format!("import {}", n.to_string_lossy()))
            });
            let bar = indicatif::ProgressBar::new(lines.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} importing [{bar:40}] {pos}/{len} ({per_sec}, {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let started = std::time::Instant::now();
            let summary = import::apply(&mut dp, &lines, &ImportOptions { reason, ttl }, |n| {
                bar.set_position(n as u64)
            })?;
            bar.finish_and_clear();
            println!(
                "imported {} entries from {} in {:.2}s ({} exact IPv4, {} exact IPv6, {} IPv4 prefixes, {} IPv6 prefixes)",
                summary.total(),
                file.display(),
                started.elapsed().as_secs_f64(),
                summary.exact_v4,
                summary.exact_v6,
                summary.prefix_v4,
                summary.prefix_v6
            );
            if !errors.is_empty() {
                eprintln!(
                    "{} bad line(s) skipped; the {} valid entries were applied",
                    errors.len(),
                    summary.total()
                );
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

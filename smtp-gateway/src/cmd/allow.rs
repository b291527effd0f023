//! `smtp-gateway allow add|del|list`.

use std::process::ExitCode;

use anyhow::bail;
use serde::Serialize;
use smtp_gateway::{
    config::Config,
    dataplane::{Target, clock, loader, reasons},
};
use smtp_gateway_common::{AllowEntry, origin};

use super::human_time;
use crate::cli::AllowCommand;

#[derive(Serialize)]
struct EntryJson {
    prefix: String,
    reason: Option<String>,
    origin: &'static str,
    added_at: u64,
}

pub fn run(config: &Config, command: AllowCommand) -> anyhow::Result<ExitCode> {
    let mut dp = loader::ensure_maps(&config.dataplane)?;
    match command {
        AllowCommand::Add { target, reason } => {
            let target: Target = target.parse()?;
            let reason = match &reason {
                Some(text) => reasons::intern(&mut dp, text)?,
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
            println!("allowed {target}");
        }
        AllowCommand::Del { target } => {
            let target: Target = target.parse()?;
            if !dp.disallow(target.net())? {
                bail!("{target} is not in the allowlist");
            }
            println!("removed {target} from the allowlist");
        }
        AllowCommand::List { json } => {
            let mut records = dp.allowed()?;
            records.sort_by_key(|r| r.net);
            let rows: Vec<EntryJson> = records
                .iter()
                .map(|r| EntryJson {
                    prefix: r.net.to_string(),
                    reason: reasons::resolve(&dp, r.entry.reason),
                    origin: origin::name(r.entry.origin),
                    added_at: r.entry.added_at_s,
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<43} {:<8} {:<21} REASON", "PREFIX", "ORIGIN", "ADDED");
                for r in &rows {
                    println!(
                        "{:<43} {:<8} {:<21} {}",
                        r.prefix,
                        r.origin,
                        human_time(r.added_at),
                        r.reason.as_deref().unwrap_or("-")
                    );
                }
                println!("{} entries", rows.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

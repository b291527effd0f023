//! `smtp-gateway allow add|del|list`, through the daemon when it runs.

use std::process::ExitCode;

use smtp_gateway::{
    config::Config,
    control::{
        ops,
        protocol::{Request, Response},
    },
};

use super::{ensure_maps, human_time};
use crate::cli::AllowCommand;

pub fn run(config: &Config, command: AllowCommand) -> anyhow::Result<ExitCode> {
    match command {
        AllowCommand::Add { target, reason } => {
            let request = Request::AllowAdd {
                target: target.clone(),
                reason: reason.clone(),
            };
            super::report(super::call(config, request, ensure_maps, |dp| {
                ops::allow_add(dp, &target, reason.as_deref())
            })?)?;
        }
        AllowCommand::Del { target } => {
            let request = Request::AllowDel {
                target: target.clone(),
            };
            super::report(super::call(config, request, ensure_maps, |dp| {
                ops::allow_del(dp, &target)
            })?)?;
        }
        AllowCommand::List { json } => {
            let response = super::call(config, Request::AllowList, ensure_maps, |dp| {
                Ok(Response::Allowlist {
                    entries: ops::allow_list(dp)?,
                })
            })?;
            let rows = match response {
                Response::Allowlist { entries } => entries,
                other => return super::report(other).map(|()| ExitCode::FAILURE),
            };
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

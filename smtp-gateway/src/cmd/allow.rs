//! `smtp-gateway allow add|del|list`, through the daemon when it runs.

use std::process::ExitCode;

use smtp_gateway::{
    config::Config,
    control::{
        ops,
        protocol::{AllowRow, Request},
    },
};

use super::human_time;
use crate::cli::{AllowCommand, ListArgs};

pub fn run(config: &Config, command: AllowCommand) -> anyhow::Result<ExitCode> {
    match command {
        AllowCommand::Add { target, reason } => {
            let request = Request::AllowAdd {
                target: target.clone(),
                reason: reason.clone(),
            };
            super::change(config, request, |dp| {
                ops::allow_add(dp, &target, reason.as_deref())
            })?;
        }
        AllowCommand::Del { target } => super::change(
            config,
            Request::AllowDel {
                target: target.clone(),
            },
            |dp| ops::allow_del(dp, &target),
        )?,
        AllowCommand::List(ListArgs { json }) => {
            return super::list(
                config,
                Request::AllowList,
                ops::allow_list,
                json,
                print_table,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[AllowRow]) {
    out!("{:<43} {:<8} {:<21} REASON", "PREFIX", "ORIGIN", "ADDED");
    for r in rows {
        out!(
            "{:<43} {:<8} {:<21} {}",
            r.prefix,
            r.origin,
            human_time(r.added_at),
            r.reason.as_deref().unwrap_or("-")
        );
    }
    out!("{} entries", rows.len());
}

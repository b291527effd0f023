//! `smtp-gateway allow add|del|list`, through the daemon when it runs.

use std::process::ExitCode;

use smtp_gateway::{
    config::Config,
    control::{
        ops,
        protocol::{AllowRow, Request},
    },
};

use super::{human_time, printable};
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
        AllowCommand::Del { target } => super::remove(
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
    let text = table(rows);
    out!("{}", text.strip_suffix('\n').unwrap_or(&text));
}

/// The table `allow list` prints (reasons made [`printable`]).
fn table(rows: &[AllowRow]) -> String {
    let mut out = format!("{:<43} {:<8} {:<21} REASON\n", "PREFIX", "ORIGIN", "ADDED");
    for r in rows {
        out.push_str(&format!(
            "{:<43} {:<8} {:<21} {}\n",
            r.prefix,
            printable(&r.origin),
            human_time(r.added_at),
            printable(r.reason.as_deref().unwrap_or("-"))
        ));
    }
    out.push_str(&format!("{}\n", super::entries(rows.len())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_with_control_characters_is_escaped_in_the_table() {
        let rows = [AllowRow {
            prefix: "198.18.0.0/24".into(),
            reason: Some("ok\x1b[2J\x1b[Hcleared screen\nFAKE allow line\\n".into()),
            origin: "fleet".into(),
            added_at: 0,
        }];
        let text = table(&rows);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 3, "header, one row, count: {text:?}");
        assert_eq!(text.lines().last(), Some("1 entry"), "{text:?}");
        // A backslash is escaped too: an escape cannot be faked.
        assert!(
            text.contains(r"ok\u{1b}[2J\u{1b}[Hcleared screen\nFAKE allow line\\n"),
            "{text:?}"
        );
    }
}

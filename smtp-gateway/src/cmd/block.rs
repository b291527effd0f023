//! `smtp-gateway block add|del|list|import`. Add, del and list go through the daemon when it
//! runs; import always writes the pinned maps from this process (millions of entries are not
//! worth a trip through the socket, and the daemon sees them at once: the maps are shared).

use std::{fs::File, io::BufReader, process::ExitCode};

use anyhow::{Context, bail};
use smtp_gateway::{
    config::Config,
    control::{
        ops,
        protocol::{BlockRow, Request, Response},
    },
    dataplane::import::{self, ImportOptions},
};

use super::{ensure_maps, human_duration, human_time, printable};
use crate::cli::{BlockCommand, ListArgs};

pub fn run(config: &Config, command: BlockCommand) -> anyhow::Result<ExitCode> {
    match command {
        BlockCommand::Add {
            target,
            ttl,
            reason,
        } => {
            let request = Request::BlockAdd {
                target: target.clone(),
                ttl_secs: ttl.map(|t| t.as_secs().max(1)),
                reason: reason.clone(),
            };
            super::change(config, request, |dp| {
                ops::block_add(dp, &target, ttl, reason.as_deref())
            })?;
        }
        BlockCommand::Del { target } => super::remove(
            config,
            Request::BlockDel {
                target: target.clone(),
            },
            |dp| ops::block_del(dp, &target),
        )?,
        BlockCommand::List(ListArgs { json }) => {
            return super::list(
                config,
                Request::BlockList,
                ops::block_list,
                json,
                print_table,
            );
        }
        BlockCommand::Import {
            file,
            strict,
            ttl,
            reason,
        } => {
            // The file is read whole before anything is created or written: one that cannot be
            // read is an error naming it, not a partial import of nothing.
            let opened =
                File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
            if opened.metadata().is_ok_and(|m| m.is_dir()) {
                bail!(
                    "cannot import {}: it is a directory, not a file",
                    file.display()
                );
            }
            let (lines, errors) = import::parse(BufReader::new(opened))
                .with_context(|| format!("cannot read {}", file.display()))?;
            let mut dp = ensure_maps(config)?;
            for e in &errors {
                eprintln!("{}: {}", file.display(), e);
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
            out!(
                "imported {} from {} in {:.2}s ({} exact IPv4, {} exact IPv6, {} IPv4 prefixes, {} IPv6 prefixes)",
                super::entries(summary.total()),
                file.display(),
                started.elapsed().as_secs_f64(),
                summary.exact_v4,
                summary.exact_v6,
                summary.prefix_v4,
                summary.prefix_v6
            );
            // The daemon publishes them to the fleet now rather than at its next reconcile
            // (the entries are in; a daemon that does not answer changes nothing of that).
            if summary.total() > 0 {
                let asked = super::daemon(config).and_then(|d| match d {
                    Some(mut client) => Ok(Some(client.call(&Request::FleetSync)?)),
                    None => Ok(None),
                });
                match asked {
                    Ok(Some(Response::Done { message, .. })) if message.starts_with("fleet:") => {
                        out!("{message}");
                    }
                    Ok(Some(Response::Error { message })) => {
                        eprintln!("warning: the daemon did not publish the import: {message}");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("warning: the daemon was not told of the import: {e:#}");
                    }
                }
            }
            if !errors.is_empty() {
                eprintln!(
                    "{} bad line(s) skipped; the valid ones were applied ({})",
                    errors.len(),
                    super::entries(summary.total())
                );
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[BlockRow]) {
    let text = table(rows);
    out!("{}", text.strip_suffix('\n').unwrap_or(&text));
}

/// The table `block list` prints (reasons made [`printable`]).
fn table(rows: &[BlockRow]) -> String {
    let mut out = format!(
        "{:<43} {:<7} {:<8} {:<14} {:<21} REASON\n",
        "TARGET", "KIND", "ORIGIN", "EXPIRES", "ADDED"
    );
    for r in rows {
        let expires = match (r.expires_in_secs, r.active) {
            (_, false) => "expired".to_string(),
            (Some(s), true) => format!("in {}", human_duration(std::time::Duration::from_secs(s))),
            (None, true) => "never".to_string(),
        };
        out.push_str(&format!(
            "{:<43} {:<7} {:<8} {:<14} {:<21} {}\n",
            r.target,
            r.kind,
            printable(&r.origin),
            expires,
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

    /// "in 6days 23h 59m 59s" overflowed the EXPIRES column and pushed the row out of line;
    /// and one entry was "1 entries".
    #[test]
    fn expiries_fit_their_column_and_one_entry_is_one_entry() {
        let rows = [BlockRow {
            target: "198.18.0.1".into(),
            kind: "exact".into(),
            reason: Some("bot".into()),
            origin: "cli".into(),
            expires_in_secs: Some(7 * 86_400 - 1),
            active: true,
            added_at: 0,
        }];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].find("REASON"),
            lines[1].find("bot"),
            "out of line: {text}"
        );
        assert!(lines[1].contains(" in 7d "), "{text}");
        assert_eq!(lines[2], "1 entry", "{text}");
    }

    #[test]
    fn a_reason_with_control_characters_is_escaped_in_the_table() {
        let rows = [BlockRow {
            target: "198.18.0.1".into(),
            kind: "exact".into(),
            reason: Some("evil\x1b[31mRED\x1b[0m\nFAKE 1.2.3.4 line\r\x07\u{9b}2J".into()),
            origin: "fleet".into(),
            expires_in_secs: None,
            active: true,
            added_at: 0,
        }];
        let text = table(&rows);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 3, "header, one row, count: {text:?}");
        assert!(
            text.contains(r"evil\u{1b}[31mRED\u{1b}[0m\nFAKE 1.2.3.4 line\r\u{7}\u{9b}2J"),
            "{text:?}"
        );
    }
}

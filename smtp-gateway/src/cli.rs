//! Command-line interface: `smtp-gateway run | detach | check-config | block | allow | stats |
//! top | reload`. In the library (the binary parses with it) so that [`command`] gives the
//! packaging step the real clap command for the man page and shell completions.
//!
//! - `top.rs`: the arguments of `top` and its sort keys.

use std::path::PathBuf;

pub mod top;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use self::top::TopArgs;

/// The clap command the binary parses with (name, version, every subcommand and option): what
/// the man page `smtp-gateway.8` and the shell completions are generated from.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Edge SMTP filter: XDP data plane + SMTP filtering proxy.
#[derive(Debug, Parser)]
#[command(name = "smtp-gateway", version, about)]
pub struct Cli {
    /// Configuration file [default: /etc/smtp-gateway/gateway.toml, built-in defaults if absent]
    #[arg(short, long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the XDP program (reusing pinned state), keep it configured.
    Run,
    /// Remove the XDP program from every interface and delete all pinned state. Refused while a
    /// daemon answers on the control socket: stop it first.
    Detach(DetachArgs),
    /// Validate the configuration file and exit (non-zero on error): its values, and the files
    /// and accounts the daemon's start reads (TLS certificate and key, backend CAs, reputation
    /// lists, CrowdSec key file, daemon.user/group). Attaches and binds nothing.
    CheckConfig,
    /// Manage the kernel blocklist.
    #[command(subcommand)]
    Block(BlockCommand),
    /// Manage the kernel allowlist (never dropped, never rate-limited).
    #[command(subcommand)]
    Allow(AllowCommand),
    /// Kernel verdict counters and the top sources (with their SMTP session verdicts when the
    /// daemon runs).
    Stats(StatsArgs),
    /// Live view of the busiest and most-dropped sources (q quits; one frame without a terminal).
    Top(TopArgs),
    /// Ask the running daemon to reload its configuration file, and report how it went.
    Reload,
    /// Why is this source blocked (or not)? The blocklist and allowlist entries covering it, its
    /// SYN rate-limit bucket, its kernel counters and (with the daemon) its SMTP sessions.
    Why(WhyArgs),
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Detach even though a daemon answers: it keeps running with no data plane (no kernel
    /// filtering; its list changes reach nothing) until it is stopped or restarted.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The address (IPv4 or IPv6; one address, not a prefix).
    #[arg(value_parser = parse_why_address)]
    pub address: String,
    /// Machine-readable output (with --follow: one JSON object per line).
    #[arg(long)]
    pub json: bool,
    /// Then print the kernel's verdict for each packet from the address, live, written by the XDP
    /// program only while traced; until Ctrl-C/SIGTERM or --for (root, runs on the pinned maps).
    #[arg(long)]
    pub follow: bool,
    /// How long --follow traces (default 60s, at most dataplane.trace_max_duration).
    #[arg(long = "for", value_parser = humantime::parse_duration, requires = "follow")]
    pub duration: Option<std::time::Duration>,
}

/// The address `why` asks about, as given, once it is one: a prefix or anything else is refused
/// before anything is opened, with the daemon's message.
fn parse_why_address(text: &str) -> Result<String, String> {
    crate::control::why::parse_address(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// Shortest `--ttl`: blocklist expiry is counted in whole seconds, and a shorter one used to
/// become a one-second ban without a word.
pub const MIN_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest `--ttl`: the longest ban the store keeps ([`crate::control::ops::MAX_TTL`], 36500
/// days); a longer one saturated the kernel entry while the store kept an expiry past year 9999.
pub const MAX_TTL: std::time::Duration = crate::control::ops::MAX_TTL;

/// A `--ttl`: a duration (`30m`, `1h`, `7d`) of at least [`MIN_TTL`] and at most [`MAX_TTL`].
/// Anything else is told what `--ttl` takes (humantime alone says "expected number at 0" to
/// `forever`).
fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|_| {
        format!(
            "{text:?} is not a duration: give a duration like 30m, 2h, 7d (at least 1s), or \
             leave --ttl out for an entry that never expires"
        )
    })?;
    if ttl < MIN_TTL {
        return Err(format!(
            "must be at least 1s (leave --ttl out for a permanent entry), not {text:?}"
        ));
    }
    if ttl > MAX_TTL {
        return Err(format!(
            "must be at most {} (the longest ban the store keeps; leave --ttl out for a \
             permanent entry), not {text:?}",
            crate::control::ops::human_duration(MAX_TTL)
        ));
    }
    Ok(ttl)
}

#[derive(Debug, Subcommand)]
pub enum BlockCommand {
    /// Block an address or a prefix (IPv4 or IPv6).
    Add {
        /// Address (198.18.0.7, 2001:db8::7) or prefix (198.18.0.0/24, 2001:db8::/48).
        target: String,
        /// Lifetime, e.g. 30m, 1h, 7d; at least 1s, at most 36500d (default: permanent).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<std::time::Duration>,
        /// Why (shown by `block list`; at most 64 bytes: a longer one is cut, whole
        /// characters kept).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove exactly this address or prefix from the blocklist.
    Del {
        /// Address or prefix as it was added (198.18.0.7, 198.18.0.0/24): a prefix does not
        /// remove the addresses inside it, nor an address the prefix holding it.
        target: String,
    },
    /// List blocklist entries.
    List(ListArgs),
    /// Import a file: one address/prefix per line (at most 4096 bytes), `#`/`;` comments, Spamhaus
    /// DROP (text or JSON); at most 1 GiB and 16777216 lines, or nothing is applied.
    Import {
        /// The file to read (a UTF-8 byte-order mark at its start is skipped).
        file: PathBuf,
        /// Apply nothing if any line is bad.
        #[arg(long)]
        strict: bool,
        /// Lifetime of the imported entries; at least 1s, at most 36500d (default: permanent).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<std::time::Duration>,
        /// Reason for lines without their own comment (default: the file name).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AllowCommand {
    /// Allow an address or prefix.
    Add {
        /// Address (192.0.2.7, 2001:db8::7) or prefix (192.0.2.0/24, 2001:db8::/48).
        target: String,
        /// Why (shown by `allow list`; at most 64 bytes: a longer one is cut, whole
        /// characters kept).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove exactly this address or prefix from the allowlist.
    Del {
        /// Address or prefix as it was added (192.0.2.7, 192.0.2.0/24).
        target: String,
    },
    /// List allowlist entries.
    List(ListArgs),
}

/// How `block list` and `allow list` print.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// How many sources to list by drops and by packets.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and every argument of every command says what it is: `--help` and the
    /// man pages (generated from this command) show nothing else.
    #[test]
    fn every_command_and_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut cmd = command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "smtp-gateway", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}

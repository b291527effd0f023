//! `smtp-gateway`: tracing, argument parsing, dispatch. Everything else lives in the library.

mod cmd;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use smtp_gateway::{
    cli::{self, Cli, Command, LogFormat},
    config::{Config, DEFAULT_CONFIG_PATH},
};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: many errors name their cause in
/// their own text ("cert.pem: No such file or directory") and keep it as their source too.
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::field::MakeExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The HTTP client (CrowdSec) logs every request it writes at debug, headers included: the
    // API key must never reach a log, whatever RUST_LOG says.
    let filter = match "ureq=info".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    };
    // Colour only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        // One event, one line: what clients and backends said is escaped (log_line.rs).
        LogFormat::Human => builder
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(smtp_gateway::log_line::write_field)
                    .delimited(" "),
            )
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How long the exit waits for blocking work still under way (a reload reading a list).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The configuration and the file it came from (`None`: built-in defaults); with `not_empty`
/// (`run`, `check-config`) a file with no option is refused.
fn load_config(path: Option<&Path>, not_empty: bool) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let load = |path: &Path| {
        if not_empty {
            Config::load_not_empty(path)
        } else {
            Config::load(path)
        }
    };
    match path {
        Some(path) => Ok((load(path)?, Some(path.to_path_buf()))),
        None => {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            if default.exists() {
                Ok((load(default)?, Some(default.to_path_buf())))
            } else {
                Ok((Config::default(), None))
            }
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let not_empty = matches!(cli.command, Command::Run | Command::CheckConfig);
    let (config, path) = load_config(cli.config.as_deref(), not_empty)?;
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Run => {
            // Setup and the privilege drop happen before the runtime starts its threads, so
            // every thread runs with the reduced privileges.
            let prepared = smtp_gateway::daemon::prepare(path, config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let served = runtime.block_on(smtp_gateway::daemon::serve(prepared));
            // After a stop every task has ended; after a start that failed half-way some are
            // still running. The workers are waited for (so nothing is logged after the error
            // printed below), blocking work only for SHUTDOWN_GRACE: a reload abandoned by a
            // stop signal, stuck reading a list, does not hold the exit.
            runtime.shutdown_timeout(SHUTDOWN_GRACE);
            served?;
            Ok(ok)
        }
        Command::CheckConfig => {
            // The files and accounts `run` would read at start, as it reads them.
            smtp_gateway::daemon::check_files(&config)?;
            // Valid, but probably not what was meant: said, not refused.
            for warning in smtp_gateway::daemon::warnings(&config) {
                eprintln!("warning: {warning}");
            }
            match &path {
                Some(p) => println!("{}: configuration is valid", p.display()),
                None => println!("no configuration file; built-in defaults are valid"),
            }
            Ok(ok)
        }
        Command::Detach(args) => cmd::detach::run(&config, args.force),
        Command::Block(command) => cmd::block::run(&config, command),
        Command::Allow(command) => cmd::allow::run(&config, command),
        Command::Stats(args) => cmd::stats::run(&config, &args),
        Command::Why(args) => cmd::why::run(&config, &args),
        Command::Reload => cmd::reload::run(&config),
        Command::Top(args) => cmd::top::run(&config, &args),
    }
}

//! One file per operator command. A command that changes or reads the lists goes through the
//! running daemon's control socket when one answers (the daemon logs and counts it), and works
//! on the pinned maps directly otherwise, so it behaves the same whether or not the daemon runs.

/// `println!` for a command's output. A reader that went away (`smtp-gateway block list | head`)
/// ends the command quietly, as it ends `ls`; `println!` would panic there. Any other failure to
/// write is reported and the command fails.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cmd::write_out(format_args!($($arg)*))
    };
}

pub mod allow;
pub mod block;
pub mod detach;
pub mod follow;
pub mod reload;
pub mod stats;
pub mod top;
pub mod why;

use std::{process::ExitCode, time::Duration};

use anyhow::bail;
use smtp_gateway::{
    config::Config,
    control::{
        client::Client,
        ops::OpError,
        protocol::{AllowRow, BlockRow, Request, Response},
    },
    dataplane::Dataplane,
};

pub use smtp_gateway::control::ops::human_duration;

/// Writes one line of output for [`out!`].
pub fn write_out(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing the output: {e}");
            std::process::exit(1);
        }
    }
}

/// The running daemon, if one answers on the control socket.
pub fn daemon(config: &Config) -> anyhow::Result<Option<Client>> {
    Ok(Client::connect(
        &config.control_socket(),
        config.daemon.control_timeout,
    )?)
}

/// Asks the daemon when one runs, else runs `local` on the data plane `open` gives.
pub fn call(
    config: &Config,
    request: Request,
    open: impl FnOnce(&Config) -> anyhow::Result<Dataplane>,
    local: impl FnOnce(&mut Dataplane) -> Result<Response, OpError>,
) -> anyhow::Result<Response> {
    if let Some(mut client) = daemon(config)? {
        return Ok(client.call(&request)?);
    }
    let mut dp = open(config)?;
    Ok(local(&mut dp)?)
}

/// Changes a list through the daemon, or with `local` on the pinned maps (created when missing),
/// and prints the outcome ([`report`]).
pub fn change(
    config: &Config,
    request: Request,
    local: impl FnOnce(&mut Dataplane) -> Result<Response, OpError>,
) -> anyhow::Result<()> {
    report(call(config, request, ensure_maps, local)?)
}

/// Removes a list entry through the daemon, or with `local` on the pinned maps, which must exist
/// ([`open_pinned`]: there is nothing to remove from maps that are not there, and creating them
/// to say so would hold their memory until `detach`), and prints the outcome ([`report`]).
pub fn remove(
    config: &Config,
    request: Request,
    local: impl FnOnce(&mut Dataplane) -> Result<Response, OpError>,
) -> anyhow::Result<()> {
    report(call(config, request, open_pinned, local)?)
}

/// Rows a list command prints, and how the control protocol carries them.
pub trait Listed: serde::Serialize + Sized {
    /// The answer carrying `entries`.
    fn wrap(entries: Vec<Self>) -> Response;
    /// The rows of an answer; any other answer back as the error.
    fn unwrap(response: Response) -> Result<Vec<Self>, Response>;
}

/// [`Listed`] for a row type carried by the `Response` variant of that name.
macro_rules! listed {
    ($($row:ty => $variant:ident),* $(,)?) => {$(
        impl Listed for $row {
            fn wrap(entries: Vec<Self>) -> Response {
                Response::$variant { entries }
            }

            fn unwrap(response: Response) -> Result<Vec<Self>, Response> {
                match response {
                    Response::$variant { entries } => Ok(entries),
                    other => Err(other),
                }
            }
        }
    )*};
}

listed!(AllowRow => Allowlist, BlockRow => Blocklist);

/// Lists entries through the daemon, or with `local` on the pinned maps ([`open_pinned`]: a
/// read-only command creates nothing), and prints them: pretty JSON with `json`, else `table`. Any other answer is reported and the
/// command fails.
pub fn list<T: Listed>(
    config: &Config,
    request: Request,
    local: fn(&Dataplane) -> Result<Vec<T>, OpError>,
    json: bool,
    table: fn(&[T]),
) -> anyhow::Result<ExitCode> {
    let response = call(config, request, open_pinned, |dp| local(dp).map(T::wrap))?;
    let rows = match T::unwrap(response) {
        Ok(rows) => rows,
        Err(other) => return report(other).map(|()| ExitCode::FAILURE),
    };
    if json {
        out!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a `Done` (warnings to stderr); an `Error` becomes the command's error.
pub fn report(response: Response) -> anyhow::Result<()> {
    match response {
        Response::Done { message, warnings } => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            out!("{message}");
            Ok(())
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// The pinned maps, created when missing (block and allow work before the first `run`).
pub fn ensure_maps(config: &Config) -> anyhow::Result<Dataplane> {
    Ok(smtp_gateway::dataplane::loader::ensure_maps(
        &config.dataplane,
    )?)
}

/// The pinned maps, which must exist: a read-only command (`stats`, `top`, `why`, the lists)
/// never creates them (sixteen maps holding locked kernel memory until `detach`), and a report
/// of nothing would mislead (a wrong `dataplane.pin_dir` would look like an empty blocklist).
pub fn open_pinned(config: &Config) -> anyhow::Result<Dataplane> {
    match smtp_gateway::dataplane::loader::open_existing(&config.dataplane)? {
        Some(dp) => Ok(dp),
        None => bail!(
            "no pinned data plane under {}: start `smtp-gateway run` first",
            config.dataplane.pin_dir.display()
        ),
    }
}

/// `text` fit for a terminal table: control characters (ESC, CR, LF, BEL, DEL, the C1 range)
/// and bidirectional overrides are escaped the way Rust writes them (`\u{1b}`, `\r`, `\n`),
/// and so is a backslash, so an escape cannot be faked. A reason can come from a fleet message
/// or `--reason`: raw, it could recolour or clear the screen or forge a row. JSON output
/// (`--json`) stays exact.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    use smtp_gateway::log_line::{escaped_where, unsafe_on_a_line};
    escaped_where(text, |c| c == '\\' || unsafe_on_a_line(c))
}

/// "1 entry", "2 entries".
pub fn entries(n: usize) -> String {
    if n == 1 {
        "1 entry".into()
    } else {
        format!("{n} entries")
    }
}

/// The last second RFC 3339 (and humantime) can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339_S: u64 = 253_402_300_799;

/// "2026-11-23T10:00:00Z" for Unix seconds (0: "-"). The value may come from the store or the
/// kernel, which may hold anything: a time past year 9999 is "after 9999-12-31T23:59:59Z"
/// (humantime's `Display` fails there, and `UNIX_EPOCH + u64::MAX s` overflows).
pub fn human_time(unix_s: u64) -> String {
    if unix_s == 0 {
        return "-".into();
    }
    let said = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(unix_s.min(LAST_RFC3339_S)),
    );
    if unix_s > LAST_RFC3339_S {
        format!("after {said}")
    } else {
        said.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times come from the store and the kernel, which may hold anything: humantime's RFC 3339
    /// stops at year 9999 (its `Display` then fails, and `to_string` panics), and
    /// `UNIX_EPOCH + u64::MAX s` overflows. Every value is said.
    #[test]
    fn any_unix_time_is_said_without_a_panic() {
        assert_eq!(human_time(0), "-");
        assert_eq!(human_time(1), "1970-01-01T00:00:01Z");
        assert_eq!(human_time(253_402_300_799), "9999-12-31T23:59:59Z");
        for huge in [
            253_402_300_800,
            i64::MAX as u64,
            u64::MAX / 1000,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(human_time(huge), "after 9999-12-31T23:59:59Z", "{huge}");
        }
    }
}

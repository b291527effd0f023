//! One file per operator command. A command that changes or reads the lists goes through the
//! running daemon's control socket when one answers (the daemon logs and counts it), and works
//! on the pinned maps directly otherwise, so it behaves the same whether or not the daemon runs.

pub mod allow;
pub mod block;
pub mod detach;
pub mod reload;
pub mod stats;
pub mod top;

use std::time::Duration;

use anyhow::bail;
use smtp_gateway::{
    config::Config,
    control::{
        client::Client,
        ops::OpError,
        protocol::{Request, Response},
    },
    dataplane::Dataplane,
};

pub use smtp_gateway::control::ops::human_duration;

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

/// Prints a `Done` (warnings to stderr); an `Error` becomes the command's error.
pub fn report(response: Response) -> anyhow::Result<()> {
    match response {
        Response::Done { message, warnings } => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            println!("{message}");
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

/// "2026-11-23T10:00:00Z" for Unix seconds (0: "-").
pub fn human_time(unix_s: u64) -> String {
    if unix_s == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix_s))
        .to_string()
}

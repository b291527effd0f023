//! `smtp-gateway reload`: the daemon re-reads its configuration file, as on SIGHUP, and says
//! whether the new file was taken or refused (and why).

use std::process::ExitCode;

use anyhow::bail;
use smtp_gateway::{config::Config, control::protocol::Request};

pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let Some(mut client) = super::daemon(config)? else {
        bail!(
            "no daemon answers on {}: nothing to reload (start `smtp-gateway run`)",
            config.control_socket().display()
        );
    };
    super::report(client.call(&Request::Reload)?)?;
    Ok(ExitCode::SUCCESS)
}

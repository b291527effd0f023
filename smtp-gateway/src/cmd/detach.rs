//! `smtp-gateway detach [--force]`: removes the XDP program from every interface and all pinned
//! state, and the control socket a daemon killed without a chance to clean up left behind.
//! Refused while a daemon answers (it would go on running, and saying its changes were done,
//! with nothing attached), unless `--force`.

use std::{os::unix::fs::FileTypeExt, process::ExitCode};

use anyhow::bail;
use smtp_gateway::{config::Config, dataplane::loader};

pub fn run(config: &Config, force: bool) -> anyhow::Result<ExitCode> {
    let socket = config.control_socket();
    let daemon = super::daemon(config)?;
    if let Some(client) = &daemon
        && !force
    {
        let kill = match client.daemon_pid() {
            Some(pid) => format!("`kill -TERM {pid}`"),
            None => "SIGTERM to its process".to_string(),
        };
        bail!(
            "a daemon answers on {}: stop the daemon first (`systemctl stop smtp-gateway` when \
             systemd runs it, else {kill}), then detach; nothing was removed. `detach --force` \
             detaches under it, leaving it running with no kernel filtering",
            socket.display()
        );
    }
    let report = loader::detach(&config.dataplane.pin_dir)?;
    if report.links.is_empty() && report.maps == 0 {
        out!(
            "nothing pinned under {}",
            config.dataplane.pin_dir.display()
        );
    } else {
        out!(
            "detached from {} interface(s) [{}], removed {} pinned maps",
            report.links.len(),
            report.links.join(", "),
            report.maps
        );
    }
    // Only a socket is ever removed: any other file at that path (a mistake in
    // `daemon.control_socket`) is somebody else's, as the daemon's own start treats it.
    let is_socket = std::fs::symlink_metadata(&socket).map(|m| m.file_type().is_socket());
    if matches!(is_socket, Ok(false)) {
        eprintln!(
            "warning: {} (daemon.control_socket) is not a socket; left alone",
            socket.display()
        );
    } else if is_socket.is_ok() {
        if daemon.is_some() {
            eprintln!(
                "warning: a daemon still answers on {}; stop it too (its protection is gone)",
                socket.display()
            );
        } else {
            std::fs::remove_file(&socket)?;
            out!("removed the stale control socket {}", socket.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

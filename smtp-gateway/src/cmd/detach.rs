//! `smtp-gateway detach`: removes the XDP program from every interface and all pinned state,
//! and the control socket a daemon killed without a chance to clean up left behind.

use std::process::ExitCode;

use smtp_gateway::{config::Config, dataplane::loader};

pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let report = loader::detach(&config.dataplane.pin_dir)?;
    if report.links.is_empty() && report.maps == 0 {
        println!(
            "nothing pinned under {}",
            config.dataplane.pin_dir.display()
        );
    } else {
        println!(
            "detached from {} interface(s) [{}], removed {} pinned maps",
            report.links.len(),
            report.links.join(", "),
            report.maps
        );
    }
    let socket = config.control_socket();
    if socket.exists() {
        if super::daemon(config)?.is_some() {
            eprintln!(
                "warning: a daemon still answers on {}; stop it too (its protection is gone)",
                socket.display()
            );
        } else {
            std::fs::remove_file(&socket)?;
            println!("removed the stale control socket {}", socket.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `smtp-gateway detach`.

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
    Ok(ExitCode::SUCCESS)
}

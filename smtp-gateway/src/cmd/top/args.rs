//! The arguments of `smtp-gateway top` (beside the command, so the CLI imports from here only).

use std::time::Duration;

use clap::Args;

use super::model::SortKey;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between refreshes, e.g. 500ms, 2s (at least 100ms).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Source rows to show [default: as many as fit the terminal; all when stdout is not one].
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// Column to sort the sources by (largest first); keys change it while running.
    #[arg(long, value_enum, default_value_t = SortKey::Packets)]
    pub sort: SortKey,
    /// Print one plain-text frame and exit (also what happens when stdout is not a terminal).
    #[arg(long)]
    pub once: bool,
    /// With --once: print the snapshot as JSON.
    #[arg(long, requires = "once")]
    pub json: bool,
}

/// A humantime duration of at least 100 ms (a faster refresh only burns CPU reading the maps).
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < Duration::from_millis(100) {
        return Err(format!("{text} is too short: at least 100ms"));
    }
    Ok(interval)
}

//! The arguments of `smtp-gateway top` and the column it sorts by (the command itself lives in the
//! binary's `cmd/top/`; the arguments are here so [`super::command`] sees the whole CLI).

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

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

/// The column the sources are sorted by (largest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    Packets,
    Syns,
    Drops,
    Bytes,
    /// Packets per second since the previous refresh.
    Rate,
    Sessions,
    Rejected,
}

impl SortKey {
    /// Every key, in the order the columns appear (and `<`/`>` cycle).
    pub const ALL: [SortKey; 7] = [
        SortKey::Packets,
        SortKey::Rate,
        SortKey::Syns,
        SortKey::Drops,
        SortKey::Bytes,
        SortKey::Sessions,
        SortKey::Rejected,
    ];

    /// Whether the key sorts by a session column (hidden while no session data exists).
    pub fn is_session(self) -> bool {
        matches!(self, SortKey::Sessions | SortKey::Rejected)
    }

    /// The next (`step` 1) or previous (`step` -1) key, skipping session keys when they are hidden.
    pub fn cycle(self, step: isize, sessions_known: bool) -> SortKey {
        let keys: Vec<SortKey> = Self::ALL
            .into_iter()
            .filter(|k| sessions_known || !k.is_session())
            .collect();
        let here = keys.iter().position(|k| *k == self).unwrap_or(0) as isize;
        let len = keys.len() as isize;
        keys[(here + step).rem_euclid(len) as usize]
    }

    /// The word people read ("sorted by drops").
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Packets => "packets",
            SortKey::Syns => "SYNs",
            SortKey::Drops => "drops",
            SortKey::Bytes => "bytes",
            SortKey::Rate => "packets/s",
            SortKey::Sessions => "sessions",
            SortKey::Rejected => "rejected",
        }
    }
}

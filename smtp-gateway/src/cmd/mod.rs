//! One file per operator command. They work on the pinned maps directly, so they behave the same
//! whether or not the daemon runs.

pub mod allow;
pub mod block;
pub mod detach;
pub mod stats;
pub mod top;

use std::time::Duration;

/// "1h 2m" style, whole seconds.
pub fn human_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// "2026-11-23T10:00:00Z" for Unix seconds (0: "-").
pub fn human_time(unix_s: u64) -> String {
    if unix_s == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix_s))
        .to_string()
}

//! Removing expired blocklist entries. The XDP program already ignores them (it compares
//! `expires_at_ns` with the clock), so the sweep only frees room and keeps listings honest. Keys are
//! collected first and deleted afterwards: deleting while walking a hash with "next key" restarts
//! the walk. The reasons of the removed entries are freed when no other entry cites them (the
//! walk that finds the expired entries also sees which reasons the others cite). [`sweep_loop`]
//! is the daemon's task that sweeps every `dataplane.sweep_interval`. The same sweep removes
//! ended traces of `why --follow` and clears the `TRACE` bit when none is left (`trace.rs`).

use std::{collections::HashSet, time::Duration};

use smtp_gateway_common::{BlockEntry, maps};
use tokio::sync::watch;

use super::{Dataplane, DataplaneError, SharedDataplane, clock, error::is_not_found, reasons};

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Entries removed.
    pub removed: usize,
    /// Entries examined.
    pub examined: usize,
    /// Reason texts freed with the removed entries.
    pub reasons_freed: usize,
}

fn expired(entry: &BlockEntry, now_ns: u64) -> bool {
    !entry.is_active(now_ns)
}

impl Dataplane {
    /// Removes every blocklist entry expired at `now_ns` (CLOCK_MONOTONIC).
    pub fn sweep_expired(&mut self, now_ns: u64) -> Result<SweepReport, DataplaneError> {
        let mut report = SweepReport::default();
        // Reasons of the removed entries, and those the remaining entries still cite.
        let mut gone = HashSet::new();
        let mut cited = HashSet::new();
        macro_rules! sweep {
            ($map:expr, $name:expr) => {{
                let mut doomed = Vec::new();
                for item in $map.iter() {
                    let (key, entry) = match item {
                        Ok(kv) => kv,
                        Err(e) if is_not_found(&e) => continue,
                        Err(source) => {
                            return Err(DataplaneError::Map {
                                name: $name,
                                source,
                            });
                        }
                    };
                    report.examined += 1;
                    if expired(&entry, now_ns) {
                        doomed.push((key, entry.reason));
                    } else {
                        cited.insert(entry.reason);
                    }
                }
                for (key, reason) in doomed {
                    match $map.remove(&key) {
                        Ok(()) => {
                            report.removed += 1;
                            gone.insert(reason);
                        }
                        // Deleted meanwhile by an operator: fine.
                        Err(e) if is_not_found(&e) => {}
                        Err(source) => {
                            return Err(DataplaneError::Map {
                                name: $name,
                                source,
                            });
                        }
                    }
                }
            }};
        }
        sweep!(self.block_v4, maps::BLOCK_V4);
        sweep!(self.block_v6, maps::BLOCK_V6);
        sweep!(self.block_net_v4, maps::BLOCK_NET_V4);
        sweep!(self.block_net_v6, maps::BLOCK_NET_V6);
        // Traces a killed `why --follow` left behind, and the TRACE bit with them.
        self.sweep_traces(now_ns)?;
        gone.remove(&0);
        gone.retain(|id| !cited.contains(id));
        if !gone.is_empty() {
            for allowed in self.allowed()? {
                gone.remove(&allowed.entry.reason);
            }
            report.reasons_freed = reasons::forget(self, gone)?;
        }
        Ok(report)
    }
}

/// Removes expired blocklist entries every `interval` (`dataplane.sweep_interval`, a new value
/// from a reload restarts the wait) until shutdown.
pub async fn sweep_loop(
    dataplane: SharedDataplane,
    mut interval: watch::Receiver<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let wait = *interval.borrow();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = interval.changed() => continue,
            _ = shutdown.changed() => return,
        }
        let dp = dataplane.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut dp = dp.lock().map_err(|_| "lock poisoned".to_string())?;
            dp.sweep_expired(clock::monotonic_ns())
                .map_err(|e| e.to_string())
        })
        .await;
        match result {
            Ok(Ok(report)) if report.removed > 0 => {
                tracing::info!(
                    removed = report.removed,
                    examined = report.examined,
                    "expired entries removed"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "expiry sweep failed"),
            Err(e) => tracing::error!(error = %e, "expiry sweep task failed"),
        }
    }
}

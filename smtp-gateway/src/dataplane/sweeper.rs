//! Removing expired blocklist entries. The XDP program already ignores them (it compares
//! `expires_at_ns` with the clock), so the sweep only frees room and keeps listings honest. Keys are
//! collected first and deleted afterwards: deleting while walking a hash with "next key" restarts
//! the walk. [`sweep_loop`] is the daemon's task that sweeps every `dataplane.sweep_interval`.

use std::time::Duration;

use smtp_gateway_common::{BlockEntry, maps};
use tokio::sync::watch;

use super::{Dataplane, DataplaneError, SharedDataplane, clock, error::is_not_found};

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Entries removed.
    pub removed: usize,
    /// Entries examined.
    pub examined: usize,
}

fn expired(entry: &BlockEntry, now_ns: u64) -> bool {
    !entry.is_active(now_ns)
}

impl Dataplane {
    /// Removes every blocklist entry expired at `now_ns` (CLOCK_MONOTONIC).
    pub fn sweep_expired(&mut self, now_ns: u64) -> Result<SweepReport, DataplaneError> {
        let mut report = SweepReport::default();
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
                        doomed.push(key);
                    }
                }
                for key in doomed {
                    match $map.remove(&key) {
                        Ok(()) => report.removed += 1,
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

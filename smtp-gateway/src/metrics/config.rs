//! `[metrics]`: the Prometheus endpoint's section (address, how many sources get per-source
//! series, how many sources' session outcomes are kept) and its validation.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::invalid::Invalid;

/// Largest `metrics.top_sources` accepted (bounded label cardinality).
pub const MAX_TOP_SOURCES: usize = 1000;

/// Largest `metrics.session_sources`.
pub const MAX_SESSION_SOURCES: usize = 10_000_000;

/// Largest `metrics.max_connections`.
pub const MAX_CONNECTIONS: usize = 4096;

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether the endpoint is served.
    pub enabled: bool,
    /// Where `GET /metrics` is served (loopback by default: the counters name client addresses).
    pub listen: SocketAddr,
    /// Sources exported with per-source series (the top ones by drops, then packets).
    pub top_sources: usize,
    /// Sources whose session outcomes the daemon keeps for `stats`, `top` and the per-source
    /// series (the least recently seen are forgotten beyond).
    pub session_sources: usize,
    /// Scrape connections served at once; one more is closed at once (each may hold a task
    /// and a descriptor for up to 5 s).
    pub max_connections: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            top_sources: 20,
            session_sources: 10_000,
            max_connections: 64,
        }
    }
}

impl MetricsConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.top_sources > MAX_TOP_SOURCES {
            return Err(Invalid::new(
                "metrics.top_sources",
                format!("must be at most {MAX_TOP_SOURCES}"),
            ));
        }
        if self.session_sources == 0 {
            return Err(Invalid::new(
                "metrics.session_sources",
                "must be at least 1",
            ));
        }
        Invalid::at_most(
            "metrics.session_sources",
            self.session_sources,
            MAX_SESSION_SOURCES,
        )?;
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(Invalid::new(
                "metrics.max_connections",
                format!(
                    "{} is out of range (1..={MAX_CONNECTIONS})",
                    self.max_connections
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_sources_is_bounded() {
        let cfg = MetricsConfig {
            top_sources: MAX_TOP_SOURCES + 1,
            ..MetricsConfig::default()
        };
        assert!(cfg.validate().is_err());
        assert!(MetricsConfig::default().validate().is_ok());
    }
}

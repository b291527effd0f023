//! Why a `[dnsbl]` value or the resolver built from it is refused.

use std::{fmt, net::SocketAddr, time::Duration};

use hickory_resolver::net::NetError;

use super::{filter::FilterError, site::ZoneError};

/// Shortest accepted `dnsbl.timeout`.
pub(super) const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest accepted `dnsbl.timeout` (the SMTP client is waiting for the greeting meanwhile).
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// What is wrong with a `[dnsbl]` value (the key is in [`DnsblError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `enabled` without `nameservers`.
    #[error("at least one name server is required (the system resolver is never used)")]
    NoNameservers,
    /// `enabled` without `sites`.
    #[error("at least one site is required")]
    NoSites,
    /// A name server with the unspecified address or port 0.
    #[error("{0} is not a usable name server address")]
    Nameserver(SocketAddr),
    /// A timeout outside what the gateway accepts.
    #[error("{} is out of range ({}..={})", humantime::format_duration(*.0),
        humantime::format_duration(MIN_TIMEOUT), humantime::format_duration(MAX_TIMEOUT))]
    Timeout(Duration),
    /// A threshold below 1 (every unlisted client would be listed).
    #[error("{0} is out of range (at least 1, or every client would count as listed)")]
    Threshold(i32),
    /// A bad zone name.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// A bad answer filter.
    #[error("{filter:?}: {source}")]
    Filter {
        /// The filter as written.
        filter: String,
        /// What is wrong with it.
        source: FilterError,
    },
    /// A zero weight (the site could never change the score).
    #[error("must not be 0 (positive for blocklists, negative for allowlists)")]
    ZeroWeight,
}

/// Why a [`Dnsbl`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DnsblError {
    /// A configuration value is unusable.
    #[error("{key}: {problem}")]
    Invalid {
        /// Dotted key of the value, e.g. `dnsbl.sites[1].filter` (sites counted from 0).
        key: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// The resolver could not be built from the name servers.
    #[error("dnsbl.nameservers: cannot build the DNS resolver: {0}")]
    Resolver(#[source] NetError),
}

impl DnsblError {
    /// An `Invalid` error for `key` below `dnsbl.`.
    pub(super) fn invalid(key: impl fmt::Display, problem: impl Into<Problem>) -> Self {
        Self::Invalid {
            key: format!("dnsbl.{key}"),
            problem: problem.into(),
        }
    }
}

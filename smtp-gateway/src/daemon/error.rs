//! [`DaemonError`]: why the daemon did not start, or stopped, with an error (a reload that fails
//! is one too, reported to whoever asked while the old configuration stays in force).

use super::privileges::PrivilegeError;
use crate::{config::ConfigError, control::ControlError, dataplane::DataplaneError};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Listen(#[from] crate::smtp::server::ServerError),
    #[error(transparent)]
    Tls(#[from] crate::smtp::tls::TlsError),
    #[error(transparent)]
    Dnsbl(#[from] crate::policy::dnsbl::DnsblError),
    #[error(transparent)]
    Resolver(#[from] crate::policy::dns::ResolverError),
    #[error(transparent)]
    Reputation(#[from] crate::policy::reputation::ReputationError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::endpoint::MetricsError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error("state store ([store]): {0}")]
    Store(#[from] crate::store::StoreError),
}

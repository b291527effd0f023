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
    #[error(transparent)]
    Check(#[from] CheckError),
    /// Not a `#[from]`: that would make the store error the source too, and `{e:#}` (main.rs)
    /// would print it twice.
    #[error("state store ([store]): {0}")]
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for DaemonError {
    fn from(e: crate::store::StoreError) -> Self {
        DaemonError::Store(e)
    }
}

/// A file the configuration names that the daemon would refuse at start.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A file that cannot be read or is not what the option wants.
    #[error("{key}: {message}")]
    File {
        /// The option naming the file (`smtp.tls.certificate`, `backend.servers[0].tls.ca`).
        key: String,
        /// What is wrong with it (the OS error once, not as a chain).
        message: String,
    },
    /// `[crowdsec]`'s key or CA file (the message names the option).
    #[error("{0}")]
    Crowdsec(String),
}

impl CheckError {
    pub(super) fn new(key: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::File {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Opened, StoreConfig};

    #[test]
    fn a_store_open_error_names_the_file_and_each_cause_once() {
        let dir = std::env::temp_dir().join(format!("sgw-daemon-error-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state.redb");
        // Not a redb file: redb's "invalid data".
        std::fs::write(&path, vec![b'x'; 8192]).expect("write");
        let cfg = StoreConfig {
            path: path.clone(),
            ..StoreConfig::default()
        };
        let Err(e) = Opened::open(&cfg) else {
            panic!("a file that is not a redb file opened");
        };
        // As main.rs prints it: anyhow's alternate form, the whole chain.
        let text = format!("{:#}", anyhow::Error::from(DaemonError::from(e)));
        assert!(text.starts_with("state store ([store]): "), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert_eq!(text.matches("invalid data").count(), 1, "{text}");
        assert_eq!(text.matches("embedded store").count(), 1, "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

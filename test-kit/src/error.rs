//! What can go wrong while setting up; every message names the file or user concerned.

use std::{io, path::PathBuf};

/// A set-up step that failed. Messages carry their cause (the I/O error text), so a caller can
/// show `{err}` alone in a panic or wrap it in `anyhow` without losing anything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating, writing, reading or chown-ing a file of an instance failed.
    #[error("{action} {}: {error}", path.display())]
    Io {
        /// What was being done (`creating`, `writing`, `chown`, ...).
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// A system account is missing, so the instance's files cannot be given to it.
    #[error("no user `{0}` in /etc/passwd (the postfix package creates `postfix`)")]
    NoSuchUser(String),
    /// The running executable's path is unknown, so the binary next to it cannot be found.
    #[error("cannot locate the running executable: {0}")]
    CurrentExe(io::Error),
    /// The daemon binary is not where it was looked for.
    #[error(
        "smtp-gateway binary not found at {}: build it with `cargo build -p smtp-gateway` \
         (or point SMTP_GATEWAY_BIN at one)",
        .0.display()
    )]
    BinaryNotFound(PathBuf),
    /// `openssl req` refused to make a certificate (its standard error).
    #[error("openssl req failed: {0}")]
    Openssl(String),
    /// The test DNS responder could not be set up.
    #[error("test DNS responder: {action}: {error}")]
    Dns {
        /// What was being done (`binding 127.0.0.1:0/udp`, ...).
        action: &'static str,
        /// The I/O error.
        error: io::Error,
    },
}

/// The result of every fallible function of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with what was being done to which path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |error| Error::Io {
            action,
            path,
            error,
        }
    }
}

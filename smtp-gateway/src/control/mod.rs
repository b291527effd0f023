//! The control socket: how the CLI talks to a running daemon (block, allow, stats, reload).
//!
//! - `protocol.rs`: the JSON-lines requests and responses (also the CLI's `--json` output);
//! - `ops.rs`: the operations on a data plane, shared by the daemon and the CLI's direct mode;
//! - `server.rs`: the daemon side: a root-only (0600, peer uid checked) Unix socket;
//! - `client.rs`: the CLI side;
//! - `why.rs`: `why <address>`, everything the kernel holds about one source;
//! - `why_store.rs`: what the state store (a fleet's, with Redis) holds about it.

pub mod client;
pub mod ops;
pub mod protocol;
pub mod server;
pub mod why;
pub mod why_store;

/// Why the control socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another daemon answers on {0}: one daemon per data plane")]
    AlreadyRunning(std::path::PathBuf),
    #[error(
        "{0} exists and is not a socket: refusing to replace it (remove it, or set \
         daemon.control_socket to another path)"
    )]
    NotASocket(std::path::PathBuf),
    #[error("{0}: permission denied (the control socket is for root; run the command as root)")]
    NotRoot(std::path::PathBuf),
    #[error(
        "control socket {path}: the daemon did not answer within daemon.control_timeout ({}): it \
         may be busy (a large import or reload holds the data plane) or stuck, and the request may \
         still take effect; see the daemon's log, or raise daemon.control_timeout",
        humantime::format_duration(*.timeout)
    )]
    Timeout {
        path: std::path::PathBuf,
        timeout: std::time::Duration,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: the daemon sent an unreadable answer: {message}")]
    Protocol {
        path: std::path::PathBuf,
        message: String,
    },
}

//! `[daemon]`: the process itself (control socket, reload on change, privileges after setup)
//! and its validation.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::invalid::Invalid;

/// `[daemon]`: the process itself.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The control socket (root only, mode 0600) the CLI talks to. Empty: derived from
    /// `dataplane.pin_dir` (`/run/smtp-gateway/<pin dir name>.sock`), so a daemon and the CLI
    /// sharing a configuration, and so a data plane, find each other.
    pub control_socket: PathBuf,
    /// How long the CLI waits for the daemon's answer (a reload reading large lists may take a
    /// while).
    #[serde(with = "humantime_serde")]
    pub control_timeout: Duration,
    /// Control connections served at once: each costs the daemon a task and a descriptor, and
    /// any local process may connect (only root's requests are answered). One more is told why
    /// and closed at once (counted).
    pub control_max_connections: usize,
    /// How long a control connection has to send one complete request, from the moment the
    /// daemon waits for it; a peer that does not is closed (counted). A peer must also take each
    /// 64 KiB of an answer within it. Making the answer (a reload, a long list) is not timed.
    #[serde(with = "humantime_serde")]
    pub control_request_timeout: Duration,
    /// Reload when the configuration file changes, as on SIGHUP.
    pub watch_config: bool,
    /// Quiet time after the last change to the file before the reload (editors write in steps).
    #[serde(with = "humantime_serde")]
    pub watch_debounce: Duration,
    /// Give up privileges once the listeners are bound and the XDP program is attached.
    pub drop_privileges: bool,
    /// User to become after setup. Empty: stay uid 0, but without capabilities.
    pub user: String,
    /// Group to become after setup. Empty: the user's primary group.
    pub group: String,
    /// Capabilities kept after setup (`CAP_BPF`, ...). None are needed on Linux 6.5 and later:
    /// the daemon works on the maps through descriptors it opened during setup.
    pub keep_capabilities: Vec<String>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            control_socket: PathBuf::new(),
            control_timeout: Duration::from_secs(30),
            control_max_connections: 16,
            control_request_timeout: Duration::from_secs(5),
            watch_config: true,
            watch_debounce: Duration::from_millis(500),
            drop_privileges: true,
            user: String::new(),
            group: String::new(),
            keep_capabilities: Vec::new(),
        }
    }
}

/// Largest `daemon.control_timeout`.
pub const MAX_CONTROL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest `daemon.control_max_connections`.
pub const MAX_CONTROL_CONNECTIONS: usize = 1024;
/// Shortest `daemon.control_request_timeout`.
pub const MIN_CONTROL_REQUEST_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest `daemon.control_request_timeout`.
pub const MAX_CONTROL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl DaemonConfig {
    /// Checks values serde cannot: timeouts, the control connection cap, capability names, user
    /// without dropping.
    pub fn validate(&self) -> Result<(), Invalid> {
        let d = self;
        Invalid::duration_in(
            "daemon.control_timeout",
            d.control_timeout,
            Duration::from_secs(1),
            MAX_CONTROL_TIMEOUT,
        )?;
        Invalid::in_range(
            "daemon.control_max_connections",
            d.control_max_connections,
            1,
            MAX_CONTROL_CONNECTIONS,
        )?;
        Invalid::duration_in(
            "daemon.control_request_timeout",
            d.control_request_timeout,
            MIN_CONTROL_REQUEST_TIMEOUT,
            MAX_CONTROL_REQUEST_TIMEOUT,
        )?;
        if !d.control_socket.as_os_str().is_empty() && !d.control_socket.is_absolute() {
            // The daemon (systemd starts it in /) and the CLI resolve a relative path in their
            // own working directories: they would not find each other.
            return Err(Invalid::new(
                "daemon.control_socket",
                format!(
                    "{} must be an absolute path (or empty for the default)",
                    d.control_socket.display()
                ),
            ));
        }
        if d.watch_debounce > Duration::from_secs(60) {
            return Err(Invalid::new("daemon.watch_debounce", "must be at most 60s"));
        }
        for name in &d.keep_capabilities {
            if name.parse::<caps::Capability>().is_err() {
                return Err(Invalid::new(
                    "daemon.keep_capabilities",
                    format!("{name:?} is not a capability name (like \"CAP_BPF\")"),
                ));
            }
        }
        if !d.drop_privileges && (!d.user.is_empty() || !d.group.is_empty()) {
            return Err(Invalid::new(
                "daemon.user",
                "user and group need daemon.drop_privileges = true",
            ));
        }
        Ok(())
    }
}

//! One enum of control signals: SIGTERM and SIGINT stop, SIGHUP reloads.

use tokio::signal::unix::{Signal as UnixSignal, SignalKind, signal};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM: stop (gracefully once sessions exist).
    Terminate,
    /// SIGINT: stop now.
    Interrupt,
    /// SIGHUP: reload the configuration.
    Reload,
}

/// The installed signal handlers.
pub struct Signals {
    term: UnixSignal,
    int: UnixSignal,
    hup: UnixSignal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Control {
        tokio::select! {
            _ = self.term.recv() => Control::Terminate,
            _ = self.int.recv() => Control::Interrupt,
            _ = self.hup.recv() => Control::Reload,
        }
    }
}

//! Reload requests: SIGHUP, a change of the configuration file and `smtp-gateway reload` all
//! become one of these, handled by the daemon's one reload path.

use tokio::sync::{mpsc, oneshot};

/// What asked for the reload (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOrigin {
    Signal,
    FileChange,
    ControlSocket,
}

impl ReloadOrigin {
    pub fn name(self) -> &'static str {
        match self {
            Self::Signal => "SIGHUP",
            Self::FileChange => "file change",
            Self::ControlSocket => "control socket",
        }
    }
}

/// How a reload went: `Ok(notes)` (changes that need a restart, say) or why it was refused.
pub type ReloadResult = Result<Vec<String>, String>;

/// One request, with where to send the result when someone waits for it.
#[derive(Debug)]
pub struct ReloadRequest {
    pub origin: ReloadOrigin,
    pub reply: Option<oneshot::Sender<ReloadResult>>,
}

/// Requests queued before the daemon handles them; a burst beyond is one reload anyway.
pub const QUEUE: usize = 8;

pub type ReloadSender = mpsc::Sender<ReloadRequest>;
pub type ReloadReceiver = mpsc::Receiver<ReloadRequest>;

/// A new channel.
pub fn channel() -> (ReloadSender, ReloadReceiver) {
    mpsc::channel(QUEUE)
}

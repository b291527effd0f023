//! How a session's waits on its client end early: the daemon's shutdown, the idle timeouts
//! (`smtp.command_timeout`, `smtp.data_timeout`) and the time limits (`smtp.max_data_duration`,
//! `smtp.max_session_duration`), each with its `421`. The command loop, a SASL exchange and the
//! DATA and BDAT relays all end the same way.

use std::future::Future;

use tokio::sync::watch;

use super::{Flow, Session};
use crate::smtp::reply::Reply;

/// The reply of a session the daemon's shutdown ends.
const SHUTTING_DOWN: &str = "4.3.2 Service shutting down, closing connection";
/// The reply of a client that sent nothing for `smtp.command_timeout` or `smtp.data_timeout`.
const IDLE: &str = "4.4.2 Timeout, closing connection";
/// The reply of a message transfer past `smtp.max_data_duration`.
const TRANSFER_TIME_LIMIT: &str = "4.4.2 Maximum message transfer time reached, closing connection";
/// The reply of a session past `smtp.max_session_duration`.
const SESSION_TIME_LIMIT: &str = "4.4.2 Maximum session duration reached, closing connection";

/// What a read raced against the daemon's shutdown gave.
pub(super) enum Raced<T> {
    /// The read ended first (the shutdown is looked at only while it waits).
    Read(T),
    /// The daemon is shutting down.
    ShuttingDown,
}

/// Which limit a wait on the client ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stall {
    /// The client sent nothing for `smtp.command_timeout` (`smtp.data_timeout` in a message).
    Idle,
    /// A message transfer (DATA, one BDAT chunk) reached `smtp.max_data_duration`.
    Transfer,
    /// The session reached `smtp.max_session_duration`.
    Session,
}

impl Stall {
    /// The client's reply.
    fn reply_text(self) -> &'static str {
        match self {
            Stall::Idle => IDLE,
            Stall::Transfer => TRANSFER_TIME_LIMIT,
            Stall::Session => SESSION_TIME_LIMIT,
        }
    }
}

impl Session {
    /// Waits for the daemon's shutdown (forever when there is none).
    pub(super) async fn shutting_down(shutdown: &mut Option<watch::Receiver<bool>>) {
        match shutdown {
            Some(rx) => {
                let _ = rx.wait_for(|s| *s).await;
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// `read`, unless the daemon starts shutting down while it waits. (An associated function:
    /// `read` borrows the connection, `shutdown` another field of the session.)
    pub(super) async fn unless_shutting_down<F: Future>(
        shutdown: &mut Option<watch::Receiver<bool>>,
        read: F,
    ) -> Raced<F::Output> {
        tokio::select! {
            biased;
            read = read => Raced::Read(read),
            _ = Self::shutting_down(shutdown) => Raced::ShuttingDown,
        }
    }

    /// Ends the session for the daemon's shutdown: `421`, written by the session's close.
    pub(super) fn close_for_shutdown(&mut self) -> Flow {
        self.reply(Reply::new(421, SHUTTING_DOWN));
        Flow::Close
    }

    /// What a wait that ran out at `deadline` ran into: the session's time limit when the
    /// deadline was the session's end (every deadline is capped by it), else `stall`.
    pub(super) fn stall_at(&self, deadline: tokio::time::Instant, stall: Stall) -> Stall {
        if deadline >= self.ends_by {
            Stall::Session
        } else {
            stall
        }
    }

    /// Ends the session whose wait `during` (the command, AUTH, DATA, BDAT) ran into `stall`:
    /// `421`, written by the session's close.
    pub(super) fn close_stalled(&mut self, stall: Stall, during: &'static str) -> Flow {
        let text = stall.reply_text();
        tracing::info!(client = %self.client, during, ?stall, "{text}");
        self.reply(Reply::new(421, text));
        Flow::Close
    }
}

//! The verdict event bus: the SMTP sessions publish every check that fires (source, check, action
//! taken) and how each session ended; the auto-ban, the metrics and the per-source outcomes read
//! them. It lives at the crate root so that its readers need not reach into `smtp/`.

use std::net::IpAddr;

use tokio::sync::broadcast;

use crate::checks::{Action, Check};

/// Events kept for slow consumers before the oldest are dropped.
pub const EVENT_BUFFER: usize = 4096;

/// One check that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The client.
    pub source: IpAddr,
    /// The check (its name is the `[checks]` key).
    pub check: Check,
    /// What the configuration made of it.
    pub action: Action,
    /// Human detail (the offending HELO, the DNSBL zones…).
    pub detail: String,
    /// The client was refused permanently (a `5xx`) or dropped because of this check. False when
    /// the check only scored or was ignored, so at most a `4xx` followed: the auto-ban counts only
    /// permanent refusals (a temporary failure never becomes a ban).
    pub permanent: bool,
}

/// Sender side, cloned into every session.
pub type EventSender = broadcast::Sender<Event>;

/// A new channel.
pub fn channel() -> (EventSender, broadcast::Receiver<Event>) {
    broadcast::channel(EVENT_BUFFER)
}

/// How a whole session ended, for the session log line and the per-source outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SessionVerdict {
    /// No check refused anything and no message was relayed.
    Clean,
    /// At least one message was accepted by the backend and nothing was refused.
    Delivered,
    /// The session score asked the client to come back later.
    Tempfailed,
    /// A check (or the score) refused a command.
    Rejected,
    /// A check closed the connection.
    Dropped,
}

impl SessionVerdict {
    pub const ALL: [SessionVerdict; 5] = [
        Self::Clean,
        Self::Delivered,
        Self::Tempfailed,
        Self::Rejected,
        Self::Dropped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Delivered => "delivered",
            Self::Tempfailed => "tempfailed",
            Self::Rejected => "rejected",
            Self::Dropped => "dropped",
        }
    }
}

/// One finished session, as the per-source outcomes record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    pub source: IpAddr,
    pub verdict: SessionVerdict,
    /// Messages the backend accepted.
    pub delivered: u64,
    pub checks: Vec<&'static str>,
}

/// Session ends, for the auto-ban (which writes a decided ban once the session has closed).
pub type EndSender = broadcast::Sender<SessionEnd>;

/// A new channel of session ends, holding `max_sessions` of them (at least [`EVENT_BUFFER`]):
/// every session the gateway admits can end at once (a network blip, or a client closing
/// thousands of idle connections together) and the auto-ban still reads each end. Sized from
/// `smtp.max_connections` at start (a slot is about 100 bytes, against a session's 4 KiB or
/// more); a later reload that raises the cap does not grow it.
pub fn ends_channel(max_sessions: usize) -> (EndSender, broadcast::Receiver<SessionEnd>) {
    broadcast::channel(max_sessions.max(EVENT_BUFFER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_of_a_full_gateway_can_end_at_once_without_an_end_missed() {
        let sessions = 3 * EVENT_BUFFER + 7;
        let (ends, mut rx) = ends_channel(sessions);
        for n in 0..sessions {
            let end = SessionEnd {
                source: IpAddr::from([198, 18, 0, 1]),
                verdict: SessionVerdict::Clean,
                delivered: n as u64,
                checks: Vec::new(),
            };
            ends.send(end).expect("a receiver");
        }
        for n in 0..sessions {
            assert_eq!(rx.try_recv().map(|e| e.delivered), Ok(n as u64));
        }
    }
}

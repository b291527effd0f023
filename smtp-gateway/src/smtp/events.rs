//! Session verdict events: every check that fires is published with the source, the check and the
//! action taken, for logs, metrics and the kernel auto-ban to consume.

use std::net::IpAddr;

use tokio::sync::broadcast;

use super::config::{Action, Check};

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
}

/// Sender side, cloned into every session.
pub type EventSender = broadcast::Sender<Event>;

/// A new channel.
pub fn channel() -> (EventSender, broadcast::Receiver<Event>) {
    broadcast::channel(EVENT_BUFFER)
}

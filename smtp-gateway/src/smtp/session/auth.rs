//! AUTH on submission ports: the SASL exchange relayed between client and backend, inside TLS
//! only; the backend decides. The client counts as authenticated only while the backend session
//! that accepted the login carries it: a new backend session is not authenticated.

use super::{
    Flow, Session,
    waits::{Raced, Stall},
};
use crate::smtp::{
    backend::Backend,
    config::ListenerKind,
    connection::{ConnError, Ending, Line},
    reply::Reply,
};

/// Most challenge/response rounds in one AUTH exchange.
const MAX_SASL_STEPS: usize = 10;
/// Longest SASL response line (RFC 4954 section 4: 12288 octets).
const MAX_SASL_LINE: usize = 12288;

impl Session {
    /// AUTH is relayed on submission ports, and only inside TLS (no password in clear).
    pub(super) fn auth_possible(&self) -> bool {
        self.kind != ListenerKind::Smtp && self.conn.is_tls()
    }

    /// The backend session this client talks to accepted its AUTH: it may relay (the backend
    /// decides what it may do).
    pub(super) fn authenticated(&self) -> bool {
        self.backend.as_ref().is_some_and(Backend::authenticated)
    }

    /// Relays a SASL exchange between client and backend; the backend decides.
    pub(super) async fn handle_auth(&mut self, raw: &[u8]) -> Flow {
        if self.kind != ListenerKind::Smtp && self.helo.is_none() {
            self.reply(Reply::new(503, "5.5.1 Send EHLO first"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        if self.kind == ListenerKind::Smtp || (self.backend_auth.is_none() && self.conn.is_tls()) {
            self.reply(Reply::new(502, "5.5.1 AUTH not available on this port"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        if !self.conn.is_tls() {
            self.reply(Reply::new(
                538,
                "5.7.11 Encryption required for requested authentication mechanism",
            ));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        if self.authenticated() || self.txn.is_some() {
            self.reply(Reply::new(503, "5.5.1 AUTH not allowed now"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        // The backend session is opened now when the EHLO offered the mechanisms from memory.
        if let Err(flow) = self.ensure_backend().await {
            return flow;
        }
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Continue;
        };
        // Whatever the outcome, the connection carries this client's SASL state from now on.
        backend.keep_private();
        let mut reply = match backend.command(raw).await {
            Ok(r) => r,
            Err(e) => return self.backend_lost(e),
        };
        // A bounded challenge/response exchange; the client's responses are never logged.
        let mut steps = 0;
        while reply.code == 334 {
            if steps == MAX_SASL_STEPS {
                self.reply(Reply::new(
                    501,
                    "5.7.0 Authentication exchange cancelled: too many steps",
                ));
                return self.cancel_sasl().await;
            }
            steps += 1;
            self.reply(reply);
            if self.conn.flush().await.is_err() {
                return Flow::Close;
            }
            // The response is waited for as a command is: until command_timeout, the session
            // time limit or the daemon's shutdown, whichever comes first.
            let timeout = self.shared.config.smtp.command_timeout;
            let deadline = (tokio::time::Instant::now() + timeout).min(self.ends_by);
            let read = self.conn.read_line_until(MAX_SASL_LINE, deadline);
            let line = match Self::unless_shutting_down(&mut self.shutdown, read).await {
                Raced::Read(Ok(Some(line))) if line.ending != Ending::Eof => line,
                Raced::Read(Err(ConnError::Timeout)) => {
                    return self.close_stalled(self.stall_at(deadline, Stall::Idle), "AUTH");
                }
                Raced::Read(_) => return Flow::Close,
                Raced::ShuttingDown => return self.close_for_shutdown(),
            };
            // A response line gets the checks of a command line (CRLF only, no NUL, length).
            if let Some(flow) = self.check_sasl_line(&line) {
                return match self.cancel_sasl().await {
                    Flow::Close => Flow::Close,
                    Flow::Continue => flow,
                };
            }
            let Some(backend) = self.backend.as_mut() else {
                return Flow::Close;
            };
            reply = match backend.command(&line.data).await {
                Ok(r) => r,
                Err(e) => return self.backend_lost(e),
            };
        }
        if reply.code == 235
            && let Some(backend) = self.backend.as_mut()
        {
            backend.set_authenticated();
        }
        // A temporary failure (454) is not a protocol error: it never leads to a drop.
        let error = reply.code >= 500;
        self.reply(reply);
        if error {
            return self.count_error().unwrap_or(Flow::Continue);
        }
        Flow::Continue
    }

    /// The line checks of a command line applied to a SASL response: `Some(flow)` when one
    /// refused it (its reply is queued) or drops the session.
    fn check_sasl_line(&mut self, line: &Line) -> Option<Flow> {
        if line.too_long {
            self.reply(Reply::new(
                500,
                "5.5.6 Authentication exchange line is too long",
            ));
            return Some(self.count_error().unwrap_or(Flow::Continue));
        }
        self.check_line(line)
    }

    /// Cancels the backend's SASL exchange with `*` (RFC 4954 section 4) and drops its reply
    /// (the client was answered by the gateway).
    async fn cancel_sasl(&mut self) -> Flow {
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Continue;
        };
        match backend.command(b"*").await {
            Ok(_) => Flow::Continue,
            Err(e) => {
                tracing::warn!(client = %self.client, error = %e, "backend failed cancelling AUTH");
                self.backend = None;
                Flow::Continue
            }
        }
    }
}

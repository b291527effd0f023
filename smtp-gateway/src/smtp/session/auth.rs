//! AUTH on submission ports: the SASL exchange relayed between client and backend, inside TLS
//! only; the backend decides.

use super::{Flow, Session};
use crate::smtp::{config::ListenerKind, connection::Ending, reply::Reply};

/// Most challenge/response rounds in one AUTH exchange.
const MAX_SASL_STEPS: usize = 10;
/// Longest SASL response line (RFC 4954 section 4: 12288 octets).
const MAX_SASL_LINE: usize = 12288;

impl Session {
    /// AUTH is relayed on submission ports, and only inside TLS (no password in clear).
    pub(super) fn auth_possible(&self) -> bool {
        self.kind != ListenerKind::Smtp && self.conn.is_tls()
    }

    /// Relays a SASL exchange between client and backend; the backend decides.
    pub(super) async fn handle_auth(&mut self, raw: &[u8]) -> Flow {
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
        if self.authenticated || self.txn.is_some() {
            self.reply(Reply::new(503, "5.5.1 AUTH not allowed now"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        let Some(backend) = self.backend.as_mut() else {
            self.reply(Reply::new(503, "5.5.1 Send EHLO first"));
            return Flow::Continue;
        };
        // Whatever the outcome, the connection carries this client's SASL state from now on.
        backend.keep_private();
        let mut reply = match backend.command(raw).await {
            Ok(r) => r,
            Err(e) => return self.backend_lost(e),
        };
        // A bounded challenge/response exchange; the client's responses are never logged.
        for _ in 0..MAX_SASL_STEPS {
            if reply.code != 334 {
                break;
            }
            self.reply(reply);
            if self.conn.flush().await.is_err() {
                return Flow::Close;
            }
            let smtp = &self.shared.config.smtp;
            let line = match self
                .conn
                .read_line(MAX_SASL_LINE, smtp.command_timeout)
                .await
            {
                Ok(Some(line)) if !line.too_long && line.ending != Ending::Eof => line,
                _ => return Flow::Close,
            };
            let Some(backend) = self.backend.as_mut() else {
                return Flow::Close;
            };
            reply = match backend.command(&line.data).await {
                Ok(r) => r,
                Err(e) => return self.backend_lost(e),
            };
        }
        if reply.code == 235 {
            self.authenticated = true;
        }
        let failed = !reply.is_positive();
        self.reply(reply);
        if failed {
            return self.count_error().unwrap_or(Flow::Continue);
        }
        Flow::Continue
    }
}

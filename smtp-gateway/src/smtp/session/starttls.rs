//! STARTTLS (RFC 3207): plaintext pipelined after it is discarded, the handshake, and everything
//! learnt in plaintext forgotten.

use super::{Flow, Session};
use crate::smtp::{config::ListenerKind, reply::Reply, tls_accept};

impl Session {
    /// Upgrades the client connection to TLS.
    pub(super) async fn handle_starttls(&mut self) -> Flow {
        let Some(acceptor) = self.shared.tls.clone() else {
            self.reply(Reply::new(502, "5.5.1 STARTTLS not available"));
            return Flow::Continue;
        };
        if self.conn.is_tls() || self.kind == ListenerKind::Smtps {
            self.reply(Reply::new(503, "5.5.1 TLS already active"));
            return Flow::Continue;
        }
        // Anything pipelined after STARTTLS is plaintext an attacker could have injected
        // (CVE-2011-0411): it is discarded, never interpreted inside the TLS session.
        let discarded = self.conn.discard_input();
        if discarded > 0 {
            tracing::warn!(client = %self.client, discarded, "plaintext after STARTTLS discarded");
        }
        self.reply(Reply::new(220, "2.0.0 Ready to start TLS"));
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        if let Err(e) = self
            .conn
            .start_tls(&acceptor, self.shared.config.smtp.command_timeout)
            .await
        {
            self.shared.metrics.tls_handshake(false);
            if tls_accept::made_room(&e) {
                tracing::info!(client = %self.client, "{e}");
            } else {
                tracing::info!(client = %self.client, error = %e, "TLS handshake failed");
            }
            return Flow::Close;
        }
        self.shared.metrics.tls_handshake(true);
        // Forget everything learnt in plaintext (RFC 3207 section 4.2).
        self.helo = None;
        self.esmtp = false;
        self.ehlo_answered = false;
        self.txn = None;
        if let Some(b) = self.backend.take() {
            b.quit().await;
        }
        Flow::Continue
    }
}

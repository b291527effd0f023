//! The session's backend: opened when first needed (through the pool, with the client's
//! identity; at most `backend.max_connections_per_session` attempts per client session), lost on
//! failure (the client gets `451` and may retry), its pipelined replies settled
//! in order, and released at the end (to the pool when the next session can use it as it is).

use std::net::SocketAddr;

use super::{Flow, Session};
use crate::smtp::{
    backend::{Backend, BackendError},
    identity::ClientIdentity,
    pipeline::{self, Settled},
    reply::Reply,
};

/// The client's reply when the backend failed mid-session.
const BACKEND_LOST: &str = "4.4.2 Mail service temporarily unavailable, try again later";

impl Session {
    /// What the backend is told about the client.
    pub(super) fn identity(&self) -> ClientIdentity {
        let name = self.dns.known_name();
        ClientIdentity {
            addr: SocketAddr::new(self.source(), self.client.port()),
            name: name.map(|n| n.xclient_name().to_string()),
            reverse_name: name.map(|n| n.xclient_reverse_name().to_string()),
            helo: self.helo.clone(),
            esmtp: self.esmtp,
            login: None,
        }
    }

    /// Opens the backend session if there is none; on failure the client got `451` (Err(Continue))
    /// or the session must close.
    pub(super) async fn ensure_backend(&mut self) -> Result<(), Flow> {
        if self.backend.is_some() {
            return Ok(());
        }
        // The backend learns the client's name with its identity.
        self.settle_client_name().await;
        let shared = self.shared.clone();
        if self.backend_sessions >= shared.config.backend.max_connections_per_session {
            // Each one cost the backend a connection (or an EHLO): a client that keeps losing or
            // replacing its backend session is closed rather than let it churn.
            tracing::warn!(client = %self.client, sessions = self.backend_sessions, "backend.max_connections_per_session reached; closing");
            self.reply(Reply::new(
                421,
                "4.4.5 Too many backend sessions for this connection, closing connection",
            ));
            return Err(Flow::Close);
        }
        // An attempt that fails counts too: it cost the backend a connection as well (a refused
        // XCLIENT, a banner that never came), and a client must not make it fail without end.
        self.backend_sessions += 1;
        match shared
            .backend_pool
            .connect(
                &shared.config.backend,
                &shared.backend_tls,
                &self.identity(),
                self.local,
                &shared.config.smtp.hostname,
            )
            .await
        {
            Ok((mut backend, reused)) => {
                self.shared.metrics.backend_session(reused);
                backend.record_reply_times(self.shared.metrics.backend_reply_histogram());
                self.backend_auth = backend.caps().auth().map(str::to_string);
                self.backend = Some(backend);
                Ok(())
            }
            Err(e) => {
                tracing::error!(client = %self.client, error = %e, "no backend available");
                self.reply(Reply::new(
                    451,
                    "4.4.1 Mail service temporarily unavailable, try again later",
                ));
                Err(Flow::Continue)
            }
        }
    }

    /// The backend failed mid-session: the client gets `451` and may try again in this session
    /// (the next MAIL reconnects).
    pub(super) fn backend_lost(&mut self, e: BackendError) -> Flow {
        tracing::error!(client = %self.client, error = %e, "backend failed");
        self.backend = None;
        self.txn = None;
        // The rest of the client's group is answered 503 because of this 4xx: not its error.
        self.excuse_group();
        self.reply(Reply::new(451, BACKEND_LOST));
        Flow::Continue
    }

    /// Reads the reply of every forwarded command, in order, and applies each as the unpipelined
    /// command would have: transaction, sender, recipient counts, errors, the reply relayed.
    pub(super) async fn settle_pipeline(&mut self) -> Flow {
        while let Some(awaiting) = self.pipeline.oldest() {
            let reply = match self.backend.as_mut() {
                Some(backend) => backend.pipelined_reply().await,
                None => Err(BackendError::Closed),
            };
            let open = self.txn.as_ref().is_some_and(|t| t.open());
            match pipeline::settle(awaiting, open, reply) {
                Settled::Opened { from, reply } => {
                    self.sender = Some(from);
                    self.excused_503s = 0;
                    self.reply(reply);
                }
                Settled::NotOpened(reply) => {
                    self.txn = None;
                    self.reply(reply);
                }
                Settled::Accepted(reply) => {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.accepted += 1;
                    }
                    self.recipients += 1;
                    self.reply(reply);
                }
                Settled::Refused(reply) => self.reply(reply),
                Settled::NoTransaction { discarded } => {
                    if let (Err(e), Some(_)) = (discarded, self.backend.as_ref()) {
                        tracing::warn!(client = %self.client, error = %e, "backend failed after a refused MAIL; reconnecting at the next one");
                        self.backend = None;
                    }
                    if let Some(refusal) = self.txn.as_ref().and_then(|t| t.refused.clone()) {
                        // The refusal of the MAIL the gateway had answered itself.
                        self.reply(refusal);
                        continue;
                    }
                    self.reply(Reply::new(503, "5.5.1 Need MAIL before RCPT"));
                    if let Some(flow) = self.no_transaction_error(false) {
                        self.pipeline.clear();
                        return flow;
                    }
                }
                Settled::Lost(e) => {
                    let _ = self.backend_lost(e);
                }
                Settled::HeldOpened { from } => {
                    self.sender = Some(from);
                }
                Settled::HeldRefused(reply) => {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.refused = Some(reply);
                    }
                }
                Settled::HeldLost(e) => {
                    tracing::error!(client = %self.client, error = %e, "backend failed");
                    self.backend = None;
                    if let Some(txn) = self.txn.as_mut() {
                        txn.refused = Some(Reply::new(451, BACKEND_LOST));
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Hands the backend connection to the pool when the next session can use it as it is
    /// (between transactions, no reply outstanding, no AUTH on it, no error reply since its last
    /// delivered message: see [`Backend::shareable`]); otherwise ends it with QUIT.
    pub(super) async fn release_backend(&mut self, backend: Backend) {
        let cfg = &self.shared.config.backend;
        // A transaction whose MAIL is held or was refused is not the backend's.
        let idle = self.txn.as_ref().is_none_or(|t| !t.at_backend())
            && self.pipeline.is_empty()
            && !self.authenticated();
        let unkept = if idle && backend.shareable() && cfg.pool_size > 0 {
            self.shared
                .backend_pool
                .put(backend, cfg.pool_size, cfg.pool_idle)
        } else {
            Some(backend)
        };
        if let Some(backend) = unkept {
            backend.quit().await;
        }
    }
}

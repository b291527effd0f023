//! HELO and EHLO: the pipelining-before-the-reply check, the HELO checks and lists, the backend
//! session (a new one when the configuration wants one now, or on a submission port before any
//! backend said its AUTH mechanisms; on a repeated HELO the open one is reset and told the new
//! name), and the capabilities offered (CHUNKING only where the backend offers it: `bdat.rs`).

use super::{CheckEffect, Flow, Session};
use crate::{
    checks::Check,
    policy::helo,
    smtp::{backend::Backend, backend_pool::MirroredExtension, config::ConnectAt, reply::Reply},
};

impl Session {
    /// HELO (`esmtp` false) or EHLO `host`.
    pub(super) async fn handle_helo(&mut self, host: String, esmtp: bool) -> Flow {
        if !self.ehlo_answered && self.conn.buffered() > 0 {
            let effect = self.fire(Check::Pipelining, "commands sent before the EHLO reply");
            if effect != CheckEffect::Pass {
                return self.drop_reply("Protocol error: pipelining before the EHLO reply");
            }
        }
        // A new HELO resets the transaction (RFC 5321 4.1.4), on the backend too. The backend
        // session is kept (a client repeating EHLO must not cost the backend a connection each
        // time) unless it carries a login: whether the backend keeps that across EHLO is its
        // own business, so the client starts again unauthenticated on a new one.
        let had_txn = self.txn.take().is_some_and(|t| t.at_backend());
        if self.backend.as_ref().is_some_and(Backend::authenticated) {
            if let Some(b) = self.backend.take() {
                b.quit().await;
            }
        } else if had_txn
            && let Some(b) = self.backend.as_mut()
            && let Err(e) = b.command(b"RSET").await
        {
            tracing::warn!(client = %self.client, error = %e, "backend failed at RSET; reconnecting when needed");
            self.backend = None;
        }
        let own = [self.local.ip()];
        let findings = helo::inspect(&self.shared.config.helo, &host, self.client.ip(), &own);
        let mut refused = None;
        for finding in &findings {
            let check = Check::from_helo(*finding);
            match self.fire_scored_once(check, host.clone()) {
                CheckEffect::Drop => return self.drop_reply("HELO refused"),
                CheckEffect::Reject => refused = Some(check.name()),
                CheckEffect::Pass => {}
            }
        }
        let lists = self.shared.reputation.check_helo(&host);
        if !lists.is_empty() {
            match self.fire(
                Check::Reputation,
                format!("HELO {host} in {}", lists.join(", ")),
            ) {
                CheckEffect::Drop => return self.drop_reply("HELO refused"),
                CheckEffect::Reject => refused = Some(Check::Reputation.name()),
                CheckEffect::Pass => {}
            }
        }
        if let Some(check) = refused {
            self.reply(Reply::new(
                550,
                format!("5.7.1 HELO/EHLO {host} refused ({check})"),
            ));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        self.helo = Some(host);
        self.esmtp = esmtp;
        self.rehello_backend().await;
        // On submission ports inside TLS the backend's AUTH mechanisms are offered: those of
        // the client's own backend session when one is open, else those the last one offered
        // (the exchange opens the backend at AUTH), so a client that never logs in costs the
        // backend no connection. Only before any backend session was seen is one opened now.
        let offer_auth = esmtp && self.auth_possible() && self.backend.is_none();
        let known = if offer_auth {
            self.shared.backend_pool.auth_seen()
        } else {
            None
        };
        if (self.shared.config.backend.connect_at == ConnectAt::Ehlo
            || (offer_auth && known.is_none()))
            && let Err(flow) = self.ensure_backend().await
        {
            self.ehlo_answered = true;
            return flow;
        }
        if let Some(mechanisms) = known
            && self.backend.is_none()
        {
            self.backend_auth = mechanisms;
        }
        if esmtp {
            let caps = self.capabilities();
            self.reply(Reply::multi(250, caps));
        } else {
            let host = self.shared.config.smtp.hostname.clone();
            self.reply(Reply::new(250, host));
        }
        self.ehlo_answered = true;
        Flow::Continue
    }

    /// Tells the open backend session (if any) the client's new HELO/EHLO; a backend that fails
    /// at it is let go (the next command that needs one opens another).
    async fn rehello_backend(&mut self) {
        let identity = self.identity();
        let gateway_name = self.shared.config.smtp.hostname.clone();
        let Some(backend) = self.backend.as_mut() else {
            return;
        };
        match backend.hello(&identity, &gateway_name).await {
            Ok(_) => self.backend_auth = backend.caps().auth().map(str::to_string),
            Err(e) => {
                tracing::warn!(client = %self.client, error = %e, "backend failed at the repeated EHLO; reconnecting when needed");
                self.backend = None;
            }
        }
    }

    /// The EHLO reply's lines: our name, then the extensions offered.
    fn capabilities(&self) -> Vec<String> {
        let smtp = &self.shared.config.smtp;
        let mut caps = vec![
            smtp.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", smtp.max_message_size),
        ];
        // 8-bit text and UTF-8 addresses pass through to the backend as they are: offered when
        // it offers them (a client not told converts the text to 7 bits, or says itself why it
        // cannot send), as CHUNKING.
        for (keyword, extension) in [
            ("8BITMIME", MirroredExtension::EightBitMime),
            ("SMTPUTF8", MirroredExtension::SmtpUtf8),
        ] {
            let offered = match &self.backend {
                Some(backend) => backend.caps().has(keyword),
                None => self.shared.backend_pool.offered_seen(extension),
            };
            if offered {
                caps.push(keyword.into());
            }
        }
        caps.push("ENHANCEDSTATUSCODES".into());
        if self.backend_chunking() {
            caps.push("CHUNKING".into());
        }
        if self.shared.tls.is_some() && !self.conn.is_tls() {
            caps.push("STARTTLS".into());
        }
        if self.auth_possible()
            && let Some(mechanisms) = &self.backend_auth
        {
            caps.push(format!("AUTH {mechanisms}"));
        }
        caps
    }
}

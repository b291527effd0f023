//! MAIL FROM: HELO first, one transaction at a time, AUTH first where the listener's profile
//! requires it, the message cap, the declared `SIZE=`, the client address's reputation and DNSBL
//! score and its name (FCrDNS; collected here, once), SPF (`dns_checks.rs`), the sender lists, the
//! score thresholds; then the command is forwarded (queued when the backend pipelines and more is
//! buffered), or, when it came alone, answered by the gateway and held for the first recipient
//! (`backend.mail_with_first_rcpt`).
//!
//! A client that pipelines (RFC 2920) sends its RCPTs and DATA before it sees the MAIL reply: when
//! the MAIL is refused, their `503`s are the consequence of that refusal, not protocol errors.

use smtp_proto::MailFrom;

use super::{CheckEffect, Flow, Session, Transaction};
use crate::{
    checks::Check,
    policy::address,
    smtp::{pipeline::Awaiting, reply::Reply},
};

impl Session {
    /// MAIL FROM:<`from`>; `raw` is the line as received (what gets forwarded).
    pub(super) async fn handle_mail(&mut self, mail: MailFrom<String>, raw: &[u8]) -> Flow {
        let from = mail.address;
        if self.helo.is_none() {
            let refusal = Reply::new(503, "5.5.1 Send HELO/EHLO first");
            let detail = "MAIL before HELO/EHLO";
            if let Some(flow) =
                self.enforce(Check::HeloMissing, detail, refusal, "HELO/EHLO required")
            {
                return flow;
            }
        }
        if self.txn.as_ref().is_some_and(|t| t.open()) {
            self.reply(Reply::new(503, "5.5.1 Nested MAIL command"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        // A transaction whose held MAIL the backend refused is gone there: the client, which
        // had a 250 for it and refusals for its recipients, may start the next one at once.
        self.txn = None;
        // Until this MAIL opens the transaction, the rest of its group is excused.
        self.excuse_group();
        if self.profile.require_auth && !self.authenticated() {
            self.reply(Reply::new(530, "5.7.0 Authentication required"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        let max_size = self.shared.config.smtp.max_message_size;
        if address::declared_size(raw).is_some_and(|size| size > max_size) {
            // RFC 1870 section 6.1: refused at once, not after the text.
            self.reply(Reply::new(
                552,
                "5.3.4 Message size exceeds fixed maximum message size",
            ));
            return Flow::Continue;
        }
        // The submitter a client that did not log in names is not forwarded (RFC 4954 5).
        let without_auth = if self.authenticated() {
            None
        } else {
            address::without_auth_parameter(raw)
        };
        let raw = without_auth.as_deref().unwrap_or(raw);
        if self.messages >= self.shared.config.smtp.max_messages {
            self.reply(Reply::new(
                452,
                "4.5.3 Too many messages in this session, try again later",
            ));
            return Flow::Continue;
        }
        match self.check_client_address().await {
            CheckEffect::Drop => return self.drop_reply("Client host refused"),
            CheckEffect::Reject => {
                self.reply(Reply::new(
                    554,
                    "5.7.1 Service unavailable; client host refused by policy",
                ));
                return Flow::Continue;
            }
            CheckEffect::Pass => {}
        }
        if let Some(flow) = self.check_client_name().await {
            return flow;
        }
        if let Some(flow) = self.check_spf(&from).await {
            return flow;
        }
        let lists = self.shared.reputation.check_sender(&from);
        if !lists.is_empty() {
            let detail = format!("sender {from} in {}", lists.join(", "));
            let refusal = Reply::new(550, format!("5.7.1 <{from}>: sender refused by policy"));
            if let Some(flow) = self.enforce(Check::Reputation, detail, refusal, "Sender refused") {
                return flow;
            }
        }
        if let Some(flow) = self.refuse_on_score() {
            return flow;
        }
        if let Err(flow) = self.ensure_backend().await {
            return flow;
        }
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Continue;
        };
        if backend.pipelining() && self.conn.has_line() {
            backend.queue_command(raw);
            self.pipeline.push(Awaiting::Mail { from: from.clone() });
            // Assumed open until the reply is settled (a refusal closes it again).
            self.txn = Some(Box::new(Transaction {
                from,
                ..Transaction::default()
            }));
            return Flow::Continue;
        }
        if backend.pipelining() && self.shared.config.backend.mail_with_first_rcpt {
            // Sent with the first recipient that passes the gateway's checks (`rcpt.rs`); its
            // reply is settled with that recipient's.
            self.txn = Some(Box::new(Transaction {
                from,
                held_mail: Some(raw.into()),
                ..Transaction::default()
            }));
            self.excused_503s = 0;
            self.reply(Reply::new(250, "2.1.0 Ok"));
            return Flow::Continue;
        }
        match backend.command(raw).await {
            Ok(reply) => {
                if reply.is_positive() {
                    self.txn = Some(Box::new(Transaction {
                        from: from.clone(),
                        ..Transaction::default()
                    }));
                    self.sender = Some(from);
                    self.excused_503s = 0;
                }
                self.reply(reply);
                Flow::Continue
            }
            Err(e) => self.backend_lost(e),
        }
    }

    /// Excuses the `503`s of the RCPTs and the DATA that may follow a MAIL in its group (at most
    /// `max_recipients` and one DATA): called when a MAIL may be refused or a transaction is lost.
    pub(super) fn excuse_group(&mut self) {
        self.excused_503s = self.shared.config.smtp.max_recipients.saturating_add(1);
    }

    /// A RCPT or DATA answered `503` for want of a transaction: a protocol error unless it is the
    /// rest of a group whose MAIL was refused (or whose transaction was lost). DATA (`ends_group`)
    /// ends the group. `Some(flow)` when the error count closes the session.
    pub(super) fn no_transaction_error(&mut self, ends_group: bool) -> Option<Flow> {
        let excused = self.excused_503s > 0;
        self.excused_503s = if ends_group {
            0
        } else {
            self.excused_503s.saturating_sub(1)
        };
        if excused { None } else { self.count_error() }
    }

    /// Judges the client's address once per session (reputation `ip` lists, then the DNSBL score,
    /// whose lookup started at accept and is bounded by the DNSBL timeout).
    async fn check_client_address(&mut self) -> CheckEffect {
        if self.address_checked {
            return CheckEffect::Pass;
        }
        self.address_checked = true;
        let lists = self.shared.reputation.check_ip(self.source());
        if !lists.is_empty() {
            let detail = format!("client address in {}", lists.join(", "));
            let effect = self.fire(Check::Reputation, detail);
            if effect != CheckEffect::Pass {
                return effect;
            }
        }
        let Some(task) = self.dnsbl.take() else {
            return CheckEffect::Pass;
        };
        let result = task.await;
        if let Ok(score) = &result {
            self.dnswl = score.hits.iter().any(|hit| hit.weight < 0);
        }
        match result {
            Ok(score) if score.listed => {
                let zones: Vec<String> = score.hits.iter().map(|h| h.zone.clone()).collect();
                self.fire(
                    Check::Dnsbl,
                    format!("score {} ({})", score.total, zones.join(", ")),
                )
            }
            Ok(_) => CheckEffect::Pass,
            Err(e) => {
                tracing::warn!(client = %self.client, error = %e, "DNSBL lookup task failed; not counted");
                CheckEffect::Pass
            }
        }
    }
}

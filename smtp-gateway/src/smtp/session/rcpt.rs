//! RCPT TO: an open transaction, the recipient cap, the relay policy on the path as the client
//! wrote it, the score thresholds, greylisting (`greylist.rs`); then the command is forwarded
//! (joining the pipelined group when the backend pipelines).

use super::{CheckEffect, Flow, Session};
use crate::{
    checks::Check,
    events::SessionVerdict,
    policy::{
        address,
        relay::{self, RelayRefusal, RelayVerdict},
    },
    smtp::{config::SmtpConfig, pipeline::Awaiting, reply::Reply},
};

impl Session {
    /// RCPT TO:<`to`>; `raw` is the line as received (what gets forwarded).
    pub(super) async fn handle_rcpt(&mut self, to: String, raw: &[u8]) -> Flow {
        // A recipient the gateway would answer itself fires checks and counts errors as the
        // settled transaction dictates: settle what is awaited first.
        if !self.pipeline.is_empty()
            && !self.rcpt_forwardable(&to, raw)
            && let Flow::Close = self.settle_pipeline().await
        {
            return Flow::Close;
        }
        let Some(txn) = self.txn.as_mut() else {
            self.reply(Reply::new(503, "5.5.1 Need MAIL before RCPT"));
            return self.no_transaction_error(false).unwrap_or(Flow::Continue);
        };
        if let Some(refusal) = txn.refused.clone() {
            // The backend refused the sender the gateway had answered 250 (`mail.rs`).
            self.reply(refusal);
            return Flow::Continue;
        }
        // Accepted recipients (and those awaited, each of which may be), as Postfix's
        // smtpd_recipient_limit: a refused one does not count.
        if recipients_full(
            txn.accepted,
            self.pipeline.rcpts(),
            &self.shared.config.smtp,
        ) {
            self.reply(Reply::new(452, "4.5.3 Too many recipients"));
            return Flow::Continue;
        }
        match self.relay_verdict(&to, raw) {
            RelayVerdict::Accept { .. } => {}
            RelayVerdict::Reject {
                reason: reason @ (RelayRefusal::InvalidSyntax(_) | RelayRefusal::NullRecipient),
            } => {
                self.reply(Reply::new(501, format!("5.1.3 <{to}>: {reason}")));
                return self.count_error().unwrap_or(Flow::Continue);
            }
            RelayVerdict::Reject { reason } => {
                let effect = self.fire_refusing(Check::RelayAttempt, format!("{to}: {reason}"));
                // Refused whatever the check's action (which only decides score or drop).
                self.record_refusal(SessionVerdict::Rejected);
                self.reply(Reply::new(550, format!("5.7.1 <{to}>: {reason}")));
                if effect == CheckEffect::Drop {
                    return self.drop_reply("Relay attempts");
                }
                return self.count_error().unwrap_or(Flow::Continue);
            }
        }
        if let Some(flow) = self.refuse_on_score() {
            return flow;
        }
        if let Some(flow) = self.greylist_rcpt(&to).await {
            return flow;
        }
        let Some(backend) = self.backend.as_mut() else {
            self.reply(Reply::new(503, "5.5.1 Need MAIL before RCPT"));
            return Flow::Continue;
        };
        // A MAIL the gateway answered itself goes first, in the same write.
        if let Some(txn) = self.txn.as_mut()
            && let Some(mail) = txn.held_mail.take()
        {
            backend.queue_command(&mail);
            self.pipeline.push(Awaiting::HeldMail {
                from: txn.from.clone(),
            });
        }
        // Joins the group when more commands are buffered, and always once replies are awaited
        // (they come in order: this one is read after them).
        if backend.pipelining() && (self.conn.has_line() || !self.pipeline.is_empty()) {
            backend.queue_command(raw);
            self.pipeline.push(Awaiting::Rcpt);
            return Flow::Continue;
        }
        match backend.command(raw).await {
            Ok(reply) => {
                if reply.is_positive() {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.accepted += 1;
                    }
                    self.recipients += 1;
                }
                self.reply(reply);
                Flow::Continue
            }
            Err(e) => self.backend_lost(e),
        }
    }

    /// The relay policy's verdict on this recipient. It judges the path exactly as the client
    /// wrote it (the parser drops source routes, but the raw line, route included, is what the
    /// backend would receive); the parsed `to`, as a path, when the line has none
    /// ([`address::policy_path`]).
    fn relay_verdict(&self, to: &str, raw: &[u8]) -> RelayVerdict {
        let path = address::policy_path(raw, to);
        relay::check_recipient(
            &self.profile.relay,
            self.source(),
            self.authenticated(),
            &path,
        )
    }

    /// Whether `handle_rcpt` would forward this recipient without firing a check or answering it
    /// itself, were the transaction open (as it is assumed while its MAIL reply is awaited).
    fn rcpt_forwardable(&self, to: &str, raw: &[u8]) -> bool {
        let Some(txn) = self.txn.as_ref() else {
            return false;
        };
        txn.open()
            && !recipients_full(
                txn.accepted,
                self.pipeline.rcpts(),
                &self.shared.config.smtp,
            )
            && matches!(self.relay_verdict(to, raw), RelayVerdict::Accept { .. })
            && self.score_refusal().is_none()
            && self.greylist_applies() != Ok(true)
            && self.backend.is_some()
    }
}

/// Whether a transaction with `accepted` recipients and `awaited` forwarded RCPTs whose replies
/// are awaited (each may yet be accepted) has room for no more: `smtp.max_recipients` counts the
/// accepted ones, as Postfix's smtpd_recipient_limit.
fn recipients_full(accepted: usize, awaited: usize, smtp: &SmtpConfig) -> bool {
    accepted.saturating_add(awaited) >= smtp.max_recipients
}

//! DATA: a transaction with accepted recipients and no BDAT chunk (RFC 3030), no text before the
//! `354`, the backend's own `354` (DATA written with the MAIL and RCPT of its pipelined group when
//! their replies are still awaited), then the text relayed (`smtp/text.rs`, within
//! `smtp.max_data_duration` and the session's own limit, with the `Authentication-Results` header
//! in front and the client's forged ones out) and its end turned into the client's
//! reply (counted by `final_reply`, which the last BDAT chunk's reply goes through too).

use std::time::Instant;

use super::{Body, CheckEffect, Flow, Session, waits::Stall};
use crate::checks::{Action, Check};
use crate::smtp::{
    backend::BackendError,
    reply::Reply,
    text::{HeaderRewrite, TextLimits, TextRelayEnd, TextViolation, relay_message_filtered},
};

impl Session {
    /// Whether a DATA may join the MAIL and RCPT still awaiting the backend's replies: the
    /// backend pipelines, the transaction (assumed open until MAIL's reply says otherwise) has
    /// sent no BDAT chunk, and no message text came before the `354` (the pipelining check
    /// judges that once the replies are settled).
    fn data_may_join(&self) -> bool {
        self.conn.buffered() == 0
            && self
                .txn
                .as_ref()
                .is_some_and(|t| !matches!(t.body, Body::Chunks { .. }))
            && self.backend.as_ref().is_some_and(|b| b.pipelining())
    }

    /// The gateway answers a DATA that joined its group itself (no transaction, no recipient):
    /// a backend that let it in anyway (`354`) never gets text after it. Its connection is
    /// dropped, so the backend discards the transaction and delivers nothing (RFC 2920 would
    /// have a lone dot sent, which delivers an empty message where the backend's view of the
    /// recipients differs from the replies it gave).
    fn drop_go_ahead(&mut self, early: Option<&Reply>) {
        if early.is_some_and(|r| r.code == 354) {
            tracing::warn!(client = %self.client, "backend let a DATA without recipients in; its connection is dropped");
            self.backend = None;
        }
    }

    /// Relays the backend's final reply to a message (after DATA's text or the last BDAT chunk)
    /// and counts it: messages, the junk count, the pass cache, the session line.
    pub(super) fn final_reply(&mut self, reply: Reply) {
        self.shared.metrics.message(reply.is_positive());
        if reply.is_positive() {
            self.messages += 1;
            // Postfix resets its junk command count once mail is delivered.
            self.junk_commands = 0;
            if self.fired.is_empty() && self.profile.earns_pass {
                self.shared.pass_cache.insert(self.source(), Instant::now());
            }
        }
        self.last_backend_reply = Some(reply.summary());
        self.reply(reply);
    }

    /// DATA and the message text.
    pub(super) async fn handle_data(&mut self) -> Flow {
        // A DATA that ends a pipelined group whose MAIL and RCPT still await their replies goes
        // to the backend in the same write as they do (RFC 2920 lets DATA end a group): one
        // round trip to the backend fewer per message. Its reply is read after theirs, and
        // what the client gets is decided on the settled transaction, as unpipelined.
        let joined = !self.pipeline.is_empty() && self.data_may_join();
        if joined && let Some(backend) = self.backend.as_mut() {
            backend.queue_command(b"DATA");
        }
        if !self.pipeline.is_empty()
            && let Flow::Close = Box::pin(self.settle_pipeline()).await
        {
            if joined {
                // Its DATA may have been let in: the connection goes, and no text with it.
                self.backend = None;
            }
            return Flow::Close;
        }
        let mut early = None;
        if joined && let Some(backend) = self.backend.as_mut() {
            match backend.pipelined_data_reply().await {
                Ok(reply) => early = Some(reply),
                Err(e) => return self.backend_lost(e),
            }
        }
        let accepted = self.txn.as_ref().map(|t| t.accepted).unwrap_or(0);
        if self.txn.is_none() {
            self.drop_go_ahead(early.as_ref());
            self.reply(Reply::new(503, "5.5.1 Need MAIL before DATA"));
            return self.no_transaction_error(true).unwrap_or(Flow::Continue);
        }
        if matches!(self.txn.as_ref().map(|t| t.body), Some(Body::Chunks { .. })) {
            // RFC 3030 section 2: DATA after BDAT in one transaction is a bad sequence.
            self.reply(Reply::new(
                503,
                "5.5.1 DATA after BDAT in one transaction; send RSET",
            ));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.body = Body::Data;
        }
        if accepted == 0 {
            self.drop_go_ahead(early.as_ref());
            self.reply(Reply::new(554, "5.5.1 No valid recipients"));
            return Flow::Continue;
        }
        if self.conn.buffered() > 0 {
            let effect = self.fire(Check::Pipelining, "message text sent before the 354 reply");
            if effect != CheckEffect::Pass {
                self.txn = None;
                self.backend = None;
                return self.drop_reply("Protocol error: message text before 354");
            }
        }
        let go_ahead = match early {
            Some(reply) => reply,
            None => {
                let Some(backend) = self.backend.as_mut() else {
                    self.reply(Reply::new(503, "5.5.1 Need MAIL before DATA"));
                    return Flow::Continue;
                };
                match backend.command(b"DATA").await {
                    Ok(reply) => reply,
                    Err(e) => return self.backend_lost(e),
                }
            }
        };
        if go_ahead.code != 354 && go_ahead.code < 400 {
            // Only 354 lets the text in: any other 2xx or 3xx breaks the protocol (relayed, a
            // client could read it as the message taken, and its text would be read as
            // commands). The backend is in a state nobody knows: it goes, the client gets 451.
            let answer = go_ahead.summary();
            return self.backend_lost(BackendError::Protocol(format!("DATA answered {answer}")));
        }
        if go_ahead.code != 354 {
            self.txn = None;
            self.reply(go_ahead);
            return Flow::Continue;
        }
        self.reply(go_ahead);
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        let smtp = &self.shared.config.smtp;
        let long = self.profile.checks.get(Check::LongLine).action;
        let limits = TextLimits {
            max_size: smtp.max_message_size,
            max_line: smtp.max_text_line,
            bare_newlines: smtp.bare_newlines,
            timeout: smtp.data_timeout,
            deadline: (tokio::time::Instant::now() + smtp.max_data_duration).min(self.ends_by),
            flush_interval: smtp.text_flush_interval,
            refuse_long_lines: matches!(long, Action::Reject | Action::Drop),
        };
        let mut auth_results = self.auth_results();
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Close;
        };
        let rewrite = auth_results
            .as_mut()
            .map(|(prepend, filter)| HeaderRewrite { prepend, filter });
        let (end, size) = relay_message_filtered(&mut self.conn, backend, &limits, rewrite).await;
        if let Some((_, filter)) = &auth_results
            && filter.dropped() > 0
        {
            tracing::info!(client = %self.client, dropped = filter.dropped(), "client's Authentication-Results with our authserv-id removed");
        }
        self.txn = None;
        self.bytes += size;
        match end {
            TextRelayEnd::Relayed { reply, folded } => {
                // A line over max_text_line went through folded (long_line does not refuse):
                // the check is still logged (and scored).
                if folded
                    && self.fire(Check::LongLine, "in message text (folded)") == CheckEffect::Drop
                {
                    self.reply(reply);
                    return Flow::Close;
                }
                self.final_reply(reply);
                Flow::Continue
            }
            TextRelayEnd::Refused(violation) => {
                self.shared.metrics.message(false);
                // Abort the backend transaction: it never saw the final dot.
                self.backend = None;
                let check = match violation {
                    TextViolation::BareNewline => Some(Check::BareNewline),
                    TextViolation::LongLine => Some(Check::LongLine),
                    TextViolation::TooBig => None,
                };
                let mut close = false;
                if let Some(check) = check {
                    close = self.fire(check, "in message text") == CheckEffect::Drop;
                }
                self.reply(violation.reply());
                if close { Flow::Close } else { Flow::Continue }
            }
            TextRelayEnd::BackendFailed(e) => self.backend_lost(e),
            TextRelayEnd::ClientGone => {
                self.backend = None;
                Flow::Close
            }
            TextRelayEnd::Timeout => {
                // Abort the backend transaction: it never saw the final dot.
                self.backend = None;
                self.close_stalled(Stall::Idle, "DATA")
            }
            TextRelayEnd::TimeLimit => {
                // Abort the backend transaction: it never saw the final dot.
                self.backend = None;
                self.close_stalled(self.stall_at(limits.deadline, Stall::Transfer), "DATA")
            }
        }
    }
}

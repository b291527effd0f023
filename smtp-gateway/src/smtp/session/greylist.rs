//! Greylisting at RCPT (`policy/greylist/`): what bypasses it, and the `451 4.7.1` of a
//! triplet deferred. A deferral is a tempfail: no check fires, no protocol error is counted,
//! nothing reaches the auto-ban; the session's verdict says `tempfailed`.

use super::{Flow, Session};
use crate::{events::SessionVerdict, policy::spf::SpfOutcome, smtp::reply::Reply};

/// The reply to a recipient greylisted.
const GREYLISTED: &str = "4.7.1 Greylisted, please try again later";

impl Session {
    /// Whether greylisting may answer this session's recipients: it is on, the listener's
    /// profile greylists, and nothing bypasses it (authenticated, passed recently, DNSWL-listed,
    /// SPF `pass` for a big-sender domain). The reason it is bypassed, if it is.
    pub(super) fn greylist_applies(&self) -> Result<bool, &'static str> {
        let config = &self.shared.config.greylist;
        if !config.enabled || !self.profile.greylist {
            return Ok(false);
        }
        if self.authenticated() {
            return Err("authenticated");
        }
        if self.passed_recently {
            return Err("passed recently");
        }
        if self.dnswl {
            return Err("DNSWL-listed");
        }
        if let Some(spf) = &self.dns.spf
            && spf.outcome == SpfOutcome::Pass
            && config.is_big_sender(&spf.domain)
        {
            return Err("SPF pass for a big sender");
        }
        Ok(true)
    }

    /// Greylists recipient `to` of the open transaction: `Some(flow)` when it is deferred
    /// (`451 4.7.1`, answered here).
    pub(super) async fn greylist_rcpt(&mut self, to: &str) -> Option<Flow> {
        match self.greylist_applies() {
            Ok(false) => return None,
            Ok(true) => {}
            Err(reason) => {
                tracing::debug!(client = %self.client, reason, "greylisting bypassed");
                self.shared.metrics.greylist("bypassed");
                return None;
            }
        }
        let from = self.txn.as_ref()?.from.clone();
        let shared = self.shared.clone();
        let config = &shared.config.greylist;
        let verdict = shared
            .greylist
            .check(config, self.source(), &from, to)
            .await;
        shared.metrics.greylist(verdict.metric());
        if verdict.defers() {
            tracing::info!(client = %self.client, from = %from, to = %to, result = verdict.metric(), "greylisted");
            self.record_refusal(SessionVerdict::Tempfailed);
            self.reply(Reply::new(451, GREYLISTED));
            return Some(Flow::Continue);
        }
        if verdict == crate::policy::greylist::Verdict::Passed && !self.greylist_passed {
            self.greylist_passed = true;
            shared.greylist.record_pass(config, self.source()).await;
        }
        None
    }
}

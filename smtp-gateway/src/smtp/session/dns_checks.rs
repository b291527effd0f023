//! The DNS-backed judgements of a session: the client's name (FCrDNS, looked up from the connect
//! on; settled before the backend learns the client's identity, judged at the first MAIL), SPF at
//! each MAIL FROM (within the session's `spf.timeout` altogether), and the
//! `Authentication-Results` header that reports both to the backend with the message.

use std::time::{Duration, Instant};

use super::{CheckEffect, Flow, Session};
use crate::{
    checks::{Action, Check},
    policy::{
        fcrdns::ClientName,
        spf::{SpfOutcome, SpfVerdict},
    },
    smtp::{
        auth_results::{HeaderFilter, header},
        reply::Reply,
    },
};

/// The client-name lookup of a session.
pub(super) enum NameLookup {
    /// FCrDNS is off.
    Off,
    /// Started at connect, not collected yet.
    Pending(tokio::task::JoinHandle<ClientName>),
    /// The outcome.
    Done(ClientName),
}

/// The DNS judgements' state in a session.
pub(super) struct DnsState {
    /// The client's name.
    pub(super) name: NameLookup,
    /// The `fcrdns` check was judged (once per session).
    pub(super) name_checked: bool,
    /// The SPF verdict of the current transaction's MAIL FROM.
    pub(super) spf: Option<SpfVerdict>,
    /// Time the session's SPF evaluations took so far (bounded by `spf.timeout`).
    pub(super) spf_spent: Duration,
}

impl DnsState {
    /// The state of a session from `client`: the name lookup starts now when FCrDNS is on.
    pub(super) fn start(
        fcrdns: Option<std::sync::Arc<crate::policy::fcrdns::Fcrdns>>,
        client: std::net::IpAddr,
    ) -> Self {
        let name = match fcrdns {
            Some(f) => NameLookup::Pending(tokio::spawn(async move { f.lookup(client).await })),
            None => NameLookup::Off,
        };
        Self {
            name,
            name_checked: false,
            spf: None,
            spf_spent: Duration::ZERO,
        }
    }

    /// The client's name when it is known (never waits), for the identity and the logs.
    pub(super) fn known_name(&self) -> Option<&ClientName> {
        match &self.name {
            NameLookup::Done(name) => Some(name),
            _ => None,
        }
    }
}

impl Session {
    /// Waits for the client-name lookup (bounded by `fcrdns.timeout` from the connect); `None`
    /// when FCrDNS is off.
    pub(super) async fn settle_client_name(&mut self) -> Option<&ClientName> {
        if let NameLookup::Pending(task) = &mut self.dns.name {
            let name = match task.await {
                Ok(name) => name,
                Err(e) => {
                    tracing::warn!(client = %self.client, error = %e, "FCrDNS lookup task failed; name unavailable for now");
                    ClientName::TempFail { reverse: None }
                }
            };
            self.dns.name = NameLookup::Done(name);
        }
        self.dns.known_name()
    }

    /// The `fcrdns` check, once per session (first MAIL): `Some(flow)` when its action refuses
    /// the MAIL (`550 5.7.25`, or `451 4.7.25` for a temporary DNS failure) or drops the session.
    pub(super) async fn check_client_name(&mut self) -> Option<Flow> {
        if self.dns.name_checked {
            return None;
        }
        self.dns.name_checked = true;
        let name = self.settle_client_name().await?.clone();
        let detail = name.finding()?;
        let temporary = name.is_temporary();
        let setting = self.profile.checks.get(Check::Fcrdns);
        match self.fire_with(Check::Fcrdns, setting, detail, false, temporary) {
            CheckEffect::Pass => None,
            CheckEffect::Drop => Some(self.drop_reply("Client host name not verified")),
            CheckEffect::Reject => {
                self.reply(if temporary {
                    Reply::new(
                        451,
                        "4.7.25 Client host name not verified: temporary DNS failure, try again later",
                    )
                } else {
                    Reply::new(550, "5.7.25 Client host name not verified (FCrDNS)")
                });
                Some(self.count_error().unwrap_or(Flow::Continue))
            }
        }
    }

    /// SPF for MAIL FROM:<`from`> (the HELO name for `<>`), when `[spf]` is on: the verdict is
    /// kept for the `Authentication-Results` header; `Some(flow)` when the result's setting
    /// refuses the MAIL or drops the session. A result set to `ignore` does not fire.
    pub(super) async fn check_spf(&mut self, from: &str) -> Option<Flow> {
        self.dns.spf = None;
        let spf = self.shared.spf.clone()?;
        let budget = self
            .shared
            .config
            .spf
            .timeout
            .saturating_sub(self.dns.spf_spent);
        let helo = self.helo.clone().unwrap_or_default();
        let started = Instant::now();
        let verdict = spf.evaluate(self.source(), &helo, from, budget).await;
        self.dns.spf_spent += started.elapsed();
        let outcome = verdict.outcome;
        let detail = format!("spf={} for {}", outcome.name(), verdict.domain);
        self.dns.spf = Some(verdict);
        let fail = self.profile.checks.get(Check::Spf);
        let setting = self.shared.config.spf.setting(outcome, fail)?;
        if setting.action == Action::Ignore {
            return None;
        }
        let temporary = outcome == SpfOutcome::TempError;
        match self.fire_with(Check::Spf, setting, detail, false, temporary) {
            CheckEffect::Pass => None,
            CheckEffect::Drop => Some(self.drop_reply("SPF validation failed")),
            CheckEffect::Reject => {
                self.reply(match outcome {
                    SpfOutcome::TempError => Reply::new(
                        451,
                        "4.7.24 SPF validation error: temporary DNS failure, try again later",
                    ),
                    SpfOutcome::PermError => Reply::new(550, "5.7.24 SPF validation error"),
                    _ => Reply::new(550, "5.7.23 SPF validation failed"),
                });
                Some(self.count_error().unwrap_or(Flow::Continue))
            }
        }
    }

    /// The `Authentication-Results` header for the message about to be relayed and the filter
    /// for the client's own, when `[auth_results]` is on and there is something to report.
    pub(super) fn auth_results(&self) -> Option<(Vec<u8>, HeaderFilter)> {
        let config = &self.shared.config;
        if !config.auth_results.enabled
            || (self.shared.fcrdns.is_none() && self.shared.spf.is_none())
        {
            return None;
        }
        let id = config.auth_results.id(&config.smtp.hostname);
        let header = header(
            id,
            self.source(),
            self.dns.known_name(),
            self.dns.spf.as_ref(),
        );
        Some((header, HeaderFilter::new(id)))
    }
}

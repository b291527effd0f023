//! SPF (RFC 7208) for the MAIL FROM identity, or the HELO identity for the null sender, with
//! stalwart's `mail-auth` over the shared resolver (`[dns]`; hickory's cache, bounded there, is
//! the only cache: `mail-auth` is given none of its own).
//!
//! `mail-auth` takes the first valid `v=spf1` record when a domain publishes several; RFC 7208
//! section 4.5 says that is a `permerror`, so the domain's TXT records are read first (the answer
//! is then in the resolver's cache for `mail-auth`). Records reached through `include:` or
//! `redirect=` are `mail-auth`'s alone.
//!
//! # Layout
//! - `mod.rs`: [`Spf`], the evaluation, and [`SpfVerdict`], its outcome for one identity;
//! - `config.rs`: [`SpfConfig`], the `[spf]` section and the setting of each result.

mod config;

use std::{net::IpAddr, time::Duration};

use hickory_resolver::{
    TokioResolver,
    proto::rr::{Name, RData, RecordType},
};
use mail_auth::{MessageAuthenticator, SpfResult, spf::verify::SpfParameters};

pub use config::SpfConfig;

/// The SPF result (RFC 7208 section 2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfOutcome {
    /// The client is authorised.
    Pass,
    /// The client is not authorised (`-all`).
    Fail,
    /// Probably not authorised (`~all`).
    SoftFail,
    /// No statement (`?all`).
    Neutral,
    /// No SPF record.
    None,
    /// A transient DNS error, or the session's SPF time budget ran out.
    TempError,
    /// The record(s) could not be interpreted.
    PermError,
}

impl SpfOutcome {
    /// The result's name, as in `Authentication-Results` and the logs.
    pub fn name(self) -> &'static str {
        match self {
            SpfOutcome::Pass => "pass",
            SpfOutcome::Fail => "fail",
            SpfOutcome::SoftFail => "softfail",
            SpfOutcome::Neutral => "neutral",
            SpfOutcome::None => "none",
            SpfOutcome::TempError => "temperror",
            SpfOutcome::PermError => "permerror",
        }
    }

    fn from_library(result: SpfResult) -> Self {
        match result {
            SpfResult::Pass => SpfOutcome::Pass,
            SpfResult::Fail => SpfOutcome::Fail,
            SpfResult::SoftFail => SpfOutcome::SoftFail,
            SpfResult::Neutral => SpfOutcome::Neutral,
            SpfResult::TempError => SpfOutcome::TempError,
            SpfResult::PermError => SpfOutcome::PermError,
            SpfResult::None => SpfOutcome::None,
        }
    }
}

/// Which identity was evaluated (RFC 8601 `smtp.mailfrom` or `smtp.helo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpfIdentity {
    /// The MAIL FROM address.
    MailFrom(String),
    /// The HELO name (null sender).
    Helo(String),
}

/// One evaluation's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfVerdict {
    /// The result.
    pub outcome: SpfOutcome,
    /// The identity evaluated.
    pub identity: SpfIdentity,
    /// The domain whose record was read.
    pub domain: String,
}

/// The SPF evaluator: `mail-auth` over the shared resolver.
pub struct Spf {
    /// `mail-auth` over the shared resolver.
    authenticator: MessageAuthenticator,
    /// The shared resolver, for the record count.
    resolver: TokioResolver,
    /// Our own name (`%{r}` in explanations).
    hostname: String,
}

impl std::fmt::Debug for Spf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spf")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl Spf {
    /// Evaluations through `resolver`; `hostname` is the gateway's name. No I/O happens here.
    pub fn new(resolver: TokioResolver, hostname: &str) -> Self {
        Self {
            authenticator: MessageAuthenticator(resolver.clone()),
            resolver,
            hostname: hostname.to_string(),
        }
    }

    /// Evaluates `sender` (empty: the null sender, then `helo` is evaluated) for `client`
    /// within `budget`; what is not done by then is a `temperror`.
    pub async fn evaluate(
        &self,
        client: IpAddr,
        helo: &str,
        sender: &str,
        budget: Duration,
    ) -> SpfVerdict {
        let client = client.to_canonical();
        let (identity, domain) = if sender.is_empty() {
            (SpfIdentity::Helo(helo.to_string()), helo.to_string())
        } else {
            let domain = sender
                .rsplit_once('@')
                .map(|(_, d)| d.to_string())
                .unwrap_or_else(|| helo.to_string());
            (SpfIdentity::MailFrom(sender.to_string()), domain)
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        // RFC 7208 4.3: a malformed domain, or one of a single label (an address literal, a
        // bare host name), has no policy: "none" at once, without a lookup.
        if !domain.contains('.') || crate::policy::address::check_domain_syntax(&domain).is_err() {
            return SpfVerdict {
                outcome: SpfOutcome::None,
                identity,
                domain,
            };
        }
        let work = async {
            match self.count_records(&domain).await {
                Err(()) => return SpfOutcome::TempError,
                Ok(n) if n > 1 => return SpfOutcome::PermError,
                Ok(_) => {}
            }
            let params = if sender.is_empty() {
                SpfParameters::verify_ehlo(client, helo, &self.hostname)
            } else {
                SpfParameters::verify_mail_from(client, helo, &self.hostname, sender)
            };
            SpfOutcome::from_library(self.authenticator.verify_spf(params).await.result())
        };
        let outcome = tokio::time::timeout(budget, work)
            .await
            .unwrap_or(SpfOutcome::TempError);
        tracing::debug!(%client, domain, outcome = outcome.name(), "SPF");
        SpfVerdict {
            outcome,
            identity,
            domain,
        }
    }

    /// How many `v=spf1` records `domain` publishes (0 when it has none or does not exist);
    /// `Err` on a timeout or DNS failure. A name that is not a domain has none.
    async fn count_records(&self, domain: &str) -> Result<usize, ()> {
        let Ok(name) = Name::from_ascii(format!("{domain}.")) else {
            return Ok(0);
        };
        match self.resolver.lookup(name, RecordType::TXT).await {
            Ok(found) => Ok(found
                .answers()
                .iter()
                .filter(|r| match &r.data {
                    RData::TXT(txt) => {
                        let text: Vec<u8> = txt.txt_data.iter().flatten().copied().collect();
                        is_spf_record(&text)
                    }
                    _ => false,
                })
                .count()),
            Err(e) if e.is_no_records_found() => Ok(0),
            Err(_) => Err(()),
        }
    }
}

/// Whether `text` is an SPF record (RFC 7208 section 4.5: `v=spf1` alone or followed by a
/// space, case-insensitive).
fn is_spf_record(text: &[u8]) -> bool {
    const TAG: &[u8] = b"v=spf1";
    match text.get(..TAG.len()) {
        Some(head) if head.eq_ignore_ascii_case(TAG) => {
            matches!(text.get(TAG.len()), None | Some(b' '))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::policy::dns::DnsConfig;
    use smtp_gateway_test_kit::{DnsResponder, Records};

    #[test]
    fn record_tag() {
        assert!(is_spf_record(b"v=spf1 -all"));
        assert!(is_spf_record(b"V=SPF1"));
        assert!(!is_spf_record(b"v=spf10 -all"));
        assert!(!is_spf_record(b"v=spf"));
        assert!(!is_spf_record(b"google-site-verification=x"));
    }

    const CLIENT: &str = "198.51.100.7";

    fn server() -> DnsResponder {
        DnsResponder::start(
            Records::new()
                .txt("pass.test", &["v=spf1 ip4:198.51.100.0/24 -all"])
                .txt("fail.test", &["v=spf1 ip4:192.0.2.0/24 -all"])
                .txt("soft.test", &["v=spf1 ~all"])
                .txt("neutral.test", &["v=spf1 ?all"])
                .txt("two.test", &["v=spf1 -all"])
                .txt("two.test", &["v=spf1 +all"])
                .txt("other.test", &["not an spf record"])
                .txt("helo.test", &["v=spf1 a -all"])
                .a("helo.test", &["198.51.100.7".parse().expect("ip")])
                .silent("slow.test"),
        )
        .expect("responder")
    }

    fn spf(server: &DnsResponder) -> Spf {
        let dns = DnsConfig {
            timeout: Duration::from_millis(300),
            attempts: 1,
            ..DnsConfig::default()
        };
        Spf::new(
            dns.resolver(&[server.addr()], "SPF").expect("resolver"),
            "gw.test",
        )
    }

    async fn outcome(spf: &Spf, helo: &str, sender: &str) -> SpfOutcome {
        spf.evaluate(
            CLIENT.parse().expect("ip"),
            helo,
            sender,
            Duration::from_secs(2),
        )
        .await
        .outcome
    }

    #[tokio::test]
    async fn results_against_a_local_server() {
        let server = server();
        let spf = spf(&server);
        assert_eq!(
            outcome(&spf, "x.test", "a@pass.test").await,
            SpfOutcome::Pass
        );
        assert_eq!(
            outcome(&spf, "x.test", "a@FAIL.test").await,
            SpfOutcome::Fail
        );
        assert_eq!(
            outcome(&spf, "x.test", "a@soft.test").await,
            SpfOutcome::SoftFail
        );
        assert_eq!(
            outcome(&spf, "x.test", "a@neutral.test").await,
            SpfOutcome::Neutral
        );
        assert_eq!(
            outcome(&spf, "x.test", "a@two.test").await,
            SpfOutcome::PermError
        );
        assert_eq!(
            outcome(&spf, "x.test", "a@other.test").await,
            SpfOutcome::None
        );
        assert_eq!(
            outcome(&spf, "x.test", "a@nothing.test").await,
            SpfOutcome::None
        );
        let verdict = spf
            .evaluate(
                CLIENT.parse().expect("ip"),
                "helo.test",
                "",
                Duration::from_secs(2),
            )
            .await;
        assert_eq!(verdict.outcome, SpfOutcome::Pass);
        assert_eq!(verdict.identity, SpfIdentity::Helo("helo.test".into()));
        assert_eq!(verdict.domain, "helo.test");
    }

    #[tokio::test]
    async fn an_identity_that_is_no_multi_label_domain_has_no_policy() {
        // RFC 7208 4.3: a malformed or single-label domain is "none" at once. A client greeting
        // with an address literal and sending a bounce (MAIL FROM:<>) has no SPF identity: its
        // bounce must not be refused as a permerror.
        let server = server();
        let spf = spf(&server);
        for (helo, sender) in [
            ("[198.51.100.7]", ""),
            ("[IPv6:2001:db8::7]", ""),
            ("x.test", "a@[198.51.100.7]"),
            ("localhost", ""),
            ("x.test", "a@localhost"),
            ("x.test", "a@bad..test"),
        ] {
            assert_eq!(
                outcome(&spf, helo, sender).await,
                SpfOutcome::None,
                "{helo} {sender}"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_domain_is_a_temperror_within_the_budget() {
        let server = server();
        let spf = spf(&server);
        let started = Instant::now();
        let verdict = spf
            .evaluate(
                CLIENT.parse().expect("ip"),
                "x.test",
                "a@slow.test",
                Duration::from_millis(500),
            )
            .await;
        assert_eq!(verdict.outcome, SpfOutcome::TempError);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

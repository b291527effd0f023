//! Anti-relay for `RCPT TO`: which recipients a client may give, and which address tricks are
//! refused whoever the client is.
//!
//! [`check_recipient`] is a pure function of the `[relay]` section, the client's address, whether
//! it authenticated, and the path. Recipients in an accepted domain are accepted from anyone;
//! clients in `relay_networks` and authenticated clients may give any domain. The tricks that make
//! a downstream MTA route mail somewhere other than the domain we checked (source routes, percent
//! hacks, bang paths, quoted local parts hiding another address, address literals) are refused for
//! every client: the gateway checks one domain, so the address must have exactly one.
//!
//! The path grammar (brackets, local part, domain, literals) is `address.rs`'s; this file decides
//! what a well-formed recipient may be.

#![deny(clippy::string_slice)]

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::address::{
    PathError, check_domain_syntax, format_address_literal, parse_address_literal, split_address,
    strip_angle_brackets,
};
use crate::invalid::Invalid;

/// `[relay]`: which recipients the gateway accepts, and from whom it relays.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Domains we accept mail for, from any client. `example.org` matches that domain only;
    /// `*.example.org` (or `.example.org`) matches every subdomain, at any depth, but not
    /// `example.org` itself. Matching is case-insensitive (Unicode lowercase for UTF-8 domains;
    /// list both the UTF-8 and the `xn--` form of an internationalized domain) and a single
    /// trailing dot is ignored on both sides. Default: empty (only relay clients can give
    /// recipients).
    pub accepted_domains: Vec<String>,
    /// Client networks allowed to relay to any domain (address tricks are still refused). Default:
    /// empty; loopback is not trusted unless listed. IPv4-mapped IPv6 clients match IPv4 networks.
    pub relay_networks: Vec<IpNet>,
    /// Whether address-literal recipients such as `user@[198.51.100.1]` are allowed. Even then a
    /// literal is never an accepted domain: only relay clients may use one. Default: false.
    pub allow_address_literals: bool,
}

impl RelayConfig {
    /// Checks what serde cannot. Names the offending key (`relay.accepted_domains` or
    /// `relay.relay_networks`) and why it is wrong.
    pub fn validate(&self) -> Result<(), Invalid> {
        for pattern in &self.accepted_domains {
            if let Err(why) = parse_domain_pattern(pattern) {
                return Err(Invalid::new(
                    "relay.accepted_domains",
                    format!("{pattern:?} {why}"),
                ));
            }
        }
        let bad = |message: String| Err(Invalid::new("relay.relay_networks", message));
        for net in &self.relay_networks {
            if net.trunc() != *net {
                return bad(format!(
                    "{net} has host bits set (did you mean {}?)",
                    net.trunc()
                ));
            }
            if net.prefix_len() == 0 {
                return bad(format!(
                    "{net} would make the gateway an open relay for the whole Internet"
                ));
            }
            if let IpNet::V6(v6) = net
                && v6.prefix_len() >= 96
                && v6.network().to_ipv4_mapped().is_some()
            {
                return bad(format!(
                    "{net} is an IPv4-mapped prefix; write the IPv4 network instead \
                     (mapped clients are matched against IPv4 networks)"
                ));
            }
        }
        Ok(())
    }

    /// Whether `client` may relay (already canonical: IPv4-mapped addresses as IPv4).
    fn is_relay_client(&self, client: IpAddr) -> bool {
        self.relay_networks.iter().any(|net| net.contains(&client))
    }

    /// Whether the lowercase `domain` (no trailing dot) matches one of `accepted_domains`.
    /// Patterns that `validate` would refuse match nothing.
    fn accepts_domain(&self, domain: &str) -> bool {
        self.accepted_domains
            .iter()
            .any(|pattern| match parse_domain_pattern(pattern) {
                Ok(DomainPattern::Exact(name)) => name.to_lowercase() == domain,
                Ok(DomainPattern::Subdomains(parent)) => {
                    let parent = parent.to_lowercase();
                    domain
                        .strip_suffix(parent.as_str())
                        .and_then(|head| head.strip_suffix('.'))
                        .is_some_and(|head| !head.is_empty())
                }
                Err(_) => false,
            })
    }
}

/// The decision on one `RCPT TO` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayVerdict {
    /// The recipient may be given to the MTA.
    Accept {
        /// The address with its domain lowercased and a single trailing dot removed (the local
        /// part is kept as given; a literal is written in its canonical form).
        normalized: String,
    },
    /// The recipient must be refused (`550 5.7.1` followed by the reason's text).
    Reject {
        /// Why; its `Display` is the reply text.
        reason: RelayRefusal,
    },
}

/// Why a recipient was refused. `Display` gives the text for the `550 5.7.1` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayRefusal {
    /// A domain we do not accept mail for, from a client that may not relay.
    #[error("relay access denied: {domain} is not a domain we accept mail for")]
    RelayDenied {
        /// The recipient's domain, normalized (lowercase, no trailing dot) or a literal.
        domain: String,
    },
    /// A path that hides another route or is more than one address (source route, percent
    /// hack, bang path, quoted local part trick, more than one `@`); its text is the path's.
    #[error(transparent)]
    Path(PathError),
    /// `user@[198.51.100.1]` while `allow_address_literals` is false.
    #[error("address literals are not accepted")]
    AddressLiteral,
    /// `<>`: the null path is a valid sender, never a recipient.
    #[error("the null path <> is not a valid recipient")]
    NullRecipient,
    /// Anything else that is not an RFC 5321/6531 forward path; the detail says what. Kept apart
    /// from [`RelayRefusal::Path`]: the session answers a syntax error with 501, a refusal with
    /// 550.
    #[error("invalid address syntax: {0}")]
    InvalidSyntax(&'static str),
}

impl From<PathError> for RelayRefusal {
    fn from(e: PathError) -> Self {
        match e {
            PathError::InvalidSyntax(what) => Self::InvalidSyntax(what),
            other => Self::Path(other),
        }
    }
}

impl RelayRefusal {
    /// A stable snake_case name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RelayDenied { .. } => "relay_denied",
            Self::Path(e) => e.name(),
            Self::AddressLiteral => "address_literal",
            Self::NullRecipient => "null_recipient",
            Self::InvalidSyntax(_) => "invalid_syntax",
        }
    }
}

/// Decides whether `client` may give the recipient `rcpt`: the path as given inside `<...>`
/// (surrounding angle brackets are also accepted). `authenticated` is true once the client has
/// authenticated (SMTP AUTH). `<Postmaster>` without a domain is always accepted (RFC 5321
/// section 4.1.1.3 requires it).
pub fn check_recipient(
    cfg: &RelayConfig,
    client: IpAddr,
    authenticated: bool,
    rcpt: &str,
) -> RelayVerdict {
    match decide(cfg, client.to_canonical(), authenticated, rcpt) {
        Ok(normalized) => RelayVerdict::Accept { normalized },
        Err(reason) => RelayVerdict::Reject { reason },
    }
}

/// The body of [`check_recipient`], with `?` for the refusals.
fn decide(
    cfg: &RelayConfig,
    client: IpAddr,
    authenticated: bool,
    rcpt: &str,
) -> Result<String, RelayRefusal> {
    let path = strip_angle_brackets(rcpt)?;
    if path.is_empty() {
        return Err(RelayRefusal::NullRecipient);
    }
    if path.eq_ignore_ascii_case("postmaster") {
        return Ok("Postmaster".to_string());
    }
    let (local, domain) = split_address(path)?;
    let may_relay = authenticated || cfg.is_relay_client(client);
    if let Some(literal) = domain.strip_prefix('[') {
        if !cfg.allow_address_literals {
            return Err(RelayRefusal::AddressLiteral);
        }
        let literal = parse_address_literal(literal)
            .ok_or(RelayRefusal::InvalidSyntax("invalid address literal"))?;
        let literal = format_address_literal(literal);
        return if may_relay {
            Ok(format!("{local}@{literal}"))
        } else {
            Err(RelayRefusal::RelayDenied { domain: literal })
        };
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    check_domain_syntax(domain).map_err(RelayRefusal::InvalidSyntax)?;
    let domain = domain.to_lowercase();
    if may_relay || cfg.accepts_domain(&domain) {
        Ok(format!("{local}@{domain}"))
    } else {
        Err(RelayRefusal::RelayDenied { domain })
    }
}

/// One entry of `accepted_domains`, trailing dot removed.
enum DomainPattern<'a> {
    /// `example.org`: that domain only.
    Exact(&'a str),
    /// `*.example.org` or `.example.org`: every subdomain of the parent given.
    Subdomains(&'a str),
}

/// Parses and checks one `accepted_domains` entry.
fn parse_domain_pattern(pattern: &str) -> Result<DomainPattern<'_>, &'static str> {
    let name = pattern.strip_suffix('.').unwrap_or(pattern);
    let (parsed, parent) = match name.strip_prefix("*.").or_else(|| name.strip_prefix('.')) {
        Some(parent) => (DomainPattern::Subdomains(parent), parent),
        None => (DomainPattern::Exact(name), name),
    };
    if parent.contains('*') {
        return Err("has a wildcard that is not a leading `*.` (write `*.example.org`)");
    }
    check_domain_syntax(parent).map_err(|_| {
        "is not a valid domain pattern (`example.org`, `*.example.org` or `.example.org`; \
         labels of letters, digits and inner hyphens, at most 63 characters, names of at most \
         253)"
    })?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTSIDER: &str = "203.0.113.9";
    const RELAY_CLIENT: &str = "192.0.2.10";

    fn config() -> RelayConfig {
        RelayConfig {
            accepted_domains: vec![
                "example.org".into(),
                "*.example.net".into(),
                ".example.com".into(),
                "Bücher.Example.".into(),
            ],
            relay_networks: vec![
                "192.0.2.0/24".parse().expect("network"),
                "2001:db8:1::/48".parse().expect("network"),
            ],
            allow_address_literals: false,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn accept(normalized: &str) -> RelayVerdict {
        RelayVerdict::Accept {
            normalized: normalized.to_string(),
        }
    }

    fn reject(reason: impl Into<RelayRefusal>) -> RelayVerdict {
        RelayVerdict::Reject {
            reason: reason.into(),
        }
    }

    fn denied(domain: &str) -> RelayVerdict {
        reject(RelayRefusal::RelayDenied {
            domain: domain.to_string(),
        })
    }

    fn invalid() -> RelayVerdict {
        reject(RelayRefusal::InvalidSyntax(""))
    }

    /// Compares verdicts, ignoring the detail text of `InvalidSyntax`.
    fn run(cfg: &RelayConfig, cases: &[(&str, bool, &str, RelayVerdict)]) {
        for (client, authenticated, rcpt, expected) in cases {
            let got = check_recipient(cfg, ip(client), *authenticated, rcpt);
            let same = match (&got, expected) {
                (
                    RelayVerdict::Reject {
                        reason: RelayRefusal::InvalidSyntax(_),
                    },
                    RelayVerdict::Reject {
                        reason: RelayRefusal::InvalidSyntax(_),
                    },
                ) => true,
                _ => got == *expected,
            };
            assert!(
                same,
                "client {client} auth {authenticated} rcpt {rcpt:?}: got {got:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn relay_battery_from_an_outside_client() {
        use PathError::{BangPath, MultipleAt, PercentHack, QuotedLocalPart, SourceRoute};
        use RelayRefusal::{AddressLiteral, NullRecipient};
        let o = OUTSIDER;
        run(
            &config(),
            &[
                // Accepted domains, with case and trailing-dot variants.
                (o, false, "user@example.org", accept("user@example.org")),
                (o, false, "<user@example.org>", accept("user@example.org")),
                (o, false, "user@EXAMPLE.ORG.", accept("user@example.org")),
                (
                    o,
                    false,
                    "User.Name+tag@Example.Org",
                    accept("User.Name+tag@example.org"),
                ),
                (
                    o,
                    false,
                    "user@sub.example.net",
                    accept("user@sub.example.net"),
                ),
                (
                    o,
                    false,
                    "user@a.b.example.net",
                    accept("user@a.b.example.net"),
                ),
                (
                    o,
                    false,
                    "user@SUB.Example.NET.",
                    accept("user@sub.example.net"),
                ),
                (
                    o,
                    false,
                    "user@mx.example.com",
                    accept("user@mx.example.com"),
                ),
                (
                    o,
                    false,
                    "\"john doe\"@example.org",
                    accept("\"john doe\"@example.org"),
                ),
                (
                    o,
                    false,
                    "\"a\\\\b\"@example.org",
                    accept("\"a\\\\b\"@example.org"),
                ),
                (o, false, "Postmaster", accept("Postmaster")),
                (o, false, "<postmaster>", accept("Postmaster")),
                // SMTPUTF8: UTF-8 local parts, Unicode case-insensitive domains.
                (o, false, "jürgen@example.org", accept("jürgen@example.org")),
                (o, false, "用户@example.org", accept("用户@example.org")),
                (
                    o,
                    false,
                    "kunde@BÜCHER.EXAMPLE.",
                    accept("kunde@bücher.example"),
                ),
                // Domains we do not accept.
                (o, false, "user@example.com", denied("example.com")),
                (o, false, "user@example.net", denied("example.net")),
                (o, false, "user@badexample.net", denied("badexample.net")),
                (o, false, "user@notexample.org", denied("notexample.org")),
                (o, false, "user@sub.example.org", denied("sub.example.org")),
                (
                    o,
                    false,
                    "user@example.org.evil.com",
                    denied("example.org.evil.com"),
                ),
                (o, false, "user@Evil.COM.", denied("evil.com")),
                (
                    o,
                    false,
                    "user@xn--bcher-kva.example",
                    denied("xn--bcher-kva.example"),
                ),
                // Address tricks.
                (o, false, "user%evil.com@example.org", reject(PercentHack)),
                (o, false, "user%evil.com", reject(PercentHack)),
                (
                    o,
                    false,
                    "@relay.example.org:user@evil.com",
                    reject(SourceRoute),
                ),
                (
                    o,
                    false,
                    "<@a.example.org,@b.example.org:user@example.org>",
                    reject(SourceRoute),
                ),
                (o, false, "evil.com!user@example.org", reject(BangPath)),
                (
                    o,
                    false,
                    "\"user@evil.com\"@example.org",
                    reject(QuotedLocalPart),
                ),
                (
                    o,
                    false,
                    "\"user%evil.com\"@example.org",
                    reject(QuotedLocalPart),
                ),
                (
                    o,
                    false,
                    "\"evil.com!user\"@example.org",
                    reject(QuotedLocalPart),
                ),
                (
                    o,
                    false,
                    "\"user\\\"x\"@example.org",
                    reject(QuotedLocalPart),
                ),
                (
                    o,
                    false,
                    "\"user\\@evil.com\"@example.org",
                    reject(QuotedLocalPart),
                ),
                (o, false, "user@evil.com@example.org", reject(MultipleAt)),
                (
                    o,
                    false,
                    "\"user\"@evil.com@example.org",
                    reject(MultipleAt),
                ),
                (o, false, "user@[198.51.100.7]", reject(AddressLiteral)),
                (o, false, "user@[IPv6:2001:db8::7]", reject(AddressLiteral)),
                // Not addresses at all.
                (o, false, "", reject(NullRecipient)),
                (o, false, "<>", reject(NullRecipient)),
                (o, false, "user", invalid()),
                (o, false, "user@", invalid()),
                (o, false, "@example.org", invalid()),
                (o, false, "\"\"@example.org", invalid()),
                (o, false, ".user@example.org", invalid()),
                (o, false, "user.@example.org", invalid()),
                (o, false, "us..er@example.org", invalid()),
                (o, false, "user name@example.org", invalid()),
                (o, false, "user:x@example.org", invalid()),
                (o, false, "\"user\"x@example.org", invalid()),
                (o, false, "\"user@example.org", invalid()),
                (o, false, "user@exa mple.org", invalid()),
                (o, false, "user@example.org..", invalid()),
                (o, false, "user@.example.org", invalid()),
                (o, false, "user@-example.org", invalid()),
                (o, false, "user@example_org.org", invalid()),
                (o, false, "user@example.org:25", invalid()),
                (o, false, "user@sub.example.net\u{3002}evil.com", invalid()),
                (o, false, "<user@example.org", invalid()),
                (o, false, "user@example.org>", invalid()),
                (o, false, "<<user@example.org>>", invalid()),
                (
                    o,
                    false,
                    "user@example.org\r\nRCPT TO:<x@evil.com>",
                    invalid(),
                ),
                (o, false, "us\0er@example.org", invalid()),
            ],
        );
    }

    #[test]
    fn relay_clients_reach_any_domain_but_not_with_tricks() {
        use PathError::{BangPath, MultipleAt, PercentHack, QuotedLocalPart, SourceRoute};
        use RelayRefusal::{AddressLiteral, NullRecipient};
        let r = RELAY_CLIENT;
        let mapped = "::ffff:192.0.2.10";
        let v6 = "2001:db8:1::25";
        let o = OUTSIDER;
        run(
            &config(),
            &[
                (r, false, "user@example.com", accept("user@example.com")),
                (r, false, "user@Gmail.COM.", accept("user@gmail.com")),
                (r, false, "user@example.org", accept("user@example.org")),
                (
                    mapped,
                    false,
                    "user@example.com",
                    accept("user@example.com"),
                ),
                (v6, false, "user@example.com", accept("user@example.com")),
                (o, true, "user@example.com", accept("user@example.com")),
                (
                    r,
                    false,
                    "@relay.example.org:user@evil.com",
                    reject(SourceRoute),
                ),
                (r, false, "user%evil.com@example.com", reject(PercentHack)),
                (r, false, "evil.com!user@example.com", reject(BangPath)),
                (
                    r,
                    false,
                    "\"user@evil.com\"@example.com",
                    reject(QuotedLocalPart),
                ),
                (r, false, "user@[198.51.100.7]", reject(AddressLiteral)),
                (r, false, "user@evil.com@example.com", reject(MultipleAt)),
                (r, false, "<>", reject(NullRecipient)),
                (r, false, "user@exa mple.com", invalid()),
                (
                    o,
                    true,
                    "@relay.example.org:user@evil.com",
                    reject(SourceRoute),
                ),
                (o, true, "evil.com!user@example.com", reject(BangPath)),
                // Loopback is not trusted unless listed.
                (
                    "127.0.0.1",
                    false,
                    "user@example.com",
                    denied("example.com"),
                ),
                ("::1", false, "user@example.com", denied("example.com")),
                (
                    "2001:db8:2::25",
                    false,
                    "user@example.com",
                    denied("example.com"),
                ),
            ],
        );
    }

    #[test]
    fn address_literals_when_allowed_need_a_relay_client() {
        let cfg = RelayConfig {
            allow_address_literals: true,
            ..config()
        };
        let (r, o) = (RELAY_CLIENT, OUTSIDER);
        run(
            &cfg,
            &[
                (
                    r,
                    false,
                    "user@[198.51.100.7]",
                    accept("user@[198.51.100.7]"),
                ),
                (
                    r,
                    false,
                    "user@[IPv6:2001:DB8:0::7]",
                    accept("user@[IPv6:2001:db8::7]"),
                ),
                (
                    r,
                    false,
                    "user@[ipv6:2001:db8::7]",
                    accept("user@[IPv6:2001:db8::7]"),
                ),
                (
                    o,
                    true,
                    "user@[198.51.100.7]",
                    accept("user@[198.51.100.7]"),
                ),
                (o, false, "user@[198.51.100.7]", denied("[198.51.100.7]")),
                (
                    o,
                    false,
                    "user@[IPv6:2001:db8::7]",
                    denied("[IPv6:2001:db8::7]"),
                ),
                (r, false, "user@[198.51.100.256]", invalid()),
                (r, false, "user@[2001:db8::7]", invalid()),
                (r, false, "user@[IPv6:198.51.100.7]", invalid()),
                (r, false, "user@[x400:c=fr]", invalid()),
                (r, false, "user@[198.51.100.7", invalid()),
                (r, false, "user@[198.51.100.7].", invalid()),
                (
                    r,
                    false,
                    "\"a@b\"@[198.51.100.7]",
                    reject(PathError::QuotedLocalPart),
                ),
            ],
        );
    }

    #[test]
    fn an_empty_config_relays_for_nobody() {
        let cfg = RelayConfig::default();
        assert!(cfg.validate().is_ok());
        run(
            &cfg,
            &[
                (
                    "127.0.0.1",
                    false,
                    "user@example.org",
                    denied("example.org"),
                ),
                (
                    RELAY_CLIENT,
                    false,
                    "user@example.org",
                    denied("example.org"),
                ),
                (
                    OUTSIDER,
                    true,
                    "user@example.org",
                    accept("user@example.org"),
                ),
                (OUTSIDER, false, "postmaster", accept("Postmaster")),
            ],
        );
    }

    #[test]
    fn unvalidated_bad_patterns_match_nothing() {
        let cfg = RelayConfig {
            accepted_domains: vec!["*".into(), "*.*.org".into(), "exa mple.org".into()],
            ..RelayConfig::default()
        };
        assert!(cfg.validate().is_err());
        for rcpt in [
            "user@example.org",
            "user@a.example.org",
            "user@exa mple.org",
        ] {
            assert!(
                matches!(
                    check_recipient(&cfg, ip(OUTSIDER), false, rcpt),
                    RelayVerdict::Reject { .. }
                ),
                "{rcpt}"
            );
        }
    }

    #[test]
    fn refusal_texts_are_clear() {
        let cases = [
            (
                RelayRefusal::RelayDenied {
                    domain: "example.com".into(),
                },
                "relay access denied: example.com is not a domain we accept mail for",
            ),
            (
                RelayRefusal::Path(PathError::SourceRoute),
                "source routes are not accepted",
            ),
            (
                RelayRefusal::Path(PathError::PercentHack),
                "percent-hack addresses are not accepted",
            ),
            (
                RelayRefusal::Path(PathError::BangPath),
                "bang paths are not accepted",
            ),
            (
                RelayRefusal::Path(PathError::QuotedLocalPart),
                "quoted local part tricks are not accepted",
            ),
            (
                RelayRefusal::AddressLiteral,
                "address literals are not accepted",
            ),
            (
                RelayRefusal::InvalidSyntax("missing @domain"),
                "invalid address syntax: missing @domain",
            ),
        ];
        for (refusal, text) in cases {
            assert_eq!(refusal.to_string(), text);
        }
        let RelayVerdict::Reject { reason } = check_recipient(&config(), ip(OUTSIDER), false, "x")
        else {
            panic!("`x` must be refused");
        };
        assert_eq!(
            reason.to_string(),
            "invalid address syntax: missing @domain"
        );
        assert_eq!(reason.name(), "invalid_syntax");
    }

    #[test]
    fn validate_accepts_well_formed_patterns_and_networks() {
        let long_label = "a".repeat(63);
        let long_name = format!("{0}.{0}.{0}.{1}.org", "a".repeat(63), "b".repeat(57));
        assert_eq!(long_name.len(), 253);
        let cfg = RelayConfig {
            accepted_domains: vec![
                "example.org".into(),
                "Example.ORG.".into(),
                "*.example.net".into(),
                ".example.com".into(),
                "bücher.example".into(),
                "xn--bcher-kva.example".into(),
                "localhost".into(),
                format!("{long_label}.org"),
                long_name,
            ],
            relay_networks: vec![
                "192.0.2.0/24".parse().expect("network"),
                "198.51.100.7/32".parse().expect("network"),
                "2001:db8::/32".parse().expect("network"),
                "::1/128".parse().expect("network"),
            ],
            allow_address_literals: true,
        };
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_key_and_the_bad_value() {
        let long_label = format!("{}.org", "a".repeat(64));
        let long_name = format!("{0}.{0}.{0}.{1}.org", "a".repeat(63), "b".repeat(58));
        let bad_patterns = [
            "",
            ".",
            "*",
            "*.",
            "**.example.org",
            "*example.org",
            "a.*.example.org",
            "*.*.example.org",
            "example.*",
            "exa mple.org",
            "example..org",
            "example.org..",
            "-example.org",
            "example-.org",
            "ex_ample.org",
            "user@example.org",
            "[198.51.100.1]",
            long_label.as_str(),
            long_name.as_str(),
        ];
        for pattern in bad_patterns {
            let cfg = RelayConfig {
                accepted_domains: vec!["example.org".into(), pattern.into()],
                ..RelayConfig::default()
            };
            let Invalid {
                key,
                reason: message,
                ..
            } = cfg.validate().expect_err(pattern);
            assert_eq!(key, "relay.accepted_domains", "{pattern}");
            assert!(message.contains(&format!("{pattern:?}")), "{message}");
        }
        let bad_networks = [
            ("192.0.2.1/24", "192.0.2.0/24"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("0.0.0.0/0", "open relay"),
            ("::/0", "open relay"),
            ("::ffff:192.0.2.0/120", "IPv4-mapped"),
        ];
        for (net, hint) in bad_networks {
            let cfg = RelayConfig {
                relay_networks: vec![net.parse().expect("network")],
                ..RelayConfig::default()
            };
            let Invalid {
                key,
                reason: message,
                ..
            } = cfg.validate().expect_err(net);
            assert_eq!(key, "relay.relay_networks");
            assert!(message.contains(hint), "{message}");
        }
    }

    #[test]
    fn section_parses_with_documented_defaults_and_refuses_unknown_keys() {
        let cfg: RelayConfig = toml::from_str("").expect("empty section");
        assert_eq!(cfg, RelayConfig::default());
        assert!(cfg.accepted_domains.is_empty());
        assert!(cfg.relay_networks.is_empty());
        assert!(!cfg.allow_address_literals);
        let cfg: RelayConfig = toml::from_str(
            "accepted_domains = [\"example.org\", \"*.example.net\"]\n\
             relay_networks = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n\
             allow_address_literals = true\n",
        )
        .expect("full section");
        assert_eq!(cfg.accepted_domains.len(), 2);
        assert_eq!(cfg.relay_networks.len(), 2);
        assert!(cfg.allow_address_literals);
        let err = toml::from_str::<RelayConfig>("accepted_domain = []\n").expect_err("typo");
        assert!(err.to_string().contains("accepted_domain"), "{err}");
    }
}

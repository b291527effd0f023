//! HELO/EHLO heuristics: what the name a client gives says about it.
//!
//! [`inspect`] is a pure function of the `[helo]` section, the argument, the client's address and
//! the gateway's own addresses. It returns findings, not a verdict: how much each one weighs is
//! decided by whoever scores the session, keyed by [`HeloFinding::name`].
//!
//! A literal (`[198.51.100.7]`, bracketed or not) is only checked against the client's and the
//! gateway's addresses; the name heuristics (`own_name`, `not_fqdn`, `dynamic`, `embedded_ip`)
//! apply to syntactically valid names. An invalid argument gives `invalid` alone.

// The argument is client text: never cut at a byte index.
#![deny(clippy::string_slice)]

use std::{fmt, net::IpAddr};

use serde::Deserialize;

use super::address::{check_domain_syntax, check_host_name_syntax, parse_address_literal};
use crate::invalid::Invalid;

/// Default `dynamic_patterns`: names ISPs give to dynamic, residential and dial-up addresses.
/// Keywords that also occur inside ordinary words (`pool` in `liverpool`, `client`) are anchored
/// on a separator.
pub const DEFAULT_DYNAMIC_PATTERNS: &[&str] = &[
    "*dsl*",
    "*dynamic*",
    "*dyn-*",
    "*.dyn.*",
    "*pool-*",
    "*.pool.*",
    "*dhcp*",
    "*.cable.*",
    "*ppp*",
    "*client-*",
    "*.client.*",
    "*dialup*",
    "*dial-up*",
    "*residential*",
];

/// `[helo]`: what the HELO/EHLO heuristics compare the client's name with.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HeloConfig {
    /// Glob patterns identifying dynamic or residential host names, matched case-insensitively
    /// against the whole name (trailing dot removed): `*` matches any run of characters, dots
    /// included, `?` exactly one; anything else matches itself (write `*word*` for a substring).
    /// Default: [`DEFAULT_DYNAMIC_PATTERNS`]. Names embedding the client's IPv4 address are
    /// found by the separate `embedded_ip` check, not by a pattern.
    pub dynamic_patterns: Vec<String>,
    /// The gateway's own host names: a client claiming one of them (case-insensitive, trailing
    /// dot ignored) is lying. Default: empty (the proxy adds its configured host name).
    pub own_names: Vec<String>,
}

impl Default for HeloConfig {
    fn default() -> Self {
        Self {
            dynamic_patterns: DEFAULT_DYNAMIC_PATTERNS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            own_names: Vec::new(),
        }
    }
}

impl HeloConfig {
    /// Checks what serde cannot. Names the offending key (`helo.dynamic_patterns` or
    /// `helo.own_names`) and why it is wrong.
    pub fn validate(&self) -> Result<(), Invalid> {
        for pattern in &self.dynamic_patterns {
            let bad = |why: &str| {
                Err(Invalid::new(
                    "helo.dynamic_patterns",
                    format!("{pattern:?} {why}"),
                ))
            };
            if pattern.is_empty() {
                return bad("is empty");
            }
            if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad("contains whitespace or control characters (names never do)");
            }
            if pattern.chars().all(|c| c == '*' || c == '?') {
                return bad("has no literal character and would match almost every name");
            }
        }
        for name in &self.own_names {
            let bad = |why: &str| Err(Invalid::new("helo.own_names", format!("{name:?} {why}")));
            let bare = name.strip_suffix('.').unwrap_or(name);
            if bare.parse::<IpAddr>().is_ok() {
                return bad(
                    "is an address; own_names holds host names (address literals are compared \
                     with the gateway's own addresses)",
                );
            }
            if let Err(why) = check_domain_syntax(bare) {
                return bad(&format!("is not a valid host name: {why}"));
            }
        }
        Ok(())
    }
}

/// One thing a HELO/EHLO argument reveals. Ordered as [`inspect`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HeloFinding {
    /// No argument at all.
    Missing,
    /// Neither a valid domain name nor a valid address literal.
    Invalid,
    /// A bare IP address (`198.51.100.7`) instead of a literal (`[198.51.100.7]`).
    UnbracketedLiteral,
    /// An address (bracketed or not) that is not the client's.
    LiteralMismatch,
    /// Claims to be the gateway: one of `own_names`, or a literal of one of its addresses.
    OwnName,
    /// A single label such as `localhost` or `DESKTOP-4F2K9Q`.
    NotFqdn,
    /// Matches one of `dynamic_patterns`.
    Dynamic,
    /// The client's IPv4 octets appear in the name, forward or reversed, joined by `-` or `.`.
    EmbeddedIp,
}

impl HeloFinding {
    /// Every finding, in report order (for validating configuration keys and registering
    /// metrics).
    pub const ALL: [HeloFinding; 8] = [
        Self::Missing,
        Self::Invalid,
        Self::UnbracketedLiteral,
        Self::LiteralMismatch,
        Self::OwnName,
        Self::NotFqdn,
        Self::Dynamic,
        Self::EmbeddedIp,
    ];

    /// A stable snake_case name for configuration keys and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::UnbracketedLiteral => "unbracketed_literal",
            Self::LiteralMismatch => "literal_mismatch",
            Self::OwnName => "own_name",
            Self::NotFqdn => "not_fqdn",
            Self::Dynamic => "dynamic",
            Self::EmbeddedIp => "embedded_ip",
        }
    }
}

impl fmt::Display for HeloFinding {
    /// A short human description, for logs and reply texts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "no HELO/EHLO argument",
            Self::Invalid => "not a valid domain name or address literal",
            Self::UnbracketedLiteral => "an IP address without the brackets of an address literal",
            Self::LiteralMismatch => "an address that is not the client's",
            Self::OwnName => "claims to be this gateway",
            Self::NotFqdn => "not a fully qualified domain name",
            Self::Dynamic => "looks like a dynamic or residential host name",
            Self::EmbeddedIp => "embeds the client's IP address",
        })
    }
}

/// Inspects the HELO/EHLO argument `helo` of `client`; `own_addrs` are the gateway's addresses.
/// IPv4-mapped IPv6 addresses are compared as IPv4. A well-behaved client gets no finding.
pub fn inspect(
    cfg: &HeloConfig,
    helo: &str,
    client: IpAddr,
    own_addrs: &[IpAddr],
) -> Vec<HeloFinding> {
    use HeloFinding::*;
    let client = client.to_canonical();
    let helo = helo.trim_matches([' ', '\t']);
    if helo.is_empty() {
        return vec![Missing];
    }
    let mut findings = Vec::new();
    let name = helo.strip_suffix('.').unwrap_or(helo);
    let literal = if let Some(after_bracket) = helo.strip_prefix('[') {
        match parse_address_literal(after_bracket) {
            Some(ip) => Some(ip),
            None => return vec![Invalid],
        }
    } else if let Ok(ip) = name.parse::<IpAddr>() {
        findings.push(UnbracketedLiteral);
        Some(ip)
    } else {
        None
    };
    if let Some(ip) = literal {
        let ip = ip.to_canonical();
        if ip != client {
            findings.push(LiteralMismatch);
            if own_addrs.iter().any(|own| own.to_canonical() == ip) {
                findings.push(OwnName);
            }
        }
        return findings;
    }
    if check_host_name_syntax(name).is_err() {
        return vec![Invalid];
    }
    let name = name.to_lowercase();
    if cfg
        .own_names
        .iter()
        .any(|own| own.strip_suffix('.').unwrap_or(own).to_lowercase() == name)
    {
        findings.push(OwnName);
    }
    if !name.contains('.') {
        findings.push(NotFqdn);
    }
    if cfg
        .dynamic_patterns
        .iter()
        .any(|pattern| glob_matches(pattern, &name))
    {
        findings.push(Dynamic);
    }
    if embedded_ip(&name, client) {
        findings.push(EmbeddedIp);
    }
    findings
}

/// Whether `name` embeds the IPv4 address of `client` (IPv4-mapped IPv6 included): four runs of
/// at most three digits, each pair joined by a single `-` or `.`, whose values are the client's
/// octets in forward or reverse order (`198-51-100-7`, `7.100.51.198`, zero padding allowed).
/// A run is delimited by non-digits, so `1198-51-100-7` does not embed `198.51.100.7`.
pub fn embedded_ip(name: &str, client: IpAddr) -> bool {
    let IpAddr::V4(v4) = client.to_canonical() else {
        return false;
    };
    let forward = v4.octets();
    let mut reverse = forward;
    reverse.reverse();
    // Maximal digit runs as (start, end, value if it is an octet).
    let bytes = name.as_bytes();
    let mut runs: Vec<(usize, usize, Option<u8>)> = Vec::new();
    let mut start = None;
    for (index, byte) in bytes.iter().chain(std::iter::once(&b' ')).enumerate() {
        match (byte.is_ascii_digit(), start) {
            (true, None) => start = Some(index),
            (false, Some(begin)) => {
                let octet = name
                    .get(begin..index)
                    .filter(|digits| digits.len() <= 3)
                    .and_then(|digits| digits.parse().ok());
                runs.push((begin, index, octet));
                start = None;
            }
            _ => {}
        }
    }
    runs.windows(4).any(|window| {
        let joined = window.windows(2).all(|pair| {
            pair[1].0 == pair[0].1 + 1 && matches!(bytes.get(pair[0].1), Some(b'-' | b'.'))
        });
        let values: Option<Vec<u8>> = window.iter().map(|run| run.2).collect();
        joined
            && values.is_some_and(|values| values[..] == forward[..] || values[..] == reverse[..])
    })
}

/// Glob match of the whole `text` (already lowercase) against `pattern` (lowercased here):
/// `*` matches any run of characters, `?` exactly one.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.to_lowercase().chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // After a `*`: where the pattern resumes, and the text position the star has reached.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                p += 1;
                backtrack = Some((p, t));
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((resume, reached)) => {
                    p = resume;
                    t = reached + 1;
                    backtrack = Some((resume, reached + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use HeloFinding::*;

    const CLIENT4: &str = "198.51.100.7";
    const CLIENT6: &str = "2001:db8::7";
    const MAPPED: &str = "::ffff:198.51.100.7";
    const GATEWAY4: &str = "198.51.100.1";
    const GATEWAY6: &str = "2001:db8::1";

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn config() -> HeloConfig {
        HeloConfig {
            own_names: vec!["gw.example.org".into(), "MX.Example.NET.".into()],
            ..HeloConfig::default()
        }
    }

    fn run(cases: &[(&str, &str, &[HeloFinding])]) {
        let cfg = config();
        let own = [ip(GATEWAY4), ip(GATEWAY6)];
        for (helo, client, expected) in cases {
            let got = inspect(&cfg, helo, ip(client), &own);
            assert_eq!(&got, expected, "HELO {helo:?} from {client}");
        }
    }

    #[test]
    fn well_behaved_clients_have_no_findings() {
        run(&[
            ("mail.example.org", CLIENT4, &[]),
            ("MAIL.Example.ORG", CLIENT4, &[]),
            ("mx1.example.org.", CLIENT4, &[]),
            ("[198.51.100.7]", CLIENT4, &[]),
            ("[198.51.100.7]", MAPPED, &[]),
            ("[IPv6:::ffff:198.51.100.7]", CLIENT4, &[]),
            ("[IPv6:2001:db8::7]", CLIENT6, &[]),
            ("[ipv6:2001:DB8:0:0::7]", CLIENT6, &[]),
            ("mail.example.org", CLIENT6, &[]),
            (" mail.example.org ", CLIENT4, &[]),
            ("smtp.bücher.example", CLIENT4, &[]),
            // Underscores: Postfix's valid_hostname() takes them ("grr.."), and so do Windows
            // hosts' names; refusing them bounced their mail.
            ("mail_server.example.org", CLIENT4, &[]),
            ("EXCH_01.corp.example", CLIENT4, &[]),
            // The gateway talking to itself through its own address.
            ("[198.51.100.1]", GATEWAY4, &[]),
        ]);
    }

    #[test]
    fn each_finding_fires_and_a_well_behaved_neighbour_passes() {
        run(&[
            // missing
            ("", CLIENT4, &[Missing]),
            (" \t", CLIENT4, &[Missing]),
            ("a.example.org", CLIENT4, &[]),
            // invalid
            ("mail_server.example.org..", CLIENT4, &[Invalid]),
            ("_.example.org:25", CLIENT4, &[Invalid]),
            // Bytes that are not UTF-8, as the parser hands them on (replacement characters):
            // never a name, and the backend would be told another one.
            ("\u{FFFD}\u{FFFD}.example.org", CLIENT4, &[Invalid]),
            ("mail server.example.org", CLIENT4, &[Invalid]),
            ("mail..example.org", CLIENT4, &[Invalid]),
            ("mail.example.org..", CLIENT4, &[Invalid]),
            ("-mail.example.org", CLIENT4, &[Invalid]),
            ("mail.example.org:25", CLIENT4, &[Invalid]),
            ("[198.51.100.256]", CLIENT4, &[Invalid]),
            ("[198.51.100.7", CLIENT4, &[Invalid]),
            ("[2001:db8::7]", CLIENT6, &[Invalid]),
            ("[IPv6:198.51.100.7]", CLIENT4, &[Invalid]),
            ("[mail.example.org]", CLIENT4, &[Invalid]),
            ("mail-server.example.org", CLIENT4, &[]),
            // unbracketed_literal
            ("198.51.100.7", CLIENT4, &[UnbracketedLiteral]),
            ("198.51.100.7.", CLIENT4, &[UnbracketedLiteral]),
            ("2001:db8::7", CLIENT6, &[UnbracketedLiteral]),
            (
                "198.51.100.9",
                CLIENT4,
                &[UnbracketedLiteral, LiteralMismatch],
            ),
            ("[198.51.100.7]", CLIENT4, &[]),
            // literal_mismatch
            ("[198.51.100.9]", CLIENT4, &[LiteralMismatch]),
            ("[IPv6:2001:db8::8]", CLIENT6, &[LiteralMismatch]),
            ("[198.51.100.7]", CLIENT6, &[LiteralMismatch]),
            ("[IPv6:2001:db8::7]", CLIENT6, &[]),
            // own_name
            ("gw.example.org", CLIENT4, &[OwnName]),
            ("GW.Example.Org.", CLIENT4, &[OwnName]),
            ("mx.example.net", CLIENT4, &[OwnName]),
            ("[198.51.100.1]", CLIENT4, &[LiteralMismatch, OwnName]),
            ("[IPv6:2001:db8::1]", CLIENT6, &[LiteralMismatch, OwnName]),
            (
                "198.51.100.1",
                CLIENT4,
                &[UnbracketedLiteral, LiteralMismatch, OwnName],
            ),
            ("gw2.example.org", CLIENT4, &[]),
            // not_fqdn
            ("localhost", CLIENT4, &[NotFqdn]),
            ("DESKTOP-4F2K9Q", CLIENT4, &[NotFqdn]),
            ("foo.", CLIENT4, &[NotFqdn]),
            ("foo.example", CLIENT4, &[]),
            // dynamic
            ("adsl-line.example.net", CLIENT4, &[Dynamic]),
            ("host.dynamic.example.com", CLIENT4, &[Dynamic]),
            ("dyn-42.example.com", CLIENT4, &[Dynamic]),
            ("pool-71-1-2-3.bltmmd.fios.verizon.net", CLIENT4, &[Dynamic]),
            ("cpe-1.cable.example.com", CLIENT4, &[Dynamic]),
            ("DHCP-12.Example.COM", CLIENT4, &[Dynamic]),
            ("ppp-12.example.com", CLIENT4, &[Dynamic]),
            ("client-12.isp.example", CLIENT4, &[Dynamic]),
            ("mail.liverpool.ac.uk", CLIENT4, &[]),
            ("mx.clientele.example", CLIENT4, &[]),
            ("mail.cable.example.com", CLIENT4, &[Dynamic]),
            ("mail.cablecompany.example", CLIENT4, &[]),
            // embedded_ip
            ("198-51-100-7.example.net", CLIENT4, &[EmbeddedIp]),
            ("7.100.51.198.example.net", CLIENT4, &[EmbeddedIp]),
            ("host-7-100-51-198.example.net", CLIENT4, &[EmbeddedIp]),
            ("ip198-051-100-007.example.net", CLIENT4, &[EmbeddedIp]),
            ("host-198-51-100-7.example.net", MAPPED, &[EmbeddedIp]),
            ("host-198-51-100-70.example.net", CLIENT4, &[]),
            ("host-198-51-100-7.example.net", "198.51.100.8", &[]),
            // several at once
            (
                "dsl-198-51-100-7.example.net",
                CLIENT4,
                &[Dynamic, EmbeddedIp],
            ),
            (
                "pool-198-51-100-7",
                CLIENT4,
                &[NotFqdn, Dynamic, EmbeddedIp],
            ),
        ]);
    }

    #[test]
    fn embedded_ip_needs_four_delimited_octets_in_order() {
        let client = ip(CLIENT4);
        let cases = [
            ("198-51-100-7", true),
            ("198.51.100.7", true),
            ("7-100-51-198", true),
            ("198-51.100-7.example", true),
            ("x198-51-100-7x", true),
            ("198-051-100-007", true),
            ("1198-51-100-7", false),
            ("198-51-100-77", false),
            ("198-51-100-7000", false),
            ("198-51-100", false),
            ("198_51_100_7", false),
            ("198--51-100-7", false),
            ("198-51-7-100", false),
            ("", false),
        ];
        for (name, expected) in cases {
            assert_eq!(embedded_ip(name, client), expected, "{name}");
        }
        assert!(!embedded_ip("2001-db8-0-7", ip(CLIENT6)));
        assert!(embedded_ip("198-51-100-7", ip(MAPPED)));
    }

    #[test]
    fn glob_semantics() {
        let cases = [
            ("*dsl*", "adsl.example", true),
            ("*dsl*", "dsl", true),
            ("*dsl*", "ds.l", false),
            ("*.cable.*", "a.cable.b", true),
            ("*.cable.*", "cable.b", false),
            ("dyn?.example", "dyn1.example", true),
            ("dyn?.example", "dyn12.example", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact.example", "exact.example", true),
            ("exact.example", "sub.exact.example", false),
            ("*POOL-*", "pool-1.example", true),
            ("**x", "x", true),
            ("*ü*", "büro.example", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn finding_names_are_stable_and_unique() {
        let names: Vec<&str> = HeloFinding::ALL.iter().map(HeloFinding::name).collect();
        assert_eq!(
            names,
            [
                "missing",
                "invalid",
                "unbracketed_literal",
                "literal_mismatch",
                "own_name",
                "not_fqdn",
                "dynamic",
                "embedded_ip"
            ]
        );
        for finding in HeloFinding::ALL {
            assert!(!finding.to_string().is_empty());
        }
    }

    #[test]
    fn defaults_are_documented_and_valid() {
        let cfg: HeloConfig = toml::from_str("").expect("empty section");
        assert_eq!(cfg, HeloConfig::default());
        assert_eq!(cfg.dynamic_patterns, DEFAULT_DYNAMIC_PATTERNS);
        assert!(cfg.own_names.is_empty());
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(config().validate(), Ok(()));
        let err = toml::from_str::<HeloConfig>("own_name = []\n").expect_err("typo");
        assert!(err.to_string().contains("own_name"), "{err}");
    }

    #[test]
    fn validate_names_the_key_and_the_bad_value() {
        let bad_patterns = ["", "*", "**?", "*dyn amic*", "*dsl*\n"];
        for pattern in bad_patterns {
            let cfg = HeloConfig {
                dynamic_patterns: vec!["*dsl*".into(), pattern.into()],
                ..HeloConfig::default()
            };
            let e = cfg.validate().expect_err(pattern);
            let (key, message) = (e.key, e.reason);
            assert_eq!(key, "helo.dynamic_patterns");
            assert!(message.contains(&format!("{pattern:?}")), "{message}");
        }
        let bad_names = [
            "",
            "gw..example.org",
            "gw_1.example.org",
            "*.example.org",
            "198.51.100.1",
            "2001:db8::1",
            "[198.51.100.1]",
        ];
        for name in bad_names {
            let cfg = HeloConfig {
                own_names: vec![name.into()],
                ..HeloConfig::default()
            };
            let e = cfg.validate().expect_err(name);
            let (key, message) = (e.key, e.reason);
            assert_eq!(key, "helo.own_names");
            assert!(message.contains(&format!("{name:?}")), "{message}");
        }
    }
}

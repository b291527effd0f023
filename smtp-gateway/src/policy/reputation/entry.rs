//! The grammar of list lines and lookup keys: comments, domain names, sender addresses, HELO
//! address literals and IP prefixes, each normalized the same way for entries and lookups.

use std::{borrow::Cow, net::IpAddr};

use ipnet::{IpNet, Ipv4Net};

use super::config::ListKind;
use crate::policy::address::{check_domain_syntax, format_address_literal, parse_address_literal};

/// Longest part of a bad entry quoted in an error.
const MAX_QUOTED_ENTRY: usize = 80;

/// The entry on a line, or `None` for a blank or comment line. `#` starts a comment at the
/// beginning of the line or after whitespace, so `a#b@example.com` keeps its `#`.
pub(super) fn strip_comment(line: &str) -> Option<&str> {
    let mut previous_blank = true;
    let mut end = line.len();
    for (index, c) in line.char_indices() {
        if c == '#' && previous_blank {
            end = index;
            break;
        }
        previous_blank = c.is_whitespace();
    }
    Some(line.get(..end).unwrap_or(line).trim()).filter(|entry| !entry.is_empty())
}

/// `entry` quoted for an error message, shortened when long.
fn quote(entry: &str) -> String {
    match entry.char_indices().nth(MAX_QUOTED_ENTRY) {
        Some((cut, _)) => format!("{:?}...", entry.get(..cut).unwrap_or(entry)),
        None => format!("{entry:?}"),
    }
}

/// A `sender_domain`, `sender_address` or `helo` entry, normalized.
pub(super) fn parse_name_entry(kind: ListKind, entry: &str) -> Result<String, String> {
    match kind {
        ListKind::SenderAddress => parse_address_entry(entry),
        ListKind::Helo => match entry.strip_prefix('[') {
            Some(literal) => parse_address_literal(literal)
                .map(format_literal)
                .ok_or_else(|| format!("{} is not a valid address literal", quote(entry))),
            None => parse_domain_entry(entry, "HELO names match exactly"),
        },
        ListKind::SenderDomain => {
            parse_domain_entry(entry, "an entry already matches all its subdomains")
        }
        ListKind::Ip => Err(format!("{} is not a name entry", quote(entry))),
    }
}

/// A domain entry: one trailing dot removed, valid syntax, lowercased. `wildcard_hint` explains
/// why wildcards are refused.
fn parse_domain_entry(entry: &str, wildcard_hint: &str) -> Result<String, String> {
    if entry.starts_with("*.") || entry.starts_with('.') {
        return Err(format!(
            "{}: wildcards are not supported ({wildcard_hint})",
            quote(entry)
        ));
    }
    if entry.contains('@') {
        return Err(format!(
            "{} is an address, not a domain name (use a sender_address list)",
            quote(entry)
        ));
    }
    let name = entry.strip_suffix('.').unwrap_or(entry);
    check_domain_syntax(name)
        .map_err(|why| format!("{} is not a valid domain name: {why}", quote(entry)))?;
    Ok(name.to_lowercase())
}

/// A `sender_address` entry: `local@domain`, both parts lowercased, the domain normalized.
fn parse_address_entry(entry: &str) -> Result<String, String> {
    let Some((local, domain)) = entry.rsplit_once('@') else {
        return Err(format!(
            "{} has no '@' (sender_address lists hold whole addresses; use a sender_domain \
             list for domains)",
            quote(entry)
        ));
    };
    if local.is_empty() {
        return Err(format!("{} has an empty local part", quote(entry)));
    }
    if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{} has whitespace or control characters in its local part",
            quote(entry)
        ));
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    check_domain_syntax(domain)
        .map_err(|why| format!("{} has an invalid domain: {why}", quote(entry)))?;
    Ok(format!(
        "{}@{}",
        local.to_lowercase(),
        domain.to_lowercase()
    ))
}

/// An `ip` list entry.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum IpEntry {
    /// A single address (also `/32` and `/128` prefixes), canonical.
    Addr(IpAddr),
    /// A prefix of 1 to 31 (IPv4) or 127 (IPv6) bits, without host bits, canonical.
    Net(IpNet),
}

/// An `ip` entry: an address or a CIDR prefix, IPv4-mapped forms turned into IPv4.
pub(super) fn parse_ip_entry(entry: &str) -> Result<IpEntry, String> {
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Ok(IpEntry::Addr(addr.to_canonical()));
    }
    let net: IpNet = entry
        .parse()
        .map_err(|_| format!("{} is not an IP address or CIDR prefix", quote(entry)))?;
    if net.trunc() != net {
        return Err(format!(
            "{} has host bits set (did you mean {}?)",
            quote(entry),
            net.trunc()
        ));
    }
    if net.prefix_len() == 0 {
        return Err(format!("{} would match every address", quote(entry)));
    }
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .map_err(|_| format!("{} is not a valid prefix", quote(entry)))?,
            None => net,
        },
        _ => net,
    };
    if net.prefix_len() == 0 {
        return Err(format!("{} would match every IPv4 address", quote(entry)));
    }
    if net.prefix_len() == net.max_prefix_len() {
        Ok(IpEntry::Addr(net.network()))
    } else {
        Ok(IpEntry::Net(net))
    }
}

/// The canonical text of a HELO address literal: `[192.0.2.1]`, `[IPv6:2001:db8::1]`
/// (IPv4-mapped IPv6 written as IPv4).
fn format_literal(ip: IpAddr) -> String {
    format_address_literal(ip.to_canonical())
}

/// `name` lowercased and without one trailing dot, borrowed when already so.
fn lookup_name(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(name.to_lowercase())
    }
}

/// The lookup key of a HELO argument: a canonical literal, or a normalized name.
pub(super) fn helo_key(helo: &str) -> Cow<'_, str> {
    match helo.strip_prefix('[').and_then(parse_address_literal) {
        Some(ip) => Cow::Owned(format_literal(ip)),
        None => lookup_name(helo),
    }
}

/// A reverse path normalized for lookups.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SenderKey {
    /// `local@domain`, lowercased, the domain without a trailing dot.
    pub(super) address: String,
    /// Where the domain starts in `address`.
    pub(super) domain_start: usize,
}

impl SenderKey {
    /// The domain part of [`address`](Self::address).
    pub(super) fn domain(&self) -> &str {
        self.address.get(self.domain_start..).unwrap_or_default()
    }

    /// `None` for the null path and paths without a local part or a domain.
    pub(super) fn parse(path: &str) -> Option<Self> {
        let path = path
            .strip_prefix('<')
            .and_then(|p| p.strip_suffix('>'))
            .unwrap_or(path);
        let (local, domain) = path.rsplit_once('@')?;
        let domain = lookup_name(domain);
        if local.is_empty() || domain.is_empty() {
            return None;
        }
        let mut address = local.to_lowercase();
        address.push('@');
        let domain_start = address.len();
        address.push_str(&domain);
        Some(Self {
            address,
            domain_start,
        })
    }
}

/// `a.b.example.com`, `b.example.com`, `example.com`, `com`.
pub(super) fn parent_domains(domain: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(domain), |d| {
        d.split_once('.').map(|(_, parent)| parent)
    })
    .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::reputation::test_files::{Expected, ip};

    #[test]
    fn name_entries_are_normalized_or_refused() {
        use ListKind::*;
        let cases: &[(ListKind, &str, Expected)] = &[
            (SenderDomain, "example.com", Ok("example.com")),
            (SenderDomain, "Example.COM.", Ok("example.com")),
            (SenderDomain, "Bücher.Example", Ok("bücher.example")),
            (
                SenderDomain,
                "xn--bcher-kva.example",
                Ok("xn--bcher-kva.example"),
            ),
            (SenderDomain, "zip", Ok("zip")),
            (SenderDomain, "exa mple.com", Err("not a valid domain name")),
            (SenderDomain, "example..com", Err("not a valid domain name")),
            (
                SenderDomain,
                "example.com..",
                Err("not a valid domain name"),
            ),
            (SenderDomain, "ex_ample.com", Err("not a valid domain name")),
            (SenderDomain, "-example.com", Err("not a valid domain name")),
            (
                SenderDomain,
                "*.example.com",
                Err("wildcards are not supported"),
            ),
            (
                SenderDomain,
                ".example.com",
                Err("wildcards are not supported"),
            ),
            (SenderDomain, "user@example.com", Err("is an address")),
            (SenderDomain, "[192.0.2.1]", Err("not a valid domain name")),
            (
                SenderAddress,
                "John.Doe@Example.COM.",
                Ok("john.doe@example.com"),
            ),
            (SenderAddress, "a#b@example.com", Ok("a#b@example.com")),
            (
                SenderAddress,
                "\"a@b\"@Example.com",
                Ok("\"a@b\"@example.com"),
            ),
            (
                SenderAddress,
                "Jörg@Bücher.example",
                Ok("jörg@bücher.example"),
            ),
            (SenderAddress, "example.com", Err("has no '@'")),
            (SenderAddress, "@example.com", Err("empty local part")),
            (SenderAddress, "user@", Err("invalid domain")),
            (SenderAddress, "user@exa mple.com", Err("invalid domain")),
            (SenderAddress, "user@[192.0.2.1]", Err("invalid domain")),
            (
                SenderAddress,
                "us\ter@example.com",
                Err("whitespace or control"),
            ),
            (
                SenderAddress,
                "us\u{7}er@example.com",
                Err("whitespace or control"),
            ),
            (Helo, "Mail.Example.COM.", Ok("mail.example.com")),
            (Helo, "localhost", Ok("localhost")),
            (Helo, "192.0.2.1", Ok("192.0.2.1")),
            (Helo, "[192.0.2.1]", Ok("[192.0.2.1]")),
            (Helo, "[IPv6:2001:DB8:0::1]", Ok("[IPv6:2001:db8::1]")),
            (Helo, "[ipv6:::ffff:192.0.2.1]", Ok("[192.0.2.1]")),
            (Helo, "[192.0.2.256]", Err("not a valid address literal")),
            (Helo, "[192.0.2.1", Err("not a valid address literal")),
            (Helo, "[2001:db8::1]", Err("not a valid address literal")),
            (Helo, "*.example.com", Err("HELO names match exactly")),
            (Helo, "my host", Err("not a valid domain name")),
        ];
        for &(kind, entry, expected) in cases {
            match (parse_name_entry(kind, entry), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{kind} {entry:?}"),
                (Err(message), Err(part)) => {
                    assert!(message.contains(part), "{kind} {entry:?}: {message}");
                    assert!(
                        message.contains(&format!("{entry:?}")),
                        "{kind} {entry:?}: the message quotes the entry: {message}"
                    );
                }
                (got, want) => panic!("{kind} {entry:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn ip_entries_are_canonical_or_refused() {
        let addr = |text: &str| Ok(IpEntry::Addr(ip(text)));
        let net = |text: &str| Ok(IpEntry::Net(text.parse().expect("a network")));
        let cases: &[(&str, Result<IpEntry, &str>)] = &[
            ("192.0.2.1", addr("192.0.2.1")),
            ("::ffff:192.0.2.1", addr("192.0.2.1")),
            ("2001:DB8:0::1", addr("2001:db8::1")),
            ("192.0.2.0/24", net("192.0.2.0/24")),
            ("192.0.2.7/32", addr("192.0.2.7")),
            ("128.0.0.0/1", net("128.0.0.0/1")),
            ("2001:db8::/32", net("2001:db8::/32")),
            ("2001:db8::1/128", addr("2001:db8::1")),
            ("::ffff:192.0.2.0/120", net("192.0.2.0/24")),
            ("::ffff:192.0.2.9/128", addr("192.0.2.9")),
            (
                "192.0.2.1/24",
                Err("host bits set (did you mean 192.0.2.0/24?)"),
            ),
            ("2001:db8::1/32", Err("did you mean 2001:db8::/32?")),
            ("0.0.0.0/0", Err("would match every address")),
            ("::/0", Err("would match every address")),
            ("::ffff:0.0.0.0/96", Err("would match every IPv4 address")),
            ("192.0.2.300", Err("not an IP address or CIDR prefix")),
            ("192.0.2.0/33", Err("not an IP address or CIDR prefix")),
            ("example.com", Err("not an IP address or CIDR prefix")),
            (
                "192.0.2.1 198.51.100.1",
                Err("not an IP address or CIDR prefix"),
            ),
            ("[192.0.2.1]", Err("not an IP address or CIDR prefix")),
        ];
        for (entry, expected) in cases {
            match (parse_ip_entry(entry), expected) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{entry:?}"),
                (Err(message), Err(part)) => {
                    assert!(message.contains(part), "{entry:?}: {message}")
                }
                (got, want) => panic!("{entry:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn lookup_keys_are_normalized() {
        let senders: &[(&str, Option<(&str, &str)>)] = &[
            (
                "User@Example.COM.",
                Some(("user@example.com", "example.com")),
            ),
            ("<a@b.example>", Some(("a@b.example", "b.example"))),
            (
                "\"x@y\"@Example.org",
                Some(("\"x@y\"@example.org", "example.org")),
            ),
            (
                "Jörg@BÜCHER.example",
                Some(("jörg@bücher.example", "bücher.example")),
            ),
            ("ǅ@Example.com", Some(("ǆ@example.com", "example.com"))),
            ("", None),
            ("<>", None),
            ("postmaster", None),
            ("@example.com", None),
            ("user@", None),
            ("user@.", None),
        ];
        for (path, expected) in senders {
            let got = SenderKey::parse(path);
            let got = got.as_ref().map(|k| (k.address.as_str(), k.domain()));
            assert_eq!(got, *expected, "{path:?}");
        }
        let helos = [
            ("MAIL.example.com.", "mail.example.com"),
            ("mail.example.com", "mail.example.com"),
            ("[192.0.2.1]", "[192.0.2.1]"),
            ("[IPv6:2001:DB8:0::1]", "[IPv6:2001:db8::1]"),
            ("[IPv6:::ffff:192.0.2.1]", "[192.0.2.1]"),
            ("[Bogus", "[bogus"),
        ];
        for (helo, expected) in helos {
            assert_eq!(helo_key(helo), expected, "{helo:?}");
        }
        assert_eq!(
            parent_domains("a.b.example.com").collect::<Vec<_>>(),
            ["a.b.example.com", "b.example.com", "example.com", "com"]
        );
        assert_eq!(parent_domains("com").collect::<Vec<_>>(), ["com"]);
        let lines = [
            ("example.com\n", Some("example.com")),
            ("  example.com  \r\n", Some("example.com")),
            ("example.com # since 2024\n", Some("example.com")),
            ("example.com\t#tab\n", Some("example.com")),
            ("a#b@example.com\n", Some("a#b@example.com")),
            ("# a comment\n", None),
            ("   # an indented comment\n", None),
            ("#\n", None),
            ("\n", None),
            ("  \t \r\n", None),
            ("", None),
        ];
        for (line, expected) in lines {
            assert_eq!(strip_comment(line), expected, "{line:?}");
        }
    }
}

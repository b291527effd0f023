//! Mail-path grammar (RFC 5321 section 4.1.2, with RFC 6531 UTF-8): one place that takes paths
//! apart, for every policy that judges them.
//!
//! - the path as the client wrote it on its MAIL/RCPT line ([`raw_path`], [`policy_path`]), and the address-literal
//!   paths smtp-proto refuses ([`literal_path`]);
//! - `<path>` and `local@domain` ([`strip_angle_brackets`], [`split_address`]), refusing what
//!   hides another route (source routes, percent hacks, bang paths, tricks in quoted local parts,
//!   extra `@`s);
//! - domain names ([`check_domain_syntax`], shared with the HELO check and the reputation lists)
//!   and address literals ([`parse_address_literal`], [`format_address_literal`]).
//!
//! Client text is never cut at a byte index: a cut inside a multi-byte character panics.

#![deny(clippy::string_slice)]

use std::net::{IpAddr, Ipv6Addr};

/// Longest DNS label, in octets (RFC 1035 section 2.3.4). A protocol limit, not a policy.
const MAX_LABEL_OCTETS: usize = 63;

/// Longest domain name in text form without the trailing dot, in octets (RFC 1035 section 2.3.4:
/// 255 octets on the wire). A protocol limit, not a policy.
const MAX_NAME_OCTETS: usize = 253;

/// Characters IDNA (UTS #46) maps to a label separator: refused inside labels so that the domain
/// we match is the domain a downstream MTA converting to ASCII resolves.
const IDNA_DOTS: [char; 3] = ['\u{3002}', '\u{FF0E}', '\u{FF61}'];

/// Why a path is not one plain `local@domain` address. `Display` gives the reply text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `@a,@b:user@c`: RFC 5321 source routes.
    #[error("source routes are not accepted")]
    SourceRoute,
    /// `user%other@domain`: a `%` in the local part.
    #[error("percent-hack addresses are not accepted")]
    PercentHack,
    /// `other!user@domain`: a `!` in the local part.
    #[error("bang paths are not accepted")]
    BangPath,
    /// `"user@other"@domain`: a quoted local part holding `@`, `%`, `!` or an escaped quote.
    #[error("quoted local part tricks are not accepted")]
    QuotedLocalPart,
    /// `user@other@domain`: more than one `@` outside quotes.
    #[error("addresses with more than one @ are not accepted")]
    MultipleAt,
    /// Anything else that is not an RFC 5321/6531 path; the detail says what.
    #[error("invalid address syntax: {0}")]
    InvalidSyntax(&'static str),
}

impl PathError {
    /// A stable snake_case name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SourceRoute => "source_route",
            Self::PercentHack => "percent_hack",
            Self::BangPath => "bang_path",
            Self::QuotedLocalPart => "quoted_local_part",
            Self::MultipleAt => "multiple_at",
            Self::InvalidSyntax(_) => "invalid_syntax",
        }
    }
}

/// The command a MAIL/RCPT line gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathCommand {
    /// `MAIL FROM:`.
    Mail,
    /// `RCPT TO:`.
    Rcpt,
}

/// The path the relay policy judges for a MAIL/RCPT line whose address the parser read as
/// `parsed`: the raw path ([`raw_path`]), or, for a line without one, the parsed address as a
/// path (`<parsed>`: angle brackets inside the address, from its quoted parts, stay part of it
/// and are never taken for the path's own).
pub fn policy_path(line: &[u8], parsed: &str) -> String {
    raw_path(line).unwrap_or_else(|| format!("<{parsed}>"))
}

/// The path between `<` and `>` of a MAIL/RCPT line as the client wrote it (quotes respected):
/// the parser drops source routes, but the raw line, route included, is what the backend
/// receives, so the policy judges this. A byte that is not UTF-8 reads as U+FFFD: the path's
/// structure (`<`, `>`, quotes, `@`, `:`) is ASCII, which no such byte can be, so a line that is
/// not UTF-8 is judged on its route like any other. `None` when the line has no `<...>`.
pub fn raw_path(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    split_path(&text).map(|(path, _)| path.to_string())
}

/// A MAIL/RCPT line's text split at its path: what is between `<` and the `>` closing it (quotes
/// respected), and what follows (the ESMTP parameters).
fn split_path(text: &str) -> Option<(&str, &str)> {
    let open = text.find('<')?;
    let end = path_end(text.as_bytes())?;
    Some((text.get(open + 1..end - 1)?, text.get(end..)?))
}

/// Where the path of a MAIL/RCPT line ends: the index just past its closing `>` (one inside a
/// quoted local part does not close it). Works on bytes: no byte of a multi-byte UTF-8
/// character is ASCII, so the positions found are character boundaries.
fn path_end(line: &[u8]) -> Option<usize> {
    let open = line.iter().position(|b| *b == b'<')?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in line.iter().enumerate().skip(open + 1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The MAIL line without its `AUTH=` parameters, or `None` when it has none. RFC 4954 section 5:
/// `AUTH=` names the message's submitter for a server that trusts the client's login; one that
/// did not log in must not hand the backend a submitter of its choice (Postfix records it as
/// `sasl_sender` and passes it to milters). The path and every other parameter are kept as
/// they came.
pub fn without_auth_parameter(line: &[u8]) -> Option<Vec<u8>> {
    let end = path_end(line)?;
    let (head, parameters) = (line.get(..end)?, line.get(end..)?);
    let is_auth = |p: &&[u8]| p.get(..5).is_some_and(|k| k.eq_ignore_ascii_case(b"AUTH="));
    if !parameters.split(|b| *b == b' ').any(|p| is_auth(&p)) {
        return None;
    }
    let mut kept = head.to_vec();
    for parameter in parameters
        .split(|b| *b == b' ')
        .filter(|p| !p.is_empty() && !is_auth(p))
    {
        kept.push(b' ');
        kept.extend_from_slice(parameter);
    }
    Some(kept)
}

/// The message size a MAIL line declares (`SIZE=`, RFC 1870), read from the parameters after
/// its path, any case; a value past `u64::MAX` reads as `u64::MAX`. `None` without a `SIZE=`
/// of digits. smtp-proto 0.2.5 keeps only the digits that follow once its value saturated
/// (`SIZE=` and 26 nines reads as 999,999), and reads no parameter of an address-literal path
/// ([`literal_path`]): the declared size is taken from here.
pub fn declared_size(line: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(line);
    let (_, parameters) = split_path(&text)?;
    parameters.split_ascii_whitespace().find_map(|parameter| {
        let (key, value) = parameter.split_once('=')?;
        if !key.eq_ignore_ascii_case("SIZE")
            || value.is_empty()
            || !value.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(value.bytes().fold(0u64, |size, digit| {
            size.saturating_mul(10)
                .saturating_add(u64::from(digit - b'0'))
        }))
    })
}

/// smtp-proto refuses address literals in paths (`user@[198.51.100.7]`), which RFC 5321 4.1.2
/// allows: such a MAIL/RCPT line (`MAIL FROM:` or `RCPT TO:`, any case) gives its command and
/// its path here so the policy decides on them. `None` for any other line, and for a path that is
/// not `local@[literal]`.
pub fn literal_path(line: &[u8]) -> Option<(PathCommand, String)> {
    let (command, rest) = match strip_prefix_ignore_ascii_case(line, b"RCPT TO:") {
        Some(rest) => (PathCommand::Rcpt, rest),
        None => (
            PathCommand::Mail,
            strip_prefix_ignore_ascii_case(line, b"MAIL FROM:")?,
        ),
    };
    let text = std::str::from_utf8(rest).ok()?;
    let inner = text.trim_start().strip_prefix('<')?;
    let (address, _) = inner.split_once('>')?;
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || !(domain.starts_with('[') && domain.ends_with(']')) {
        return None;
    }
    Some((command, address.to_string()))
}

/// `line` after `prefix` (compared as ASCII, any case), as bytes: never a cut inside a character.
fn strip_prefix_ignore_ascii_case<'a>(line: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = line.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

/// `<path>` -> `path`; a path without brackets is returned as is; unbalanced brackets are refused.
pub fn strip_angle_brackets(path: &str) -> Result<&str, PathError> {
    let unbalanced = PathError::InvalidSyntax("unbalanced angle brackets");
    match path.strip_prefix('<') {
        Some(inner) => inner.strip_suffix('>').ok_or(unbalanced),
        None if path.ends_with('>') => Err(unbalanced),
        None => Ok(path),
    }
}

/// Splits a non-empty path into its local part (as given, quotes included) and its domain (as
/// given), refusing source routes, tricks in the local part and extra `@`s.
pub fn split_address(path: &str) -> Result<(&str, &str), PathError> {
    if path.starts_with('@') {
        return Err(if path.contains(':') {
            PathError::SourceRoute
        } else {
            PathError::InvalidSyntax("empty local part")
        });
    }
    let (local, domain) = if path.starts_with('"') {
        let (local, rest) = split_quoted_local_part(path)?;
        let domain = match rest.strip_prefix('@') {
            Some(domain) => domain,
            None if rest.is_empty() => return Err(PathError::InvalidSyntax("missing @domain")),
            None => {
                return Err(PathError::InvalidSyntax(
                    "unexpected text after the quoted local part",
                ));
            }
        };
        (local, domain)
    } else {
        let (local, domain) = match path.split_once('@') {
            Some((local, domain)) => (local, Some(domain)),
            None => (path, None),
        };
        if local.contains('%') {
            return Err(PathError::PercentHack);
        }
        if local.contains('!') {
            return Err(PathError::BangPath);
        }
        check_dot_string(local)?;
        (
            local,
            domain.ok_or(PathError::InvalidSyntax("missing @domain"))?,
        )
    };
    if domain.contains('@') {
        return Err(PathError::MultipleAt);
    }
    if domain.is_empty() {
        return Err(PathError::InvalidSyntax("empty domain"));
    }
    Ok((local, domain))
}

/// Splits the quoted string that starts `path` (both quotes included) from what follows,
/// refusing quoted strings that hide another address: `@`, `%`, `!` or an escaped quote inside.
fn split_quoted_local_part(path: &str) -> Result<(&str, &str), PathError> {
    let unterminated = PathError::InvalidSyntax("unterminated quoted local part");
    let mut trick = false;
    let mut chars = path.char_indices().skip(1);
    while let Some((index, c)) = chars.next() {
        match c {
            '"' if index == 1 => return Err(PathError::InvalidSyntax("empty local part")),
            '"' if trick => return Err(PathError::QuotedLocalPart),
            '"' => return path.split_at_checked(index + 1).ok_or(unterminated),
            '\\' => match chars.next() {
                Some((_, escaped @ ' '..='~')) => trick |= matches!(escaped, '"' | '@' | '%' | '!'),
                _ => return Err(PathError::InvalidSyntax("invalid quoted pair")),
            },
            '@' | '%' | '!' => trick = true,
            c if c.is_control() => {
                return Err(PathError::InvalidSyntax("control character in address"));
            }
            _ => {}
        }
    }
    Err(unterminated)
}

/// RFC 5321 `Dot-string` with RFC 6531 UTF-8: atoms of `atext` separated by single dots.
fn check_dot_string(local: &str) -> Result<(), PathError> {
    if local.is_empty() {
        return Err(PathError::InvalidSyntax("empty local part"));
    }
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err(PathError::InvalidSyntax(
                "empty atom in the local part (leading, trailing or double dot)",
            ));
        }
        if !atom.chars().all(is_atext) {
            return Err(PathError::InvalidSyntax(
                "character not allowed in an unquoted local part",
            ));
        }
    }
    Ok(())
}

/// RFC 5322 `atext`, extended to non-ASCII characters by RFC 6531 (controls and spaces excluded).
fn is_atext(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
    } else {
        !c.is_control() && !c.is_whitespace()
    }
}

/// The inside of an address literal after its `[`: `198.51.100.1]` or `IPv6:2001:db8::1]` (tag
/// case-insensitive). General literals (`tag:content`) are not supported.
pub fn parse_address_literal(after_bracket: &str) -> Option<IpAddr> {
    let inner = after_bracket.strip_suffix(']')?;
    match inner.split_at_checked("IPv6:".len()) {
        Some((tag, v6)) if tag.eq_ignore_ascii_case("IPv6:") => {
            v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        }
        _ => inner.parse().ok().filter(IpAddr::is_ipv4),
    }
}

/// The canonical text of an address literal: `[198.51.100.1]`, `[IPv6:2001:db8::1]`.
pub fn format_address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Checks a domain name given without its trailing dot: non-empty labels of letters, digits and
/// inner hyphens (RFC 5321 `sub-domain`), or UTF-8 U-labels (RFC 6531); ASCII labels of at most
/// 63 octets and ASCII names of at most 253. The length limits apply to ASCII names only: a
/// U-label's length on the wire is that of its `xn--` form, which we do not compute. Returns what
/// is wrong, for a reply or a config error.
pub fn check_domain_syntax(name: &str) -> Result<(), &'static str> {
    check_name_syntax(name, false)
}

/// [`check_domain_syntax`] for a host name a client gives itself (HELO/EHLO): an underscore is
/// allowed too, as Postfix's `valid_hostname()` allows it (many Windows hosts' names hold one).
pub fn check_host_name_syntax(name: &str) -> Result<(), &'static str> {
    check_name_syntax(name, true)
}

fn check_name_syntax(name: &str, underscore: bool) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty domain");
    }
    if name.is_ascii() && name.len() > MAX_NAME_OCTETS {
        return Err("domain name longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label in domain (leading, trailing or double dot)");
        }
        if label.is_ascii() && label.len() > MAX_LABEL_OCTETS {
            return Err("domain label longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("domain label starting or ending with a hyphen");
        }
        let valid = |c: char| {
            if c.is_ascii() {
                c.is_ascii_alphanumeric() || c == '-' || (underscore && c == '_')
            } else {
                // U+FFFD: bytes that were not UTF-8, replaced on the way in.
                !c.is_control()
                    && !c.is_whitespace()
                    && !IDNA_DOTS.contains(&c)
                    && c != char::REPLACEMENT_CHARACTER
            }
        };
        if !label.chars().all(valid) {
            return Err("character not allowed in a domain name");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_size_is_read_after_the_path_and_saturates() {
        let cases: [(&[u8], Option<u64>); 11] = [
            (b"MAIL FROM:<a@example.net> SIZE=1000\r\n", Some(1000)),
            (b"MAIL FROM:<a@example.net> BODY=8BITMIME size=5", Some(5)),
            (
                b"MAIL FROM:<a@example.net> SIZE=99999999999999999999999999",
                Some(u64::MAX),
            ),
            (
                b"MAIL FROM:<a@example.net> SIZE=000000000000000000000000060000000",
                Some(60_000_000),
            ),
            (b"MAIL FROM:<a@[198.18.0.7]> SIZE=7", Some(7)),
            (b"MAIL FROM:<a@example.net> AUTH=<> SIZE=7", Some(7)),
            (b"MAIL FROM:<\xff@example.net> SIZE=7", Some(7)),
            // Inside the path, a quoted local part's text is no parameter.
            (b"MAIL FROM:<\"x> SIZE=9\"@example.net> BODY=7BIT", None),
            (b"MAIL FROM:<a@example.net> SIZE=", None),
            (b"MAIL FROM:<a@example.net> SIZE=12a", None),
            (b"MAIL FROM:<a@example.net>", None),
        ];
        for (line, size) in cases {
            assert_eq!(
                declared_size(line),
                size,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn the_auth_parameter_is_taken_out_and_the_rest_kept() {
        let cases: [(&[u8], Option<&[u8]>); 7] = [
            (
                b"MAIL FROM:<a@example.net> AUTH=boss+40corp.test BODY=8BITMIME",
                Some(b"MAIL FROM:<a@example.net> BODY=8BITMIME"),
            ),
            (
                b"MAIL FROM:<a@example.net> size=7 auth=<> AUTH=x",
                Some(b"MAIL FROM:<a@example.net> size=7"),
            ),
            (b"mail from:<> AUTH=x", Some(b"mail from:<>")),
            // Inside the path, a quoted local part's text is no parameter.
            (b"MAIL FROM:<\"x> AUTH=y\"@example.net> BODY=7BIT", None),
            (b"MAIL FROM:<a@example.net> AUTHOR=x", None),
            (b"MAIL FROM:<a@example.net>", None),
            (
                "MAIL FROM:<\u{e9}@example.net> AUTH=x SMTPUTF8".as_bytes(),
                Some("MAIL FROM:<\u{e9}@example.net> SMTPUTF8".as_bytes()),
            ),
        ];
        for (line, kept) in cases {
            assert_eq!(
                without_auth_parameter(line).as_deref(),
                kept,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn raw_paths_keep_what_the_parser_drops() {
        assert_eq!(
            raw_path(b"RCPT TO:<@evil.test:user@example.org>").as_deref(),
            Some("@evil.test:user@example.org")
        );
        assert_eq!(
            raw_path(b"RCPT TO:<\"a>b\"@example.org> NOTIFY=NEVER").as_deref(),
            Some("\"a>b\"@example.org")
        );
        assert_eq!(raw_path(b"RCPT TO:user@example.org"), None);
        assert_eq!(raw_path("RCPT TO:<é@x>".as_bytes()).as_deref(), Some("é@x"));
        // Not UTF-8: judged all the same, the byte read as U+FFFD.
        assert_eq!(
            raw_path(b"RCPT TO:<@r.test:\xff@x>").as_deref(),
            Some("@r.test:\u{fffd}@x")
        );
    }

    #[test]
    fn address_literal_paths_reach_the_policy() {
        assert_eq!(
            literal_path(b"RCPT TO:<user@[198.51.100.7]> NOTIFY=NEVER"),
            Some((PathCommand::Rcpt, "user@[198.51.100.7]".to_string()))
        );
        assert_eq!(
            literal_path(b"mail from: <a@[IPv6:2001:db8::1]>"),
            Some((PathCommand::Mail, "a@[IPv6:2001:db8::1]".to_string()))
        );
        for bad in [
            &b"RCPT TO:<user@example.org>"[..],
            b"RCPT TO:<@[1.2.3.4]>",
            b"RCPT TO:user@[1.2.3.4]",
            b"VRFY x",
        ] {
            assert!(
                literal_path(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn non_ascii_text_after_a_tab_is_no_literal_path_and_no_panic() {
        // Issue 10 section 1.1: `text[..10]` cut through the two-byte `é`.
        for line in [
            "RCPT\tTO:<é>",
            "MAIL\tFROM:<é>",
            "RCPT TO:é",
            "MAIL FROM:<é@[1.2.3.4]>é",
            "é",
            "RCPT TOé",
        ] {
            let _ = literal_path(line.as_bytes());
            let _ = raw_path(line.as_bytes());
        }
        assert!(literal_path("RCPT\tTO:<é>".as_bytes()).is_none());
        assert!(literal_path("MAIL\tFROM:<é>".as_bytes()).is_none());
    }

    #[test]
    fn addresses_split_into_local_part_and_domain() {
        assert_eq!(strip_angle_brackets("<a@b>"), Ok("a@b"));
        assert_eq!(strip_angle_brackets("a@b"), Ok("a@b"));
        assert!(strip_angle_brackets("<a@b").is_err());
        assert!(strip_angle_brackets("a@b>").is_err());
        assert_eq!(split_address("a.b@example.org"), Ok(("a.b", "example.org")));
        assert_eq!(
            split_address("\"a b\"@example.org"),
            Ok(("\"a b\"", "example.org"))
        );
        assert_eq!(
            split_address("é@bücher.example"),
            Ok(("é", "bücher.example"))
        );
        assert_eq!(split_address("@a,@b:u@c"), Err(PathError::SourceRoute));
        assert_eq!(split_address("u%v@c"), Err(PathError::PercentHack));
        assert_eq!(split_address("v!u@c"), Err(PathError::BangPath));
        assert_eq!(split_address("\"u@v\"@c"), Err(PathError::QuotedLocalPart));
        assert_eq!(split_address("u@v@c"), Err(PathError::MultipleAt));
        for bad in ["u", "u@", "\"u\"", "\"u\"x@c", "\"u", "a..b@c", "\"\"@c"] {
            assert!(
                matches!(split_address(bad), Err(PathError::InvalidSyntax(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn address_literals_parse_and_print_canonically() {
        assert_eq!(
            parse_address_literal("198.51.100.1]"),
            Some(IpAddr::from([198, 51, 100, 1]))
        );
        let v6 = parse_address_literal("ipv6:2001:DB8::1]").expect("v6");
        assert_eq!(format_address_literal(v6), "[IPv6:2001:db8::1]");
        for bad in [
            "198.51.100.1",
            "2001:db8::1]",
            "IPv6:198.51.100.1]",
            "é]",
            "IPv6é]",
        ] {
            assert_eq!(parse_address_literal(bad), None, "{bad:?}");
        }
    }
}

//! FCrDNS (forward-confirmed reverse DNS, RFC 8601 `iprev`): the client's PTR names, each looked
//! up forward (A for an IPv4 client, AAAA for IPv6) until one maps back to the client's address.
//! The outcome is what the backend is told (Postfix XCLIENT `NAME` and `REVERSE_NAME`), what the
//! `fcrdns` check judges, and the `iprev` result of the `Authentication-Results` header.
//!
//! The lookups start at connect, run in parallel with the greet pause and are bounded by
//! `fcrdns.timeout` together; the resolver is the shared one (`[dns]`). A lookup that times out
//! or fails (SERVFAIL) is a temporary failure, never a missing name.

use std::{net::IpAddr, time::Duration};

use hickory_resolver::{
    TokioResolver,
    proto::rr::{Name, RData, RecordType},
};
use serde::Deserialize;

use crate::invalid::Invalid;

/// Bounds of `fcrdns.timeout`.
const TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(60);
/// Bounds of `fcrdns.max_names`.
const MAX_NAMES_RANGE: std::ops::RangeInclusive<usize> = 1..=20;

/// `[fcrdns]`: verified client names.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FcrdnsConfig {
    /// Whether client names are looked up at all (default `false`: the backend is told
    /// `NAME=[UNAVAILABLE]` and the `fcrdns` check never fires). Needs `dns.nameservers`.
    pub enabled: bool,
    /// Deadline for all lookups of one client together, counted from the connect (default
    /// `3s`, `10ms..=60s`); what has not answered by then is a temporary failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PTR names tried forward, in the order received (default `5`, `1..=20`); further names are
    /// ignored.
    pub max_names: usize,
}

impl Default for FcrdnsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            timeout: Duration::from_secs(3),
            max_names: 5,
        }
    }
}

impl FcrdnsConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !TIMEOUT_RANGE.contains(&self.timeout) {
            return Err(Invalid::new(
                "fcrdns.timeout",
                format!(
                    "{} is out of range (10ms..=60s)",
                    humantime::format_duration(self.timeout)
                ),
            ));
        }
        if !MAX_NAMES_RANGE.contains(&self.max_names) {
            return Err(Invalid::new(
                "fcrdns.max_names",
                format!("{} is out of range (1..=20)", self.max_names),
            ));
        }
        Ok(())
    }
}

/// What the lookups found out about the client's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientName {
    /// A PTR name that maps back to the client's address.
    Verified {
        /// The confirmed name (lowercase, no trailing dot).
        name: String,
    },
    /// The PTR lookup answered: no name (`reverse` is `None`), or none of the names tried maps
    /// back to the address (`reverse` is the first one).
    Unverified {
        /// The first PTR name, unconfirmed.
        reverse: Option<String>,
    },
    /// A lookup timed out or failed (SERVFAIL): nothing can be said now.
    TempFail {
        /// The first PTR name when the PTR lookup itself answered.
        reverse: Option<String>,
    },
}

impl ClientName {
    /// XCLIENT `NAME`: the verified name, `[UNAVAILABLE]` or `[TEMPUNAVAIL]`.
    pub fn xclient_name(&self) -> &str {
        match self {
            ClientName::Verified { name } => name,
            ClientName::Unverified { .. } => "[UNAVAILABLE]",
            ClientName::TempFail { .. } => "[TEMPUNAVAIL]",
        }
    }

    /// XCLIENT `REVERSE_NAME`: the PTR name, verified or not, or what stood in its way.
    pub fn xclient_reverse_name(&self) -> &str {
        match self {
            ClientName::Verified { name } => name,
            ClientName::Unverified { reverse: Some(r) }
            | ClientName::TempFail { reverse: Some(r) } => r,
            ClientName::Unverified { reverse: None } => "[UNAVAILABLE]",
            ClientName::TempFail { reverse: None } => "[TEMPUNAVAIL]",
        }
    }

    /// The RFC 8601 `iprev` result: `pass`, `fail` (not confirmed), `permerror` (no PTR),
    /// `temperror`.
    pub fn iprev(&self) -> &'static str {
        match self {
            ClientName::Verified { .. } => "pass",
            ClientName::Unverified { reverse: Some(_) } => "fail",
            ClientName::Unverified { reverse: None } => "permerror",
            ClientName::TempFail { .. } => "temperror",
        }
    }

    /// Why the `fcrdns` check fires, or `None` for a verified name.
    pub fn finding(&self) -> Option<String> {
        match self {
            ClientName::Verified { .. } => None,
            ClientName::Unverified { reverse: None } => Some("no PTR record".into()),
            ClientName::Unverified { reverse: Some(r) } => {
                Some(format!("PTR {r} does not resolve back to the address"))
            }
            ClientName::TempFail { reverse } => Some(format!(
                "temporary DNS failure (PTR {})",
                reverse.as_deref().unwrap_or("unknown")
            )),
        }
    }

    /// Whether the failure is temporary (a refusal must then be a `4xx`).
    pub fn is_temporary(&self) -> bool {
        matches!(self, ClientName::TempFail { .. })
    }
}

/// One lookup's outcome: the records, none (NXDOMAIN/NODATA), or a temporary failure.
type Answer<T> = Result<Vec<T>, ()>;

/// Settles the outcome from the PTR answer and the forward answers of the names tried (in the
/// same order; fewer when the deadline cut them short, which counts as a temporary failure).
fn settle(client: IpAddr, ptr: Answer<String>, forward: &[Answer<IpAddr>]) -> ClientName {
    let names = match ptr {
        Err(()) => return ClientName::TempFail { reverse: None },
        Ok(names) if names.is_empty() => return ClientName::Unverified { reverse: None },
        Ok(names) => names,
    };
    let client = client.to_canonical();
    let mut temporary = forward.len() < names.len();
    for (name, answer) in names.iter().zip(forward) {
        match answer {
            Ok(addrs) if addrs.iter().any(|a| a.to_canonical() == client) => {
                return ClientName::Verified { name: name.clone() };
            }
            Ok(_) => {}
            Err(()) => temporary = true,
        }
    }
    let reverse = names.into_iter().next();
    if temporary {
        ClientName::TempFail { reverse }
    } else {
        ClientName::Unverified { reverse }
    }
}

/// The client-name resolver: the shared resolver and this section's bounds.
#[derive(Debug)]
pub struct Fcrdns {
    /// The shared resolver (`[dns]`).
    resolver: TokioResolver,
    /// Deadline for all lookups of one client.
    timeout: Duration,
    /// PTR names tried forward.
    max_names: usize,
}

impl Fcrdns {
    /// The lookups of `config` through `resolver`. No I/O happens until [`lookup`](Self::lookup).
    pub fn new(config: &FcrdnsConfig, resolver: TokioResolver) -> Self {
        Self {
            resolver,
            timeout: config.timeout,
            max_names: config.max_names,
        }
    }

    /// The client's name; returns within the configured deadline (plus scheduling delay).
    pub async fn lookup(&self, client: IpAddr) -> ClientName {
        let client = client.to_canonical();
        let mut ptr: Option<Answer<String>> = None;
        let mut forward: Vec<Answer<IpAddr>> = Vec::new();
        let work = async {
            let names = self.ptr_names(client).await;
            let tried: Vec<String> = names
                .as_ref()
                .map(|n| n.iter().take(self.max_names).cloned().collect())
                .unwrap_or_default();
            ptr = Some(names.map(|_| tried.clone()));
            let kind = if client.is_ipv4() {
                RecordType::A
            } else {
                RecordType::AAAA
            };
            for name in &tried {
                let answer = self.addresses(name, kind).await;
                let confirmed = answer
                    .as_ref()
                    .is_ok_and(|a| a.iter().any(|a| a.to_canonical() == client));
                forward.push(answer);
                if confirmed {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(self.timeout, work).await;
        let outcome = settle(client, ptr.unwrap_or(Err(())), &forward);
        tracing::debug!(%client, ?outcome, "FCrDNS");
        outcome
    }

    /// The PTR names of `client` that are host names (lowercase, no trailing dot).
    async fn ptr_names(&self, client: IpAddr) -> Answer<String> {
        let answers = lookup(&self.resolver, Name::from(client), RecordType::PTR).await?;
        Ok(answers
            .into_iter()
            .filter_map(|data| match data {
                RData::PTR(ptr) => host_name(&ptr.0),
                _ => None,
            })
            .collect())
    }

    /// The addresses of `name` of type `kind` (A or AAAA).
    async fn addresses(&self, name: &str, kind: RecordType) -> Answer<IpAddr> {
        let Ok(query) = Name::from_ascii(format!("{name}.")) else {
            // Not a usable name: it cannot confirm anything.
            return Ok(Vec::new());
        };
        let answers = lookup(&self.resolver, query, kind).await?;
        Ok(answers
            .into_iter()
            .filter_map(|data| match data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect())
    }
}

/// `name` as a host name, lowercase and without the trailing dot, or `None` when it is none by
/// the rules of Postfix's `valid_hostname` (what its XCLIENT accepts as `NAME` and
/// `REVERSE_NAME`): labels of letters, digits, `-` and `_`, none starting or ending with `-`,
/// and not all digits (a numeric name would pass for an address). A reverse zone can serve any
/// octet in a label (a space, CR LF, `=`): such a name is no name, as Postfix makes it `unknown`.
fn host_name(name: &Name) -> Option<String> {
    let mut text = String::new();
    let mut numeric = true;
    for label in name.iter() {
        let hyphen_at_an_end = label.first() == Some(&b'-') || label.last() == Some(&b'-');
        let allowed = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
        if label.is_empty() || hyphen_at_an_end || !label.iter().all(allowed) {
            return None;
        }
        numeric &= label.iter().all(u8::is_ascii_digit);
        if !text.is_empty() {
            text.push('.');
        }
        text.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    (!text.is_empty() && !numeric).then_some(text)
}

/// The answers to `name`/`kind`: empty for NXDOMAIN or NODATA, `Err` for a timeout or failure.
async fn lookup(resolver: &TokioResolver, name: Name, kind: RecordType) -> Answer<RData> {
    match resolver.lookup(name, kind).await {
        Ok(found) => Ok(found.answers().iter().map(|r| r.data.clone()).collect()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        // A timeout, SERVFAIL, REFUSED, an unreachable server: nothing can be said now.
        Err(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::policy::dns::DnsConfig;
    use smtp_gateway_test_kit::{DnsResponder, Records};

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn settle_covers_every_outcome() {
        let c = ip("198.51.100.7");
        let name = |n: &str| n.to_string();
        assert_eq!(
            settle(c, Err(()), &[]),
            ClientName::TempFail { reverse: None }
        );
        assert_eq!(
            settle(c, Ok(vec![]), &[]),
            ClientName::Unverified { reverse: None }
        );
        assert_eq!(
            settle(
                c,
                Ok(vec![name("a.test"), name("b.test")]),
                &[Ok(vec![ip("192.0.2.1")]), Ok(vec![c])]
            ),
            ClientName::Verified {
                name: name("b.test")
            }
        );
        assert_eq!(
            settle(c, Ok(vec![name("a.test")]), &[Ok(vec![ip("192.0.2.1")])]),
            ClientName::Unverified {
                reverse: Some(name("a.test"))
            }
        );
        assert_eq!(
            settle(
                c,
                Ok(vec![name("a.test"), name("b.test")]),
                &[Ok(vec![]), Err(())]
            ),
            ClientName::TempFail {
                reverse: Some(name("a.test"))
            }
        );
        // Cut short by the deadline: temporary.
        assert_eq!(
            settle(c, Ok(vec![name("a.test")]), &[]),
            ClientName::TempFail {
                reverse: Some(name("a.test"))
            }
        );
        // IPv4-mapped answers and clients compare as IPv4.
        assert!(matches!(
            settle(
                ip("::ffff:198.51.100.7"),
                Ok(vec![name("a.test")]),
                &[Ok(vec![c])]
            ),
            ClientName::Verified { .. }
        ));
    }

    #[test]
    fn xclient_values_and_iprev() {
        let verified = ClientName::Verified {
            name: "mx.test".into(),
        };
        assert_eq!(verified.xclient_name(), "mx.test");
        assert_eq!(verified.xclient_reverse_name(), "mx.test");
        assert_eq!(verified.iprev(), "pass");
        assert_eq!(verified.finding(), None);
        let forged = ClientName::Unverified {
            reverse: Some("forged.test".into()),
        };
        assert_eq!(forged.xclient_name(), "[UNAVAILABLE]");
        assert_eq!(forged.xclient_reverse_name(), "forged.test");
        assert_eq!(forged.iprev(), "fail");
        let none = ClientName::Unverified { reverse: None };
        assert_eq!(none.xclient_reverse_name(), "[UNAVAILABLE]");
        assert_eq!(none.iprev(), "permerror");
        let temp = ClientName::TempFail { reverse: None };
        assert_eq!(temp.xclient_name(), "[TEMPUNAVAIL]");
        assert_eq!(temp.xclient_reverse_name(), "[TEMPUNAVAIL]");
        assert_eq!(temp.iprev(), "temperror");
        assert!(temp.is_temporary() && !forged.is_temporary());
    }

    #[test]
    fn config_bounds() {
        assert_eq!(FcrdnsConfig::default().validate(), Ok(()));
        let c = FcrdnsConfig {
            max_names: 0,
            ..FcrdnsConfig::default()
        };
        assert_eq!(c.validate().expect_err("refused").key, "fcrdns.max_names");
        let c = FcrdnsConfig {
            timeout: Duration::ZERO,
            ..FcrdnsConfig::default()
        };
        assert_eq!(c.validate().expect_err("refused").key, "fcrdns.timeout");
    }

    fn fcrdns(server: &DnsResponder, timeout: Duration) -> Fcrdns {
        let dns = DnsConfig {
            timeout: Duration::from_millis(200),
            attempts: 1,
            ..DnsConfig::default()
        };
        let resolver = dns.resolver(&[server.addr()], "FCrDNS").expect("resolver");
        Fcrdns::new(
            &FcrdnsConfig {
                enabled: true,
                timeout,
                max_names: 2,
            },
            resolver,
        )
    }

    #[tokio::test]
    async fn lookups_against_a_local_server() {
        let server = DnsResponder::start(
            Records::new()
                .ptr(ip("198.51.100.7"), &["mx.good.test."])
                .a("mx.good.test", &["198.51.100.7".parse().expect("ip")])
                .ptr(ip("2001:db8::7"), &["v6.good.test."])
                .aaaa("v6.good.test", &["2001:db8::7".parse().expect("ip")])
                .ptr(ip("198.51.100.8"), &["forged.test."])
                .a("forged.test", &["192.0.2.1".parse().expect("ip")])
                .ptr(ip("198.51.100.9"), &["slow.drop.test."])
                .silent("drop.test")
                .servfail("10.100.51.198.in-addr.arpa"),
        )
        .expect("responder");
        let f = fcrdns(&server, Duration::from_secs(2));
        assert_eq!(
            f.lookup(ip("198.51.100.7")).await,
            ClientName::Verified {
                name: "mx.good.test".into()
            }
        );
        assert_eq!(
            f.lookup(ip("2001:db8::7")).await,
            ClientName::Verified {
                name: "v6.good.test".into()
            }
        );
        assert_eq!(
            f.lookup(ip("198.51.100.8")).await,
            ClientName::Unverified {
                reverse: Some("forged.test".into())
            }
        );
        assert_eq!(
            f.lookup(ip("198.51.100.11")).await,
            ClientName::Unverified { reverse: None }
        );
        assert_eq!(
            f.lookup(ip("198.51.100.10")).await,
            ClientName::TempFail { reverse: None }
        );
        let f = fcrdns(&server, Duration::from_millis(400));
        let started = Instant::now();
        assert_eq!(
            f.lookup(ip("198.51.100.9")).await,
            ClientName::TempFail {
                reverse: Some("slow.drop.test".into())
            }
        );
        assert!(started.elapsed() < Duration::from_millis(900));
    }

    #[tokio::test]
    async fn a_ptr_name_that_is_no_host_name_is_no_name() {
        // A reverse zone may serve any octet in a label. Postfix refuses an XCLIENT NAME or
        // REVERSE_NAME that is not a host name ("501 5.5.4 Bad NAME syntax"), so such a name
        // would cost the client its delivery: it is no name, as Postfix's own lookup treats it.
        let server = DnsResponder::start(
            Records::new()
                .ptr_raw(ip("198.51.100.12"), &[b"x y", b"evil", b"test"])
                .ptr_raw(ip("198.51.100.13"), &[b"a\r\nx=1", b"test"])
                .ptr_raw(ip("198.51.100.13"), &[b"mx_2", b"good", b"test"])
                .a("mx_2.good.test", &["198.51.100.13".parse().expect("ip")])
                .ptr(ip("198.51.100.14"), &["1.2.3.4."])
                .a("1.2.3.4", &["198.51.100.14".parse().expect("ip")])
                .ptr_raw(ip("198.51.100.15"), &[b"-lead", b"evil", b"test"])
                .ptr_raw(ip("198.51.100.16"), &["\u{e9}t\u{e9}".as_bytes(), b"test"])
                .ptr_raw(ip("198.51.100.17"), &[b"d\xffot", b"test"]),
        )
        .expect("responder");
        let f = fcrdns(&server, Duration::from_secs(2));
        for client in [
            "198.51.100.12",
            "198.51.100.14",
            "198.51.100.15",
            "198.51.100.16",
            "198.51.100.17",
        ] {
            let name = f.lookup(ip(client)).await;
            assert_eq!(name, ClientName::Unverified { reverse: None }, "{client}");
            assert_eq!(name.xclient_reverse_name(), "[UNAVAILABLE]");
        }
        // A host name after a bad one is still tried (underscores are Postfix's host names too).
        assert_eq!(
            f.lookup(ip("198.51.100.13")).await,
            ClientName::Verified {
                name: "mx_2.good.test".into()
            }
        );
    }

    #[test]
    fn host_names_follow_postfix_valid_hostname() {
        let name = |labels: &[&[u8]]| Name::from_labels(labels.iter().copied()).expect("name");
        assert_eq!(
            host_name(&name(&[b"Mail-1", b"Example", b"ORG"])).as_deref(),
            Some("mail-1.example.org")
        );
        assert_eq!(
            host_name(&name(&[b"a_b", b"test"])).as_deref(),
            Some("a_b.test")
        );
        assert_eq!(
            host_name(&name(&[b"1host", b"test"])).as_deref(),
            Some("1host.test")
        );
        assert_eq!(
            host_name(&name(&[b"localhost"])).as_deref(),
            Some("localhost")
        );
        for bad in [
            name(&[b"1", b"2", b"3", b"4"]),
            name(&[b"123"]),
            name(&[b"-a", b"test"]),
            name(&[b"a-", b"test"]),
            name(&[b"a b", b"test"]),
            name(&[b"a.b", b"test"]),
            name(&[b"a\\b", b"test"]),
            name(&[b"a\r\nb", b"test"]),
            name(&[b"a\0b", b"test"]),
            name(&[b"a=b", b"test"]),
            name(&["\u{e9}".as_bytes(), b"test"]),
            Name::root(),
        ] {
            assert_eq!(host_name(&bad), None, "{bad:?}");
        }
        // The longest a DNS name can be (255 octets on the wire) is a host name.
        let long = name(&[&[b'a'; 63], &[b'b'; 63], &[b'c'; 63], &[b'd'; 61]]);
        assert_eq!(host_name(&long).map(|n| n.len()), Some(253));
    }
}

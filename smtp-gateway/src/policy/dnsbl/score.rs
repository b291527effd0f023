//! What looking one client up in every list found: the total, the sites that matched and the
//! zones that could not be consulted.

use std::{fmt, net::Ipv4Addr};

/// The outcome of looking one client up in every list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsblScore {
    /// Sum of the weights of the sites that matched (saturating).
    pub total: i32,
    /// The sites that matched, in configuration order.
    pub hits: Vec<DnsblHit>,
    /// The zones that could not be consulted (each contributed 0).
    pub failures: Vec<DnsblFailure>,
    /// `total >= threshold`.
    pub listed: bool,
}

/// A site that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblHit {
    /// The list's zone (lowercase, no trailing dot).
    pub zone: String,
    /// The weight added to the total.
    pub weight: i32,
    /// The answers that matched the site's filter.
    pub answers: Vec<Ipv4Addr>,
}

/// A zone that could not be consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblFailure {
    /// The list's zone (lowercase, no trailing dot).
    pub zone: String,
    /// What went wrong.
    pub reason: LookupFailure,
}

/// Why a zone contributed nothing although it may list the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupFailure {
    /// No answer within `dnsbl.timeout`.
    Timeout,
    /// The name server answered with an error (SERVFAIL, REFUSED, ...) or could not be reached.
    Dns(String),
    /// The list answered with one of its error codes (127.255.255.0/24, e.g. Spamhaus' "query
    /// through a public resolver" 127.255.255.254): never scored.
    ListError(Ipv4Addr),
}

impl fmt::Display for LookupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Dns(message) => f.write_str(message),
            Self::ListError(code) => write!(f, "list returned error code {code}"),
        }
    }
}

/// Whether `answer` is one of the error codes lists return instead of a listing.
pub(super) fn is_list_error_code(answer: Ipv4Addr) -> bool {
    matches!(answer.octets(), [127, 255, 255, _])
}

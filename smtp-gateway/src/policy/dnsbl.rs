//! DNSBL/DNSWL scoring in the manner of Postfix postscreen (`postscreen_dnsbl_sites`).
//!
//! Each configured site is `zone[=filter][*weight]`: the client address is looked up as an A
//! record under `zone` (IPv4 octets or IPv6 nibbles reversed), the answers are matched against
//! the optional `filter`, and when at least one answer matches the site's `weight` is added to
//! the score once. Allowlists (DNSWL) use negative weights. A client whose total reaches
//! `threshold` is `listed`.
//!
//! Lookups never reject mail by themselves: a site that times out, fails or answers with a list
//! error code contributes 0 and is reported in [`DnsblScore::failures`]. Several sites may name
//! the same zone with different filters and weights (e.g. one per Spamhaus return code); the zone
//! is queried once.
//!
//! The resolver is built from the configured name servers only: the system configuration
//! (`/etc/resolv.conf`, `/etc/hosts`) is never read.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{NetError, runtime::TokioRuntimeProvider},
    proto::rr::{Name, RData, RecordType},
};
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};
use tokio::task::JoinSet;

/// Shortest accepted `dnsbl.timeout`.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest accepted `dnsbl.timeout` (the SMTP client is waiting for the greeting meanwhile).
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest zone name: 253 characters for a whole name, less 64 for the 32 reversed nibbles of
/// an IPv6 query and their dots.
const MAX_ZONE_LEN: usize = 253 - 64;

/// `[dnsbl]`: DNS block- and allowlists consulted for each connecting client.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsblConfig {
    /// Whether clients are looked up at all (default `false`; `nameservers` and `sites` are then
    /// required).
    pub enabled: bool,
    /// Recursive name servers queried, as `ip:port` (UDP, TCP after a truncated answer). There is
    /// no default and the system resolver is never used: DNSBLs refuse queries from large public
    /// resolvers, so point this at a local one.
    pub nameservers: Vec<SocketAddr>,
    /// Deadline for all lookups of one client together (default `2s`); a site that has not
    /// answered by then contributes 0 and is reported as a failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Total weight at which a client counts as listed (default `3`, at least 1).
    pub threshold: i32,
    /// The lists, each `"zone[=filter][*weight]"` (e.g. `"zen.example=127.0.0.[2..11]*3"`) or a
    /// table `{ zone = "...", filter = "...", weight = N }`. Default: none.
    pub sites: Vec<DnsblSite>,
}

impl Default for DnsblConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            threshold: 3,
            sites: Vec::new(),
        }
    }
}

/// One list: where to look, which answers count, and how much they weigh.
///
/// Deserializes from the postscreen string `zone[=filter][*weight]` or from a table with the
/// same three keys (only `zone` required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblSite {
    /// DNS zone of the list, e.g. `zen.spamhaus.org` (a trailing dot is allowed).
    pub zone: String,
    /// Added to the score when an answer matches (default 1); negative for allowlists, e.g.
    /// `list.dnswl.org*-2`. Zero is refused.
    pub weight: i32,
    /// Answers that count, in postscreen syntax: per octet a number, `[a..b]` or `[a;b;c]`
    /// (items may mix, `[1..3;5]`), e.g. `127.0.[0..255].[1..3]`. `None`: any answer in
    /// 127.0.0.0/8 counts. Answers in 127.255.255.0/24 (list error codes) never count.
    pub filter: Option<String>,
}

/// Weight of a site that does not state one (as in postscreen).
const DEFAULT_WEIGHT: i32 = 1;

/// serde's `default` for [`SiteTable::weight`].
fn default_weight() -> i32 {
    DEFAULT_WEIGHT
}

/// The table form of [`DnsblSite`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteTable {
    /// See [`DnsblSite::zone`].
    zone: String,
    /// See [`DnsblSite::weight`].
    #[serde(default = "default_weight")]
    weight: i32,
    /// See [`DnsblSite::filter`].
    #[serde(default)]
    filter: Option<String>,
}

impl<'de> Deserialize<'de> for DnsblSite {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SiteVisitor;

        impl<'de> Visitor<'de> for SiteVisitor {
            type Value = DnsblSite;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a site string such as \"zen.example=127.0.0.[2..11]*3\" or a table \
                     { zone, filter, weight }",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<DnsblSite, E> {
                value.parse().map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DnsblSite, A::Error> {
                let table = SiteTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(DnsblSite {
                    zone: table.zone,
                    weight: table.weight,
                    filter: table.filter,
                })
            }
        }

        deserializer.deserialize_any(SiteVisitor)
    }
}

/// Why a `zone[=filter][*weight]` string could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{site:?}: the weight after '*' must be an integer such as 3 or -2")]
pub struct SiteSyntaxError {
    /// The string as written.
    pub site: String,
}

impl FromStr for DnsblSite {
    type Err = SiteSyntaxError;

    /// Splits the postscreen form `zone[=filter][*weight]`. Zone and filter are checked by
    /// [`DnsblConfig::validate`], so that the error names the key.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (rest, weight) = match text.rsplit_once('*') {
            Some((rest, weight)) => {
                let weight = weight.trim().parse().map_err(|_| SiteSyntaxError {
                    site: text.to_string(),
                })?;
                (rest, weight)
            }
            None => (text, DEFAULT_WEIGHT),
        };
        let (zone, filter) = match rest.split_once('=') {
            Some((zone, filter)) => (zone, Some(filter.trim().to_string())),
            None => (rest, None),
        };
        Ok(Self {
            zone: zone.trim().to_string(),
            weight,
            filter,
        })
    }
}

impl fmt::Display for DnsblSite {
    /// The postscreen form, `zone[=filter]*weight`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.zone)?;
        if let Some(filter) = &self.filter {
            write!(f, "={filter}")?;
        }
        write!(f, "*{}", self.weight)
    }
}

/// Which A answers of a list count: one matcher per octet (postscreen syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerFilter {
    /// Matchers for the four octets, most significant first.
    octets: [OctetMatch; 4],
}

/// The values one octet may take: a union of inclusive ranges (a single value is `(n, n)`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct OctetMatch {
    /// Inclusive ranges, in the order written.
    ranges: Vec<(u8, u8)>,
}

/// Why a filter such as `127.0.0.[2..11]` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not four dot-separated octets.
    #[error("expected 4 dot-separated octets, found {0}")]
    OctetCount(usize),
    /// An octet item that is not a decimal number.
    #[error("{0:?} is not a decimal number")]
    NotANumber(String),
    /// An octet value above 255.
    #[error("octet value {0} is greater than 255")]
    OutOfRange(String),
    /// A range `a..b` with `a > b`.
    #[error("range {0}..{1} is reversed (start greater than end)")]
    ReversedRange(u8, u8),
    /// A `[` without `]`, or the reverse, or nothing between them.
    #[error("{0:?} is not a number, [a..b] range or [a;b;c] list")]
    Brackets(String),
}

impl FromStr for AnswerFilter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Ranges contain dots too ("[2..11]"): split on the dots outside brackets.
        let fields = split_outside_brackets(text)?;
        let octets: Vec<OctetMatch> = fields
            .iter()
            .map(|field| parse_octet(field))
            .collect::<Result<_, _>>()?;
        let octets: [OctetMatch; 4] = octets
            .try_into()
            .map_err(|v: Vec<OctetMatch>| FilterError::OctetCount(v.len()))?;
        Ok(Self { octets })
    }
}

/// Splits `text` on the dots that are not inside `[...]`.
fn split_outside_brackets(text: &str) -> Result<Vec<&str>, FilterError> {
    let mut fields = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return Err(FilterError::Brackets(text.to_string())),
            '.' if depth == 0 => {
                fields.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(FilterError::Brackets(text.to_string()));
    }
    fields.push(&text[start..]);
    Ok(fields)
}

/// Parses one octet field: `n`, or `[item;item;...]` where an item is `n` or `a..b`.
fn parse_octet(field: &str) -> Result<OctetMatch, FilterError> {
    let inner = match field.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .filter(|inner| !inner.is_empty())
            .ok_or_else(|| FilterError::Brackets(field.to_string()))?,
        None if field.contains(['[', ']', ';']) || field.contains("..") => {
            return Err(FilterError::Brackets(field.to_string()));
        }
        None => field,
    };
    let ranges = inner
        .split(';')
        .map(|item| match item.split_once("..") {
            Some((low, high)) => {
                let (low, high) = (parse_value(low)?, parse_value(high)?);
                if low > high {
                    return Err(FilterError::ReversedRange(low, high));
                }
                Ok((low, high))
            }
            None => parse_value(item).map(|value| (value, value)),
        })
        .collect::<Result<_, _>>()?;
    Ok(OctetMatch { ranges })
}

/// Parses a decimal octet value 0..=255.
fn parse_value(text: &str) -> Result<u8, FilterError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FilterError::NotANumber(text.to_string()));
    }
    // All digits: the only failure left is a value too large for the type.
    text.parse::<u8>()
        .map_err(|_| FilterError::OutOfRange(text.to_string()))
}

impl AnswerFilter {
    /// Whether `answer` matches every octet.
    pub fn matches(&self, answer: Ipv4Addr) -> bool {
        self.octets
            .iter()
            .zip(answer.octets())
            .all(|(octet, value)| {
                octet
                    .ranges
                    .iter()
                    .any(|&(low, high)| (low..=high).contains(&value))
            })
    }
}

impl fmt::Display for AnswerFilter {
    /// The canonical postscreen form, e.g. `127.0.0.[2..3;5]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, octet) in self.octets.iter().enumerate() {
            if index > 0 {
                f.write_str(".")?;
            }
            match octet.ranges.as_slice() {
                [(low, high)] if low == high => write!(f, "{low}")?,
                ranges => {
                    f.write_str("[")?;
                    for (item, (low, high)) in ranges.iter().enumerate() {
                        if item > 0 {
                            f.write_str(";")?;
                        }
                        if low == high {
                            write!(f, "{low}")?;
                        } else {
                            write!(f, "{low}..{high}")?;
                        }
                    }
                    f.write_str("]")?;
                }
            }
        }
        Ok(())
    }
}

/// Why a zone name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// Empty (or only a dot).
    #[error("the zone name is empty")]
    Empty,
    /// Longer than leaves room for an IPv6 query below it.
    #[error("{0:?} is longer than {MAX_ZONE_LEN} characters")]
    TooLong(String),
    /// An empty label, a label over 63 characters, a character outside letters, digits, `-`
    /// and `_`, or a label starting or ending with `-`.
    #[error("{0:?} is not a valid DNS name (labels of 1 to 63 letters, digits, '-' or '_')")]
    BadLabel(String),
}

/// Checks a zone name and returns it lowercased without its trailing dot.
fn normalize_zone(zone: &str) -> Result<String, ZoneError> {
    let name = zone.strip_suffix('.').unwrap_or(zone);
    if name.is_empty() {
        return Err(ZoneError::Empty);
    }
    if name.len() > MAX_ZONE_LEN {
        return Err(ZoneError::TooLong(zone.to_string()));
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(ZoneError::BadLabel(zone.to_string()));
    }
    Ok(name.to_ascii_lowercase())
}

/// What is wrong with a `[dnsbl]` value (the key is in [`DnsblError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `enabled` without `nameservers`.
    #[error("at least one name server is required (the system resolver is never used)")]
    NoNameservers,
    /// `enabled` without `sites`.
    #[error("at least one site is required")]
    NoSites,
    /// A name server with the unspecified address or port 0.
    #[error("{0} is not a usable name server address")]
    Nameserver(SocketAddr),
    /// A timeout outside what the gateway accepts.
    #[error("{} is out of range ({}..={})", humantime::format_duration(*.0),
        humantime::format_duration(MIN_TIMEOUT), humantime::format_duration(MAX_TIMEOUT))]
    Timeout(Duration),
    /// A threshold below 1 (every unlisted client would be listed).
    #[error("{0} is out of range (at least 1, or every client would count as listed)")]
    Threshold(i32),
    /// A bad zone name.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// A bad answer filter.
    #[error("{filter:?}: {source}")]
    Filter {
        /// The filter as written.
        filter: String,
        /// What is wrong with it.
        source: FilterError,
    },
    /// A zero weight (the site could never change the score).
    #[error("must not be 0 (positive for blocklists, negative for allowlists)")]
    ZeroWeight,
}

/// Why a [`Dnsbl`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DnsblError {
    /// A configuration value is unusable.
    #[error("{key}: {problem}")]
    Invalid {
        /// Dotted key of the value, e.g. `dnsbl.sites[1].filter` (sites counted from 0).
        key: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// The resolver could not be built from the name servers.
    #[error("dnsbl.nameservers: cannot build the DNS resolver: {0}")]
    Resolver(#[source] NetError),
}

impl DnsblError {
    /// An `Invalid` error for `key` below `dnsbl.`.
    fn invalid(key: impl fmt::Display, problem: impl Into<Problem>) -> Self {
        Self::Invalid {
            key: format!("dnsbl.{key}"),
            problem: problem.into(),
        }
    }
}

/// A site ready for scoring.
#[derive(Debug)]
struct CompiledSite {
    /// Index into [`Dnsbl::zones`] of the zone this site reads.
    zone: usize,
    /// Added once when an answer matches.
    weight: i32,
    /// `None`: any answer in 127.0.0.0/8.
    filter: Option<AnswerFilter>,
}

impl CompiledSite {
    /// Whether `answer` counts for this site.
    fn matches(&self, answer: Ipv4Addr) -> bool {
        match &self.filter {
            Some(filter) => filter.matches(answer),
            // Unfiltered: ignore what is not a list code, e.g. the address a resolver that
            // rewrites NXDOMAIN returns.
            None => answer.octets()[0] == 127,
        }
    }
}

/// Checks `site` (number `index` in the list) and compiles its filter; returns the normalized
/// zone too.
fn compile_site(
    index: usize,
    site: &DnsblSite,
) -> Result<(String, i32, Option<AnswerFilter>), DnsblError> {
    let zone = normalize_zone(&site.zone)
        .map_err(|e| DnsblError::invalid(format_args!("sites[{index}].zone"), e))?;
    let filter = match &site.filter {
        Some(text) => Some(text.parse::<AnswerFilter>().map_err(|source| {
            DnsblError::invalid(
                format_args!("sites[{index}].filter"),
                Problem::Filter {
                    filter: text.clone(),
                    source,
                },
            )
        })?),
        None => None,
    };
    if site.weight == 0 {
        return Err(DnsblError::invalid(
            format_args!("sites[{index}].weight"),
            Problem::ZeroWeight,
        ));
    }
    Ok((zone, site.weight, filter))
}

impl DnsblConfig {
    /// Checks values serde cannot; returns the dotted key (`dnsbl.…`) and the reason, like
    /// `Config::validate`. Sites are checked even when the section is disabled.
    pub fn validate(&self) -> Result<(), crate::config::invalid::Invalid> {
        use crate::config::invalid::Invalid;
        self.check(self.enabled).map_err(|e| match e {
            DnsblError::Invalid { key, problem } => Invalid::new(key, problem.to_string()),
            other => Invalid::new("dnsbl", other.to_string()),
        })
    }

    /// The checks behind [`validate`](Self::validate); `in_use` requires name servers and sites.
    fn check(&self, in_use: bool) -> Result<(), DnsblError> {
        if in_use && self.nameservers.is_empty() {
            return Err(DnsblError::invalid("nameservers", Problem::NoNameservers));
        }
        if let Some(addr) = self
            .nameservers
            .iter()
            .find(|a| a.ip().is_unspecified() || a.port() == 0)
        {
            return Err(DnsblError::invalid(
                "nameservers",
                Problem::Nameserver(*addr),
            ));
        }
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&self.timeout) {
            return Err(DnsblError::invalid(
                "timeout",
                Problem::Timeout(self.timeout),
            ));
        }
        if self.threshold < 1 {
            return Err(DnsblError::invalid(
                "threshold",
                Problem::Threshold(self.threshold),
            ));
        }
        if in_use && self.sites.is_empty() {
            return Err(DnsblError::invalid("sites", Problem::NoSites));
        }
        for (index, site) in self.sites.iter().enumerate() {
            compile_site(index, site)?;
        }
        Ok(())
    }
}

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
fn is_list_error_code(answer: Ipv4Addr) -> bool {
    matches!(answer.octets(), [127, 255, 255, _])
}

/// DNSBL/DNSWL scorer: the compiled sites and a resolver over the configured name servers.
#[derive(Debug)]
pub struct Dnsbl {
    /// Resolver over `dnsbl.nameservers` only (it caches answers up to their TTL).
    resolver: TokioResolver,
    /// Distinct zones, each queried once per client.
    zones: Vec<String>,
    /// The sites in configuration order.
    sites: Vec<CompiledSite>,
    /// Deadline for all lookups of one client.
    timeout: Duration,
    /// Total at which a client is listed.
    threshold: i32,
}

impl Dnsbl {
    /// Checks `config` (whether `enabled` or not: name servers and sites are required) and
    /// builds the resolver. No I/O happens until [`score`](Self::score).
    pub fn new(config: &DnsblConfig) -> Result<Self, DnsblError> {
        config.check(true)?;
        let mut zones: Vec<String> = Vec::new();
        let mut sites = Vec::with_capacity(config.sites.len());
        for (index, site) in config.sites.iter().enumerate() {
            let (zone, weight, filter) = compile_site(index, site)?;
            let zone = match zones.iter().position(|z| *z == zone) {
                Some(existing) => existing,
                None => {
                    zones.push(zone);
                    zones.len() - 1
                }
            };
            sites.push(CompiledSite {
                zone,
                weight,
                filter,
            });
        }

        let name_servers = config
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut options = ResolverOpts::default();
        // One retransmission within the deadline; `score` enforces the deadline itself.
        options.timeout = config.timeout / 2;
        options.attempts = 1;
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .map_err(DnsblError::Resolver)?;

        Ok(Self {
            resolver,
            zones,
            sites,
            timeout: config.timeout,
            threshold: config.threshold,
        })
    }

    /// Looks `client` up in every zone concurrently and adds up the weights of the sites that
    /// match. Returns within the configured timeout (plus scheduling delay); zones that have
    /// not answered by then are reported as [`LookupFailure::Timeout`].
    pub async fn score(&self, client: IpAddr) -> DnsblScore {
        let mut lookups = JoinSet::new();
        for (index, zone) in self.zones.iter().enumerate() {
            let resolver = self.resolver.clone();
            let name = query_name(client, zone);
            lookups.spawn(async move { (index, lookup_a(&resolver, &name).await) });
        }
        let mut results: Vec<Option<Result<Vec<Ipv4Addr>, LookupFailure>>> =
            self.zones.iter().map(|_| None).collect();
        let collect = async {
            while let Some(joined) = lookups.join_next().await {
                match joined {
                    Ok((index, result)) => {
                        if let Some(slot) = results.get_mut(index) {
                            *slot = Some(result);
                        }
                    }
                    Err(e) => tracing::warn!("DNSBL lookup task ended abnormally: {e}"),
                }
            }
        };
        let timed_out = tokio::time::timeout(self.timeout, collect).await.is_err();
        // Dropping the set aborts the lookups still running.
        drop(lookups);

        let mut score = DnsblScore::default();
        let mut answers: Vec<Vec<Ipv4Addr>> = Vec::with_capacity(self.zones.len());
        for (zone, result) in self.zones.iter().zip(results) {
            let result = result.unwrap_or_else(|| {
                Err(if timed_out {
                    LookupFailure::Timeout
                } else {
                    LookupFailure::Dns("lookup task ended abnormally".into())
                })
            });
            let mut listed = Vec::new();
            match result {
                Ok(found) => {
                    for answer in found {
                        if is_list_error_code(answer) {
                            score.failures.push(DnsblFailure {
                                zone: zone.clone(),
                                reason: LookupFailure::ListError(answer),
                            });
                        } else {
                            listed.push(answer);
                        }
                    }
                }
                Err(reason) => score.failures.push(DnsblFailure {
                    zone: zone.clone(),
                    reason,
                }),
            }
            answers.push(listed);
        }
        for failure in &score.failures {
            tracing::debug!(%client, zone = %failure.zone, "DNSBL lookup failed: {}", failure.reason);
        }

        for site in &self.sites {
            let (Some(zone), Some(zone_answers)) =
                (self.zones.get(site.zone), answers.get(site.zone))
            else {
                continue;
            };
            let matched: Vec<Ipv4Addr> = zone_answers
                .iter()
                .copied()
                .filter(|a| site.matches(*a))
                .collect();
            if !matched.is_empty() {
                score.total = score.total.saturating_add(site.weight);
                score.hits.push(DnsblHit {
                    zone: zone.clone(),
                    weight: site.weight,
                    answers: matched,
                });
            }
        }
        score.listed = score.total >= self.threshold;
        score
    }
}

/// The A answers for `name`: empty when the name does not exist or has no A record.
async fn lookup_a(resolver: &TokioResolver, name: &str) -> Result<Vec<Ipv4Addr>, LookupFailure> {
    let name = Name::from_ascii(name)
        .map_err(|e| LookupFailure::Dns(format!("bad query name {name:?}: {e}")))?;
    match resolver.lookup(name, RecordType::A).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()),
        // NXDOMAIN or NODATA: not listed.
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(NetError::Timeout) => Err(LookupFailure::Timeout),
        Err(e) => Err(LookupFailure::Dns(e.to_string())),
    }
}

/// The fully qualified query name for `client` under `zone`: IPv4 octets reversed
/// (`7.100.51.198.zone.`), IPv6 nibbles reversed (32 labels). IPv4-mapped IPv6 addresses are
/// looked up as IPv4.
fn query_name(client: IpAddr, zone: &str) -> String {
    use std::fmt::Write as _;

    let mut name = String::with_capacity(64 + zone.len() + 2);
    match client.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            // Writing to a String cannot fail.
            let _ = write!(name, "{d}.{c}.{b}.{a}.");
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(zone);
    name.push('.');
    name
}

#[cfg(test)]
#[path = "dnsbl_test_server.rs"]
mod test_server;

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv6Addr,
        time::{Duration, Instant},
    };

    use super::test_server::{TestDnsServer, Zones};
    use super::*;

    fn ip4(text: &str) -> Ipv4Addr {
        text.parse().expect("test address")
    }

    fn filter(text: &str) -> AnswerFilter {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn site(text: &str) -> DnsblSite {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    /// Parses `[dnsbl]` TOML the way the configuration file is read.
    fn parse_section(text: &str) -> Result<DnsblConfig, toml::de::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            dnsbl: DnsblConfig,
        }
        toml::from_str::<File>(text).map(|f| f.dnsbl)
    }

    // ---- filters ----

    #[test]
    fn filters_in_postscreen_syntax_match_what_they_say() {
        // (filter, matching answers, non-matching answers)
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "127.0.0.2",
                &["127.0.0.2"],
                &["127.0.0.3", "127.0.1.2", "128.0.0.2"],
            ),
            (
                "127.0.0.[2..11]",
                &["127.0.0.2", "127.0.0.5", "127.0.0.11"],
                &["127.0.0.1", "127.0.0.12"],
            ),
            (
                "127.0.0.[2;3;4]",
                &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
                &["127.0.0.5", "127.0.0.1"],
            ),
            (
                "127.0.[0..255].[1..3]",
                &["127.0.0.1", "127.0.15.3", "127.0.255.2"],
                &["127.0.15.0", "127.0.15.4", "127.1.0.1"],
            ),
            (
                "127.0.0.[1..3;10]",
                &["127.0.0.1", "127.0.0.10"],
                &["127.0.0.4", "127.0.0.11"],
            ),
            ("[127].0.0.[2]", &["127.0.0.2"], &["127.0.0.3"]),
            (
                "127.0.0.[0..255]",
                &["127.0.0.0", "127.0.0.255"],
                &["127.0.1.0"],
            ),
        ];
        for (text, hits, misses) in cases {
            let f = filter(text);
            for answer in *hits {
                assert!(f.matches(ip4(answer)), "{text} should match {answer}");
            }
            for answer in *misses {
                assert!(!f.matches(ip4(answer)), "{text} should not match {answer}");
            }
        }
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let cases: &[(&str, FilterError)] = &[
            ("127.0.0.256", FilterError::OutOfRange("256".into())),
            (
                "127.0.0.99999999999999999999",
                FilterError::OutOfRange("99999999999999999999".into()),
            ),
            ("127.0.0.[2..300]", FilterError::OutOfRange("300".into())),
            ("127.0.0.[11..2]", FilterError::ReversedRange(11, 2)),
            ("127.0.0", FilterError::OctetCount(3)),
            ("127.0.0.2.1", FilterError::OctetCount(5)),
            ("", FilterError::NotANumber(String::new())),
            ("127.0.0.x", FilterError::NotANumber("x".into())),
            ("127.0.0.-1", FilterError::NotANumber("-1".into())),
            ("127.0.0. 2", FilterError::NotANumber(" 2".into())),
            ("127.0.0.[2;;3]", FilterError::NotANumber(String::new())),
            ("127.0.0.[]", FilterError::Brackets("[]".into())),
            ("127.0.0.[2", FilterError::Brackets("127.0.0.[2".into())),
            ("127.0.0.2]", FilterError::Brackets("127.0.0.2]".into())),
            (
                "127.0.0.[[2]]",
                FilterError::Brackets("127.0.0.[[2]]".into()),
            ),
            ("127.0.0.2..3", FilterError::NotANumber(String::new())),
            ("127.0.0.2;3", FilterError::Brackets("2;3".into())),
        ];
        for (text, expected) in cases {
            let got = text.parse::<AnswerFilter>().err();
            assert_eq!(got.as_ref(), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn filters_display_in_canonical_form() {
        for (text, canonical) in [
            ("127.0.0.2", "127.0.0.2"),
            ("127.0.0.[2..11]", "127.0.0.[2..11]"),
            ("127.0.0.[2;3;4]", "127.0.0.[2;3;4]"),
            ("[127].0.[0..255].[1..3;9]", "127.0.[0..255].[1..3;9]"),
            ("127.0.0.[5..5]", "127.0.0.5"),
        ] {
            assert_eq!(filter(text).to_string(), canonical);
            assert_eq!(filter(canonical), filter(text));
        }
    }

    // ---- query names ----

    #[test]
    fn ipv4_query_name_reverses_the_octets() {
        assert_eq!(
            query_name("198.51.100.7".parse().expect("ip"), "zen.example"),
            "7.100.51.198.zen.example."
        );
        // IPv4-mapped IPv6 is looked up as the IPv4 address it carries.
        assert_eq!(
            query_name("::ffff:198.51.100.7".parse().expect("ip"), "zen.example"),
            "7.100.51.198.zen.example."
        );
    }

    #[test]
    fn ipv6_query_name_reverses_the_nibbles() {
        let client: IpAddr = "2001:db8::7".parse().expect("ip");
        assert_eq!(
            query_name(client, "zen.example"),
            "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example."
        );
        let client = IpAddr::V6(Ipv6Addr::new(0xfedc, 0xba98, 0, 0, 0, 0, 0x1234, 0x5678));
        let name = query_name(client, "z");
        assert!(name.starts_with("8.7.6.5.4.3.2.1."), "{name}");
        assert!(name.ends_with("8.9.a.b.c.d.e.f.z."), "{name}");
        assert_eq!(name.split('.').count(), 32 + 2);
    }

    #[test]
    fn query_names_fit_in_a_dns_name_for_the_longest_zone() {
        let label = "a".repeat(62);
        let zone = format!("{label}.{label}.{}.b", "a".repeat(61));
        assert_eq!(zone.len(), MAX_ZONE_LEN);
        assert_eq!(normalize_zone(&zone).as_deref(), Ok(zone.as_str()));
        let name = query_name("2001:db8::7".parse().expect("ip"), &zone);
        assert!(Name::from_ascii(&name).is_ok(), "{name}");
        let too_long = format!("c{zone}");
        assert!(matches!(
            normalize_zone(&too_long),
            Err(ZoneError::TooLong(_))
        ));
    }

    #[test]
    fn zone_names_are_checked_and_normalized() {
        assert_eq!(normalize_zone("Zen.Example."), Ok("zen.example".into()));
        assert_eq!(
            normalize_zone("b.barracudacentral.org"),
            Ok("b.barracudacentral.org".into())
        );
        assert_eq!(
            normalize_zone("key_1.zen.dq.example"),
            Ok("key_1.zen.dq.example".into())
        );
        assert_eq!(normalize_zone(""), Err(ZoneError::Empty));
        assert_eq!(normalize_zone("."), Err(ZoneError::Empty));
        for bad in [
            "zen..example",
            "zen example",
            "-zen.example",
            "zen-.example",
            "zen.example..",
            "zen/x",
        ] {
            assert_eq!(
                normalize_zone(bad),
                Err(ZoneError::BadLabel(bad.into())),
                "{bad:?}"
            );
        }
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(matches!(
            normalize_zone(&long_label),
            Err(ZoneError::BadLabel(_))
        ));
    }

    // ---- configuration ----

    #[test]
    fn compact_site_strings_split_into_zone_filter_weight() {
        let cases = [
            (
                "zen.example=127.0.0.[2..11]*3",
                "zen.example",
                Some("127.0.0.[2..11]"),
                3,
            ),
            (
                "list.dnswl.example=127.0.[0..255].[1..3]*-2",
                "list.dnswl.example",
                Some("127.0.[0..255].[1..3]"),
                -2,
            ),
            ("bl.example", "bl.example", None, 1),
            ("bl.example*2", "bl.example", None, 2),
            ("bl.example=127.0.0.2", "bl.example", Some("127.0.0.2"), 1),
            (
                " bl.example = 127.0.0.2 * 4 ",
                "bl.example",
                Some("127.0.0.2"),
                4,
            ),
        ];
        for (text, zone, filter, weight) in cases {
            let s = site(text);
            assert_eq!(s.zone, zone, "{text}");
            assert_eq!(s.filter.as_deref(), filter, "{text}");
            assert_eq!(s.weight, weight, "{text}");
        }
        assert_eq!(
            site("zen.example=127.0.0.[2..11]*3").to_string(),
            "zen.example=127.0.0.[2..11]*3"
        );
        assert_eq!(site("bl.example").to_string(), "bl.example*1");
        for bad in [
            "bl.example*",
            "bl.example*x",
            "bl.example*1.5",
            "bl.example*99999999999",
        ] {
            assert!(bad.parse::<DnsblSite>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_section_gives_documented_defaults() {
        let c = parse_section("[dnsbl]\n").expect("empty section is valid");
        assert_eq!(c, DnsblConfig::default());
        assert!(!c.enabled);
        assert!(c.nameservers.is_empty());
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.threshold, 3);
        assert!(c.sites.is_empty());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn sites_deserialize_from_strings_and_tables() {
        let c = parse_section(
            r#"
            [dnsbl]
            enabled = true
            nameservers = ["127.0.0.1:53", "[::1]:5353"]
            timeout = "1500ms"
            threshold = 4
            sites = [
                "zen.example=127.0.0.[2..11]*3",
                { zone = "list.dnswl.example", filter = "127.0.[0..255].[1..3]", weight = -2 },
                { zone = "bl.example" },
            ]
            "#,
        )
        .expect("valid section");
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.threshold, 4);
        assert_eq!(c.nameservers.len(), 2);
        assert_eq!(
            c.sites,
            vec![
                site("zen.example=127.0.0.[2..11]*3"),
                site("list.dnswl.example=127.0.[0..255].[1..3]*-2"),
                site("bl.example*1"),
            ]
        );
        assert_eq!(c.validate(), Ok(()));

        // Array-of-tables form.
        let c = parse_section("[dnsbl]\n[[dnsbl.sites]]\nzone = \"zen.example\"\nweight = 2\n")
            .expect("valid section");
        assert_eq!(c.sites, vec![site("zen.example*2")]);
    }

    #[test]
    fn unknown_keys_and_bad_types_are_refused() {
        let err = parse_section("[dnsbl]\nthreshhold = 3\n").unwrap_err();
        assert!(err.to_string().contains("threshhold"), "{err}");
        let err =
            parse_section("[dnsbl]\nsites = [{ zone = \"a.example\", wieght = 2 }]\n").unwrap_err();
        assert!(err.to_string().contains("wieght"), "{err}");
        let err = parse_section("[dnsbl]\nsites = [{ weight = 2 }]\n").unwrap_err();
        assert!(err.to_string().contains("zone"), "{err}");
        let err = parse_section("[dnsbl]\nsites = [\"a.example*two\"]\n").unwrap_err();
        assert!(err.to_string().contains("weight"), "{err}");
        let err = parse_section("[dnsbl]\nsites = [3]\n").unwrap_err();
        assert!(err.to_string().contains("site string"), "{err}");
        let err = parse_section("[dnsbl]\nnameservers = [\"127.0.0.1\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("nameservers") || err.to_string().contains("socket"),
            "{err}"
        );
        let err = parse_section("[dnsbl]\ntimeout = \"2 fortnights\"\n").unwrap_err();
        assert!(
            err.to_string().contains("timeout") || err.to_string().contains("unit"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let base = DnsblConfig {
            enabled: true,
            nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
            sites: vec![site("zen.example*3")],
            ..DnsblConfig::default()
        };
        assert_eq!(base.validate(), Ok(()));
        let key_of = |c: &DnsblConfig| {
            let e = c.validate().expect_err("should be refused");
            (e.key, e.reason)
        };

        let c = DnsblConfig {
            nameservers: vec![],
            ..base.clone()
        };
        let (key, message) = key_of(&c);
        assert_eq!(key, "dnsbl.nameservers");
        assert!(message.contains("name server"), "{message}");
        // Disabled: nothing required, but what is written must still be valid.
        assert_eq!(
            DnsblConfig {
                enabled: false,
                ..c.clone()
            }
            .validate(),
            Ok(())
        );

        let c = DnsblConfig {
            sites: vec![],
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.sites");

        let c = DnsblConfig {
            nameservers: vec!["0.0.0.0:53".parse().expect("addr")],
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.nameservers");
        let c = DnsblConfig {
            nameservers: vec!["127.0.0.1:0".parse().expect("addr")],
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.nameservers");

        let c = DnsblConfig {
            timeout: Duration::ZERO,
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.timeout");
        let c = DnsblConfig {
            timeout: Duration::from_secs(61),
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.timeout");
        let c = DnsblConfig {
            threshold: 0,
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.threshold");

        let with_site = |text: &str| DnsblConfig {
            enabled: false,
            sites: vec![site("ok.example"), site(text)],
            ..base.clone()
        };
        let (key, message) = key_of(&with_site("zen..example*3"));
        assert_eq!(key, "dnsbl.sites[1].zone");
        assert!(message.contains("zen..example"), "{message}");
        let (key, message) = key_of(&with_site("zen.example=127.0.0.256*3"));
        assert_eq!(key, "dnsbl.sites[1].filter");
        assert!(
            message.contains("256") && message.contains("greater than 255"),
            "{message}"
        );
        let (key, message) = key_of(&with_site("zen.example=127.0.0.[11..2]*3"));
        assert_eq!(key, "dnsbl.sites[1].filter");
        assert!(
            message.contains("11..2") && message.contains("reversed"),
            "{message}"
        );
        let (key, _) = key_of(&with_site("zen.example*0"));
        assert_eq!(key, "dnsbl.sites[1].weight");
        let (key, _) = key_of(&with_site("=127.0.0.2*3"));
        assert_eq!(key, "dnsbl.sites[1].zone");
    }

    #[test]
    fn new_refuses_what_validation_refuses() {
        let err = Dnsbl::new(&DnsblConfig::default()).unwrap_err();
        assert!(err.to_string().starts_with("dnsbl.nameservers:"), "{err}");
        let config = DnsblConfig {
            nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
            sites: vec![site("zen.example=127.0.0.[2..1]")],
            ..DnsblConfig::default()
        };
        let err = Dnsbl::new(&config).unwrap_err();
        assert!(
            matches!(&err, DnsblError::Invalid { key, problem: Problem::Filter { .. } } if key == "dnsbl.sites[0].filter"),
            "{err}"
        );
        let config = DnsblConfig {
            nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
            ..DnsblConfig::default()
        };
        assert!(matches!(
            Dnsbl::new(&config),
            Err(DnsblError::Invalid {
                problem: Problem::NoSites,
                ..
            })
        ));
    }

    // ---- lookups against a local DNS server ----

    const LISTED: &str = "198.51.100.7";
    const LISTED_BOTH: &str = "198.51.100.8";
    const UNLISTED: &str = "198.51.100.9";
    const LISTED_V6: &str = "2001:db8::7";
    const ERROR_CODE: &str = "198.51.100.20";
    const HIJACKED: &str = "198.51.100.21";

    /// `zen.test` lists LISTED (127.0.0.2, 127.0.0.10), LISTED_BOTH (127.0.0.3) and LISTED_V6
    /// (127.0.0.4); `wl.test` lists LISTED_BOTH (127.0.0.15); `other.test` lists LISTED
    /// (127.0.0.2); `codes.test` answers an error code and a non-loopback address;
    /// `drop.test` never answers; `fail.test` answers SERVFAIL.
    async fn server() -> TestDnsServer {
        let v6_name = query_name(LISTED_V6.parse().expect("ip"), "zen.test");
        let name = |client: &str, zone: &str| query_name(client.parse().expect("ip"), zone);
        TestDnsServer::start(
            Zones::default()
                .a(
                    &name(LISTED, "zen.test"),
                    &[ip4("127.0.0.2"), ip4("127.0.0.10")],
                )
                .a(&name(LISTED_BOTH, "zen.test"), &[ip4("127.0.0.3")])
                .a(&v6_name, &[ip4("127.0.0.4")])
                .a(&name(LISTED_BOTH, "wl.test"), &[ip4("127.0.0.15")])
                .a(&name(LISTED, "other.test"), &[ip4("127.0.0.2")])
                .a(&name(ERROR_CODE, "codes.test"), &[ip4("127.255.255.254")])
                .a(&name(HIJACKED, "codes.test"), &[ip4("192.0.2.1")])
                .silent("drop.test")
                .servfail("fail.test"),
        )
        .await
    }

    /// Deadline for the lookups that the server answers (generous: they take milliseconds).
    const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
    /// How late after its deadline `score` may return.
    const MARGIN: Duration = Duration::from_millis(500);

    fn scorer(server: &TestDnsServer, sites: &[&str], timeout: Duration) -> Dnsbl {
        Dnsbl::new(&DnsblConfig {
            enabled: true,
            nameservers: vec![server.addr()],
            timeout,
            threshold: 3,
            sites: sites.iter().map(|s| site(s)).collect(),
        })
        .expect("test configuration is valid")
    }

    async fn score(dnsbl: &Dnsbl, client: &str) -> DnsblScore {
        dnsbl.score(client.parse().expect("client address")).await
    }

    #[tokio::test]
    async fn listed_client_reaches_the_threshold() {
        let server = server().await;
        let dnsbl = scorer(&server, &["zen.test*3"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, LISTED).await;
        assert_eq!(s.failures, vec![]);
        assert_eq!(s.total, 3);
        assert!(s.listed);
        assert_eq!(
            s.hits,
            vec![DnsblHit {
                zone: "zen.test".into(),
                weight: 3,
                answers: vec![ip4("127.0.0.2"), ip4("127.0.0.10")],
            }]
        );
        assert_eq!(server.queries(), vec!["7.100.51.198.zen.test".to_string()]);
    }

    #[tokio::test]
    async fn filter_excludes_answers() {
        let server = server().await;
        let dnsbl = scorer(
            &server,
            &["zen.test=127.0.0.[2..3]*3", "zen.test=127.0.0.[4..9]*5"],
            LOOKUP_TIMEOUT,
        );
        let s = score(&dnsbl, LISTED).await;
        assert_eq!(s.total, 3);
        assert_eq!(s.hits.len(), 1);
        assert_eq!(s.hits[0].answers, vec![ip4("127.0.0.2")]);
        assert!(s.failures.is_empty());
        // Both sites read the same zone: one query.
        assert_eq!(server.queries().len(), 1);

        let dnsbl = scorer(&server, &["zen.test=127.0.0.[4..9]*5"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, LISTED).await;
        assert_eq!((s.total, s.listed, s.hits.len()), (0, false, 0));
    }

    #[tokio::test]
    async fn weights_add_up_across_sites() {
        let server = server().await;
        let dnsbl = scorer(
            &server,
            &[
                "zen.test=127.0.0.2*1",
                "zen.test=127.0.0.10*2",
                "other.test*2",
                "wl.test*-5",
            ],
            LOOKUP_TIMEOUT,
        );
        let s = score(&dnsbl, LISTED).await;
        assert_eq!(s.total, 5);
        assert!(s.listed);
        let zones: Vec<(&str, i32)> = s.hits.iter().map(|h| (h.zone.as_str(), h.weight)).collect();
        assert_eq!(
            zones,
            vec![("zen.test", 1), ("zen.test", 2), ("other.test", 2)]
        );
        assert!(s.failures.is_empty());
        let mut queries = server.queries();
        queries.sort();
        assert_eq!(
            queries,
            vec![
                "7.100.51.198.other.test",
                "7.100.51.198.wl.test",
                "7.100.51.198.zen.test"
            ]
        );
    }

    #[tokio::test]
    async fn allowlist_weight_cancels_a_listing() {
        let server = server().await;
        let dnsbl = scorer(
            &server,
            &["zen.test*3", "wl.test=127.0.[0..255].[15]*-3"],
            LOOKUP_TIMEOUT,
        );
        let s = score(&dnsbl, LISTED_BOTH).await;
        assert_eq!(s.total, 0);
        assert!(!s.listed);
        assert_eq!(s.hits.len(), 2);
        assert_eq!(s.hits[1].zone, "wl.test");
        assert_eq!(s.hits[1].weight, -3);
        assert_eq!(s.hits[1].answers, vec![ip4("127.0.0.15")]);
        // On the blocklist only: the allowlist takes nothing away.
        let s = score(&dnsbl, LISTED).await;
        assert_eq!((s.total, s.listed), (3, true));
    }

    #[tokio::test]
    async fn unlisted_client_scores_zero() {
        let server = server().await;
        let dnsbl = scorer(
            &server,
            &["zen.test*3", "wl.test*-2", "other.test"],
            LOOKUP_TIMEOUT,
        );
        let s = score(&dnsbl, UNLISTED).await;
        assert_eq!(s, DnsblScore::default());
    }

    #[tokio::test]
    async fn ipv6_client_is_looked_up_by_nibbles() {
        let server = server().await;
        let dnsbl = scorer(&server, &["zen.test*4"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, LISTED_V6).await;
        assert_eq!(s.total, 4);
        assert_eq!(s.hits[0].answers, vec![ip4("127.0.0.4")]);
        assert_eq!(
            server.queries(),
            vec![
                "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test"
                    .to_string()
            ]
        );
        let s = score(&dnsbl, "2001:db8::8").await;
        assert_eq!(s, DnsblScore::default());
    }

    #[tokio::test]
    async fn silent_zone_times_out_within_the_deadline_and_scores_zero() {
        let server = server().await;
        let timeout = Duration::from_millis(300);
        let dnsbl = scorer(&server, &["drop.test*5", "zen.test*3"], timeout);
        let started = Instant::now();
        let s = score(&dnsbl, LISTED).await;
        let elapsed = started.elapsed();
        assert!(elapsed < timeout + MARGIN, "took {elapsed:?}");
        assert_eq!(
            s.failures,
            vec![DnsblFailure {
                zone: "drop.test".into(),
                reason: LookupFailure::Timeout,
            }]
        );
        // What did answer still counts.
        assert_eq!(s.total, 3);
        assert_eq!(s.hits.len(), 1);

        let dnsbl = scorer(&server, &["drop.test*5"], timeout);
        let started = Instant::now();
        let s = score(&dnsbl, LISTED).await;
        assert!(started.elapsed() < timeout + MARGIN);
        assert_eq!((s.total, s.listed, s.failures.len()), (0, false, 1));
    }

    #[tokio::test]
    async fn servfail_is_a_failure_not_a_listing() {
        let server = server().await;
        let dnsbl = scorer(&server, &["fail.test*5"], LOOKUP_TIMEOUT);
        let started = Instant::now();
        let s = score(&dnsbl, LISTED).await;
        assert!(
            started.elapsed() < LOOKUP_TIMEOUT,
            "SERVFAIL should not wait for the deadline"
        );
        assert_eq!(s.total, 0);
        assert_eq!(s.failures.len(), 1);
        assert_eq!(s.failures[0].zone, "fail.test");
        assert!(
            matches!(&s.failures[0].reason, LookupFailure::Dns(m) if m.contains("Server Failure")),
            "{:?}",
            s.failures[0].reason
        );
    }

    #[tokio::test]
    async fn list_error_codes_and_foreign_answers_never_score() {
        let server = server().await;
        let dnsbl = scorer(&server, &["codes.test*5"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, ERROR_CODE).await;
        assert_eq!(s.total, 0);
        assert_eq!(
            s.failures,
            vec![DnsblFailure {
                zone: "codes.test".into(),
                reason: LookupFailure::ListError(ip4("127.255.255.254")),
            }]
        );
        // An unfiltered site only counts 127.0.0.0/8 answers (not a resolver's NXDOMAIN rewrite).
        let s = score(&dnsbl, HIJACKED).await;
        assert_eq!(s, DnsblScore::default());
        // An explicit filter decides by itself.
        let dnsbl = scorer(&server, &["codes.test=192.0.2.[0..255]*5"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, HIJACKED).await;
        assert_eq!(s.total, 5);
    }

    #[tokio::test]
    async fn unreachable_name_server_is_a_failure() {
        // A port nobody listens on: ICMP port unreachable, or a timeout.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        drop(socket);
        let timeout = Duration::from_millis(300);
        let dnsbl = Dnsbl::new(&DnsblConfig {
            enabled: true,
            nameservers: vec![addr],
            timeout,
            threshold: 3,
            sites: vec![site("zen.test*3")],
        })
        .expect("valid");
        let started = Instant::now();
        let s = score(&dnsbl, LISTED).await;
        assert!(started.elapsed() < timeout + MARGIN);
        assert_eq!((s.total, s.listed, s.failures.len()), (0, false, 1));
    }
}

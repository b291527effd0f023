//! Large local reputation lists: sender domains, sender addresses, HELO names and client IPs,
//! loaded from text files at start (and on reload) and looked up on every session.
//!
//! Each list answers "is this value listed?" with a bloom filter as the cheap first test and an
//! exact store as the confirmation: a value counts as listed only when the bloom filter says
//! "maybe" **and** the exact store holds it. A bloom false positive therefore costs one extra
//! lookup and never rejects mail; a bloom filter has no false negatives, so nothing listed is
//! missed. The bloom filter's seed is random per load, so nobody can precompute values that hit it.
//!
//! # Memory per entry
//! - bloom filter: `-ln(p) / ln(2)^2` bits, i.e. 14.4 bits (1.8 bytes) at the default
//!   `false_positive_rate` of 0.001, plus a 45-byte header per list;
//! - names (domains, addresses, HELO names): one text arena holding the sorted, deduplicated,
//!   normalized entries back to back, plus one `u32` end offset per entry: **entry length + 4
//!   bytes**, no per-entry allocation or pointer. A list's text may not exceed 4 GiB;
//! - IP addresses: sorted `u32` (IPv4, 4 bytes) and `u128` (IPv6, 16 bytes) arrays;
//! - IP prefixes (not in the bloom filter): one sorted array of network addresses per distinct
//!   prefix length, 4 or 16 bytes per prefix.
//!
//! # Lookup cost
//! Names and addresses: the bloom filter (two SipHash-1-3 hashes of the key, then up to `k` bit
//! probes, usually one or two for a non-member), then on a hit a binary search, O(log n) string or
//! integer comparisons. Prefixes: for each distinct prefix length present, mask the address and
//! binary-search that length's array: O(L log m) with L <= 31 (IPv4) or 127 (IPv6) lengths.
//! A sender domain is probed with each of its parent domains (one probe per label).
//!
//! # File format
//! UTF-8 text, one entry per line; blank lines are skipped; `#` starts a comment at the beginning
//! of a line or after whitespace (`# spam`, `example.com  # since 2024`). Duplicates are merged.
//! Every other line must be a valid entry of the list's kind: a bad line fails the load with the
//! file and line number (a silently skipped line is an entry nobody knows is missing).
//!
//! # Normalization (the same on both sides, entries and lookups)
//! - domains and HELO names: lowercase (Unicode), one trailing dot removed. Entries must be
//!   domain names (letters, digits, inner hyphens, or UTF-8 labels). Internationalized names are
//!   not converted: list both the UTF-8 and the `xn--` form;
//! - sender addresses: split at the last `@`; local part and domain are both lowercased. RFC 5321
//!   allows case-sensitive local parts, but virtually every mail system treats them
//!   case-insensitively, and so do lists: `John@Example.com` matches the entry `john@example.com`;
//! - HELO address literals (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) are written canonically; a bare
//!   address (`192.0.2.1`) is a name like any other and does not match the literal;
//! - IP addresses: IPv4-mapped IPv6 (`::ffff:192.0.2.1`) is IPv4, for entries, prefixes
//!   (`::ffff:192.0.2.0/120` is `192.0.2.0/24`) and lookups.
//!
//! # Matching
//! - `sender_address`: the whole address;
//! - `sender_domain`: the address's domain and each of its parents: the entry `example.com`
//!   matches `a@example.com` and `a@mail.example.com` (an entry may be a bare TLD such as `zip`);
//! - `helo`: the whole name, exactly (no parent matching);
//! - `ip`: the exact address, or any listed prefix containing it.
//!
//! Loading reads files synchronously: call [`Reputation::load`] from `spawn_blocking` (a million
//! entries take well under a second in release builds). A reload builds a new [`Reputation`] and
//! swaps it in; a failed load leaves the old one in place.

use std::{
    borrow::Cow,
    fmt,
    fs::File,
    io::{self, BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use bloomfilter::Bloom;
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use super::relay::{check_domain_syntax, parse_address_literal};

/// Default `false_positive_rate` of a list's bloom filter.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 0.001;

/// `false_positive_rate` must be below this (a filter that says "maybe" half the time is useless).
const MAX_FALSE_POSITIVE_RATE: f64 = 0.5;

/// Longest list name: it is the check detail in logs, metrics and replies.
const MAX_NAME_LEN: usize = 64;

/// Longest part of a bad entry quoted in an error.
const MAX_QUOTED_ENTRY: usize = 80;

/// Read buffer for list files.
const READ_BUFFER: usize = 64 * 1024;

/// `[reputation]`: local reputation lists.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// The lists, each a `[[reputation.lists]]` table. Default: none.
    pub lists: Vec<ListConfig>,
}

/// One `[[reputation.lists]]` entry: a file of entries of one kind.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// The list's name, reported as the detail of the check that fired: 1 to 64 ASCII letters,
    /// digits, `-`, `_` or `.`, unique (case-insensitively) among the lists. Required.
    pub name: String,
    /// What the entries are: `sender_domain`, `sender_address`, `helo` or `ip`. Required.
    pub kind: ListKind,
    /// The list file (absolute path): one entry per line, `#` comments, blank lines. Required.
    pub path: PathBuf,
    /// Share of non-members the bloom filter lets through to the exact store, which rules them
    /// out; lower costs more memory (14.4 bits per entry at 0.001, 9.6 at 0.01). Range
    /// `0 < rate < 0.5`. Default: 0.001.
    #[serde(default = "default_false_positive_rate")]
    pub false_positive_rate: f64,
}

/// serde default of [`ListConfig::false_positive_rate`].
fn default_false_positive_rate() -> f64 {
    DEFAULT_FALSE_POSITIVE_RATE
}

/// What a list holds and which lookup consults it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// Domains, matched against the sender's domain and its parents ([`Reputation::check_sender`]).
    SenderDomain,
    /// Whole addresses, matched against the sender ([`Reputation::check_sender`]).
    SenderAddress,
    /// HELO/EHLO names or address literals, matched exactly ([`Reputation::check_helo`]).
    Helo,
    /// IP addresses and CIDR prefixes, matched against the client ([`Reputation::check_ip`]).
    Ip,
}

impl ListKind {
    /// The configuration spelling (`sender_domain`, ...), for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::SenderDomain => "sender_domain",
            Self::SenderAddress => "sender_address",
            Self::Helo => "helo",
            Self::Ip => "ip",
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ReputationConfig {
    /// Checks what serde cannot. Returns the key (`reputation.lists`) and why a list is wrong,
    /// naming it by position and name.
    pub fn validate(&self) -> Result<(), crate::config::invalid::Invalid> {
        let bad = |message: String| {
            Err(crate::config::invalid::Invalid::new(
                "reputation.lists",
                message,
            ))
        };
        for (index, list) in self.lists.iter().enumerate() {
            let name = &list.name;
            if name.is_empty() {
                return bad(format!("lists[{index}]: name is empty"));
            }
            if name.len() > MAX_NAME_LEN
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return bad(format!(
                    "lists[{index}]: name {name:?} must be 1 to {MAX_NAME_LEN} ASCII letters, \
                     digits, '-', '_' or '.'"
                ));
            }
            if self.lists[..index]
                .iter()
                .any(|other| other.name.eq_ignore_ascii_case(name))
            {
                return bad(format!(
                    "lists[{index}]: name {name:?} is used by another list"
                ));
            }
            let rate = list.false_positive_rate;
            // Written so that NaN fails too.
            if !(rate > 0.0 && rate < MAX_FALSE_POSITIVE_RATE) {
                return bad(format!(
                    "list {name:?}: false_positive_rate {rate} is out of range \
                     (0 < rate < {MAX_FALSE_POSITIVE_RATE})"
                ));
            }
            if !list.path.is_absolute() {
                return bad(format!(
                    "list {name:?}: path {:?} must be absolute",
                    list.path
                ));
            }
        }
        Ok(())
    }
}

/// Why [`Reputation::load`] failed. Every variant names the list.
#[derive(Debug, thiserror::Error)]
pub enum ReputationError {
    /// The configuration does not pass [`ReputationConfig::validate`].
    #[error("{key}: {message}")]
    Config {
        /// The dotted key (`reputation.lists`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A list file could not be opened or read.
    #[error("reputation list {list:?}: cannot read {}: {source}", .path.display())]
    Read {
        /// The list's name.
        list: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line is not a valid entry for the list's kind.
    #[error("reputation list {list:?}: {}:{line}: {message}", .path.display())]
    Entry {
        /// The list's name.
        list: String,
        /// The file.
        path: PathBuf,
        /// The line number, 1-based.
        line: usize,
        /// What is wrong, quoting the entry.
        message: String,
    },
    /// The list as a whole cannot be built (too large, no bloom filter seed).
    #[error("reputation list {list:?}: {}: {message}", .path.display())]
    List {
        /// The list's name.
        list: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Size and memory of one loaded list, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListStats {
    /// The list's name.
    pub name: String,
    /// The list's kind.
    pub kind: ListKind,
    /// Distinct entries, prefixes included.
    pub entries: usize,
    /// How many of `entries` are CIDR prefixes (`ip` lists only, otherwise 0).
    pub prefixes: usize,
    /// Bytes of the bloom filter (bit array and header; 0 when the list has no exact entries).
    pub bloom_bytes: usize,
    /// Bytes of the exact store (entries, offsets, address and prefix arrays).
    pub exact_bytes: usize,
}

/// The loaded lists, ready for lookups. Cheap to share (`Arc<Reputation>`); immutable once loaded.
#[derive(Default)]
pub struct Reputation {
    /// In configuration order: lookups report matching names in this order.
    lists: Vec<List>,
}

impl fmt::Debug for Reputation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reputation")
            .field("lists", &self.stats())
            .finish()
    }
}

impl Reputation {
    /// Validates `config`, then reads and indexes every list file. Blocking; fails on the first
    /// unreadable file or bad line.
    pub fn load(config: &ReputationConfig) -> Result<Self, ReputationError> {
        config.validate().map_err(|e| ReputationError::Config {
            key: e.key,
            message: e.reason,
        })?;
        let lists = config
            .lists
            .iter()
            .map(List::load)
            .collect::<Result<_, _>>()?;
        Ok(Self { lists })
    }

    /// Whether no list is configured (lookups then always return nothing).
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Names of the `sender_address` lists holding the reverse path `address` and of the
    /// `sender_domain` lists holding its domain or a parent of it. `address` is given with or
    /// without angle brackets; the null path and a path without `@` match nothing.
    pub fn check_sender(&self, address: &str) -> Vec<&str> {
        let Some(sender) = SenderKey::parse(address) else {
            return Vec::new();
        };
        self.matching(|list| match list.kind {
            ListKind::SenderAddress => list.holds_name(&sender.address),
            ListKind::SenderDomain => parent_domains(&sender.address[sender.domain_start..])
                .any(|domain| list.holds_name(domain)),
            ListKind::Helo | ListKind::Ip => false,
        })
    }

    /// Names of the `helo` lists holding the HELO/EHLO argument `helo` (a name or an address
    /// literal), compared exactly after normalization.
    pub fn check_helo(&self, helo: &str) -> Vec<&str> {
        let key = helo_key(helo);
        self.matching(|list| list.kind == ListKind::Helo && list.holds_name(&key))
    }

    /// Names of the `ip` lists holding the client `ip`, as an address or inside a prefix.
    pub fn check_ip(&self, ip: IpAddr) -> Vec<&str> {
        let ip = ip.to_canonical();
        self.matching(|list| list.holds_ip(ip))
    }

    /// Size and memory of every list, in configuration order.
    pub fn stats(&self) -> Vec<ListStats> {
        self.lists.iter().map(List::stats).collect()
    }

    /// Names of the lists for which `holds` is true, in configuration order.
    fn matching(&self, holds: impl Fn(&List) -> bool) -> Vec<&str> {
        self.lists
            .iter()
            .filter(|list| holds(list))
            .map(|list| &*list.name)
            .collect()
    }
}

/// One loaded list.
struct List {
    /// The configured name, reported on a match.
    name: Box<str>,
    /// Which lookup consults the list.
    kind: ListKind,
    /// The first test over the exact entries (not prefixes); `None` when there are none.
    bloom: Option<Bloom<[u8]>>,
    /// The confirmation.
    exact: Exact,
}

/// The exact store of a list.
enum Exact {
    /// `sender_domain`, `sender_address` and `helo` lists.
    Names(SortedNames),
    /// `ip` lists.
    Ips {
        /// Sorted IPv4 addresses.
        v4: Box<[u32]>,
        /// Sorted IPv6 addresses (never IPv4-mapped).
        v6: Box<[u128]>,
        /// IPv4 prefixes, /1 to /31.
        nets_v4: PrefixSet<u32>,
        /// IPv6 prefixes, /1 to /127 (never IPv4-mapped).
        nets_v6: PrefixSet<u128>,
    },
}

impl List {
    /// Reads and indexes the file of `config`.
    fn load(config: &ListConfig) -> Result<Self, ReputationError> {
        let path = &config.path;
        let list_error = |message: String| ReputationError::List {
            list: config.name.clone(),
            path: path.clone(),
            message,
        };
        let exact = match config.kind {
            ListKind::Ip => {
                let mut builder = IpBuilder::default();
                for_each_entry(config, |entry| {
                    builder.push(parse_ip_entry(entry)?);
                    Ok(())
                })?;
                builder.finish()
            }
            kind => {
                let mut builder = NamesBuilder::default();
                for_each_entry(config, |entry| {
                    builder.push(&parse_name_entry(kind, entry)?)?;
                    Ok(())
                })?;
                Exact::Names(builder.finish())
            }
        };
        let exact_count = exact.exact_count();
        let bloom = if exact_count == 0 {
            None
        } else {
            let mut bloom = Bloom::new_for_fp_rate(exact_count, config.false_positive_rate)
                .map_err(|why| list_error(format!("cannot build the bloom filter: {why}")))?;
            exact.for_each_key(|key| bloom.set(key));
            Some(bloom)
        };
        Ok(Self {
            name: config.name.as_str().into(),
            kind: config.kind,
            bloom,
            exact,
        })
    }

    /// Whether the normalized `key` is an entry: bloom first, then the exact store.
    fn holds_name(&self, key: &str) -> bool {
        let Exact::Names(names) = &self.exact else {
            return false;
        };
        self.bloom_says_maybe(key.as_bytes()) && names.contains(key)
    }

    /// Whether the canonical `ip` is an entry or inside a prefix (`ip` lists only).
    fn holds_ip(&self, ip: IpAddr) -> bool {
        let Exact::Ips {
            v4,
            v6,
            nets_v4,
            nets_v6,
        } = &self.exact
        else {
            return false;
        };
        match ip {
            IpAddr::V4(addr) => {
                let bits = u32::from(addr);
                (self.bloom_says_maybe(&addr.octets()) && v4.binary_search(&bits).is_ok())
                    || nets_v4.contains(bits)
            }
            IpAddr::V6(addr) => {
                let bits = u128::from(addr);
                (self.bloom_says_maybe(&addr.octets()) && v6.binary_search(&bits).is_ok())
                    || nets_v6.contains(bits)
            }
        }
    }

    /// The bloom filter's answer; `false` when the list has no exact entries.
    fn bloom_says_maybe(&self, key: &[u8]) -> bool {
        self.bloom.as_ref().is_some_and(|bloom| bloom.check(key))
    }

    /// Size and memory.
    fn stats(&self) -> ListStats {
        let (prefixes, exact_bytes) = match &self.exact {
            Exact::Names(names) => (0, names.bytes()),
            Exact::Ips {
                v4,
                v6,
                nets_v4,
                nets_v6,
            } => (
                nets_v4.len() + nets_v6.len(),
                size_of_val::<[u32]>(v4)
                    + size_of_val::<[u128]>(v6)
                    + nets_v4.bytes()
                    + nets_v6.bytes(),
            ),
        };
        ListStats {
            name: self.name.to_string(),
            kind: self.kind,
            entries: self.exact.exact_count() + prefixes,
            prefixes,
            bloom_bytes: self.bloom.as_ref().map_or(0, |b| b.as_slice().len()),
            exact_bytes,
        }
    }
}

impl Exact {
    /// Entries that go through the bloom filter (everything but prefixes).
    fn exact_count(&self) -> usize {
        match self {
            Self::Names(names) => names.len(),
            Self::Ips { v4, v6, .. } => v4.len() + v6.len(),
        }
    }

    /// Calls `f` with the bloom key of every exact entry: the normalized text of a name, the
    /// 4 or 16 octets of an address.
    fn for_each_key(&self, mut f: impl FnMut(&[u8])) {
        match self {
            Self::Names(names) => (0..names.len()).for_each(|i| f(names.get(i).as_bytes())),
            Self::Ips { v4, v6, .. } => {
                v4.iter().for_each(|&a| f(&Ipv4Addr::from(a).octets()));
                v6.iter().for_each(|&a| f(&Ipv6Addr::from(a).octets()));
            }
        }
    }
}

/// Why one line could not be added.
enum EntryError {
    /// The line is not a valid entry: the message for [`ReputationError::Entry`].
    Bad(String),
    /// The list as a whole cannot grow: the message for [`ReputationError::List`].
    List(&'static str),
}

impl From<String> for EntryError {
    fn from(message: String) -> Self {
        Self::Bad(message)
    }
}

impl From<&'static str> for EntryError {
    fn from(message: &'static str) -> Self {
        Self::List(message)
    }
}

/// Reads the file of `config` and calls `add` with every entry (comments and surrounding
/// whitespace removed), turning its errors into errors naming the file and line.
fn for_each_entry(
    config: &ListConfig,
    mut add: impl FnMut(&str) -> Result<(), EntryError>,
) -> Result<(), ReputationError> {
    let path: &Path = &config.path;
    let read_error = |source| ReputationError::Read {
        list: config.name.clone(),
        path: path.to_path_buf(),
        source,
    };
    let entry_error = |line, message| ReputationError::Entry {
        list: config.name.clone(),
        path: path.to_path_buf(),
        line,
        message,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let mut buffer = Vec::new();
    let mut line = 0;
    loop {
        buffer.clear();
        if reader.read_until(b'\n', &mut buffer).map_err(read_error)? == 0 {
            return Ok(());
        }
        line += 1;
        let Ok(mut text) = std::str::from_utf8(&buffer) else {
            return Err(entry_error(line, "is not valid UTF-8".to_string()));
        };
        if line == 1 {
            // A byte order mark some editors write.
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        let Some(entry) = strip_comment(text) else {
            continue;
        };
        match add(entry) {
            Ok(()) => {}
            Err(EntryError::Bad(message)) => return Err(entry_error(line, message)),
            Err(EntryError::List(message)) => {
                return Err(ReputationError::List {
                    list: config.name.clone(),
                    path: path.to_path_buf(),
                    message: message.to_string(),
                });
            }
        }
    }
}

/// The entry on a line, or `None` for a blank or comment line. `#` starts a comment at the
/// beginning of the line or after whitespace, so `a#b@example.com` keeps its `#`.
fn strip_comment(line: &str) -> Option<&str> {
    let mut previous_blank = true;
    let mut end = line.len();
    for (index, c) in line.char_indices() {
        if c == '#' && previous_blank {
            end = index;
            break;
        }
        previous_blank = c.is_whitespace();
    }
    Some(line[..end].trim()).filter(|entry| !entry.is_empty())
}

/// `entry` quoted for an error message, shortened when long.
fn quote(entry: &str) -> String {
    match entry.char_indices().nth(MAX_QUOTED_ENTRY) {
        Some((cut, _)) => format!("{:?}...", &entry[..cut]),
        None => format!("{entry:?}"),
    }
}

/// A `sender_domain`, `sender_address` or `helo` entry, normalized.
fn parse_name_entry(kind: ListKind, entry: &str) -> Result<String, String> {
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
enum IpEntry {
    /// A single address (also `/32` and `/128` prefixes), canonical.
    Addr(IpAddr),
    /// A prefix of 1 to 31 (IPv4) or 127 (IPv6) bits, without host bits, canonical.
    Net(IpNet),
}

/// An `ip` entry: an address or a CIDR prefix, IPv4-mapped forms turned into IPv4.
fn parse_ip_entry(entry: &str) -> Result<IpEntry, String> {
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
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
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
fn helo_key(helo: &str) -> Cow<'_, str> {
    match helo.strip_prefix('[').and_then(parse_address_literal) {
        Some(ip) => Cow::Owned(format_literal(ip)),
        None => lookup_name(helo),
    }
}

/// A reverse path normalized for lookups.
#[derive(Debug, PartialEq, Eq)]
struct SenderKey {
    /// `local@domain`, lowercased, the domain without a trailing dot.
    address: String,
    /// Where the domain starts in `address`.
    domain_start: usize,
}

impl SenderKey {
    /// `None` for the null path and paths without a local part or a domain.
    fn parse(path: &str) -> Option<Self> {
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
fn parent_domains(domain: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(domain), |d| {
        d.split_once('.').map(|(_, parent)| parent)
    })
    .filter(|d| !d.is_empty())
}

/// Normalized names, sorted and deduplicated, back to back in one arena: entry `i` is
/// `text[ends[i - 1]..ends[i]]` (from 0 for the first). Entry length + 4 bytes per entry.
struct SortedNames {
    /// The entries, concatenated in sorted order.
    text: Box<str>,
    /// End offset of each entry in `text`.
    ends: Box<[u32]>,
}

impl SortedNames {
    /// Number of entries.
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Entry `i` (`i < len()`).
    fn get(&self, i: usize) -> &str {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        &self.text[start..self.ends[i] as usize]
    }

    /// Binary search for `key`: O(log n) comparisons.
    fn contains(&self, key: &str) -> bool {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.get(middle).cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// Heap bytes.
    fn bytes(&self) -> usize {
        self.text.len() + size_of_val::<[u32]>(&self.ends)
    }
}

/// Collects names in file order, then sorts them into a [`SortedNames`].
#[derive(Default)]
struct NamesBuilder {
    /// The names as read, back to back.
    text: String,
    /// `(start, end)` of each name in `text`.
    spans: Vec<(u32, u32)>,
}

impl NamesBuilder {
    /// Appends `name`; fails when the list's text would exceed 4 GiB.
    fn push(&mut self, name: &str) -> Result<(), &'static str> {
        let too_large = "the list's entries exceed 4 GiB of text; split it into several lists";
        let start = u32::try_from(self.text.len()).map_err(|_| too_large)?;
        let end = u32::try_from(self.text.len() + name.len()).map_err(|_| too_large)?;
        self.text.push_str(name);
        self.spans.push((start, end));
        Ok(())
    }

    /// Sorts (bytewise, as `str` compares), merges duplicates and packs the names.
    fn finish(self) -> SortedNames {
        let Self { text, mut spans } = self;
        let name = |&(start, end): &(u32, u32)| &text[start as usize..end as usize];
        spans.sort_unstable_by(|a, b| name(a).cmp(name(b)));
        spans.dedup_by(|a, b| name(a) == name(b));
        let total = spans
            .iter()
            .map(|&(start, end)| (end - start) as usize)
            .sum();
        let mut sorted = String::with_capacity(total);
        let mut ends = Vec::with_capacity(spans.len());
        let mut end = 0u32;
        for span in &spans {
            sorted.push_str(name(span));
            // Cannot overflow: the packed text is no longer than `text`, whose length fits.
            end += span.1 - span.0;
            ends.push(end);
        }
        SortedNames {
            text: sorted.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

/// Collects the entries of an `ip` list.
#[derive(Default)]
struct IpBuilder {
    /// IPv4 addresses.
    v4: Vec<u32>,
    /// IPv6 addresses.
    v6: Vec<u128>,
    /// IPv4 prefixes as `(network, length)`.
    nets_v4: Vec<(u32, u8)>,
    /// IPv6 prefixes as `(network, length)`.
    nets_v6: Vec<(u128, u8)>,
}

impl IpBuilder {
    /// Adds one entry.
    fn push(&mut self, entry: IpEntry) {
        match entry {
            IpEntry::Addr(IpAddr::V4(a)) => self.v4.push(a.into()),
            IpEntry::Addr(IpAddr::V6(a)) => self.v6.push(a.into()),
            IpEntry::Net(IpNet::V4(n)) => self.nets_v4.push((n.network().into(), n.prefix_len())),
            IpEntry::Net(IpNet::V6(n)) => self.nets_v6.push((n.network().into(), n.prefix_len())),
        }
    }

    /// Sorts and deduplicates everything.
    fn finish(self) -> Exact {
        Exact::Ips {
            v4: sorted_unique(self.v4),
            v6: sorted_unique(self.v6),
            nets_v4: PrefixSet::new(self.nets_v4),
            nets_v6: PrefixSet::new(self.nets_v6),
        }
    }
}

/// `values` sorted, without duplicates, without spare capacity.
fn sorted_unique<T: Ord>(mut values: Vec<T>) -> Box<[T]> {
    values.sort_unstable();
    values.dedup();
    values.into_boxed_slice()
}

/// An address as an unsigned integer, most significant bit first.
trait AddrBits: Copy + Ord {
    /// `self` with all but the first `len` bits cleared.
    fn mask(self, len: u8) -> Self;
}

impl AddrBits for u32 {
    fn mask(self, len: u8) -> Self {
        self & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
    }
}

impl AddrBits for u128 {
    fn mask(self, len: u8) -> Self {
        self & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
    }
}

/// Prefixes grouped by length: for each distinct length, the sorted network addresses. A lookup
/// masks the address to each length and binary-searches: O(L log m).
struct PrefixSet<T> {
    /// `(length, networks)`, one per distinct length.
    by_len: Box<[(u8, Box<[T]>)]>,
}

impl<T: AddrBits> PrefixSet<T> {
    /// Groups `(network, length)` pairs (networks already without host bits).
    fn new(mut nets: Vec<(T, u8)>) -> Self {
        nets.sort_unstable_by_key(|&(network, len)| (len, network));
        nets.dedup();
        let by_len = nets
            .chunk_by(|a, b| a.1 == b.1)
            .map(|group| (group[0].1, group.iter().map(|&(net, _)| net).collect()))
            .collect();
        Self { by_len }
    }

    /// Whether a prefix contains `addr`.
    fn contains(&self, addr: T) -> bool {
        self.by_len
            .iter()
            .any(|(len, nets)| nets.binary_search(&addr.mask(*len)).is_ok())
    }

    /// Number of prefixes.
    fn len(&self) -> usize {
        self.by_len.iter().map(|(_, nets)| nets.len()).sum()
    }

    /// Heap bytes.
    fn bytes(&self) -> usize {
        size_of_val::<[(u8, Box<[T]>)]>(&self.by_len)
            + self
                .by_len
                .iter()
                .map(|(_, nets)| size_of_val::<[T]>(nets))
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// A list file in the temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: impl AsRef<[u8]>) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "smtp-gateway-reputation-{}-{}.txt",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::write(&path, contents).expect("write a temporary list file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    fn list(name: &str, kind: ListKind, file: &TempFile) -> ListConfig {
        ListConfig {
            name: name.to_string(),
            kind,
            path: file.0.clone(),
            false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE,
        }
    }

    fn load(lists: Vec<ListConfig>) -> Reputation {
        Reputation::load(&ReputationConfig { lists }).expect("the lists load")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    /// `Ok(normalized)` or `Err(part of the message)`.
    type Expected = Result<&'static str, &'static str>;

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
            let got = got
                .as_ref()
                .map(|k| (k.address.as_str(), &k.address[k.domain_start..]));
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

    #[test]
    fn lists_load_from_files_and_each_kind_answers_its_lookup() {
        let domains = TempFile::new(
            "\u{feff}# disposable domains\n\nSpam.Example.\r\nspam.example\njunk.example  # dup below\njunk.example\n",
        );
        let addresses =
            TempFile::new("Boss@Example.NET\n# the CEO is spoofed a lot\nceo@example.net\n");
        let helos = TempFile::new("localhost\nFRIEND\n[192.0.2.1]\n[IPv6:2001:db8::25]\n");
        let ips = TempFile::new("192.0.2.77\n198.51.100.0/24 # a whole network\n2001:db8::bad\n");
        let reputation = load(vec![
            list("disposable", ListKind::SenderDomain, &domains),
            list("spoofed", ListKind::SenderAddress, &addresses),
            list("bad-helo", ListKind::Helo, &helos),
            list("bad-ip", ListKind::Ip, &ips),
        ]);
        assert!(!reputation.is_empty());

        assert_eq!(reputation.check_sender("user@spam.example"), ["disposable"]);
        assert_eq!(
            reputation.check_sender("<user@JUNK.example.>"),
            ["disposable"]
        );
        assert_eq!(reputation.check_sender("boss@example.net"), ["spoofed"]);
        assert_eq!(reputation.check_sender("BOSS@example.NET"), ["spoofed"]);
        assert!(reputation.check_sender("other@example.net").is_empty());
        assert!(reputation.check_sender("user@example.org").is_empty());
        assert!(reputation.check_sender("").is_empty());
        assert!(reputation.check_sender("spam.example").is_empty());

        assert_eq!(reputation.check_helo("LocalHost."), ["bad-helo"]);
        assert_eq!(reputation.check_helo("friend"), ["bad-helo"]);
        assert_eq!(reputation.check_helo("[192.0.2.1]"), ["bad-helo"]);
        assert_eq!(reputation.check_helo("[IPv6:2001:DB8:0::25]"), ["bad-helo"]);
        assert!(reputation.check_helo("192.0.2.1").is_empty());
        assert!(reputation.check_helo("mail.localhost").is_empty());
        assert!(reputation.check_helo("mail.example.org").is_empty());

        assert_eq!(reputation.check_ip(ip("192.0.2.77")), ["bad-ip"]);
        assert_eq!(reputation.check_ip(ip("::ffff:192.0.2.77")), ["bad-ip"]);
        assert_eq!(reputation.check_ip(ip("198.51.100.200")), ["bad-ip"]);
        assert_eq!(reputation.check_ip(ip("2001:db8::BAD")), ["bad-ip"]);
        assert!(reputation.check_ip(ip("192.0.2.78")).is_empty());
        assert!(reputation.check_ip(ip("2001:db8::bae")).is_empty());

        // A value of one kind is never looked up in a list of another kind.
        assert!(reputation.check_helo("spam.example").is_empty());
        assert!(reputation.check_sender("user@localhost").is_empty());

        let stats = reputation.stats();
        let summary: Vec<_> = stats
            .iter()
            .map(|s| (s.name.as_str(), s.kind, s.entries, s.prefixes))
            .collect();
        assert_eq!(
            summary,
            [
                ("disposable", ListKind::SenderDomain, 2, 0),
                ("spoofed", ListKind::SenderAddress, 2, 0),
                ("bad-helo", ListKind::Helo, 4, 0),
                ("bad-ip", ListKind::Ip, 3, 1),
            ]
        );
        assert!(stats.iter().all(|s| s.bloom_bytes > 0 && s.exact_bytes > 0));
        let debug = format!("{reputation:?}");
        assert!(
            debug.contains("disposable") && debug.contains("bad-ip"),
            "{debug}"
        );
    }

    #[test]
    fn sender_domains_match_their_parents_and_lists_report_in_order() {
        let domains = TempFile::new("example.com\nzip\nmail.example.org\n");
        let more = TempFile::new("deep.mail.example.com\n");
        let addresses = TempFile::new("boss@mail.example.com\n");
        let reputation = load(vec![
            list("domains", ListKind::SenderDomain, &domains),
            list("addresses", ListKind::SenderAddress, &addresses),
            list("more", ListKind::SenderDomain, &more),
        ]);
        let cases: &[(&str, &[&str])] = &[
            ("a@example.com", &["domains"]),
            ("a@mail.example.com", &["domains"]),
            ("a@x.y.z.example.com", &["domains"]),
            ("a@EXAMPLE.COM.", &["domains"]),
            ("a@deep.mail.example.com", &["domains", "more"]),
            ("a@x.deep.mail.example.com", &["domains", "more"]),
            ("boss@mail.example.com", &["domains", "addresses"]),
            ("a@mail.example.org", &["domains"]),
            ("a@x.mail.example.org", &["domains"]),
            ("a@file.zip", &["domains"]),
            ("a@zip", &["domains"]),
            // Neither a parent, nor a sibling, nor a suffix that is not a whole label.
            ("a@example.org", &[]),
            ("a@other.example.org", &[]),
            ("a@notexample.com", &[]),
            ("a@example.com.evil", &[]),
            ("a@example.co", &[]),
            ("a@com", &[]),
            ("a@zipper", &[]),
            ("a@[192.0.2.1]", &[]),
            ("example.com", &[]),
        ];
        for (sender, expected) in cases {
            assert_eq!(reputation.check_sender(sender), *expected, "{sender}");
        }
    }

    #[test]
    fn ip_lists_match_addresses_and_prefixes() {
        let ips = TempFile::new(
            "192.0.2.1\n198.51.100.0/24\n203.0.113.128/25\n2001:db8::1\n2001:db8:1::/48\n\
             ::ffff:100.64.0.0/112\n198.51.100.0/24\n",
        );
        let nets_only = TempFile::new("10.0.0.0/8\n");
        let reputation = load(vec![
            list("ips", ListKind::Ip, &ips),
            list("nets", ListKind::Ip, &nets_only),
        ]);
        let cases: &[(&str, &[&str])] = &[
            ("192.0.2.1", &["ips"]),
            ("::ffff:192.0.2.1", &["ips"]),
            ("192.0.2.2", &[]),
            ("198.51.100.0", &["ips"]),
            ("198.51.100.255", &["ips"]),
            ("198.51.101.0", &[]),
            ("203.0.113.127", &[]),
            ("203.0.113.128", &["ips"]),
            ("203.0.113.255", &["ips"]),
            ("100.64.3.4", &["ips"]),
            ("::ffff:100.64.3.4", &["ips"]),
            ("100.65.0.0", &[]),
            ("2001:db8::1", &["ips"]),
            ("2001:db8::2", &[]),
            ("2001:db8:1:ffff::5", &["ips"]),
            ("2001:db8:2::1", &[]),
            ("10.200.0.1", &["nets"]),
            ("::ffff:10.0.0.1", &["nets"]),
            ("11.0.0.0", &[]),
            ("::a00:1", &[]),
        ];
        for (addr, expected) in cases {
            assert_eq!(reputation.check_ip(ip(addr)), *expected, "{addr}");
        }
        let stats = reputation.stats();
        assert_eq!((stats[0].entries, stats[0].prefixes), (6, 4));
        assert_eq!(
            (stats[1].entries, stats[1].prefixes, stats[1].bloom_bytes),
            (1, 1, 0)
        );
    }

    #[test]
    fn bad_lines_are_refused_with_file_and_line() {
        let cases: &[(ListKind, &[u8], usize, &str)] = &[
            (
                ListKind::Ip,
                b"192.0.2.1\n# fine\n192.0.2.1/24\n",
                3,
                "host bits",
            ),
            (
                ListKind::Ip,
                b"192.0.2.1\n\nnot-an-ip\n",
                3,
                "not an IP address",
            ),
            (
                ListKind::Ip,
                b"2001:db8::1 # ok\n::/0\n",
                2,
                "every address",
            ),
            (
                ListKind::SenderAddress,
                b"a@example.com\nexample.com\n",
                2,
                "has no '@'",
            ),
            (
                ListKind::SenderDomain,
                b"exa mple.com\n",
                1,
                "not a valid domain name",
            ),
            (
                ListKind::SenderDomain,
                b"a.example\r\n*.b.example\r\n",
                2,
                "wildcards",
            ),
            (
                ListKind::Helo,
                b"localhost\n[300.1.1.1]\n",
                2,
                "address literal",
            ),
            (
                ListKind::SenderDomain,
                b"example.com\nexam\xffple.com\n",
                2,
                "not valid UTF-8",
            ),
        ];
        for &(kind, contents, line, part) in cases {
            let file = TempFile::new(contents);
            let err = Reputation::load(&ReputationConfig {
                lists: vec![list("broken", kind, &file)],
            })
            .expect_err("a bad line fails the load");
            let message = err.to_string();
            let ReputationError::Entry {
                list,
                path,
                line: got,
                ..
            } = &err
            else {
                panic!("{kind}: want an Entry error, got {message}");
            };
            assert_eq!(
                (list.as_str(), path, *got),
                ("broken", &file.0, line),
                "{message}"
            );
            let place = format!("{}:{line}: ", file.0.display());
            assert!(message.contains(&place), "{message} names {place}");
            assert!(message.contains(part), "{message} says {part}");
            assert!(message.contains("\"broken\""), "{message} names the list");
        }
        let long = format!("{}\n", "x ".repeat(500));
        let file = TempFile::new(long);
        let message = Reputation::load(&ReputationConfig {
            lists: vec![list("long", ListKind::SenderDomain, &file)],
        })
        .expect_err("a bad line fails the load")
        .to_string();
        assert!(message.len() < 400, "long entries are shortened: {message}");

        let missing = ListConfig {
            path: std::env::temp_dir().join("smtp-gateway-reputation-does-not-exist.txt"),
            ..list("missing", ListKind::Ip, &TempFile::new(""))
        };
        let err = Reputation::load(&ReputationConfig {
            lists: vec![missing],
        })
        .expect_err("a missing file fails the load");
        assert!(matches!(err, ReputationError::Read { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("smtp-gateway-reputation-does-not-exist.txt"),
            "{err}"
        );
    }

    #[test]
    fn bloom_false_positives_are_never_reported() {
        const MEMBERS: usize = 10_000;
        const PROBES: usize = 200_000;
        let mut text = String::new();
        for i in 0..MEMBERS {
            text.push_str(&format!("member-{i}.example\n"));
        }
        let file = TempFile::new(text);
        // A high rate, so that the bloom filter is sure to let many probes through.
        let reputation = load(vec![ListConfig {
            false_positive_rate: 0.05,
            ..list("members", ListKind::SenderDomain, &file)
        }]);
        let bloom = reputation.lists[0].bloom.as_ref().expect("a bloom filter");
        for i in (0..MEMBERS).step_by(97) {
            assert_eq!(
                reputation.check_sender(&format!("user@member-{i}.example")),
                ["members"]
            );
        }
        let mut bloom_hits = 0;
        for i in 0..PROBES {
            let domain = format!("probe-{i}.example");
            if bloom.check(domain.as_bytes()) {
                bloom_hits += 1;
            }
            let matches = reputation.check_sender(&format!("user@{domain}"));
            assert!(matches.is_empty(), "{domain} is not listed: {matches:?}");
        }
        // About 5% expected; zero would mean this test proves nothing.
        assert!(
            bloom_hits > PROBES / 100 && bloom_hits < PROBES / 10,
            "the bloom filter alone gave {bloom_hits} false positives for {PROBES} probes"
        );

        // The same for addresses, which go through the bloom filter too.
        let mut text = String::new();
        for i in 0..MEMBERS as u32 {
            text.push_str(&format!("{}\n", Ipv4Addr::from(0x0a00_0000 + i * 2)));
        }
        let file = TempFile::new(text);
        let reputation = load(vec![ListConfig {
            false_positive_rate: 0.05,
            ..list("ips", ListKind::Ip, &file)
        }]);
        let bloom = reputation.lists[0].bloom.as_ref().expect("a bloom filter");
        let mut bloom_hits = 0;
        for i in 0..PROBES as u32 {
            let addr = Ipv4Addr::from(0x0a00_0001 + i * 2);
            bloom_hits += usize::from(bloom.check(&addr.octets()));
            assert!(reputation.check_ip(addr.into()).is_empty(), "{addr}");
        }
        assert!(
            bloom_hits > PROBES / 100,
            "{bloom_hits} bloom false positives"
        );
    }

    #[test]
    fn a_100k_entry_list_loads_and_answers() {
        const ENTRIES: usize = 100_000;
        let names: Vec<String> = (0..ENTRIES)
            .map(|i| format!("host{i:06}.spam{}.example", i % 997))
            .collect();
        let file = TempFile::new(names.join("\n"));
        let reputation = load(vec![list("big", ListKind::SenderDomain, &file)]);
        let stats = &reputation.stats()[0];
        assert_eq!(stats.entries, ENTRIES);
        let text_bytes: usize = names.iter().map(String::len).sum();
        assert_eq!(stats.exact_bytes, text_bytes + 4 * ENTRIES);
        // 14.4 bits per entry at 0.001, plus the 45-byte header.
        let bloom_bits = stats.bloom_bytes * 8;
        assert!(
            (14 * ENTRIES..15 * ENTRIES).contains(&bloom_bits),
            "{bloom_bits} bloom bits"
        );
        for i in (0..ENTRIES).step_by(1009) {
            assert_eq!(reputation.check_sender(&format!("a@{}", names[i])), ["big"]);
            assert_eq!(
                reputation.check_sender(&format!("a@mx.{}", names[i])),
                ["big"]
            );
            assert!(
                reputation
                    .check_sender(&format!("a@{}x", names[i]))
                    .is_empty()
            );
        }
    }

    #[test]
    fn empty_lists_load_and_match_nothing() {
        let file = TempFile::new("# nothing yet\n\n");
        let reputation = load(vec![
            list("names", ListKind::SenderDomain, &file),
            list("ips", ListKind::Ip, &file),
        ]);
        assert!(reputation.check_sender("user@example.com").is_empty());
        assert!(reputation.check_ip(ip("192.0.2.1")).is_empty());
        for stats in reputation.stats() {
            assert_eq!(
                (stats.entries, stats.bloom_bytes, stats.exact_bytes),
                (0, 0, 0)
            );
        }
        let none = Reputation::load(&ReputationConfig::default()).expect("no lists");
        assert!(none.is_empty());
        assert!(none.check_helo("localhost").is_empty());
        assert!(Reputation::default().check_ip(ip("::1")).is_empty());
    }

    #[test]
    fn stats_count_bytes_per_entry() {
        let file = TempFile::new("a.example\nbb.example\n");
        let reputation = load(vec![list("two", ListKind::Helo, &file)]);
        let stats = &reputation.stats()[0];
        assert_eq!(stats.exact_bytes, 9 + 10 + 2 * 4);
        // Two entries at 0.001 need 29 bits: 4 bytes of bits and the 45-byte header.
        assert_eq!(stats.bloom_bytes, 4 + 45);
    }

    #[test]
    fn section_parses_with_documented_defaults_and_refuses_unknown_keys() {
        let cfg: ReputationConfig = toml::from_str("").expect("empty section");
        assert_eq!(cfg, ReputationConfig::default());
        assert!(cfg.lists.is_empty());
        let cfg: ReputationConfig = toml::from_str(
            "[[lists]]\nname = \"disposable\"\nkind = \"sender_domain\"\n\
             path = \"/etc/smtp-gateway/lists/disposable.txt\"\n\
             [[lists]]\nname = \"drop\"\nkind = \"ip\"\npath = \"/var/lib/drop.txt\"\n\
             false_positive_rate = 0.01\n",
        )
        .expect("two lists");
        assert_eq!(
            cfg.lists[0],
            ListConfig {
                name: "disposable".into(),
                kind: ListKind::SenderDomain,
                path: "/etc/smtp-gateway/lists/disposable.txt".into(),
                false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE,
            }
        );
        assert_eq!(cfg.lists[1].kind, ListKind::Ip);
        assert_eq!(cfg.lists[1].false_positive_rate, 0.01);
        assert_eq!(cfg.validate(), Ok(()));
        for kind in ["sender_address", "helo"] {
            let text = format!("[[lists]]\nname = \"x\"\nkind = \"{kind}\"\npath = \"/x\"\n");
            let cfg: ReputationConfig = toml::from_str(&text).expect(kind);
            assert_eq!(cfg.lists[0].kind.name(), kind);
        }
        for (text, part) in [
            ("list = []\n", "list"),
            (
                "[[lists]]\nname = \"x\"\nkind = \"ip\"\npath = \"/x\"\nfp_rate = 0.1\n",
                "fp_rate",
            ),
            (
                "[[lists]]\nname = \"x\"\nkind = \"domain\"\npath = \"/x\"\n",
                "domain",
            ),
            ("[[lists]]\nkind = \"ip\"\npath = \"/x\"\n", "name"),
            ("[[lists]]\nname = \"x\"\nkind = \"ip\"\n", "path"),
        ] {
            let err = toml::from_str::<ReputationConfig>(text).expect_err(text);
            assert!(err.to_string().contains(part), "{text}: {err}");
        }
    }

    #[test]
    fn validate_names_the_key_and_the_bad_value() {
        let good = |name: &str| ListConfig {
            name: name.to_string(),
            kind: ListKind::Ip,
            path: "/etc/smtp-gateway/lists/x.txt".into(),
            false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE,
        };
        let ok = ReputationConfig {
            lists: vec![good("a"), good("Spam_list-2.v4"), good(&"n".repeat(64))],
        };
        assert_eq!(ok.validate(), Ok(()));
        let cases: Vec<(Vec<ListConfig>, &str)> = vec![
            (vec![good("")], "lists[0]: name is empty"),
            (
                vec![good("a"), good("spam list")],
                "lists[1]: name \"spam list\"",
            ),
            (vec![good("bad\r\nname")], "must be 1 to 64"),
            (vec![good(&"n".repeat(65))], "must be 1 to 64"),
            (vec![good("spam"), good("SPAM")], "used by another list"),
            (
                vec![ListConfig {
                    false_positive_rate: 0.0,
                    ..good("a")
                }],
                "false_positive_rate 0 is out of range",
            ),
            (
                vec![ListConfig {
                    false_positive_rate: 0.5,
                    ..good("a")
                }],
                "out of range (0 < rate < 0.5)",
            ),
            (
                vec![ListConfig {
                    false_positive_rate: -0.1,
                    ..good("a")
                }],
                "out of range",
            ),
            (
                vec![ListConfig {
                    false_positive_rate: f64::NAN,
                    ..good("a")
                }],
                "NaN is out of range",
            ),
            (
                vec![ListConfig {
                    path: "lists/x.txt".into(),
                    ..good("a")
                }],
                "must be absolute",
            ),
            (
                vec![ListConfig {
                    path: PathBuf::new(),
                    ..good("a")
                }],
                "must be absolute",
            ),
        ];
        for (lists, part) in cases {
            let cfg = ReputationConfig { lists };
            let e = cfg.validate().expect_err(part);
            let (key, message) = (e.key, e.reason);
            assert_eq!(key, "reputation.lists");
            assert!(message.contains(part), "{message} says {part}");
            // `load` validates too: never a panic in the bloom filter's constructor.
            let err = Reputation::load(&cfg).expect_err(part);
            assert!(matches!(err, ReputationError::Config { .. }), "{err}");
            assert!(err.to_string().starts_with("reputation.lists: "), "{err}");
        }
    }
}

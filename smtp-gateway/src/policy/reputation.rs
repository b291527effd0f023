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
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |message: String| Err(("reputation.lists".to_string(), message));
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
        config
            .validate()
            .map_err(|(key, message)| ReputationError::Config { key, message })?;
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
            ListKind::SenderDomain => {
                parent_domains(&sender.address[sender.domain_start..])
                    .any(|domain| list.holds_name(domain))
            }
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
        let Ok(text) = std::str::from_utf8(&buffer) else {
            return Err(entry_error(line, "is not valid UTF-8".to_string()));
        };
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
    Ok(format!("{}@{}", local.to_lowercase(), domain.to_lowercase()))
}

/// An `ip` list entry.
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
    let net: IpNet = entry.parse().map_err(|_| {
        format!(
            "{} is not an IP address or CIDR prefix",
            quote(entry)
        )
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{} has host bits set (did you mean {}?)",
            quote(entry),
            net.trunc()
        ));
    }
    if net.prefix_len() == 0 {
        return Err(format!(
            "{} would match every address",
            quote(entry)
        ));
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
        return Err(format!(
            "{} would match every IPv4 address",
            quote(entry)
        ));
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
    if name.chars().any(char::is_uppercase) {
        Cow::Owned(name.to_lowercase())
    } else {
        Cow::Borrowed(name)
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
    std::iter::successors(Some(domain), |d| d.split_once('.').map(|(_, parent)| parent))
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
        let total = spans.iter().map(|&(start, end)| (end - start) as usize).sum();
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

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
//!
//! # Layout
//! - `config.rs`: [`ReputationConfig`], the `[reputation]` section and its validation;
//! - `entry.rs`: the grammar of list lines and lookup keys: comments, names, addresses, address
//!   literals, IP prefixes, and their normalization;
//! - `list.rs`: one list: reading its file line by line, the bloom filter, lookups, [`ListStats`];
//! - `store.rs`: the exact stores: sorted name arenas, address arrays and prefix sets;
//! - `error.rs`: [`ReputationError`], why a load failed.

mod config;
mod entry;
mod error;
mod list;
mod store;
#[cfg(test)]
mod test_files;

use std::{fmt, net::IpAddr};

pub use config::{DEFAULT_FALSE_POSITIVE_RATE, ListConfig, ListKind, ReputationConfig};
use entry::{SenderKey, helo_key, parent_domains};
pub use error::ReputationError;
use list::List;
pub use list::ListStats;

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
            ListKind::SenderDomain => {
                parent_domains(sender.domain()).any(|domain| list.holds_name(domain))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::reputation::test_files::{TempFile, ip, list, load};

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
}

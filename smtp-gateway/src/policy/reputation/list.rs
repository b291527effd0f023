//! One list: reading its file line by line, the bloom filter in front of the exact store, the
//! lookups, and its size.

use std::{fs::File, io::BufReader, net::IpAddr, path::Path};

use bloomfilter::Bloom;

use crate::bounded_line::{Line, MAX_LINE_BYTES, next_line};

use super::{
    config::{ListConfig, ListKind},
    entry::{parse_ip_entry, parse_name_entry, strip_comment},
    error::ReputationError,
    store::{Exact, IpBuilder, NamesBuilder},
};

/// Read buffer for list files.
const READ_BUFFER: usize = 64 * 1024;

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

/// One loaded list.
pub(super) struct List {
    /// The configured name, reported on a match.
    pub(super) name: Box<str>,
    /// Which lookup consults the list.
    pub(super) kind: ListKind,
    /// The first test over the exact entries (not prefixes); `None` when there are none.
    bloom: Option<Bloom<[u8]>>,
    /// The confirmation.
    exact: Exact,
}

impl List {
    /// Reads and indexes the file of `config`.
    pub(super) fn load(config: &ListConfig) -> Result<Self, ReputationError> {
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
    pub(super) fn holds_name(&self, key: &str) -> bool {
        let Exact::Names(names) = &self.exact else {
            return false;
        };
        self.bloom_says_maybe(key.as_bytes()) && names.contains(key)
    }

    /// Whether the canonical `ip` is an entry or inside a prefix (`ip` lists only).
    pub(super) fn holds_ip(&self, ip: IpAddr) -> bool {
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
    pub(super) fn stats(&self) -> ListStats {
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
    let mut buffer = Vec::with_capacity(MAX_LINE_BYTES);
    let mut line = 0;
    loop {
        let read = next_line(&mut reader, &mut buffer).map_err(read_error)?;
        line += 1;
        match read {
            None => return Ok(()),
            Some(Line::TooLong) => {
                let message = format!("line too long (more than {MAX_LINE_BYTES} bytes)");
                return Err(entry_error(line, message));
            }
            Some(Line::Complete) => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::reputation::{
        Reputation, ReputationConfig,
        test_files::{TempFile, list, load},
    };
    use std::net::Ipv4Addr;

    /// A list whose second line never ends within the bound (a file saved without newlines, or
    /// the wrong file): it must not be read whole into memory.
    const LONG_LINE: [u8; 5010] = {
        let mut bytes = [b'1'; 5010];
        let first = b"192.0.2.1\n";
        let mut i = 0;
        while i < first.len() {
            bytes[i] = first[i];
            i += 1;
        }
        bytes
    };

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
            (
                ListKind::Ip,
                &LONG_LINE,
                2,
                "line too long (more than 4096 bytes)",
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
            let place = format!("{}: line {line}: ", file.0.display());
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
}

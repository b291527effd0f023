//! Bulk import of blocklist entries: one address or prefix per line.
//!
//! Accepted lines:
//! - `198.18.0.7`, `198.18.0.0/24`, `2001:db8::/48` — optionally followed by a comment;
//! - comments start with `#` or `;` (whole-line or trailing); a trailing comment becomes the entry's
//!   reason, so Spamhaus DROP lines (`1.2.3.0/24 ; SBL123`) keep their SBL id;
//! - Spamhaus DROP JSON lines (`{"cidr":"1.2.3.0/24","sblid":"SBL123",...}`; the metadata line is
//!   skipped).
//!
//! A UTF-8 byte-order mark at the start of the file is skipped.
//!
//! Every bad line is reported with its number and why; with `strict`, nothing is applied when any
//! line is bad. A line longer than [`MAX_LINE_BYTES`] (4096 bytes) is such a bad line ("line too
//! long"): it is skipped as it is read, never held whole in memory.
//!
//! A file is read whole before anything is applied, and at most [`MAX_IMPORT_BYTES`] (1 GiB) and
//! [`MAX_IMPORT_LINES`] (16777216 lines): past either the import is an error and nothing is
//! applied (`/dev/zero` or a disk image named by mistake used to be read forever).

use std::{
    collections::{HashMap, HashSet},
    io::BufRead,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use aya::maps::IterableMap as _;
use serde::Deserialize;
use smtp_gateway_common::{BlockEntry, list_slot, maps, origin};

use super::{Dataplane, DataplaneError, Target, batch, clock, error::is_not_found, reasons};

pub use crate::bounded_line::MAX_LINE_BYTES;
use crate::bounded_line::{Line, next_line};

/// Most bytes of a file an import reads (1 GiB): the default capacities hold 7M entries, about
/// 200 MB of list with a reason on each line. A larger file is refused, not read on.
pub const MAX_IMPORT_BYTES: u64 = 1 << 30;

/// Most lines of a file an import reads (blank and comment lines included): more than the
/// default capacities of the four blocklist maps hold (7M entries), and what bounds the memory
/// the parsed lines take (under 1 GB) before anything is applied.
pub const MAX_IMPORT_LINES: usize = 16 * 1024 * 1024;

/// A parsed, valid line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportLine {
    /// 1-based line number.
    pub line: usize,
    pub target: Target,
    /// The line's own comment, used as reason.
    pub reason: Option<String>,
}

/// A refused line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Spamhaus DROP JSON line.
#[derive(Deserialize)]
struct DropJson {
    cidr: Option<String>,
    sblid: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Parses one line: `Ok(None)` for blank and comment lines.
pub fn parse_line(text: &str) -> Result<Option<(Target, Option<String>)>, String> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') || text.starts_with(';') {
        return Ok(None);
    }
    if text.starts_with('{') {
        let json: DropJson =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON line: {e}"))?;
        if json.kind.is_some() && json.cidr.is_none() {
            return Ok(None);
        }
        let cidr = json.cidr.ok_or("JSON line without \"cidr\"")?;
        let target = cidr.parse::<Target>().map_err(|e| e.to_string())?;
        return Ok(Some((target, json.sblid.filter(|s| !s.is_empty()))));
    }
    let (address, comment) = match text.split_once(['#', ';']) {
        Some((address, comment)) => (address.trim(), Some(comment.trim())),
        None => (text, None),
    };
    if address.contains(char::is_whitespace) {
        return Err(format!(
            "unexpected text after the address in {address:?} (start comments with '#' or ';')"
        ));
    }
    let target = address.parse::<Target>().map_err(|e| e.to_string())?;
    Ok(Some((
        target,
        comment.filter(|c| !c.is_empty()).map(str::to_string),
    )))
}

/// The file could not be read whole (a directory opens but does not read; `/dev/zero` never
/// ends): nothing of it is imported, as a bad line would make believe the rest was.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read error at line {line}: {source}")]
    Io {
        /// 1-based number of the line being read.
        line: usize,
        source: std::io::Error,
    },
    #[error(
        "larger than {MAX_IMPORT_BYTES} bytes (1 GiB), the most an import reads: nothing was \
         applied (split the file)"
    )]
    TooLarge,
    #[error(
        "more than {MAX_IMPORT_LINES} lines, the most an import reads: nothing was applied \
         (split the file)"
    )]
    TooManyLines,
}

/// Parses a whole file, of at most [`MAX_IMPORT_BYTES`] and [`MAX_IMPORT_LINES`]. Lines that are
/// not UTF-8 or longer than [`MAX_LINE_BYTES`] are reported, not fatal; a read error or a file
/// past a bound is.
pub fn parse(reader: impl BufRead) -> Result<(Vec<ImportLine>, Vec<LineError>), ReadError> {
    // One byte past the bound tells a larger file from one of exactly the bound.
    let mut reader = reader.take(MAX_IMPORT_BYTES.saturating_add(1));
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut bytes = Vec::with_capacity(MAX_LINE_BYTES);
    for line_no in 1.. {
        let read = next_line(&mut reader, &mut bytes);
        if reader.limit() == 0 {
            return Err(ReadError::TooLarge);
        }
        if line_no > MAX_IMPORT_LINES && matches!(read, Ok(Some(_))) {
            return Err(ReadError::TooManyLines);
        }
        match read {
            Ok(None) => break,
            Ok(Some(Line::Complete)) => {}
            Ok(Some(Line::TooLong)) => {
                bad.push(LineError {
                    line: line_no,
                    reason: format!("line too long (more than {MAX_LINE_BYTES} bytes)"),
                });
                continue;
            }
            Err(source) => {
                return Err(ReadError::Io {
                    line: line_no,
                    source,
                });
            }
        }
        let Ok(mut text) = std::str::from_utf8(&bytes) else {
            bad.push(LineError {
                line: line_no,
                reason: "not valid UTF-8".into(),
            });
            continue;
        };
        // A byte-order mark some editors write at the start of the file (as the configuration
        // loader and the reputation lists accept).
        if line_no == 1 {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        match parse_line(text) {
            Ok(Some((target, reason))) => good.push(ImportLine {
                line: line_no,
                target,
                reason,
            }),
            Ok(None) => {}
            Err(reason) => bad.push(LineError {
                line: line_no,
                reason,
            }),
        }
    }
    Ok((good, bad))
}

/// Defaults applied to every imported entry.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Reason for lines without their own comment.
    pub reason: Option<String>,
    /// Lifetime of the entries (`None`: permanent).
    pub ttl: Option<Duration>,
}

/// What an import changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    pub exact_v4: usize,
    pub exact_v6: usize,
    pub prefix_v4: usize,
    pub prefix_v6: usize,
}

impl ImportSummary {
    /// Entries written.
    pub fn total(&self) -> usize {
        self.exact_v4 + self.exact_v6 + self.prefix_v4 + self.prefix_v6
    }
}

/// Exact entries written per `BPF_MAP_UPDATE_BATCH` system call (24-byte values: 96 KiB of values
/// per call).
const BATCH_ENTRIES: usize = 4096;

/// Writes `lines` into the kernel maps; `progress` is called every few thousand entries with the
/// count so far.
///
/// Exact addresses, the bulk of any list, are written in batches ([`BATCH_ENTRIES`] per system
/// call), the IPv4 and the IPv6 map each by a thread of its own: the kernel's time per entry is
/// most of an import, and the two maps share nothing. The kernel's batch update only replaces (no
/// "fail if present" per element), so before its first batch each writer reads the entries
/// already in its map once (nothing to read in an empty map) to know which reasons the import
/// replaces, as a single `block` learns by reading the entry first. An entry another writer adds
/// to the same address during the import is replaced without its reason being freed (the reason
/// text stays until an entry citing it is removed); everything else is as one `block` per line.
/// Prefixes are written one by one, before the exact entries. Entries of one map are written in
/// the order of the lines, so a later line for the same target wins. When one writer fails, the
/// other stops after its current batch and the first error is returned (the batches written
/// before it stay).
pub fn apply(
    dp: &mut Dataplane,
    lines: &[ImportLine],
    options: &ImportOptions,
    mut progress: impl FnMut(usize),
) -> Result<ImportSummary, DataplaneError> {
    let expires_at_ns = clock::expiry_after(options.ttl);
    let added_at_s = clock::unix_now_s();
    let default_reason = match &options.reason {
        Some(text) => reasons::intern(dp, text)?,
        None => 0,
    };
    let entry = |reason| BlockEntry {
        expires_at_ns,
        added_at_s,
        reason,
        origin: origin::IMPORT,
    };
    // The reasons first (written to their own map, one per distinct text), and the prefixes.
    let mut reason_ids: HashMap<&str, u32> = HashMap::new();
    let mut summary = ImportSummary::default();
    let mut replaced_reasons = HashSet::new();
    for (index, line) in lines.iter().enumerate() {
        let reason = match line.reason.as_deref() {
            Some(text) => match reason_ids.get(text) {
                Some(id) => *id,
                None => {
                    let id = reasons::intern(dp, text)?;
                    reason_ids.insert(text, id);
                    id
                }
            },
            None => default_reason,
        };
        match line.target {
            Target::V4(_) => summary.exact_v4 += 1,
            Target::V6(_) => summary.exact_v6 += 1,
            Target::NetV4(_) | Target::NetV6(_) => {
                if matches!(line.target, Target::NetV4(_)) {
                    summary.prefix_v4 += 1;
                } else {
                    summary.prefix_v6 += 1;
                }
                if let Some(old) = dp.replace_block(line.target, entry(reason))?
                    && old.reason != reason
                {
                    replaced_reasons.insert(old.reason);
                }
                if index % 8192 == 0 {
                    progress(index);
                }
            }
        }
    }
    let prefixes = summary.prefix_v4 + summary.prefix_v6;
    progress(prefixes);
    if summary.exact_v4 > 0 {
        dp.mark_list_used(list_slot::BLOCK_V4)?;
    }
    if summary.exact_v6 > 0 {
        dp.mark_list_used(list_slot::BLOCK_V6)?;
    }

    let reason_of = |line: &ImportLine| match line.reason.as_deref() {
        Some(text) => reason_ids.get(text).copied().unwrap_or(default_reason),
        None => default_reason,
    };
    let v4 = Writer {
        map: &dp.block_v4,
        name: maps::BLOCK_V4,
        capacity: dp.capacity(maps::BLOCK_V4),
        option: "block_v4",
        count: summary.exact_v4,
        key: |target: Target| match target {
            Target::V4(a) => Some(a.octets()),
            _ => None,
        },
    };
    let v6 = Writer {
        map: &dp.block_v6,
        name: maps::BLOCK_V6,
        capacity: dp.capacity(maps::BLOCK_V6),
        option: "block_v6",
        count: summary.exact_v6,
        key: |target: Target| match target {
            Target::V6(a) => Some(a.octets()),
            _ => None,
        },
    };
    let stop = AtomicBool::new(false);
    let (written_tx, written_rx) = mpsc::channel::<usize>();
    let (r4, r6) = std::thread::scope(|scope| {
        let (stop, reason_of, entry) = (&stop, &reason_of, &entry);
        let entry_of = |l: &ImportLine| entry(reason_of(l));
        let tx4 = written_tx.clone();
        let t4 = scope.spawn(move || v4.write(lines, default_reason, entry_of, stop, &tx4));
        let tx6 = written_tx;
        let t6 = scope.spawn(move || v6.write(lines, default_reason, entry_of, stop, &tx6));
        // Both senders end with their writers, which ends this loop.
        let mut done = prefixes;
        for n in written_rx {
            done += n;
            progress(done);
        }
        (join(t4), join(t6))
    });
    for written in [r4?, r6?] {
        replaced_reasons.extend(written.replaced);
        if written.default_untracked {
            // Freed only if no entry cites it any more (a later line with its own reason
            // replaced every entry that did).
            replaced_reasons.insert(default_reason);
        }
    }
    progress(lines.len());
    // One walk for all the reasons the replaced entries cited.
    reasons::release(dp, replaced_reasons)?;
    Ok(summary)
}

/// The result of a writer thread; a panic in one (impossible: it only indexes what it built) is
/// reported as the data plane's internal error rather than propagated.
fn join<T>(
    handle: std::thread::ScopedJoinHandle<'_, Result<T, DataplaneError>>,
) -> Result<T, DataplaneError> {
    handle.join().unwrap_or(Err(DataplaneError::Poisoned))
}

/// An exact-address key of one family.
trait ExactKey: aya::Pod + Copy + Eq + std::hash::Hash + Send {}

impl ExactKey for [u8; 4] {}
impl ExactKey for [u8; 16] {}

/// The writer of one family's exact blocklist map.
struct Writer<'a, K, F> {
    map: &'a aya::maps::HashMap<aya::maps::MapData, K, BlockEntry>,
    name: &'static str,
    capacity: u32,
    /// The configuration option that sizes the map (named in a "full" error).
    option: &'static str,
    /// Lines of this family.
    count: usize,
    /// The key of a line's target, if it is of this family.
    key: F,
}

/// What a writer leaves for the reasons' bookkeeping.
struct Written {
    /// Reasons cited by entries the import replaced.
    replaced: HashSet<u32>,
    /// Entries with the import's default reason were written untracked: one of them may have
    /// been replaced by a later line, so the default reason is a candidate for freeing.
    default_untracked: bool,
}

impl<K: ExactKey, F: Fn(Target) -> Option<K>> Writer<'_, K, F> {
    /// Writes every line of this family, in order, [`BATCH_ENTRIES`] per system call, sending
    /// the count of each batch written to `written`; stops before the next batch once `stop` is
    /// set (by the other writer's failure: then what it wrote stays and it returns what it has), and
    /// sets it on its own failure.
    fn write(
        &self,
        lines: &[ImportLine],
        default_reason: u32,
        entry_of: impl Fn(&ImportLine) -> BlockEntry,
        stop: &AtomicBool,
        written: &mpsc::Sender<usize>,
    ) -> Result<Written, DataplaneError> {
        let mut out = Written {
            replaced: HashSet::new(),
            default_untracked: false,
        };
        if self.count == 0 {
            return Ok(out);
        }
        // The reason of the entries that may be replaced: every entry in the map, then those
        // the import writes, except (when the map was empty) entries with the import's default
        // reason, which `default_untracked` stands for.
        let mut present = self.reasons()?;
        let track_all = !present.is_empty();
        let mut keys = Vec::with_capacity(BATCH_ENTRIES.min(self.count));
        let mut entries = Vec::with_capacity(BATCH_ENTRIES.min(self.count));
        let mine = lines
            .iter()
            .filter_map(|line| (self.key)(line.target).map(|key| (key, line)));
        for (key, line) in mine {
            let entry = entry_of(line);
            // A plain list into an empty map (the usual bulk case) tracks nothing: its entries
            // all cite the default reason, so replacing one another frees nothing.
            let old = if track_all || entry.reason != default_reason {
                present.insert(key, entry.reason)
            } else {
                out.default_untracked = true;
                if present.is_empty() {
                    None
                } else {
                    present.remove(&key)
                }
            };
            if let Some(old) = old
                && old != entry.reason
            {
                out.replaced.insert(old);
            }
            keys.push(key);
            entries.push(entry);
            if keys.len() >= BATCH_ENTRIES && !self.flush(&mut keys, &mut entries, stop, written)? {
                return Ok(out);
            }
        }
        self.flush(&mut keys, &mut entries, stop, written)?;
        Ok(out)
    }

    /// Writes the queued entries in one system call; `Ok(false)` when it did not because the
    /// other writer failed (its error is the import's).
    fn flush(
        &self,
        keys: &mut Vec<K>,
        entries: &mut Vec<BlockEntry>,
        stop: &AtomicBool,
        written: &mpsc::Sender<usize>,
    ) -> Result<bool, DataplaneError> {
        if keys.is_empty() {
            return Ok(true);
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        if let Err(io_error) = batch::update(self.map.map(), keys, entries, 0) {
            stop.store(true, Ordering::Relaxed);
            let source = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_batch",
                io_error,
            });
            return Err(DataplaneError::map(
                self.name,
                self.capacity,
                self.option,
                source,
            ));
        }
        // The receiver lives until both writers end.
        let _ = written.send(keys.len());
        keys.clear();
        entries.clear();
        Ok(true)
    }

    /// The reason of every entry in the map.
    fn reasons(&self) -> Result<HashMap<K, u32>, DataplaneError> {
        let mut out = HashMap::new();
        for item in self.map.iter() {
            match item {
                Ok((key, entry)) => {
                    out.insert(key, entry.reason);
                }
                // Deleted while walking.
                Err(e) if is_not_found(&e) => {}
                Err(source) => {
                    return Err(DataplaneError::Map {
                        name: self.name,
                        source,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input line, then the target and reason it gives, or a fragment of its error.
    type Case = (
        &'static str,
        Result<Option<(&'static str, Option<&'static str>)>, &'static str>,
    );

    #[test]
    fn table_of_lines() {
        let cases: &[Case] = &[
            ("", Ok(None)),
            ("   ", Ok(None)),
            ("# comment", Ok(None)),
            ("; Spamhaus DROP List 2026/11/23", Ok(None)),
            ("198.18.0.7", Ok(Some(("198.18.0.7", None)))),
            (
                "198.18.4.0/22 ; SBL123",
                Ok(Some(("198.18.4.0/22", Some("SBL123")))),
            ),
            (
                "2001:db8:1::/48 # hoster",
                Ok(Some(("2001:db8:1::/48", Some("hoster")))),
            ),
            ("198.18.0.9 ;", Ok(Some(("198.18.0.9", None)))),
            (
                r#"{"cidr":"198.18.8.0/21","sblid":"SBL9","rir":"ripencc"}"#,
                Ok(Some(("198.18.8.0/21", Some("SBL9")))),
            ),
            (
                r#"{"type":"metadata","timestamp":1,"size":2,"records":3}"#,
                Ok(None),
            ),
            ("198.18.0.1/24", Err("host bits")),
            ("198.18.0.300", Err("not an IP")),
            ("198.18.0.1 spammer", Err("unexpected text")),
            (r#"{"cidr":"#, Err("invalid JSON")),
        ];
        for (input, expected) in cases {
            let got = parse_line(input);
            match (got, expected) {
                (Ok(got), Ok(expected)) => {
                    let got = got.map(|(t, r)| (t.to_string(), r));
                    let expected = expected.map(|(t, r)| (t.to_string(), r.map(str::to_string)));
                    assert_eq!(got, expected, "{input:?}");
                }
                (Err(msg), Err(fragment)) => {
                    assert!(msg.contains(fragment), "{input:?}: {msg}");
                }
                (got, expected) => panic!("{input:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_byte_order_mark_before_line_one_is_skipped() {
        let text = "\u{feff}198.18.0.1\n\u{feff}198.18.0.2\n";
        let (good, bad) = parse(text.as_bytes()).expect("read from memory");
        assert_eq!(good.len(), 1, "{good:?}");
        assert_eq!(good[0].line, 1);
        // Only at the start of the file: elsewhere it is a bad character, as before.
        assert_eq!(bad.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn bad_lines_carry_their_numbers() {
        let text = b"198.18.0.1\n\nnot-an-ip\n# c\n198.18.0.0/16 ; x\n\xff\xfe\n2001:db8::1\n";
        let (good, bad) = parse(&text[..]).expect("read from memory");
        assert_eq!(good.len(), 3);
        assert_eq!(good[1].line, 5);
        assert_eq!(good[1].reason.as_deref(), Some("x"));
        assert_eq!(bad.iter().map(|e| e.line).collect::<Vec<_>>(), vec![3, 6]);
        assert!(bad[1].reason.contains("UTF-8"));
    }

    #[test]
    fn a_line_over_the_cap_is_refused_with_its_number_and_the_next_lines_still_count() {
        let mut text = b"198.18.0.1\n".to_vec();
        text.extend(std::iter::repeat_n(b'9', MAX_LINE_BYTES + 1));
        text.extend(b"\n198.18.0.2 ; after\n");
        // A comment exactly at the cap is still a line.
        text.push(b'#');
        text.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES - 1));
        text.extend(b"\n2001:db8::1");
        let (good, bad) = parse(&text[..]).expect("read from memory");
        let lines: Vec<usize> = good.iter().map(|g| g.line).collect();
        assert_eq!(lines, [1, 3, 5]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].line, 2);
        assert!(bad[0].reason.contains("line too long"), "{}", bad[0]);
    }

    /// A file of one line 64 times longer than the cap.
    struct Endless {
        /// Bytes handed out so far.
        given: usize,
    }

    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let limit = 64 * MAX_LINE_BYTES;
            if self.given > limit {
                return Ok(0);
            }
            let Some(first) = buf.first_mut() else {
                return Ok(0);
            };
            if self.given == limit {
                // Far past the cap: end the line, then the file.
                *first = b'\n';
                self.given += 1;
                return Ok(1);
            }
            let n = buf.len().min(limit - self.given);
            buf.iter_mut().take(n).for_each(|b| *b = b'7');
            self.given += n;
            Ok(n)
        }
    }

    #[test]
    fn a_line_far_over_the_cap_streams_by_as_one_error() {
        // Without a cap this line would be held whole before parsing; with it, memory stays
        // bounded (the line is skipped as it streams by).
        let reader = std::io::BufReader::new(Endless { given: 0 });
        let (good, bad) = parse(reader).expect("read from memory");
        assert!(good.is_empty());
        assert_eq!(bad.len(), 1);
        assert!(bad[0].reason.contains("line too long"));
    }
}

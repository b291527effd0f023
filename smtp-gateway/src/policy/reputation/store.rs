//! The exact stores behind the bloom filters: normalized names packed in one sorted arena,
//! sorted address arrays, and prefixes grouped by length. See the memory figures in `mod.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::entry::IpEntry;

/// The exact store of a list.
pub(super) enum Exact {
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

impl Exact {
    /// Entries that go through the bloom filter (everything but prefixes).
    pub(super) fn exact_count(&self) -> usize {
        match self {
            Self::Names(names) => names.len(),
            Self::Ips { v4, v6, .. } => v4.len() + v6.len(),
        }
    }

    /// Calls `f` with the bloom key of every exact entry: the normalized text of a name, the
    /// 4 or 16 octets of an address.
    pub(super) fn for_each_key(&self, mut f: impl FnMut(&[u8])) {
        match self {
            Self::Names(names) => (0..names.len()).for_each(|i| f(names.get(i).as_bytes())),
            Self::Ips { v4, v6, .. } => {
                v4.iter().for_each(|&a| f(&Ipv4Addr::from(a).octets()));
                v6.iter().for_each(|&a| f(&Ipv6Addr::from(a).octets()));
            }
        }
    }
}

/// Normalized names, sorted and deduplicated, back to back in one arena: entry `i` is
/// `text[ends[i - 1]..ends[i]]` (from 0 for the first). Entry length + 4 bytes per entry.
pub(super) struct SortedNames {
    /// The entries, concatenated in sorted order.
    text: Box<str>,
    /// End offset of each entry in `text`.
    ends: Box<[u32]>,
}

impl SortedNames {
    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Entry `i` (`i < len()`).
    fn get(&self, i: usize) -> &str {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        self.text
            .get(start..self.ends[i] as usize)
            .unwrap_or_default()
    }

    /// Binary search for `key`: O(log n) comparisons.
    pub(super) fn contains(&self, key: &str) -> bool {
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
    pub(super) fn bytes(&self) -> usize {
        self.text.len() + size_of_val::<[u32]>(&self.ends)
    }
}

/// Collects names in file order, then sorts them into a [`SortedNames`].
#[derive(Default)]
pub(super) struct NamesBuilder {
    /// The names as read, back to back.
    text: String,
    /// `(start, end)` of each name in `text`.
    spans: Vec<(u32, u32)>,
}

impl NamesBuilder {
    /// Appends `name`; fails when the list's text would exceed 4 GiB.
    pub(super) fn push(&mut self, name: &str) -> Result<(), &'static str> {
        let too_large = "the list's entries exceed 4 GiB of text; split it into several lists";
        let start = u32::try_from(self.text.len()).map_err(|_| too_large)?;
        let end = u32::try_from(self.text.len() + name.len()).map_err(|_| too_large)?;
        self.text.push_str(name);
        self.spans.push((start, end));
        Ok(())
    }

    /// Sorts (bytewise, as `str` compares), merges duplicates and packs the names.
    pub(super) fn finish(self) -> SortedNames {
        let Self { text, mut spans } = self;
        let name =
            |&(start, end): &(u32, u32)| text.get(start as usize..end as usize).unwrap_or_default();
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
pub(super) struct IpBuilder {
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
    pub(super) fn push(&mut self, entry: IpEntry) {
        match entry {
            IpEntry::Addr(IpAddr::V4(a)) => self.v4.push(a.into()),
            IpEntry::Addr(IpAddr::V6(a)) => self.v6.push(a.into()),
            IpEntry::Net(IpNet::V4(n)) => self.nets_v4.push((n.network().into(), n.prefix_len())),
            IpEntry::Net(IpNet::V6(n)) => self.nets_v6.push((n.network().into(), n.prefix_len())),
        }
    }

    /// Sorts and deduplicates everything.
    pub(super) fn finish(self) -> Exact {
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
pub(super) trait AddrBits: Copy + Ord {
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
pub(super) struct PrefixSet<T> {
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
    pub(super) fn contains(&self, addr: T) -> bool {
        self.by_len
            .iter()
            .any(|(len, nets)| nets.binary_search(&addr.mask(*len)).is_ok())
    }

    /// Number of prefixes.
    pub(super) fn len(&self) -> usize {
        self.by_len.iter().map(|(_, nets)| nets.len()).sum()
    }

    /// Heap bytes.
    pub(super) fn bytes(&self) -> usize {
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
    use crate::policy::reputation::{
        ListKind,
        test_files::{TempFile, list, load},
    };

    #[test]
    fn stats_count_bytes_per_entry() {
        let file = TempFile::new("a.example\nbb.example\n");
        let reputation = load(vec![list("two", ListKind::Helo, &file)]);
        let stats = &reputation.stats()[0];
        assert_eq!(stats.exact_bytes, 9 + 10 + 2 * 4);
        // Two entries at 0.001 need 29 bits: 4 bytes of bits and the 45-byte header.
        assert_eq!(stats.bloom_bytes, 4 + 45);
    }
}

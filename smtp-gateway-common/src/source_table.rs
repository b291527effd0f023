//! The per-source counters' table: a per-CPU array of small sets, indexed by a seeded hash of the
//! source, each set holding [`SOURCE_WAYS`] sources with their counters.
//!
//! The XDP program finds a source's slot with an array lookup the verifier inlines (no kernel
//! call, no lock, no allocation) instead of the LRU per-CPU hash of earlier builds, whose lookup
//! and insert were kernel calls on every inspected packet (bench-xdp: about 33 ns of the 58 ns an
//! inspected SYN cost above the uninspected baseline). A source missing from its set takes the
//! way seen least recently (an empty way first): the table forgets the sources that have been
//! quiet longest among those that share a set, as the LRU forgot the quietest overall.
//!
//! Each CPU owns its copy of every set, so updates need no atomics; a source seen on several CPUs
//! has a slot in each, and userspace sums them by key (a source may even sit in two sets of one
//! CPU after the seed changed: summed too). The seed lives in the pinned `SOURCE_INDEX` map, made
//! at random when the table is created, so no client can pick sources that land in the set of
//! another one to wipe its counters.

use crate::{SourceKey, SourceStats};

/// Sources one set holds.
pub const SOURCE_WAYS: usize = 2;

/// One source and its counters on one CPU. `stats.packets == 0`: an empty way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSlot {
    /// The source.
    pub key: SourceKey,
    /// Its counters on this CPU since it took the way.
    pub stats: SourceStats,
}

/// One entry of the `SOURCE_TABLE` per-CPU array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSet {
    /// The sources of this set; the order means nothing.
    pub ways: [SourceSlot; SOURCE_WAYS],
}

/// Value of the `SOURCE_INDEX` array (one entry): how a source finds its set.
/// `sets_mask == 0` means not written yet: the program records no source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceIndex {
    /// Mixed into the hash of every source.
    pub seed: u64,
    /// The table's number of sets (a power of two) minus one.
    pub sets_mask: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
}

impl SourceIndex {
    /// The set of the source whose key is `words` (its 16 bytes as two native-endian words,
    /// [`SourceKey::words`]): a multiply-xorshift mix of both words and the seed, masked.
    #[inline(always)]
    pub const fn set_of(&self, words: [u64; 2]) -> u32 {
        let mut x = (words[0] ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ words[1];
        x ^= x >> 32;
        x = x.wrapping_mul(0xd6e8_feb8_6659_fd93);
        x ^= x >> 32;
        (x as u32) & self.sets_mask
    }
}

impl SourceKey {
    /// The key's 16 bytes as two native-endian words (the form [`SourceIndex::set_of`] hashes).
    #[inline(always)]
    pub const fn words(&self) -> [u64; 2] {
        let a = &self.addr;
        [
            u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
            u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
        ]
    }
}

/// Sets of a table for `sources` sources: `sources` / [`SOURCE_WAYS`] rounded up to a power of
/// two (so a set is found by a mask), at least one.
pub const fn sets_for(sources: u32) -> u32 {
    let sets = sources.div_ceil(SOURCE_WAYS as u32);
    if sets <= 1 {
        1
    } else {
        match sets.checked_next_power_of_two() {
            Some(n) => n,
            None => 1 << 31,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SourceSlot>(), 56);
        assert_eq!(core::mem::size_of::<SourceSet>(), 56 * SOURCE_WAYS);
        assert_eq!(core::mem::size_of::<SourceIndex>(), 16);
    }

    #[test]
    fn sets_round_up_to_a_power_of_two() {
        assert_eq!(sets_for(0), 1);
        assert_eq!(sets_for(1), 1);
        assert_eq!(sets_for(2), 1);
        assert_eq!(sets_for(3), 2);
        assert_eq!(sets_for(1024), 512);
        assert_eq!(sets_for(1025), 1024);
        assert_eq!(sets_for(256 * 1024), 128 * 1024);
        assert_eq!(sets_for(u32::MAX), 1 << 31);
    }

    /// Sources of one /24 and of one /64 spread over the sets about evenly, and the seed moves
    /// them: no set gets more than a few times its share.
    #[test]
    fn neighbouring_sources_spread_over_the_sets() {
        for seed in [0u64, 0x1234_5678_9abc_def0] {
            let index = SourceIndex {
                seed,
                sets_mask: 63,
                _pad: 0,
            };
            let mut v4 = [0u32; 64];
            let mut v6 = [0u32; 64];
            for i in 0..=255u8 {
                v4[index.set_of(SourceKey::from_v4([198, 18, 0, i]).words()) as usize] += 1;
                let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                a[15] = i;
                v6[index.set_of(SourceKey::from_v6(a).words()) as usize] += 1;
            }
            // 256 sources over 64 sets: 4 each on average.
            for counts in [v4, v6] {
                assert!(counts.iter().all(|n| *n <= 16), "{counts:?}");
                assert!(
                    counts.iter().filter(|n| **n == 0).count() < 16,
                    "{counts:?}"
                );
            }
        }
        let a = SourceIndex {
            seed: 1,
            sets_mask: u32::MAX,
            _pad: 0,
        };
        let b = SourceIndex { seed: 2, ..a };
        let key = SourceKey::from_v4([198, 18, 0, 7]).words();
        assert_ne!(a.set_of(key), b.set_of(key), "the seed moves a source");
    }
}

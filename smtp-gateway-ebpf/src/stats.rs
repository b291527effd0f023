//! Counters: per-CPU per-verdict packets and bytes, and per-source counters in a per-CPU table of
//! sets (`smtp_gateway_common::source_table`; each CPU owns its copy, so updates need no atomics).
//! Nothing is logged per packet.

use smtp_gateway_common::{SOURCE_WAYS, SourceIndex, SourceKey, SourceSlot, SourceStats, Verdict};

use crate::{SOURCE_INDEX, SOURCE_TABLE, VERDICTS, parse::Source};

// `record_source` looks at exactly two ways.
const _: () = assert!(SOURCE_WAYS == 2);

// `source_key` lays the key out as two native words: bpfel only.
const _: () = assert!(cfg!(target_endian = "little"));

/// The per-source key of `src` (IPv4 as `::ffff:a.b.c.d`), built as two 8-byte words:
/// `SourceKey::from_v4` builds it byte by byte, which compiles to a memset loop (a BPF-to-BPF
/// call) and a dozen byte stores on every inspected IPv4 packet.
#[inline(always)]
pub fn source_key(src: Source) -> SourceKey {
    match src {
        Source::V4(a) => {
            // Bytes 8..16 of the key, little-endian: 0, 0, 0xff, 0xff, then the address.
            let low = 0xffff_0000 | (u64::from(u32::from_ne_bytes(a)) << 32);
            // SAFETY: `SourceKey` is `#[repr(C)]` around `[u8; 16]`: 16 bytes, every bit pattern
            // valid, the same size as `[u64; 2]`.
            unsafe { core::mem::transmute::<[u64; 2], SourceKey>([0, low]) }
        }
        Source::V6(a) => SourceKey::from_v6(a),
    }
}

#[inline(always)]
pub fn count(verdict: Verdict, len: u64) {
    if let Some(c) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot of a fixed-size array; no other writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

/// Adds one packet to the counters of the source whose key is `key`: in its set of this CPU's
/// `SOURCE_TABLE`, in the way that holds it, else in the way seen least recently (an empty one
/// first), which it takes over with fresh counters. An array lookup the verifier inlines, no
/// kernel call.
#[inline(always)]
pub fn record_source(key: &SourceKey, len: u64, syn: bool, dropped: bool, now: u64) {
    // SAFETY: 16 plain bytes read as two words (`SourceKey::words`, without the byte shuffling).
    let words = unsafe { core::mem::transmute::<SourceKey, [u64; 2]>(*key) };
    // Never written (no userspace has opened the maps yet): every source in set 0, seed 0.
    let index = match SOURCE_INDEX.get(0) {
        Some(i) => *i,
        None => SourceIndex::default(),
    };
    let Some(set) = SOURCE_TABLE.get_ptr_mut(index.set_of(words)) else {
        return;
    };
    // SAFETY: this CPU's copy of the set: no other writer (XDP does not nest on one CPU).
    // Userspace may read it concurrently and see one packet's update half done, never more.
    let (a, b) = unsafe { (&raw mut (*set).ways[0], &raw mut (*set).ways[1]) };
    let slot = if holds(a, words) {
        a
    } else if holds(b, words) {
        b
    } else {
        // SAFETY: as above.
        let (a_seen, b_seen) = unsafe { ((*a).stats.last_seen_ns, (*b).stats.last_seen_ns) };
        // An empty way has last_seen 0: it goes first.
        let slot = if a_seen <= b_seen { a } else { b };
        // SAFETY: as above.
        unsafe {
            *slot = SourceSlot {
                key: *key,
                stats: SourceStats::default(),
            };
        }
        slot
    };
    // SAFETY: as above.
    unsafe {
        let s = &raw mut (*slot).stats;
        (*s).packets += 1;
        (*s).bytes += len;
        (*s).syns += syn as u64;
        (*s).drops += dropped as u64;
        (*s).last_seen_ns = now;
    }
}

/// Whether `slot` holds the source whose key is `words`.
#[inline(always)]
fn holds(slot: *const SourceSlot, words: [u64; 2]) -> bool {
    // SAFETY: `slot` points into a map value (8-aligned: `SourceSlot` starts with its 16-byte key
    // and holds u64 counters, and sets are 112 bytes), so its key reads as two aligned words.
    let held = unsafe { core::ptr::read(slot as *const [u64; 2]) };
    // SAFETY: as above.
    let used = unsafe { (*slot).stats.packets } != 0;
    used && held[0] == words[0] && held[1] == words[1]
}

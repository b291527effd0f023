//! Counters: per-CPU per-verdict packets and bytes, and per-source counters in an LRU per-CPU hash
//! (each CPU owns its slot, so updates need no atomics). Nothing is logged per packet.

use smtp_gateway_common::{SourceKey, SourceStats, Verdict};

use crate::{SOURCE_STATS, VERDICTS, parse::Source};

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

#[inline(always)]
pub fn record_source(key: &SourceKey, len: u64, syn: bool, dropped: bool, now: u64) {
    let syns = syn as u64;
    let drops = dropped as u64;
    match SOURCE_STATS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of the entry.
        Some(s) => unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
            (*s).syns += syns;
            (*s).drops += drops;
            (*s).last_seen_ns = now;
        },
        None => {
            let s = SourceStats {
                packets: 1,
                bytes: len,
                syns,
                drops,
                last_seen_ns: now,
            };
            // Best effort: a failed insert loses one packet's statistics, never the verdict.
            let _ = SOURCE_STATS.insert(key, &s, 0);
        }
    }
}

//! Counters: per-CPU per-verdict packets and bytes, and per-source counters in an LRU per-CPU hash
//! (each CPU owns its slot, so updates need no atomics). Nothing is logged per packet.

use smtp_gateway_common::{SourceKey, SourceStats, Verdict};

use crate::{SOURCE_STATS, VERDICTS};

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

//! Per-source SYN limiter: GCRA, the single-timestamp form of a token bucket of `burst` tokens
//! refilled at `rate` per second. The arithmetic is `RateState::admit` in the common crate (where
//! the property tests exercise it); this file keys it and keeps its state in the LRU map.
//!
//! - Key: the IPv4 address or the IPv6 prefix (/64 by default) under the configured masks, so a
//!   host cannot dodge the limit by walking its own /64.
//! - One shared LRU hash (not per-CPU): SYNs of one source arrive on several CPUs (RSS hashes the
//!   source port too), and per-CPU buckets would multiply the limit by the CPU count. The
//!   read-modify-write is not atomic: SYNs of one source racing on N CPUs in the same instant may
//!   each spend the same token, so a source can exceed its burst by at most N-1 SYNs per race.
//! - Entries are created on SYNs only. A spoofed flood (a new source per packet) churns the LRU and
//!   each spoofed source gets a fresh burst: a per-source limit cannot stop such floods by design
//!   (SYN cookies in the kernel stack do); what it stops is a real host opening connections too fast.
//!   The LRU evicts the least recently seen sources first, so a flooding host that keeps sending
//!   stays in the map while idle entries go.

use smtp_gateway_common::{DataplaneConfig, RateState, SourceKey};

use crate::{RATE_STATE, parse::Source, stats};

/// Whether a SYN from `src` at `now` is within its limit (and charge it if so).
#[inline(always)]
pub fn admit(src: Source, cfg: &DataplaneConfig, now: u64) -> bool {
    let key = masked_key(src, cfg);
    match RATE_STATE.get_ptr_mut(&key) {
        Some(state) => {
            // SAFETY: the pointer comes from a successful lookup; the value is plain data.
            let current = unsafe { *state };
            match RateState::admit(
                Some(current),
                now,
                cfg.rate_interval_ns,
                cfg.rate_tolerance_ns,
            ) {
                Some(next) => {
                    // SAFETY: as above.
                    unsafe { *state = next };
                    true
                }
                None => false,
            }
        }
        None => {
            if let Some(state) =
                RateState::admit(None, now, cfg.rate_interval_ns, cfg.rate_tolerance_ns)
            {
                // A failed insert (map busy) admits the SYN: the limiter must never drop by
                // accident.
                let _ = RATE_STATE.insert(&key, &state, 0);
            }
            true
        }
    }
}

#[inline(always)]
fn masked_key(src: Source, cfg: &DataplaneConfig) -> SourceKey {
    match src {
        Source::V4(a) => {
            let masked = u32::from_ne_bytes(a) & cfg.rate_v4_mask;
            stats::source_key(Source::V4(masked.to_ne_bytes()))
        }
        Source::V6(a) => {
            let mut hi = [0u8; 8];
            let mut lo = [0u8; 8];
            hi.copy_from_slice(&a[..8]);
            lo.copy_from_slice(&a[8..]);
            let hi = (u64::from_ne_bytes(hi) & cfg.rate_v6_mask[0]).to_ne_bytes();
            let lo = (u64::from_ne_bytes(lo) & cfg.rate_v6_mask[1]).to_ne_bytes();
            let mut addr = [0u8; 16];
            addr[..8].copy_from_slice(&hi);
            addr[8..].copy_from_slice(&lo);
            SourceKey::from_v6(addr)
        }
    }
}

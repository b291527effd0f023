//! The verdict for one packet: protected port, allowlist, fragment/extension-header policy,
//! exact blocklist, prefix blocklist, SYN rate limit, in that order. A list that has never held an
//! entry (its `LISTS_USED` slot is 0) is not looked up.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_coarse_ns,
    maps::{LpmTrie, lpm_trie::Key},
    programs::XdpContext,
};
use smtp_gateway_common::{BlockEntry, DataplaneConfig, Verdict, config_flags, list_slot};

use crate::{
    ALLOW_V4, ALLOW_V6, BLOCK_NET_V4, BLOCK_NET_V6, BLOCK_V4, BLOCK_V6, CONFIG, LISTS_USED, PORTS,
    parse::{self, Parsed, Source, TcpPacket},
    ratelimit, stats, trace,
};

/// The XDP action for the packet in `ctx`. Every packet gets one: a header that cannot be read is
/// [`Parsed::Malformed`] and handled by the `malformed` policy, so there is no error path.
#[inline(always)]
pub fn action(ctx: &XdpContext) -> u32 {
    let len = parse::frame_len(ctx);
    let packet = match parse::parse(ctx) {
        Parsed::Tcp(packet) if port_protected(packet.dst_port) => packet,
        Parsed::Tcp(_) | Parsed::Other => {
            stats::count(Verdict::NotInspected, len);
            return xdp_action::XDP_PASS;
        }
        Parsed::Malformed => {
            stats::count(Verdict::Malformed, len);
            return if config().flags & config_flags::DROP_MALFORMED != 0 {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            };
        }
        Parsed::Uninspectable => {
            stats::count(Verdict::FragmentOrExtHeader, len);
            return xdp_action::XDP_DROP;
        }
    };

    let cfg = config();
    // The coarse monotonic clock (CLOCK_MONOTONIC_COARSE: the base userspace writes expiries in,
    // at most one tick behind): one kernel tick of resolution is plenty for expiries, the SYN limiter's intervals
    // and last-seen times, and reading it costs a third of the per-packet time the precise
    // clock took on a VM (bench-xdp: ~105 -> ~75 ns per inspected SYN).
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let verdict = decide(&packet, &cfg, now);
    let dropped = !matches!(verdict, Verdict::Passed | Verdict::Allowlisted);
    let key = stats::source_key(packet.src);
    stats::count(verdict, len);
    stats::record_source(&key, len, packet.syn, dropped, now);
    if cfg.flags & config_flags::TRACE != 0 {
        trace::emit(ctx, &key, trace::packed(&packet, verdict), now);
    }
    if dropped {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn decide(packet: &TcpPacket, cfg: &DataplaneConfig, now: u64) -> Verdict {
    if allowlisted(packet.src) {
        return Verdict::Allowlisted;
    }
    if (packet.fragment && cfg.flags & config_flags::DROP_FRAGMENTS != 0)
        || (packet.ext_headers && cfg.flags & config_flags::DROP_EXT_HEADERS != 0)
    {
        return Verdict::FragmentOrExtHeader;
    }
    // The exact entry is looked up first and wins; the prefix trie only when it did not drop.
    // SAFETY (both `get`s): values are plain data; a concurrent userspace delete can only make us
    // read a stale entry for this one packet.
    match packet.src {
        Source::V4(a) => {
            if used(list_slot::BLOCK_V4) && active(unsafe { BLOCK_V4.get(a) }, now) {
                return Verdict::DroppedExact;
            }
            if used(list_slot::BLOCK_NET_V4) && covered(&BLOCK_NET_V4, a, now) {
                return Verdict::DroppedCidr;
            }
        }
        Source::V6(a) => {
            if used(list_slot::BLOCK_V6) && active(unsafe { BLOCK_V6.get(a) }, now) {
                return Verdict::DroppedExact;
            }
            if used(list_slot::BLOCK_NET_V6) && covered(&BLOCK_NET_V6, a, now) {
                return Verdict::DroppedCidr;
            }
        }
    }
    if packet.syn
        && cfg.flags & config_flags::RATE_LIMIT != 0
        && !ratelimit::admit(packet.src, cfg, now)
    {
        return Verdict::RateLimited;
    }
    Verdict::Passed
}

/// Whether an active entry of `trie` covers `addr` (`N` bytes: 4 or 16). A lookup answers the
/// longest prefix only; when that one has expired (the sweep has not removed it yet), a shorter
/// prefix may still cover the source: each lookup at a shorter length answers the longest match
/// up to it, a new entry when its pointer differs. One lookup when the longest match is active or
/// there is none; at most `8 * N` more, only behind an expired entry.
#[inline(always)]
fn covered<const N: usize>(trie: &LpmTrie<[u8; N], BlockEntry>, addr: [u8; N], now: u64) -> bool {
    let bits = (N * 8) as u32;
    let Some(mut last) = trie.get(Key::new(bits, addr)) else {
        return false;
    };
    if last.is_active(now) {
        return true;
    }
    let mut len = bits;
    while len > 0 {
        len -= 1;
        match trie.get(Key::new(len, addr)) {
            None => return false,
            Some(entry) if core::ptr::eq(entry, last) => {}
            Some(entry) if entry.is_active(now) => return true,
            Some(entry) => last = entry,
        }
    }
    false
}

#[inline(always)]
fn active(entry: Option<&BlockEntry>, now: u64) -> bool {
    match entry {
        Some(e) => e.is_active(now),
        None => false,
    }
}

#[inline(always)]
fn allowlisted(src: Source) -> bool {
    match src {
        Source::V4(a) => used(list_slot::ALLOW_V4) && ALLOW_V4.get(Key::new(32, a)).is_some(),
        Source::V6(a) => used(list_slot::ALLOW_V6) && ALLOW_V6.get(Key::new(128, a)).is_some(),
    }
}

/// Whether the list map of `slot` has ever held an entry (see `list_slot`); a map that never did
/// cannot match, so its lookup is skipped. An unreadable slot (impossible: the array has one per
/// list) counts as used, the side that never misses an entry.
#[inline(always)]
fn used(slot: u32) -> bool {
    match LISTS_USED.get(slot) {
        Some(v) => *v != 0,
        None => true,
    }
}

#[inline(always)]
fn port_protected(port: u16) -> bool {
    match PORTS.get((port >> 6) as u32) {
        Some(word) => word & (1u64 << (port & 63)) != 0,
        None => false,
    }
}

#[inline(always)]
fn config() -> DataplaneConfig {
    match CONFIG.get(0) {
        Some(cfg) => *cfg,
        None => DataplaneConfig::default(),
    }
}

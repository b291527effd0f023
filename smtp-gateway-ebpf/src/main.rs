//! The smtp-gateway XDP program: the maps and the entry point only.
//!
//! - `parse.rs`: Ethernet (+ up to two VLAN tags) / IPv4 / IPv6 (+ extension headers) / TCP;
//! - `policy.rs`: protected ports, allowlist, blocklists (exact and prefix; a list that has never
//!   held an entry is not looked up), the verdict;
//! - `ratelimit.rs`: per-source SYN limiter (GCRA in an LRU hash);
//! - `stats.rs`: per-CPU verdict counters and per-source counters (a per-CPU table of sets);
//! - `trace.rs`: the aya-log line of each packet of a traced source (`why --follow`).
//!
//! Every map is pinned by name under the directory userspace gives the loader, so kernel
//! protection and all entries survive the daemon (aya-log's ring buffer is not pinned: it lives
//! as long as the program). Nothing is logged per packet unless a source is traced.
#![no_std]
#![no_main]

mod parse;
mod policy;
mod ratelimit;
mod stats;
mod trace;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use smtp_gateway_common::{
    AllowEntry, BlockEntry, DataplaneConfig, Meta, RateState, ReasonText, SourceIndex, SourceKey,
    SourceSet, Verdict, VerdictCounters, capacity, list_slot, sets_for,
};

/// Exact IPv4 sources to drop (allocated on demand: millions of entries cost nothing until used).
#[map]
static BLOCK_V4: HashMap<[u8; 4], BlockEntry> =
    HashMap::pinned(capacity::BLOCK_V4, BPF_F_NO_PREALLOC);

/// Exact IPv6 sources to drop.
#[map]
static BLOCK_V6: HashMap<[u8; 16], BlockEntry> =
    HashMap::pinned(capacity::BLOCK_V6, BPF_F_NO_PREALLOC);

/// IPv4 prefixes to drop (longest match wins).
#[map]
static BLOCK_NET_V4: LpmTrie<[u8; 4], BlockEntry> = LpmTrie::pinned(capacity::BLOCK_NET_V4, 0);

/// IPv6 prefixes to drop.
#[map]
static BLOCK_NET_V6: LpmTrie<[u8; 16], BlockEntry> = LpmTrie::pinned(capacity::BLOCK_NET_V6, 0);

/// IPv4 prefixes never dropped nor rate-limited.
#[map]
static ALLOW_V4: LpmTrie<[u8; 4], AllowEntry> = LpmTrie::pinned(capacity::ALLOW_V4, 0);

/// IPv6 prefixes never dropped nor rate-limited.
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], AllowEntry> = LpmTrie::pinned(capacity::ALLOW_V6, 0);

/// SYN limiter state per source (IPv4 address or IPv6 prefix), shared by all CPUs.
#[map]
static RATE_STATE: LruHashMap<SourceKey, RateState> = LruHashMap::pinned(capacity::RATE_STATE, 0);

/// Per-source counters: sets of sources indexed by a seeded hash, one copy per CPU so the hot
/// path never contends (`smtp_gateway_common::source_table`).
#[map]
static SOURCE_TABLE: PerCpuArray<SourceSet> =
    PerCpuArray::pinned(sets_for(capacity::SOURCE_STATS), 0);

/// The seed and set mask of `SOURCE_TABLE`, written by userspace when it creates the table.
#[map]
static SOURCE_INDEX: Array<SourceIndex> = Array::pinned(1, 0);

/// Per-verdict counters, per CPU.
#[map]
static VERDICTS: PerCpuArray<VerdictCounters> = PerCpuArray::pinned(Verdict::COUNT, 0);

/// Protected destination ports: bit `p % 64` of word `p / 64`.
#[map]
static PORTS: Array<u64> = Array::pinned(capacity::PORT_WORDS, 0);

/// Runtime configuration at index 0.
#[map]
static CONFIG: Array<DataplaneConfig> = Array::pinned(1, 0);

/// Reason texts for blocklist entries; read by userspace only, kept in the kernel so they
/// survive the daemon together with the entries.
#[map]
static REASONS: HashMap<u32, ReasonText> = HashMap::pinned(capacity::REASONS, BPF_F_NO_PREALLOC);

/// Pinned-state metadata; userspace only.
#[map]
static META: Array<Meta> = Array::pinned(1, 0);

/// Which list maps have ever held an entry (`list_slot`): the lookups of the others are skipped.
#[map]
static LISTS_USED: Array<u32> = Array::pinned(list_slot::COUNT, 0);

/// Traced sources (`why --follow`): per-source key, monotonic end of the trace (ns). Looked up
/// only while `config_flags::TRACE` is set.
#[map]
static TRACE: HashMap<SourceKey, u64> = HashMap::pinned(capacity::TRACE, 0);

/// The entry point: the verdict of [`policy::action`], which has no error path (a packet the
/// parser cannot read is `Malformed`, a verdict of its own), so nothing maps to `XDP_ABORTED`.
#[xdp]
pub fn smtp_gateway(ctx: XdpContext) -> u32 {
    policy::action(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

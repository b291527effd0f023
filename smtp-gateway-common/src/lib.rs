//! # smtp-gateway-common
//!
//! Everything the XDP program (`smtp-gateway-ebpf`) and userspace (`smtp-gateway`) must agree on,
//! in one `#![no_std]` crate so the two sides can never drift apart:
//!
//! - [`maps`]: map names (also their pin file names) and default capacities;
//! - keys and values stored in those maps (`#[repr(C)]`, explicit padding, no implicit holes);
//! - [`Verdict`]: the index of every per-CPU verdict counter;
//! - [`DataplaneConfig`]: the runtime knobs userspace writes into the `CONFIG` array;
//! - [`source_table`]: the per-source counters' table and how a source finds its set;
//! - [`LAYOUT_VERSION`]: bumped whenever anything above changes size or meaning. Pinned state lives in
//!   a directory named after it, and userspace refuses pinned maps whose shape does not match. A map
//!   that holds nothing worth keeping (counters) is replaced under a new name instead, and the
//!   earlier build's pin removed ([`maps::RETIRED`]): an upgrade keeps every list entry.
//!
//! The `user` feature implements `aya::Pod` for the types so userspace can read and write them.
#![no_std]

pub mod source_table;

pub use source_table::{SOURCE_WAYS, SourceIndex, SourceSet, SourceSlot, sets_for};

/// Version of the pinned-state layout. Pins live under `<pin_dir>/v<LAYOUT_VERSION>/`.
pub const LAYOUT_VERSION: u32 = 1;

/// Map names. Each is the `static` name in the XDP program, the kernel map name (at most 15
/// bytes) and the pin file name under the versioned pin directory.
pub mod maps {
    /// Exact IPv4 sources: key `[u8; 4]` (network order), value [`crate::BlockEntry`].
    pub const BLOCK_V4: &str = "BLOCK_V4";
    /// Exact IPv6 sources: key `[u8; 16]`, value [`crate::BlockEntry`].
    pub const BLOCK_V6: &str = "BLOCK_V6";
    /// IPv4 prefixes (LPM trie): key `{prefix_len: u32, [u8; 4]}`, value [`crate::BlockEntry`].
    pub const BLOCK_NET_V4: &str = "BLOCK_NET_V4";
    /// IPv6 prefixes (LPM trie): key `{prefix_len: u32, [u8; 16]}`, value [`crate::BlockEntry`].
    pub const BLOCK_NET_V6: &str = "BLOCK_NET_V6";
    /// IPv4 allowlist prefixes (LPM trie), value [`crate::AllowEntry`].
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// IPv6 allowlist prefixes (LPM trie), value [`crate::AllowEntry`].
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// SYN token buckets (LRU hash): key [`crate::SourceKey`] masked to the rate-limit prefix,
    /// value [`crate::RateState`].
    pub const RATE_STATE: &str = "RATE_STATE";
    /// Per-source counters (per-CPU array of sets, [`crate::source_table`]): key the set index
    /// (`u32`), value [`crate::SourceSet`].
    pub const SOURCE_TABLE: &str = "SOURCE_TABLE";
    /// How a source finds its set of `SOURCE_TABLE`: one [`crate::SourceIndex`] at index 0.
    pub const SOURCE_INDEX: &str = "SOURCE_INDEX";
    /// Per-verdict counters (per-CPU array indexed by [`crate::Verdict`]).
    pub const VERDICTS: &str = "VERDICTS";
    /// Protected destination ports: a 65536-bit bitmap in 1024 `u64` words.
    pub const PORTS: &str = "PORTS";
    /// Runtime configuration: one [`crate::DataplaneConfig`] at index 0.
    pub const CONFIG: &str = "CONFIG";
    /// Reason texts: key reason id (`u32`), value [`crate::ReasonText`].
    pub const REASONS: &str = "REASONS";
    /// Pinned-state metadata: one [`crate::Meta`] at index 0.
    pub const META: &str = "META";
    /// Which lists have ever held an entry: one `u32` per [`crate::list_slot`], 0 or 1.
    pub const LISTS_USED: &str = "LISTS_USED";
    /// Traced sources of `why --follow` (hash): key [`crate::SourceKey`], value the monotonic
    /// time (ns, coarse clock) the trace ends; read only while [`crate::config_flags::TRACE`] is
    /// set.
    pub const TRACE: &str = "TRACE";

    /// Every map, in the order userspace checks and opens them.
    pub const ALL: [&str; 16] = [
        BLOCK_V4,
        BLOCK_V6,
        BLOCK_NET_V4,
        BLOCK_NET_V6,
        ALLOW_V4,
        ALLOW_V6,
        RATE_STATE,
        SOURCE_TABLE,
        SOURCE_INDEX,
        VERDICTS,
        PORTS,
        CONFIG,
        REASONS,
        META,
        LISTS_USED,
        TRACE,
    ];

    /// Maps of earlier builds that this one no longer has. Their pins hold nothing worth
    /// keeping (counters) and are removed when the maps are opened, and by `detach`.
    pub const RETIRED: [&str; 1] = [
        // The per-source counters as an LRU per-CPU hash, before `SOURCE_TABLE`.
        "SOURCE_STATS",
    ];
}

/// Slots of the `LISTS_USED` array, one per list map. A slot goes from 0 to 1 when userspace is
/// about to write the first entry into its map, and never back (not when entries expire or are
/// deleted): the XDP program skips the lookups of a map whose slot is 0, a map that has never held
/// an entry. Writers only ever store 1 into their own slot, so concurrent writers (daemon, CLI,
/// import) cannot undo each other, and the slot lives in a pinned map, so it outlives the daemon
/// together with the entries it speaks for.
pub mod list_slot {
    /// `BLOCK_V4`.
    pub const BLOCK_V4: u32 = 0;
    /// `BLOCK_V6`.
    pub const BLOCK_V6: u32 = 1;
    /// `BLOCK_NET_V4`.
    pub const BLOCK_NET_V4: u32 = 2;
    /// `BLOCK_NET_V6`.
    pub const BLOCK_NET_V6: u32 = 3;
    /// `ALLOW_V4`.
    pub const ALLOW_V4: u32 = 4;
    /// `ALLOW_V6`.
    pub const ALLOW_V6: u32 = 5;
    /// Number of slots (size of the `LISTS_USED` array).
    pub const COUNT: u32 = 6;
}

/// Default capacities, used by the object file. Userspace overrides the resizable ones from the
/// `[dataplane.capacity]` config section when it creates the maps.
pub mod capacity {
    /// Exact IPv4 blocklist entries (hash, allocated on demand).
    pub const BLOCK_V4: u32 = 4 * 1024 * 1024;
    /// Exact IPv6 blocklist entries (hash, allocated on demand).
    pub const BLOCK_V6: u32 = 2 * 1024 * 1024;
    /// IPv4 blocklist prefixes.
    pub const BLOCK_NET_V4: u32 = 512 * 1024;
    /// IPv6 blocklist prefixes.
    pub const BLOCK_NET_V6: u32 = 512 * 1024;
    /// IPv4 allowlist prefixes.
    pub const ALLOW_V4: u32 = 64 * 1024;
    /// IPv6 allowlist prefixes.
    pub const ALLOW_V6: u32 = 64 * 1024;
    /// Rate-limited sources tracked at once (LRU: the least recently seen is evicted).
    pub const RATE_STATE: u32 = 1024 * 1024;
    /// Sources with per-source counters (`SOURCE_TABLE` holds [`crate::sets_for`] of it).
    pub const SOURCE_STATS: u32 = 256 * 1024;
    /// Distinct reason texts.
    pub const REASONS: u32 = 64 * 1024;
    /// Words in the port bitmap (65536 bits).
    pub const PORT_WORDS: u32 = 1024;
    /// Sources traced at once by `why --follow`.
    pub const TRACE: u32 = 16;
}

/// What the XDP program decided for one packet; the index into the `VERDICTS` counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not TCP to a protected port (or not IP at all): passed without inspection.
    NotInspected = 0,
    /// TCP to a protected port, inspected, passed.
    Passed = 1,
    /// Source in the allowlist: passed without blocklist or rate-limit checks.
    Allowlisted = 2,
    /// Source in the exact blocklist: dropped.
    DroppedExact = 3,
    /// Source inside a blocklisted prefix: dropped.
    DroppedCidr = 4,
    /// SYN over the source's rate limit: dropped.
    RateLimited = 5,
    /// Truncated or invalid Ethernet/IP/TCP header (dropped unless configured to pass).
    Malformed = 6,
    /// IPv4 first fragment or IPv6 extension-header chain towards a protected port (dropped unless
    /// configured to be inspected); also, whatever the port and the configuration, an IPv6 chain
    /// of more than 6 extension headers and a TCP first fragment too short for its TCP header
    /// (RFC 1858), which cannot be attributed to a port and must not be reassembled uninspected.
    FragmentOrExtHeader = 7,
}

impl Verdict {
    /// Number of verdicts (size of the `VERDICTS` array).
    pub const COUNT: u32 = 8;
    /// Every verdict in index order.
    pub const ALL: [Verdict; 8] = [
        Verdict::NotInspected,
        Verdict::Passed,
        Verdict::Allowlisted,
        Verdict::DroppedExact,
        Verdict::DroppedCidr,
        Verdict::RateLimited,
        Verdict::Malformed,
        Verdict::FragmentOrExtHeader,
    ];

    /// Stable snake_case name (CLI, JSON, Prometheus label).
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::NotInspected => "not_inspected",
            Verdict::Passed => "passed",
            Verdict::Allowlisted => "allowlisted",
            Verdict::DroppedExact => "dropped_exact",
            Verdict::DroppedCidr => "dropped_cidr",
            Verdict::RateLimited => "rate_limited",
            Verdict::Malformed => "malformed",
            Verdict::FragmentOrExtHeader => "fragment_or_ext_header",
        }
    }
}

/// Per-CPU counters of one verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounters {
    /// Packets that got this verdict.
    pub packets: u64,
    /// Their bytes (whole frames, as seen by XDP).
    pub bytes: u64,
}

/// Where a blocklist or allowlist entry came from.
pub mod origin {
    /// `smtp-gateway block add`.
    pub const CLI: u32 = 1;
    /// `smtp-gateway block import`.
    pub const IMPORT: u32 = 2;
    /// A session verdict of the SMTP proxy (auto-ban).
    pub const AUTOBAN: u32 = 3;
    /// The configuration file (`dataplane.allowlist`), re-applied at start and reload.
    pub const CONFIG: u32 = 4;
    /// A CrowdSec LAPI decision (`[crowdsec]`), removed when the LAPI deletes it.
    pub const CROWDSEC: u32 = 5;
    /// A ban made on another gateway of the fleet (`store.engine = "redis"`), removed when that
    /// ban is deleted there.
    pub const FLEET: u32 = 6;

    /// Name shown to operators.
    pub const fn name(origin: u32) -> &'static str {
        match origin {
            CLI => "cli",
            IMPORT => "import",
            AUTOBAN => "autoban",
            CONFIG => "config",
            CROWDSEC => "crowdsec",
            FLEET => "fleet",
            _ => "unknown",
        }
    }
}

/// Value of every blocklist map (exact and prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// CLOCK_MONOTONIC time after which the entry no longer drops (the program reads the coarse
    /// clock, at most one tick behind); 0 means it never expires.
    pub expires_at_ns: u64,
    /// Wall-clock time the entry was added (Unix seconds), for operators.
    pub added_at_s: u64,
    /// Reason id: key into the `REASONS` map (0 = none).
    pub reason: u32,
    /// One of [`origin`].
    pub origin: u32,
}

impl BlockEntry {
    /// Whether the entry still drops at monotonic time `now_ns`.
    #[inline(always)]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        self.expires_at_ns == 0 || now_ns < self.expires_at_ns
    }
}

/// Value of the allowlist tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    /// Reason id (key into `REASONS`, 0 = none).
    pub reason: u32,
    /// One of [`origin`].
    pub origin: u32,
    /// Wall-clock time the entry was added (Unix seconds).
    pub added_at_s: u64,
}

/// Key of the per-source maps: an IPv6 address, IPv4 sources as `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// Address bytes in network order.
    pub addr: [u8; 16],
}

impl SourceKey {
    /// The key of an IPv4 source (IPv4-mapped IPv6 form).
    #[inline(always)]
    pub const fn from_v4(a: [u8; 4]) -> Self {
        Self {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ],
        }
    }

    /// The key of an IPv6 source.
    #[inline(always)]
    pub const fn from_v6(addr: [u8; 16]) -> Self {
        Self { addr }
    }

    /// The IPv4 address if this is an IPv4-mapped key.
    pub fn as_v4(&self) -> Option<[u8; 4]> {
        let a = &self.addr;
        if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
            Some([a[12], a[13], a[14], a[15]])
        } else {
            None
        }
    }
}

/// State of one source's SYN limiter: GCRA (a token bucket expressed as a single timestamp).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Theoretical arrival time of the next SYN (monotonic ns).
    pub tat_ns: u64,
}

impl RateState {
    /// One GCRA step, the limiter's whole arithmetic (the XDP program runs exactly this):
    /// whether a SYN at `now` is admitted for a source whose state is `state` (`None`: not seen
    /// before), and the state to store when it is. `interval_ns` is 1e9 / rate, `tolerance_ns`
    /// (burst - 1) * interval: a fresh source gets `burst` SYNs at once, then one per interval.
    #[inline(always)]
    pub fn admit(
        state: Option<Self>,
        now: u64,
        interval_ns: u64,
        tolerance_ns: u64,
    ) -> Option<Self> {
        let Some(state) = state else {
            return Some(Self {
                tat_ns: now.saturating_add(interval_ns),
            });
        };
        let tat = if state.tat_ns > now {
            state.tat_ns
        } else {
            now
        };
        if tat - now > tolerance_ns {
            return None;
        }
        Some(Self {
            tat_ns: tat.saturating_add(interval_ns),
        })
    }
}

/// Per-CPU counters of one source (towards protected ports only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (whole frames).
    pub bytes: u64,
    /// SYN-without-ACK packets seen.
    pub syns: u64,
    /// Packets dropped by the blocklists, the rate limit or the fragment/extension-header policy
    /// (malformed packets are counted per verdict only: their source cannot be trusted).
    pub drops: u64,
    /// Monotonic time of the last packet (ns).
    pub last_seen_ns: u64,
}

/// Flags in [`DataplaneConfig::flags`].
pub mod config_flags {
    /// The per-source SYN rate limit is on.
    pub const RATE_LIMIT: u32 = 1 << 0;
    /// Drop IPv4 first fragments towards protected ports (otherwise inspect them normally).
    pub const DROP_FRAGMENTS: u32 = 1 << 1;
    /// Drop IPv6 packets whose TCP header follows extension headers (otherwise inspect them).
    pub const DROP_EXT_HEADERS: u32 = 1 << 2;
    /// Drop malformed IP packets (otherwise pass them to the kernel stack, which discards them).
    pub const DROP_MALFORMED: u32 = 1 << 3;
    /// At least one source is traced (`why --follow`): the program looks inspected packets'
    /// sources up in the `TRACE` map and logs the verdicts of traced ones with aya-log. Clear,
    /// the program does no lookup and logs nothing. Userspace owns the bit: it sets it when it
    /// adds the first trace and clears it when the `TRACE` map holds no live entry.
    pub const TRACE: u32 = 1 << 4;
}

/// Runtime configuration of the XDP program, written by userspace at index 0 of `CONFIG`.
/// A zeroed value (never configured) protects no port: everything passes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// [`config_flags`] bits.
    pub flags: u32,
    /// IPv4 rate-limit key mask, network-order bytes read as a native `u32` (/32 = all ones).
    pub rate_v4_mask: u32,
    /// GCRA emission interval: 1e9 / SYNs per second.
    pub rate_interval_ns: u64,
    /// GCRA tolerance: (burst - 1) * interval.
    pub rate_tolerance_ns: u64,
    /// IPv6 rate-limit key mask (/64 by default), network-order bytes read as two native `u64`.
    pub rate_v6_mask: [u64; 2],
}

/// Longest reason text stored in the kernel (bytes, UTF-8, NUL padded).
pub const REASON_TEXT_LEN: usize = 64;

/// Value of the `REASONS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasonText {
    /// UTF-8 text, NUL padded.
    pub text: [u8; REASON_TEXT_LEN],
}

/// Value of the `META` map: identifies what the pinned state belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the userspace that created the maps.
    pub layout_version: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
    /// Hash of the XDP object whose program is attached through the pinned links (0 = none yet).
    pub program_hash: u64,
    /// Wall-clock time the maps were created (Unix seconds).
    pub created_at_s: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain data with explicit padding and no pointers;
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::VerdictCounters {}
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::RateState {}
    unsafe impl aya::Pod for super::SourceStats {}
    unsafe impl aya::Pod for super::SourceSet {}
    unsafe impl aya::Pod for super::SourceIndex {}
    unsafe impl aya::Pod for super::DataplaneConfig {}
    unsafe impl aya::Pod for super::ReasonText {}
    unsafe impl aya::Pod for super::Meta {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<BlockEntry>(), 24);
        assert_eq!(core::mem::size_of::<AllowEntry>(), 16);
        assert_eq!(core::mem::size_of::<SourceStats>(), 40);
        assert_eq!(core::mem::size_of::<DataplaneConfig>(), 40);
        assert_eq!(core::mem::size_of::<Meta>(), 24);
        assert_eq!(core::mem::size_of::<ReasonText>(), REASON_TEXT_LEN);
    }

    #[test]
    fn v4_mapped_key_round_trips() {
        let k = SourceKey::from_v4([198, 18, 0, 7]);
        assert_eq!(k.as_v4(), Some([198, 18, 0, 7]));
        assert_eq!(SourceKey::from_v6([0x20; 16]).as_v4(), None);
    }

    #[test]
    fn expiry_semantics() {
        let never = BlockEntry::default();
        assert!(never.is_active(u64::MAX));
        let e = BlockEntry {
            expires_at_ns: 100,
            ..Default::default()
        };
        assert!(e.is_active(99));
        assert!(!e.is_active(100));
    }

    #[test]
    fn verdict_indices_are_dense() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
        assert_eq!(Verdict::ALL.len() as u32, Verdict::COUNT);
    }
}

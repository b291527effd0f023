//! `[dataplane]`: the kernel half's configuration section (interfaces, protected ports, packet
//! policies, allowlist, SYN rate limit, map capacities) and its validation.

use std::{path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use crate::invalid::Invalid;

/// `[dataplane]`: the kernel half of the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Interfaces the XDP program is attached to. Empty: the kernel filter is not attached (the
    /// maps are still created so the CLI works).
    pub interfaces: Vec<String>,
    /// `driver` (native XDP, the default) or `skb` (generic XDP, for drivers without native
    /// support). An unsupported mode is an error, never a silent fallback.
    pub attach_mode: AttachMode,
    /// TCP destination ports the filter protects; all other traffic passes uninspected.
    pub protected_ports: Vec<u16>,
    /// Directory in bpffs holding the pinned maps and links (a `v<layout>` directory below it).
    pub pin_dir: PathBuf,
    /// IPv4 first fragments towards a protected port: `drop` or `inspect`.
    pub fragments: PacketPolicy,
    /// IPv6 packets towards a protected port whose TCP header follows extension headers:
    /// `drop` or `inspect`.
    pub ipv6_extension_headers: PacketPolicy,
    /// Truncated or invalid IP headers: `drop` or `pass` (to the kernel stack).
    pub malformed: MalformedPolicy,
    /// How often the daemon removes expired blocklist entries from the kernel maps.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Sources that are never dropped nor rate-limited (addresses or prefixes), applied at start.
    pub allowlist: Vec<IpNet>,
    /// Per-source SYN rate limit.
    pub rate_limit: RateLimitConfig,
    /// Map capacities (taking effect when the maps are created; changing them needs `detach`).
    pub capacity: CapacityConfig,
    /// Mount a bpffs at /sys/fs/bpf even in a mount namespace that is not the host's (where it
    /// would be private to the process: its pins die with it). Off: refused with an explanation.
    pub allow_private_bpffs: bool,
    /// Longest `why --follow --for` (and its default when `--for` is not given is the shorter of
    /// this and 60 s): a trace always ends by itself.
    #[serde(with = "humantime_serde")]
    pub trace_max_duration: Duration,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            attach_mode: AttachMode::Driver,
            protected_ports: vec![25, 465, 587],
            pin_dir: PathBuf::from("/sys/fs/bpf/smtp-gateway"),
            fragments: PacketPolicy::Drop,
            ipv6_extension_headers: PacketPolicy::Drop,
            malformed: MalformedPolicy::Drop,
            sweep_interval: Duration::from_secs(10),
            allowlist: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            capacity: CapacityConfig::default(),
            allow_private_bpffs: false,
            trace_max_duration: Duration::from_secs(600),
        }
    }
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native XDP in the driver.
    Driver,
    /// Generic XDP after the skb is built (slower, works everywhere).
    Skb,
}

/// What to do with packets the program cannot fully trust.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PacketPolicy {
    /// Drop and count.
    Drop,
    /// Apply the normal allowlist/blocklist/rate-limit checks.
    Inspect,
}

/// What to do with malformed IP packets.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MalformedPolicy {
    /// Drop and count.
    Drop,
    /// Count and pass to the kernel stack.
    Pass,
}

/// `[dataplane.rate_limit]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Whether new connections (SYN) are rate-limited per source.
    pub enabled: bool,
    /// Sustained SYNs per second allowed per source (fractions allowed, e.g. 0.5).
    pub syn_per_second: f64,
    /// SYNs a source may send at once before the rate applies.
    pub burst: u32,
    /// IPv4 sources sharing a bucket (32 = per address).
    pub ipv4_prefix: u8,
    /// IPv6 sources sharing a bucket (64 = per /64, what one host usually controls).
    pub ipv6_prefix: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            syn_per_second: 5.0,
            burst: 20,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

/// `[dataplane.capacity]`: maximum entries of each kernel map.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Exact IPv4 blocklist entries.
    pub block_v4: u32,
    /// Exact IPv6 blocklist entries.
    pub block_v6: u32,
    /// IPv4 blocklist prefixes.
    pub block_net_v4: u32,
    /// IPv6 blocklist prefixes.
    pub block_net_v6: u32,
    /// IPv4 allowlist prefixes.
    pub allow_v4: u32,
    /// IPv6 allowlist prefixes.
    pub allow_v6: u32,
    /// Sources tracked by the SYN rate limiter (least recently seen evicted first).
    pub rate_sources: u32,
    /// Sources with per-source counters: the table holds this many rounded up to a power of two,
    /// in sets of two; a new source takes the place of the one of its set seen least recently.
    pub source_stats: u32,
    /// Distinct reason texts.
    pub reasons: u32,
    /// Sources `why --follow` can trace at once (at most [`MAX_TRACE_SOURCES`]).
    pub trace_sources: u32,
}

impl CapacityConfig {
    /// Sets of the per-source table for `source_stats` sources.
    pub fn source_sets(&self) -> u32 {
        smtp_gateway_common::sets_for(self.source_stats)
    }
}

impl Default for CapacityConfig {
    fn default() -> Self {
        use smtp_gateway_common::capacity as c;
        Self {
            block_v4: c::BLOCK_V4,
            block_v6: c::BLOCK_V6,
            block_net_v4: c::BLOCK_NET_V4,
            block_net_v6: c::BLOCK_NET_V6,
            allow_v4: c::ALLOW_V4,
            allow_v6: c::ALLOW_V6,
            rate_sources: c::RATE_STATE,
            source_stats: c::SOURCE_STATS,
            reasons: c::REASONS,
            trace_sources: c::TRACE,
        }
    }
}

/// Largest `dataplane.sweep_interval` (expired entries stop dropping at once regardless; the
/// sweep only frees their slots).
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Largest `dataplane.capacity.trace_sources`: a trace is a debugging aid for a few sources, and
/// every traced packet is a log line.
pub const MAX_TRACE_SOURCES: u32 = 1024;

/// Largest `dataplane.trace_max_duration`.
pub const MAX_TRACE_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Largest capacity accepted for any map (the kernel's own limits are lower for some types).
const MAX_CAPACITY: u32 = 64 * 1024 * 1024;

impl DataplaneConfig {
    /// Checks values serde cannot: names, ranges, prefixes, capacities.
    pub fn validate(&self) -> Result<(), Invalid> {
        let d = self;
        let bad = |key: &str, reason: String| Err(Invalid::new(format!("dataplane.{key}"), reason));
        for name in &d.interfaces {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return bad(
                    "interfaces",
                    format!(
                        "{name:?} is not a valid interface name (1 to 15 characters, no '/' or spaces)"
                    ),
                );
            }
        }
        if d.protected_ports.is_empty() {
            return bad("protected_ports", "at least one port is required".into());
        }
        if d.protected_ports.contains(&0) {
            return bad("protected_ports", "port 0 is not a valid TCP port".into());
        }
        if !d.pin_dir.is_absolute() {
            return bad(
                "pin_dir",
                format!("{} must be an absolute path", d.pin_dir.display()),
            );
        }
        if d.sweep_interval < Duration::from_secs(1) {
            return bad("sweep_interval", "must be at least 1s".into());
        }
        Invalid::duration_in(
            "dataplane.sweep_interval",
            d.sweep_interval,
            Duration::from_secs(1),
            MAX_SWEEP_INTERVAL,
        )?;
        for net in &d.allowlist {
            if net.trunc() != *net {
                return bad(
                    "allowlist",
                    format!("{net} has host bits set (did you mean {}?)", net.trunc()),
                );
            }
        }
        let r = &d.rate_limit;
        if !(r.syn_per_second.is_finite() && r.syn_per_second > 0.0 && r.syn_per_second <= 1e6) {
            return bad(
                "rate_limit.syn_per_second",
                format!("{} is out of range (0 < rate <= 1000000)", r.syn_per_second),
            );
        }
        if r.burst == 0 || r.burst > 1_000_000 {
            return bad(
                "rate_limit.burst",
                format!("{} is out of range (1..=1000000)", r.burst),
            );
        }
        if !(1..=32).contains(&r.ipv4_prefix) {
            return bad(
                "rate_limit.ipv4_prefix",
                format!("/{} is out of range (1..=32)", r.ipv4_prefix),
            );
        }
        if !(1..=128).contains(&r.ipv6_prefix) {
            return bad(
                "rate_limit.ipv6_prefix",
                format!("/{} is out of range (1..=128)", r.ipv6_prefix),
            );
        }
        let c = &d.capacity;
        // Each map's own bound: the message states the range that map really has.
        for (key, value, max) in [
            ("block_v4", c.block_v4, MAX_CAPACITY),
            ("block_v6", c.block_v6, MAX_CAPACITY),
            ("block_net_v4", c.block_net_v4, MAX_CAPACITY),
            ("block_net_v6", c.block_net_v6, MAX_CAPACITY),
            ("allow_v4", c.allow_v4, MAX_CAPACITY),
            ("allow_v6", c.allow_v6, MAX_CAPACITY),
            ("rate_sources", c.rate_sources, MAX_CAPACITY),
            ("source_stats", c.source_stats, MAX_CAPACITY),
            ("reasons", c.reasons, MAX_CAPACITY),
            ("trace_sources", c.trace_sources, MAX_TRACE_SOURCES),
        ] {
            if value == 0 || value > max {
                return bad(
                    &format!("capacity.{key}"),
                    format!("{value} is out of range (1..={max})"),
                );
            }
        }
        Invalid::duration_in(
            "dataplane.trace_max_duration",
            d.trace_max_duration,
            Duration::from_secs(1),
            MAX_TRACE_DURATION,
        )?;
        Ok(())
    }
}

//! Typed handles on the pinned maps, opened by path: the same code serves the daemon and the CLI,
//! whether or not the daemon runs.

use std::{net::Ipv6Addr, path::Path};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapInfo, PerCpuArray};
use ipnet::{IpNet, Ipv6Net};
use smtp_gateway_common::{
    AllowEntry, BlockEntry, DataplaneConfig as KernelConfig, Meta, ReasonText, SourceIndex,
    SourceKey, SourceSet, VerdictCounters, config_flags, list_slot, maps,
};

use super::{
    DataplaneError, PinLayout,
    config::{DataplaneConfig, MalformedPolicy, PacketPolicy},
};

/// Every map of the data plane, opened from its pin.
pub struct Dataplane {
    /// Where the pins live.
    pub(super) layout: PinLayout,
    pub(super) block_v4: HashMap<MapData, [u8; 4], BlockEntry>,
    pub(super) block_v6: HashMap<MapData, [u8; 16], BlockEntry>,
    pub(super) block_net_v4: LpmTrie<MapData, [u8; 4], BlockEntry>,
    pub(super) block_net_v6: LpmTrie<MapData, [u8; 16], BlockEntry>,
    pub(super) allow_v4: LpmTrie<MapData, [u8; 4], AllowEntry>,
    pub(super) allow_v6: LpmTrie<MapData, [u8; 16], AllowEntry>,
    pub(super) source_table: PerCpuArray<MapData, SourceSet>,
    source_index: Array<MapData, SourceIndex>,
    pub(super) verdicts: PerCpuArray<MapData, VerdictCounters>,
    ports: Array<MapData, u64>,
    config: Array<MapData, KernelConfig>,
    pub(super) reasons: HashMap<MapData, u32, ReasonText>,
    meta: Array<MapData, Meta>,
    /// One slot per list map (`list_slot`): 1 once the map has held an entry.
    lists_used: Array<MapData, u32>,
    /// Traced sources of `why --follow`: end of each trace (monotonic ns).
    pub(super) trace: HashMap<MapData, SourceKey, u64>,
    /// Slots this handle has already set (a slot is never cleared, so one write per handle
    /// suffices; bulk writers then pay nothing per entry).
    marked_used: [bool; list_slot::COUNT as usize],
    /// `max_entries` of each map, by name, for "map full" errors and `stats`.
    capacities: std::collections::HashMap<&'static str, u32>,
}

fn open<T>(layout: &PinLayout, name: &'static str) -> Result<(T, u32), DataplaneError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = layout.map(name);
    let err = |source| DataplaneError::Map { name, source };
    let capacity = MapInfo::from_pin(&path).map_err(err)?.max_entries();
    let data = MapData::from_pin(&path).map_err(err)?;
    let map = Map::from_map_data(data).map_err(err)?;
    Ok((T::try_from(map).map_err(err)?, capacity))
}

impl Dataplane {
    /// Opens every pinned map under `layout`. The maps must exist (see `loader::ensure_maps`).
    pub fn open(layout: PinLayout) -> Result<Self, DataplaneError> {
        layout.check_layout()?;
        let mut capacities = std::collections::HashMap::new();
        macro_rules! open_map {
            ($name:expr) => {{
                let (map, capacity) = open(&layout, $name)?;
                capacities.insert($name, capacity);
                map
            }};
        }
        for name in maps::ALL {
            if let Ok(info) = MapInfo::from_pin(layout.map(name)) {
                capacities.insert(name, info.max_entries());
            }
        }
        Ok(Self {
            block_v4: open_map!(maps::BLOCK_V4),
            block_v6: open_map!(maps::BLOCK_V6),
            block_net_v4: open_map!(maps::BLOCK_NET_V4),
            block_net_v6: open_map!(maps::BLOCK_NET_V6),
            allow_v4: open_map!(maps::ALLOW_V4),
            allow_v6: open_map!(maps::ALLOW_V6),
            source_table: open_map!(maps::SOURCE_TABLE),
            source_index: open_map!(maps::SOURCE_INDEX),
            verdicts: open_map!(maps::VERDICTS),
            ports: open_map!(maps::PORTS),
            config: open_map!(maps::CONFIG),
            reasons: open_map!(maps::REASONS),
            meta: open_map!(maps::META),
            lists_used: open_map!(maps::LISTS_USED),
            trace: open_map!(maps::TRACE),
            marked_used: [false; list_slot::COUNT as usize],
            capacities,
            layout,
        })
    }

    /// The pin layout these maps come from.
    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// Capacity (`max_entries`) of map `name`.
    pub fn capacity(&self, name: &'static str) -> u32 {
        self.capacities.get(name).copied().unwrap_or(0)
    }

    /// Pinned-state metadata.
    pub fn meta(&self) -> Result<Meta, DataplaneError> {
        self.meta.get(&0, 0).map_err(|source| DataplaneError::Map {
            name: maps::META,
            source,
        })
    }

    /// Replaces the pinned-state metadata.
    pub fn set_meta(&mut self, meta: Meta) -> Result<(), DataplaneError> {
        self.meta
            .set(0, meta, 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::META,
                source,
            })
    }

    /// Records that the list map of `slot` (`list_slot`) holds, or is about to hold, an entry, so
    /// the XDP program looks it up from now on. Call it before writing the entry: the program
    /// must never skip a map that holds one. Idempotent, never undone.
    pub(super) fn mark_list_used(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let Some(marked) = self.marked_used.get_mut(slot as usize) else {
            return Ok(());
        };
        if *marked {
            return Ok(());
        }
        self.lists_used
            .set(slot, 1, 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::LISTS_USED,
                source,
            })?;
        *marked = true;
        Ok(())
    }

    /// How the program finds a source's set in `SOURCE_TABLE`.
    pub fn source_index(&self) -> Result<SourceIndex, DataplaneError> {
        self.source_index
            .get(&0, 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::SOURCE_INDEX,
                source,
            })
    }

    /// Writes `SOURCE_INDEX` when it does not fit the pinned `SOURCE_TABLE` (a table just created,
    /// or an index map pinned without one): the table's set mask, and a random seed unless it
    /// already has one (a seed is kept for the table's life: a new one would move every source
    /// to another set). The program hashes with whatever index it reads; one it has never been
    /// given puts every source in set 0.
    pub(super) fn prepare_source_index(&mut self) -> Result<SourceIndex, DataplaneError> {
        let current = self.source_index()?;
        // The table's sets are a power of two (`sets_for`); a table that is not (made by hand)
        // uses the largest power of two it holds.
        let sets = self.capacity(maps::SOURCE_TABLE).max(1);
        let sets_mask = (1u32 << (u32::BITS - 1 - sets.leading_zeros())) - 1;
        if current.seed != 0 && current.sets_mask == sets_mask {
            return Ok(current);
        }
        let seed = match current.seed {
            0 => random_seed().map_err(|source| DataplaneError::Io {
                path: "getrandom(2)".into(),
                source,
            })?,
            seed => seed,
        };
        let index = SourceIndex {
            seed,
            sets_mask,
            _pad: 0,
        };
        self.source_index
            .set(0, index, 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::SOURCE_INDEX,
                source,
            })?;
        Ok(index)
    }

    /// The list maps that have ever held an entry, by `list_slot`.
    pub fn lists_used(&self) -> Result<Vec<bool>, DataplaneError> {
        (0..list_slot::COUNT)
            .map(|slot| {
                self.lists_used
                    .get(&slot, 0)
                    .map(|v| v != 0)
                    .map_err(|source| DataplaneError::Map {
                        name: maps::LISTS_USED,
                        source,
                    })
            })
            .collect()
    }

    /// Pushes the runtime knobs of `cfg` to the kernel: protected ports, policies, rate limit.
    /// Takes effect for the next packet; no reload of the program.
    pub fn apply_config(&mut self, cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
        let mut words = vec![0u64; smtp_gateway_common::capacity::PORT_WORDS as usize];
        for port in &cfg.protected_ports {
            words[usize::from(*port >> 6)] |= 1u64 << (port & 63);
        }
        // Set new ports first, then clear the others: never a window with no port protected.
        for (index, word) in words.iter().enumerate() {
            let index = index as u32;
            let old = self
                .ports
                .get(&index, 0)
                .map_err(|source| DataplaneError::Map {
                    name: maps::PORTS,
                    source,
                })?;
            if old != *word {
                self.ports
                    .set(index, old | word, 0)
                    .map_err(|source| DataplaneError::Map {
                        name: maps::PORTS,
                        source,
                    })?;
            }
        }
        for (index, word) in words.iter().enumerate() {
            self.ports
                .set(index as u32, *word, 0)
                .map_err(|source| DataplaneError::Map {
                    name: maps::PORTS,
                    source,
                })?;
        }
        // The TRACE bit belongs to `why --follow` (dataplane/trace.rs), not to the config file.
        let mut new = kernel_config(cfg);
        new.flags |= self.kernel_config()?.flags & config_flags::TRACE;
        self.set_kernel_config(new)
    }

    /// Replaces the kernel configuration.
    pub(super) fn set_kernel_config(&mut self, cfg: KernelConfig) -> Result<(), DataplaneError> {
        self.config
            .set(0, cfg, 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::CONFIG,
                source,
            })
    }

    /// The configuration the kernel currently runs with.
    pub fn kernel_config(&self) -> Result<KernelConfig, DataplaneError> {
        self.config
            .get(&0, 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::CONFIG,
                source,
            })
    }

    /// The protected ports the kernel currently uses.
    pub fn protected_ports(&self) -> Result<Vec<u16>, DataplaneError> {
        let mut ports = Vec::new();
        for (index, word) in self.ports.iter().enumerate() {
            let word = word.map_err(|source| DataplaneError::Map {
                name: maps::PORTS,
                source,
            })?;
            for bit in 0..64 {
                if word & (1 << bit) != 0 {
                    ports.push((index * 64 + bit) as u16);
                }
            }
        }
        Ok(ports)
    }

    /// Pinned-map path of `name` (for diagnostics).
    pub fn map_path(&self, name: &str) -> std::path::PathBuf {
        self.layout.map(name)
    }

    /// Pin directory.
    pub fn dir(&self) -> &Path {
        self.layout.dir()
    }
}

/// Translates the `[dataplane]` section into the kernel's `DataplaneConfig`.
pub fn kernel_config(cfg: &DataplaneConfig) -> KernelConfig {
    let r = &cfg.rate_limit;
    let mut flags = 0;
    if r.enabled {
        flags |= config_flags::RATE_LIMIT;
    }
    if cfg.fragments == PacketPolicy::Drop {
        flags |= config_flags::DROP_FRAGMENTS;
    }
    if cfg.ipv6_extension_headers == PacketPolicy::Drop {
        flags |= config_flags::DROP_EXT_HEADERS;
    }
    if cfg.malformed == MalformedPolicy::Drop {
        flags |= config_flags::DROP_MALFORMED;
    }
    let interval_ns = (1e9 / r.syn_per_second).round().max(1.0) as u64;
    let v4_mask = u32::MAX
        .checked_shl(32 - u32::from(r.ipv4_prefix))
        .unwrap_or(0)
        .to_be_bytes();
    let v6_mask =
        IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, r.ipv6_prefix).unwrap_or_default()).netmask();
    let v6_mask = match v6_mask {
        std::net::IpAddr::V6(m) => m.octets(),
        std::net::IpAddr::V4(_) => [0xff; 16],
    };
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&v6_mask[..8]);
    lo.copy_from_slice(&v6_mask[8..]);
    KernelConfig {
        flags,
        rate_v4_mask: u32::from_ne_bytes(v4_mask),
        rate_interval_ns: interval_ns,
        rate_tolerance_ns: interval_ns.saturating_mul(u64::from(r.burst.saturating_sub(1))),
        rate_v6_mask: [u64::from_ne_bytes(hi), u64::from_ne_bytes(lo)],
    }
}

/// A non-zero random seed from the kernel's generator.
fn random_seed() -> Result<u64, std::io::Error> {
    /// Draws before giving up (a zero seed or an interrupted call is drawn again).
    const TRIES: usize = 8;
    for _ in 0..TRIES {
        let mut bytes = [0u8; 8];
        // SAFETY: writes at most 8 bytes into `bytes`.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let seed = u64::from_ne_bytes(bytes);
        // Short reads cannot happen for 8 bytes; a zero seed means "none" and is drawn again.
        if n as usize == bytes.len() && seed != 0 {
            return Ok(seed);
        }
    }
    Err(std::io::Error::other("getrandom gave no non-zero seed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_config_translates_rate_and_masks() {
        let mut cfg = DataplaneConfig::default();
        cfg.rate_limit.syn_per_second = 4.0;
        cfg.rate_limit.burst = 3;
        cfg.rate_limit.ipv4_prefix = 24;
        cfg.rate_limit.ipv6_prefix = 64;
        let k = kernel_config(&cfg);
        assert_eq!(k.rate_interval_ns, 250_000_000);
        assert_eq!(k.rate_tolerance_ns, 500_000_000);
        assert_eq!(k.rate_v4_mask.to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(k.rate_v6_mask[0], u64::MAX);
        assert_eq!(k.rate_v6_mask[1], 0);
        assert_ne!(k.flags & config_flags::RATE_LIMIT, 0);
        assert_ne!(k.flags & config_flags::DROP_FRAGMENTS, 0);
        cfg.rate_limit.enabled = false;
        cfg.fragments = PacketPolicy::Inspect;
        let k = kernel_config(&cfg);
        assert_eq!(
            k.flags & (config_flags::RATE_LIMIT | config_flags::DROP_FRAGMENTS),
            0
        );
    }

    #[test]
    fn full_prefixes_give_full_masks() {
        let mut cfg = DataplaneConfig::default();
        cfg.rate_limit.ipv4_prefix = 32;
        cfg.rate_limit.ipv6_prefix = 128;
        let k = kernel_config(&cfg);
        assert_eq!(k.rate_v4_mask, u32::MAX);
        assert_eq!(k.rate_v6_mask, [u64::MAX, u64::MAX]);
    }
}

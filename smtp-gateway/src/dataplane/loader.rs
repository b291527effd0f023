//! Creating, attaching, reusing and removing the kernel state.
//!
//! - [`ensure_maps`] creates the pinned maps if they are missing (the CLI can work before the daemon
//!   ever ran) and never loads a program.
//! - [`attach`] makes every configured interface run this build's program through a pinned
//!   `bpf_link`: an existing link running this build is reused untouched (no second program is
//!   loaded); a link running another build is switched atomically with `bpf_link_update`; a missing
//!   one is created and pinned. Links of interfaces no longer configured are removed.
//! - [`detach`] removes links (detaching the program) and every pin.

use std::path::Path;

use aya::{
    EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use smtp_gateway_common::{LAYOUT_VERSION, Meta, list_slot, maps};

use super::{
    Dataplane, DataplaneError, PinLayout, clock,
    config::{AttachMode, DataplaneConfig},
    object,
};

/// What [`attach`] did on each interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAction {
    /// A pinned link already ran this build: nothing loaded, nothing changed.
    Reused,
    /// A pinned link ran another build: its program was replaced atomically.
    Replaced,
    /// No link existed: attached and pinned.
    Attached,
}

/// Outcome of [`attach`].
#[derive(Debug)]
pub struct AttachReport {
    /// Per configured interface.
    pub links: Vec<(String, LinkAction)>,
    /// Interfaces whose links were removed because they are no longer configured.
    pub removed: Vec<String>,
    /// The opened maps.
    pub dataplane: Dataplane,
}

/// Outcome of [`detach`].
#[derive(Debug, Default)]
pub struct DetachReport {
    /// Interfaces whose links were removed.
    pub links: Vec<String>,
    /// Number of map pins removed.
    pub maps: usize,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("dir", &self.dir())
            .finish()
    }
}

fn loader<'a>(layout: &'a PinLayout, cfg: &DataplaneConfig) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(layout.dir());
    for sized in sized_maps(cfg) {
        loader.map_max_entries(sized.map, sized.entries);
    }
    loader
}

/// A map whose size `[dataplane.capacity]` sets.
struct SizedMap {
    map: &'static str,
    /// The option under `dataplane.capacity`.
    option: &'static str,
    /// Max entries the map is made with.
    entries: u32,
    /// What one entry holds in the option's unit (the per-source table's entries are sets).
    per_entry: u32,
}

/// Every map `[dataplane.capacity]` sizes, as this configuration makes it.
fn sized_maps(cfg: &DataplaneConfig) -> [SizedMap; 10] {
    let c = &cfg.capacity;
    let sized = |map, option, entries| SizedMap {
        map,
        option,
        entries,
        per_entry: 1,
    };
    [
        sized(maps::BLOCK_V4, "block_v4", c.block_v4),
        sized(maps::BLOCK_V6, "block_v6", c.block_v6),
        sized(maps::BLOCK_NET_V4, "block_net_v4", c.block_net_v4),
        sized(maps::BLOCK_NET_V6, "block_net_v6", c.block_net_v6),
        sized(maps::ALLOW_V4, "allow_v4", c.allow_v4),
        sized(maps::ALLOW_V6, "allow_v6", c.allow_v6),
        sized(maps::RATE_STATE, "rate_sources", c.rate_sources),
        SizedMap {
            per_entry: smtp_gateway_common::SOURCE_WAYS as u32,
            ..sized(maps::SOURCE_TABLE, "source_stats", c.source_sets())
        },
        sized(maps::REASONS, "reasons", c.reasons),
        sized(maps::TRACE, "trace_sources", c.trace_sources),
    ]
}

/// The maps `LISTS_USED` speaks for.
const LIST_MAPS: [&str; 6] = [
    maps::BLOCK_V4,
    maps::BLOCK_V6,
    maps::BLOCK_NET_V4,
    maps::BLOCK_NET_V6,
    maps::ALLOW_V4,
    maps::ALLOW_V6,
];

/// Creates the pinned maps when missing and opens them. Loads no program. List maps pinned
/// without a `LISTS_USED` map (by an earlier build) are all recorded as used.
pub fn ensure_maps(cfg: &DataplaneConfig) -> Result<Dataplane, DataplaneError> {
    let layout = PinLayout::new(&cfg.pin_dir);
    layout.prepare(cfg.allow_private_bpffs)?;
    for name in layout.remove_retired()? {
        tracing::info!(
            map = name,
            "removed the pin of an earlier build's map this build replaced (its counters start again)"
        );
    }
    layout.check_layout()?;
    // List maps pinned by a build that had no LISTS_USED: they may hold entries nobody recorded.
    let lists_unrecorded = !layout.map(maps::LISTS_USED).exists()
        && LIST_MAPS.iter().any(|name| layout.map(name).exists());
    if !layout.maps_pinned() {
        // Parsing the object creates and pins every map (reusing those already pinned).
        drop(loader(&layout, cfg).load(object::OBJECT)?);
    }
    let mut dataplane = Dataplane::open(layout)?;
    // Before any program of this build can run on the table.
    dataplane.prepare_source_index()?;
    if lists_unrecorded {
        // Before any program of this build can run on them: every list counts as used.
        for slot in 0..list_slot::COUNT {
            dataplane.mark_list_used(slot)?;
        }
    }
    let meta = dataplane.meta()?;
    if meta.layout_version == 0 {
        dataplane.set_meta(Meta {
            layout_version: LAYOUT_VERSION,
            created_at_s: clock::unix_now_s(),
            ..meta
        })?;
    }
    warn_capacity_drift(&dataplane, cfg);
    Ok(dataplane)
}

/// Opens existing pinned maps without creating anything (read-only commands).
pub fn open_existing(cfg: &DataplaneConfig) -> Result<Option<Dataplane>, DataplaneError> {
    let layout = PinLayout::new(&cfg.pin_dir);
    if !layout.maps_pinned() {
        return Ok(None);
    }
    Dataplane::open(layout).map(Some)
}

/// Attaches this build's program to every configured interface (see the module docs).
pub fn attach(cfg: &DataplaneConfig) -> Result<AttachReport, DataplaneError> {
    let mut dataplane = ensure_maps(cfg)?;
    let layout = dataplane.layout().clone();
    let hash = object::object_hash();
    let meta = dataplane.meta()?;

    let mut removed = Vec::new();
    for interface in layout.pinned_links() {
        if !cfg.interfaces.contains(&interface) {
            remove_link(&layout.link(&interface))?;
            removed.push(interface);
        }
    }

    let all_pinned = cfg.interfaces.iter().all(|i| layout.link(i).exists());
    if all_pinned && meta.program_hash == hash {
        let links = cfg
            .interfaces
            .iter()
            .map(|i| (i.clone(), LinkAction::Reused))
            .collect();
        return Ok(AttachReport {
            links,
            removed,
            dataplane,
        });
    }

    let mut links = Vec::new();
    if !cfg.interfaces.is_empty() {
        let mut ebpf = loader(&layout, cfg).load(object::OBJECT)?;
        let program = loaded_program(&mut ebpf)?;
        for interface in &cfg.interfaces {
            let action = attach_one(program, &layout, interface, cfg.attach_mode)?;
            links.push((interface.clone(), action));
        }
        // Dropping `ebpf` closes our program fd; the pinned links keep the program attached.
    }
    dataplane.set_meta(Meta {
        program_hash: hash,
        ..dataplane.meta()?
    })?;
    Ok(AttachReport {
        links,
        removed,
        dataplane,
    })
}

fn attach_one(
    program: &mut Xdp,
    layout: &PinLayout,
    interface: &str,
    mode: AttachMode,
) -> Result<LinkAction, DataplaneError> {
    let path = layout.link(interface);
    let link_err = |detail: String| DataplaneError::Link {
        path: path.clone(),
        detail,
    };
    if path.exists() {
        let pinned = PinnedLink::from_pin(&path).map_err(|e| link_err(e.to_string()))?;
        let fd_link: FdLink = pinned.into();
        let xdp_link = XdpLink::try_from(fd_link).map_err(|e| link_err(e.to_string()))?;
        let id = program
            .attach_to_link(xdp_link)
            .map_err(|e| link_err(format!("replacing the program: {e}")))?;
        // Take the link back so dropping the program does not detach it; the pin keeps it.
        drop(program.take_link(id)?);
        return Ok(LinkAction::Replaced);
    }
    let (xdp_mode, mode_name) = match mode {
        AttachMode::Driver => (XdpMode::Driver, "driver"),
        AttachMode::Skb => (XdpMode::Skb, "skb"),
    };
    let id = program.attach(interface, xdp_mode).map_err(|e| match e {
        aya::programs::ProgramError::UnknownInterface { name } => {
            DataplaneError::UnknownInterface(name)
        }
        other => DataplaneError::Attach {
            interface: interface.to_string(),
            mode: mode_name,
            detail: describe(&other),
        },
    })?;
    let link = program.take_link(id)?;
    let fd_link = FdLink::try_from(link).map_err(|e| {
        link_err(format!(
            "the kernel attached through netlink, which cannot be pinned: {e}"
        ))
    })?;
    fd_link
        .pin(&path)
        .map_err(|e| link_err(format!("pinning: {e}")))?;
    Ok(LinkAction::Attached)
}

/// Error text including the OS error underneath aya's wrapper.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn remove_link(path: &Path) -> Result<(), DataplaneError> {
    std::fs::remove_file(path).map_err(|source| DataplaneError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes every link (the program leaves the interfaces) and every pin of this layout.
pub fn detach(pin_dir: &Path) -> Result<DetachReport, DataplaneError> {
    let layout = PinLayout::new(pin_dir);
    let mut report = DetachReport::default();
    for interface in layout.pinned_links() {
        remove_link(&layout.link(&interface))?;
        report.links.push(interface);
    }
    report.maps += layout.remove_retired()?.len();
    for name in maps::ALL {
        let path = layout.map(name);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| DataplaneError::Io {
                path: path.clone(),
                source,
            })?;
            report.maps += 1;
        }
    }
    if layout.dir().exists() {
        std::fs::remove_dir(layout.dir()).map_err(|source| DataplaneError::Io {
            path: layout.dir().to_path_buf(),
            source,
        })?;
    }
    // The parent is ours too when empty (other layout versions may still live there).
    let _ = std::fs::remove_dir(pin_dir);
    Ok(report)
}

/// Pinned maps keep the capacity they were created with; say so when the config differs.
fn warn_capacity_drift(dataplane: &Dataplane, cfg: &DataplaneConfig) {
    for drift in capacity_drifts(cfg, |name| dataplane.capacity(name)) {
        let CapacityDrift {
            map,
            option,
            pinned,
            configured,
        } = drift;
        tracing::warn!(
            map,
            pinned,
            configured,
            "dataplane.capacity.{option} differs from the pinned map, which keeps {pinned} \
             entries; `smtp-gateway detach` and a restart apply the new size (entries are lost)"
        );
    }
}

/// A map whose pinned capacity is not the configured one, both in the option's unit.
#[derive(Debug, PartialEq, Eq)]
struct CapacityDrift {
    map: &'static str,
    option: &'static str,
    pinned: u32,
    /// As the map would be made now (`source_stats` rounded to whole sets).
    configured: u32,
}

/// The maps whose capacity (`pinned(name)`: max entries) differs from `cfg`'s, in the option's
/// unit (the per-source table in sources, as `source_stats` is written).
fn capacity_drifts(
    cfg: &DataplaneConfig,
    pinned: impl Fn(&'static str) -> u32,
) -> Vec<CapacityDrift> {
    sized_maps(cfg)
        .into_iter()
        .filter_map(|sized| {
            let actual = pinned(sized.map);
            (actual != sized.entries).then(|| CapacityDrift {
                map: sized.map,
                option: sized.option,
                pinned: actual.saturating_mul(sized.per_entry),
                configured: sized.entries.saturating_mul(sized.per_entry),
            })
        })
        .collect()
}

/// Loads this build's program into the kernel without attaching it, sharing the pinned maps (which
/// are created if missing). For BPF_PROG_TEST_RUN program tests and benchmarks: run the returned
/// program with `aya::programs::TestRun` on crafted frames and inspect the maps through the
/// returned [`Dataplane`].
pub fn load_unattached(cfg: &DataplaneConfig) -> Result<(aya::Ebpf, Dataplane), DataplaneError> {
    let dataplane = ensure_maps(cfg)?;
    let mut ebpf = loader(dataplane.layout(), cfg).load(object::OBJECT)?;
    loaded_program(&mut ebpf)?;
    Ok((ebpf, dataplane))
}

/// The XDP program of `ebpf`, loaded into the kernel (idempotent).
pub fn loaded_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let program: &mut Xdp = ebpf
        .program_mut(object::PROGRAM_NAME)
        .ok_or_else(|| {
            DataplaneError::Load(aya::EbpfError::ProgramError(
                aya::programs::ProgramError::InvalidName {
                    name: object::PROGRAM_NAME.to_string(),
                },
            ))
        })?
        .try_into()?;
    if program.fd().is_err() {
        program.load()?;
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned capacities as this build would make them for `cfg`.
    fn as_made(cfg: &DataplaneConfig) -> std::collections::HashMap<&'static str, u32> {
        sized_maps(cfg)
            .map(|m| (m.map, m.entries))
            .into_iter()
            .collect()
    }

    #[test]
    fn maps_made_from_the_configuration_do_not_drift() {
        let mut cfg = DataplaneConfig::default();
        cfg.capacity.source_stats = 1000;
        let made = as_made(&cfg);
        assert_eq!(
            made[maps::SOURCE_TABLE],
            512,
            "1,000 sources: 512 sets of two"
        );
        assert_eq!(capacity_drifts(&cfg, |name| made[name]), []);
    }

    #[test]
    fn the_source_table_drifts_in_sources_as_the_option_is_written() {
        let mut cfg = DataplaneConfig::default();
        cfg.capacity.source_stats = 4096;
        let mut pinned = as_made(&cfg);
        pinned.insert(maps::SOURCE_TABLE, 512);
        pinned.insert(maps::REASONS, 7);
        assert_eq!(
            capacity_drifts(&cfg, |name| pinned[name]),
            [
                CapacityDrift {
                    map: maps::SOURCE_TABLE,
                    option: "source_stats",
                    pinned: 1024,
                    configured: 4096,
                },
                CapacityDrift {
                    map: maps::REASONS,
                    option: "reasons",
                    pinned: 7,
                    configured: cfg.capacity.reasons,
                },
            ]
        );
    }
}

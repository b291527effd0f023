//! Where the pinned state lives in bpffs, and the checks before reusing it.
//!
//! ```text
//! <pin_dir>/v<LAYOUT_VERSION>/BLOCK_V4 ... TRACE    every map, pinned by name
//! <pin_dir>/v<LAYOUT_VERSION>/link_<interface>     the XDP link of each interface
//! ```
//!
//! When `/sys/fs/bpf` holds no bpffs, one is mounted there, unless this process runs in a mount
//! namespace that is not the host's (`ip netns exec` makes one and remounts /sys, hiding the
//! host's bpffs): a bpffs mounted there is private to the process, so its pins, and every entry in
//! them, would die with it, and no other smtp-gateway process would see them. That is refused
//! unless `dataplane.allow_private_bpffs` is set. The host's mount namespace is pid 1's; when pid
//! 1 cannot be looked at (a container), the oldest ancestor process that can be.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};
use smtp_gateway_common::{
    AllowEntry, BlockEntry, DataplaneConfig, LAYOUT_VERSION, Meta, RateState, ReasonText,
    SourceIndex, SourceKey, SourceSet, VerdictCounters, maps,
};

use super::DataplaneError;

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
/// Prefix of link pins.
const LINK_PREFIX: &str = "link_";

/// Paths of the pinned objects of one layout version.
#[derive(Debug, Clone)]
pub struct PinLayout {
    /// `<pin_dir>/v<LAYOUT_VERSION>`.
    dir: PathBuf,
}

impl PinLayout {
    /// The layout under `pin_dir` (the configured `dataplane.pin_dir`).
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            dir: pin_dir.join(format!("v{LAYOUT_VERSION}")),
        }
    }

    /// The versioned directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pin path of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Pin path of the XDP link on `interface`.
    pub fn link(&self, interface: &str) -> PathBuf {
        self.dir.join(format!("{LINK_PREFIX}{interface}"))
    }

    /// Whether every map is pinned.
    pub fn maps_pinned(&self) -> bool {
        maps::ALL.iter().all(|name| self.map(name).exists())
    }

    /// Interfaces with a pinned link.
    pub fn pinned_links(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(LINK_PREFIX))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    /// Makes sure the pin directory is on bpffs (mounting `/sys/fs/bpf` if needed, and allowed:
    /// see the module docs) and exists.
    pub fn prepare(&self, allow_private_bpffs: bool) -> Result<(), DataplaneError> {
        let base = Path::new("/sys/fs/bpf");
        if self.dir.starts_with(base) && !is_bpffs(base) {
            match (mount_namespace_is_private(), allow_private_bpffs) {
                (Some(true), false) => {
                    return Err(DataplaneError::PrivateBpffs {
                        path: self.dir.clone(),
                    });
                }
                (Some(true), true) => tracing::warn!(
                    path = %base.display(),
                    "mounting a bpffs private to this process's mount namespace \
                     (dataplane.allow_private_bpffs): its pins die with the process"
                ),
                (Some(false), _) => {}
                (None, _) => tracing::debug!(
                    "cannot tell whether this mount namespace is the host's; mounting bpffs"
                ),
            }
            mount_bpffs(base)?;
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| DataplaneError::Io {
            path: self.dir.clone(),
            source,
        })?;
        if !is_bpffs(&self.dir) {
            return Err(DataplaneError::Bpffs {
                path: self.dir.clone(),
                source: std::io::Error::other("not a bpf filesystem"),
            });
        }
        Ok(())
    }

    /// Removes the pins of maps earlier builds had and this one replaced ([`maps::RETIRED`]);
    /// the names of those removed. A program of the earlier build still attached keeps its map
    /// until this build's program replaces it.
    pub fn remove_retired(&self) -> Result<Vec<&'static str>, DataplaneError> {
        let mut removed = Vec::new();
        for name in maps::RETIRED {
            let path = self.map(name);
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(DataplaneError::Io { path, source }),
            }
        }
        Ok(removed)
    }

    /// Refuses pinned maps whose type, key or value size differ from this build's.
    pub fn check_layout(&self) -> Result<(), DataplaneError> {
        for spec in MAP_SPECS {
            let path = self.map(spec.name);
            if !path.exists() {
                continue;
            }
            let mismatch = |detail: String| DataplaneError::LayoutMismatch {
                name: spec.name,
                path: path.clone(),
                detail,
            };
            let info =
                MapInfo::from_pin(&path).map_err(|e| mismatch(format!("unreadable: {e}")))?;
            let map_type = info.map_type().map_err(|e| mismatch(e.to_string()))?;
            if map_type != spec.map_type {
                return Err(mismatch(format!(
                    "type {map_type:?}, expected {:?}",
                    spec.map_type
                )));
            }
            if info.key_size() != spec.key_size || info.value_size() != spec.value_size {
                return Err(mismatch(format!(
                    "key/value sizes {}/{}, expected {}/{}",
                    info.key_size(),
                    info.value_size(),
                    spec.key_size,
                    spec.value_size
                )));
            }
        }
        Ok(())
    }
}

/// The shape of one map as this build defines it.
struct MapSpec {
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
}

const fn spec<K, V>(name: &'static str, map_type: MapType) -> MapSpec {
    MapSpec {
        name,
        map_type,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
    }
}

/// LPM keys are `{prefix_len: u32, data}` packed.
type LpmKey<const N: usize> = ([u8; 4], [u8; N]);

const MAP_SPECS: [MapSpec; 16] = [
    spec::<[u8; 4], BlockEntry>(maps::BLOCK_V4, MapType::Hash),
    spec::<[u8; 16], BlockEntry>(maps::BLOCK_V6, MapType::Hash),
    spec::<LpmKey<4>, BlockEntry>(maps::BLOCK_NET_V4, MapType::LpmTrie),
    spec::<LpmKey<16>, BlockEntry>(maps::BLOCK_NET_V6, MapType::LpmTrie),
    spec::<LpmKey<4>, AllowEntry>(maps::ALLOW_V4, MapType::LpmTrie),
    spec::<LpmKey<16>, AllowEntry>(maps::ALLOW_V6, MapType::LpmTrie),
    spec::<SourceKey, RateState>(maps::RATE_STATE, MapType::LruHash),
    spec::<u32, SourceSet>(maps::SOURCE_TABLE, MapType::PerCpuArray),
    spec::<u32, SourceIndex>(maps::SOURCE_INDEX, MapType::Array),
    spec::<u32, VerdictCounters>(maps::VERDICTS, MapType::PerCpuArray),
    spec::<u32, u64>(maps::PORTS, MapType::Array),
    spec::<u32, DataplaneConfig>(maps::CONFIG, MapType::Array),
    spec::<u32, ReasonText>(maps::REASONS, MapType::Hash),
    spec::<u32, Meta>(maps::META, MapType::Array),
    spec::<u32, u32>(maps::LISTS_USED, MapType::Array),
    spec::<SourceKey, u64>(maps::TRACE, MapType::Hash),
];

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut st) == 0 && st.f_type as libc::c_long == BPF_FS_MAGIC
    }
}

/// Whether this process's mount namespace differs from the host's (pid 1's, or else the oldest
/// ancestor's that can be read); `None` when neither can be read.
fn mount_namespace_is_private() -> Option<bool> {
    let own = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    let host = std::fs::read_link("/proc/1/ns/mnt")
        .ok()
        .or_else(oldest_ancestor_mount_namespace)?;
    Some(own != host)
}

/// The mount namespace of the oldest ancestor whose namespace can be read.
fn oldest_ancestor_mount_namespace() -> Option<PathBuf> {
    /// Ancestors looked at, at most (a process tree is rarely a tenth as deep).
    const MAX_DEPTH: usize = 256;
    let mut pid = std::process::id();
    let mut oldest = None;
    for _ in 0..MAX_DEPTH {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let parent: u32 = status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())?;
        if parent == 0 {
            break;
        }
        if let Ok(ns) = std::fs::read_link(format!("/proc/{parent}/ns/mnt")) {
            oldest = Some(ns);
        }
        pid = parent;
    }
    oldest
}

fn mount_bpffs(path: &Path) -> Result<(), DataplaneError> {
    let err = |source| DataplaneError::Bpffs {
        path: path.to_path_buf(),
        source,
    };
    let target =
        CString::new(path.as_os_str().as_bytes()).map_err(|e| err(std::io::Error::other(e)))?;
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_key_sizes_match_the_kernel_layout() {
        assert_eq!(size_of::<LpmKey<4>>(), 8);
        assert_eq!(size_of::<LpmKey<16>>(), 20);
        assert_eq!(
            size_of::<aya::maps::lpm_trie::Key<[u8; 16]>>(),
            size_of::<LpmKey<16>>()
        );
    }

    #[test]
    fn paths_are_versioned() {
        let l = PinLayout::new(Path::new("/sys/fs/bpf/x"));
        assert_eq!(
            l.map("META"),
            Path::new(&format!("/sys/fs/bpf/x/v{LAYOUT_VERSION}/META"))
        );
        assert_eq!(
            l.link("eth0"),
            Path::new(&format!("/sys/fs/bpf/x/v{LAYOUT_VERSION}/link_eth0"))
        );
    }
}

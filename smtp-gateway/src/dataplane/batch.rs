//! `BPF_MAP_UPDATE_BATCH` on a pinned map: many entries in one system call. aya 0.14 has no batch
//! API, so this issues the `bpf(2)` command itself on the map's file descriptor. The kernel
//! (Linux ≥ 5.6) applies the elements in order, each as an update with `BPF_ANY` (add or replace:
//! the only per-element flag it accepts is `BPF_F_LOCK`), and stops at the first that fails,
//! reporting how many it applied.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;

/// `enum bpf_cmd`: `BPF_MAP_UPDATE_BATCH`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`, the `batch` member used by the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Cursor of lookup batches (unused by updates).
    in_batch: u64,
    /// Cursor of lookup batches (unused by updates).
    out_batch: u64,
    /// Address of `count` keys, `key_size` bytes each.
    keys: u64,
    /// Address of `count` values, `value_size` bytes each.
    values: u64,
    /// In: elements to apply; out: elements applied.
    count: u32,
    /// The map.
    map_fd: u32,
    /// 0 or `BPF_F_LOCK`, applied to every element (each is added or replaced).
    elem_flags: u64,
    /// Command flags (none defined for updates).
    flags: u64,
}

/// Adds or replaces `keys[i] -> values[i]` in `map` with `elem_flags`, in order, in one system
/// call.
/// `K` and `V` must be the map's exact key and value types (plain data, `#[repr(C)]`), which the
/// typed handle the caller got `map` from guarantees.
pub fn update<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    elem_flags: u64,
) -> Result<(), std::io::Error> {
    let count = keys.len().min(values.len());
    if count == 0 {
        return Ok(());
    }
    let Ok(count32) = u32::try_from(count) else {
        return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
    };
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: count32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        elem_flags,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `keys` and `values` hold
    // `count` elements of the map's key and value sizes and outlive the call; the kernel writes
    // only `attr.count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // The kernel stopped at element `attr.count`; the elements before it are applied.
        Err(std::io::Error::last_os_error())
    }
}

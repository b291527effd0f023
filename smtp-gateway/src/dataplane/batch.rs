//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_LOOKUP_BATCH` on a pinned map: many entries in one system
//! call. aya 0.14 has no batch API, so this issues the `bpf(2)` commands itself on the map's file
//! descriptor (Linux ≥ 5.6).
//!
//! - [`update`]: the kernel applies the elements in order, each as an update with `BPF_ANY` (add
//!   or replace: the only per-element flag it accepts is `BPF_F_LOCK`), and stops at the first
//!   that fails, reporting how many it applied.
//! - [`lookup`]: the kernel copies the elements after a cursor key, in its key order, and says
//!   where the next batch starts; a per-CPU map gives every possible CPU's value of each key.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;

/// `enum bpf_cmd`: `BPF_MAP_LOOKUP_BATCH`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `enum bpf_cmd`: `BPF_MAP_UPDATE_BATCH`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`, the `batch` member used by the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Lookups: address of the key to start after (0: from the first).
    in_batch: u64,
    /// Lookups: address the kernel writes the cursor of the next batch to.
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
    /// Command flags (none defined for these commands).
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

/// What one [`lookup`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Looked {
    /// Elements copied into the front of the buffers.
    pub count: usize,
    /// Whether elements follow (read on from the cursor written to `next`).
    pub more: bool,
}

/// Copies up to `keys.len()` elements of `map` that follow the key `after` (from the first when
/// `None`) into `keys` and `values`, and the cursor of the next batch into `next`.
/// `values` holds `values_per_key` values per key: 1, or for a per-CPU map the number of possible
/// CPUs (`V`'s size must then be a multiple of 8, the kernel's per-CPU stride). `K` and `V` must
/// be the map's exact key and value types, which the typed handle the caller got `map` from
/// guarantees.
pub fn lookup<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    after: Option<&K>,
    next: &mut K,
    keys: &mut [K],
    values: &mut [V],
    values_per_key: usize,
) -> Result<Looked, std::io::Error> {
    let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
    if values_per_key == 0 || (values_per_key > 1 && !size_of::<V>().is_multiple_of(8)) {
        return Err(invalid());
    }
    let count = keys
        .len()
        .min(values.len() / values_per_key)
        .min(u32::MAX as usize);
    if count == 0 {
        return Err(invalid());
    }
    let mut attr = BatchAttr {
        in_batch: after.map_or(0, |k| k as *const K as u64),
        out_batch: next as *mut K as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: count as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `keys` has room for `count`
    // keys, `values` for `count * values_per_key` values of the map's value size, `next` for one
    // key, and `after` is one key: all outlive the call. The kernel writes at most that.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    // The kernel never reports more than it was asked for; clamp anyway.
    let copied = (attr.count as usize).min(count);
    if rc == 0 {
        return Ok(Looked {
            count: copied,
            more: true,
        });
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENOENT) {
        // The end of the map: what was copied is the last batch.
        return Ok(Looked {
            count: copied,
            more: false,
        });
    }
    Err(error)
}

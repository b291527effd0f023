//! Whether an LPM trie holds exactly one key (this prefix, this length).
//!
//! A lookup in an LPM trie, from a program or from `bpf(2)`, is a longest-prefix match: asked
//! for `198.18.7.0/24` in a trie holding `198.16.0.0/12`, it answers the `/12`'s value. The
//! value does not say which key matched, so "the entry for exactly this prefix" cannot be told
//! from "an entry covering it" by a lookup. `BPF_MAP_GET_NEXT_KEY` can tell: given a key the trie
//! holds exactly, the kernel answers the key after it in its walk (or `ENOENT` after the last);
//! given any other key, it answers the first key of its walk (`trie_get_next_key` in
//! `kernel/bpf/lpm_trie.c`: "for invalid key, find the leftmost node", the rule since Linux
//! 4.14). aya 0.14 starts its key walks at the first key only, so this issues the command itself
//! on the map's file descriptor.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    maps::{IterableMap as _, LpmTrie, MapData, MapError, lpm_trie::Key},
    sys::SyscallError,
};

use super::error::is_not_found;

/// `enum bpf_cmd`: `BPF_MAP_GET_NEXT_KEY`.
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// `union bpf_attr`, the member used by the `BPF_MAP_*_ELEM` commands and `BPF_MAP_GET_NEXT_KEY`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    /// Address of the key to start after (0: from the first).
    key: u64,
    /// Address the kernel writes the next key to.
    next_key: u64,
    flags: u64,
}

/// The key after `after` in `map`'s walk, the first when `after` is `None` or not held exactly;
/// `None` after the last, or when the map is empty. `K` must be the map's exact key type, which
/// the typed handle the caller got `map` from guarantees.
fn next_key<K: aya::Pod>(map: &MapData, after: Option<&K>) -> Result<Option<K>, std::io::Error> {
    let mut next = std::mem::MaybeUninit::<K>::zeroed();
    let mut attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        key: after.map_or(0, |k| k as *const K as u64),
        next_key: next.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `after` is one key and
    // `next` has room for one, of the map's key size; both outlive the call, and the kernel
    // writes `next` only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_NEXT_KEY,
            &mut attr as *mut ElemAttr,
            size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if rc == 0 {
        // SAFETY: `K` is plain data (`Pod`): every bit pattern, the zeroes included, is a value,
        // and the kernel wrote a whole key.
        return Ok(Some(unsafe { next.assume_init() }));
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(error),
    }
}

/// Whether `map`, an LPM trie of `D` keys (`[u8; 4]`, `[u8; 16]`), holds exactly `key`. Two
/// system calls: the first key of the walk, and the key after `key`, which is that first key
/// again only when `key` is not held (or is the first itself). `key`'s bits past its length
/// must be zero, as they are in every key the gateway writes.
pub fn holds<D: aya::Pod + PartialEq>(map: &MapData, key: &Key<D>) -> Result<bool, std::io::Error> {
    let same = |a: &Key<D>, b: &Key<D>| a.prefix_len() == b.prefix_len() && a.data() == b.data();
    let Some(first) = next_key::<Key<D>>(map, None)? else {
        return Ok(false);
    };
    if same(&first, key) {
        return Ok(true);
    }
    Ok(next_key(map, Some(key))?.is_none_or(|after| !same(&after, &first)))
}

/// The value `trie` holds for exactly `key` (not for a shorter prefix covering it), if any.
/// One system call when nothing covers `key`, three when something does.
pub fn get<D: aya::Pod + PartialEq, V: aya::Pod>(
    trie: &LpmTrie<MapData, D, V>,
    key: &Key<D>,
) -> Result<Option<V>, MapError> {
    let value = match trie.get(key, 0) {
        Ok(value) => value,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    match holds(trie.map(), key) {
        Ok(true) => Ok(Some(value)),
        Ok(false) => Ok(None),
        Err(io_error) => Err(MapError::SyscallError(SyscallError {
            call: "bpf_map_get_next_key",
            io_error,
        })),
    }
}

//! Blocklist and allowlist operations on the pinned maps: add, delete, list, and keeping the
//! allowlist entries of the configuration file in step with it. Exact addresses go to the hash
//! maps, true prefixes to the LPM tries. An entry that goes (deleted, or replaced by one with
//! another reason) frees its reason text when no other entry cites it (see `reasons.rs`).

use std::{collections::HashSet, net::IpAddr};

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use smtp_gateway_common::{AllowEntry, BlockEntry, list_slot, maps, origin};

use super::{Dataplane, DataplaneError, Target, clock, error::is_not_found, lpm_exact, reasons};

/// One blocklist entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRecord {
    pub target: Target,
    pub entry: BlockEntry,
}

/// One allowlist entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowRecord {
    pub net: IpNet,
    pub entry: AllowEntry,
}

fn not_found_is_none<T>(
    r: Result<T, aya::maps::MapError>,
) -> Result<Option<T>, aya::maps::MapError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Dataplane {
    /// Adds or replaces a blocklist entry; a replaced entry's reason is freed when nothing else
    /// cites it.
    pub fn block(&mut self, target: Target, entry: BlockEntry) -> Result<(), DataplaneError> {
        if let Some(old) = self.replace_block(target, entry)?
            && old.reason != entry.reason
        {
            reasons::release(self, [old.reason])?;
        }
        Ok(())
    }

    /// Adds or replaces a blocklist entry and returns the one it replaced, leaving its reason to
    /// the caller (a bulk import frees the reasons of all it replaced in one walk).
    pub(super) fn replace_block(
        &mut self,
        target: Target,
        entry: BlockEntry,
    ) -> Result<Option<BlockEntry>, DataplaneError> {
        let old = self.block_entry(target)?;
        self.insert_block(target, entry)?;
        Ok(old)
    }

    fn insert_block(&mut self, target: Target, entry: BlockEntry) -> Result<(), DataplaneError> {
        let full = |name, option, dp: &Dataplane| {
            let capacity = dp.capacity(name);
            move |e| DataplaneError::map(name, capacity, option, e)
        };
        self.mark_list_used(match target {
            Target::V4(_) => list_slot::BLOCK_V4,
            Target::V6(_) => list_slot::BLOCK_V6,
            Target::NetV4(_) => list_slot::BLOCK_NET_V4,
            Target::NetV6(_) => list_slot::BLOCK_NET_V6,
        })?;
        match target {
            Target::V4(a) => {
                let f = full(maps::BLOCK_V4, "block_v4", self);
                self.block_v4.insert(a.octets(), entry, 0).map_err(f)
            }
            Target::V6(a) => {
                let f = full(maps::BLOCK_V6, "block_v6", self);
                self.block_v6.insert(a.octets(), entry, 0).map_err(f)
            }
            Target::NetV4(n) => {
                let f = full(maps::BLOCK_NET_V4, "block_net_v4", self);
                let key = Key::new(u32::from(n.prefix_len()), n.addr().octets());
                self.block_net_v4.insert(&key, entry, 0).map_err(f)
            }
            Target::NetV6(n) => {
                let f = full(maps::BLOCK_NET_V6, "block_net_v6", self);
                let key = Key::new(u32::from(n.prefix_len()), n.addr().octets());
                self.block_net_v6.insert(&key, entry, 0).map_err(f)
            }
        }
    }

    /// The entry for exactly `target`, if any (for a prefix, not one of a shorter prefix that
    /// covers it: `lpm_exact.rs`).
    pub fn block_entry(&self, target: Target) -> Result<Option<BlockEntry>, DataplaneError> {
        let (name, r) = match target {
            Target::V4(a) => (
                maps::BLOCK_V4,
                not_found_is_none(self.block_v4.get(&a.octets(), 0)),
            ),
            Target::V6(a) => (
                maps::BLOCK_V6,
                not_found_is_none(self.block_v6.get(&a.octets(), 0)),
            ),
            Target::NetV4(n) => (
                maps::BLOCK_NET_V4,
                lpm_exact::get(
                    &self.block_net_v4,
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                ),
            ),
            Target::NetV6(n) => (
                maps::BLOCK_NET_V6,
                lpm_exact::get(
                    &self.block_net_v6,
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                ),
            ),
        };
        r.map_err(|source| DataplaneError::Map { name, source })
    }

    /// Removes the entry for exactly `target` (and its reason when nothing else cites it);
    /// `false` if there was none.
    pub fn unblock(&mut self, target: Target) -> Result<bool, DataplaneError> {
        let Some(old) = self.block_entry(target)? else {
            return Ok(false);
        };
        let removed = self.remove_block(target)?;
        if removed {
            reasons::release(self, [old.reason])?;
        }
        Ok(removed)
    }

    /// Removes the entries of `targets` that exist; their reasons are freed when no entry cites
    /// them any more, all in one walk of the lists (`unblock` walks them once per entry: removing
    /// 50,000 CrowdSec entries that way held the data plane for over a minute). Returns how many
    /// entries were removed.
    pub fn unblock_many(&mut self, targets: &[Target]) -> Result<usize, DataplaneError> {
        let mut gone = Vec::new();
        for &target in targets {
            let Some(old) = self.block_entry(target)? else {
                continue;
            };
            if self.remove_block(target)? {
                gone.push(old.reason);
            }
        }
        reasons::release(self, gone.iter().copied())?;
        Ok(gone.len())
    }

    fn remove_block(&mut self, target: Target) -> Result<bool, DataplaneError> {
        let (name, r) = match target {
            Target::V4(a) => (maps::BLOCK_V4, self.block_v4.remove(&a.octets())),
            Target::V6(a) => (maps::BLOCK_V6, self.block_v6.remove(&a.octets())),
            Target::NetV4(n) => (
                maps::BLOCK_NET_V4,
                self.block_net_v4
                    .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
            ),
            Target::NetV6(n) => (
                maps::BLOCK_NET_V6,
                self.block_net_v6
                    .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
            ),
        };
        not_found_is_none(r)
            .map(|r| r.is_some())
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Every blocklist entry (exact first, then prefixes), expired ones included.
    pub fn blocked(&self) -> Result<Vec<BlockRecord>, DataplaneError> {
        let mut out = Vec::new();
        let err = |name| move |source| DataplaneError::Map { name, source };
        for item in self.block_v4.iter() {
            let (k, entry) = item.map_err(err(maps::BLOCK_V4))?;
            out.push(BlockRecord {
                target: Target::V4(k.into()),
                entry,
            });
        }
        for item in self.block_v6.iter() {
            let (k, entry) = item.map_err(err(maps::BLOCK_V6))?;
            out.push(BlockRecord {
                target: Target::V6(k.into()),
                entry,
            });
        }
        out.extend(self.blocked_prefixes()?);
        Ok(out)
    }

    /// Every prefix entry of the blocklist (the tries only: a lookup of one source reads its
    /// exact entry with [`Dataplane::block_entry`] instead of walking millions).
    pub fn blocked_prefixes(&self) -> Result<Vec<BlockRecord>, DataplaneError> {
        let mut out = Vec::new();
        let err = |name| move |source| DataplaneError::Map { name, source };
        for item in self.block_net_v4.iter() {
            let (k, entry) = item.map_err(err(maps::BLOCK_NET_V4))?;
            let net = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8)
                .map_err(|_| err(maps::BLOCK_NET_V4)(aya::maps::MapError::KeyNotFound))?;
            if let Ok(target) = Target::from_net(net) {
                out.push(BlockRecord { target, entry });
            }
        }
        for item in self.block_net_v6.iter() {
            let (k, entry) = item.map_err(err(maps::BLOCK_NET_V6))?;
            let net = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8)
                .map_err(|_| err(maps::BLOCK_NET_V6)(aya::maps::MapError::KeyNotFound))?;
            if let Ok(target) = Target::from_net(net) {
                out.push(BlockRecord { target, entry });
            }
        }
        Ok(out)
    }

    /// Adds or replaces an allowlist prefix; a replaced entry's reason is freed when nothing else
    /// cites it.
    pub fn allow(&mut self, net: IpNet, entry: AllowEntry) -> Result<(), DataplaneError> {
        let net = net.trunc();
        let old = self.allow_entry(net)?;
        self.insert_allow(net, entry)?;
        if let Some(old) = old
            && old.reason != entry.reason
        {
            reasons::release(self, [old.reason])?;
        }
        Ok(())
    }

    /// The allowlist entry for exactly `net` (already truncated), if any (not one of a shorter
    /// prefix that covers it: `lpm_exact.rs`).
    pub fn allow_entry(&self, net: IpNet) -> Result<Option<AllowEntry>, DataplaneError> {
        let (name, r) = match net {
            IpNet::V4(n) => (
                maps::ALLOW_V4,
                lpm_exact::get(
                    &self.allow_v4,
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                ),
            ),
            IpNet::V6(n) => (
                maps::ALLOW_V6,
                lpm_exact::get(
                    &self.allow_v6,
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                ),
            ),
        };
        r.map_err(|source| DataplaneError::Map { name, source })
    }

    fn insert_allow(&mut self, net: IpNet, entry: AllowEntry) -> Result<(), DataplaneError> {
        self.mark_list_used(match net {
            IpNet::V4(_) => list_slot::ALLOW_V4,
            IpNet::V6(_) => list_slot::ALLOW_V6,
        })?;
        match net {
            IpNet::V4(n) => {
                let capacity = self.capacity(maps::ALLOW_V4);
                let key = Key::new(u32::from(n.prefix_len()), n.addr().octets());
                self.allow_v4
                    .insert(&key, entry, 0)
                    .map_err(|e| DataplaneError::map(maps::ALLOW_V4, capacity, "allow_v4", e))
            }
            IpNet::V6(n) => {
                let capacity = self.capacity(maps::ALLOW_V6);
                let key = Key::new(u32::from(n.prefix_len()), n.addr().octets());
                self.allow_v6
                    .insert(&key, entry, 0)
                    .map_err(|e| DataplaneError::map(maps::ALLOW_V6, capacity, "allow_v6", e))
            }
        }
    }

    /// Removes exactly `net` from the allowlist (and its reason when nothing else cites it);
    /// `false` if absent.
    pub fn disallow(&mut self, net: IpNet) -> Result<bool, DataplaneError> {
        let net = net.trunc();
        let Some(old) = self.allow_entry(net)? else {
            return Ok(false);
        };
        let removed = self.remove_allow(net)?;
        if removed {
            reasons::release(self, [old.reason])?;
        }
        Ok(removed)
    }

    fn remove_allow(&mut self, net: IpNet) -> Result<bool, DataplaneError> {
        let (name, r) = match net {
            IpNet::V4(n) => (
                maps::ALLOW_V4,
                self.allow_v4
                    .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
            ),
            IpNet::V6(n) => (
                maps::ALLOW_V6,
                self.allow_v6
                    .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
            ),
        };
        not_found_is_none(r)
            .map(|r| r.is_some())
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Every allowlist prefix.
    pub fn allowed(&self) -> Result<Vec<AllowRecord>, DataplaneError> {
        let mut out = Vec::new();
        for item in self.allow_v4.iter() {
            let (k, entry) = item.map_err(|source| DataplaneError::Map {
                name: maps::ALLOW_V4,
                source,
            })?;
            if let Ok(net) = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                out.push(AllowRecord { net, entry });
            }
        }
        for item in self.allow_v6.iter() {
            let (k, entry) = item.map_err(|source| DataplaneError::Map {
                name: maps::ALLOW_V6,
                source,
            })?;
            if let Ok(net) = IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                out.push(AllowRecord { net, entry });
            }
        }
        Ok(out)
    }

    /// Those of `candidates` that no blocklist or allowlist entry cites. Walks the entries,
    /// stopping as soon as every candidate is found cited.
    pub(super) fn uncited_reasons(
        &self,
        mut candidates: HashSet<u32>,
    ) -> Result<HashSet<u32>, DataplaneError> {
        macro_rules! walk {
            ($map:expr, $name:expr) => {
                for item in $map.iter() {
                    if candidates.is_empty() {
                        return Ok(candidates);
                    }
                    match item {
                        Ok((_, entry)) => {
                            candidates.remove(&entry.reason);
                        }
                        // Deleted while walking.
                        Err(e) if is_not_found(&e) => {}
                        Err(source) => {
                            return Err(DataplaneError::Map {
                                name: $name,
                                source,
                            });
                        }
                    }
                }
            };
        }
        walk!(self.allow_v4, maps::ALLOW_V4);
        walk!(self.allow_v6, maps::ALLOW_V6);
        walk!(self.block_net_v4, maps::BLOCK_NET_V4);
        walk!(self.block_net_v6, maps::BLOCK_NET_V6);
        walk!(self.block_v4, maps::BLOCK_V4);
        walk!(self.block_v6, maps::BLOCK_V6);
        Ok(candidates)
    }

    /// The allowlist prefix covering `addr`, if any (the kernel's longest-prefix match).
    pub fn allowlisted(&self, addr: IpAddr) -> Option<IpNet> {
        self.allowed()
            .ok()?
            .into_iter()
            .filter(|r| r.net.contains(&addr))
            .max_by_key(|r| r.net.prefix_len())
            .map(|r| r.net)
    }
}

impl Dataplane {
    /// Makes the allowlist entries of origin "config" exactly `wanted` (`dataplane.allowlist`,
    /// applied at start and on every reload); entries added by operators are left alone.
    pub fn sync_config_allowlist(&mut self, wanted: &[IpNet]) -> Result<(), DataplaneError> {
        // An entry of another origin (an operator's `allow add`, the fleet's) stays theirs even
        // when the file lists the same prefix: its origin decides who removes it, so the prefix
        // leaving the file does not take it away.
        let mut held = std::collections::HashSet::new();
        for record in self.allowed()? {
            if record.entry.origin != origin::CONFIG {
                held.insert(record.net);
            } else if !wanted.contains(&record.net) {
                self.disallow(record.net)?;
            }
        }
        let reason = reasons::intern(self, "configuration file")?;
        for net in wanted.iter().filter(|net| !held.contains(*net)) {
            self.allow(
                *net,
                AllowEntry {
                    reason,
                    origin: origin::CONFIG,
                    added_at_s: clock::unix_now_s(),
                },
            )?;
        }
        Ok(())
    }
}

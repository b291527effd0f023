//! The traced sources of `why --follow`, seen from userspace.
//!
//! A source is traced while the pinned `TRACE` map holds its per-source key with an end time
//! (CLOCK_MONOTONIC ns) still ahead, and the `TRACE` bit of the kernel configuration is set: the
//! program then writes one aya-log line per inspected packet of that source (see the eBPF crate's
//! `trace.rs`). The bit is what keeps an idle trace free: with it clear the program does not even
//! look the map up. It is set when an entry is added and cleared when no live entry is left, by
//! the follower that ends last, or by the expiry sweep when a follower was killed (its entry
//! also stops logging by itself at its end time). [`program_ids`] finds the attached programs
//! through the pinned links, whose aya-log ring buffers the follower reads.

use std::net::IpAddr;

use aya::{
    maps::MapError,
    programs::links::{FdLink, PinnedLink},
};
use smtp_gateway_common::{SourceKey, config_flags, maps};

use super::{Dataplane, DataplaneError, PinLayout, error::is_not_found};

/// The per-source key of `address` (IPv4 and IPv4-mapped IPv6 as `::ffff:a.b.c.d`), as the
/// program computes it.
pub fn source_key(address: IpAddr) -> SourceKey {
    match address.to_canonical() {
        IpAddr::V4(a) => SourceKey::from_v4(a.octets()),
        IpAddr::V6(a) => SourceKey::from_v6(a.octets()),
    }
}

impl Dataplane {
    /// Traces `key` until `until_ns` (monotonic), or until a later end another follower of the
    /// same source already set; sets the `TRACE` bit. Returns the end in force.
    pub fn trace_add(&mut self, key: SourceKey, until_ns: u64) -> Result<u64, DataplaneError> {
        let until = match self.trace.get(&key, 0) {
            Ok(existing) => existing.max(until_ns),
            Err(e) if is_not_found(&e) => until_ns,
            Err(source) => return Err(trace_err(source)),
        };
        let capacity = self.capacity(maps::TRACE);
        self.trace.insert(key, until, 0).map_err(|source| {
            DataplaneError::map(maps::TRACE, capacity, "trace_sources", source)
        })?;
        self.set_trace_bit(true)?;
        Ok(until)
    }

    /// Keeps the trace of `key` in force until `until_ns`: puts its entry and the `TRACE` bit
    /// back if a sweep racing with [`Dataplane::trace_add`] removed them. A follower calls it
    /// while it waits.
    pub fn trace_keep(&mut self, key: SourceKey, until_ns: u64) -> Result<(), DataplaneError> {
        let present = match self.trace.get(&key, 0) {
            Ok(current) => current >= until_ns,
            Err(e) if is_not_found(&e) => false,
            Err(source) => return Err(trace_err(source)),
        };
        if !present || self.kernel_config()?.flags & config_flags::TRACE == 0 {
            self.trace_add(key, until_ns)?;
        }
        Ok(())
    }

    /// Ends the trace of `key` if its end is still `until_ns` (another follower that extended it
    /// keeps it), then clears the `TRACE` bit when no live trace is left at `now_ns`.
    pub fn trace_remove(
        &mut self,
        key: SourceKey,
        until_ns: u64,
        now_ns: u64,
    ) -> Result<(), DataplaneError> {
        match self.trace.get(&key, 0) {
            Ok(current) if current == until_ns => match self.trace.remove(&key) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(trace_err(source)),
            },
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(source) => return Err(trace_err(source)),
        }
        self.sweep_traces(now_ns).map(|_| ())
    }

    /// Removes traces ended at `now_ns` and clears the `TRACE` bit when none is left (sets it
    /// when one is, whatever a configuration push did meanwhile). Returns the live traces.
    pub fn sweep_traces(&mut self, now_ns: u64) -> Result<usize, DataplaneError> {
        let mut ended = Vec::new();
        let mut live = 0;
        for item in self.trace.iter() {
            match item {
                Ok((key, until)) if until <= now_ns => ended.push(key),
                Ok(_) => live += 1,
                Err(e) if is_not_found(&e) => continue,
                Err(source) => return Err(trace_err(source)),
            }
        }
        for key in ended {
            match self.trace.remove(&key) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(trace_err(source)),
            }
        }
        self.set_trace_bit(live > 0)?;
        Ok(live)
    }

    /// The live traces at `now_ns`: key and end (monotonic ns).
    pub fn traces(&self, now_ns: u64) -> Result<Vec<(SourceKey, u64)>, DataplaneError> {
        let mut rows = Vec::new();
        for item in self.trace.iter() {
            match item {
                Ok((key, until)) if until > now_ns => rows.push((key, until)),
                Ok(_) => {}
                Err(e) if is_not_found(&e) => continue,
                Err(source) => return Err(trace_err(source)),
            }
        }
        Ok(rows)
    }

    /// Sets or clears the `TRACE` bit of the kernel configuration, leaving the rest alone.
    fn set_trace_bit(&mut self, on: bool) -> Result<(), DataplaneError> {
        let mut cfg = self.kernel_config()?;
        let flags = if on {
            cfg.flags | config_flags::TRACE
        } else {
            cfg.flags & !config_flags::TRACE
        };
        if flags == cfg.flags {
            return Ok(());
        }
        cfg.flags = flags;
        self.set_kernel_config(cfg)
    }
}

fn trace_err(source: MapError) -> DataplaneError {
    DataplaneError::Map {
        name: maps::TRACE,
        source,
    }
}

/// The ids of the programs attached through the pinned links of `layout`, one per program
/// (every interface usually runs the same one), in interface order.
pub fn program_ids(layout: &PinLayout) -> Result<Vec<u32>, DataplaneError> {
    let mut ids = Vec::new();
    for interface in layout.pinned_links() {
        let path = layout.link(&interface);
        let link_err = |detail: String| DataplaneError::Link {
            path: path.clone(),
            detail,
        };
        let link: FdLink = PinnedLink::from_pin(&path)
            .map_err(|e| link_err(e.to_string()))?
            .into();
        let id = link
            .info()
            .map_err(|e| link_err(format!("reading the link: {e}")))?
            .program_id();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_programs() {
        let v4: IpAddr = "198.18.0.7".parse().expect("v4");
        let mapped: IpAddr = "::ffff:198.18.0.7".parse().expect("mapped");
        assert_eq!(source_key(v4), SourceKey::from_v4([198, 18, 0, 7]));
        assert_eq!(source_key(mapped), source_key(v4));
        let v6: IpAddr = "2001:db8::7".parse().expect("v6");
        assert_eq!(source_key(v6).as_v4(), None);
    }
}

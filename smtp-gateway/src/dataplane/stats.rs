//! Reading the kernel counters: per-verdict totals and per-source rows, summed over CPUs, through
//! the data plane or through a [`CounterReader`] that needs no lock of it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
};

use aya::maps::{IterableMap, Map, MapData, PerCpuArray};

use serde::Serialize;
use smtp_gateway_common::{SourceKey, SourceSet, SourceStats, Verdict, VerdictCounters, maps};

use super::{Dataplane, DataplaneError, batch, clock};

/// Totals of one verdict over every CPU.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct VerdictTotal {
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of one source over every CPU.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SourceRow {
    pub source: IpAddr,
    pub packets: u64,
    pub bytes: u64,
    pub syns: u64,
    pub drops: u64,
    /// Seconds since the last packet.
    pub last_seen_secs_ago: u64,
}

/// Read-only handles on the kernel counters (duplicated descriptors of the data plane's maps):
/// the metrics endpoint reads them without holding the data plane's lock, so a scrape never
/// waits for a reload or an import, nor holds them up while it walks the per-source map.
pub struct CounterReader {
    /// The per-verdict counters.
    verdicts: PerCpuArray<MapData, VerdictCounters>,
    /// The per-source counters.
    source_table: PerCpuArray<MapData, SourceSet>,
}

impl CounterReader {
    /// Verdict counters summed over CPUs, in verdict order.
    pub fn verdict_totals(&self) -> Result<Vec<VerdictTotal>, DataplaneError> {
        verdict_totals(&self.verdicts)
    }

    /// Every tracked source, summed over CPUs.
    pub fn source_rows(&self) -> Result<Vec<SourceRow>, DataplaneError> {
        source_rows(&self.source_table)
    }
}

/// A second handle on `map` through a duplicated descriptor.
fn duplicate<M, K, V>(map: &M, name: &'static str) -> Result<M, DataplaneError>
where
    K: aya::Pod,
    M: IterableMap<K, V> + TryFrom<Map, Error = aya::maps::MapError>,
{
    let err = |source| DataplaneError::Map { name, source };
    let fd = map.map().fd().as_fd().try_clone_to_owned().map_err(|e| {
        err(aya::maps::MapError::from(aya::sys::SyscallError {
            call: "dup",
            io_error: e,
        }))
    })?;
    let data = MapData::from_fd(fd).map_err(err)?;
    let map = Map::from_map_data(data).map_err(err)?;
    M::try_from(map).map_err(err)
}

/// Verdict counters of `map` summed over CPUs, in verdict order.
fn verdict_totals(
    map: &PerCpuArray<MapData, VerdictCounters>,
) -> Result<Vec<VerdictTotal>, DataplaneError> {
    let mut out = Vec::new();
    for verdict in Verdict::ALL {
        let per_cpu = map
            .get(&(verdict as u32), 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::VERDICTS,
                source,
            })?;
        let sum = per_cpu
            .iter()
            .fold(VerdictCounters::default(), |acc, c| VerdictCounters {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            });
        out.push(VerdictTotal {
            verdict: verdict.name(),
            packets: sum.packets,
            bytes: sum.bytes,
        });
    }
    Ok(out)
}

/// Bytes of values one batch of [`source_rows`] reads at most (its buffer).
const SOURCE_BATCH_BYTES: usize = 1 << 20;

/// Every source of the per-source table, summed over its CPUs' slots (a source may hold one in
/// each CPU's copy of its set), read in batches of at most [`SOURCE_BATCH_BYTES`].
fn source_rows(table: &PerCpuArray<MapData, SourceSet>) -> Result<Vec<SourceRow>, DataplaneError> {
    let err = |source: std::io::Error| DataplaneError::Map {
        name: maps::SOURCE_TABLE,
        source: aya::maps::MapError::from(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error: source,
        }),
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| err(e))?.max(1);
    let per_batch = (SOURCE_BATCH_BYTES / (cpus * size_of::<SourceSet>())).max(1);
    let mut keys = vec![0u32; per_batch];
    let mut values = vec![SourceSet::default(); per_batch * cpus];
    let mut sums: std::collections::HashMap<SourceKey, SourceStats> =
        std::collections::HashMap::new();
    let (mut after, mut next) = (None, 0u32);
    loop {
        let looked = batch::lookup(
            table.map(),
            after.as_ref(),
            &mut next,
            &mut keys,
            &mut values,
            cpus,
        )
        .map_err(err)?;
        for set in values.iter().take(looked.count * cpus) {
            for way in set.ways.iter().filter(|w| w.stats.packets != 0) {
                let sum = sums.entry(way.key).or_default();
                let s = &way.stats;
                sum.packets = sum.packets.saturating_add(s.packets);
                sum.bytes = sum.bytes.saturating_add(s.bytes);
                sum.syns = sum.syns.saturating_add(s.syns);
                sum.drops = sum.drops.saturating_add(s.drops);
                sum.last_seen_ns = sum.last_seen_ns.max(s.last_seen_ns);
            }
        }
        if !looked.more || looked.count == 0 {
            break;
        }
        after = Some(next);
    }
    let now = clock::monotonic_ns();
    let mut rows: Vec<SourceRow> = sums
        .into_iter()
        .map(|(key, sum)| SourceRow {
            source: match key.as_v4() {
                Some(a) => IpAddr::V4(Ipv4Addr::from(a)),
                None => IpAddr::V6(Ipv6Addr::from(key.addr)),
            },
            packets: sum.packets,
            bytes: sum.bytes,
            syns: sum.syns,
            drops: sum.drops,
            last_seen_secs_ago: now.saturating_sub(sum.last_seen_ns) / 1_000_000_000,
        })
        .collect();
    rows.sort_by_key(|r| r.source);
    Ok(rows)
}

impl Dataplane {
    /// Verdict counters summed over CPUs, in verdict order.
    pub fn verdict_totals(&self) -> Result<Vec<VerdictTotal>, DataplaneError> {
        verdict_totals(&self.verdicts)
    }

    /// Every tracked source, summed over CPUs.
    pub fn source_rows(&self) -> Result<Vec<SourceRow>, DataplaneError> {
        source_rows(&self.source_table)
    }

    /// Handles on the counters that need no lock of this data plane (see [`CounterReader`]).
    pub fn counter_reader(&self) -> Result<CounterReader, DataplaneError> {
        Ok(CounterReader {
            verdicts: duplicate(&self.verdicts, maps::VERDICTS)?,
            source_table: duplicate(&self.source_table, maps::SOURCE_TABLE)?,
        })
    }

    /// Zeroes the verdict counters (for benchmarks and tests).
    pub fn reset_verdicts(&mut self) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        for verdict in Verdict::ALL {
            let zeros = aya::maps::PerCpuValues::try_from(vec![VerdictCounters::default(); cpus])
                .map_err(|e| DataplaneError::Io {
                path: self.map_path(maps::VERDICTS),
                source: e,
            })?;
            self.verdicts
                .set(verdict as u32, zeros, 0)
                .map_err(|source| DataplaneError::Map {
                    name: maps::VERDICTS,
                    source,
                })?;
        }
        Ok(())
    }
}

/// The `n` rows with the largest `key`, largest first (ties by address for a stable order).
pub fn top_by(rows: &[SourceRow], n: usize, key: impl Fn(&SourceRow) -> u64) -> Vec<SourceRow> {
    let mut sorted: Vec<SourceRow> = rows.iter().filter(|r| key(r) > 0).cloned().collect();
    sorted.sort_by(|a, b| key(b).cmp(&key(a)).then(a.source.cmp(&b.source)));
    sorted.truncate(n);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(last: u8, packets: u64, drops: u64) -> SourceRow {
        SourceRow {
            source: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            packets,
            bytes: packets * 60,
            syns: 0,
            drops,
            last_seen_secs_ago: 0,
        }
    }

    #[test]
    fn top_orders_and_truncates() {
        let rows = vec![row(1, 10, 0), row(2, 50, 5), row(3, 30, 30), row(4, 0, 0)];
        let by_packets = top_by(&rows, 2, |r| r.packets);
        assert_eq!(
            by_packets.iter().map(|r| r.packets).collect::<Vec<_>>(),
            vec![50, 30]
        );
        let by_drops = top_by(&rows, 10, |r| r.drops);
        assert_eq!(by_drops.len(), 2, "sources without drops are not listed");
        assert_eq!(by_drops[0].drops, 30);
    }
}

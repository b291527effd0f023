//! `why <address>`: everything the kernel holds about one source — the blocklist entries that
//! cover it (exact and prefixes: reason, origin, time left), the allowlist entries that cover it
//! (which win), its SYN rate-limit bucket, its per-source counters — and, when the daemon
//! answers, its SMTP session outcomes. Read-only; the same on the daemon and on the pinned maps.

use std::net::IpAddr;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use smtp_gateway_common::{RateState, SourceKey, config_flags, maps};

use super::{
    ops::{self, OpError},
    protocol::{AllowRow, BlockRow, RateBucket, WhyReport},
};
use crate::dataplane::{Dataplane, DataplaneError, Target, clock, lists::BlockRecord};

/// The one address `why` asks about, IPv4-mapped IPv6 as IPv4. A prefix is refused with its own
/// message (`block` and `allow` take prefixes, `why` does not), naming an address inside it.
pub fn parse_address(text: &str) -> Result<IpAddr, OpError> {
    let text = text.trim();
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(address.to_canonical());
    }
    Err(match text.parse::<ipnet::IpNet>() {
        Ok(net) => OpError::WhyPrefix {
            given: text.into(),
            inside: net.addr(),
        },
        Err(_) => OpError::WhyNotAnAddress(text.into()),
    })
}

/// The report for `address` (the daemon adds the session outcomes).
pub fn why(dp: &Dataplane, address: &str) -> Result<WhyReport, OpError> {
    let address = parse_address(address)?;
    let now = clock::monotonic_ns();
    // The source's exact entry is one lookup, and only the prefixes are walked: a blocklist of
    // millions of addresses is not read (nor the data plane held) for one source.
    let exact = match address {
        IpAddr::V4(a) => Target::V4(a),
        IpAddr::V6(a) => Target::V6(a),
    };
    let mut covering: Vec<BlockRecord> = dp
        .block_entry(exact)?
        .map(|entry| BlockRecord {
            target: exact,
            entry,
        })
        .into_iter()
        .collect();
    covering.extend(
        dp.blocked_prefixes()?
            .into_iter()
            .filter(|r| r.target.contains(address)),
    );
    covering.sort_by_key(|r| std::cmp::Reverse(r.target.net().prefix_len()));
    let blocks: Vec<BlockRow> = covering
        .iter()
        .map(|r| ops::block_row(dp, r, now))
        .collect();
    let allows: Vec<AllowRow> = {
        let covering: Vec<String> = dp
            .allowed()?
            .into_iter()
            .filter(|r| r.net.contains(&address))
            .map(|r| r.net.to_string())
            .collect();
        ops::allow_list(dp)?
            .into_iter()
            .filter(|r| covering.contains(&r.prefix))
            .collect()
    };
    let rate = rate_bucket(dp, address, now)?;
    let kernel = dp
        .source_rows()?
        .into_iter()
        .find(|r| r.source.to_canonical() == address);
    let verdict = verdict(&blocks, &allows, rate.as_ref());
    Ok(WhyReport {
        address,
        blocks,
        allows,
        rate,
        kernel,
        sessions: None,
        verdict,
        store: None,
    })
}

/// What the kernel does with a SYN from the source now, in the XDP program's order.
fn verdict(blocks: &[BlockRow], allows: &[AllowRow], rate: Option<&RateBucket>) -> String {
    if let Some(allow) = allows.first() {
        return format!("passed: allowlisted by {}", allow.prefix);
    }
    if let Some(block) = blocks.iter().find(|b| b.active) {
        let left = match block.expires_in_secs {
            Some(s) => format!(
                "for {}",
                ops::human_duration(std::time::Duration::from_secs(s))
            ),
            None => "permanently".into(),
        };
        return format!(
            "dropped: {} is blocked {left} (origin {}{})",
            block.target,
            block.origin,
            block
                .reason
                .as_deref()
                .map(|r| format!(", reason {r:?}"))
                .unwrap_or_default()
        );
    }
    match rate {
        Some(r) if r.syns_left == 0 => format!(
            "SYNs dropped by the rate limit for {} ms (bucket {})",
            r.full_in_ms, r.key
        ),
        _ => "passed".into(),
    }
}

/// The source's rate-limit bucket, read from the pinned `RATE_STATE` map.
fn rate_bucket(
    dp: &Dataplane,
    address: IpAddr,
    now: u64,
) -> Result<Option<RateBucket>, DataplaneError> {
    let cfg = dp.kernel_config()?;
    if cfg.flags & config_flags::RATE_LIMIT == 0 || cfg.rate_interval_ns == 0 {
        return Ok(None);
    }
    let err = |source| DataplaneError::Map {
        name: maps::RATE_STATE,
        source,
    };
    let path = dp.map_path(maps::RATE_STATE);
    // The daemon reads this map by its pin: after a `detach --force` under it, say so.
    if !path.exists() {
        return Err(DataplaneError::NotPinned { path });
    }
    let data = MapData::from_pin(&path).map_err(err)?;
    let map: BpfHashMap<MapData, SourceKey, RateState> =
        BpfHashMap::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)?;
    let (key, shown) = match address {
        IpAddr::V4(a) => {
            let masked = (u32::from_ne_bytes(a.octets()) & cfg.rate_v4_mask).to_ne_bytes();
            (
                SourceKey::from_v4(masked),
                std::net::Ipv4Addr::from(masked).to_string(),
            )
        }
        IpAddr::V6(a) => {
            let octets = a.octets();
            let (hi, lo) = octets.split_at(8);
            let word = |part: &[u8], mask: u64| {
                let mut w = [0u8; 8];
                w.copy_from_slice(part);
                (u64::from_ne_bytes(w) & mask).to_ne_bytes()
            };
            let mut addr = [0u8; 16];
            addr[..8].copy_from_slice(&word(hi, cfg.rate_v6_mask[0]));
            addr[8..].copy_from_slice(&word(lo, cfg.rate_v6_mask[1]));
            (
                SourceKey::from_v6(addr),
                std::net::Ipv6Addr::from(addr).to_string(),
            )
        }
    };
    let state = match map.get(&key, 0) {
        Ok(state) => state,
        Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let interval = cfg.rate_interval_ns;
    let burst = cfg.rate_tolerance_ns / interval + 1;
    let ahead = state.tat_ns.saturating_sub(now);
    let syns_left = if ahead > cfg.rate_tolerance_ns {
        0
    } else {
        (cfg.rate_tolerance_ns - ahead) / interval + 1
    };
    Ok(Some(RateBucket {
        key: shown,
        syns_left,
        burst,
        full_in_ms: ahead / 1_000_000,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(target: &str, origin: &str, active: bool) -> BlockRow {
        BlockRow {
            target: target.into(),
            kind: "exact".into(),
            reason: Some("r".into()),
            origin: origin.into(),
            expires_in_secs: Some(90),
            active,
            added_at: 0,
        }
    }

    #[test]
    fn why_takes_one_address_and_says_so_to_a_prefix() {
        let ok = |text: &str| parse_address(text).map_err(|e| e.to_string());
        assert_eq!(ok(" 198.18.0.7 "), Ok(IpAddr::from([198, 18, 0, 7])));
        assert_eq!(ok("::ffff:198.18.0.7"), Ok(IpAddr::from([198, 18, 0, 7])));
        for (given, inside) in [
            ("198.18.0.0/24", "`why 198.18.0.0`"),
            ("198.18.0.7/24", "`why 198.18.0.7`"),
            ("2001:db8::/48", "`why 2001:db8::`"),
        ] {
            let message = ok(given).expect_err("a prefix");
            assert!(
                message.contains("`why` takes one address")
                    && message.contains(inside)
                    && message.contains("`block list` and `allow list`"),
                "{message}"
            );
        }
        for bad in ["198.18.0.300", "mx.example.org", "198.18.0.0/33", ""] {
            let message = ok(bad).expect_err("not an address");
            assert!(
                message.contains("is not an IP address") && !message.contains("prefix"),
                "{message}"
            );
        }
    }

    #[test]
    fn the_verdict_follows_the_programs_order() {
        let allow = AllowRow {
            prefix: "198.18.0.0/24".into(),
            reason: None,
            origin: "cli".into(),
            added_at: 0,
        };
        let blocked = [block("198.18.0.7", "crowdsec", true)];
        assert!(
            verdict(&blocked, std::slice::from_ref(&allow), None)
                .starts_with("passed: allowlisted")
        );
        let v = verdict(&blocked, &[], None);
        assert!(
            v.starts_with("dropped: 198.18.0.7") && v.contains("crowdsec"),
            "{v}"
        );
        let expired = [block("198.18.0.7", "cli", false)];
        assert_eq!(verdict(&expired, &[], None), "passed");
        let empty = RateBucket {
            key: "198.18.0.7".into(),
            syns_left: 0,
            burst: 20,
            full_in_ms: 4000,
        };
        assert!(verdict(&[], &[], Some(&empty)).starts_with("SYNs dropped by the rate limit"));
    }
}

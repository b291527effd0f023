//! The control protocol: one JSON request per line, one JSON response per line, on a Unix
//! socket. The types are also what the CLI prints with `--json`, whether it asked the daemon or
//! read the pinned maps itself, so both paths print the same thing.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{dataplane::stats::SourceRow, source_outcomes::SessionCounts};

/// Longest request line the daemon reads; every request is a short command.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What the CLI asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Block an address or prefix, optionally for `ttl_secs`.
    BlockAdd {
        target: String,
        ttl_secs: Option<u64>,
        reason: Option<String>,
    },
    /// Remove exactly this blocklist entry.
    BlockDel { target: String },
    /// Every blocklist entry.
    BlockList,
    /// Allow an address or prefix.
    AllowAdd {
        target: String,
        reason: Option<String>,
    },
    /// Remove exactly this allowlist entry.
    AllowDel { target: String },
    /// Every allowlist entry.
    AllowList,
    /// Kernel verdict totals and the `top` busiest and most-dropped sources.
    Stats { top: usize },
    /// The session outcomes of every source the daemon keeps (for `top`, which joins them with
    /// the kernel counters it reads itself).
    Sessions,
    /// Re-read the configuration file (as SIGHUP does) and say how it went.
    Reload,
    /// Everything the kernel and the daemon hold about one address.
    Why { address: String },
    /// Publish this node's bans that the fleet has no record of now, not at the next
    /// reconcile (sent by `block import`, which writes the pinned maps itself).
    FleetSync,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done; `message` says what (the CLI prints it). `warnings` are worth showing too.
    Done {
        message: String,
        #[serde(default)]
        warnings: Vec<String>,
    },
    Blocklist {
        entries: Vec<BlockRow>,
    },
    Allowlist {
        entries: Vec<AllowRow>,
    },
    Stats(StatsReport),
    Sessions {
        sources: Vec<SourceSessions>,
    },
    Why(Box<WhyReport>),
    /// Refused or failed; the CLI prints `message` and exits non-zero.
    Error {
        message: String,
    },
}

/// One blocklist entry as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRow {
    pub target: String,
    /// `exact` or `prefix`.
    pub kind: String,
    pub reason: Option<String>,
    /// `cli`, `import`, `autoban` or `config`.
    pub origin: String,
    /// Seconds left; null when permanent.
    pub expires_in_secs: Option<u64>,
    /// False once expired (the sweeper removes it soon).
    pub active: bool,
    /// Unix seconds.
    pub added_at: u64,
}

/// One allowlist entry as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRow {
    pub prefix: String,
    pub reason: Option<String>,
    pub origin: String,
    pub added_at: u64,
}

/// Kernel counters, plus session outcomes when the daemon answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub verdicts: Vec<VerdictRow>,
    pub top_by_drops: Vec<SourceReport>,
    pub top_by_packets: Vec<SourceReport>,
    /// Sources in the kernel's per-source table.
    pub tracked_sources: usize,
    /// Sources the daemon holds session outcomes for (null: the maps were read directly).
    pub session_sources: Option<usize>,
}

/// One kernel verdict's totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRow {
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

/// One source: kernel counters, and its SMTP sessions when the daemon knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    /// Packets, bytes, SYNs, drops, last seen (flattened: the JSON fields sit at this level).
    #[serde(flatten)]
    pub kernel: SourceRow,
    /// Null when the maps were read directly (no daemon) or the source had no session.
    pub sessions: Option<SessionCounts>,
}

/// One source's session outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSessions {
    pub source: std::net::IpAddr,
    #[serde(flatten)]
    pub counts: SessionCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line_each() {
        let cases = [
            (
                Request::BlockAdd {
                    target: "198.18.0.7".into(),
                    ttl_secs: Some(60),
                    reason: None,
                },
                r#"{"op":"block_add","target":"198.18.0.7","ttl_secs":60,"reason":null}"#,
            ),
            (Request::Stats { top: 5 }, r#"{"op":"stats","top":5}"#),
            (Request::Reload, r#"{"op":"reload"}"#),
        ];
        for (request, wire) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), wire);
            assert_eq!(serde_json::from_str::<Request>(wire).unwrap(), request);
        }
    }

    #[test]
    fn unknown_operations_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }
}

/// What `why` reports about one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhyReport {
    /// The address asked about (IPv4-mapped addresses as IPv4).
    pub address: IpAddr,
    /// Blocklist entries covering it, exact first, then prefixes from the longest.
    pub blocks: Vec<BlockRow>,
    /// Allowlist entries covering it (an allowlisted source is never dropped).
    pub allows: Vec<AllowRow>,
    /// Its SYN rate-limit bucket; null when the limiter is off or has not seen it.
    pub rate: Option<RateBucket>,
    /// Its per-source kernel counters; null when the kernel's table does not hold it.
    pub kernel: Option<SourceRow>,
    /// Its SMTP session outcomes; null when the maps were read directly (no daemon) or it had
    /// no session.
    pub sessions: Option<SessionCounts>,
    /// In one line: what the kernel does with a SYN from it now.
    pub verdict: String,
    /// What the state store holds about it (shared by a fleet with Redis); null without a
    /// store or a daemon.
    #[serde(default)]
    pub store: Option<StoreView>,
}

/// What the state store holds about one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreView {
    /// The engine (`embedded`, `redis`) and this node's name.
    pub engine: String,
    /// This node's name in the store.
    pub node: String,
    /// Whether bans and counts are shared with a fleet.
    pub fleet: bool,
    /// Ban records covering the address (exact, its auto-ban target, the kernel entries'
    /// targets): which node banned it, by which origin, why, until when.
    pub bans: Vec<crate::store::BanRecord>,
    /// Allowlist records covering the address (exact, the kernel allowlist entries' targets):
    /// which node's operator allowed it, why.
    #[serde(default)]
    pub allows: Vec<crate::store::BanRecord>,
    /// A ban decided by the auto-ban and waiting for its session to close.
    pub waiting_ban: Option<crate::store::BanRecord>,
    /// Auto-ban counts of its ban target, per check.
    pub counts: Vec<CountRow>,
    /// Greylisting: its network and how many of its sessions passed (auto-allowlisted once
    /// `greylist.auto_allowlist_after` is reached); null when the store holds none.
    pub greylist: Option<GreylistRow>,
    /// Its session outcomes as stored (every node's latest write with a fleet).
    pub sessions: Option<SessionCounts>,
    /// Reads that failed (the view is partial then).
    pub errors: Vec<String>,
}

/// One auto-ban count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountRow {
    /// The ban target counted (the address, or its prefix).
    pub target: String,
    /// The check.
    pub check: String,
    /// Firings counted inside `autoban.window`.
    pub firings: u64,
    /// Of `autoban.checks.<check>` needed for a ban.
    pub needed: u32,
    /// Counted by every gateway of the fleet (a shared counter), or by this one.
    pub shared: bool,
}

/// Greylisting's record of a client network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GreylistRow {
    /// The network (`greylist.ipv4_prefix` / `ipv6_prefix`).
    pub network: String,
    /// Its sessions whose triplets passed.
    pub passes: u32,
    /// Passes that auto-allowlist it.
    pub allowlisted_after: u32,
}

/// One source's SYN limiter state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateBucket {
    /// The bucket's key: the address, or its prefix (`dataplane.rate_limit` masks).
    pub key: String,
    /// SYNs it may send at once now (the burst when idle).
    pub syns_left: u64,
    /// Of the burst.
    pub burst: u64,
    /// Milliseconds until its bucket is full again.
    pub full_in_ms: u64,
}

//! Where `top` gets its numbers: a [`Source`] opened once, one [`Snapshot`] per refresh.
//!
//! Today every number comes from the pinned kernel maps (verdict totals and per-source counters),
//! so `top` works whether or not the daemon runs.
//!
//! **Seam for the session columns.** [`TopRow::sessions`], [`TopRow::rejected`] and
//! [`TopRow::last_verdict`] are what the SMTP proxy knows about a source; the kernel does not.
//! They are `None` until the daemon's control socket exists. When it lands, [`Source::snapshot`]
//! is the one place to change: ask the socket for the per-source session counters and fill the
//! three fields by address, leaving them `None` when no daemon answers. Nothing else in `top`
//! needs to know where they came from: the view shows the session columns as soon as one row has
//! one of them, and hides them while all are `None`.

use std::{net::IpAddr, time::Instant};

use anyhow::bail;
use serde::Serialize;
use smtp_gateway::{
    config::Config,
    dataplane::{Dataplane, loader, stats::VerdictTotal},
};

/// The counters of one source at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopRow {
    /// The client address.
    pub source: IpAddr,
    /// Inspected TCP packets towards a protected port, passed or dropped.
    pub packets: u64,
    /// Their bytes (whole frames).
    pub bytes: u64,
    /// SYNs without ACK (connection attempts).
    pub syns: u64,
    /// Packets of the source the kernel dropped (blocklist or rate limit).
    pub drops: u64,
    /// Seconds since the kernel last saw the source.
    pub last_seen_secs_ago: u64,
    /// SMTP sessions the proxy ran for the source (control socket; `None` until it exists).
    pub sessions: Option<u64>,
    /// Of those, sessions refused or dropped by a check (control socket).
    pub rejected: Option<u64>,
    /// The last session's verdict or the check that decided it, e.g. `reject:pregreet`
    /// (control socket).
    pub last_verdict: Option<String>,
}

/// Everything one refresh shows, before rates and sorting.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Kernel verdict totals, in verdict order.
    pub verdicts: Vec<VerdictTotal>,
    /// Every tracked source, unsorted: sorting needs the rates, which need the previous snapshot.
    pub sources: Vec<TopRow>,
    /// When it was read, for the rates (monotonic).
    #[serde(skip)]
    pub taken: Instant,
    /// When it was read, for people and scripts (Unix seconds).
    pub taken_at_unix_s: u64,
}

/// The open data sources. Opened once: reopening a dozen pinned maps every second would be waste.
pub struct Source {
    /// The pinned maps, read at every snapshot.
    dataplane: Dataplane,
}

impl Source {
    /// Opens the pinned maps; a clear error when there are none (nothing is created).
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let Some(dataplane) = loader::open_existing(&config.dataplane)? else {
            bail!(
                "no pinned data plane under {}: start `smtp-gateway run` first",
                config.dataplane.pin_dir.display()
            );
        };
        Ok(Self { dataplane })
    }

    /// Reads every counter now. All tracked sources, whatever will be shown: the view sorts
    /// them (possibly by rate) and keeps the rows that fit.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let taken = Instant::now();
        let verdicts = self.dataplane.verdict_totals()?;
        let sources = self
            .dataplane
            .source_rows()?
            .into_iter()
            .map(|r| TopRow {
                source: r.source,
                packets: r.packets,
                bytes: r.bytes,
                syns: r.syns,
                drops: r.drops,
                last_seen_secs_ago: r.last_seen_secs_ago,
                // Filled by the control socket once it exists (see the module docs).
                sessions: None,
                rejected: None,
                last_verdict: None,
            })
            .collect();
        Ok(Snapshot {
            verdicts,
            sources,
            taken,
            taken_at_unix_s: smtp_gateway::dataplane::clock::unix_now_s(),
        })
    }
}

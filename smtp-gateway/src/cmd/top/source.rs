//! Where `top` gets its numbers: a [`Source`] opened once, one [`Snapshot`] per refresh.
//!
//! The kernel counters come from the pinned maps (verdict totals and per-source counters), so
//! `top` works whether or not the daemon runs. The session columns ([`TopRow::sessions`],
//! [`TopRow::rejected`], [`TopRow::last_verdict`]) are what the SMTP proxy knows about a source,
//! which the kernel does not: they come from the running daemon's control socket, joined by
//! address, and stay `None` when no daemon answers (the view then hides them). A daemon that
//! goes away or comes back is noticed at the next refresh.

use std::{net::IpAddr, time::Instant};

use std::collections::HashMap;

use anyhow::bail;
use serde::Serialize;
use smtp_gateway::{
    config::Config,
    control::{
        client::Client,
        protocol::{Request, Response},
    },
    dataplane::{Dataplane, loader, stats::VerdictTotal},
    source_outcomes::SessionCounts,
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
    /// Seconds since the kernel last saw the source; `None` for a source the daemon had
    /// sessions from but the kernel does not count (no XDP on that path, or evicted).
    pub last_seen_secs_ago: Option<u64>,
    /// SMTP sessions the proxy ran for the source (from the daemon; `None` without one).
    pub sessions: Option<u64>,
    /// Of those, sessions refused, tempfailed or dropped by a check (from the daemon).
    pub rejected: Option<u64>,
    /// The last session's verdict with the checks that fired, e.g. `dropped:pregreet`
    /// (from the daemon).
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
    /// For the session columns: the configuration names the daemon's socket.
    config: Config,
    /// The connection to the daemon, while one answers.
    daemon: Option<Client>,
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
        Ok(Self {
            dataplane,
            config: config.clone(),
            daemon: None,
        })
    }

    /// The daemon's session outcomes by source; empty (and `None`) when no daemon answers.
    /// The connection is kept between refreshes; one the daemon closed meanwhile (an
    /// `--interval` longer than `daemon.control_request_timeout`) is replaced at once.
    fn sessions(&mut self) -> Option<HashMap<IpAddr, SessionCounts>> {
        let kept = self.daemon.is_some();
        match self.ask_sessions() {
            None if kept => self.ask_sessions(),
            answer => answer,
        }
    }

    /// One `Sessions` request, on the kept connection or a new one.
    fn ask_sessions(&mut self) -> Option<HashMap<IpAddr, SessionCounts>> {
        if self.daemon.is_none() {
            self.daemon = crate::cmd::daemon(&self.config).ok().flatten();
        }
        let answer = self.daemon.as_mut()?.call(&Request::Sessions);
        match answer {
            Ok(Response::Sessions { sources }) => {
                Some(sources.into_iter().map(|s| (s.source, s.counts)).collect())
            }
            // Gone or confused: the next request opens a fresh connection.
            _ => {
                self.daemon = None;
                None
            }
        }
    }

    /// Reads every counter now. All tracked sources, whatever will be shown: the view sorts
    /// them (possibly by rate) and keeps the rows that fit.
    pub fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let taken = Instant::now();
        let verdicts = self.dataplane.verdict_totals()?;
        let sessions = self.sessions();
        let mut sources: Vec<TopRow> = self
            .dataplane
            .source_rows()?
            .into_iter()
            .map(|r| {
                let counts = sessions.as_ref().map(|s| s.get(&r.source));
                TopRow {
                    source: r.source,
                    packets: r.packets,
                    bytes: r.bytes,
                    syns: r.syns,
                    drops: r.drops,
                    last_seen_secs_ago: Some(r.last_seen_secs_ago),
                    // A daemon that never saw a session from the source: zero, not unknown.
                    sessions: counts.map(|c| c.map_or(0, |c| c.sessions)),
                    rejected: counts.map(|c| c.map_or(0, refused)),
                    last_verdict: counts.flatten().map(last_verdict),
                }
            })
            .collect();
        // Sources the daemon had sessions from but the kernel does not count.
        if let Some(sessions) = &sessions {
            let counted: std::collections::HashSet<IpAddr> =
                sources.iter().map(|r| r.source).collect();
            for (source, c) in sessions {
                if !counted.contains(source) {
                    sources.push(TopRow {
                        source: *source,
                        packets: 0,
                        bytes: 0,
                        syns: 0,
                        drops: 0,
                        last_seen_secs_ago: None,
                        sessions: Some(c.sessions),
                        rejected: Some(refused(c)),
                        last_verdict: Some(last_verdict(c)),
                    });
                }
            }
        }
        Ok(Snapshot {
            verdicts,
            sources,
            taken,
            taken_at_unix_s: smtp_gateway::dataplane::clock::unix_now_s(),
        })
    }
}

/// Sessions a check or the score refused, tempfailed or dropped.
fn refused(c: &SessionCounts) -> u64 {
    ["tempfailed", "rejected", "dropped"]
        .iter()
        .filter_map(|v| c.by_verdict.get(*v))
        .sum()
}

/// `dropped:pregreet`, or just the verdict when no check fired.
fn last_verdict(c: &SessionCounts) -> String {
    if c.last_checks.is_empty() {
        c.last_verdict.clone()
    } else {
        format!("{}:{}", c.last_verdict, c.last_checks.join(","))
    }
}

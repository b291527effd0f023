//! `why <address>` in the state store, through the daemon: what the store (shared by every
//! gateway of a fleet with Redis) holds about one address — the ban records covering it (which
//! node banned it, by which origin, why, until when), the allowlist records covering it, a ban
//! decided and waiting, the auto-ban
//! counts of its ban target (this node's, or the fleet's shared counters), greylisting's record
//! of its network, and its stored session outcomes. Every read is bounded by
//! `store.io_timeout`; a read that fails is named in the view's `errors`, never fatal.

use std::net::IpAddr;

use tokio::sync::watch;

use super::protocol::{CountRow, GreylistRow, StoreView};
use crate::{
    autoban::{AutobanConfig, ban_target},
    checks::Check,
    policy::greylist::{GreylistConfig, triplet::client_network},
    source_outcomes::SessionCounts,
    store::{BanRecord, Space, Store, StoreError},
};

/// The sections `why` reads to find the store's keys of an address (live: reloads apply).
#[derive(Clone)]
pub struct WhyScope {
    /// `[autoban]`: the ban target's prefixes and the counted checks.
    pub autoban: watch::Receiver<AutobanConfig>,
    /// `[greylist]`: the client network's prefixes, the auto-allowlist threshold.
    pub greylist: watch::Receiver<GreylistConfig>,
}

/// What `store` holds about `address`. `targets` are the kernel blocklist entries covering it
/// (their ban records are read too), `allowed` the kernel allowlist entries covering it (their
/// allowlist records are read).
pub async fn store_view(
    store: &Store,
    scope: &WhyScope,
    address: IpAddr,
    targets: &[String],
    allowed: &[String],
) -> StoreView {
    let autoban = scope.autoban.borrow().clone();
    let greylist = scope.greylist.borrow().clone();
    let mut errors = Vec::new();
    let mut note = |what: &str, e: StoreError| errors.push(format!("{what}: {e}"));
    let ban_target = ban_target(address, autoban.ipv4_prefix, autoban.ipv6_prefix).to_string();

    let mut ids: Vec<String> = vec![address.to_string(), ban_target.clone()];
    ids.extend(targets.iter().cloned());
    ids.dedup();
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    let mut bans = Vec::new();
    for id in &ids {
        match store
            .get_within::<BanRecord>(Space::Ban, id, store.config().io_timeout)
            .await
        {
            Ok(Some(record)) => bans.push(record),
            Ok(None) => {}
            Err(e) => note(&format!("ban record {id}"), e),
        }
    }

    let mut allows = Vec::new();
    let mut allow_ids = vec![address.to_string()];
    allow_ids.extend(allowed.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    allow_ids.retain(|id| seen.insert(id.clone()));
    for id in &allow_ids {
        match store
            .get_within::<BanRecord>(Space::Allow, id, store.config().io_timeout)
            .await
        {
            Ok(Some(record)) => allows.push(record),
            Ok(None) => {}
            Err(e) => note(&format!("allowlist record {id}"), e),
        }
    }

    let waiting_ban = store
        .get_within::<BanRecord>(Space::Pending, &ban_target, store.config().io_timeout)
        .await
        .unwrap_or_else(|e| {
            note("waiting ban", e);
            None
        });

    let mut checks: Vec<(&String, &u32)> = autoban.checks.iter().collect();
    checks.sort();
    let mut counts = Vec::new();
    for (name, needed) in checks {
        let Some(check) = Check::from_name(name) else {
            continue;
        };
        let id = format!("{ban_target}#{}", check.name());
        let firings = if store.fleet() {
            store.counter(Space::FleetCount, &id).await
        } else {
            store
                .get_within::<LocalCount>(Space::Count, &id, store.config().io_timeout)
                .await
                .map(|c| c.map(|c| u64::from(c.n)))
        };
        match firings {
            Ok(Some(firings)) => counts.push(CountRow {
                target: ban_target.clone(),
                check: check.name().into(),
                firings,
                needed: *needed,
                shared: store.fleet(),
            }),
            Ok(None) => {}
            Err(e) => note(&format!("count {id}"), e),
        }
    }

    let network = client_network(address, greylist.ipv4_prefix, greylist.ipv6_prefix).to_string();
    let greylist = match store.counter(Space::GreyAllow, &network).await {
        Ok(passes) => passes.map(|n| GreylistRow {
            network,
            passes: u32::try_from(n).unwrap_or(u32::MAX),
            allowlisted_after: greylist.auto_allowlist_after,
        }),
        Err(e) => {
            note("greylist record", e);
            None
        }
    };

    let sessions = store
        .get_within::<SessionCounts>(
            Space::Outcome,
            &address.to_string(),
            store.config().io_timeout,
        )
        .await
        .unwrap_or_else(|e| {
            note("session outcomes", e);
            None
        });

    StoreView {
        engine: store.engine_name().into(),
        node: store.node().into(),
        fleet: store.fleet(),
        bans,
        allows,
        waiting_ban,
        counts,
        greylist,
        sessions,
        errors,
    }
}

/// The part of the auto-ban's stored count `why` reads (`count/<target>#<check>`).
#[derive(serde::Deserialize)]
struct LocalCount {
    /// Firings counted.
    n: u32,
}

//! Fleet ban propagation (`store.engine = "redis"`, `store.fleet`): a ban made on any gateway
//! reaches every other gateway's XDP blocklist, and a `block del` removes it everywhere; an
//! operator's `allow add` / `allow del` reaches every allowlist the same way (records in
//! `allow/<target>`, deletions remembered in `unallow/<target>`).
//!
//! The writing side is the store's: a ban record written or deleted is published on
//! `<key_prefix>fleet/bans` in the same pipeline as its write (`store/redis.rs`). This task is
//! the reading side: it subscribes (again after every loss of the connection, every
//! `store.retry_interval`), applies each message from another node to the kernel blocklist
//! (`apply.rs`), and every `store.fleet_reconcile_interval` (and right after each subscription)
//! compares its entries of origin `fleet` with the stored ban records and remembered deletions
//! (`unban/<target>`, kept `store.fleet_unban_ttl`), so a gateway that was away, is new, or
//! missed a message catches up with the remaining TTLs. Only a remembered deletion removes an
//! entry: a Redis restarted empty takes nothing away from any gateway. The packet path never
//! waits on any of it: the kernel entries are written under the data plane lock, off the async
//! threads. Messages are hostile: over `store.max_value_bytes` or not a [`FleetMessage`], they
//! are counted and dropped.
//!
//! Each reconcile also publishes this node's own bans that have no stored record
//! (`publish.rs`): an import or a `block add` made without the daemon, and every ban of this
//! node after Redis lost its data.
//!
//! Records of other nodes are hostile too: one on a prefix shorter than
//! `store.fleet_min_prefix_v4`/`_v6`, or a ban on loopback, unspecified or multicast addresses,
//! is refused (counted as invalid, logged once: `refused.rs`), and no ban lasts longer than its
//! writer stated nor than `store.permanent_ban_ttl` (`apply::left`).
//!
//! Each reconcile also refreshes this run's presence key (`presence.rs`): two running gateways
//! with the same `store.node`, which would never apply each other's bans, are told.
//!
//! - `apply.rs`: what a ban or an unban of another node does to the blocklist;
//! - `publish.rs`: this node's bans the store has no record of;
//! - `refused.rs`: the throttled log of the records refused;
//! - `presence.rs`: the presence key that tells a `store.node` used twice.

pub mod apply;
pub mod presence;
pub mod publish;
pub mod refused;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};

use self::{apply::Applied, refused::RefusalLog};
use crate::{
    dataplane::SharedDataplane,
    metrics::Metrics,
    store::{
        BanRecord, Store, StoreError,
        records::{FleetList, FleetMessage, decode, fleet_channel},
    },
};

/// What the subscriber hands to the applying loop.
enum Event {
    /// A message of the channel, decoded.
    Message(FleetMessage),
    /// Subscribed (again): messages may have been missed, reconcile now.
    Subscribed,
}

/// Applies the fleet's bans to this gateway until shutdown (returns at once unless
/// [`Store::fleet`]). A message on `sync` (`block import` through the control socket) makes a
/// reconcile run now.
pub async fn run(
    store: Option<Store>,
    dataplane: SharedDataplane,
    metrics: Arc<Metrics>,
    mut sync: mpsc::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(store) = store.filter(Store::fleet) else {
        return;
    };
    let cfg = store.config().clone();
    // The store's client: the same server, TLS files read at start.
    let Some(client) = store.redis_client() else {
        return;
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let node = store.node().to_string();
    let mut presence = store
        .redis_connection()
        .and_then(|conn| presence::Presence::new(conn, &cfg, &node));
    let subscriber = tokio::spawn(subscribe(
        client,
        fleet_channel(&cfg.key_prefix),
        cfg.max_value_bytes,
        cfg.retry_interval,
        cfg.io_timeout,
        tx,
        metrics.clone(),
    ));
    let limits = apply::Limits::of(&cfg);
    match on_dataplane(&dataplane, move |dp| apply::drop_refused(dp, &limits)).await {
        Ok(done) if done.removed + done.disallowed > 0 => tracing::info!(
            removed = done.removed,
            disallowed = done.disallowed,
            "fleet: entries of the fleet that store.fleet_min_prefix_v4/v6 or the reserved ranges \
             now refuse removed"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "fleet: entries the limits refuse not looked for"),
    }
    let mut refusals = RefusalLog::new(cfg.fleet_reconcile_interval, cfg.load_limit);
    // Whether the last reconcile failed: told once per run of failures.
    let mut failing = false;
    let mut tick = tokio::time::interval(cfg.fleet_reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(node, "fleet: ban propagation through Redis");
    loop {
        let reconcile_now = tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => true,
            Some(()) = sync.recv() => true,
            event = rx.recv() => match event {
                None => break,
                Some(Event::Subscribed) => true,
                Some(Event::Message(message)) => {
                    let node = node.clone();
                    let applied = on_dataplane(&dataplane, move |dp| {
                        let mut done = Applied::default();
                        match &message {
                            FleetMessage::Ban { record, ttl_ms } => {
                                let life = ttl_ms.map(Duration::from_millis);
                                apply::ban(dp, record, life, &node, &limits, &mut done)?;
                            }
                            FleetMessage::Unban { target, node: from } => {
                                let list = FleetList::Blocklist;
                                apply::remove(dp, list, target, from, &node, &mut done)?;
                            }
                            FleetMessage::Allow { record } => {
                                apply::allow(dp, record, &node, &limits, &mut done)?;
                            }
                            FleetMessage::Unallow { target, node: from } => {
                                let list = FleetList::Allowlist;
                                apply::remove(dp, list, target, from, &node, &mut done)?;
                            }
                        }
                        Ok(done)
                    })
                    .await;
                    report(&metrics, "message", applied, &mut refusals);
                    if let Some(line) = refusals.due(Instant::now(), false) {
                        line.log();
                    }
                    false
                }
            },
        };
        if reconcile_now {
            let failed = reconcile(&store, &dataplane, &metrics, &node, &mut refusals).await;
            match &failed {
                Some(error) if !failing => tracing::warn!(
                    %error,
                    "fleet: reconcile failing (store unavailable); bans in force stay, retrying \
                     at each reconcile"
                ),
                None if failing => tracing::info!("fleet: reconcile works again"),
                _ => {}
            }
            failing = failed.is_some();
            if let Some(presence) = &mut presence {
                presence.check(&metrics).await;
            }
        }
    }
    subscriber.abort();
    let _ = subscriber.await;
}

/// One reconcile: every ban record against the blocklist entries of origin `fleet`, every
/// allowlist record against the allowlist entries of origin `fleet`; then the refusals it found
/// are logged. The first store error, when the store failed.
async fn reconcile(
    store: &Store,
    dataplane: &SharedDataplane,
    metrics: &Metrics,
    node: &str,
    refusals: &mut RefusalLog,
) -> Option<StoreError> {
    let mut complete = true;
    let mut failed = None;
    for list in FleetList::ALL {
        match reconcile_list(store, dataplane, metrics, node, list, refusals).await {
            Ok(read_all) => complete &= read_all,
            Err(error) => {
                complete = false;
                failed = failed.or(Some(error));
            }
        }
    }
    if complete {
        refusals.reconciled();
    }
    if let Some(line) = refusals.due(Instant::now(), true) {
        line.log();
    }
    failed
}

/// [`reconcile`] of one list: whether it read and applied every record and deletion of the
/// list, or the store's error (records not read: nothing done; deletions not read: the records
/// applied, nothing removed).
async fn reconcile_list(
    store: &Store,
    dataplane: &SharedDataplane,
    metrics: &Metrics,
    node: &str,
    list: FleetList,
    refusals: &mut RefusalLog,
) -> Result<bool, StoreError> {
    let records = match store.load_with_life::<BanRecord>(list.records()).await {
        Ok(r) => r,
        Err(e) => {
            metrics.fleet("reconcile_failed", 1);
            tracing::debug!(error = %e, ?list, "fleet: reconcile skipped (store unavailable)");
            return Err(e);
        }
    };
    let mut failed = None;
    let deletions: Vec<String> = match store.load::<FleetMessage>(list.deletions()).await {
        Ok(u) => u
            .into_iter()
            .filter_map(|(_, m)| list.deleted_target(m))
            .collect(),
        Err(e) => {
            metrics.fleet("reconcile_failed", 1);
            tracing::debug!(error = %e, ?list, "fleet: deletions not read; none removed this time");
            failed = Some(e);
            Vec::new()
        }
    };
    // A view cut at `store.load_limit` does not tell which entries lack a record.
    let records_read = records.len();
    let complete = records_read < store.config().load_limit;
    let recorded: HashSet<String> = records.iter().map(|r| r.value.target.clone()).collect();
    let deleted: HashSet<String> = deletions.iter().cloned().collect();
    let me = node.to_string();
    let limits = apply::Limits::of(store.config());
    let applied = on_dataplane(dataplane, move |dp| {
        apply::reconcile(dp, list, &records, &deletions, &me, &limits)
    })
    .await;
    if complete {
        publish_unrecorded(store, dataplane, metrics, node, list, recorded, deleted).await;
    }
    if let Ok(done) = &applied {
        if done.banned + done.removed + done.allowed + done.disallowed > 0 {
            tracing::info!(
                banned = done.banned,
                removed = done.removed,
                allowed = done.allowed,
                disallowed = done.disallowed,
                "fleet: reconciled with the stored records"
            );
        }
        tracing::debug!(
            ?list,
            records = records_read,
            invalid = done.invalid,
            "fleet: reconcile done"
        );
    }
    let applied_all = applied.is_ok();
    report(metrics, "reconcile", applied, refusals);
    match failed {
        Some(error) => Err(error),
        None => Ok(complete && applied_all),
    }
}

/// Writes (and so publishes) a record for each of this node's entries of `list` that the store
/// has no record of (`publish.rs`), at most half the write queue at a time.
async fn publish_unrecorded(
    store: &Store,
    dataplane: &SharedDataplane,
    metrics: &Metrics,
    node: &str,
    list: FleetList,
    recorded: HashSet<String>,
    deleted: HashSet<String>,
) {
    let cfg = store.config();
    let (limit, permanent) = (
        cfg.load_limit.min(cfg.queue / 2).max(1),
        cfg.permanent_ban_ttl,
    );
    let dp = dataplane.clone();
    let me = node.to_string();
    let found = tokio::task::spawn_blocking(move || {
        let dp = dp
            .lock()
            .map_err(|_| "the data plane lock is poisoned".to_string())?;
        match list {
            FleetList::Blocklist => {
                publish::unrecorded(&dp, &recorded, &deleted, &me, limit, permanent)
            }
            FleetList::Allowlist => {
                publish::unrecorded_allows(&dp, &recorded, &deleted, &me, limit, permanent)
            }
        }
        .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match found {
        Ok(records) if !records.is_empty() => {
            tracing::info!(
                entries = records.len(),
                ?list,
                "fleet: this node's entries without a stored record published"
            );
            metrics.fleet("published", records.len());
            for (record, ttl) in records {
                let id = record.target.clone();
                store.put(list.records(), &id, &record, ttl);
            }
        }
        Ok(_) => {}
        Err(error) => tracing::error!(%error, ?list, "fleet: this node's entries not read"),
    }
}

/// Runs `f` on the data plane, off the async threads.
async fn on_dataplane(
    dataplane: &SharedDataplane,
    f: impl FnOnce(
        &mut crate::dataplane::Dataplane,
    ) -> Result<Applied, crate::dataplane::DataplaneError>
    + Send
    + 'static,
) -> Result<Applied, String> {
    let dp = dataplane.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut dp = dp
            .lock()
            .map_err(|_| "the data plane lock is poisoned".to_string())?;
        f(&mut dp).map_err(|e| e.to_string())
    })
    .await;
    joined.unwrap_or_else(|e| Err(e.to_string()))
}

/// Counts (and logs a failure of) one application; notes its refusals.
fn report(
    metrics: &Metrics,
    what: &'static str,
    applied: Result<Applied, String>,
    refusals: &mut RefusalLog,
) {
    match applied {
        Ok(done) => {
            refusals.note(done.refused);
            metrics.fleet("banned", done.banned);
            metrics.fleet("removed", done.removed);
            metrics.fleet("allowed", done.allowed);
            metrics.fleet("disallowed", done.disallowed);
            metrics.fleet("kept", done.kept);
            metrics.fleet("invalid", done.invalid);
        }
        Err(error) => {
            metrics.fleet("failed", 1);
            tracing::error!(%error, what, "fleet: bans not applied");
        }
    }
}

/// Subscribes to `channel` and forwards its messages, subscribing again `retry` after every
/// loss of the connection (Redis restarted, unreachable).
async fn subscribe(
    client: ::redis::Client,
    channel: String,
    max: usize,
    retry: Duration,
    timeout: Duration,
    tx: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
) {
    let mut down = false;
    loop {
        let connected = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        })
        .await;
        match connected {
            Ok(Ok(mut pubsub)) => {
                if down {
                    tracing::info!("fleet: subscribed again");
                }
                if tx.send(Event::Subscribed).await.is_err() {
                    return;
                }
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let payload = message.get_payload_bytes();
                    match decode::<FleetMessage>(&channel, payload, max) {
                        Ok(m) => {
                            if tx.send(Event::Message(m)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            metrics.fleet("invalid", 1);
                            tracing::debug!(error = %e, "fleet: message dropped");
                        }
                    }
                }
                tracing::warn!("fleet: subscription lost; bans in force stay, subscribing again");
            }
            Ok(Err(e)) if !down => {
                tracing::warn!(error = %e, "fleet: cannot subscribe; bans in force stay, retrying");
            }
            Err(_) if !down => {
                tracing::warn!("fleet: subscribing timed out; bans in force stay, retrying");
            }
            _ => {}
        }
        down = true;
        tokio::time::sleep(retry).await;
    }
}

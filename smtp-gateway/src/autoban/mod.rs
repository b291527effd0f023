//! Session verdicts feeding the kernel: a source that fails a configured check often enough is
//! added to the XDP blocklist with a TTL and the check as reason, so its next SYN is dropped in the
//! kernel. Allowlisted sources are never banned; expired bans leave the maps through the sweeper.
//!
//! Firings are counted on the ban target (the address, or the prefix a ban covers) inside
//! `autoban.window` ([`Tally`], pure); decided bans wait for the offending session to close and
//! are then written in batches off the event loop ([`run`]), so a busy data plane lock never makes
//! the loop miss events, and a decided ban is never forgotten. Memory is bounded by
//! `autoban.track_sources` (counts, waiting bans, the batch being written).
//!
//! With a state store, counts and waiting bans are written through and loaded back at start
//! ([`restore`]): a restart (even `kill -9`) forgets neither a count nor a decided ban, and the
//! bans that were waiting are written to the kernel right after it. Every ban written is also
//! stored as a [`BanRecord`] (target, reason, origin node, expiry) for the fleet.
//!
//! - `config.rs`: `[autoban]`;
//! - `tally.rs`: the counts and the decided bans, pure;
//! - `store.rs`: counts, waiting bans and ban records in the state store;
//! - `fleet.rs`: with a fleet, one bot counted once across every gateway (shared counters);
//! - `write.rs`: bans written to the kernel in batches, logged and counted.

mod config;
mod fleet;
mod store;
mod tally;
mod write;

use std::{net::IpAddr, sync::Arc, time::Instant};

use tokio::{
    sync::{broadcast, mpsc, watch},
    task::{JoinError, JoinHandle},
};

pub use config::{AutobanConfig, MAX_FIRINGS, MAX_GRACE, MAX_TRACK_SOURCES, MAX_TTL, MAX_WINDOW};
use fleet::{Counted, FleetCounter};
use store::{persist, persist_written, restore};
pub use tally::ban_target;
use tally::{Change, Tally};
use write::{Ban, Written, report, write_bans};

use crate::{
    dataplane::SharedDataplane,
    events::{Event, SessionEnd},
    metrics::Metrics,
    store::Store,
};

/// Consumes verdict events until shutdown, banning as configured. Returns the number of bans.
/// A ban is decided when a check fires often enough inside `autoban.window` for one ban target,
/// and written `autoban.grace` after a session of that target ends (sessions end within their
/// timeouts). Bans are written off the event loop, one batch at a time under one lock of the
/// data plane, so a slow lock never makes the loop miss events.
pub async fn run(
    config: watch::Receiver<AutobanConfig>,
    dataplane: SharedDataplane,
    events: broadcast::Receiver<Event>,
    ends: broadcast::Receiver<SessionEnd>,
    metrics: Arc<Metrics>,
    store: Option<Store>,
    shutdown: watch::Receiver<bool>,
) -> u64 {
    let write = move |bans: Vec<Ban>| write_bans(&dataplane, bans);
    serve(config, write, events, ends, metrics, store, shutdown).await
}

/// The event loop of [`run`], writing bans with `write` (a blocking function, run on the
/// blocking pool; the tests give one that stands for a busy data plane).
async fn serve<W>(
    mut config: watch::Receiver<AutobanConfig>,
    write: W,
    mut events: broadcast::Receiver<Event>,
    mut ends: broadcast::Receiver<SessionEnd>,
    metrics: Arc<Metrics>,
    store: Option<Store>,
    mut shutdown: watch::Receiver<bool>,
) -> u64
where
    W: Fn(Vec<Ban>) -> Vec<(Ban, Written)> + Clone + Send + 'static,
{
    let mut tally = Tally::default();
    if let Some(store) = &store {
        let cfg = config.borrow().clone();
        let (counts, bans) = restore(&mut tally, store, &cfg).await;
        if counts + bans > 0 {
            tracing::info!(
                counts,
                waiting_bans = bans,
                "auto-ban: counts and waiting bans taken back from the store"
            );
        }
    }
    let (mut fleet, mut answers) = FleetCounter::new(store.as_ref(), config.borrow().track_sources);
    let report = |metrics: &Metrics, written: Result<Vec<(Ban, Written)>, JoinError>| {
        if let (Some(store), Ok(written)) = (&store, &written) {
            persist_written(store, written);
        }
        report(metrics, written)
    };
    // The batch being written; the next one waits for it (one lock holder at a time).
    let mut writing: Option<JoinHandle<Vec<(Ban, Written)>>> = None;
    let mut bans = 0;
    // Reloads wake the loop (a smaller track_sources may concern bans already waiting).
    let mut reloads = true;
    loop {
        let track = config.borrow().track_sources;
        if tally.pending.len() >= track {
            // A reload lowered track_sources below the bans waiting: they are written now.
            tally.all_due(Instant::now());
        }
        if writing.is_none() {
            let batch = tally.take_due(Some(Instant::now()), config.borrow().ttl);
            if !batch.is_empty() {
                let write = write.clone();
                writing = Some(tokio::task::spawn_blocking(move || write(batch)));
            }
        }
        // While a batch is written, its end wakes the loop for the next one.
        let next_due = writing.is_none().then(|| tally.next_due()).flatten();
        // A full table of decided bans (all due, waiting for the writer) holds the events back
        // instead of growing: a missed firing costs a count, never a decided ban. Ends wait too,
        // so a session's events are still read before its end.
        let room = tally.pending.len() < track;
        tokio::select! {
            biased;
            written = finished(&mut writing) => {
                writing = None;
                bans += report(&metrics, written);
            }
            // Check events before ends: a session's events are all sent before its end.
            event = events.recv(), if room => match event {
                Ok(event) => {
                    let cfg = config.borrow();
                    let now = Instant::now();
                    apply(&mut fleet, store.as_ref(), tally.fired(&cfg, &event, now), &cfg, now);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "auto-ban fell behind the session events");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            end = ends.recv(), if room => match end {
                Ok(end) => {
                    let cfg = config.borrow();
                    let now = Instant::now();
                    for change in end_session(&mut tally, &cfg, &mut events, end.source, now) {
                        apply(&mut fleet, store.as_ref(), Some(change), &cfg, now);
                    }
                    if let Some(fleet) = &mut fleet {
                        fleet.session_ended(ban_target(end.source, cfg.ipv4_prefix, cfg.ipv6_prefix));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "auto-ban fell behind the session ends; banning the pending sources now");
                    tally.all_due(Instant::now());
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            Some(counted) = next_answer(&mut answers), if room => {
                let ended = fleet.as_mut().is_some_and(|f| f.answered(&counted));
                let cfg = config.borrow();
                let now = Instant::now();
                if counted.reaches(&cfg) {
                    let due = ended.then(|| now + cfg.grace);
                    let change = tally.decide(&cfg, counted.target, counted.check, counted.source, due, now);
                    if change.is_some() {
                        tracing::info!(target = %counted.target, check = counted.check.name(), total = counted.total, "auto-ban: the fleet's count decided a ban");
                    }
                    apply(&mut fleet, store.as_ref(), change, &cfg, now);
                }
            }
            () = sleep_until(next_due) => {}
            changed = config.changed(), if reloads => reloads = changed.is_ok(),
            _ = shutdown.changed() => break,
        }
    }
    // Decided bans are not lost to a restart: they are written now.
    if let Some(batch) = writing.take() {
        bans += report(&metrics, batch.await);
    }
    let batch = tally.take_due(None, config.borrow().ttl);
    if !batch.is_empty() {
        bans += report(
            &metrics,
            tokio::task::spawn_blocking(move || write(batch)).await,
        );
    }
    bans
}

/// A session's end. Its events were all sent before it, but the loop may have found the event
/// channel empty just before both arrived and then polled the ends: the events still waiting are
/// read first, or the ban they decide would wait for a due time that never comes.
fn end_session(
    tally: &mut Tally,
    cfg: &AutobanConfig,
    events: &mut broadcast::Receiver<Event>,
    source: IpAddr,
    now: Instant,
) -> Vec<Change> {
    let mut changes = Vec::new();
    // Bounded like the loop's own reads: a full table holds the rest back (and is all due).
    while tally.pending.len() < cfg.track_sources {
        match events.try_recv() {
            Ok(event) => changes.extend(tally.fired(cfg, &event, now)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "auto-ban fell behind the session events");
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                break;
            }
        }
    }
    tally.session_ended(cfg, source, now);
    changes
}

/// The end of the batch being written (never, when none is).
async fn finished<T>(writing: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match writing {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// What one change does beyond the tally: written through to the store, and with a fleet, a
/// count goes to the shared counter and a decision starts it over.
fn apply(
    fleet: &mut Option<FleetCounter>,
    store: Option<&Store>,
    change: Option<Change>,
    cfg: &AutobanConfig,
    now: Instant,
) {
    let Some(change) = change else {
        return;
    };
    if let Some(fleet) = fleet {
        match change {
            Change::Counted(target, check, _, source) => {
                fleet.count(target, check, source, cfg.window, cfg.track_sources);
            }
            Change::Decided(target, check, _) => fleet.decided(target, check),
        }
    }
    if let Some(store) = store {
        persist(store, cfg, change, now);
    }
}

/// The next answer of the fleet counter (never, without one).
async fn next_answer(answers: &mut Option<mpsc::Receiver<Counted>>) -> Option<Counted> {
    match answers {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at` (forever without one).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{store::CountRecord, *};
    use crate::{
        checks::{Action, Check},
        dataplane::Target,
        store::{BanRecord, Space, records::unix_now_ms},
    };

    fn event(last: u8, check: Check, action: Action) -> Event {
        Event {
            source: IpAddr::from([198, 18, 0, last]),
            check,
            action,
            detail: String::new(),
            permanent: action != Action::Ignore,
        }
    }

    fn config(checks: &[(&str, u32)], track_sources: usize) -> AutobanConfig {
        AutobanConfig {
            checks: checks.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            track_sources,
            ..AutobanConfig::default()
        }
    }

    fn pending_check(tally: &Tally, target: &str) -> Option<&'static str> {
        let target: Target = target.parse().expect("target");
        tally.pending.get(&target).map(|p| p.check)
    }

    #[test]
    fn a_ban_is_decided_after_the_configured_firings_and_never_for_ignore() {
        let cfg = config(&[("relay_attempt", 2), ("pregreet", 1)], 3);
        let mut tally = Tally::default();
        let now = Instant::now();

        tally.fired(&cfg, &event(1, Check::RelayAttempt, Action::Score), now);
        assert!(tally.pending.is_empty(), "one of two relay attempts");
        tally.fired(&cfg, &event(1, Check::RelayAttempt, Action::Score), now);
        assert_eq!(pending_check(&tally, "198.18.0.1"), Some("relay_attempt"));
        assert_eq!(tally.next_due(), None, "waits for the session");

        tally.fired(&cfg, &event(2, Check::Pregreet, Action::Ignore), now);
        tally.fired(&cfg, &event(3, Check::NonSmtp, Action::Drop), now);
        assert_eq!(
            tally.pending.len(),
            1,
            "ignored and unconfigured checks never ban"
        );

        tally.session_ended(&cfg, IpAddr::from([198, 18, 0, 1]), now);
        assert_eq!(tally.next_due(), Some(now + cfg.grace));
        assert!(tally.take_due(Some(now), cfg.ttl).is_empty(), "grace");
        let due = tally.take_due(Some(now + cfg.grace), cfg.ttl);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].check, "relay_attempt");
        assert!(tally.pending.is_empty());
    }

    #[test]
    fn an_ipv6_prober_rotating_inside_its_64_is_counted_on_the_ban_target() {
        let cfg = config(&[("relay_attempt", 3)], 100);
        let mut tally = Tally::default();
        let now = Instant::now();
        for last in 1..=3u16 {
            let e = Event {
                source: IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, last]),
                check: Check::RelayAttempt,
                action: Action::Score,
                detail: String::new(),
                permanent: true,
            };
            tally.fired(&cfg, &e, now);
        }
        assert_eq!(
            pending_check(&tally, "2001:db8::/64"),
            Some("relay_attempt"),
            "three firings inside one /64 ban it"
        );
        // A session of any address of the /64 ending makes the ban due.
        tally.session_ended(&cfg, "2001:db8::99".parse().expect("ip"), now);
        assert_eq!(tally.next_due(), Some(now + cfg.grace));
    }

    #[test]
    fn counts_age_out_after_the_window() {
        let cfg = AutobanConfig {
            window: Duration::from_secs(60),
            ..config(&[("relay_attempt", 2)], 100)
        };
        let mut tally = Tally::default();
        let t0 = Instant::now();
        let e = event(1, Check::RelayAttempt, Action::Score);
        tally.fired(&cfg, &e, t0);
        tally.fired(&cfg, &e, t0 + Duration::from_secs(60));
        assert!(tally.pending.is_empty(), "the first firing aged out");
        tally.fired(&cfg, &e, t0 + Duration::from_secs(119));
        assert_eq!(pending_check(&tally, "198.18.0.1"), Some("relay_attempt"));
    }

    #[test]
    fn a_full_table_of_decided_bans_writes_them_instead_of_forgetting_them() {
        let cfg = config(&[("pregreet", 1)], 3);
        let mut tally = Tally::default();
        let now = Instant::now();
        for last in 10..13 {
            tally.fired(&cfg, &event(last, Check::Pregreet, Action::Drop), now);
        }
        assert_eq!(tally.pending.len(), 3, "bounded, nothing forgotten");
        let due = tally.take_due(Some(now), cfg.ttl);
        let mut written: Vec<String> = due.iter().map(|b| b.target.to_string()).collect();
        written.sort();
        assert_eq!(written, ["198.18.0.10", "198.18.0.11", "198.18.0.12"]);
    }

    #[test]
    fn counts_stay_bounded_under_a_flood_of_distinct_sources() {
        let cfg = config(&[("relay_attempt", 5)], 8);
        let mut tally = Tally::default();
        let now = Instant::now();
        for last in 0..=255 {
            tally.fired(&cfg, &event(last, Check::RelayAttempt, Action::Score), now);
            assert!(tally.counts.len() <= 8, "{} counts", tally.counts.len());
        }
    }

    /// A writer standing for a data plane whose lock is held: each batch waits for a go, then
    /// is recorded as written.
    #[derive(Clone)]
    struct BlockedWriter {
        /// One message per batch allowed through.
        go: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
        /// Every ban written.
        written: Arc<std::sync::Mutex<Vec<Ban>>>,
    }

    impl BlockedWriter {
        fn write(&self, bans: Vec<Ban>) -> Vec<(Ban, Written)> {
            if let Ok(go) = self.go.lock() {
                let _ = go.recv();
            }
            if let Ok(mut written) = self.written.lock() {
                written.extend(bans.iter().copied());
            }
            bans.into_iter().map(|b| (b, Written::Banned)).collect()
        }
    }

    /// The auto-ban loop running on a [`BlockedWriter`], with every channel a test drives it by.
    struct Running {
        /// Reloads.
        config: watch::Sender<AutobanConfig>,
        /// Check firings.
        events: crate::events::EventSender,
        /// Session ends.
        ends: crate::events::EndSender,
        /// Stops the loop.
        stop: watch::Sender<bool>,
        /// Lets one blocked write through per message.
        go: std::sync::mpsc::Sender<()>,
        /// Every ban written.
        written: Arc<std::sync::Mutex<Vec<Ban>>>,
        /// The loop; returns how many bans it wrote.
        task: tokio::task::JoinHandle<u64>,
    }

    impl Running {
        /// Starts the loop with `cfg`; every write waits for a go.
        fn start(cfg: AutobanConfig) -> Self {
            Self::start_with(cfg, None)
        }

        /// [`start`](Self::start) with a state store.
        fn start_with(cfg: AutobanConfig, store: Option<Store>) -> Self {
            let (config, config_rx) = watch::channel(cfg);
            let (events, events_rx) = crate::events::channel();
            let (ends, ends_rx) = crate::events::ends_channel(0);
            let (stop, stop_rx) = watch::channel(false);
            let (go, go_rx) = std::sync::mpsc::channel();
            let writer = BlockedWriter {
                go: Arc::new(std::sync::Mutex::new(go_rx)),
                written: Arc::default(),
            };
            let written = writer.written.clone();
            let task = tokio::spawn(serve(
                config_rx,
                move |bans| writer.write(bans),
                events_rx,
                ends_rx,
                Arc::new(Metrics::new()),
                store,
                stop_rx,
            ));
            Self {
                config,
                events,
                ends,
                stop,
                go,
                written,
                task,
            }
        }

        /// Lets writes through until `count` bans are written.
        async fn until_written(&self, what: &str, count: usize) {
            let all = |w: &Arc<std::sync::Mutex<Vec<Ban>>>| w.lock().map(|w| w.len()).unwrap_or(0);
            until(what, || {
                let _ = self.go.send(());
                all(&self.written) == count
            })
            .await;
        }

        /// Stops the loop; how many bans it wrote.
        async fn stop(self) -> u64 {
            let _ = self.stop.send(true);
            drop(self.go);
            self.task.await.expect("auto-ban task")
        }
    }

    /// Waits (yielding) until `done` holds, for at most 10 s.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_data_plane_never_loses_ban_decisions() {
        let offenders = crate::events::EVENT_BUFFER + 1000;
        let cfg = AutobanConfig {
            grace: Duration::ZERO,
            ..config(&[("pregreet", 1)], offenders * 2)
        };
        let run = Running::start(cfg);
        let offend = |i: usize| {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0xC612_0000 + i as u32));
            let _ = run.events.send(Event {
                source,
                check: Check::Pregreet,
                action: Action::Drop,
                detail: String::new(),
                permanent: true,
            });
            let _ = run.ends.send(SessionEnd {
                source,
                verdict: crate::events::SessionVerdict::Dropped,
                delivered: 0,
                checks: vec!["pregreet"],
            });
        };
        // The first ban's write blocks (the lock is held elsewhere)...
        offend(0);
        until("the first event to be read", || {
            run.events.is_empty() && run.ends.is_empty()
        })
        .await;
        // ...while more offenders than the event buffer holds keep coming; the loop reads them.
        for chunk in (1..offenders).collect::<Vec<_>>().chunks(500) {
            for &i in chunk {
                offend(i);
            }
            until(
                "the loop to read the events while the write is blocked",
                || run.events.is_empty() && run.ends.is_empty(),
            )
            .await;
        }
        // The lock is free again: every decided ban is written.
        run.until_written("every ban to be written", offenders)
            .await;
        assert_eq!(run.stop().await, offenders as u64);
    }

    /// Two gateways of a fleet on one real Redis, each with its own loop: a bot that fails once
    /// on A and once on B (two firings needed) is banned by B, whose firing completed the
    /// fleet's count; A, with one firing, bans nothing; the shared count then starts over.
    /// B's session end is sent with its firing, so it may be read before the store's answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bot_rotating_between_gateways_is_counted_once_across_the_fleet() {
        let dir = std::env::temp_dir().join(format!("sgw-ab-fleet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let redis = crate::store::test_redis::RedisServer::start(&dir);
        let node = |name: &str| {
            let cfg = crate::store::StoreConfig {
                engine: crate::store::EngineKind::Redis,
                redis_url: redis.url(),
                key_prefix: "ab:".into(),
                node: name.into(),
                io_timeout: Duration::from_secs(2),
                ..crate::store::StoreConfig::default()
            };
            crate::store::Opened::open(&cfg)
                .expect("open")
                .expect("redis")
                .start(Arc::new(Metrics::new()))
                .expect("start")
        };
        let (store_a, writer_a) = node("node-a");
        let (store_b, writer_b) = node("node-b");
        let (stop_writers, stop_rx) = watch::channel(false);
        let writers = [
            tokio::spawn(writer_a.run(stop_rx.clone())),
            tokio::spawn(writer_b.run(stop_rx)),
        ];
        let cfg = AutobanConfig {
            grace: Duration::ZERO,
            ..config(&[("pregreet", 2)], 100)
        };
        let a = Running::start_with(cfg.clone(), Some(store_a));
        let b = Running::start_with(cfg, Some(store_b));
        let bot = event(9, Check::Pregreet, Action::Drop);
        let end = || SessionEnd {
            source: bot.source,
            verdict: crate::events::SessionVerdict::Dropped,
            delivered: 0,
            checks: vec!["pregreet"],
        };
        let key = "ab:fcount/198.18.0.9#pregreet";
        let _ = a.events.send(bot.clone());
        let _ = a.ends.send(end());
        until("A's firing to reach the fleet's count", || {
            redis.cli(&["GET", key]) == "1"
        })
        .await;
        let _ = b.events.send(bot.clone());
        let _ = b.ends.send(end());
        b.until_written("B to ban the bot", 1).await;
        let banned = b.written.lock().map(|w| w.clone()).unwrap_or_default();
        assert_eq!(banned.len(), 1);
        assert_eq!(
            banned[0].target,
            "198.18.0.9".parse::<Target>().expect("target")
        );
        assert_eq!(banned[0].check, "pregreet");
        until("the fleet's count to start over", || {
            redis.cli(&["EXISTS", key]) == "0"
        })
        .await;
        assert_eq!(a.stop().await, 0, "A saw one firing: no ban of its own");
        assert_eq!(b.stop().await, 1);
        let _ = stop_writers.send(true);
        for w in writers {
            w.await.expect("writer");
        }
        drop(redis);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_below_the_waiting_bans_writes_them() {
        let run = Running::start(config(&[("pregreet", 1)], 10));
        // Two bans wait for sessions that have not ended...
        for last in 1..=2 {
            let _ = run.events.send(event(last, Check::Pregreet, Action::Drop));
        }
        until("the events to be read", || run.events.is_empty()).await;
        // ...when a reload makes the table smaller than that: they are written, not stuck.
        run.config.send_modify(|c| c.track_sources = 1);
        run.until_written("both bans to be written", 2).await;
        assert_eq!(run.stop().await, 2);
    }

    #[test]
    fn an_end_read_before_its_sessions_events_still_makes_the_ban_due() {
        // The race CI once lost: the loop polled the (empty) event channel, the session then sent
        // its event and its end, and the loop's next branch read the end first.
        let cfg = AutobanConfig {
            grace: Duration::ZERO,
            ..config(&[("pregreet", 1)], 10)
        };
        let (events, mut events_rx) = crate::events::channel();
        events
            .send(event(1, Check::Pregreet, Action::Drop))
            .expect("a receiver");
        let mut tally = Tally::default();
        let now = Instant::now();
        end_session(
            &mut tally,
            &cfg,
            &mut events_rx,
            IpAddr::from([198, 18, 0, 1]),
            now,
        );
        assert_eq!(
            tally.next_due(),
            Some(now),
            "the ban is due at the session's end"
        );
        assert!(events_rx.is_empty(), "the event was read with the end");
    }

    #[test]
    fn a_check_that_only_scored_never_bans() {
        // Issue 10 section 1.3: a score-action check leads at most to a 4xx; that never bans.
        let config = AutobanConfig {
            checks: [("helo_dynamic".to_string(), 1)].into_iter().collect(),
            ..AutobanConfig::default()
        };
        let mut tally = Tally::default();
        let mut scored = event(1, Check::HeloDynamic, Action::Score);
        scored.permanent = false;
        tally.fired(&config, &scored, Instant::now());
        assert!(tally.pending.is_empty(), "a scored check is not a refusal");
    }

    /// A started embedded store in a temp dir, its writer running.
    fn store_in(dir: &std::path::Path) -> (Store, watch::Sender<bool>, JoinHandle<usize>) {
        let cfg = crate::store::StoreConfig {
            path: dir.join("state.redb"),
            ..crate::store::StoreConfig::default()
        };
        let (store, writer) = crate::store::Opened::open(&cfg)
            .expect("open")
            .expect("embedded")
            .start(Arc::new(Metrics::new()))
            .expect("start");
        let (stop, stop_rx) = watch::channel(false);
        (store, stop, tokio::spawn(writer.run(stop_rx)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_and_waiting_bans_survive_a_restart_through_the_store() {
        let dir = std::env::temp_dir().join(format!("sgw-ab-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = config(&[("relay_attempt", 3), ("pregreet", 1)], 100);
        let now = Instant::now();
        {
            let (store, stop, writer) = store_in(&dir);
            let mut tally = Tally::default();
            for e in [
                event(1, Check::RelayAttempt, Action::Score),
                event(1, Check::RelayAttempt, Action::Score),
                event(2, Check::Pregreet, Action::Drop),
                event(3, Check::Pregreet, Action::Drop),
            ] {
                if let Some(change) = tally.fired(&cfg, &e, now) {
                    persist(&store, &cfg, change, now);
                }
            }
            // .3's ban was written: it no longer waits, and is stored as a ban record.
            let ban = Ban {
                source: IpAddr::from([198, 18, 0, 3]),
                target: "198.18.0.3".parse().expect("target"),
                check: "pregreet",
                ttl: cfg.ttl,
            };
            persist_written(&store, &[(ban, Written::Banned)]);
            // Hostile entries written behind auto-ban's back are skipped on load.
            let junk = CountRecord {
                n: 1,
                since_unix_ms: unix_now_ms(),
            };
            for id in [
                "not-a-target#pregreet",
                "198.18.0.9#no_such_check",
                "no-separator",
            ] {
                store.put(Space::Count, id, &junk, Duration::from_secs(60));
            }
            store.put(
                Space::Pending,
                "198.18.0.8",
                &"garbage",
                Duration::from_secs(60),
            );
            // Waiting bans that are none of this gateway's: half the Internet and loopback (no
            // auto-ban covers more than one address here), one whose target is not its source's,
            // one of another node. Each was written to the kernel as this node's own auto-ban,
            // past every limit the fleet's records get.
            let hostile = |target: &str, source: Option<&str>, node: &str| BanRecord {
                target: target.into(),
                source: source.map(str::to_string),
                reason: "autoban: pregreet".into(),
                origin: "autoban".into(),
                node: node.into(),
                added_unix_ms: unix_now_ms(),
                expires_unix_ms: None,
            };
            let me = store.node().to_string();
            for (target, source, node) in [
                ("0.0.0.0/1", None, me.as_str()),
                ("128.0.0.0/1", Some("128.0.0.1"), me.as_str()),
                ("127.0.0.0/8", None, me.as_str()),
                ("198.18.0.20", Some("198.18.0.21"), me.as_str()),
                ("198.18.0.22", Some("198.18.0.22"), "another-node"),
            ] {
                let record = hostile(target, source, node);
                store.put(Space::Pending, target, &record, Duration::from_secs(60));
            }
            drop(store);
            let _ = stop.send(true);
            assert_eq!(writer.await.expect("writer"), 0, "every write flushed");
        }
        let (store, stop, writer) = store_in(&dir);
        let mut tally = Tally::default();
        assert_eq!(restore(&mut tally, &store, &cfg).await, (1, 1));
        let relay = (
            "198.18.0.1".parse::<Target>().expect("target"),
            Check::RelayAttempt,
        );
        assert_eq!(tally.counts.get(&relay).map(|c| c.n), Some(2));
        assert_eq!(pending_check(&tally, "198.18.0.2"), Some("pregreet"));
        assert!(
            tally.next_due().is_some(),
            "a waiting ban is due at once after a restart"
        );
        // The third relay attempt after the restart decides the ban.
        tally.fired(
            &cfg,
            &event(1, Check::RelayAttempt, Action::Score),
            Instant::now(),
        );
        assert_eq!(pending_check(&tally, "198.18.0.1"), Some("relay_attempt"));
        let record = store
            .get::<BanRecord>(Space::Ban, "198.18.0.3")
            .await
            .expect("get")
            .expect("the written ban is stored");
        assert_eq!(
            (record.origin.as_str(), record.reason.as_str()),
            ("autoban", "autoban: pregreet")
        );
        assert_eq!(record.node, store.node());
        drop(store);
        let _ = stop.send(true);
        let _ = writer.await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bans_cover_the_configured_prefix() {
        let cases = [
            ("198.18.0.7", 32, 64, "198.18.0.7"),
            ("198.18.0.7", 24, 64, "198.18.0.0/24"),
            ("2001:db8::7", 32, 64, "2001:db8::/64"),
            ("2001:db8::7", 32, 128, "2001:db8::7"),
            ("2001:db8:1:2:3:4:5:6", 32, 48, "2001:db8:1::/48"),
        ];
        for (source, v4, v6, want) in cases {
            let got = ban_target(source.parse().unwrap(), v4, v6);
            assert_eq!(got.to_string(), want, "{source} /{v4} /{v6}");
        }
    }

    #[test]
    fn durations_and_counts_are_bounded() {
        for (cfg, key) in [
            (
                AutobanConfig {
                    window: MAX_WINDOW + Duration::from_secs(1),
                    ..AutobanConfig::default()
                },
                "autoban.window",
            ),
            (
                AutobanConfig {
                    ttl: MAX_TTL + Duration::from_secs(1),
                    ..AutobanConfig::default()
                },
                "autoban.ttl",
            ),
            (
                config(&[("relay_attempt", MAX_FIRINGS + 1)], 10),
                "autoban.checks.relay_attempt",
            ),
            (
                config(&[("relay_attempt", 1)], MAX_TRACK_SOURCES + 1),
                "autoban.track_sources",
            ),
        ] {
            let err = cfg.validate().expect_err(key);
            assert_eq!(err.key, key);
            assert!(err.reason.starts_with("must be at most"), "{err}");
        }
    }

    #[test]
    fn prefix_lengths_are_validated() {
        for (v4, v6, ok) in [
            (32, 64, true),
            (7, 64, false),
            (32, 31, false),
            (33, 64, false),
        ] {
            let cfg = AutobanConfig {
                ipv4_prefix: v4,
                ipv6_prefix: v6,
                ..AutobanConfig::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "/{v4} /{v6}");
        }
    }
}

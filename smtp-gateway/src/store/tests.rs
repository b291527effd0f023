//! The [`Store`] interface over both engines: typed values round trip, hostile values are typed
//! errors, entries expire, the writer keeps what a store that is down refused and writes it when
//! the store returns. The Redis tests run a private `redis-server` on a unix socket in a temp
//! directory, stopped by PID.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{test_redis::RedisServer, *};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Probe {
    n: u32,
    text: String,
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgw-storet-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The embedded engine's tests judge what it stores, not how fast: each commit syncs the file to
/// disk, and on a machine busy writing (a build beside the tests) one took longer than the
/// default `io_timeout` of 2 s, failing a counter test with a timeout (a session's `budget` of
/// 50 ms is shorter still). Timeouts have tests of their own.
fn embedded_config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("state.redb"),
        io_timeout: super::config::MAX_IO_TIMEOUT,
        budget: super::config::MAX_BUDGET,
        ..StoreConfig::default()
    }
}

fn redis_config(url: String) -> StoreConfig {
    StoreConfig {
        engine: EngineKind::Redis,
        redis_url: url,
        key_prefix: "t:".into(),
        node: "node-a".into(),
        retry_interval: Duration::from_millis(50),
        io_timeout: Duration::from_millis(500),
        budget: Duration::from_millis(500),
        ..StoreConfig::default()
    }
}

/// A started store, its writer running.
struct Running {
    store: Store,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    writer: tokio::task::JoinHandle<usize>,
}

impl Running {
    fn start(cfg: &StoreConfig) -> Self {
        let metrics = Arc::new(Metrics::new());
        let (store, writer) = Opened::open(cfg)
            .expect("open")
            .expect("an engine")
            .start(metrics.clone())
            .expect("start");
        let (stop, stop_rx) = watch::channel(false);
        let writer = tokio::spawn(writer.run(stop_rx));
        Self {
            store,
            metrics,
            stop,
            writer,
        }
    }

    /// Waits (bounded) until the writer had a write refused (the store is down).
    async fn until_a_write_is_refused(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.metrics.store_count("write", "error")
            + self.metrics.store_count("write", "timeout")
            == 0
        {
            assert!(Instant::now() < deadline, "no write was refused");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> usize {
        let _ = self.stop.send(true);
        self.writer.await.expect("writer")
    }

    /// Waits (bounded) until `id` in `space` reads back as `want`.
    async fn until_reads<T>(&self, space: Space, id: &str, want: Option<T>)
    where
        T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.store.get::<T>(space, id).await;
            if matches!(&got, Ok(v) if *v == want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{space:?}/{id}: {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn probe(n: u32) -> Probe {
    Probe {
        n,
        text: "x".into(),
    }
}

async fn round_trip_and_expiry(run: &Running) {
    run.store.put(
        Space::Pass,
        "198.18.0.1",
        &probe(1),
        Duration::from_secs(60),
    );
    run.store.put(
        Space::Pass,
        "198.18.0.2",
        &probe(2),
        Duration::from_millis(300),
    );
    run.until_reads(Space::Pass, "198.18.0.1", Some(probe(1)))
        .await;
    run.until_reads(Space::Pass, "198.18.0.2", Some(probe(2)))
        .await;
    // The short one expires; the long one stays.
    run.until_reads::<Probe>(Space::Pass, "198.18.0.2", None)
        .await;
    assert_eq!(
        run.store
            .get::<Probe>(Space::Pass, "198.18.0.1")
            .await
            .expect("get"),
        Some(probe(1))
    );
    let loaded: Vec<(String, Probe)> = run.store.load(Space::Pass).await.expect("load");
    assert_eq!(loaded, vec![("198.18.0.1".to_string(), probe(1))]);
    run.store.delete(Space::Pass, "198.18.0.1");
    run.until_reads::<Probe>(Space::Pass, "198.18.0.1", None)
        .await;
    // Another space under the same id is another entry.
    run.store.put(
        Space::Count,
        "198.18.0.1",
        &probe(3),
        Duration::from_secs(60),
    );
    run.until_reads(Space::Count, "198.18.0.1", Some(probe(3)))
        .await;
    assert_eq!(
        run.store
            .get::<Probe>(Space::Pass, "198.18.0.1")
            .await
            .expect("get"),
        None
    );
}

async fn hostile_values(run: &Running) {
    // Garbage and a value of another type: decode errors, counted, never a panic.
    run.store.put(
        Space::Outcome,
        "garbage",
        &"not a probe",
        Duration::from_secs(60),
    );
    run.store.put(
        Space::Outcome,
        "big",
        &"y".repeat(20_000),
        Duration::from_secs(60),
    );
    run.store
        .put(Space::Outcome, "good", &probe(7), Duration::from_secs(60));
    run.until_reads(Space::Outcome, "good", Some(probe(7)))
        .await;
    match run.store.get::<Probe>(Space::Outcome, "garbage").await {
        Err(StoreError::Decode { key, .. }) => assert_eq!(key, "outcome/garbage"),
        other => panic!("garbage: {other:?}"),
    }
    match run.store.get::<Probe>(Space::Outcome, "big").await {
        Err(StoreError::TooLarge { max, .. }) => assert_eq!(max, 16 << 10),
        other => panic!("big: {other:?}"),
    }
    assert!(run.metrics.store_count("get", "error") >= 2);
    // A load skips what does not decode and keeps the rest.
    let loaded: Vec<(String, Probe)> = run.store.load(Space::Outcome).await.expect("load");
    assert_eq!(loaded, vec![("good".to_string(), probe(7))]);
}

/// Counters: concurrent increments from several handles add up exactly, the window starts at
/// the first increment and is not renewed, an expired counter starts over, a renewed counter
/// lives from its last increment, and a value that is not a counter is an error (counted), never
/// a panic.
async fn counters(run: &Running, other: &Store) {
    // Long enough for the 40 increments below to land inside it on a busy machine (each is a
    // commit synced to disk on the embedded engine).
    let window = Duration::from_secs(5);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = if i % 2 == 0 {
            run.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .incr(Space::FleetCount, "198.18.0.0/24#pregreet", window)
                .await
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("task").expect("incr"));
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=40).collect::<Vec<u64>>(),
        "each increment is counted once"
    );
    // Not renewed: once the first increment's window is over, the count starts again.
    let started = Instant::now();
    loop {
        let n = run
            .store
            .incr(Space::FleetCount, "198.18.0.0/24#pregreet", window)
            .await
            .expect("incr");
        if n == 1 {
            break;
        }
        assert!(
            started.elapsed() < window * 4,
            "the counter never expired (at {n}): increments renew its window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Renewed (greylisting's auto-allowlist): each increment sets the life again, here from an
    // hour down to 300 ms, so the counter goes within the bound (an hour if it were kept).
    let renewed = "198.18.9.0/24";
    for (ttl, n) in [
        (Duration::from_secs(3600), 1),
        (Duration::from_millis(300), 2),
    ] {
        assert_eq!(
            run.store
                .incr_renewed(Space::GreyAllow, renewed, ttl)
                .await
                .expect("incr"),
            n
        );
    }
    let started = Instant::now();
    while run
        .store
        .counter(Space::GreyAllow, renewed)
        .await
        .expect("read")
        .is_some()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the renewed counter kept its first life"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another id is another counter.
    assert_eq!(
        run.store
            .incr(Space::FleetCount, "2001:db8::/64#pregreet", window)
            .await
            .expect("incr"),
        1
    );
    // Something else under a counter's key: an error, counted.
    run.store.put(
        Space::FleetCount,
        "junk",
        &probe(1),
        Duration::from_secs(60),
    );
    run.until_reads(Space::FleetCount, "junk", Some(probe(1)))
        .await;
    let errors = run.metrics.store_count("incr", "error");
    assert!(
        run.store
            .incr(Space::FleetCount, "junk", window)
            .await
            .is_err()
    );
    assert_eq!(run.metrics.store_count("incr", "error"), errors + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_counters_add_up_and_age_out() {
    let dir = temp_dir("emb-incr");
    let run = Running::start(&embedded_config(&dir));
    let other = run.store.clone();
    counters(&run, &other).await;
    assert_eq!(run.stop().await, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_counters_add_up_across_gateways_and_age_out() {
    let dir = temp_dir("redis-incr");
    let server = RedisServer::start(&dir);
    let run = Running::start(&redis_config(server.url()));
    // A second gateway on the same Redis.
    let other = Running::start(&StoreConfig {
        node: "node-b".into(),
        ..redis_config(server.url())
    });
    counters(&run, &other.store).await;
    let ttl: i64 = server
        .cli(&["PTTL", "t:fcount/2001:db8::/64#pregreet"])
        .parse()
        .expect("PTTL");
    assert!((1..=5_000).contains(&ttl), "PTTL {ttl}");
    assert_eq!(other.stop().await, 0);
    assert_eq!(run.stop().await, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_round_trips_expires_and_refuses_hostile_values() {
    let dir = temp_dir("emb");
    let run = Running::start(&embedded_config(&dir));
    round_trip_and_expiry(&run).await;
    hostile_values(&run).await;
    assert_eq!(run.stop().await, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_entries_survive_a_reopen() {
    let dir = temp_dir("reopen");
    let cfg = embedded_config(&dir);
    let run = Running::start(&cfg);
    run.store.put(
        Space::Pending,
        "198.18.0.9",
        &probe(9),
        Duration::from_secs(60),
    );
    // Stopping flushes the queue.
    assert_eq!(run.stop().await, 0);
    let run = Running::start(&cfg);
    assert_eq!(
        run.store
            .get::<Probe>(Space::Pending, "198.18.0.9")
            .await
            .expect("get"),
        Some(probe(9))
    );
    run.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_round_trips_expires_and_refuses_hostile_values() {
    let dir = temp_dir("redis");
    let server = RedisServer::start(&dir);
    let run = Running::start(&redis_config(server.url()));
    round_trip_and_expiry(&run).await;
    hostile_values(&run).await;
    // Native expiry and the prefix, seen from redis-cli.
    run.store.put(
        Space::Ban,
        "198.18.0.5",
        &probe(5),
        Duration::from_secs(100),
    );
    run.until_reads(Space::Ban, "198.18.0.5", Some(probe(5)))
        .await;
    let ttl: i64 = server
        .cli(&["PTTL", "t:ban/198.18.0.5"])
        .parse()
        .expect("PTTL");
    assert!((1..=100_000).contains(&ttl), "PTTL {ttl}");
    // A load tells what Redis says is left of each entry (the fleet's one clock).
    let loaded = run
        .store
        .load_with_life::<Probe>(Space::Ban)
        .await
        .expect("load");
    let left = loaded
        .iter()
        .find(|l| l.id == "198.18.0.5")
        .and_then(|l| l.left)
        .expect("a life");
    assert!(
        left > Duration::ZERO && left <= Duration::from_secs(100),
        "{left:?}"
    );
    // A value written behind our back, over the limit: never transferred whole.
    server.cli(&["SET", "t:ban/huge", &"z".repeat(100_000)]);
    assert!(matches!(
        run.store.get::<Probe>(Space::Ban, "huge").await,
        Err(StoreError::TooLarge { len, .. }) if len == (16 << 10) + 1
    ));
    assert_eq!(run.stop().await, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// One key of another type in a space (a list, a hash) is skipped by a load; the other entries
/// are loaded (the whole GETRANGE pipeline failed on its WRONGTYPE reply, and every entry of the
/// space was lost: at start, and on every fleet reconcile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_key_of_another_type_is_skipped_by_a_load_not_fatal() {
    let dir = temp_dir("redis-wrongtype");
    let server = RedisServer::start(&dir);
    let run = Running::start(&redis_config(server.url()));
    for n in 1..=3 {
        run.store.put(
            Space::Ban,
            &format!("198.18.0.{n}"),
            &probe(n),
            Duration::from_secs(100),
        );
    }
    run.until_reads(Space::Ban, "198.18.0.3", Some(probe(3)))
        .await;
    server.cli(&["RPUSH", "t:ban/zzz", "a", "b"]);
    server.cli(&["HSET", "t:ban/aaa", "a", "b"]);
    let mut loaded: Vec<(String, Probe)> = run.store.load(Space::Ban).await.expect("load");
    loaded.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, Probe)> = (1..=3)
        .map(|n| (format!("198.18.0.{n}"), probe(n)))
        .collect();
    assert_eq!(loaded, want);
    assert_eq!(run.metrics.store_count("decode", "error"), 2, "counted");
    assert_eq!(run.stop().await, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// A load is bounded by `store.io_timeout` per round of keys, not as a whole: a space larger
/// than what one io_timeout reads (a fleet's bans over a distant Redis) timed out on every
/// reconcile and at every start, and was never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_longer_than_io_timeout_is_read_while_each_round_answers_within_it() {
    const ENTRIES: u32 = 400_000;
    let dir = temp_dir("redis-long-load");
    let server = RedisServer::start(&dir);
    let cfg = StoreConfig {
        // A round takes a few milliseconds; the whole load, seconds.
        io_timeout: Duration::from_millis(500),
        load_limit: 1_000_000,
        ..redis_config(server.url())
    };
    let run = Running::start(&cfg);
    run.store
        .put(Space::Ban, "0", &probe(0), Duration::from_secs(100));
    run.until_reads(Space::Ban, "0", Some(probe(0))).await;
    // The rest as the store wrote the first, in one server-side loop (fast to make, as slow to
    // read back as any).
    let stored = server.cli(&["GET", "t:ban/0"]);
    let script = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 't:ban/' .. i, ARGV[2]) end";
    server.cli(&["EVAL", script, "0", &ENTRIES.to_string(), &stored]);
    assert_eq!(server.cli(&["DBSIZE"]), (ENTRIES + 1).to_string());
    let started = Instant::now();
    let loaded: Vec<(String, Probe)> = run.store.load(Space::Ban).await.expect("load");
    let took = started.elapsed();
    assert_eq!(loaded.len(), ENTRIES as usize + 1);
    assert!(loaded.iter().all(|(_, p)| *p == probe(0)));
    // The point of the test: the whole load took longer than one io_timeout.
    assert!(
        took > cfg.io_timeout,
        "{took:?}: too few entries to test it"
    );
    assert_eq!(run.stop().await, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_while_redis_is_down_reach_it_when_it_returns() {
    let dir = temp_dir("redis-down");
    let mut server = RedisServer::start(&dir);
    let run = Running::start(&redis_config(server.url()));
    run.store
        .put(Space::Pass, "before", &probe(1), Duration::from_secs(60));
    run.until_reads(Space::Pass, "before", Some(probe(1))).await;
    server.stop();
    // Down: a read fails within the budget (never hangs), writes are kept.
    let started = Instant::now();
    assert!(run.store.get::<Probe>(Space::Pass, "before").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    run.store.put(
        Space::Pass,
        "while-down",
        &probe(2),
        Duration::from_secs(60),
    );
    run.until_a_write_is_refused().await;
    // Back (empty: no persistence): the kept write arrives.
    let server = RedisServer::start(&dir);
    run.until_reads(Space::Pass, "while-down", Some(probe(2)))
        .await;
    assert_eq!(server.cli(&["EXISTS", "t:pass/while-down"]), "1");
    assert_eq!(run.stop().await, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_and_counts_it() {
    let dir = temp_dir("overflow");
    let mut server = RedisServer::start(&dir);
    let cfg = StoreConfig {
        queue: 4,
        ..redis_config(server.url())
    };
    let run = Running::start(&cfg);
    server.stop();
    for i in 0..20 {
        run.store.put(
            Space::Pass,
            &format!("k{i}"),
            &probe(i),
            Duration::from_secs(60),
        );
    }
    run.until_a_write_is_refused().await;
    let lost = run.stop().await;
    assert!(lost <= 4, "bounded: {lost}");
    let _ = std::fs::remove_dir_all(dir);
    drop(server);
}

/// A full queue drops its oldest writes, as `store.queue` says, not the newest: the newest
/// `queue` writes made while Redis is down reach it when it returns, the older ones never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_keeps_the_newest_writes_for_a_store_that_returns() {
    let dir = temp_dir("overflow-newest");
    let mut server = RedisServer::start(&dir);
    let cfg = StoreConfig {
        queue: 4,
        ..redis_config(server.url())
    };
    let run = Running::start(&cfg);
    server.stop();
    for i in 0..20 {
        run.store.put(
            Space::Pass,
            &format!("k{i}"),
            &probe(i),
            Duration::from_secs(60),
        );
    }
    run.until_a_write_is_refused().await;
    assert!(
        run.metrics.store_queue_overflows() >= 16,
        "dropped and counted"
    );
    let server = RedisServer::start(&dir);
    for i in 16..20 {
        run.until_reads(Space::Pass, &format!("k{i}"), Some(probe(i)))
            .await;
    }
    for i in 0..16 {
        assert_eq!(
            server.cli(&["EXISTS", &format!("t:pass/k{i}")]),
            "0",
            "k{i} is older than the newest 4"
        );
    }
    assert_eq!(run.stop().await, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// A scan that keeps completing rounds runs as long as it needs; one that stops completing them
/// is a timeout one round timeout after its last round (either engine: the embedded one counts
/// rounds too). The runtime's clock is paused: each sleep is an event, not a wait.
#[tokio::test(start_paused = true)]
async fn a_scan_is_timed_per_round_not_as_a_whole() {
    let round = Duration::from_millis(100);
    let moving = ScanProgress::default();
    let rounds = {
        let progress = moving.clone();
        async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                progress.round_done();
            }
            Ok::<_, StoreError>(20)
        }
    };
    let started = tokio::time::Instant::now();
    assert_eq!(
        moving.await_while_moving(rounds, round).await.ok(),
        Some(20)
    );
    assert!(started.elapsed() >= Duration::from_millis(1200));

    let stuck = ScanProgress::default();
    let stalls = {
        let progress = stuck.clone();
        async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                progress.round_done();
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, StoreError>(3)
        }
    };
    let started = tokio::time::Instant::now();
    let result = stuck.await_while_moving(stalls, round).await;
    assert!(
        matches!(result, Err(StoreError::Timeout(t)) if t == round),
        "{result:?}"
    );
    // Stopped within two round timeouts of the last round (at 180 ms), not after the hour.
    assert!(started.elapsed() <= Duration::from_millis(180) + 2 * round);
}

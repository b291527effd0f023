//! Greylisting's verdicts over time, the auto-allowlist, the bound of the local table, a store
//! shared by two gateways, and a store that does not answer.

use std::{net::IpAddr, sync::Arc, time::Duration};

use super::*;
use crate::store::{EngineKind, Opened, StoreConfig};

const S: u64 = 1_000;

fn config() -> GreylistConfig {
    GreylistConfig {
        enabled: true,
        delay: Duration::from_secs(60),
        retry_window: Duration::from_secs(3_600),
        pass_ttl: Duration::from_secs(86_400),
        auto_allowlist_after: 3,
        ..GreylistConfig::default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn started(cfg: &StoreConfig) -> (Store, tokio::sync::watch::Sender<bool>) {
    let (store, writer) = Opened::open(cfg)
        .expect("open")
        .expect("an engine")
        .start(Arc::new(crate::metrics::Metrics::new()))
        .expect("start");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(writer.run(stop_rx));
    (store, stop)
}

#[tokio::test]
async fn first_sight_defers_a_retry_after_the_delay_passes() {
    let g = Greylist::new(100);
    let c = config();
    let t0 = 1_000_000 * S;
    let check = |now, from: &'static str, to: &'static str, client: &'static str| {
        let (g, c) = (&g, &c);
        async move { g.check_at(c, ip(client), from, to, now).await }
    };
    assert_eq!(
        check(t0, "a@x.example", "r@y.example", "198.18.0.1").await,
        Verdict::Deferred
    );
    assert_eq!(
        check(t0 + 59 * S, "a@x.example", "r@y.example", "198.18.0.1").await,
        Verdict::Deferred,
        "too early"
    );
    // Another host of the same /24, and the sender's tag changed: the same triplet.
    assert_eq!(
        check(t0 + 60 * S, "a+7@X.example", "r@y.example", "198.18.0.99").await,
        Verdict::Passed
    );
    // It keeps passing, long after the retry window.
    assert_eq!(
        check(t0 + 7_200 * S, "a@x.example", "r@y.example", "198.18.0.1").await,
        Verdict::Passed
    );
    // Another recipient, sender or network is another triplet.
    assert_eq!(
        check(t0 + 61 * S, "a@x.example", "s@y.example", "198.18.0.1").await,
        Verdict::Deferred
    );
    assert_eq!(
        check(t0 + 61 * S, "b@x.example", "r@y.example", "198.18.0.1").await,
        Verdict::Deferred
    );
    assert_eq!(
        check(t0 + 61 * S, "a@x.example", "r@y.example", "198.18.1.1").await,
        Verdict::Deferred
    );
    // IPv6 clients are grouped by /64.
    assert_eq!(
        check(t0, "a@x.example", "r@y.example", "2001:db8::1").await,
        Verdict::Deferred
    );
    assert_eq!(
        check(
            t0 + 60 * S,
            "a@x.example",
            "r@y.example",
            "2001:db8::ffff:2"
        )
        .await,
        Verdict::Passed
    );
    assert_eq!(
        check(t0 + 60 * S, "a@x.example", "r@y.example", "2001:db8:0:1::1").await,
        Verdict::Deferred
    );
}

#[tokio::test]
async fn a_retry_after_the_window_starts_over() {
    let g = Greylist::new(100);
    let c = config();
    let t0 = 1_000_000 * S;
    let client = ip("198.18.0.1");
    assert_eq!(
        g.check_at(&c, client, "a@x", "r@y", t0).await,
        Verdict::Deferred
    );
    let late = t0 + (60 + 3_600 + 1) * S;
    assert_eq!(
        g.check_at(&c, client, "a@x", "r@y", late).await,
        Verdict::Deferred,
        "window missed"
    );
    assert_eq!(
        g.check_at(&c, client, "a@x", "r@y", late + 59 * S).await,
        Verdict::Deferred,
        "the delay starts over"
    );
    assert_eq!(
        g.check_at(&c, client, "a@x", "r@y", late + 60 * S).await,
        Verdict::Passed
    );
}

#[tokio::test]
async fn a_network_that_passed_often_enough_is_allowlisted() {
    let g = Greylist::new(100);
    let c = config();
    let t0 = 1_000_000 * S;
    let client = ip("198.18.5.1");
    for n in 0..c.auto_allowlist_after {
        assert_eq!(
            g.check_at(&c, client, "a@x", "new@y", t0 + u64::from(n))
                .await,
            Verdict::Deferred,
            "pass {n}"
        );
        g.record_pass_at(&c, client, t0).await;
    }
    // Any triplet of that network now, from another host of it.
    assert_eq!(
        g.check_at(&c, ip("198.18.5.200"), "z@q", "other@y", t0 + S)
            .await,
        Verdict::Allowlisted
    );
    assert_eq!(
        g.check_at(&c, ip("198.18.6.1"), "z@q", "other@y", t0 + S)
            .await,
        Verdict::Deferred
    );
    // Until the allowlist entry expires.
    let later = t0 + 35 * 86_400 * S + S;
    assert_eq!(
        g.check_at(&c, client, "z@q", "x@y", later).await,
        Verdict::Deferred
    );
    // `0` turns the auto-allowlist off.
    let off = GreylistConfig {
        auto_allowlist_after: 0,
        ..c.clone()
    };
    let h = Greylist::new(100);
    for _ in 0..5 {
        h.record_pass_at(&off, client, t0).await;
    }
    assert_eq!(
        h.check_at(&off, client, "z@q", "x@y", t0).await,
        Verdict::Deferred
    );
}

#[tokio::test]
async fn the_local_table_is_bounded_and_shrinks_on_reload() {
    let g = Greylist::new(10);
    let c = GreylistConfig {
        auto_allowlist_after: 0,
        ..config()
    };
    let t0 = 1_000_000 * S;
    for n in 0..100u64 {
        let to = format!("r{n}@y");
        g.check_at(&c, ip("198.18.0.1"), "a@x", &to, t0 + n).await;
        assert!(g.len() <= 10, "{} entries", g.len());
    }
    // The newest survive.
    assert_eq!(
        g.check_at(&c, ip("198.18.0.1"), "a@x", "r99@y", t0 + 60 * S + 99)
            .await,
        Verdict::Passed
    );
    g.configure(2);
    assert!(g.len() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_to_another_gateway_sharing_the_store_passes() {
    let dir = std::env::temp_dir().join(format!("sgw-grey-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = StoreConfig {
        path: dir.join("state.redb"),
        ..StoreConfig::default()
    };
    let (store, _stop) = started(&cfg);
    let (here, there) = (Greylist::new(100), Greylist::new(100));
    here.attach(store.clone());
    there.attach(store);
    let c = config();
    let now = unix_now_ms();
    let client = ip("198.18.0.1");
    assert_eq!(
        here.check_at(&c, client, "a@x", "r@y", now).await,
        Verdict::Deferred
    );
    // The write is queued: wait (bounded) until the other gateway sees it, never past the delay.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match there
            .fetch::<TripletRecord>(
                Space::Greylist,
                &triplet::triplet_key(&triplet::client_network(client, 24, 64), "a@x", "r@y"),
            )
            .await
        {
            Ok(Some(r)) => {
                assert_eq!(
                    r,
                    TripletRecord {
                        first_unix_ms: now,
                        passed: false
                    }
                );
                break;
            }
            _ => assert!(std::time::Instant::now() < deadline, "never written"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        there.check_at(&c, client, "a@x", "r@y", now + 61 * S).await,
        Verdict::Passed
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_on_gateways_sharing_the_store_add_up_to_the_auto_allowlist() {
    let dir = std::env::temp_dir().join(format!("sgw-grey-count-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = StoreConfig {
        path: dir.join("state.redb"),
        ..StoreConfig::default()
    };
    let (store, _stop) = started(&cfg);
    let (a, b) = (Greylist::new(100), Greylist::new(100));
    a.attach(store.clone());
    b.attach(store.clone());
    let c = config();
    let client = ip("198.18.7.1");
    // Three passes (auto_allowlist_after), alternating between the gateways: each saw at most
    // two, the fleet three.
    a.record_pass(&c, client).await;
    b.record_pass(&c, client).await;
    a.record_pass(&c, client).await;
    for (g, name) in [(&a, "a"), (&b, "b")] {
        assert_eq!(
            g.check(&c, ip("198.18.7.9"), "new@x", "r@y").await,
            Verdict::Allowlisted,
            "gateway {name}"
        );
    }
    assert_eq!(
        store
            .counter(Space::GreyAllow, "198.18.7.0/24")
            .await
            .expect("read"),
        Some(3)
    );
    // A gateway that has not seen the network since asks the store (no local entry).
    let late = Greylist::new(100);
    late.attach(store);
    assert_eq!(
        late.check(&c, client, "z@x", "r@y").await,
        Verdict::Allowlisted
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_answer_fails_open_or_closed_as_configured() {
    let dir = std::env::temp_dir().join(format!("sgw-grey-down-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    for (on_timeout, want) in [
        (OnTimeout::Open, Verdict::StoreOpen),
        (OnTimeout::Closed, Verdict::StoreClosed),
    ] {
        let cfg = StoreConfig {
            engine: EngineKind::Redis,
            redis_url: format!("unix://{}", dir.join("nobody.sock").display()),
            on_timeout,
            budget: Duration::from_millis(50),
            ..StoreConfig::default()
        };
        let (store, _stop) = started(&cfg);
        let g = Greylist::new(100);
        g.attach(store);
        let started = std::time::Instant::now();
        let verdict = g.check(&config(), ip("198.18.0.1"), "a@x", "r@y").await;
        assert_eq!(verdict, want, "{on_timeout:?}");
        assert_eq!(verdict.metric(), "store_error");
        assert_eq!(verdict.defers(), on_timeout == OnTimeout::Closed);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits until the writer has written `id` of `space` (whatever it holds).
async fn written(store: &Store, space: Space, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Ok(None) = store.get::<serde_json::Value>(space, id).await {
        assert!(std::time::Instant::now() < deadline, "{id} never written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A triplet or a network count that does not decode (garbage, too large, a Redis key of another
/// type) counts as unknown, not as a store that is down: with `on_timeout = "closed"` the triplet
/// is deferred once as a new one, its record is overwritten, and a retry after the delay passes
/// (it was 451 for good). Checked with `g`, then with a second gateway that only has the store.
async fn undecodable_records_count_as_unknown(store: &Store, client: &str, to: &str) {
    let c = config();
    let t0 = unix_now_ms();
    let g = Greylist::new(100);
    g.attach(store.clone());
    let first = g.check_at(&c, ip(client), "a@x.example", to, t0).await;
    assert_eq!(first, Verdict::Deferred, "{client} {to}");
    let network = triplet::client_network(ip(client), c.ipv4_prefix, c.ipv6_prefix);
    let key = triplet::triplet_key(&network, "a@x.example", to);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !matches!(
        store.get::<TripletRecord>(Space::Greylist, &key).await,
        Ok(Some(_))
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "{client} {to}: the record was never overwritten"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other = Greylist::new(100);
    other.attach(store.clone());
    let retry = other
        .check_at(&c, ip(client), "a@x.example", to, t0 + 60 * S)
        .await;
    assert_eq!(retry, Verdict::Passed, "{client} {to}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_do_not_decode_are_unknown_not_a_store_down() {
    let dir = std::env::temp_dir().join(format!("sgw-grey-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let c = config();
    let base = StoreConfig {
        on_timeout: OnTimeout::Closed,
        budget: Duration::from_secs(2),
        max_value_bytes: 1024,
        ..StoreConfig::default()
    };
    let triplet_id = |client: &str, to: &str| {
        let network = triplet::client_network(ip(client), c.ipv4_prefix, c.ipv6_prefix);
        triplet::triplet_key(&network, "a@x.example", to)
    };
    let network_id = |client: &str| {
        triplet::client_network(ip(client), c.ipv4_prefix, c.ipv6_prefix).to_string()
    };
    let ttl = Duration::from_secs(600);

    // Embedded: values of another shape, written through the store.
    let cfg = StoreConfig {
        path: dir.join("state.redb"),
        ..base.clone()
    };
    let (store, _stop) = started(&cfg);
    let garbage = triplet_id("198.18.1.1", "r@y.example");
    let big = triplet_id("198.18.2.1", "r@y.example");
    store.put(Space::Greylist, &garbage, &"garbage", ttl);
    store.put(Space::Greylist, &big, &"x".repeat(4096), ttl);
    store.put(Space::GreyAllow, &network_id("198.18.3.1"), &"abc", ttl);
    written(&store, Space::Greylist, &garbage).await;
    written(&store, Space::Greylist, &big).await;
    written(&store, Space::GreyAllow, &network_id("198.18.3.1")).await;
    undecodable_records_count_as_unknown(&store, "198.18.1.1", "r@y.example").await;
    undecodable_records_count_as_unknown(&store, "198.18.2.1", "r@y.example").await;
    undecodable_records_count_as_unknown(&store, "198.18.3.1", "r@y.example").await;

    // Redis: garbage, too large and a hash as triplets; a word, a list and an overflowing
    // number as network counts.
    let redis = crate::store::test_redis::RedisServer::start(&dir);
    let cfg = StoreConfig {
        engine: EngineKind::Redis,
        redis_url: redis.url(),
        ..base
    };
    let full = |space: Space, id: &str| format!("{}{}", cfg.key_prefix, space.key(id));
    let triplet_key = |client| full(Space::Greylist, &triplet_id(client, "r@y.example"));
    let network_key = |client| full(Space::GreyAllow, &network_id(client));
    redis.cli(&["SET", &triplet_key("198.18.11.1"), "{not json"]);
    redis.cli(&["SET", &triplet_key("198.18.12.1"), &"x".repeat(4096)]);
    redis.cli(&["HSET", &triplet_key("198.18.13.1"), "a", "b"]);
    redis.cli(&["SET", &network_key("198.18.14.1"), "abc"]);
    redis.cli(&["RPUSH", &network_key("198.18.15.1"), "a", "b"]);
    redis.cli(&[
        "SET",
        &network_key("198.18.16.1"),
        "99999999999999999999999",
    ]);
    let (store, _stop) = started(&cfg);
    for n in 11..=16 {
        let client = format!("198.18.{n}.1");
        undecodable_records_count_as_unknown(&store, &client, "r@y.example").await;
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn verdicts_name_their_metric() {
    for (v, name, defers) in [
        (Verdict::Deferred, "deferred", true),
        (Verdict::Passed, "passed", false),
        (Verdict::Allowlisted, "allowlisted", false),
        (Verdict::StoreOpen, "store_error", false),
        (Verdict::StoreClosed, "store_error", true),
    ] {
        assert_eq!((v.metric(), v.defers()), (name, defers));
    }
}

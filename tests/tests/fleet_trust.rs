//! End-to-end tests of what a fleet gateway trusts in Redis, and what it tells its operator:
//! daemons on loopback (no XDP interface: the pinned maps are their kernel lists) share one
//! private `redis-server` (a unix socket in the test's directory, no persistence, stopped by
//! PID).
//!
//! - In [`hostile_records_are_refused_and_a_failing_reconcile_is_told_once`], another "node"
//!   (redis-cli) publishes a ban on half the Internet, one on loopback, and a one-hour ban whose
//!   message and key claim u64::MAX ms: the first two are refused and told once at warn, the
//!   third lasts at most its hour and runs out (reconciles never push it on). Then Redis goes
//!   away: the failing reconcile is told once at warn however many fail, and its recovery at
//!   info once Redis is back.
//! - In [`two_gateways_with_one_node_name_are_told`], a gateway restarted (its previous run's
//!   presence key still there) says nothing; a second gateway started with the same
//!   `store.node` makes both warn, naming it; once it is stopped, the first says so.
//!
//! Needs root (bpffs pins), `redis-server` and `smtp-sink` (installed by `cargo xtask setup`),
//! and `cargo build` first: `cargo test -p smtp-gateway-tests --test fleet_trust`.

#[allow(dead_code)]
#[path = "support/gateway.rs"]
mod gateway;
#[allow(dead_code)]
#[path = "support/smtp_client.rs"]
mod smtp_client;
#[allow(dead_code)]
#[path = "support/store_lab.rs"]
mod store_lab;
#[allow(dead_code)]
mod support;

use std::{path::PathBuf, time::Duration};

use gateway::{Gateway, GatewaySpec, free_port};
use serde_json::Value;
use store_lab::{Redis, Sink};
use support::netns::wait_until;

/// Key prefix of this test's gateways.
const PREFIX: &str = "sgw-trust:";
/// Messages, reconciles, reconnections: each follows its event asynchronously, within this.
const WITHIN: Duration = Duration::from_secs(15);

/// A directory of this test, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sgw-trust-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        TempDir(dir)
    }
}

/// A fleet gateway named `node` on `redis`, reconciling every `interval`, with the fleet's
/// debug lines in its log (each reconcile, and each that failed, says so there).
fn node(sink: &Sink, redis: &Redis, node: &str, interval: &str) -> Gateway {
    Gateway::start(
        GatewaySpec::new(sink.addr, "none")
            .env("RUST_LOG", "info,smtp_gateway::fleet=debug")
            .extra(&format!(
                "[store]\nengine = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{PREFIX}\"\n\
                 node = \"{node}\"\nretry_interval = \"100ms\"\nio_timeout = \"1s\"\n\
                 fleet_reconcile_interval = \"{interval}\"\n",
                redis.url()
            )),
    )
}

/// The gateway's blocklist entry of `target`, if any.
fn block_entry(gw: &Gateway, target: &str) -> Option<Value> {
    let out = gw.cli_ok(&["block", "list", "--json"]);
    let list: Value = serde_json::from_str(&out).expect("block list --json");
    list.as_array()?
        .iter()
        .find(|e| e["target"].as_str() == Some(target))
        .cloned()
}

/// A ban record of node `by` on `target`, added at `added` (Unix ms) and ending at `expires`.
fn record(target: &str, by: &str, added: u64, expires: Option<u64>) -> String {
    let expires = expires.map_or("null".to_string(), |e| e.to_string());
    format!(
        r#"{{"target":"{target}","source":null,"reason":"hostile","origin":"cli","node":"{by}","added_unix_ms":{added},"expires_unix_ms":{expires}}}"#
    )
}

/// Unix time in milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Stores and publishes, as node `by` would, an hour's ban on `target` starting now.
fn publish_hour_ban(redis: &Redis, target: &str, by: &str) {
    let now = unix_ms();
    let hour_ms: u64 = 3_600_000;
    let record = record(target, by, now, Some(now + hour_ms));
    let key = format!("{PREFIX}ban/{target}");
    redis.cli(&["SET", &key, &record, "PX", &hour_ms.to_string()]);
    let message = format!(r#"{{"op":"ban","record":{record},"ttl_ms":{hour_ms}}}"#);
    redis.cli(&["PUBLISH", &format!("{PREFIX}fleet/bans"), &message]);
}

#[test]
fn hostile_records_are_refused_and_a_failing_reconcile_is_told_once() {
    let dir = TempDir::new("hostile");
    let mut redis = Redis::start(&dir.0);
    let sink = Sink::start(free_port());
    let a = node(&sink, &redis, "node-a", "1s");
    assert!(
        a.wait_logged(&["fleet: ban propagation"], WITHIN),
        "no fleet task:\n{}",
        a.log()
    );

    // Another node's records, written and published as a gateway does (the record, then the
    // message in the same order): half the Internet, loopback, and a one-hour ban whose message
    // and key claim far more.
    let channel = format!("{PREFIX}fleet/bans");
    let now = unix_ms();
    let hour_ms = 3_600_000;
    let (wide, local, hour) = ("0.0.0.0/1", "127.0.0.1", "198.18.0.9");
    for (target, expires, ttl_ms) in [
        (wide, Some(now + hour_ms), hour_ms),
        (local, Some(now + hour_ms), hour_ms),
        (hour, Some(now + hour_ms), u64::MAX),
    ] {
        let record = record(target, "node-x", now, expires);
        let px = ttl_ms.min(i64::MAX as u64 / 2).to_string();
        redis.cli(&["SET", &format!("{PREFIX}ban/{target}"), &record, "PX", &px]);
        let message = format!(r#"{{"op":"ban","record":{record},"ttl_ms":{ttl_ms}}}"#);
        redis.cli(&["PUBLISH", &channel, &message]);
    }
    let mut entry = None;
    wait_until(WITHIN, Duration::from_millis(50), || {
        entry = block_entry(&a, hour);
        entry.is_some()
    });
    let seen_at = std::time::Instant::now();
    let entry = entry.unwrap_or_else(|| panic!("{hour} never applied:\n{}", a.log()));
    let left = entry["expires_in_secs"].as_u64().unwrap_or(u64::MAX);
    assert!(
        left <= 3600,
        "a one-hour ban lasts its hour, not the u64::MAX ms its message claims: {entry}"
    );
    // Eight reconciles later (a line per list each; each applies the stored records again),
    // the refused ones are not listed, and each was told once at warn (named, or counted in a
    // line naming the other), however many reconciles and messages saw them.
    let done = a.count_logged(&["fleet: reconcile done"]);
    assert!(
        a.wait_logged_n(&["fleet: reconcile done"], done + 16, WITHIN),
        "no reconcile:\n{}",
        a.log()
    );
    for target in [wide, local] {
        assert_eq!(
            block_entry(&a, target),
            None,
            "{target} applied:\n{}",
            a.log()
        );
    }
    // Nor is the hour pushed on at each reconcile (its key claims far more than the hour): it
    // runs out as time passes.
    let now_left = block_entry(&a, hour)
        .and_then(|e| e["expires_in_secs"].as_u64())
        .unwrap_or(u64::MAX);
    let passed = seen_at.elapsed().as_secs();
    assert!(
        passed >= 6 && now_left + passed <= left + 2,
        "{hour}: {left}s left, {passed}s later {now_left}s left: pushed on by reconciles\n{}",
        a.log()
    );
    let refused = ["WARN", "fleet: record of another gateway refused"];
    let log = a.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| refused.iter().all(|n| l.contains(n)))
        .collect();
    let named = |t: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("record={t} ")))
            .count()
    };
    let counted: usize = lines
        .iter()
        .filter_map(|l| {
            l.split("more_refused=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(
        named(wide) <= 1 && named(local) <= 1 && named(wide) + named(local) + counted == 2,
        "each refused record told once:\n{log}"
    );
    assert!(
        lines.iter().all(|l| l.contains("node=\"node-x\"")),
        "the refusal names its node:\n{log}"
    );
    let told = lines.len();

    // Redis goes away: every reconcile fails (said at debug), the warning comes once.
    redis.kill();
    let failed = ["fleet: reconcile skipped"];
    assert!(
        a.wait_logged_n(&failed, 4, WITHIN),
        "reconciles did not fail:\n{}",
        a.log()
    );
    let warned = ["WARN", "fleet: reconcile failing"];
    assert_eq!(
        a.count_logged(&warned),
        1,
        "a failing reconcile is told once at warn:\n{}",
        a.log()
    );
    assert_eq!(
        a.count_logged(&refused),
        told,
        "no refusal told again:\n{}",
        a.log()
    );
    // Back: its recovery is told, once.
    redis.restart();
    assert!(
        a.wait_logged(&["INFO", "fleet: reconcile works again"], WITHIN),
        "the recovery was never told:\n{}",
        a.log()
    );
    assert_eq!(a.count_logged(&warned), 1, "{}", a.log());
    drop(a);
    drop(sink);
    drop(redis);
}

#[test]
fn two_gateways_with_one_node_name_are_told() {
    let dir = TempDir::new("shared");
    let redis = Redis::start(&dir.0);
    let sink = Sink::start(free_port());
    let name = "mx-shared";
    let shared = ["WARN", "another running gateway uses this store.node", name];
    let reconciled = ["fleet: reconcile done", "list=Allowlist"];
    // Reconciles every 2s: the presence key lives 6s, a restart finds its previous run's.
    let mut a = node(&sink, &redis, name, "2s");
    assert!(
        a.wait_logged_n(&reconciled, 2, WITHIN),
        "no reconcile:\n{}",
        a.log()
    );
    // Two connections to Redis: the store's (the presence check shares it) and the fleet's
    // subscription. The presence check had one of its own.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let gateways = clients
        .lines()
        .filter(|l| !l.contains("cmd=client"))
        .count();
    assert_eq!(gateways, 2, "{clients}");

    // Restarted: the key holds the previous run's id, which is no other gateway.
    let key = format!("{PREFIX}fleet/nodes/{name}");
    let before = redis.cli(&["GET", &key]);
    assert_eq!(before.len(), 32, "presence key {key}: {before:?}");
    a.terminate();
    a.restart(|config| config);
    assert!(
        a.wait_logged(&["presence key of a previous run found"], WITHIN),
        "the restart did not find its previous run's key (gone already?):\n{}",
        a.log()
    );
    assert!(
        a.wait_logged_n(&reconciled, 3, WITHIN),
        "no reconcile after the restart:\n{}",
        a.log()
    );
    assert_eq!(
        a.count_logged(&shared),
        0,
        "a restart is no other gateway:\n{}",
        a.log()
    );
    assert_ne!(redis.cli(&["GET", &key]), before, "a new run, a new id");

    // A second gateway with the same name: both tell it, once.
    let b = node(&sink, &redis, name, "2s");
    for (gw, which) in [(&a, "the first"), (&b, "the second")] {
        assert!(
            gw.wait_logged(&shared, WITHIN),
            "{which} gateway never told the shared node name:\n{}",
            gw.log()
        );
    }
    let n = b.count_logged(&reconciled);
    assert!(b.wait_logged_n(&reconciled, n + 2, WITHIN), "{}", b.log());
    for gw in [&a, &b] {
        assert_eq!(gw.count_logged(&shared), 1, "told once:\n{}", gw.log());
    }

    // The second one stops: within the key's life and a reconcile, the first says so.
    drop(b);
    let alone = [
        "INFO",
        "no other gateway seen with this store.node any more",
        name,
    ];
    assert!(a.wait_logged(&alone, 2 * WITHIN), "{}", a.log());
    drop(a);
    drop(sink);
    drop(redis);
}

#[test]
fn a_restart_with_tighter_prefix_limits_removes_the_fleet_entries_they_refuse() {
    // `[store]` needs a restart to change, and the kernel lists outlive it (pinned): a fleet
    // ban applied under `fleet_min_prefix_v4 = 8` stayed in force after a restart with 16,
    // though no record of that width would be applied any more.
    let dir = TempDir::new("limits");
    let redis = Redis::start(&dir.0);
    let sink = Sink::start(free_port());
    let mut a = node(&sink, &redis, "node-a", "1s");
    assert!(
        a.wait_logged(&["fleet: ban propagation"], WITHIN),
        "no fleet task:\n{}",
        a.log()
    );
    let (wide, narrow) = ("198.16.0.0/12", "198.18.7.0/24");
    for target in [wide, narrow] {
        publish_hour_ban(&redis, target, "node-x");
    }
    // This node's operator blocks a /12 too: not the fleet's, never removed by it.
    let own = "198.32.0.0/12";
    a.cli_ok(&["block", "add", own, "--reason", "operator"]);
    for target in [wide, narrow, own] {
        assert!(
            wait_until(WITHIN, Duration::from_millis(50), || block_entry(
                &a, target
            )
            .is_some()),
            "{target} never applied:\n{}",
            a.log()
        );
    }

    a.terminate();
    a.restart(|config| {
        config.replace(
            "fleet_reconcile_interval = \"1s\"\n",
            "fleet_reconcile_interval = \"1s\"\nfleet_min_prefix_v4 = 16\n",
        )
    });
    let reconciled = ["fleet: reconcile done", "list=Blocklist"];
    assert!(
        a.wait_logged(&reconciled, WITHIN),
        "no reconcile after the restart:\n{}",
        a.log()
    );
    assert_eq!(
        block_entry(&a, wide),
        None,
        "the /12 of the fleet outlived the limit that refuses it:\n{}",
        a.log()
    );
    assert!(block_entry(&a, narrow).is_some(), "{}", a.log());
    assert!(
        block_entry(&a, own).is_some(),
        "the operator's own /12 was removed:\n{}",
        a.log()
    );
    drop(a);
    drop(sink);
    drop(redis);
}

#[test]
fn a_fleet_ban_inside_a_wider_entry_of_this_node_is_written_all_the_same() {
    // A lookup in an LPM trie is a longest-prefix match: asked for the fleet's /24, the kernel
    // answered the operator's /12 covering it, which the fleet never replaces, so the /24 was
    // "kept" and never written. Once the operator lifted the /12, the fleet's ban was not in
    // force.
    let dir = TempDir::new("inside");
    let redis = Redis::start(&dir.0);
    let sink = Sink::start(free_port());
    let a = node(&sink, &redis, "node-a", "1h");
    assert!(
        a.wait_logged(&["fleet: ban propagation"], WITHIN),
        "no fleet task:\n{}",
        a.log()
    );
    let (wide, inside) = ("198.16.0.0/12", "198.18.9.0/24");
    a.cli_ok(&["block", "add", wide, "--reason", "operator"]);
    publish_hour_ban(&redis, inside, "node-x");
    assert!(
        wait_until(WITHIN, Duration::from_millis(50), || block_entry(
            &a, inside
        )
        .is_some()),
        "the fleet's {inside} inside the operator's {wide} was never written:\n{}",
        a.log()
    );
    a.cli_ok(&["block", "del", wide]);
    let entry = block_entry(&a, inside).unwrap_or_else(|| panic!("{}", a.log()));
    assert_eq!(entry["origin"], "fleet", "{entry}");
    assert_eq!(block_entry(&a, wide), None);
    drop(a);
    drop(sink);
    drop(redis);
}

#[test]
fn undecodable_records_are_told_once_per_load_not_once_each() {
    // Whoever can write to Redis could flood the log: each record that did not decode was a
    // warning of its own at every reconcile (50 garbage keys, a reconcile a second: 50 lines a
    // second). A load tells the first and how many it skipped.
    let dir = TempDir::new("garbage");
    let redis = Redis::start(&dir.0);
    let sink = Sink::start(free_port());
    for i in 0..50 {
        redis.cli(&["SET", &format!("{PREFIX}ban/198.18.70.{i}"), "garbage"]);
    }
    let a = node(&sink, &redis, "node-a", "1s");
    let reconciled = ["fleet: reconcile done", "list=Blocklist"];
    assert!(
        a.wait_logged_n(&reconciled, 3, WITHIN),
        "no reconcile:\n{}",
        a.log()
    );
    let skipped = a.count_logged(&["store: entry skipped"]);
    let loads = a.count_logged(&reconciled);
    assert!(
        (1..=loads + 1).contains(&skipped),
        "{skipped} warnings for {loads} loads of 50 bad records:\n{}",
        a.log()
    );
    assert!(
        a.log().contains("skipped=50"),
        "the count of the skipped records is told:\n{}",
        a.log()
    );
    drop(a);
    drop(sink);
    drop(redis);
}

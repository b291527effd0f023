//! End-to-end test of the Redis state store (issue 12, part 1): two daemons on loopback share one
//! private `redis-server` (unix socket in the test's directory, no persistence, stopped by PID).
//!
//! - [`two_nodes_share_passes_and_survive_redis_going_away`]: a client that delivered through
//!   node A gets its banner at once from node B (postscreen's shared cache), while a new client
//!   still waits out B's greet pause; a bot banned on A is stored as a ban record naming node A.
//!   Then Redis is killed: both nodes keep delivering mail, A keeps what it knows locally, and
//!   the pass a client earns on A while Redis is down reaches Redis once it is back (empty, as
//!   after a crash) — B then lets that client skip the greet pause too.
//!
//! Needs root (bpffs pins), `redis-server` and `smtp-sink` (installed by `cargo xtask setup`),
//! and `cargo build` first: `cargo test -p smtp-gateway-tests --test store_redis`.

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

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use gateway::{Gateway, GatewaySpec, free_port};
use serde_json::Value;
use store_lab::{Redis, Sink, banner, deliver, pregreet};
use support::netns::wait_until;

/// Delivers through A while Redis runs.
const PASSED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Never seen by either node.
const NEW: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
/// Delivers through A while Redis is down.
const PASSED_WHILE_DOWN: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
/// Delivers through B while Redis is down.
const CLIENT_OF_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8));
/// Pregreets on A: banned there, and recorded in Redis with A's name.
const BOT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

/// Key prefix of this test's gateways.
const PREFIX: &str = "sgw-test:";
/// Store writes, bans, reconnections: each follows its event asynchronously, within this.
const WITHIN: Duration = Duration::from_secs(15);

/// A directory of this test, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gateway named `node` on the shared Redis.
fn node(sink: &Sink, redis: &Redis, node: &str) -> Gateway {
    Gateway::start(
        GatewaySpec::new(sink.addr, "none")
            .smtp("greet_pause", "\"1s\"")
            .env("RUST_LOG", "info,smtp_gateway::store=trace")
            .extra(&format!(
                "[store]\nengine = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{PREFIX}\"\n\
                 node = \"{node}\"\nbudget = \"500ms\"\nretry_interval = \"100ms\"\n\
                 io_timeout = \"1s\"\n",
                redis.url()
            )),
    )
}

/// Waits (bounded) until Redis holds `key` (prefix added).
fn wait_key(redis: &Redis, key: &str) {
    let full = format!("{PREFIX}{key}");
    assert!(
        wait_until(WITHIN, Duration::from_millis(20), || redis
            .cli(&["EXISTS", &full])
            == "1"),
        "{full} never reached Redis"
    );
}

/// Whether the banner is the single line of a client the pass cache knows.
fn skips_greet_pause(banner: &str) -> bool {
    banner.starts_with("220 ") && !banner.contains('\n')
}

#[test]
fn two_nodes_share_passes_and_survive_redis_going_away() {
    let dir = TempDir(std::env::temp_dir().join(format!("sgw-store-redis-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("test dir");
    let mut redis = Redis::start(&dir.0);
    let sink = Sink::start(free_port());
    let a = node(&sink, &redis, "node-a");
    let b = node(&sink, &redis, "node-b");

    // A pass on A is one on B.
    deliver(a.addr(), PASSED);
    wait_key(&redis, "pass/127.0.0.2");
    let known = banner(b.addr(), PASSED);
    assert!(
        skips_greet_pause(&known),
        "B made the client that passed on A wait: {known:?}\n{}",
        b.log()
    );
    assert!(
        banner(b.addr(), NEW).starts_with("220-"),
        "greet pause for a new client"
    );

    // A ban on A is a record naming A.
    pregreet(a.addr(), BOT);
    wait_key(&redis, "ban/127.0.0.9");
    let record: Value =
        serde_json::from_str(&redis.cli(&["GET", &format!("{PREFIX}ban/127.0.0.9")]))
            .expect("a JSON ban record");
    assert_eq!(record["node"], "node-a", "{record}");
    assert_eq!(record["origin"], "autoban", "{record}");
    assert_eq!(record["reason"], "autoban: pregreet", "{record}");
    let ttl: i64 = redis
        .cli(&["PTTL", &format!("{PREFIX}ban/127.0.0.9")])
        .parse()
        .expect("PTTL");
    assert!(ttl > 0, "a ban record expires with its ban: PTTL {ttl}");

    // Redis goes away: both nodes keep serving on their local state.
    redis.kill();
    deliver(a.addr(), PASSED_WHILE_DOWN);
    deliver(b.addr(), CLIENT_OF_B);
    assert!(
        skips_greet_pause(&banner(a.addr(), PASSED)),
        "A forgot what it knows locally"
    );
    assert!(
        a.wait_logged(&["state store unavailable"], WITHIN),
        "A never noticed Redis was gone:\n{}",
        a.log()
    );

    // Redis is back, empty: what A wrote while it was gone reaches it, and B learns from it.
    redis.restart();
    wait_key(&redis, "pass/127.0.0.7");
    assert!(
        a.wait_logged(&["state store reachable again"], WITHIN),
        "{}",
        a.log()
    );
    let known = banner(b.addr(), PASSED_WHILE_DOWN);
    assert!(
        skips_greet_pause(&known),
        "B made a client that passed on A while Redis was down wait: {known:?}\n{}",
        b.log()
    );
    drop(a);
    drop(b);
    drop(sink);
    drop(redis);
}

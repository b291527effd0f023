//! End-to-end test of fleet ban propagation (issue 12, section 2, first item): gateways, each
//! with XDP on the veth of its own network-namespace lab, share one real `redis-server` (a unix
//! socket in the test's directory, reachable from every namespace).
//!
//! [`a_ban_on_one_gateway_drops_on_the_others`]:
//! B reconciles only when it (re)subscribes (`fleet_reconcile_interval = "1h"`), so what it
//! gets after that comes by the pub/sub message; A and C reconcile every second.
//!
//! - `block add` on A: the source is listed on B (origin `fleet`, A's reason, a TTL) and its SYN
//!   is dropped by B's XDP; a neighbour still connects to B;
//! - `block del` on A: B lists it no more and lets it connect again;
//! - a gateway started after a ban (C) catches up (reconcile at subscription) and drops it;
//!   a ban deleted while C was stopped is removed at C's next start;
//! - an operator's `allow add` on A reaches B (by message) and C: a source banned on C (and so
//!   everywhere) connects to B and C again; `allow del` on A makes both drop it again;
//! - Redis killed: A, B and C keep dropping what they hold; Redis restarted empty: nothing is
//!   removed, A publishes its own bans again, and a ban made after the restart reaches B and C;
//! - `block import` on B (pinned maps written by the CLI; B never reconciles on its own) reaches
//!   A and C: the CLI asks B's daemon to publish at once;
//! - a pregreeter auto-banned by A's SMTP proxy is dropped by B and C;
//! - a bot that pregreets once on A and once on B (two needed) is counted once across the
//!   fleet (a shared counter in Redis): B bans it, and A and C drop it too;
//! - junk published on the channel and a junk record are dropped; a record another node wrote
//!   without a message (auto-ban's records take the same path) arrives through reconcile;
//! - a ban written by a node whose clock is an hour behind keeps what Redis says is left of its
//!   record (reconcile) or what its writer's message says (push), not the writer's clock;
//! - ban-to-listed latency on B over 20 bans made on A (printed; bounded only generously).
//!
//! Needs root, `cargo xtask setup` (redis-server) and `cargo build` first:
//! `cargo test -p smtp-gateway-tests --test netns_fleet -- --nocapture` (prints the latency).

#[allow(dead_code)]
#[path = "support/smtp_client.rs"]
mod smtp_client;
#[allow(dead_code)]
#[path = "support/store_lab.rs"]
mod store_lab;
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use store_lab::Redis;
use support::{
    daemon::Daemon,
    netns::{Listener, Topology, in_netns, wait_until},
};

const SMTP: u16 = 25;
/// Banned on A, then deleted there.
const BOT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 41));
/// Never banned.
const NEIGHBOUR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 42));
/// Banned on A before C starts.
const EARLY: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 43));
/// Banned on A after Redis came back.
const AFTER_RESTART: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 44));
/// Banned on A while C is stopped, then deleted before C comes back.
const GONE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 45));
/// Pregreets on A's SMTP proxy: auto-banned there, dropped everywhere.
const PREGREETER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 46));
/// Pregreets once on A, then once on B: counted once across the fleet, banned everywhere.
const ROTATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 47));
/// Imported on A with `block import` (no daemon involved).
const IMPORTED: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 48));
/// Banned on C, allowlisted on A, then taken off A's allowlist.
const PARTNER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 49));
/// Every client address of the labs.
const CLIENTS: [IpAddr; 9] = [
    PARTNER,
    IMPORTED,
    BOT,
    NEIGHBOUR,
    EARLY,
    AFTER_RESTART,
    GONE,
    PREGREETER,
    ROTATOR,
];
/// The SMTP proxy of A and B (auto-ban on a second pregreet); port 25 is the plain listener's.
const PROXY: u16 = 2525;

/// Key prefix of this test's gateways.
const PREFIX: &str = "sgw-fleet:";
/// A connect that must succeed gets this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connect that must be dropped: under the 1 s SYN retransmission, so exactly one SYN.
const BLOCKED_TIMEOUT: Duration = Duration::from_millis(900);
/// A change must show on another gateway within this (generous: the aim is 1 s; reconcile
/// runs every second too).
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bans timed for the latency figures.
const TIMED_BANS: usize = 20;

/// The test's directory (the Redis socket and data), removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One gateway: its own namespace lab, XDP on its veth, a plain listener on port 25 behind it.
/// Fields drop in order: the daemon (detach needs the namespace), then the namespaces.
struct Node {
    gw: Daemon,
    _listener: Listener,
    topo: Topology,
}

impl Node {
    /// A gateway named `name` (lab tag `tag`) on the shared Redis; not started.
    /// With `proxy`, the node also runs the SMTP proxy on [`PROXY`] with auto-ban on the second
    /// pregreet inside the window, counted across the fleet (its backend is never reached: a
    /// pregreeter is refused before).
    /// `reconcile` is its `store.fleet_reconcile_interval`.
    fn new(tag: &str, name: &str, redis: &Redis, proxy: bool, reconcile: &str) -> Node {
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/tmp/sgw-fleet-{pid}-{tag}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-fleet-{pid}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab directory");
        let topo = Topology::new(tag, &CLIENTS);
        let config = format!(
            "[dataplane]\n\
             interfaces = [\"{iface}\"]\n\
             attach_mode = \"driver\"\n\
             protected_ports = [{SMTP}, {PROXY}]\n\
             pin_dir = \"{pins}\"\n\
             \n\
             {smtp}\
             [metrics]\n\
             enabled = false\n\
             \n\
             [store]\n\
             engine = \"redis\"\n\
             redis_url = \"{url}\"\n\
             key_prefix = \"{PREFIX}\"\n\
             node = \"{name}\"\n\
             retry_interval = \"100ms\"\n\
             io_timeout = \"1s\"\n\
             fleet_reconcile_interval = \"{reconcile}\"\n",
            iface = topo.gw_if,
            pins = pin_dir.display(),
            url = redis.url(),
            smtp = if proxy {
                format!(
                    "[smtp]\nhostname = \"gw.test\"\nlisteners = [{{ address = \"{gw}:{PROXY}\" }}]\n\
                     greet_pause = \"300ms\"\n\n\
                     [backend]\nservers = [{{ address = \"127.0.0.1:10025\", identity = \"none\" }}]\n\n\
                     [relay]\naccepted_domains = [\"example.org\"]\n\n\
                     [checks]\npregreet = {{ action = \"drop\", weight = 1 }}\n\n\
                     [autoban]\nenabled = true\nttl = \"1h\"\nchecks = {{ pregreet = 2 }}\n\n",
                    gw = support::netns::GW_V4,
                )
            } else {
                String::new()
            },
        );
        let gw = Daemon::new(&topo.gw_ns, &topo.gw_if, &dir, &pin_dir, &config);
        let listener = Listener::start(&topo.gw_ns, SMTP);
        Node {
            gw,
            _listener: listener,
            topo,
        }
    }

    fn assert_dropped(&self, src: IpAddr, when: &str) {
        if let Err(e) = self.topo.expect_dropped(src, SMTP, BLOCKED_TIMEOUT) {
            self.fail(when, &e);
        }
    }

    fn assert_connects(&self, src: IpAddr, when: &str) {
        if let Err(e) = self.topo.expect_connects(src, SMTP, CONNECT_TIMEOUT) {
            self.fail(when, &e);
        }
    }

    /// Panics with `what` and the gateway's state: its block list and its log.
    fn fail(&self, when: &str, what: &str) -> ! {
        panic!(
            "{when}: {what}\nblock list: {:#?}\n--- log:\n{}",
            self.gw.block_list(),
            self.gw.log()
        )
    }

    /// `src` talks before the banner of the proxy; returns what it read until the close.
    fn pregreet(&self, src: IpAddr) -> String {
        let dst = Topology::gw_addr(src, PROXY);
        in_netns(&self.topo.cl_ns, move || {
            let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
                .expect("socket");
            socket
                .bind(&SockAddr::from(SocketAddr::new(src, 0)))
                .expect("bind");
            socket
                .connect_timeout(&SockAddr::from(dst), CONNECT_TIMEOUT)
                .expect("connect to the proxy");
            let mut stream: TcpStream = socket.into();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            stream.write_all(b"EHLO bot.example.net\r\n").expect("send");
            let mut text = Vec::new();
            let _ = stream.take(64 * 1024).read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    }

    /// Waits until `target` is listed with origin `fleet`; returns its entry.
    fn wait_fleet_ban(&self, target: &str) -> serde_json::Value {
        let entry = self.gw.wait_banned(target, APPLY_TIMEOUT);
        assert_eq!(entry["origin"], "fleet", "{entry}");
        entry
    }

    /// Waits until `target` is no longer listed.
    fn wait_lifted(&self, target: &str) {
        let gone = wait_until(APPLY_TIMEOUT, Duration::from_millis(20), || {
            self.gw.block_entry(target).is_none()
        });
        assert!(
            gone,
            "{target} still listed after {APPLY_TIMEOUT:?}: {:#?}\n--- daemon log:\n{}",
            self.gw.block_list(),
            self.gw.log()
        );
    }
}

/// The `q`-quantile of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let last = sorted.len().saturating_sub(1);
    let at = ((last as f64) * q).round() as usize;
    sorted.get(at.min(last)).copied().unwrap_or_default()
}

#[test]
fn a_ban_on_one_gateway_drops_on_the_others() {
    let dir = TempDir(PathBuf::from(format!(
        "/tmp/sgw-fleet-{}-redis",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("test dir");
    let mut redis = Redis::start(&dir.0);
    let mut a = Node::new("fa", "node-a", &redis, true, "1s");
    let mut b = Node::new("fb", "node-b", &redis, true, "1h");
    let mut c = Node::new("fc", "node-c", &redis, false, "1s");
    a.gw.start();
    b.gw.start();
    for node in [&a, &b] {
        assert!(
            node.gw
                .wait_logged(&["fleet: ban propagation"], Duration::from_secs(10)),
            "no fleet task:\n{}",
            node.gw.log()
        );
    }
    b.assert_connects(BOT, "before any ban");

    // A ban on A drops on B.
    let bot = BOT.to_string();
    a.gw.cli_ok(&["block", "add", &bot, "--ttl", "1h", "--reason", "seen on A"]);
    let entry = b.wait_fleet_ban(&bot);
    assert_eq!(entry["reason"], "seen on A", "{entry}");
    b.assert_dropped(BOT, "banned on A");
    b.assert_connects(NEIGHBOUR, "its neighbour");
    assert_eq!(
        a.gw.block_entry(&bot).expect("listed on A")["origin"],
        "cli"
    );

    // Deleted on A: B lets it through again.
    a.gw.cli_ok(&["block", "del", &bot]);
    b.wait_lifted(&bot);
    b.assert_connects(BOT, "unbanned on A");

    // A gateway started after a ban catches up.
    let early = EARLY.to_string();
    a.gw.cli_ok(&["block", "add", &early, "--ttl", "1h"]);
    b.wait_fleet_ban(&early);
    c.gw.start();
    c.wait_fleet_ban(&early);
    c.assert_dropped(EARLY, "banned before C started");

    // A ban deleted while C was stopped is removed when C comes back.
    c.gw.terminate();
    let gone = GONE.to_string();
    a.gw.cli_ok(&["block", "add", &gone, "--ttl", "1h"]);
    b.wait_fleet_ban(&gone);
    c.gw.start();
    c.wait_fleet_ban(&gone);
    c.gw.terminate();
    a.gw.cli_ok(&["block", "del", &gone]);
    b.wait_lifted(&gone);
    c.gw.start();
    c.wait_lifted(&gone);

    // An operator's allowlist entry on A reaches B (by message: B never reconciles after its
    // start) and C, and wins over a ban there; its deletion on A makes them drop again.
    let partner = PARTNER.to_string();
    let prefix = format!("{partner}/32");
    c.gw.cli_ok(&["block", "add", &partner, "--ttl", "1h"]);
    b.wait_fleet_ban(&partner);
    b.assert_dropped(PARTNER, "banned on C");
    a.gw.cli_ok(&["allow", "add", &partner, "--reason", "partner relay"]);
    for (node, name) in [(&b, "B"), (&c, "C")] {
        let mut entry = None;
        wait_until(APPLY_TIMEOUT, Duration::from_millis(20), || {
            entry = node.gw.allow_entry(&prefix);
            entry.is_some()
        });
        let Some(entry) = entry else {
            node.fail(
                "allowlisted on A",
                &format!("{name} has no allowlist entry"),
            );
        };
        assert_eq!(
            (entry["origin"].as_str(), entry["reason"].as_str()),
            (Some("fleet"), Some("partner relay")),
            "{name}: {entry}"
        );
        node.assert_connects(PARTNER, "allowlisted on A, banned on C");
    }
    assert_eq!(
        c.gw.block_entry(&partner).expect("C's own ban stays")["origin"],
        "cli"
    );
    // `why` on B names the allowlist record, A's, from the store.
    let why = b.gw.cli_json(&["why", &partner, "--json"]);
    let allows = why["store"]["allows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        allows.iter().any(|r| r["target"] == partner.as_str()
            && r["node"] == "node-a"
            && r["reason"] == "partner relay"),
        "why on B must show A's allowlist record: {why:#}"
    );
    a.gw.cli_ok(&["allow", "del", &partner]);
    for (node, name) in [(&b, "B"), (&c, "C")] {
        let gone = wait_until(APPLY_TIMEOUT, Duration::from_millis(20), || {
            node.gw.allow_entry(&prefix).is_none()
        });
        if !gone {
            node.fail(
                "allow del on A",
                &format!("{name} still allowlists {prefix}"),
            );
        }
        node.assert_dropped(PARTNER, "off A's allowlist, banned on C");
    }
    c.gw.cli_ok(&["block", "del", &partner]);
    c.assert_connects(GONE, "deleted while C was stopped");

    // Redis killed: every gateway keeps dropping what it holds.
    redis.kill();
    for (node, name) in [(&a, "A"), (&b, "B"), (&c, "C")] {
        assert!(
            node.gw
                .wait_logged(&["fleet: subscription lost"], Duration::from_secs(10)),
            "{name} did not notice Redis going away:\n{}",
            node.gw.log()
        );
        node.assert_dropped(EARLY, "Redis down");
    }
    // Back empty: nothing is removed, and a new ban propagates.
    redis.restart();
    for node in [&a, &b, &c] {
        assert!(
            node.gw
                .wait_logged(&["fleet: subscribed again"], Duration::from_secs(10)),
            "did not subscribe again:\n{}",
            node.gw.log()
        );
    }
    // A's own bans are published again (the reconcile finds them without a record).
    let early_key = format!("{PREFIX}ban/{early}");
    assert!(
        wait_until(APPLY_TIMEOUT, Duration::from_millis(20), || {
            redis.cli(&["EXISTS", &early_key]) == "1"
        }),
        "A did not publish its ban of {early} again after Redis lost it:\n{}",
        a.gw.log()
    );
    let after = AFTER_RESTART.to_string();
    a.gw.cli_ok(&["block", "add", &after, "--ttl", "1h"]);
    for node in [&b, &c] {
        node.wait_fleet_ban(&after);
        node.assert_dropped(AFTER_RESTART, "banned after Redis came back");
        // A reconcile against the empty Redis has run by now (B: at its new subscription; C:
        // every second): still dropping.
        node.assert_dropped(EARLY, "Redis restarted empty");
    }

    // An auto-ban on A (a pregreeter, twice) drops everywhere.
    for _ in 0..2 {
        let text = a.pregreet(PREGREETER);
        assert!(text.lines().any(|l| l.starts_with("521 ")), "{text:?}");
    }
    let bot = PREGREETER.to_string();
    let entry = a.gw.wait_banned(&bot, APPLY_TIMEOUT);
    assert_eq!(entry["origin"], "autoban", "{entry}");
    for node in [&b, &c] {
        let entry = node.wait_fleet_ban(&bot);
        assert_eq!(entry["reason"], "autoban: pregreet", "{entry}");
        node.assert_dropped(PREGREETER, "auto-banned on A");
    }

    // `block import` writes B's pinned maps from the CLI, not through the daemon. B reconciles
    // only when it subscribes, so only the import's request to publish now (through B's control
    // socket) can bring it to A and C within the wait.
    let imported = IMPORTED.to_string();
    let list = std::env::temp_dir().join(format!("sgw-fleet-{}-import.txt", std::process::id()));
    std::fs::write(&list, format!("# imported\n{imported} ; spam source\n")).expect("import list");
    let out = b.gw.cli_ok(&[
        "block",
        "import",
        list.to_str().expect("utf-8 path"),
        "--ttl",
        "1h",
    ]);
    let _ = std::fs::remove_file(&list);
    assert!(
        out.contains("fleet: this node's bans without a record are being published"),
        "{out}"
    );
    for node in [&a, &c] {
        let entry = node.wait_fleet_ban(&imported);
        assert_eq!(entry["reason"], "spam source", "{entry}");
        node.assert_dropped(IMPORTED, "imported on B");
    }

    // A bot rotating between MX hosts: one pregreet on A, then one on B. Two are needed: each
    // gateway alone saw one, the fleet saw two, so B (whose firing completed the count) bans it
    // and every gateway drops it.
    let rotator = ROTATOR.to_string();
    let count_key = format!("{PREFIX}fcount/{rotator}#pregreet");
    let text = a.pregreet(ROTATOR);
    assert!(text.lines().any(|l| l.starts_with("521 ")), "{text:?}");
    assert!(
        wait_until(APPLY_TIMEOUT, Duration::from_millis(20), || {
            redis.cli(&["GET", &count_key]) == "1"
        }),
        "A's firing never reached the fleet's count {count_key}: {:?}\n--- A's log:\n{}",
        redis.cli(&["GET", &count_key]),
        a.gw.log()
    );
    assert!(
        a.gw.block_entry(&rotator).is_none(),
        "one pregreet must not ban"
    );
    let text = b.pregreet(ROTATOR);
    assert!(text.lines().any(|l| l.starts_with("521 ")), "{text:?}");
    let entry = b.gw.wait_banned(&rotator, APPLY_TIMEOUT);
    assert_eq!(entry["origin"], "autoban", "{entry}");
    assert!(
        b.gw.wait_logged(&["the fleet's count decided a ban"], APPLY_TIMEOUT),
        "B did not decide on the fleet's count:\n{}",
        b.gw.log()
    );
    for node in [&a, &c] {
        let entry = node.wait_fleet_ban(&rotator);
        assert_eq!(entry["reason"], "autoban: pregreet", "{entry}");
        node.assert_dropped(ROTATOR, "rotated from A to B");
    }
    b.assert_dropped(ROTATOR, "banned on B");
    // `why` on C names the node that banned it and why, from the shared ban record.
    let why = c.gw.cli_json(&["why", &rotator, "--json"]);
    let bans = why["store"]["bans"].as_array().cloned().unwrap_or_default();
    assert!(
        bans.iter().any(|r| r["target"] == rotator.as_str()
            && r["node"] == "node-b"
            && r["origin"] == "autoban"
            && r["reason"] == "autoban: pregreet"),
        "why on C must show B's ban record: {why:#}"
    );
    assert!(
        why["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("dropped")),
        "{why:#}"
    );
    let text = c.gw.cli_ok(&["why", &rotator]);
    assert!(
        text.contains("ban record: 198.18.0.47 by node node-b (origin autoban)"),
        "{text}"
    );

    // Hostile traffic on the channel and in the records: dropped; a well-formed record another
    // node wrote without a message (as auto-ban's are written) arrives through reconcile.
    let channel = format!("{PREFIX}fleet/bans");
    for junk in [
        "garbage".to_string(),
        r#"{"op":"ban","record":{"target":"not an address"}}"#.to_string(),
        format!(
            r#"{{"op":"unban","target":"{early}","node":"{}"}}"#,
            "x".repeat(70_000)
        ),
    ] {
        redis.cli(&["PUBLISH", &channel, &junk]);
    }
    redis.cli(&[
        "SET",
        &format!("{PREFIX}ban/junk"),
        "{\"target\":",
        "PX",
        "600000",
    ]);
    let written = "198.18.1.99";
    let record = format!(
        r#"{{"target":"{written}","source":"{written}","reason":"autoban: pregreet","origin":"autoban","node":"node-z","added_unix_ms":1,"expires_unix_ms":null}}"#
    );
    assert_eq!(
        redis.cli(&[
            "SET",
            &format!("{PREFIX}ban/{written}"),
            &record,
            "PX",
            "600000"
        ]),
        "OK"
    );
    // B reconciles only at (re)subscription: not there.
    for node in [&a, &c] {
        let entry = node.wait_fleet_ban(written);
        assert_eq!(entry["reason"], "autoban: pregreet", "{entry}");
        node.assert_dropped(EARLY, "after hostile messages");
    }

    // Clocks that disagree: a ban written by a node whose clock is an hour behind (its record's
    // end is already past by ours) keeps the hour Redis gives its record, through reconcile (A,
    // C) and through a message carrying the writer's TTL (B, which only hears messages).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let behind = |target: &str| {
        format!(
            r#"{{"target":"{target}","source":null,"reason":"clock behind","origin":"cli","node":"node-y","added_unix_ms":1,"expires_unix_ms":{}}}"#,
            now_ms - 1_800_000
        )
    };
    let (stored, told) = ("198.18.1.97", "198.18.1.98");
    redis.cli(&[
        "SET",
        &format!("{PREFIX}ban/{stored}"),
        &behind(stored),
        "PX",
        "3600000",
    ]);
    redis.cli(&[
        "PUBLISH",
        &channel,
        &format!(
            r#"{{"op":"ban","record":{},"ttl_ms":3600000}}"#,
            behind(told)
        ),
    ]);
    for (node, target) in [(&a, stored), (&c, stored), (&b, told)] {
        let entry = node.wait_fleet_ban(target);
        let left = entry["expires_in_secs"].as_u64().unwrap_or_default();
        assert!(
            (3000..=3600).contains(&left),
            "{target}: the store's hour, not the writer's clock: {entry}"
        );
    }

    // Ban-to-listed latency on B (B's `block list` polled; its resolution is one CLI call).
    let mut latencies = Vec::with_capacity(TIMED_BANS);
    for i in 0..TIMED_BANS {
        let target = format!("198.18.1.{}", 10 + i);
        // From the start of the `block add` CLI on A (its own run included: an upper bound).
        let started = Instant::now();
        a.gw.cli_ok(&["block", "add", &target, "--ttl", "10m"]);
        let listed = wait_until(APPLY_TIMEOUT, Duration::from_millis(1), || {
            b.gw.block_entry(&target).is_some()
        });
        assert!(listed, "{target} never reached B:\n{}", b.gw.log());
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (p50, p99) = (quantile(&latencies, 0.5), quantile(&latencies, 0.99));
    println!(
        "fleet ban-to-listed latency on B over {TIMED_BANS} bans on A: p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.last().copied().unwrap_or_default()
    );
    assert!(p99 < APPLY_TIMEOUT, "p99 {p99:?}");
}

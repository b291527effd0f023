//! End-to-end test of the embedded state store (issue 12, part 1): one daemon on loopback,
//! killed with SIGKILL (a crash: no shutdown work at all) and started again on the same redb
//! file, forgets neither the client that passed, nor the auto-ban counts, nor the ban decided
//! but still waiting for its grace.
//!
//! - [`a_crash_forgets_neither_passes_nor_counts_nor_waiting_bans`]: before the crash, a client
//!   delivers (its pass is stored), a bot pregreets twice (`pregreet = 2`: its ban is decided
//!   and waits out a 60 s grace) and another pregreets once (count 1). Once the log shows the
//!   three entries written to the store (trace of `smtp_gateway::store`), the daemon is killed.
//!   After the restart (grace now 0 s): the waiting ban is in the kernel blocklist without any
//!   new session of the bot; the client that passed gets its banner at once (one `220` line, no
//!   greet pause) while a new client gets `220-` first; and the second bot's next pregreet bans
//!   it (1 + 1 = 2), while a bot that pregreets once after the restart is not banned.
//!
//! Loopback only (127.0.0.2..6 as client addresses); backend `smtp-sink`. Needs root (bpffs
//! pins) and `cargo build` first: `cargo test -p smtp-gateway-tests --test store_embedded`.

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
    time::Duration,
};

use gateway::{Gateway, GatewaySpec, free_port};
use serde_json::Value;
use store_lab::{Sink, banner, deliver, pregreet};

/// Delivers before the crash: its pass must survive.
const PASSED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Pregreets twice before the crash: its ban waits out the grace when the daemon dies.
const WAITING: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// Pregreets once before the crash and once after: banned only if the count survived.
const COUNTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
/// A client never seen: the greet pause applies.
const NEW: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
/// Pregreets once after the restart only: not banned (the control for COUNTED).
const ONCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));

/// A ban, a store write: each follows its event asynchronously, within this.
const WITHIN: Duration = Duration::from_secs(10);

/// `block list --json` entry of `target`, if listed.
fn block_entry(gw: &Gateway, target: IpAddr) -> Option<Value> {
    let list: Value =
        serde_json::from_str(&gw.cli_ok(&["block", "list", "--json"])).expect("block list --json");
    let name = target.to_string();
    list.as_array()?
        .iter()
        .find(|e| e["target"].as_str() == Some(name.as_str()))
        .cloned()
}

/// Waits (bounded) until `target` is in the kernel blocklist; its entry.
fn wait_banned(gw: &Gateway, target: IpAddr) -> Value {
    let mut entry = None;
    let banned = support::netns::wait_until(WITHIN, Duration::from_millis(50), || {
        entry = block_entry(gw, target);
        entry.is_some()
    });
    assert!(
        banned,
        "{target} was not banned within {WITHIN:?}:\n{}",
        gw.log()
    );
    entry.unwrap_or_default()
}

#[test]
fn a_crash_forgets_neither_passes_nor_counts_nor_waiting_bans() {
    let sink = Sink::start(free_port());
    let mut gw = Gateway::start(
        GatewaySpec::new(sink.addr, "none")
            .smtp("greet_pause", "\"1s\"")
            .env("RUST_LOG", "info,smtp_gateway::store=trace")
            .extra("[autoban]\nchecks = { pregreet = 2 }\ngrace = \"60s\"\n"),
    );
    let addr = gw.addr();

    // Before: a pass, a decided ban waiting for its grace, a count of one.
    assert!(
        banner(addr, PASSED).starts_with("220-"),
        "greet pause for a new client"
    );
    deliver(addr, PASSED);
    pregreet(addr, WAITING);
    pregreet(addr, WAITING);
    pregreet(addr, COUNTED);
    for key in [
        "pass/127.0.0.2",
        "pending/127.0.0.3",
        "count/127.0.0.4#pregreet",
    ] {
        assert!(
            gw.wait_logged(&["store: written", key], WITHIN),
            "{key} never reached the store:\n{}",
            gw.log()
        );
    }
    assert!(
        block_entry(&gw, WAITING).is_none(),
        "the ban still waits out its grace"
    );

    // The crash, and a start on the same file.
    gw.kill9();
    gw.restart(|config| config.replace("grace = \"60s\"", "grace = \"0s\""));

    // The waiting ban reaches the kernel with no new session of the bot.
    let entry = wait_banned(&gw, WAITING);
    assert_eq!(entry["origin"], "autoban", "{entry}");
    assert_eq!(entry["reason"], "autoban: pregreet", "{entry}");
    assert!(
        gw.log().contains("taken back from the store"),
        "{}",
        gw.log()
    );

    // The pass: the client that delivered skips the greet pause; a new one does not.
    let known = banner(addr, PASSED);
    assert!(
        known.starts_with("220 ") && !known.contains('\n'),
        "the client that passed before the crash waited for the greet pause: {known:?}"
    );
    assert!(
        banner(addr, NEW).starts_with("220-"),
        "greet pause for a new client"
    );

    // The count: one more pregreet bans the bot counted before the crash, one pregreet does
    // not ban a bot seen only now (its event is handled before COUNTED's).
    pregreet(addr, ONCE);
    pregreet(addr, COUNTED);
    wait_banned(&gw, COUNTED);
    assert!(
        block_entry(&gw, ONCE).is_none(),
        "a single pregreet banned {ONCE}: counts are not what they seem"
    );
    drop(gw);
    drop(sink);
}

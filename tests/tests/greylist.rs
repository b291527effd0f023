//! End-to-end tests of greylisting (issue 12 §3): real `smtp-gateway run` daemons on loopback in
//! front of one private Postfix backend per test binary (`support/postfix.rs`).
//!
//! - [`a_retrying_postfix_delivers_after_the_delay`]: a real sending Postfix (short backoff)
//!   relays through the gateway: its first attempt is deferred `451 4.7.1`, its own retry
//!   delivers; the test waits for the message in the backend's Maildir.
//! - [`pipelined_recipients_each_get_their_answer_and_never_count_as_errors`]: every RCPT of a
//!   pipelined group gets its own `451`, DATA then `554`; more deferrals than `smtp.max_errors`
//!   neither close the session nor fire a check.
//! - [`dnswl_big_senders_and_recent_passes_are_never_greylisted`]: the test kit's DNS responder
//!   lists one client in a DNSWL (negative weight) and publishes SPF for a big sender and for an
//!   ordinary domain; a client that delivered through a listener whose profile does not
//!   greylist is in the pass cache; a new client with ordinary SPF pass is greylisted.
//! - [`a_retry_to_a_second_gateway_sharing_redis_passes`]: two gateways on one private
//!   `redis-server`; a triplet deferred on A passes at its first sight on B once the delay is
//!   over (observed on A with a sibling triplet).
//!
//! Authenticated sessions: `smtp-gateway/tests/submission_auth.rs` (the backend must offer AUTH).
//!
//! Needs root (bpffs pins), `postfix` and `redis-server`. Build the daemon first:
//! `cargo build && cargo test -p smtp-gateway-tests --test greylist`.

#[allow(dead_code)]
#[path = "support/gateway.rs"]
mod gateway;
#[allow(dead_code)]
#[path = "support/postfix.rs"]
mod postfix;
#[allow(dead_code)]
#[path = "support/sender.rs"]
mod sender;
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
    time::{Duration, Instant},
};

use gateway::{Gateway, GatewaySpec};
use smtp_client::Client;
use smtp_gateway_test_kit::{DnsResponder, Records};
use support::netns::wait_until;

/// Wait for a delivery, a log line, a store write.
const WITHIN: Duration = Duration::from_secs(30);
/// How long a sending Postfix is left to retry on its own before its queue is flushed (longer
/// than the greylisting delay of the retry test).
const RETRY_KICK: Duration = Duration::from_secs(4);
/// The reply to a greylisted recipient.
const GREYLISTED: &str = "451 4.7.1 Greylisted, please try again later";

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("IPv4 address")
}

/// `[greylist]` on with `delay`.
fn greylist(delay: &str) -> String {
    format!("[greylist]\nenabled = true\ndelay = \"{delay}\"\n")
}

/// A message to `to`.
fn message(to: &str) -> String {
    format!("From: a@test\r\nTo: {to}\r\nSubject: greylist\r\n\r\nbody\r\n")
}

/// One transaction from `source`: the reply to the first command not positive, or to the text.
fn attempt(gw: std::net::SocketAddr, source: &str, from: &str, to: &str) -> String {
    let mut c = Client::connect(gw, ip(source));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.send(from, to, &message(to));
    let _ = c.cmd("QUIT");
    r
}

#[test]
fn a_retrying_postfix_delivers_after_the_delay() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient").extra(&greylist("2s")));
    let source: IpAddr = ip("127.0.0.21").into();
    let sender = sender::Sender::start("retry", gw.addr(), source, Duration::from_secs(1));
    let to = "grey-retry@example.org";
    let r = attempt(sender.smtpd, "127.0.0.1", "Someone+list@Sender.test", to);
    assert!(r.starts_with("250"), "the sender queued it: {r}");
    // The sender's first attempt is deferred by the gateway ...
    assert!(
        wait_until(WITHIN, Duration::from_millis(50), || sender
            .maillog()
            .lines()
            .any(|l| l.contains("status=deferred") && l.contains("Greylisted"))),
        "no deferral in the sender's log:\n{}",
        sender.maillog()
    );
    assert_eq!(pf.count("grey-retry"), 0, "delivered before the retry");
    // ... and its own retry, after the delay, is delivered. With 1 s timers the sender's queue
    // manager can meet the file still locked by the agent that deferred it (its log says
    // "skipped, still being delivered", seen twice in CI): it then puts the file in the incoming
    // queue time-stamped 60 s ahead (Postfix's qmgr_active_feed), past this test's wait, and a
    // reload does not bring it back. Until the message arrives, the sender's queue is flushed
    // every few seconds (`postqueue -f` scans every queue ignoring time stamps); every attempt
    // is still the sending Postfix's own, through the gateway.
    let deadline = Instant::now() + WITHIN;
    let mut next_kick = Instant::now() + RETRY_KICK;
    while pf.count("grey-retry") == 0 && Instant::now() < deadline {
        if Instant::now() >= next_kick {
            sender.flush();
            next_kick = Instant::now() + RETRY_KICK;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let delivered = pf.wait_messages("grey-retry", 1, Duration::from_secs(1));
    assert_eq!(delivered.len(), 1);
    assert!(
        wait_until(WITHIN, Duration::from_millis(50), || sender
            .maillog()
            .lines()
            .any(|l| l.contains("status=sent") && l.contains(to))),
        "the sender never logged the delivery:\n{}",
        sender.maillog()
    );
    // The deferral and the pass are the gateway's, for this client.
    assert!(gw.wait_logged(&["greylisted", "127.0.0.21", "deferred"], WITHIN));
    let log = gw.log();
    assert!(
        !log.contains("check fired"),
        "a deferral fired a check:\n{log}"
    );
    drop(sender);
}

#[test]
fn pipelined_recipients_each_get_their_answer_and_never_count_as_errors() {
    let pf = postfix::shared();
    let gw = Gateway::start(
        GatewaySpec::new(pf.xclient, "xclient")
            .smtp("max_errors", "3")
            .extra(&greylist("1h")),
    );
    let mut c = Client::connect(gw.addr(), ip("127.0.0.22"));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let replies = c.pipeline(&[
        "MAIL FROM:<bounce-1234@lists.test>",
        "RCPT TO:<grey-pipe-a@example.org>",
        "RCPT TO:<grey-pipe-b@example.org>",
        "DATA",
    ]);
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert_eq!(replies[1], GREYLISTED, "{replies:?}");
    assert_eq!(replies[2], GREYLISTED, "{replies:?}");
    assert!(replies[3].starts_with("554"), "{replies:?}");
    assert!(c.cmd("RSET").starts_with("250"));
    // Many more deferrals than smtp.max_errors: the session stays open, nothing fires.
    assert!(
        c.cmd("MAIL FROM:<bounce-5678@lists.test>")
            .starts_with("250")
    );
    for n in 0..10 {
        let r = c.cmd(&format!("RCPT TO:<grey-many-{n}@example.org>"));
        assert_eq!(r, GREYLISTED, "recipient {n}");
    }
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(gw.wait_logged(&["127.0.0.22", "tempfailed"], WITHIN));
    let log = gw.log();
    assert!(!log.contains("check fired"), "{log}");
    assert_eq!(pf.count("grey-pipe-a") + pf.count("grey-pipe-b"), 0);
}

/// The responder of the bypass test: a DNSWL listing 127.0.0.31, SPF for a big sender and for
/// an ordinary domain (both authorising loopback).
fn bypass_dns() -> DnsResponder {
    DnsResponder::start(
        Records::new()
            .a("31.0.0.127.wl.test", &[ip("127.0.10.2")])
            .txt("big.test", &["v=spf1 ip4:127.0.0.0/24 -all"])
            .txt("small.test", &["v=spf1 ip4:127.0.0.0/24 -all"]),
    )
    .expect("start the DNS responder")
}

#[test]
fn dnswl_big_senders_and_recent_passes_are_never_greylisted() {
    let pf = postfix::shared();
    let dns = bypass_dns();
    let gw = Gateway::start(
        GatewaySpec::new(pf.xclient, "xclient")
            .listener_with_profile("smtp", "nogrey")
            .extra(&format!(
                "[dns]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\nattempts = 1\n\n\
                 [dnsbl]\nenabled = true\nthreshold = 3\nsites = [\"wl.test=127.0.10.[0..255]*-5\"]\n\n\
                 [spf]\nenabled = true\n\n\
                 [profiles.nogrey]\ngreylist = false\n\n\
                 {}spf_bypass_domains = [\"big.test\"]\n",
                dns.addr(),
                greylist("1h")
            )),
    );
    let (mx, nogrey) = (gw.listeners[0], gw.listeners[1]);
    // The control: a new client with an ordinary SPF pass is greylisted.
    assert_eq!(
        attempt(mx, "127.0.0.30", "a@small.test", "grey-control@example.org"),
        GREYLISTED
    );
    // A DNSWL-listed client.
    let r = attempt(mx, "127.0.0.31", "a@small.test", "grey-dnswl@example.org");
    assert!(r.starts_with("250"), "DNSWL: {r}");
    // SPF pass for a big sender (and a subdomain of it would do too).
    let r = attempt(mx, "127.0.0.32", "news+x@big.test", "grey-big@example.org");
    assert!(r.starts_with("250"), "big sender: {r}");
    // A client that delivered through the listener that does not greylist passed recently.
    let r = attempt(
        nogrey,
        "127.0.0.33",
        "a@small.test",
        "grey-first@example.org",
    );
    assert!(r.starts_with("250"), "no greylisting on that profile: {r}");
    let r = attempt(mx, "127.0.0.33", "a@small.test", "grey-recent@example.org");
    assert!(r.starts_with("250"), "passed recently: {r}");
    for local in ["grey-dnswl", "grey-big", "grey-first", "grey-recent"] {
        pf.wait_messages(local, 1, WITHIN);
    }
    assert_eq!(pf.count("grey-control"), 0);
    let log = gw.log();
    assert_eq!(log.matches("greylisted").count(), 1, "{log}");
}

/// A directory of this test, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_retry_to_a_second_gateway_sharing_redis_passes() {
    let dir = TempDir(std::env::temp_dir().join(format!("sgw-grey-redis-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("test dir");
    let redis = store_lab::Redis::start(&dir.0);
    let pf = postfix::shared();
    let node = |name: &str| {
        Gateway::start(
            GatewaySpec::new(pf.xclient, "xclient")
                // No pass cache: B must judge the triplet, not the client's earlier delivery.
                .smtp("pass_cache_ttl", "\"0s\"")
                .extra(&format!(
                    "{}\n[store]\nengine = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"grey:\"\n\
                 node = \"{name}\"\nbudget = \"500ms\"\nretry_interval = \"100ms\"\n",
                    greylist("2s"),
                    redis.url()
                )),
        )
    };
    let (a, b) = (node("node-a"), node("node-b"));
    let source = "127.0.0.41";
    let from = "prvs=1234abcdef=user@sender.test";
    // Two triplets deferred on A in one session.
    let mut c = Client::connect(a.addr(), ip(source));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    assert_eq!(c.cmd("RCPT TO:<grey-fleet-a@example.org>"), GREYLISTED);
    assert_eq!(c.cmd("RCPT TO:<grey-fleet-b@example.org>"), GREYLISTED);
    assert!(c.cmd("QUIT").starts_with("221"));
    let deferred_at = Instant::now();
    assert!(
        wait_until(WITHIN, Duration::from_millis(20), || redis
            .cli(&["KEYS", "grey:greylist/*"])
            .lines()
            .count()
            == 2),
        "the triplets never reached Redis: {}",
        redis.cli(&["KEYS", "grey:*"])
    );
    // The first triplet, retried on A like an MTA would (bounded), passes once the delay is
    // over ...
    let mut tries = 0;
    loop {
        tries += 1;
        let r = attempt(a.addr(), source, from, "grey-fleet-a@example.org");
        if r.starts_with("250") {
            break;
        }
        assert_eq!(r, GREYLISTED);
        assert!(
            tries < 200 && deferred_at.elapsed() < WITHIN,
            "A never let the retry through"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        deferred_at.elapsed() >= Duration::from_secs(2),
        "passed before the delay"
    );
    // ... so the second one's retry, reaching B (which never saw it), passes at once.
    let r = attempt(
        b.addr(),
        source,
        "user@sender.test",
        "grey-fleet-b@example.org",
    );
    assert!(
        r.starts_with("250"),
        "B greylisted a retry A had deferred: {r}\n{}",
        b.log()
    );
    pf.wait_messages("grey-fleet-a", 1, WITHIN);
    pf.wait_messages("grey-fleet-b", 1, WITHIN);
    assert!(!b.log().contains("greylisted"), "{}", b.log());
}

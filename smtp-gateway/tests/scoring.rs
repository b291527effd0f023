//! Scores through live sessions: `score`-action checks add up to tarpit (slowed replies), tempfail
//! (451) and reject (550); a client that delivered cleanly is remembered and skips the greet
//! pause next time. Needs root (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::time::{Duration, Instant};

use peers::{Gateway, scripted_backend_on_loopback};

/// helo_not_fqdn scores 1, helo_dynamic 1, helo_unbracketed_literal 1 (the defaults' weights).
const SCORING: &str = "tarpit_delay = \"1s\"\n[score]\ntarpit = 1\ntempfail = 2\nreject = 3";

#[test]
fn scores_slow_then_tempfail_then_reject() {
    let (addr, _seen) = scripted_backend_on_loopback(3);
    let gw = Gateway::start("score", addr, SCORING);

    // Score 0: no delay, mail goes through.
    let mut c = gw.client();
    let t = Instant::now();
    assert!(c.cmd("EHLO mail.goodcorp.example").starts_with("250"));
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "no tarpit at score 0"
    );
    assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    c.cmd("QUIT");

    // Score 1 (single-label HELO): replies are slowed, mail still accepted.
    let mut c = gw.greeted("localhostish");
    let t = Instant::now();
    c.expect("MAIL FROM:<a@example.net>", "250");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "tarpit slows the reply: {:?}",
        t.elapsed()
    );
    c.cmd("QUIT");

    // Score 2 (single label + dynamic pattern): 451 at MAIL.
    let mut c = gw.greeted("dsl");
    c.expect("MAIL FROM:<a@example.net>", "451 4.7.1");
    c.cmd("QUIT");

    // Score 3 (not a FQDN, a dynamic pattern, and the client's own address in it): 550.
    let mut c = gw.greeted("dsl-127-0-0-1");
    c.expect("MAIL FROM:<a@example.net>", "550 5.7.1");
    let log = gw.log();
    assert!(
        log.contains("helo_embedded_ip") && log.contains("helo_dynamic"),
        "{log}"
    );
}

#[test]
fn a_clean_client_skips_the_greet_pause_next_time() {
    let (addr, _seen) = scripted_backend_on_loopback(2);
    let gw = Gateway::start("cache", addr, "greet_pause = \"1s\"");

    let t = Instant::now();
    let mut c = gw.client();
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "first visit waits the greet pause"
    );
    assert!(c.cmd("EHLO mail.goodcorp.example").starts_with("250"));
    c.open_message();
    assert!(c.cmd("Subject: hi\r\n\r\nhello\r\n.").starts_with("250"));
    c.cmd("QUIT");

    let t = Instant::now();
    let _c = gw.client();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "a client that delivered cleanly skips the pause: {:?}",
        t.elapsed()
    );
}

#[test]
fn a_repeated_helo_name_scores_once() {
    // Every STARTTLS client says its EHLO twice (RFC 3207 wants it again inside TLS), and the
    // same name is the same evidence: the second EHLO must not add the finding's weight again.
    let (addr, _seen) = scripted_backend_on_loopback(1);
    let gw = Gateway::start("rehelo", addr, SCORING);
    // Score 1 (single-label HELO): the tarpit, but mail is accepted.
    let mut c = gw.greeted("localhostish");
    c.expect("EHLO localhostish", "250");
    c.expect("EHLO localhostish", "250");
    c.expect("MAIL FROM:<a@example.net>", "250");
    c.cmd("QUIT");
    let log = gw.log();
    assert!(log.contains("helo_not_fqdn"), "{log}");
}

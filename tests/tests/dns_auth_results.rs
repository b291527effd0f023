//! End-to-end tests of SPF at MAIL FROM and the `Authentication-Results` header (issue 11 §2):
//! real `smtp-gateway run` daemons in front of one private Postfix per test binary
//! (`support/postfix.rs`), the test kit's DNS responder on loopback as their only name server.
//!
//! Results: pass, fail (refused `550 5.7.23`), softfail, none, permerror (two records),
//! temperror (a zone that never answers; set to `reject`, so it must be `451 4.7.24`), the null
//! sender judged by its HELO name; the header in the delivered message, a forged one with our
//! authserv-id gone (folded lines included, and in BDAT chunks that cut the field anywhere), one
//! of another id kept. (Client names over loopback
//! are always `localhost` to the resolver, RFC 6761: FCrDNS is tested in `netns_client_names.rs`.)
//!
//! Needs root (bpffs pins, Postfix) and the `postfix` package. Build the daemon first:
//! `cargo build && cargo test -p smtp-gateway-tests --test dns_auth_results`.

// Support modules are written for several test binaries: not every helper is used by each.
#[allow(dead_code)]
#[path = "support/gateway.rs"]
mod gateway;
#[allow(dead_code)]
#[path = "support/postfix.rs"]
mod postfix;
#[allow(dead_code)]
#[path = "support/smtp_client.rs"]
mod smtp_client;
#[allow(dead_code)]
mod support;

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use gateway::{Gateway, GatewaySpec};
use smtp_client::Client;
use smtp_gateway_test_kit::{DnsResponder, Records};

/// Wait for a delivery to show up in a Maildir.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The client's source address (the SPF records below authorise 127.0.0.0/24).
const GOOD: &str = "127.0.0.2";

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("IPv4 address")
}

/// The responder's table: the SPF records of the tests.
fn dns() -> DnsResponder {
    DnsResponder::start(
        Records::new()
            .txt("pass.test", &["v=spf1 ip4:127.0.0.0/24 -all"])
            .txt("fail.test", &["v=spf1 ip4:192.0.2.0/24 -all"])
            .txt("soft.test", &["v=spf1 ~all"])
            .txt("two.test", &["v=spf1 -all"])
            .txt("two.test", &["v=spf1 +all"])
            .txt("helo.test", &["v=spf1 a -all"])
            .a("helo.test", &[ip(GOOD)])
            .txt("badhelo.test", &["v=spf1 -all"])
            .silent("slow.test"),
    )
    .expect("start the DNS responder")
}

/// A gateway in front of `backend` (XCLIENT) with FCrDNS on, asking only `dns`; `extra` adds
/// sections.
fn gateway(dns: &DnsResponder, backend: SocketAddr, extra: &str) -> Gateway {
    Gateway::start(GatewaySpec::new(backend, "xclient").extra(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"300ms\"\nattempts = 1\n\n\
         [fcrdns]\nenabled = true\ntimeout = \"1s\"\n\n{extra}",
        dns.addr()
    )))
}

/// A plain message to `to`.
fn message(to: &str) -> String {
    format!("From: a@test\r\nTo: {to}\r\nSubject: dns identity\r\n\r\nbody\r\n")
}

/// One session from `source` (EHLO `helo`) that sends `from` -> `local@example.org`.
fn session(gw: &Gateway, source: &str, helo: &str, from: &str, local: &str) -> String {
    let mut c = Client::connect(gw.addr(), ip(source));
    let ehlo = c.cmd(&format!("EHLO {helo}"));
    assert!(ehlo.starts_with("250"), "EHLO: {ehlo}");
    let to = format!("{local}@example.org");
    let r = c.send(from, &to, &message(&to));
    let _ = c.cmd("QUIT");
    r
}

/// The one message delivered to `local@example.org`, as text.
fn delivered(local: &str) -> String {
    let pf = postfix::shared();
    let messages = pf.wait_messages(local, 1, DELIVERY_TIMEOUT);
    assert_eq!(messages.len(), 1, "{local}: one message expected");
    String::from_utf8_lossy(&messages[0]).into_owned()
}

// ---- SPF and Authentication-Results ----

/// A gateway for the SPF tests: FCrDNS and SPF on, `temperror` refused (so it must be a 451).
fn spf_gateway(dns: &DnsResponder) -> Gateway {
    let pf = postfix::shared();
    gateway(
        dns,
        pf.xclient,
        "[spf]\nenabled = true\ntimeout = \"2s\"\ntemperror = { action = \"reject\" }\n",
    )
}

#[test]
fn spf_pass_softfail_permerror_are_delivered_with_their_result() {
    let dns = dns();
    let gw = spf_gateway(&dns);
    for (from, local, result) in [
        (
            "a@pass.test",
            "spf-pass",
            "spf=pass smtp.mailfrom=a@pass.test",
        ),
        (
            "a@soft.test",
            "spf-soft",
            "spf=softfail smtp.mailfrom=a@soft.test",
        ),
        (
            "a@two.test",
            "spf-two",
            "spf=permerror smtp.mailfrom=a@two.test",
        ),
        (
            "a@none.test",
            "spf-none",
            "spf=none smtp.mailfrom=a@none.test",
        ),
    ] {
        let r = session(&gw, GOOD, "mx.good.test", from, local);
        assert!(r.starts_with("250"), "{from}: {r}");
        let text = delivered(local);
        assert!(
            text.contains(result),
            "{from}: {result} expected in\n{text}"
        );
        assert_eq!(text.matches("Authentication-Results:").count(), 1, "{text}");
    }
}

#[test]
fn spf_fail_is_refused_and_temperror_is_never_a_5xx() {
    let dns = dns();
    let gw = spf_gateway(&dns);
    let r = session(&gw, GOOD, "mx.good.test", "a@fail.test", "spf-fail");
    assert!(r.starts_with("550 5.7.23"), "{r}");
    let r = session(&gw, GOOD, "mx.good.test", "a@slow.test", "spf-slow");
    assert!(r.starts_with("451 4.7.24"), "{r}");
    assert_eq!(
        postfix::shared().count("spf-fail") + postfix::shared().count("spf-slow"),
        0
    );
}

#[test]
fn the_null_sender_is_judged_by_its_helo() {
    let dns = dns();
    let gw = spf_gateway(&dns);
    let r = session(&gw, GOOD, "helo.test", "", "spf-null");
    assert!(r.starts_with("250"), "{r}");
    let text = delivered("spf-null");
    assert!(text.contains("spf=pass smtp.helo=helo.test"), "{text}");
    let r = session(&gw, GOOD, "badhelo.test", "", "spf-null-fail");
    assert!(r.starts_with("550 5.7.23"), "{r}");
}

#[test]
fn a_forged_header_with_our_id_is_removed_and_others_stay() {
    let dns = dns();
    let gw = spf_gateway(&dns);
    let mut c = Client::connect(gw.addr(), ip(GOOD));
    assert!(c.cmd("EHLO mx.good.test").starts_with("250"));
    let to = "spf-forged@example.org";
    let text = format!(
        "Authentication-Results: GW.test; spf=pass\r\n\tsmtp.mailfrom=forged@forged.example\r\n\
         Authentication-Results: other.test; spf=fail smtp.mailfrom=kept@kept.example\r\n\
         Authentication-Results:\r\n gw.test; dkim=pass header.d=forged2.example\r\n\
         From: a@test\r\nTo: {to}\r\nSubject: forged\r\n\r\n\
         Authentication-Results: gw.test; in the body stays\r\n"
    );
    let r = c.send("a@pass.test", to, &text);
    assert!(r.starts_with("250"), "{r}");
    let _ = c.cmd("QUIT");
    let delivered = delivered("spf-forged");
    assert!(!delivered.contains("forged.example"), "{delivered}");
    assert!(!delivered.contains("forged2.example"), "{delivered}");
    assert!(delivered.contains("kept@kept.example"), "{delivered}");
    assert!(
        delivered.contains("spf=pass smtp.mailfrom=a@pass.test"),
        "{delivered}"
    );
    assert!(
        delivered.contains("Authentication-Results: gw.test; in the body stays"),
        "{delivered}"
    );
}

#[test]
fn a_forged_header_cut_across_bdat_chunks_is_removed() {
    let dns = dns();
    let gw = spf_gateway(&dns);
    let mut c = Client::connect(gw.addr(), ip(GOOD));
    assert!(c.cmd("EHLO mx.good.test").starts_with("250"));
    let to = "spf-forged-bdat@example.org";
    assert!(c.cmd("MAIL FROM:<a@pass.test>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
    // The forged field is cut inside its authserv-id, then inside its folded line; a field of
    // another id and a bare-LF line end stay as they are (BDAT bytes are opaque).
    let chunks: [&[u8]; 4] = [
        b"Authentication-Results: GW.te",
        b"st; spf=pass\r\n\tsmtp.mailfrom=forged@forged",
        b".example\r\nAuthentication-Results: other.test; spf=fail smtp.mailfrom=kept@kept.example\n",
        b"From: a@test\r\nSubject: forged in chunks\r\n\r\nAuthentication-Results: gw.test; body\r\n",
    ];
    for (k, chunk) in chunks.iter().enumerate() {
        let last = k + 1 == chunks.len();
        let r = c.chunk(chunk, last);
        assert!(r.starts_with("250"), "chunk {k}: {r}");
    }
    let _ = c.cmd("QUIT");
    let delivered = delivered("spf-forged-bdat");
    assert!(!delivered.contains("forged.example"), "{delivered}");
    assert!(!delivered.contains("GW.te"), "{delivered}");
    assert!(delivered.contains("kept@kept.example"), "{delivered}");
    assert!(
        delivered.contains("spf=pass smtp.mailfrom=a@pass.test"),
        "{delivered}"
    );
    assert!(
        delivered.contains("Authentication-Results: gw.test; body"),
        "{delivered}"
    );
}

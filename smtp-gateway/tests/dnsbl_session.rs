//! DNSBL scoring through a live session, against a DNS server of the test's own on loopback (the
//! system resolver is never used): a listed client is refused at MAIL FROM, and a DNS server
//! that never answers never costs a client its mail. Needs root (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::Duration,
};

use peers::{Gateway, scripted_backend};
use smtp_gateway_test_kit::{DnsResponder, Records};

/// The client as the lists see it, and the zone the test lists it in.
const CLIENT_IN_ZEN: &str = "1.0.0.127.zen.test";

/// A DNS server on loopback with `records`; panics when it cannot start.
fn dns_server(records: Records) -> DnsResponder {
    DnsResponder::start(records).unwrap_or_else(|e| panic!("{e}"))
}

fn dnsbl_section(dns: SocketAddr, timeout: &str) -> String {
    format!(
        "[checks]\ndnsbl = {{ action = \"reject\" }}\n\
         [dnsbl]\nenabled = true\nnameservers = [\"{dns}\"]\ntimeout = \"{timeout}\"\nthreshold = 3\n\
         sites = [\"zen.test=127.0.0.[2..11]*3\"]"
    )
}

#[test]
fn a_listed_client_is_refused_at_mail_from() {
    let dns = dns_server(Records::new().a(CLIENT_IN_ZEN, &[Ipv4Addr::new(127, 0, 0, 2)]));
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let _seen = scripted_backend(backend.try_clone().expect("clone"), 1);
    let gw = Gateway::start(
        "dnsbl-hit",
        backend.local_addr().expect("addr"),
        &dnsbl_section(dns.addr(), "2s"),
    );
    let mut c = gw.client();
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    let mail = c.cmd("MAIL FROM:<a@example.net>");
    assert!(
        mail.starts_with("554 5.7.1"),
        "listed client refused: {mail}"
    );
    let queried = dns.queries();
    assert!(
        queried.iter().any(|n| n == CLIENT_IN_ZEN),
        "reversed-octet query: {queried:?}"
    );
    assert!(
        gw.log().contains("check=\"dnsbl\"") || gw.log().contains("check=dnsbl"),
        "{}",
        gw.log()
    );
}

#[test]
fn a_silent_dns_server_never_rejects_mail() {
    let dns = dns_server(Records::new().silent("zen.test"));
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let _seen = scripted_backend(backend.try_clone().expect("clone"), 1);
    let gw = Gateway::start(
        "dnsbl-silent",
        backend.local_addr().expect("addr"),
        &dnsbl_section(dns.addr(), "500ms"),
    );
    let mut c = gw.client();
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    let started = std::time::Instant::now();
    let mail = c.cmd("MAIL FROM:<a@example.net>");
    assert!(
        mail.starts_with("250"),
        "a DNS failure never rejects mail: {mail}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by dnsbl.timeout"
    );
    assert!(!dns.queries().is_empty(), "the DNS server was asked");
}

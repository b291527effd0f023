//! DNSBL scoring through a live session, against a DNS server of the test's own on loopback (the
//! system resolver is never used): a listed client is refused at MAIL FROM, and a DNS server
//! that never answers never costs a client its mail. Needs root (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use peers::{Gateway, gateway};
use smtp_gateway_test_kit::{DnsResponder, Records};

/// The client as the lists see it, and the zone the test lists it in.
const CLIENT_IN_ZEN: &str = "1.0.0.127.zen.test";

/// A DNS server on loopback with `records` (panics when it cannot start), and the daemon
/// scoring through it with a DNSBL `timeout`, in front of a scripted backend.
fn dnsbl_gateway(tag: &str, records: Records, timeout: &str) -> (DnsResponder, Gateway) {
    let dns = DnsResponder::start(records).unwrap_or_else(|e| panic!("{e}"));
    let gw = gateway(tag, &dnsbl_section(dns.addr(), timeout), 1);
    (dns, gw)
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
    let records = Records::new().a(CLIENT_IN_ZEN, &[Ipv4Addr::new(127, 0, 0, 2)]);
    let (dns, gw) = dnsbl_gateway("dnsbl-hit", records, "2s");
    let mut c = gw.greeted("client.example.net");
    c.expect_that(
        "MAIL FROM:<a@example.net>",
        "554 5.7.1",
        "listed client refused",
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
    let (dns, gw) = dnsbl_gateway("dnsbl-silent", Records::new().silent("zen.test"), "500ms");
    let mut c = gw.greeted("client.example.net");
    let started = std::time::Instant::now();
    c.expect_that(
        "MAIL FROM:<a@example.net>",
        "250",
        "a DNS failure never rejects mail",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by dnsbl.timeout"
    );
    assert!(!dns.queries().is_empty(), "the DNS server was asked");
}

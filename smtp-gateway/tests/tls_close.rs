//! The end of a TLS session: the `221` to QUIT and the gateway's close_notify reach the client in
//! one segment (one write, one wake-up of the client), not a write each. Runs the real daemon on
//! an implicit-TLS port in front of a scripted backend. Needs root (bpffs pins).

use std::{io::Read, net::TcpStream};

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use peers::{Gateway, scripted_backend_on_loopback};

/// Data segments the client's socket has received so far.
fn received(tcp: &TcpStream) -> u32 {
    smtp_gateway_test_kit::tcp_info::data_segments(tcp)
        .expect("TCP_INFO")
        .1
}

#[test]
fn the_reply_to_quit_and_the_close_notify_arrive_in_one_segment() {
    let (backend, _seen) = scripted_backend_on_loopback(1);
    let gw = Gateway::start_tls(
        "tls-close",
        backend,
        "smtps\", profile = \"mx",
        "greet_pause = \"0s\"\n[autoban]\nenabled = false",
    );
    let mut client = gw.tls_client();
    let banner = client.reply();
    assert!(banner.starts_with("220 "), "{banner}\n{}", gw.child.log());
    client.expect("EHLO client.example.net", "250");
    let before = received(&client.stream.get_ref().sock);
    client.expect("QUIT", "221");
    // The rest, to the close_notify (read_to_end fails on a TCP close without one).
    let mut rest = Vec::new();
    client
        .stream
        .read_to_end(&mut rest)
        .expect("a clean TLS close");
    assert!(rest.is_empty(), "after the 221: {rest:?}");
    let segments = received(&client.stream.get_ref().sock) - before;
    assert_eq!(
        segments,
        1,
        "the 221 and the close_notify came in {segments} segments\n{}",
        gw.child.log()
    );
}

//! Pregreet detection on implicit TLS without a greet pause: a client whose first protected bytes
//! (an `EHLO`) arrive with its TLS handshake, before the gateway could send its banner, is a
//! pregreeter (`521 5.5.1`, inside TLS) just as on a plaintext port; a client that waits for the
//! banner is served. Runs the real daemon on an implicit-TLS port in front of a scripted
//! backend. Needs root (bpffs pins).

use std::{
    io::{Read, Write},
    net::TcpStream,
};

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use peers::{Gateway, scripted_backend_on_loopback};

/// Everything the gateway says until it closes (TLS close or EOF).
fn read_all(tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> String {
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_client_talking_before_the_tls_protected_banner_is_a_pregreeter() {
    let (backend, _seen) = scripted_backend_on_loopback(1);
    // No greet pause: the banner goes out right after the handshake. An implicit-TLS listener
    // for MX-style traffic: its kind's default profile (submission) ignores pregreet.
    let gw = Gateway::start_tls(
        "pregreet",
        backend,
        "smtps\", profile = \"mx",
        "greet_pause = \"0s\"\n[autoban]\nenabled = false",
    );

    // The EHLO is queued before the handshake ends: rustls sends it right behind the client's
    // Finished, in the same flight, so it is there before the gateway could greet.
    let mut bot = gw.tls();
    bot.conn
        .writer()
        .write_all(b"EHLO bot.example\r\n")
        .expect("queue");
    while bot.conn.is_handshaking() {
        bot.conn.complete_io(&mut bot.sock).expect("handshake");
    }
    bot.flush().expect("send");
    let answer = read_all(&mut bot);
    assert!(
        answer.starts_with("521 5.5.1"),
        "the bot got {answer:?}\n{}",
        gw.child.log()
    );
    assert!(
        !answer.contains("220 "),
        "no banner for the bot: {answer:?}"
    );

    // A client that waits for the banner is served.
    let mut client = gw.tls_client();
    let banner = client.reply();
    assert!(banner.starts_with("220 "), "{banner}");
    assert!(client.cmd("EHLO client.example.net").starts_with("250"));
    assert!(client.cmd("QUIT").starts_with("221"));
    let log = gw.child.log();
    assert!(
        log.contains("pregreet"),
        "the check is logged for the bot:\n{log}"
    );
}

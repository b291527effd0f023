//! AUTH on submission: offered only inside TLS, relayed to the backend (which decides), and an
//! authenticated client may relay to any domain while an anonymous one may not. Runs the real
//! daemon on an implicit-TLS port in front of a scripted backend. Needs root (bpffs pins).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
};

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use peers::{Client, GOOD_PLAIN, Gateway, Step, backend_script, scripted_backend_on_loopback};

/// A client of the gateway over TLS.
type TlsClient = Client<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// The daemon on an implicit-TLS (`smtps`) port in front of `backend`, and a TLS client of it
/// that has read the banner. The listener runs the `mx` profile, not its kind's default
/// (`submission`, which wants AUTH before MAIL): anonymous MAIL is allowed, so what these tests
/// see is the relay rules' own answer to a client with or without a login.
fn smtps(tag: &str, backend: SocketAddr) -> (Gateway, TlsClient) {
    let gw = Gateway::start_tls(tag, backend, "smtps\", profile = \"mx", "");
    let mut c = gw.tls_client();
    assert!(c.reply().starts_with("220 "));
    (gw, c)
}

#[test]
fn auth_is_relayed_on_implicit_tls_and_lets_the_client_relay() {
    let (backend, seen) = scripted_backend_on_loopback(1);
    let (_gw, mut c) = smtps("smtps", backend);
    let ehlo = c.cmd("EHLO client.example.net");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN"),
        "backend mechanisms offered inside TLS: {ehlo}"
    );
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    c.expect_that(
        "RCPT TO:<friend@elsewhere.test>",
        "550 5.7.1",
        "anonymous relay refused",
    );
    assert!(c.cmd("RSET").starts_with("250"));
    c.expect("AUTH PLAIN AHVzZXIAd3Jvbmc=", "535");
    c.expect(&format!("AUTH PLAIN {GOOD_PLAIN}"), "235");
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    c.expect_that(
        "RCPT TO:<friend@elsewhere.test>",
        "250",
        "authenticated client may relay",
    );
    c.expect_that(
        "RCPT TO:<friend%evil.test@example.org>",
        "550 5.7.1",
        "address tricks stay refused",
    );
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: t\r\n\r\nhello\r\n.").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let seen = seen.join().expect("backend");
    assert!(
        seen.iter()
            .any(|l| l == &format!("AUTH PLAIN {GOOD_PLAIN}")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == "RCPT TO:<friend@elsewhere.test>"),
        "{seen:?}"
    );
}

#[test]
fn a_login_lifts_the_score_of_the_session() {
    // A roaming user's mail client behind NAT greets with a name the HELO checks score (here
    // not a FQDN, a dynamic pattern and the client's own address: 3, the default tempfail).
    // Once the backend accepted its login, the score no longer refuses its mail, as Postfix's
    // permit_sasl_authenticated comes before every restriction.
    let (backend, _seen) = scripted_backend_on_loopback(1);
    let gw = Gateway::start_tls(
        "authscore",
        backend,
        "smtps\", profile = \"mx",
        "tarpit_delay = \"0s\"",
    );
    let mut c = gw.tls_client();
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO dsl-127-0-0-1").starts_with("250"));
    c.expect_that(
        "MAIL FROM:<user@example.net>",
        "451 4.7.1",
        "the score refuses an anonymous client",
    );
    c.expect(&format!("AUTH PLAIN {GOOD_PLAIN}"), "235");
    c.expect_that(
        "MAIL FROM:<user@example.net>",
        "250",
        "the score does not refuse an authenticated one",
    );
    c.expect("RCPT TO:<friend@elsewhere.test>", "250");
    assert!(c.cmd("QUIT").starts_with("221"));
}

#[test]
fn an_authenticated_session_is_never_greylisted() {
    let (backend, seen) = scripted_backend_on_loopback(1);
    let gw = Gateway::start_tls(
        "greylist",
        backend,
        "smtps\", profile = \"mx",
        "[greylist]\nenabled = true\ndelay = \"1h\"\n",
    );
    let mut c = gw.tls_client();
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    // Anonymous on the same listener: greylisted (the listener's profile is `mx`).
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    c.expect_that(
        "RCPT TO:<friend@example.org>",
        "451 4.7.1",
        "an anonymous client is greylisted",
    );
    assert!(c.cmd("RSET").starts_with("250"));
    c.expect(&format!("AUTH PLAIN {GOOD_PLAIN}"), "235");
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    c.expect_that(
        "RCPT TO:<friend@example.org>",
        "250",
        "the same triplet, authenticated, is not greylisted",
    );
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: t\r\n\r\nhello\r\n.").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let seen = seen.join().expect("backend");
    assert_eq!(
        seen.iter()
            .filter(|l| *l == "RCPT TO:<friend@example.org>")
            .count(),
        1,
        "only the authenticated RCPT reached the backend: {seen:?}"
    );
    // Counted: one deferral, one bypass.
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.metrics_port)).expect("metrics");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    tcp.read_to_string(&mut body).expect("response");
    for line in [
        "smtp_gateway_greylist_total{result=\"deferred\"} 1",
        "smtp_gateway_greylist_total{result=\"bypassed\"} 1",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing:\n{body}");
    }
}

#[test]
fn auth_is_refused_in_plaintext_on_submission() {
    let (backend, _seen) = scripted_backend_on_loopback(1);
    let gw = Gateway::start_tls("plain", backend, "submission", "");
    let mut c = gw.connect();
    assert!(c.reply().starts_with("220 "));
    let ehlo = c.cmd("EHLO client.example.net");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    c.expect(&format!("AUTH PLAIN {GOOD_PLAIN}"), "538 5.7.11");
}

/// A backend whose SASL exchange never ends: `AUTH LOGIN` and every response get `334`, `*`
/// cancels (`501`). Serves one session on a free loopback port: its address, and every line it
/// saw.
fn endless_sasl_backend() -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // The state: whether a SASL exchange is going on.
    let seen = backend_script(listener, 1, |in_auth: &mut bool, cmd, seen| {
        seen.push(cmd.to_string());
        let upper = cmd.to_ascii_uppercase();
        Step::Reply(if *in_auth && cmd == "*" {
            *in_auth = false;
            b"501 5.7.0 Authentication aborted\r\n"
        } else if *in_auth {
            b"334 UGFzc3dvcmQ6\r\n"
        } else if upper.starts_with("EHLO") {
            b"250-backend.test\r\n250-AUTH LOGIN\r\n250 8BITMIME\r\n"
        } else if upper == "AUTH LOGIN" {
            *in_auth = true;
            b"334 VXNlcm5hbWU6\r\n"
        } else if upper == "QUIT" {
            return Step::Quit;
        } else {
            b"250 2.0.0 Ok\r\n"
        })
    });
    (addr, seen)
}

#[test]
fn an_anonymous_submission_client_costs_the_backend_no_connection() {
    // Each submission client that only says EHLO held a backend connection (a Postfix smtpd
    // process) to learn the AUTH mechanisms to offer: a few sources could take every process of
    // the backend. Once one backend session has said them, they are offered from memory and
    // the backend is reached at AUTH.
    let (backend, seen) = scripted_backend_on_loopback(1);
    let (gw, mut c) = smtps("anonymous", backend);
    assert!(
        c.cmd("EHLO client.example.net")
            .contains("AUTH PLAIN LOGIN")
    );
    c.expect(&format!("AUTH PLAIN {GOOD_PLAIN}"), "235");
    assert!(c.cmd("QUIT").starts_with("221"));
    // The backend served its one session and is gone: a connection now would be refused.
    let seen = seen.join().expect("backend");
    assert!(seen.iter().any(|l| l.starts_with("AUTH PLAIN")), "{seen:?}");
    let mut c = gw.tls_client();
    assert!(c.reply().starts_with("220 "));
    let ehlo = c.cmd("EHLO other.example.net");
    assert!(
        ehlo.starts_with("250") && ehlo.contains("AUTH PLAIN LOGIN"),
        "offered without a backend connection: {ehlo}"
    );
    // Its AUTH needs the backend, which is gone now: a temporary failure, not a crash.
    c.expect(&format!("AUTH PLAIN {GOOD_PLAIN}"), "451");
    assert!(c.cmd("QUIT").starts_with("221"));
}

#[test]
fn a_sasl_exchange_ends_with_the_session_time_limit() {
    // A client that stops answering in the middle of its AUTH exchange is held to
    // smtp.max_session_duration as between commands, not only to command_timeout (300s).
    let (backend, _seen) = endless_sasl_backend();
    let gw = Gateway::start_tls(
        "authlimit",
        backend,
        "smtps\", profile = \"mx",
        "max_session_duration = \"3s\"",
    );
    let mut c = gw.tls_client();
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.example.net").contains("AUTH LOGIN"));
    assert!(c.cmd("AUTH LOGIN").starts_with("334"));
    // Silent now: the limit's 421 comes (the client reads with a 10 s timeout).
    let reply = c.reply();
    assert!(
        reply.starts_with("421 4.4.2 Maximum session duration"),
        "{reply:?}"
    );
}

#[test]
fn a_sasl_exchange_ends_politely_when_the_daemon_stops() {
    // A client in the middle of its AUTH exchange is told 421 at the daemon's shutdown, as an
    // idle session is between commands, and the daemon does not wait for its answer.
    let (backend, _seen) = endless_sasl_backend();
    let gw = Gateway::start_tls(
        "authstop",
        backend,
        "smtps\", profile = \"mx",
        "shutdown_timeout = \"20s\"",
    );
    let mut c = gw.tls_client();
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.example.net").contains("AUTH LOGIN"));
    assert!(c.cmd("AUTH LOGIN").starts_with("334"));
    gw.signal(libc::SIGTERM);
    let reply = c.reply();
    assert!(
        reply.starts_with("421 4.3.2 Service shutting down"),
        "{reply:?}"
    );
}

#[test]
fn a_sasl_exchange_is_bounded_and_cancelled_on_the_backend() {
    let (backend, seen) = endless_sasl_backend();
    let (_gw, mut c) = smtps("steps", backend);
    assert!(c.cmd("EHLO client.example.net").contains("AUTH LOGIN"));
    let mut reply = c.cmd("AUTH LOGIN");
    let mut steps = 0;
    while reply.starts_with("334") {
        steps += 1;
        assert!(steps <= 20, "the exchange never ends");
        reply = c.cmd("c29tZXRoaW5n");
    }
    assert!(reply.starts_with("501"), "after {steps} steps: {reply}");
    assert!(c.cmd("NOOP").starts_with("250"), "the session goes on");
    assert!(c.cmd("QUIT").starts_with("221"));
    let seen = seen.join().expect("backend");
    assert!(
        seen.iter().any(|l| l == "*"),
        "the backend's exchange is cancelled: {seen:?}"
    );
}

#[test]
fn a_sasl_response_with_a_bare_lf_is_refused_not_relayed() {
    use std::io::Write;
    let (backend, seen) = endless_sasl_backend();
    let (_gw, mut c) = smtps("barelf", backend);
    assert!(c.cmd("EHLO client.example.net").contains("AUTH LOGIN"));
    assert!(c.cmd("AUTH LOGIN").starts_with("334"));
    c.stream.get_mut().write_all(b"YmFyZQ==\n").expect("write");
    c.stream.get_mut().flush().expect("flush");
    let reply = c.reply();
    assert!(
        reply.starts_with("500 5.5.2") || reply.starts_with("421"),
        "{reply}"
    );
    drop(c);
    let seen = seen.join().expect("backend");
    assert!(!seen.iter().any(|l| l == "YmFyZQ=="), "relayed: {seen:?}");
    assert!(seen.iter().any(|l| l == "*"), "not cancelled: {seen:?}");
}

#[test]
fn a_new_backend_session_is_not_authenticated() {
    let (backend, seen) = scripted_backend_on_loopback(2);
    let (_gw, mut c) = smtps("reehlo", backend);
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    c.expect(&format!("AUTH PLAIN {GOOD_PLAIN}"), "235");
    // The repeated EHLO must not leave the client authenticated towards a backend session that
    // never saw its login.
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    c.expect_that(
        "RCPT TO:<friend@elsewhere.test>",
        "550 5.7.1",
        "relayed without a login",
    );
    // Logging in again on the new backend session lets it relay.
    assert!(c.cmd("RSET").starts_with("250"));
    c.expect(&format!("AUTH PLAIN {GOOD_PLAIN}"), "235");
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<friend@elsewhere.test>").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let seen = seen.join().expect("backend");
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("AUTH PLAIN")).count(),
        2,
        "{seen:?}"
    );
}

#[test]
fn the_submission_profile_wants_a_login_before_mail_and_then_relays() {
    let (backend, seen) = scripted_backend_on_loopback(1);
    // `start_tls` writes `kind = "<kind>"` into the listener: the profile rides along.
    let gw = Gateway::start_tls("profile", backend, "smtps\", profile = \"submission", "");
    let mut c = gw.tls_client();
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.example.net").contains("AUTH PLAIN"));
    c.expect_that(
        "MAIL FROM:<user@example.net>",
        "530 5.7.0 Authentication required",
        "no MAIL before AUTH",
    );
    c.expect(&format!("AUTH PLAIN {GOOD_PLAIN}"), "235");
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<friend@elsewhere.test>").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let seen = seen.join().expect("backend");
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("MAIL FROM")).count(),
        1,
        "the refused MAIL never reached the backend: {seen:?}"
    );
}

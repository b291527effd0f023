//! The daemon's lifecycle with the proxy running: SIGHUP reloads proxy settings live (and a bad
//! file changes nothing), SIGTERM lets an in-flight message complete while newcomers get `421`,
//! and SIGTERM stops the daemon while a reload is stuck reading a list.
//! The real binary in front of a scripted backend. Needs root (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{io::Write, net::TcpStream, time::Duration};

use peers::{Client, Gateway, scripted_backend_on_loopback};

/// The daemon's exit status, waited for (10 s at most: else `what` fails the test).
fn exit_of(gw: &mut Gateway, what: &str) -> std::process::ExitStatus {
    (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            gw.child.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| panic!("{what}"))
}

fn two_recipients(c: &mut Client<TcpStream>) -> (String, String) {
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    let first = c.cmd("RCPT TO:<one@example.org>");
    let second = c.cmd("RCPT TO:<two@example.org>");
    (first, second)
}

#[test]
fn sighup_changes_a_proxy_limit_live_and_a_bad_file_changes_nothing() {
    let (addr, _seen) = scripted_backend_on_loopback(3);
    let gw = Gateway::start("hup", addr, "max_recipients = 5");

    let mut c = gw.client();
    let (first, second) = two_recipients(&mut c);
    assert!(
        first.starts_with("250") && second.starts_with("250"),
        "{first} {second}"
    );
    c.cmd("QUIT");

    gw.write_config(addr, "max_recipients = 1");
    gw.signal(libc::SIGHUP);
    gw.wait_log("configuration reloaded");
    let mut c = gw.client();
    let (first, second) = two_recipients(&mut c);
    assert!(first.starts_with("250"), "{first}");
    assert!(
        second.starts_with("452 4.5.3"),
        "the reloaded limit applies to new sessions: {second}"
    );
    c.cmd("QUIT");

    // Valid TOML whose certificate cannot be read: the whole reload is refused.
    gw.write_config(
        addr,
        "max_recipients = 5\n[smtp.tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"",
    );
    gw.signal(libc::SIGHUP);
    gw.wait_log("reload failed");
    // Named by its option, as check-config names it.
    assert!(
        gw.log().contains("smtp.tls: /nonexistent/cert.pem"),
        "{}",
        gw.log()
    );
    let mut c = gw.client();
    let ehlo = c.cmd("EHLO client.example.net");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<one@example.org>").starts_with("250"));
    c.expect_that(
        "RCPT TO:<two@example.org>",
        "452",
        "the previous generation (max_recipients = 1) stays",
    );
}

#[test]
fn sigterm_lets_an_inflight_message_complete_and_refuses_newcomers() {
    let (addr, seen) = scripted_backend_on_loopback(1);
    let mut gw = Gateway::start("term", addr, "shutdown_timeout = \"20s\"");

    let mut c = gw.greeted("client.example.net");
    assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<one@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.stream
        .get_mut()
        .write_all(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .expect("write");

    gw.signal(libc::SIGTERM);
    gw.wait_log("stopping");
    let mut late = TcpStream::connect(("127.0.0.1", gw.port)).expect("the listener still answers");
    late.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut late, &mut answer);
    assert!(
        answer.starts_with("421 4.3.2"),
        "newcomers are told to come back: {answer:?}"
    );

    c.expect_that("second half\r\n.", "250", "the in-flight message completes");
    c.expect_that("NOOP", "421 4.3.2", "then the session is closed politely");

    let status = exit_of(&mut gw, "the daemon exits once sessions are done");
    assert!(status.success(), "{status}");
    let seen = seen.join().expect("backend");
    assert!(seen.iter().any(|l| l == "DATA"), "{seen:?}");
}

#[test]
fn sigterm_stops_the_daemon_while_a_reload_waits_on_a_list() {
    let (addr, _seen) = scripted_backend_on_loopback(1);
    let daemon = "[daemon]\nwatch_config = false\n";
    let mut gw = Gateway::start("termreload", addr, daemon);
    // The reload reads a reputation list from a FIFO that the test opens and never writes: it
    // waits there for good, as one reading a list from a hung file system would.
    let fifo = gw.dir.join("senders.fifo");
    peers::mkfifo(&fifo);
    gw.write_config(
        addr,
        &format!(
            "{daemon}[reputation]\nlists = [{{ name = \"stuck\", kind = \"sender_domain\", \
             path = \"{}\" }}]\n",
            fifo.display()
        ),
    );
    gw.signal(libc::SIGHUP);
    let _list = peers::fifo_writer_once_read(&fifo, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the reload never opened the list:\n{}", gw.log()));
    gw.signal(libc::SIGTERM);
    let status = gw
        .child
        .wait_exit(Duration::from_secs(10))
        .expect("wait for the daemon")
        .unwrap_or_else(|| {
            panic!(
                "SIGTERM did not stop the daemon during a reload:\n{}",
                gw.log()
            )
        });
    assert!(status.success(), "{status}\n{}", gw.log());
    let log = gw.log();
    assert!(log.contains("reload abandoned"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn sigint_cuts_sessions_and_says_so() {
    // SIGINT stops at once: a message in flight is cut, not completed. The log said "running
    // sessions may finish" (SIGTERM's line) all the same.
    let (addr, _seen) = scripted_backend_on_loopback(1);
    let mut gw = Gateway::start("int", addr, "");
    let mut c = gw.client();
    let _ = two_recipients(&mut c);
    c.expect("DATA", "354");
    c.stream
        .get_mut()
        .write_all(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .expect("write");
    gw.signal(libc::SIGINT);
    let status = exit_of(&mut gw, "the daemon exits at once");
    assert!(status.success(), "{status}");
    let log = gw.log();
    assert!(
        log.contains("interrupted (SIGINT)"),
        "the stop is told:\n{log}"
    );
    assert!(
        !log.contains("running sessions may finish"),
        "SIGINT lets no session finish:\n{log}"
    );
}

//! Backend connections reused between sessions (`backend.pool_size`, `backend.pool_idle`) for
//! `identity = "none"` servers: one connection carries consecutive sessions, each with its own
//! EHLO; a connection the backend closed, or one that fails its EHLO, is replaced without the
//! client noticing; idle connections and those left at shutdown end with QUIT; a session that
//! leaves a transaction open, or a pool of size 0, ends its connection with QUIT. Needs root
//! (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;
#[path = "support/recording.rs"]
#[allow(dead_code)] // session_state uses the pipelining behaviour
mod recording;

use std::time::{Duration, Instant};

use peers::{Gateway, sample};
use recording::{Behaviour, Connections, recording_backend as backend, wait_for};

/// The daemon with extra `[backend]` keys in front of a recording backend behaving as told.
fn pooled(tag: &str, behaviour: Behaviour, backend_extra: &str) -> (Gateway, Connections) {
    let (addr, connections) = backend(behaviour);
    let gw = Gateway::start_with_backend(tag, addr, "", backend_extra);
    (gw, connections)
}

/// One client session through the gateway that delivers a message from `helo`; returns once
/// the gateway logged the session's end, which comes after its backend connection went back to
/// the pool (so the next session finds it there, however loaded the machine).
fn deliver(gw: &Gateway, helo: &str) {
    let mut c = gw.client();
    c.expect(&format!("EHLO {helo}"), "250");
    for (command, code) in [
        ("MAIL FROM:<a@example.net>", "250"),
        ("RCPT TO:<b@example.org>", "250"),
        ("DATA", "354"),
        ("Subject: reuse\r\n\r\nbody\r\n.", "250"),
        ("QUIT", "221"),
    ] {
        let reply = c.cmd(command);
        assert!(reply.starts_with(code), "{command:?} -> {reply}");
    }
    gw.wait_log_line(&[&format!("helo=\"{helo}\""), "verdict=\"delivered\""]);
}

/// The commands of a whole session after its EHLO line.
fn session(helo: &str) -> Vec<String> {
    vec![
        format!("EHLO {helo}"),
        "MAIL FROM:<a@example.net>".into(),
        "RCPT TO:<b@example.org>".into(),
        "DATA".into(),
    ]
}

/// `backend_sessions_total` on new and on reused connections (absent: never counted), and the
/// whole scrape for the failure message.
fn backend_sessions(gw: &Gateway) -> (Option<u64>, Option<u64>, String) {
    let metrics = gw.scrape();
    let count = |origin: &str| {
        let series = format!("smtp_gateway_backend_sessions_total{{origin=\"{origin}\"}}");
        sample(&metrics, &series)
    };
    (count("new"), count("reused"), metrics)
}

#[test]
fn consecutive_sessions_share_one_connection_which_ends_with_quit_at_shutdown() {
    let (mut gw, connections) = pooled("reuse-share", Behaviour::Normal, "");
    deliver(&gw, "first.example.net");
    deliver(&gw, "second.example.net");
    let mut expected = session("first.example.net");
    expected.extend(session("second.example.net"));
    let seen = wait_for(&connections, "both sessions on one connection", |c| {
        c.len() == 1 && c[0].len() >= expected.len()
    });
    assert_eq!(
        seen,
        vec![expected.clone()],
        "one connection, each session with its own EHLO, no QUIT between them"
    );

    let (new, reused, metrics) = backend_sessions(&gw);
    assert_eq!((new, reused), (Some(1), Some(1)), "{metrics}");

    // A graceful stop closes the idle connection politely.
    gw.signal(libc::SIGTERM);
    let status = gw.child.wait().expect("wait");
    assert!(status.success(), "{status:?}\n{}", gw.log());
    expected.push("QUIT".into());
    let seen = wait_for(&connections, "QUIT at shutdown", |c| {
        c.len() == 1 && c[0].len() == expected.len()
    });
    assert_eq!(seen, vec![expected]);
}

#[test]
fn a_connection_the_backend_closed_is_replaced() {
    let (gw, connections) = pooled("reuse-closed", Behaviour::CloseAfterMessage, "");
    deliver(&gw, "first.example.net");
    // The backend's close reaches the gateway before the next session takes the connection.
    std::thread::sleep(Duration::from_millis(200));
    deliver(&gw, "second.example.net");
    let seen = wait_for(&connections, "a second connection", |c| {
        c.len() == 2 && c[1].len() >= 4
    });
    assert_eq!(
        seen,
        vec![session("first.example.net"), session("second.example.net")]
    );
    let (new, _, metrics) = backend_sessions(&gw);
    assert_eq!(new, Some(2), "{metrics}");
    assert!(!gw.log().contains("ERROR"), "{}", gw.log());
}

#[test]
fn a_connection_that_fails_its_ehlo_is_replaced() {
    let (gw, connections) = pooled("reuse-ehlo", Behaviour::CloseAtSecondEhlo, "");
    deliver(&gw, "first.example.net");
    deliver(&gw, "second.example.net");
    let seen = wait_for(&connections, "a replacement connection", |c| {
        c.len() == 2 && c[1].len() >= 4
    });
    let mut first = session("first.example.net");
    first.push("EHLO second.example.net".into());
    assert_eq!(seen, vec![first, session("second.example.net")]);
    let (new, reused, metrics) = backend_sessions(&gw);
    assert_eq!((new, reused), (Some(2), None), "{metrics}");
    assert!(!gw.log().contains("ERROR"), "{}", gw.log());
}

#[test]
fn an_idle_connection_ends_with_quit_after_pool_idle() {
    let (gw, connections) = pooled("reuse-idle", Behaviour::Normal, "pool_idle = \"1s\"");
    deliver(&gw, "first.example.net");
    let ended = Instant::now();
    let mut expected = session("first.example.net");
    wait_for(&connections, "the session", |c| {
        c.len() == 1 && c[0].len() == expected.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        connections.lock().expect("connections").clone(),
        vec![expected.clone()],
        "still idle, no QUIT yet"
    );
    expected.push("QUIT".into());
    let seen = wait_for(&connections, "QUIT after pool_idle", |c| {
        c.len() == 1 && c[0].len() == expected.len()
    });
    assert_eq!(seen, vec![expected]);
    assert!(
        ended.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before pool_idle",
        ended.elapsed()
    );
}

#[test]
fn without_a_pool_every_session_ends_with_quit() {
    let (gw, connections) = pooled("reuse-off", Behaviour::Normal, "pool_size = 0");
    deliver(&gw, "first.example.net");
    deliver(&gw, "second.example.net");
    let seen = wait_for(&connections, "two connections with QUIT", |c| {
        c.len() == 2 && c.iter().all(|s| s.last().is_some_and(|l| l == "QUIT"))
    });
    let mut first = session("first.example.net");
    first.push("QUIT".into());
    let mut second = session("second.example.net");
    second.push("QUIT".into());
    assert_eq!(seen, vec![first, second]);
}

#[test]
fn a_session_that_leaves_a_transaction_open_ends_its_connection() {
    let (gw, connections) = pooled("reuse-open", Behaviour::Normal, "");
    let mut c = gw.greeted("first.example.net");
    assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    drop(c);
    deliver(&gw, "second.example.net");
    let seen = wait_for(&connections, "two connections", |c| {
        c.len() == 2 && c[1].len() >= 4
    });
    let first = vec![
        "EHLO first.example.net".to_string(),
        "MAIL FROM:<a@example.net>".into(),
        "QUIT".into(),
    ];
    assert_eq!(seen, vec![first, session("second.example.net")]);
}

#[test]
fn the_pool_keeps_at_most_pool_size_connections_per_server() {
    let (mut gw, connections) = pooled("reuse-size", Behaviour::Normal, "pool_size = 1");
    // Two sessions at once: each needs a connection of its own.
    let mut a = gw.client();
    let mut b = gw.client();
    for (c, helo) in [(&mut a, "a.example.net"), (&mut b, "b.example.net")] {
        assert!(c.cmd(&format!("EHLO {helo}")).starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    }
    for c in [&mut a, &mut b] {
        assert!(c.cmd("RCPT TO:<b@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        assert!(c.cmd("Subject: size\r\n\r\nbody\r\n.").starts_with("250"));
        assert!(c.cmd("QUIT").starts_with("221"));
    }
    let quit = |c: &[Vec<String>]| {
        c.iter()
            .filter(|s| s.last().is_some_and(|l| l == "QUIT"))
            .count()
    };
    let seen = wait_for(&connections, "one connection kept, one ended", |c| {
        c.len() == 2 && quit(c) == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        quit(&connections.lock().expect("connections")),
        1,
        "the second stays idle in the pool: {seen:#?}"
    );
    gw.signal(libc::SIGTERM);
    let status = gw.child.wait().expect("wait");
    assert!(status.success(), "{status:?}\n{}", gw.log());
    wait_for(
        &connections,
        "the pooled one ends with QUIT at shutdown",
        |c| c.len() == 2 && quit(c) == 2,
    );
}

//! Clients that hold a connection instead of sending junk (issue 10 sections 1.2, 1.5, 1.6): one
//! that never reads its replies, a TLS ClientHello on the plaintext port, junk commands, a session
//! or a DATA phase kept alive by trickling, and an honest slow sender whose text must reach the
//! backend before its end of data. The real daemon in front of a scripted backend; every test
//! waits for an event (a reply, a close, a log line, bytes at the backend), with the gateway's
//! limits shortened through its configuration. Needs root (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use peers::{Gateway, gateway};
use smtp_gateway_test_kit::Wait;

/// How long a test waits for the event it expects.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// How long the holders' sessions may take to stall: the gateway first fills the socket buffers
/// with replies (megabytes of EHLO replies on loopback), which a loaded machine does slowly.
const STALL_WAIT: Duration = Duration::from_secs(30);

/// Everything the gateway sends until it closes the connection (bounded by [`EVENT_WAIT`]), and
/// whether the close came in time.
fn read_to_close(stream: &mut TcpStream) -> (String, bool) {
    stream.set_read_timeout(Some(EVENT_WAIT)).ok();
    let mut out = Vec::new();
    let closed = stream.read_to_end(&mut out).is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Asserts that the gateway closes the connection (within [`EVENT_WAIT`]) without another byte.
fn assert_closed_quietly(stream: &mut TcpStream) {
    let (rest, closed) = read_to_close(stream);
    assert!(closed && rest.is_empty(), "connection closed: {rest:?}");
}

/// Connects with a 2 KiB receive buffer, reads the banner and one EHLO reply, then sends `EHLO`
/// in a loop without ever reading again (on a thread that ends when the gateway closes the connection).
fn hold_without_reading(port: u16) -> std::thread::JoinHandle<()> {
    // The banner and the first EHLO reply are read (pipelining before the EHLO reply would be a
    // protocol error of its own); nothing after that.
    let mut c = greeted_with(port, |s| s.set_recv_buffer_size(2048).expect("SO_RCVBUF"));
    assert!(c.cmd("EHLO mail.goodcorp.example").starts_with("250"));
    let tcp = c.stream.into_inner();
    std::thread::spawn(move || {
        let mut tcp = tcp;
        let burst = "EHLO mail.goodcorp.example\r\n".repeat(256);
        while tcp.write_all(burst.as_bytes()).is_ok() {}
    })
}

#[test]
fn clients_that_never_read_lose_their_slots_after_the_write_timeout() {
    let gw = gateway(
        "noread",
        "max_connections_per_source = 3\nwrite_timeout = \"1s\"\ncommand_timeout = \"60s\"\n\
         junk_command_limit = 1000000",
        0,
    );
    let holders: Vec<_> = (0..3).map(|_| hold_without_reading(gw.port)).collect();
    let refused = gw.banner();
    assert!(
        refused.starts_with("421 4.7.0 Too many connections from your address"),
        "the three holders have every slot of the source: {refused}"
    );
    let logged = gw.child.wait_for(STALL_WAIT, |log| {
        log.matches("client does not read its replies").count() >= 3
    });
    assert_eq!(logged, Wait::Done, "{}", gw.log());
    // The slots come back with the closes: a new connection from the same source is served.
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let banner = gw.banner();
        if banner.starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {banner}");
    }
    for h in holders {
        h.join().expect("holder thread");
    }
}

/// The first bytes of a TLS 1.2/1.3 ClientHello: record header, handshake header, version,
/// random (no LF anywhere).
const CLIENT_HELLO_START: [u8; 43] = [
    0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03, 0x5c, 0x21, 0x9f, 0x33, 0x71,
    0x02, 0xe4, 0x8d, 0x47, 0xb2, 0x6f, 0x13, 0x88, 0x21, 0xd0, 0x3c, 0x55, 0x9a, 0x61, 0xfe, 0x04,
    0x73, 0xc1, 0x2b, 0x38, 0x9e, 0x42, 0x11, 0xe7, 0x5d, 0x80, 0x20,
];

#[test]
fn a_tls_client_hello_on_the_plaintext_port_is_answered_at_once() {
    let gw = gateway("hello", "command_timeout = \"60s\"", 0);
    let mut c = gw.client();
    let started = Instant::now();
    c.stream
        .get_mut()
        .write_all(&CLIENT_HELLO_START)
        .expect("write");
    let (answer, closed) = read_to_close(c.stream.get_mut());
    assert!(
        closed && answer.starts_with("421 4.7.0 Not an SMTP client"),
        "answered and closed within {EVENT_WAIT:?} (command_timeout is 60s), after {:?}: {answer:?}",
        started.elapsed()
    );
    gw.wait_log("TLS handshake on a plaintext port");
    gw.wait_log("non_smtp");
}

#[test]
fn junk_commands_past_the_limit_close_the_session_and_delivery_resets_the_count() {
    let gw = gateway("junk", "junk_command_limit = 3", 1);
    let mut c = gw.greeted("mail.goodcorp.example");
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("VRFY postmaster").starts_with("252"));
    assert!(c.cmd("HELP").starts_with("214"));
    // A delivered message resets the count.
    c.open_message();
    assert!(c.cmd("Subject: x\r\n\r\nhello\r\n.").starts_with("250"));
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("EHLO mail.goodcorp.example").starts_with("250"));
    // The fourth junk command since the delivery: a repeated EHLO.
    c.expect(
        "EHLO mail.goodcorp.example",
        "421 4.7.0 Too many junk commands",
    );
    assert_closed_quietly(c.stream.get_mut());
}

#[test]
fn a_session_kept_alive_by_noops_ends_at_max_session_duration() {
    let gw = gateway(
        "lifetime",
        "max_session_duration = \"2s\"\ncommand_timeout = \"60s\"",
        0,
    );
    let mut c = gw.client();
    let started = Instant::now();
    assert!(c.cmd("EHLO mail.goodcorp.example").starts_with("250"));
    let closing = loop {
        assert!(started.elapsed() < EVENT_WAIT, "the session is still open");
        std::thread::sleep(Duration::from_millis(300)); // pacing: one NOOP per 300 ms
        let reply = c.cmd("NOOP");
        if !reply.starts_with("250") {
            break reply;
        }
    };
    assert!(
        closing.starts_with("421 4.4.2") && closing.contains("session"),
        "{closing}"
    );
    assert_closed_quietly(c.stream.get_mut());
}

#[test]
fn message_text_trickled_past_max_data_duration_is_cut_off() {
    let gw = gateway(
        "datalife",
        "max_data_duration = \"2s\"\ndata_timeout = \"60s\"",
        1,
    );
    let mut c = gw.greeted("mail.goodcorp.example");
    c.open_message();
    let mut writer = c.stream.get_ref().try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        let started = Instant::now();
        // Pacing: one text line per 300 ms, until the gateway closes or the test gives up.
        while started.elapsed() < EVENT_WAIT && writer.write_all(b"still typing\r\n").is_ok() {
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let (answer, closed) = read_to_close(c.stream.get_mut());
    assert!(
        closed && answer.starts_with("421 4.4.2") && answer.contains("message"),
        "{answer:?}"
    );
    trickle.join().expect("trickle");
}

/// A backend that accepts one transaction and reports every piece of message text it receives
/// as it arrives, then the end of data (`.\r\n`); the channel closes with its connection.
fn reporting_backend(listener: TcpListener, text: mpsc::Sender<Vec<u8>>) {
    std::thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        tcp.set_read_timeout(Some(EVENT_WAIT)).ok();
        let mut out = tcp.try_clone().expect("clone");
        let mut input = BufReader::new(tcp);
        out.write_all(b"220 backend.test ESMTP\r\n").ok();
        let mut line = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-backend.test\r\n250 8BITMIME\r\n"
            } else if upper.starts_with("DATA") {
                out.write_all(b"354 go ahead\r\n").ok();
                loop {
                    line.clear();
                    if input.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == b".\r\n" {
                        let _ = text.send(line.clone());
                        break;
                    }
                    let _ = text.send(line.clone());
                }
                b"250 2.0.0 queued\r\n"
            } else if upper.starts_with("QUIT") {
                out.write_all(b"221 bye\r\n").ok();
                return;
            } else {
                b"250 2.0.0 Ok\r\n"
            };
            out.write_all(reply).ok();
        }
    });
}

#[test]
fn a_slow_senders_text_reaches_the_backend_before_its_end_of_data() {
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = backend.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    reporting_backend(backend, tx);
    let gw = Gateway::start("trickle", addr, "text_flush_interval = \"1s\"");
    let mut c = gw.greeted("mail.goodcorp.example");
    c.open_message();
    c.stream
        .get_mut()
        .write_all(b"Subject: slow\r\n\r\nfirst line\r\n")
        .expect("write");
    let deadline = Instant::now() + EVENT_WAIT;
    let mut seen = Vec::new();
    while !seen.ends_with(b"first line\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(piece) => seen.extend_from_slice(&piece),
            Err(_) => panic!(
                "the text sent so far never reached the backend: {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    c.expect(".", "250");
}

/// A client connected from `source` (a loopback address) whose `220` banner was read.
fn client_from(port: u16, source: [u8; 4]) -> peers::Client<TcpStream> {
    greeted_with(port, |s| {
        s.bind(&SocketAddr::from((source, 0)).into())
            .expect("bind the source address");
    })
}

/// A client on a socket `prepare`d before it connects, whose `220` banner was read.
fn greeted_with(port: u16, prepare: impl FnOnce(&socket2::Socket)) -> peers::Client<TcpStream> {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    prepare(&socket);
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(EVENT_WAIT)).ok();
    let mut c = peers::Client {
        stream: BufReader::new(tcp),
    };
    let banner = c.reply();
    assert!(banner.starts_with("220 "), "{banner}");
    c
}

/// The gateway's `smtp_gateway_sessions_evicted_total`.
fn evictions(gw: &Gateway) -> u64 {
    let text = gw.scrape();
    peers::sample(&text, "smtp_gateway_sessions_evicted_total ")
        .unwrap_or_else(|| panic!("no sessions_evicted_total in\n{text}"))
}

#[test]
fn at_capacity_an_idle_session_of_the_largest_source_makes_room_for_a_new_client() {
    let idle = Duration::from_secs(1);
    let (backend, _seen) = peers::scripted_backend_on_loopback(0);
    let gw = Gateway::start_with_backend(
        "evict",
        backend,
        "max_connections = 3\nmax_connections_per_source = 3\nevict_idle_after = \"1s\"\n\
         command_timeout = \"60s\"",
        "pool_size = 0",
    );
    // Every slot taken: two sessions from one source, one from another, all waiting for their
    // clients (they read the banner and say nothing).
    let mut big = [
        client_from(gw.port, [127, 0, 0, 2]),
        client_from(gw.port, [127, 0, 0, 2]),
    ];
    let mut small = client_from(gw.port, [127, 0, 0, 3]);
    // Until they have waited `evict_idle_after` (a sleep never ends early).
    std::thread::sleep(idle + Duration::from_millis(200));
    assert_eq!(evictions(&gw), 0);
    let mut newcomer = client_from(gw.port, [127, 0, 0, 4]);
    assert!(
        newcomer
            .cmd("EHLO mail.goodcorp.example")
            .starts_with("250")
    );
    // One of the larger source's sessions got the goodbye and was closed; the lone session of
    // the other source was not touched.
    let mut closed = Vec::new();
    for c in &mut big {
        c.stream.get_mut().write_all(b"NOOP\r\n").expect("write");
        let mut line = String::new();
        let _ = c.stream.read_line(&mut line);
        if line.starts_with("421 4.7.0 Too many connections; closing an idle one") {
            let (rest, gone) = read_to_close(c.stream.get_mut());
            assert!(
                gone && rest.is_empty(),
                "closed after the goodbye: {rest:?}"
            );
            closed.push(line);
        } else {
            assert!(
                line.starts_with("250"),
                "the other session goes on: {line:?}"
            );
        }
    }
    assert_eq!(closed.len(), 1, "exactly one session made room: {closed:?}");
    assert!(
        small.cmd("NOOP").starts_with("250"),
        "the smaller source keeps its session"
    );
    assert_eq!(evictions(&gw), 1);
    gw.wait_log("idle session closed to make room for a new client");
}

/// How long the holders of the eviction tests below are left waiting: one second
/// (`evict_idle_after`) and a margin for the gateway to get them there (an EHLO to handle, a
/// handshake to begin) on a loaded machine.
const HOLD_WAIT: Duration = Duration::from_millis(2500);

/// A gateway with TLS on a listener of `kind` and two slots, whose sessions make room after
/// one second of waiting for their client.
fn two_slot_tls_gateway(tag: &str, kind: &str) -> Gateway {
    let (backend, _seen) = peers::scripted_backend_on_loopback(0);
    Gateway::start_tls_with_backend(
        tag,
        backend,
        kind,
        "max_connections = 2\nmax_connections_per_source = 2\nevict_idle_after = \"1s\"\n\
         command_timeout = \"60s\"",
        "pool_size = 0",
    )
}

/// A connection from 127.0.0.2 that never starts its TLS handshake (`starttls`: after asking
/// for it with EHLO and STARTTLS).
fn stalled_handshake(port: u16, starttls: bool) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .expect("bind the source address");
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(EVENT_WAIT)).ok();
    if !starttls {
        return tcp;
    }
    let mut c = peers::Client {
        stream: BufReader::new(tcp),
    };
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO mail.goodcorp.example").starts_with("250"));
    assert!(c.cmd("STARTTLS").starts_with("220"));
    c.stream.into_inner()
}

/// Fills both slots with stalled handshakes, then shows that a newcomer gets a session: one
/// holder is closed without a byte, the other is kept.
fn a_stalled_handshake_makes_room(gw: &Gateway, starttls: bool, newcomer: impl FnOnce()) {
    let mut holders = [
        stalled_handshake(gw.port, starttls),
        stalled_handshake(gw.port, starttls),
    ];
    // Until they have waited `evict_idle_after` (a sleep never ends early), with room for a
    // loaded machine to take its time before their wait began.
    std::thread::sleep(HOLD_WAIT);
    newcomer();
    let mut closed = 0;
    for h in &mut holders {
        // The one closed reads its end at once; the other has nothing to read.
        h.set_read_timeout(Some(Duration::from_millis(500))).ok();
        let mut byte = [0u8; 1];
        if matches!(h.read(&mut byte), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "exactly one stalled handshake made room");
    assert_eq!(evictions(gw), 1);
    gw.wait_log("stalled TLS handshake closed to make room for a new client");
}

#[test]
fn at_capacity_a_stalled_implicit_tls_handshake_makes_room_for_a_new_client() {
    let gw = two_slot_tls_gateway("evict-smtps", "smtps");
    a_stalled_handshake_makes_room(&gw, false, || {
        let mut c = gw.tls_client();
        let banner = c.reply();
        assert!(
            banner.starts_with("220 "),
            "the newcomer's banner: {banner}"
        );
    });
}

#[test]
fn at_capacity_a_stalled_starttls_handshake_makes_room_for_a_new_client() {
    let gw = two_slot_tls_gateway("evict-starttls", "smtp");
    a_stalled_handshake_makes_room(&gw, true, || {
        let mut c = gw.client();
        assert!(c.cmd("EHLO mail.goodcorp.example").starts_with("250"));
    });
}

#[test]
fn at_capacity_a_tarpitted_session_makes_room_for_a_new_client() {
    let (backend, _seen) = peers::scripted_backend_on_loopback(0);
    let gw = Gateway::start_with_backend(
        "evict-tarpit",
        backend,
        "max_connections = 2\nmax_connections_per_source = 2\nevict_idle_after = \"1s\"\n\
         command_timeout = \"60s\"\ntarpit_delay = \"60s\"\n\
         [score]\ntarpit = 1\ntempfail = 100\nreject = 100",
        "pool_size = 0",
    );
    // Both slots held by sessions whose EHLO names another address than theirs: the score
    // reaches the tarpit, and each EHLO reply is held for a minute.
    let mut holders = [
        client_from(gw.port, [127, 0, 0, 2]),
        client_from(gw.port, [127, 0, 0, 2]),
    ];
    for h in &mut holders {
        h.stream
            .get_mut()
            .write_all(b"EHLO [198.18.0.9]\r\n")
            .expect("write");
    }
    // Until they have waited `evict_idle_after` (a sleep never ends early), with room for a
    // loaded machine to take its time before their wait began.
    std::thread::sleep(HOLD_WAIT);
    let mut newcomer = client_from(gw.port, [127, 0, 0, 4]);
    assert!(
        newcomer
            .cmd("EHLO mail.goodcorp.example")
            .starts_with("250")
    );
    let mut goodbyes = 0;
    for h in &mut holders {
        h.stream
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .ok();
        let mut line = String::new();
        let _ = h.stream.read_line(&mut line);
        if line.starts_with("421 4.7.0 Too many connections; closing an idle one") {
            goodbyes += 1;
        } else {
            assert!(line.is_empty(), "the other one is still held: {line:?}");
        }
    }
    assert_eq!(goodbyes, 1, "exactly one tarpitted session made room");
    assert_eq!(evictions(&gw), 1);
}

#[test]
fn a_session_parked_in_data_that_makes_room_leaves_no_message_at_the_backend() {
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = backend.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    reporting_backend(backend, tx);
    let gw = Gateway::start_with_backend(
        "evictdata",
        addr,
        "max_connections = 1\nevict_idle_after = \"1s\"\ndata_timeout = \"60s\"\n\
         text_flush_interval = \"100ms\"",
        "pool_size = 0",
    );
    let mut parked = client_from(gw.port, [127, 0, 0, 2]);
    parked.expect("EHLO mail.goodcorp.example", "250");
    parked.open_message();
    parked
        .stream
        .get_mut()
        .write_all(b"Subject: held\r\n")
        .expect("write");
    // The text reached the backend (flushed within text_flush_interval): the transaction is
    // open there when the session has to make room.
    let first = rx.recv_timeout(EVENT_WAIT).expect("text at the backend");
    assert_eq!(first, b"Subject: held\r\n");
    std::thread::sleep(Duration::from_millis(1200));
    let _newcomer = client_from(gw.port, [127, 0, 0, 3]);
    let (answer, closed) = read_to_close(parked.stream.get_mut());
    assert!(
        closed && answer.starts_with("421 4.7.0 Too many connections; closing an idle one"),
        "{answer:?}"
    );
    // The backend connection ends (the channel closes with it) without an end of data:
    // nothing was accepted.
    let mut rest = Vec::new();
    loop {
        match rx.recv_timeout(EVENT_WAIT) {
            Ok(piece) => rest.push(String::from_utf8_lossy(&piece).into_owned()),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the backend connection stays open"),
        }
    }
    assert!(rest.is_empty(), "the backend got more text: {rest:?}");
}

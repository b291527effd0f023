//! End-to-end tests of CHUNKING (BDAT, RFC 3030): a real `smtp-gateway run` daemon in front of
//! the private Postfix 3.7 of this test binary (it offers CHUNKING), driven by raw sockets that
//! pipeline BDAT and by `smtpping -C` (Debian package `smtpping`, a packaged client that sends
//! BDAT; swaks and Python's smtplib cannot).
//!
//! Tests: byte-exact delivery of pipelined chunks holding lines that start with a dot, a lone
//! ".", bare LF, bare CR and a would-be second transaction (BDAT content is opaque: the Maildir
//! file holds the bytes sent, after Postfix's own headers, with Postfix's CRLF -> LF); smtpping's
//! BDAT delivery; `BDAT 0 LAST`; `smtp.max_message_size` across chunks (`552 5.3.4`, backend
//! transaction reset, the session goes on in step); DATA after BDAT and BDAT after DATA (`503`),
//! BDAT without a transaction or without recipients (chunk read and discarded); a chunk over
//! `smtp.max_chunk_size` (`552`, closed); a backend without CHUNKING (not offered, and BDAT never
//! reaches it).
//!
//! Needs root (bpffs pins, Postfix), the `postfix` and `smtpping` packages. Build the daemon
//! first: `cargo build && cargo test -p smtp-gateway-tests --test chunking`.

// Support modules are written for several test binaries: not every helper is used by each.
#[allow(dead_code)]
#[path = "support/gateway.rs"]
mod gateway;
#[allow(dead_code)]
#[path = "support/postfix.rs"]
mod postfix;
#[allow(dead_code)]
mod support;

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use gateway::{Gateway, GatewaySpec};

/// Wait for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait for a delivery to show up in a Maildir.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait for the backend sessions of a client to end and the queue to drain.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

fn src(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 source address")
}

/// A blocking SMTP client on a raw socket bound to a chosen source address.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, source: Ipv4Addr) -> Client {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        socket
            .bind(&SocketAddr::from((source, 0)).into())
            .expect("bind source");
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {source} -> {addr}: {e}"));
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Client {
            stream,
            buf: Vec::new(),
        };
        assert_eq!(c.reply().0, 220, "banner");
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next reply: code and every line; `(0, why)` when the peer closed or nothing came.
    fn reply(&mut self) -> (u16, String) {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut lines = Vec::new();
        loop {
            while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    let code = lines
                        .last()
                        .and_then(|l| l.get(..3))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    return (code, lines.join("\n"));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (0, format!("no reply; got {lines:?}"));
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("read timeout");
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return (0, format!("closed; got {lines:?}")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return (0, format!("read error {e}; got {lines:?}")),
            }
        }
    }

    /// Sends `line` + CRLF; asserts the reply's code and returns its text.
    #[track_caller]
    fn expect(&mut self, line: &str, code: u16) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.expect_reply(line, code)
    }

    /// The next reply must have `code` (`what` names what it answers).
    #[track_caller]
    fn expect_reply(&mut self, what: &str, code: u16) -> String {
        let (got, text) = self.reply();
        assert_eq!(got, code, "{what:?} -> {text}");
        text
    }

    /// Whether the peer closed the connection (within a few seconds).
    fn closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut b = [0u8; 512];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut;
                }
            }
        }
    }
}

/// `BDAT n [LAST]` and the chunk, as one write.
fn bdat(chunk: &[u8], last: bool) -> Vec<u8> {
    let mut out = format!(
        "BDAT {}{}\r\n",
        chunk.len(),
        if last { " LAST" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(chunk);
    out
}

/// A session whose EHLO reply offers CHUNKING. The gateway offers it where the backend does: on a
/// fresh gateway nothing is known before a backend session is open, so a MAIL (which opens it)
/// and RSET come first, and the repeated EHLO must then offer it.
fn chunking_session(gw: &Gateway, source: Ipv4Addr) -> Client {
    let mut c = Client::connect(gw.addr(), source);
    let ehlo = c.expect("EHLO client.example.net", 250);
    if !ehlo.contains("CHUNKING") {
        c.expect("MAIL FROM:<warmup@example.net>", 250);
        c.expect("RSET", 250);
        let again = c.expect("EHLO client.example.net", 250);
        assert!(again.contains("CHUNKING"), "CHUNKING not offered: {again}");
    }
    c
}

/// The stored message with Postfix's own headers (Return-Path, Delivered-To, its Received) taken
/// off: what the client's chunks became.
fn after_postfix_headers(stored: &[u8]) -> Vec<u8> {
    let mut rest = stored;
    for name in ["Return-Path:", "Delivered-To:", "Received:"] {
        assert!(
            rest.starts_with(name.as_bytes()),
            "expected {name} next in {:?}",
            String::from_utf8_lossy(stored)
        );
        // The header and its folded continuation lines.
        loop {
            let nl = rest
                .iter()
                .position(|b| *b == b'\n')
                .expect("header line end");
            rest = &rest[nl + 1..];
            if !rest.starts_with(b" ") && !rest.starts_with(b"\t") {
                break;
            }
        }
    }
    rest.to_vec()
}

/// What Postfix stores for `sent`: its queue keeps lines, so CRLF becomes LF (a bare LF is a
/// line end too), and Postfix turns a bare CR inside a line into a space. (The gateway relays
/// the CR itself: `smtp::chunk`'s unit tests check the bytes the backend gets.)
fn as_stored(sent: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sent.len());
    let mut i = 0;
    while i < sent.len() {
        if sent[i] == b'\r' && sent.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(if sent[i] == b'\r' { b' ' } else { sent[i] });
        i += 1;
    }
    out
}

/// The headers Postfix would otherwise add (From, Date, Message-ID), so the stored message is the
/// sent one after Postfix's trace headers.
const HEADERS: &str = "From: <sender@example.net>\r\nDate: Thu, 3 Dec 2026 09:00:00 +0000\r\n\
                       Message-ID: <chunking-test@example.net>\r\n";

/// A message whose text BDAT must carry untouched: dot lines (a lone "." too), a bare LF, a bare
/// CR, and what would end a DATA text and start a second transaction.
fn tricky_message(rcpt: &str) -> Vec<u8> {
    format!(
        "{HEADERS}To: <{rcpt}@example.org>\r\nSubject: chunked\r\n\r\n\
         first line\r\n.a leading dot\r\n..two dots\r\n\
         bare LF here\nand a bare CR\rin one line\r\n\
         .\r\nMAIL FROM:<smuggler@example.net>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n\
         smuggled\r\n.\r\n\
         last line\r\n"
    )
    .into_bytes()
}

#[test]
fn pipelined_bdat_delivers_the_chunks_byte_for_byte() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient"));
    let source = src("127.0.3.1");
    let rcpt = "bdat-exact";
    let message = tricky_message(rcpt);
    // Split at awkward places: inside the CRLF before the lone dot and inside the bare CR line.
    let cut1 = message
        .windows(3)
        .position(|w| w == b"\r\n.")
        .expect("dot line")
        + 1;
    let cut2 = message
        .windows(3)
        .position(|w| w == b"\rin")
        .expect("bare CR")
        + 1;
    let (a, b) = message.split_at(cut1.min(cut2));
    let (b, c) = b.split_at(cut1.max(cut2) - cut1.min(cut2));
    let mut c_session = chunking_session(&gw, source);
    // One write: MAIL, RCPT, three chunks and QUIT (RFC 3030: BDAT may be pipelined).
    let mut group =
        format!("MAIL FROM:<sender@example.net>\r\nRCPT TO:<{rcpt}@example.org>\r\n").into_bytes();
    group.extend(bdat(a, false));
    group.extend(bdat(b, false));
    group.extend(bdat(c, true));
    group.extend_from_slice(b"QUIT\r\n");
    c_session.send(&group);
    for what in ["MAIL", "RCPT", "BDAT 1", "BDAT 2", "BDAT LAST"] {
        c_session.expect_reply(what, 250);
    }
    c_session.expect_reply("QUIT", 221);
    let msgs = pf.wait_messages(rcpt, 1, DELIVERY_TIMEOUT);
    assert_eq!(
        String::from_utf8_lossy(&after_postfix_headers(&msgs[0])),
        String::from_utf8_lossy(&as_stored(&message)),
        "the stored message is not what the chunks held"
    );
    pf.settle(IpAddr::V4(source), 1, SETTLE_TIMEOUT);
    assert_eq!(pf.count(rcpt), 1, "one message only");
    assert_eq!(pf.count("victim"), 0, "nothing smuggled");
}

/// Runs `smtpping -C` (one message, `file`) from `source` through `gw` to `rcpt@example.org`;
/// returns its output.
fn smtpping(gw: &Gateway, source: Ipv4Addr, rcpt: &str, file: &std::path::Path) -> String {
    let out = Command::new("smtpping")
        .args(["-C", "-c", "1", "-b", &source.to_string()])
        .args(["-p", &gw.addr().port().to_string()])
        .args(["-S", "sender@example.net", "-H", "client.example.net"])
        .arg("-f")
        .arg(file)
        .arg(format!("{rcpt}@example.org"))
        .arg(format!("@{}", gw.addr().ip()))
        .stdin(Stdio::null())
        .output()
        .expect("run smtpping (package smtpping)");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "smtpping failed:\n{log}");
    log
}

/// smtpping 1.1.4 (the packaged BDAT client) says HELO, not EHLO, then sends `BDAT n LAST`
/// without looking for CHUNKING. The gateway refuses BDAT outside an EHLO session (`503`; it
/// never offered CHUNKING there, and the backend session, told HELO too, offers nothing), reads
/// the chunk and stays in step: smtpping's QUIT is answered, nothing is delivered.
#[test]
fn smtpping_bdat_after_helo_is_refused_in_step() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient"));
    let source = src("127.0.3.2");
    // A session that opens the backend first, so the gateway knows it offers CHUNKING.
    let mut warm = chunking_session(&gw, source);
    warm.expect("QUIT", 221);
    // From now on the first EHLO offers it (the last backend session did).
    let mut fresh = Client::connect(gw.addr(), source);
    let ehlo = fresh.expect("EHLO client.example.net", 250);
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    fresh.expect("QUIT", 221);
    let rcpt = "bdat-smtpping";
    let file = gw.dir.join("message.eml");
    std::fs::write(&file, tricky_message(rcpt)).expect("write message file");
    smtpping(&gw, source, rcpt, &file);
    pf.settle(IpAddr::V4(source), 3, SETTLE_TIMEOUT);
    assert_eq!(pf.count(rcpt), 0, "BDAT after HELO is not relayed");
    // Had the chunk been read as commands, its lines would have fired checks (unknown commands,
    // a nested MAIL...).
    let log = gw.log();
    assert!(
        !log.contains("check fired"),
        "the chunk was not read as a chunk:\n{log}"
    );
}

#[test]
fn bdat_0_last_ends_the_message() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient"));
    let source = src("127.0.3.3");
    let rcpt = "bdat-zero-last";
    let message =
        format!("{HEADERS}Subject: zero\r\nTo: <{rcpt}@example.org>\r\n\r\nbody\r\n").into_bytes();
    let mut c = chunking_session(&gw, source);
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect(&format!("RCPT TO:<{rcpt}@example.org>"), 250);
    c.send(&bdat(&message, false));
    c.expect_reply("BDAT", 250);
    c.expect("BDAT 0 LAST", 250);
    c.expect("QUIT", 221);
    let msgs = pf.wait_messages(rcpt, 1, DELIVERY_TIMEOUT);
    assert_eq!(after_postfix_headers(&msgs[0]), as_stored(&message));
}

#[test]
fn the_message_size_limit_holds_across_chunks() {
    let pf = postfix::shared();
    let gw =
        Gateway::start(GatewaySpec::new(pf.xclient, "xclient").smtp("max_message_size", "2048"));
    let source = src("127.0.3.4");
    let rcpt = "bdat-too-big";
    let mut c = chunking_session(&gw, source);
    assert!(
        c.expect("EHLO client.example.net", 250)
            .contains("SIZE 2048"),
        "SIZE advertised"
    );
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect(&format!("RCPT TO:<{rcpt}@example.org>"), 250);
    let piece = vec![b'x'; 1500];
    // Pipelined: the second chunk passes the limit, the third meets no transaction any more.
    let mut group = bdat(&piece, false);
    group.extend(bdat(&piece, false));
    group.extend(bdat(b"tail\r\n", true));
    c.send(&group);
    c.expect_reply("BDAT 1500", 250);
    let too_big = c.expect_reply("BDAT 1500 over the limit", 552);
    assert!(too_big.contains("5.3.4"), "{too_big}");
    c.expect_reply("BDAT after the refused chunk", 503);
    // The stream is in step and the backend transaction was reset: the next message goes through.
    c.expect("NOOP", 250);
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect(&format!("RCPT TO:<{rcpt}@example.org>"), 250);
    let small =
        format!("{HEADERS}Subject: small\r\nTo: <{rcpt}@example.org>\r\n\r\nok\r\n").into_bytes();
    c.send(&bdat(&small, true));
    c.expect_reply("BDAT LAST", 250);
    c.expect("QUIT", 221);
    let msgs = pf.wait_messages(rcpt, 1, DELIVERY_TIMEOUT);
    pf.settle(IpAddr::V4(source), 1, SETTLE_TIMEOUT);
    assert_eq!(pf.count(rcpt), 1, "only the small message");
    assert_eq!(after_postfix_headers(&msgs[0]), as_stored(&small));
}

#[test]
fn data_and_bdat_do_not_mix_and_refused_chunks_are_discarded() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient"));
    let source = src("127.0.3.5");
    let rcpt = "bdat-mixed";
    let mut c = chunking_session(&gw, source);
    // BDAT without a transaction: refused, its chunk (which looks like commands) discarded.
    c.send(&bdat(b"MAIL FROM:<x@example.net>\r\n", false));
    c.expect_reply("BDAT without MAIL", 503);
    c.expect("NOOP", 250);
    // DATA after BDAT: 503 (RFC 3030 section 2); RSET clears it.
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect(&format!("RCPT TO:<{rcpt}@example.org>"), 250);
    c.send(&bdat(b"Subject: half\r\n", false));
    c.expect_reply("BDAT", 250);
    let refused = c.expect("DATA", 503);
    assert!(refused.contains("5.5.1"), "{refused}");
    c.expect("RSET", 250);
    // BDAT after DATA in one transaction (DATA refused for want of recipients): 503, discarded.
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect(&format!("RCPT TO:<{}>", postfix::REFUSED_RECIPIENT), 550);
    c.expect("DATA", 554);
    c.send(&bdat(b"RSET\r\n", true));
    c.expect_reply("BDAT after DATA", 503);
    c.expect("RSET", 250);
    // BDAT with no accepted recipient: 554, discarded.
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect(&format!("RCPT TO:<{}>", postfix::REFUSED_RECIPIENT), 550);
    c.send(&bdat(b"QUIT\r\n", true));
    c.expect_reply("BDAT without recipients", 554);
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);
    pf.settle(IpAddr::V4(source), 1, SETTLE_TIMEOUT);
    assert_eq!(pf.count(rcpt), 0, "nothing delivered");
}

#[test]
fn a_chunk_over_max_chunk_size_closes_the_session() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient").smtp("max_chunk_size", "1024"));
    let source = src("127.0.3.6");
    let mut c = chunking_session(&gw, source);
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect("RCPT TO:<bdat-huge@example.org>", 250);
    let refused = c.expect("BDAT 99999999999999999999999999 LAST", 552);
    assert!(refused.contains("5.3.4"), "{refused}");
    assert!(c.closed(), "the session is closed");
    let mut c = chunking_session(&gw, source);
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect("RCPT TO:<bdat-huge@example.org>", 250);
    c.send(b"BDAT 1025\r\n");
    c.expect_reply("BDAT 1025", 552);
    assert!(c.closed(), "the session is closed");
    pf.settle(IpAddr::V4(source), 2, SETTLE_TIMEOUT);
    assert_eq!(pf.count("bdat-huge"), 0);
}

/// A backend (identity none) without CHUNKING: records every line it reads; after DATA it reads
/// to the final dot. Serves one connection.
fn backend_without_chunking() -> (SocketAddr, thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut w = stream.try_clone().expect("clone");
        let mut r = BufReader::new(stream);
        let _ = w.write_all(b"220 plain.backend ESMTP\r\n");
        let mut seen = Vec::new();
        let mut line = String::new();
        while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            let verb = line.trim_end().to_ascii_uppercase();
            seen.push(line.trim_end().to_string());
            let reply: &[u8] = if verb.starts_with("EHLO") {
                b"250-plain.backend\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
            } else if verb == "QUIT" {
                let _ = w.write_all(b"221 bye\r\n");
                break;
            } else {
                b"250 ok\r\n"
            };
            let _ = w.write_all(reply);
            line.clear();
        }
        seen
    });
    (addr, handle)
}

#[test]
fn a_backend_without_chunking_never_sees_bdat() {
    let (backend, seen) = backend_without_chunking();
    let gw = Gateway::start(GatewaySpec::new(backend, "none").smtp("max_chunk_size", "1024"));
    let mut c = Client::connect(gw.addr(), src("127.0.3.7"));
    let ehlo = c.expect("EHLO client.example.net", 250);
    assert!(!ehlo.contains("CHUNKING"), "{ehlo}");
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect("RCPT TO:<plain@example.org>", 250);
    let again = c.expect("EHLO client.example.net", 250);
    assert!(!again.contains("CHUNKING"), "the backend has none: {again}");
    c.expect("MAIL FROM:<sender@example.net>", 250);
    c.expect("RCPT TO:<plain@example.org>", 250);
    // A client that sends BDAT anyway: the chunk is read and discarded, the backend never sees it.
    c.send(&bdat(b"Subject: x\r\n\r\nBDAT 5 LAST\r\n", true));
    let refused = c.expect_reply("BDAT", 451);
    assert!(refused.contains("4.3.3"), "{refused}");
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);
    // The backend connection may sit in the gateway's pool: stopping the gateway ends it.
    drop(gw);
    let seen = seen.join().expect("backend thread");
    assert!(
        !seen.iter().any(|l| l.to_ascii_uppercase().contains("BDAT")),
        "the backend saw BDAT: {seen:?}"
    );
    // One RSET for the repeated EHLO, one for the refused BDAT's transaction.
    let resets = seen.iter().filter(|l| *l == "RSET").count();
    assert_eq!(resets, 2, "the transaction was reset: {seen:?}");
}

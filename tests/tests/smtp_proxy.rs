//! End-to-end tests of the SMTP proxy: real `smtp-gateway run` daemons (one per test, own config,
//! own free port, own pin directory) in front of one private Postfix per test binary, driven by
//! swaks, smtp-source, Python's smtplib/ssl, nmap and raw sockets.
//!
//! Every client binds its own source address in 127.0.0.0/8 (never 127.0.0.1 unless the tool
//! cannot bind), so the backend's `Received:` header and maillog prove which client identity the
//! gateway passed on (XCLIENT or PROXY v2), and "nothing was delivered" can wait for the end of
//! exactly that client's backend sessions. Every recipient local part is unique to its test: each
//! has its own Maildir at the backend.
//!
//! Tests: delivery with XCLIENT / PROXY v2 identity; STARTTLS (swaks, smtplib + SMTPUTF8),
//! implicit TLS, STARTTLS command injection; each check firing and passing (`check_*`); the
//! anti-relay battery and nmap's smtp-open-relay; SMTP smuggling under `bare_newlines` reject and
//! normalize; backend down / reset mid-DATA / failover; silent and trickling clients; 1,000
//! concurrent sessions and smtp-source; the per-source connection cap; a client's pipelined
//! MAIL/RCPT/DATA group forwarded to the backend as one group (Postfix and a scripted backend that
//! records what arrived before its MAIL reply), with and without backend PIPELINING. Product bugs these tests
//! found are described in `tests/SMTP_BUGS.md`.
//!
//! Needs root (bpffs pins, Postfix), the `postfix` package (postfix, smtp-source), swaks (with
//! `libnet-ssleay-perl`), python3, openssl, nmap (all installed by `cargo xtask setup`). Build the daemon first:
//! `cargo build && cargo test -p smtp-gateway-tests --test smtp_proxy`. Set `SGW_KEEP_POSTFIX=1`
//! to keep the backend's directory (maillog, Maildirs) for a post-mortem.

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
use postfix::Postfix;

/// Default wait for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait for a delivery to show up in a Maildir.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait for the backend sessions of a client to end and the queue to drain.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

fn src(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 source address")
}

// ---------------------------------------------------------------------------------------------
// Raw SMTP client
// ---------------------------------------------------------------------------------------------

/// One complete SMTP reply.
#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    /// Every line as received, joined by "\n" (codes included).
    text: String,
}

impl Reply {
    fn has(&self, needle: &str) -> bool {
        self.text.contains(needle)
    }
}

/// What one [`Client::fill`] came back with.
enum Fill {
    /// Bytes arrived (now in the buffer).
    Data,
    /// The peer closed the connection.
    Closed,
    /// The deadline passed first.
    TimedOut,
    /// The read failed (a reset, mostly).
    Failed(std::io::Error),
}

/// A blocking SMTP client on a raw TCP socket bound to a chosen source address.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    peer: SocketAddr,
}

impl Client {
    fn try_connect(addr: SocketAddr, source: Ipv4Addr) -> std::io::Result<Client> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.bind(&SocketAddr::from((source, 0)).into())?;
        socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            peer: addr,
        })
    }

    fn connect(addr: SocketAddr, source: Ipv4Addr) -> Client {
        Self::try_connect(addr, source)
            .unwrap_or_else(|e| panic!("connect {source} -> {addr}: {e}"))
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.peer));
    }

    /// Takes one complete reply out of the buffer, if there is one.
    fn parse_buffered(&mut self) -> Result<Option<Reply>, String> {
        let mut pos = 0;
        let mut lines = Vec::new();
        while let Some(nl) = self.buf[pos..].iter().position(|b| *b == b'\n') {
            let raw = &self.buf[pos..pos + nl];
            let line = String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw)).into_owned();
            pos += nl + 1;
            let b = line.as_bytes();
            if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
                return Err(format!("not an SMTP reply line: {line:?}"));
            }
            let last = match b.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(format!("not an SMTP reply line: {line:?}")),
            };
            let code = line[..3].parse().expect("three digits");
            lines.push(line);
            if last {
                self.buf.drain(..pos);
                return Ok(Some(Reply {
                    code,
                    text: lines.join("\n"),
                }));
            }
        }
        Ok(None)
    }

    /// Reads what arrives before `deadline` into the buffer: returns after one read that got
    /// data, or when the peer closed, the read failed or the deadline passed.
    fn fill(&mut self, deadline: Instant) -> Fill {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Fill::TimedOut;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Fill::Closed,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Fill::Data;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // A signal interrupts a read with a timeout even under SA_RESTART (signal(7)).
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Fill::Failed(e),
            }
        }
    }

    /// The next reply, or why there is none (closed, timed out, garbage).
    fn try_reply(&mut self, timeout: Duration) -> Result<Reply, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reply) = self.parse_buffered()? {
                return Ok(reply);
            }
            let why = match self.fill(deadline) {
                Fill::Data => continue,
                Fill::TimedOut => format!("no complete reply within {timeout:?}"),
                Fill::Closed => "connection closed".to_string(),
                Fill::Failed(e) => format!("read error {e}"),
            };
            return Err(format!(
                "{why}; buffered {:?}",
                String::from_utf8_lossy(&self.buf)
            ));
        }
    }

    fn reply(&mut self) -> Reply {
        self.try_reply(REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("reply from {}: {e}", self.peer))
    }

    /// Sends `line` + CRLF and returns the reply.
    fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// [`Client::step`] outside a named scenario: the failure names the client's address.
    #[track_caller]
    fn expect(&mut self, line: &str, code: u16) -> Reply {
        let what = match self.stream.local_addr() {
            Ok(local) => format!("session from {}", local.ip()),
            Err(_) => format!("session with {}", self.peer),
        };
        self.step(&what, line, code)
    }

    /// The next reply, asserted to have `code`; a failure names the scenario `what`, the `step`
    /// that was answered and what came back.
    #[track_caller]
    fn expect_reply(&mut self, what: &str, step: &str, code: u16) -> Reply {
        match self.try_reply(REPLY_TIMEOUT) {
            Ok(r) if r.code == code => r,
            Ok(r) => panic!("{what}: {step} -> expected {code}, got {}", r.text),
            Err(e) => panic!("{what}: {step} -> expected {code}, got {e}"),
        }
    }

    /// The banner (220) of scenario `what`.
    #[track_caller]
    fn banner(&mut self, what: &str) -> Reply {
        self.expect_reply(what, "banner", 220)
    }

    /// Reads until the peer closes (or `timeout`): everything received, and whether it closed.
    fn read_to_close(&mut self, timeout: Duration) -> (String, bool) {
        let deadline = Instant::now() + timeout;
        let closed = loop {
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::TimedOut => break false,
                Fill::Closed | Fill::Failed(_) => break true,
            }
        };
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        (text, closed)
    }

    /// Connected, banner (220) read.
    #[track_caller]
    fn greeted(addr: SocketAddr, source: Ipv4Addr) -> Client {
        let mut c = Client::connect(addr, source);
        c.banner(&format!("session from {source}"));
        c
    }

    /// Banner, EHLO `helo` (250 expected).
    #[track_caller]
    fn hello(addr: SocketAddr, source: Ipv4Addr, helo: &str) -> Client {
        let mut c = Client::greeted(addr, source);
        c.expect(&format!("EHLO {helo}"), 250);
        c
    }

    /// Sends `line` + CRLF and asserts the reply's code; a failure names the scenario `what`,
    /// the command and what came back.
    #[track_caller]
    fn step(&mut self, what: &str, line: &str, code: u16) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.expect_reply(what, &shorten(line), code)
    }

    /// [`Client::step`] for each command, in order.
    #[track_caller]
    fn steps(&mut self, what: &str, steps: &[(&str, u16)]) {
        for (line, code) in steps {
            self.step(what, line, *code);
        }
    }

    /// MAIL FROM:<sender@example.net>, RCPT TO:<`rcpt`@example.org> and DATA, each accepted.
    #[track_caller]
    fn open_data(&mut self, what: &str, rcpt: &str) {
        self.step(what, "MAIL FROM:<sender@example.net>", 250);
        self.step(what, &format!("RCPT TO:<{rcpt}@example.org>"), 250);
        self.step(what, "DATA", 354);
    }

    /// Sends the message text (ending in CRLF.CRLF) and asserts the code of the end-of-data
    /// reply.
    #[track_caller]
    fn end_data(&mut self, what: &str, text: &[u8], code: u16) {
        self.send(text);
        self.expect_reply(what, "end of data", code);
    }
}

/// A command line for a failure message: a long one is cut, with its length said.
fn shorten(line: &str) -> String {
    match line.char_indices().nth(60) {
        Some((cut, _)) => format!("{:?}... ({} octets)", &line[..cut], line.len()),
        None => format!("{line:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------------------------

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    fn all(&self) -> String {
        format!("--- stdout:\n{}\n--- stderr:\n{}", self.stdout, self.stderr)
    }
}

/// Runs a command, killed after `timeout` (then `ok` is false).
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let ok = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let mut stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    if Instant::now() >= deadline {
        stderr.push_str(&format!("\n(killed after {timeout:?})"));
    }
    Output { ok, stdout, stderr }
}

/// swaks against `server` from `source`, HELO `helo`, to `rcpt`, with extra arguments.
fn swaks(server: SocketAddr, source: Ipv4Addr, helo: &str, rcpt: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new("swaks");
    cmd.arg("--server")
        .arg(server.to_string())
        .arg("--local-interface")
        .arg(source.to_string())
        .args(["--ehlo", helo, "--from", "sender@example.net", "--to", rcpt])
        .args(["--timeout", "20"])
        .args(extra);
    run(&mut cmd, Duration::from_secs(60))
}

/// `python3 -c script 127.0.0.1 <gw's port> args...`; panics unless it exits 0.
fn python(script: &str, gw: &Gateway, args: &[&str]) -> String {
    let port = gw.addr().port().to_string();
    let out = run(
        Command::new("python3")
            .args(["-c", script, "127.0.0.1", &port])
            .args(args),
        Duration::from_secs(60),
    );
    assert!(out.ok, "python script failed\n{}", out.all());
    out.stdout
}

// ---------------------------------------------------------------------------------------------
// Message checks
// ---------------------------------------------------------------------------------------------

/// A body that exercises transparency: dots at line starts (a lone one included), a tab,
/// trailing spaces, 8-bit UTF-8 and a 900-octet line.
fn known_body() -> String {
    let long: String = (0..900).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    [
        "First line of the known body",
        ".a line with a leading dot",
        "..two leading dots",
        ".",
        "\tindented with a tab",
        "trailing spaces   ",
        "UTF-8: gr\u{fc}\u{df}e, \u{fc}n\u{ef}c\u{f6}d\u{e9}",
        &long,
        "last line",
    ]
    .join("\n")
}

/// Splits a stored message (LF line ends) into its header block and its body.
fn split_message(msg: &[u8]) -> (String, Vec<u8>) {
    let pos = msg
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or_else(|| {
            panic!(
                "no header/body separator in {:?}",
                String::from_utf8_lossy(msg)
            )
        });
    (
        String::from_utf8_lossy(&msg[..pos]).into_owned(),
        msg[pos + 2..].to_vec(),
    )
}

/// The first (topmost, i.e. the backend's own) `Received:` header, unfolded.
fn first_received(headers: &str) -> String {
    let mut out: Option<String> = None;
    for line in headers.lines() {
        match &mut out {
            None if line.to_ascii_lowercase().starts_with("received:") => out = Some(line.into()),
            Some(h) if line.starts_with([' ', '\t']) => {
                h.push(' ');
                h.push_str(line.trim());
            }
            Some(_) => break,
            None => {}
        }
    }
    out.unwrap_or_else(|| panic!("no Received header in:\n{headers}"))
}

/// The message's body equals `body` byte for byte (swaks appends only line ends after it) and
/// the backend's `Received:` names the client's address and HELO.
fn assert_delivered_as_sent(msg: &[u8], body: &str, source: Ipv4Addr, helo: &str) {
    let (headers, stored) = split_message(msg);
    let mut stored_trimmed = stored.as_slice();
    while let Some(rest) = stored_trimmed.strip_suffix(b"\n") {
        stored_trimmed = rest;
    }
    assert!(
        stored_trimmed == body.as_bytes(),
        "body changed in transit\n--- sent:\n{body}\n--- stored:\n{}",
        String::from_utf8_lossy(&stored)
    );
    let received = first_received(&headers);
    assert!(
        received.contains(&format!("[{source}]")) && received.contains(&format!("from {helo} ")),
        "the backend's Received header does not show the client {source} / {helo}: {received}"
    );
    assert!(received.contains("by backend.test"), "{received}");
}

/// swaks sends [`known_body`] from `source` (EHLO `helo`) through `server` to
/// `rcpt@example.org` with the `extra` arguments; the backend stores it as sent (see
/// [`assert_delivered_as_sent`]). Returns swaks' output for further checks.
#[track_caller]
fn assert_swaks_delivers(
    server: SocketAddr,
    source: Ipv4Addr,
    helo: &str,
    rcpt: &str,
    extra: &[&str],
) -> Output {
    let body = known_body();
    let args: Vec<&str> = extra.iter().copied().chain(["--body", &body]).collect();
    let out = swaks(server, source, helo, &format!("{rcpt}@example.org"), &args);
    assert!(
        out.ok,
        "swaks {} from {source} to {rcpt}@example.org failed\n{}",
        extra.join(" "),
        out.all()
    );
    let msgs = postfix::shared().wait_messages(rcpt, 1, DELIVERY_TIMEOUT);
    assert_delivered_as_sent(&msgs[0], &body, source, helo);
    out
}

/// Once the (one) backend session of `source` has ended: exactly one message in each of the
/// `delivered` Maildirs, none in the `refused` ones.
#[track_caller]
fn assert_mailboxes(pf: &Postfix, source: Ipv4Addr, delivered: &[&str], refused: &[&str]) {
    for local in delivered {
        pf.wait_messages(local, 1, DELIVERY_TIMEOUT);
    }
    pf.settle(IpAddr::V4(source), 1, SETTLE_TIMEOUT);
    for local in delivered {
        let n = pf.count(local);
        assert_eq!(n, 1, "{n} messages for {local}, expected exactly one");
    }
    for local in refused {
        let n = pf.count(local);
        assert_eq!(n, 0, "{n} messages for {local}, which was refused");
    }
}

// ---------------------------------------------------------------------------------------------
// 1-2. Delivery and identity
// ---------------------------------------------------------------------------------------------

fn delivery_with_identity(backend: SocketAddr, identity: &'static str, source: &str, rcpt: &str) {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(backend, identity));
    let source = src(source);
    let helo = format!("mx{}.example.net", source.octets()[3]);
    assert_swaks_delivers(gw.addr(), source, &helo, rcpt, &["--pipeline"]);
    assert_mailboxes(pf, source, &[rcpt], &[]);
}

#[test]
fn delivers_with_xclient_identity() {
    let pf = postfix::shared();
    delivery_with_identity(pf.xclient, "xclient", "127.0.0.77", "xclient-identity");
}

#[test]
fn delivers_with_proxy_v2_identity() {
    let pf = postfix::shared();
    delivery_with_identity(pf.proxy, "proxy-v2", "127.0.0.78", "proxy-identity");
}

// ---------------------------------------------------------------------------------------------
// 3. TLS
// ---------------------------------------------------------------------------------------------

#[test]
fn starttls_with_swaks_delivers() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient").tls());
    let source = src("127.0.0.79");
    let out = assert_swaks_delivers(
        gw.addr(),
        source,
        "mx79.example.net",
        "tls-starttls",
        &["--tls"],
    );
    assert!(
        out.stdout.contains("STARTTLS") && out.stdout.contains("TLS started"),
        "no TLS session in the transcript\n{}",
        out.all()
    );
}

const PY_SMTPUTF8: &str = r#"
import smtplib, ssl, sys
host, port, src, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, port, local_hostname="mx80.example.net", source_address=(src, 0), timeout=20)
code, _ = s.ehlo()
assert code == 250, code
assert s.has_extn("starttls"), s.esmtp_features
code, text = s.starttls(context=ctx)
assert code == 220, (code, text)
code, _ = s.ehlo()
assert code == 250, code
assert not s.has_extn("starttls"), "STARTTLS offered again inside TLS"
assert s.has_extn("smtputf8"), s.esmtp_features
sender = "j\u00f6rg.m\u00fcller@example.net"
msg = ("From: J\u00f6rg M\u00fcller <" + sender + ">\r\nTo: <" + rcpt + ">\r\n"
       "Subject: Gr\u00fc\u00dfe aus K\u00f6ln\r\n\r\nSch\u00f6ne Gr\u00fc\u00dfe, \u00fcn\u00efc\u00f6d\u00e9\r\n").encode("utf-8")
refused = s.sendmail(sender, [rcpt], msg, mail_options=["SMTPUTF8"])
assert not refused, refused
s.quit()
print("delivered")
"#;

#[test]
fn starttls_with_python_smtputf8_delivers() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient").tls());
    let out = python(
        PY_SMTPUTF8,
        &gw,
        &["127.0.0.80", "tls-smtputf8@example.org"],
    );
    assert!(out.contains("delivered"), "{out}");
    let msgs = pf.wait_messages("tls-smtputf8", 1, DELIVERY_TIMEOUT);
    let text = String::from_utf8_lossy(&msgs[0]).into_owned();
    assert!(
        text.contains("Return-Path: <j\u{f6}rg.m\u{fc}ller@example.net>"),
        "UTF-8 envelope sender lost:\n{text}"
    );
    assert!(
        text.contains("Subject: Gr\u{fc}\u{df}e aus K\u{f6}ln")
            && text.contains("Sch\u{f6}ne Gr\u{fc}\u{df}e, \u{fc}n\u{ef}c\u{f6}d\u{e9}"),
        "UTF-8 header/body changed:\n{text}"
    );
    let (headers, _) = split_message(&msgs[0]);
    let received = first_received(&headers);
    assert!(
        received.contains("[127.0.0.80]") && received.contains("from mx80.example.net "),
        "{received}"
    );
}

#[test]
fn implicit_tls_listener_delivers() {
    let pf = postfix::shared();
    let gw = Gateway::start(
        GatewaySpec::new(pf.xclient, "xclient")
            .tls()
            // MX traffic over implicit TLS: the kind's default profile (submission) wants AUTH.
            .listener_with_profile("smtps", "mx"),
    );
    assert_swaks_delivers(
        gw.listeners[1],
        src("127.0.0.81"),
        "mx81.example.net",
        "tls-implicit",
        &["--tls-on-connect"],
    );
}

const PY_STARTTLS_INJECTION: &str = r#"
import json, socket, ssl, sys
host, port, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
buf = b""
def reply(sock):
    global buf
    while True:
        pos = 0
        lines = []
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos:nl].rstrip(b"\r")
            pos = nl + 1
            lines.append(line)
            if len(line) < 4 or line[3:4] == b" ":
                buf = buf[pos:]
                return b"\n".join(lines).decode("utf-8", "replace")
        data = sock.recv(4096)
        if not data:
            raise EOFError("closed; buffered %r" % buf)
        buf += data
s = socket.create_connection((host, port), timeout=10, source_address=(src, 0))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
out["banner"] = reply(s)
s.sendall(b"EHLO mx82.example.net\r\n")
out["ehlo"] = reply(s)
s.sendall(b"STARTTLS\r\nRSET\r\n")
out["starttls"] = reply(s)
# Anything more in plaintext now would answer the injected RSET.
s.settimeout(0.5)
try:
    extra = s.recv(4096, socket.MSG_PEEK)
except (TimeoutError, BlockingIOError):
    extra = b""
out["plaintext_after_220"] = (buf + extra).decode("latin-1")
if out["plaintext_after_220"]:
    print(json.dumps(out))
    sys.exit(0)
s.settimeout(10)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="gw.test")
out["tls_version"] = t.version()
# Anything received before we say something inside TLS answers the injected RSET.
t.settimeout(1.0)
try:
    early = t.recv(4096)
    out["closed_after_handshake"] = early == b""
except TimeoutError:
    early = b""
out["tls_unsolicited"] = early.decode("latin-1")
t.settimeout(10)
buf = early
t.sendall(b"EHLO mx82.example.net\r\n")
out["ehlo_tls"] = reply(t)
t.sendall(b"QUIT\r\n")
out["quit"] = reply(t)
print(json.dumps(out))
"#;

#[test]
fn starttls_command_injection_is_not_answered() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient").tls());
    let out = python(PY_STARTTLS_INJECTION, &gw, &["127.0.0.82"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("script JSON");
    let get = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    assert!(
        get("ehlo").contains("STARTTLS"),
        "STARTTLS not offered: {v}"
    );
    assert!(get("starttls").starts_with("220"), "STARTTLS: {v}");
    assert_eq!(
        get("plaintext_after_220"),
        "",
        "the gateway answered the RSET injected after STARTTLS in plaintext: {v}"
    );
    assert_eq!(
        get("tls_unsolicited"),
        "",
        "the gateway answered the injected RSET inside the TLS session: {v}"
    );
    let ehlo = get("ehlo_tls");
    assert!(
        ehlo.starts_with("250-gw.test") && !ehlo.contains("STARTTLS"),
        "first reply inside TLS must be the EHLO reply (without STARTTLS): {v}"
    );
    assert!(get("quit").starts_with("221"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// 4. Checks: each fires on a misbehaving client and lets a well-behaved one through
// ---------------------------------------------------------------------------------------------

/// A gateway with default checks in front of the XCLIENT backend.
fn default_gateway(pf: &Postfix) -> Gateway {
    Gateway::start(GatewaySpec::new(pf.xclient, "xclient"))
}

/// Asserts the connection got a reply with `code` and was closed, and never got `not_code`.
#[track_caller]
fn assert_closed_with(c: &mut Client, code: &str, not: &[&str], what: &str) {
    let (text, closed) = c.read_to_close(Duration::from_secs(5));
    assert!(
        text.lines().any(|l| l.starts_with(code)),
        "{what}: expected {code}, got {text:?}"
    );
    for n in not {
        assert!(
            !text.lines().any(|l| l.starts_with(n)),
            "{what}: unexpected {n} in {text:?}"
        );
    }
    assert!(closed, "{what}: connection not closed after {text:?}");
}

/// A client that misbehaves in one write and must lose its session for it.
struct Misbehaviour {
    /// Names the scenario in failure messages.
    what: &'static str,
    /// Sends `input` at once instead of reading the banner first.
    pregreets: bool,
    /// Commands sent after the banner, one at a time, each with the code it must get.
    prelude: &'static [(&'static str, u16)],
    /// The misbehaviour itself.
    input: &'static [u8],
}

impl Misbehaviour {
    /// `input` right after the banner.
    fn after_banner(what: &'static str, input: &'static [u8]) -> Self {
        Misbehaviour {
            what,
            pregreets: false,
            prelude: &[],
            input,
        }
    }

    /// `input` right after connecting, before the banner.
    fn before_banner(what: &'static str, input: &'static [u8]) -> Self {
        Misbehaviour {
            pregreets: true,
            ..Self::after_banner(what, input)
        }
    }

    /// `input` after the banner and `prelude`.
    fn after(self, prelude: &'static [(&'static str, u16)]) -> Self {
        Misbehaviour { prelude, ..self }
    }

    /// Plays the scenario from `source`: the gateway answers `code` and closes the connection,
    /// and never answers one of `never` (it must not act on the input).
    #[track_caller]
    fn assert_closes_with(&self, gw: &Gateway, source: Ipv4Addr, code: &str, never: &[&str]) {
        let mut c = Client::connect(gw.addr(), source);
        if !self.pregreets {
            c.banner(self.what);
        }
        c.steps(self.what, self.prelude);
        c.send(self.input);
        assert_closed_with(&mut c, code, never, self.what);
    }
}

/// A well-behaved session from `source` after its misbehaving ones: banner, EHLO, `steps` and
/// QUIT, each answered as expected. A misbehaviour costs the client its session, nothing more.
#[track_caller]
fn assert_clean_session(gw: &Gateway, source: Ipv4Addr, steps: &[(&str, u16)]) {
    let what = format!("clean session from {source}");
    let mut c = Client::connect(gw.addr(), source);
    c.banner(&what);
    c.step(&what, "EHLO mx.example.net", 250);
    c.steps(&what, steps);
    c.step(&what, "QUIT", 221);
}

#[test]
fn check_pregreet() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient").smtp("greet_pause", "\"1s\""));
    let source = src("127.0.1.1");

    // Fires: EHLO right after connecting, before the banner is complete.
    Misbehaviour::before_banner(
        "pregreet (EHLO before the banner)",
        b"EHLO mx.example.net\r\n",
    )
    .assert_closes_with(&gw, source, "521", &["250"]);

    // Passes: a client that waits for the final "220 " line.
    let what = "after the greet pause";
    let start = Instant::now();
    let mut c = Client::connect(gw.addr(), source);
    let banner = c.banner(what);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "the banner came before the greet pause ended ({:?}): {}",
        start.elapsed(),
        banner.text
    );
    c.steps(what, &[("EHLO mx.example.net", 250), ("QUIT", 221)]);

    // Passes: swaks waits for the banner and delivers.
    let out = swaks(
        gw.addr(),
        src("127.0.1.2"),
        "mx.example.net",
        "check-pregreet@example.org",
        &[],
    );
    assert!(out.ok, "swaks through the greet pause\n{}", out.all());
    pf.wait_messages("check-pregreet", 1, DELIVERY_TIMEOUT);
}

#[test]
fn check_pipelining_before_ehlo_reply() {
    let pf = postfix::shared();
    let gw = default_gateway(pf);
    let source = src("127.0.1.3");

    Misbehaviour::after_banner(
        "pipelining before the EHLO reply",
        b"EHLO a\r\nMAIL FROM:<>\r\n",
    )
    .assert_closes_with(&gw, source, "421", &["250"]);

    // Passes: pipelining after the EHLO reply (RFC 2920) is legitimate.
    let what = "pipelining after the EHLO reply";
    let mut c = Client::hello(gw.addr(), source, "mx.example.net");
    let replies = pipelined_group(
        &mut c,
        &[
            "MAIL FROM:<sender@example.net>",
            "RCPT TO:<check-pipelining@example.org>",
        ],
    );
    assert_replies(&replies, &[(250, ""), (250, "")], what);
    c.step(what, "DATA", 354);
    c.end_data(what, b"Subject: pipelined\r\n\r\nhello\r\n.\r\n", 250);
    c.expect("QUIT", 221);
    pf.wait_messages("check-pipelining", 1, DELIVERY_TIMEOUT);
}

#[test]
fn check_message_text_before_354() {
    let pf = postfix::shared();
    let gw = default_gateway(pf);
    let source = src("127.0.1.4");

    Misbehaviour::after_banner(
        "text before 354",
        b"DATA\r\nSubject: too early\r\n\r\nhello\r\n.\r\n",
    )
    .after(&[
        ("EHLO mx.example.net", 250),
        ("MAIL FROM:<sender@example.net>", 250),
        ("RCPT TO:<check-early-text@example.org>", 250),
    ])
    .assert_closes_with(&gw, source, "421", &["354", "250"]);
    assert_mailboxes(pf, source, &[], &["check-early-text"]);

    // Passes: the text after the 354.
    let what = "text after 354";
    let mut c = Client::hello(gw.addr(), source, "mx.example.net");
    c.open_data(what, "check-late-text");
    c.end_data(
        what,
        b"From: <sender@example.net>\r\nTo: <check-late-text@example.org>\r\nSubject: t\r\n\r\n\
          hello\r\n.\r\n",
        250,
    );
    c.expect("QUIT", 221);
    pf.wait_messages("check-late-text", 1, DELIVERY_TIMEOUT);
}

#[test]
fn check_non_smtp() {
    let gw = default_gateway(postfix::shared());
    let source = src("127.0.1.5");
    Misbehaviour::after_banner("HTTP request", b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .assert_closes_with(&gw, source, "421", &["250", "500"]);
    assert_clean_session(&gw, source, &[]);
}

#[test]
fn check_bare_lf_in_command() {
    let gw = default_gateway(postfix::shared());
    let source = src("127.0.1.6");
    let bare: [(&str, &[u8]); 2] = [
        ("bare LF in a command", b"EHLO mx.example.net\n"),
        ("bare CR in a command", b"EHLO mx.example\rnet\r\n"),
    ];
    for (what, input) in bare {
        Misbehaviour::after_banner(what, input).assert_closes_with(&gw, source, "421", &["250"]);
    }
    assert_clean_session(&gw, source, &[]);
}

#[test]
fn check_nul_byte() {
    let gw = default_gateway(postfix::shared());
    let source = src("127.0.1.7");
    Misbehaviour::after_banner("NUL in a command", b"EHLO mx.exa\0mple.net\r\n")
        .assert_closes_with(&gw, source, "421", &["250"]);
    assert_clean_session(&gw, source, &[]);
}

#[test]
fn check_long_command_line() {
    let gw = default_gateway(postfix::shared());
    let over = format!("NOOP {}", "x".repeat(600));
    let exact = format!("NOOP {}", "x".repeat(505));
    let long_rcpt = format!(
        "RCPT TO:<check-long-line@example.org> X-PAD={}",
        "y".repeat(600)
    );
    let mut c = Client::hello(gw.addr(), src("127.0.1.8"), "mx.example.net");
    c.steps(
        "long command lines",
        &[
            // 5 + 600 + 2 octets: over 512. Refused (500), the session goes on (long_line = reject).
            (&over, 500),
            // Exactly 512 octets, CRLF included: fine.
            (&exact, 250),
            // A long RCPT must not be cut and executed either.
            ("MAIL FROM:<sender@example.net>", 250),
            (&long_rcpt, 500),
            ("QUIT", 221),
        ],
    );
}

#[test]
fn check_helo_invalid() {
    let gw = default_gateway(postfix::shared());
    let mut c = Client::greeted(gw.addr(), src("127.0.1.9"));
    c.steps(
        "invalid HELO names",
        &[
            ("EHLO -bad-", 550),
            ("HELO bad_name!.example", 550),
            // The refused HELO leaves the client without a HELO: MAIL is refused.
            ("MAIL FROM:<sender@example.net>", 503),
            ("EHLO mx.example.net", 250),
            ("QUIT", 221),
        ],
    );
}

#[test]
fn check_helo_own_name() {
    let gw = default_gateway(postfix::shared());
    let source = src("127.0.1.10");

    let mut failures = Vec::new();
    let mut c = Client::greeted(gw.addr(), source);
    for helo in ["gw.test", "GW.Test."] {
        let r = c.cmd(&format!("EHLO {helo}"));
        if r.code != 550 {
            failures.push(format!(
                "EHLO {helo} (the gateway's own name) -> {}",
                r.text.replace('\n', " | ")
            ));
        }
    }
    // The gateway's own address as a literal (the client is 127.0.1.10, the gateway 127.0.0.1).
    // It also scores literal_mismatch (tarpit): no QUIT after it.
    let r = c.cmd("EHLO [127.0.0.1]");
    if r.code != 550 {
        failures.push(format!(
            "EHLO [127.0.0.1] (the gateway's own address) -> {}",
            r.text.replace('\n', " | ")
        ));
    }
    drop(c);
    assert_clean_session(&gw, source, &[]);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn check_too_many_unknown_commands() {
    let gw = default_gateway(postfix::shared());
    let source = src("127.0.1.11");

    // max_unknown_commands = 3: the fourth closes the session.
    Misbehaviour::after_banner("fourth unknown command", b"XYZZY4\r\n")
        .after(&[
            ("EHLO mx.example.net", 250),
            ("XYZZY1", 500),
            ("XYZZY2", 500),
            ("XYZZY3", 500),
        ])
        .assert_closes_with(&gw, source, "421", &["250"]);
    // Three are refused one by one, and the session goes on.
    assert_clean_session(
        &gw,
        source,
        &[
            ("XYZZY1", 500),
            ("XYZZY2", 500),
            ("XYZZY3", 500),
            ("NOOP", 250),
        ],
    );
}

#[test]
fn check_max_recipients() {
    let pf = postfix::shared();
    let gw = Gateway::start(GatewaySpec::new(pf.xclient, "xclient").smtp("max_recipients", "2"));
    let source = src("127.0.1.12");

    let what = "max_recipients = 2";
    let mut c = Client::hello(gw.addr(), source, "mx.example.net");
    c.steps(
        what,
        &[
            ("MAIL FROM:<sender@example.net>", 250),
            ("RCPT TO:<check-maxrcpt-a@example.org>", 250),
            ("RCPT TO:<check-maxrcpt-b@example.org>", 250),
            ("RCPT TO:<check-maxrcpt-c@example.org>", 452),
            ("DATA", 354),
        ],
    );
    c.end_data(what, b"Subject: two recipients\r\n\r\nhello\r\n.\r\n", 250);
    c.expect("QUIT", 221);
    assert_mailboxes(
        pf,
        source,
        &["check-maxrcpt-a", "check-maxrcpt-b"],
        &["check-maxrcpt-c"],
    );
}

#[test]
fn check_rcpt_unaccepted_domain() {
    let pf = postfix::shared();
    let gw = default_gateway(pf);

    let mut c = Client::hello(gw.addr(), src("127.0.1.13"), "mx.example.net");
    c.expect("MAIL FROM:<sender@example.net>", 250);
    let r = c.cmd("RCPT TO:<someone@example.com>");
    assert!(r.code == 550 && r.has("5.7.1"), "{}", r.text);
    c.expect("RCPT TO:<check-domain-ok@example.org>", 250);
    c.expect("DATA", 354);
    c.end_data(
        "accepted recipient",
        b"Subject: t\r\n\r\nhello\r\n.\r\n",
        250,
    );
    c.expect("QUIT", 221);
    pf.wait_messages("check-domain-ok", 1, DELIVERY_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// 5. Relay battery
// ---------------------------------------------------------------------------------------------

#[test]
fn relay_battery() {
    let pf = postfix::shared();
    let gw = default_gateway(pf);
    let bad_source = src("127.0.4.1");
    let bad = [
        "user@example.com",
        "user@EXAMPLE.COM.",
        "user%evil.test@example.org",
        "@relay.example.org:user@evil.test",
        // A source route towards an accepted domain: relay.rs refuses source routes for every
        // client (a backend honouring routes would send the message to evil.test first).
        "@evil.test:user@example.org",
        "evil.test!user@example.org",
        "\"user@evil.test\"@example.org",
        "user@[127.0.0.1]",
        "user@example.org.evil.test",
        "user@notexample.org",
    ];
    let mut failures = Vec::new();
    for (i, rcpt) in bad.iter().enumerate() {
        // One session each, with a sender unique to the probe: if anything got through, the
        // backend's qmgr logs that sender.
        let mut c = Client::hello(gw.addr(), bad_source, "mx.example.net");
        c.expect(&format!("MAIL FROM:<relay-probe-{i}@example.net>"), 250);
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        if !(r.code == 550 && r.has("5.7.1")) {
            failures.push(format!("RCPT TO:<{rcpt}> -> {}", r.text));
        }
        let data = c.cmd("DATA");
        if data.code == 354 {
            failures.push(format!("DATA after RCPT TO:<{rcpt}> -> 354"));
            c.send(b"Subject: relayed\r\n\r\nrelayed\r\n.\r\n");
            let _ = c.try_reply(REPLY_TIMEOUT);
        }
        let _ = c.try_reply(Duration::ZERO);
        c.send(b"QUIT\r\n");
        let _ = c.read_to_close(Duration::from_secs(5));
    }
    pf.settle(IpAddr::V4(bad_source), bad.len(), SETTLE_TIMEOUT);
    let log = pf.maillog();
    for (i, rcpt) in bad.iter().enumerate() {
        if log.contains(&format!("from=<relay-probe-{i}@example.net>")) {
            failures.push(format!("the backend queued a message for RCPT TO:<{rcpt}>"));
        }
    }
    for local in [
        "user",
        "user%evil.test",
        "evil.test!user",
        "\"user@evil.test\"",
    ] {
        if pf.count(local) > 0 {
            failures.push(format!("a Maildir for {local:?} received mail"));
        }
    }

    // The accepted domain in other cases, with a trailing dot: accepted and delivered.
    let good_source = src("127.0.4.2");
    for rcpt in [
        "Relay-Ok-A@Example.ORG.",
        "relay-ok-b@example.org",
        "RELAY-OK-C@EXAMPLE.ORG",
    ] {
        let mut c = Client::hello(gw.addr(), good_source, "mx.example.net");
        c.expect("MAIL FROM:<sender@example.net>", 250);
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        if r.code != 250 {
            failures.push(format!("RCPT TO:<{rcpt}> (accepted domain) -> {}", r.text));
            continue;
        }
        let what = format!("message to {rcpt}");
        c.step(&what, "DATA", 354);
        c.end_data(&what, b"Subject: accepted\r\n\r\nhello\r\n.\r\n", 250);
        c.expect("QUIT", 221);
        let local = rcpt.split('@').next().expect("local part");
        pf.wait_messages(local, 1, DELIVERY_TIMEOUT);
    }
    assert!(
        failures.is_empty(),
        "relay battery:\n{}",
        failures.join("\n")
    );
}

#[test]
fn relay_nmap_smtp_open_relay() {
    // `cargo xtask setup` installs nmap: its absence is a broken setup, not a reason to skip.
    assert!(
        Command::new("nmap").arg("--version").output().is_ok(),
        "nmap is not installed: run `cargo xtask setup`"
    );
    let pf = postfix::shared();
    // nmap runs all its relay probes in one session: let it finish them all (no drop after 10
    // errors, no tarpit or score refusal), so every probe meets the anti-relay check itself.
    let gw = Gateway::start(
        GatewaySpec::new(pf.xclient, "xclient")
            .smtp("max_errors", "100")
            .extra("[score]\ntarpit = 100\ntempfail = 100\nreject = 100"),
    );
    let port = gw.addr().port().to_string();
    // `+` runs the script whatever service nmap guesses for the port (no -sV needed). The
    // domain is also nmap's EHLO name.
    let out = run(
        Command::new("nmap")
            .args(["-n", "-Pn", "-p", &port, "--script", "+smtp-open-relay"])
            .args([
                "--script-args",
                "smtp-open-relay.domain=nmap.example.net,smtp-open-relay.ip=127.0.0.1",
            ])
            .arg("127.0.0.1"),
        Duration::from_secs(120),
    );
    assert!(out.ok, "nmap failed\n{}", out.all());
    assert!(
        out.stdout.contains("doesn't seem to be an open relay"),
        "nmap did not conclude \"not an open relay\"\n{}",
        out.all()
    );
    assert!(
        !out.stdout.contains("Server is an open relay"),
        "nmap found an open relay\n{}",
        out.all()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Smuggling
// ---------------------------------------------------------------------------------------------

/// End-of-data look-alikes (SEC Consult 2023, hannob/smtpsmug).
const SMUGGLE_VARIANTS: [(&str, &[u8]); 8] = [
    ("\\n.\\n", b"\n.\n"),
    ("\\n.\\r\\n", b"\n.\r\n"),
    ("\\r.\\r", b"\r.\r"),
    ("\\r\\n.\\r", b"\r\n.\r"),
    ("\\r.\\r\\n", b"\r.\r\n"),
    ("\\r\\n.\\n", b"\r\n.\n"),
    ("\\n.\\r", b"\n.\r"),
    ("\\r.\\n", b"\r.\n"),
];

/// One transaction to `first@example.org` whose text hides a second transaction, from
/// `smuggle-<tag>@evil.test` to `smuggled-<tag>@example.org`, behind `variant`. Returns the reply
/// to the (real) end of data.
fn smuggle(
    gw: &Gateway,
    source: Ipv4Addr,
    first: &str,
    tag: &str,
    variant: &[u8],
) -> Result<Reply, String> {
    let mut c = Client::hello(gw.addr(), source, "mx.example.net");
    c.expect("MAIL FROM:<probe@example.net>", 250);
    c.expect(&format!("RCPT TO:<{first}@example.org>"), 250);
    c.expect("DATA", 354);
    let mut payload = format!(
        "From: <probe@example.net>\r\nTo: <{first}@example.org>\r\nSubject: smuggling probe\r\n\r\ntext"
    )
    .into_bytes();
    payload.extend_from_slice(variant);
    payload.extend_from_slice(
        format!(
            "MAIL FROM:<smuggle-{tag}@evil.test>\r\nRCPT TO:<smuggled-{tag}@example.org>\r\n\
             DATA\r\nFrom: <smuggle-{tag}@evil.test>\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        )
        .as_bytes(),
    );
    c.send(&payload);
    let reply = c.try_reply(REPLY_TIMEOUT);
    // Whatever happens next (QUIT answered or connection closed) is not the point.
    c.send(b"QUIT\r\n");
    let _ = c.read_to_close(Duration::from_secs(3));
    reply
}

fn smuggling_battery(policy: &str, net: u8) {
    let pf = postfix::shared();
    let gw = Gateway::start(
        GatewaySpec::new(pf.xclient, "xclient").smtp("bare_newlines", format!("\"{policy}\"")),
    );
    let mut failures = Vec::new();
    let mut delivered_firsts = Vec::new();
    for (i, (name, variant)) in SMUGGLE_VARIANTS.iter().enumerate() {
        let source = Ipv4Addr::new(127, 0, net, i as u8 + 1);
        let first = format!("smug-{policy}-{i}");
        let tag = format!("{policy}-{i}");
        match smuggle(&gw, source, &first, &tag, variant) {
            Ok(r) if policy == "reject" => {
                if !(r.code == 554 && r.has("5.6.0")) {
                    failures.push(format!(
                        "{name}: end of data -> {} (expected 554 5.6.0)",
                        r.text
                    ));
                }
            }
            Ok(r) => {
                // normalize: every variant becomes one well-formed message, relayed.
                if r.code == 250 {
                    delivered_firsts.push((name, first.clone()));
                } else {
                    failures.push(format!("{name}: end of data -> {} (expected 250)", r.text));
                }
            }
            Err(e) => failures.push(format!("{name}: no reply to the end of data: {e}")),
        }
        pf.settle(IpAddr::V4(source), 1, SETTLE_TIMEOUT);
        let smuggled = pf.count(&format!("smuggled-{tag}"));
        if smuggled > 0 {
            failures.push(format!(
                "{name}: {smuggled} smuggled message(s) delivered to smuggled-{tag}@example.org"
            ));
        }
        if pf
            .maillog()
            .contains(&format!("from=<smuggle-{tag}@evil.test>"))
        {
            failures.push(format!(
                "{name}: the backend queued a message from smuggle-{tag}@evil.test"
            ));
        }
        if policy == "reject" && pf.count(&first) > 0 {
            failures.push(format!("{name}: the refused message was delivered anyway"));
        }
    }
    for (name, first) in &delivered_firsts {
        let msgs = pf.wait_messages(first, 1, DELIVERY_TIMEOUT);
        let text = String::from_utf8_lossy(&msgs[0]).into_owned();
        if !text.contains("MAIL FROM:<smuggle-") || !text.contains("RCPT TO:<smuggled-") {
            failures.push(format!(
                "{name}: normalized message lacks the would-be smuggled commands as text:\n{text}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "smuggling ({policy}):\n{}",
        failures.join("\n")
    );
}

#[test]
fn smuggling_bare_newlines_reject() {
    smuggling_battery("reject", 2);
}

#[test]
fn smuggling_bare_newlines_normalize() {
    smuggling_battery("normalize", 3);
}

#[test]
fn normalize_keeps_leading_dots_after_bare_newlines() {
    // A dot that follows a bare CR or LF was not at a line start for the client, so the client did
    // not stuff it; once normalised it is at a line start and must reach the mailbox intact.
    let pf = postfix::shared();
    let gw = Gateway::start(
        GatewaySpec::new(pf.xclient, "xclient").smtp("bare_newlines", "\"normalize\""),
    );
    let what = "dots after bare newlines";
    let mut c = Client::hello(gw.addr(), src("127.0.3.100"), "mx.example.net");
    c.open_data(what, "normalize-dots");
    c.end_data(
        what,
        b"Subject: dots\r\n\r\nline1\r.after-cr\r\nline2\n.after-lf\r\n..stuffed\r\n\
          line3\r\n.\r\n",
        250,
    );
    c.expect("QUIT", 221);
    let msgs = pf.wait_messages("normalize-dots", 1, DELIVERY_TIMEOUT);
    let (_, body) = split_message(&msgs[0]);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "line1\n.after-cr\nline2\n.after-lf\n.stuffed\nline3\n",
        "normalised text as delivered"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Backend failures
// ---------------------------------------------------------------------------------------------

#[test]
fn backend_down_gives_451_and_session_survives() {
    let dead = SocketAddr::from(([127, 0, 0, 1], gateway::free_port()));
    let gw = Gateway::start(GatewaySpec::new(dead, "xclient"));
    let mut c = Client::hello(gw.addr(), src("127.0.5.1"), "mx.example.net");
    let r = c.cmd("MAIL FROM:<sender@example.net>");
    assert_eq!(r.code, 451, "MAIL with the backend down: {}", r.text);
    let r = c.cmd("RCPT TO:<backend-down@example.org>");
    assert!(r.code >= 400, "RCPT without a transaction: {}", r.text);
    c.expect("NOOP", 250);
    let r = c.cmd("MAIL FROM:<sender@example.net>");
    assert_eq!(r.code, 451, "second MAIL with the backend down: {}", r.text);
    c.expect("QUIT", 221);
}

/// A backend on a free port (a thread, blocking I/O): hands its connections, one after another,
/// to `serve` with the connection's index (read timeout 10 s), until the connections served
/// have returned `sessions` records in all (a connection may carry several sessions), and
/// returns the records. It stops accepting after 60 s.
fn fake_backend<T: Send + 'static>(
    sessions: usize,
    mut serve: impl FnMut(usize, TcpStream) -> Vec<T> + Send + 'static,
) -> (SocketAddr, thread::JoinHandle<Vec<T>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake backend");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let handle = thread::spawn(move || {
        let mut seen = Vec::new();
        let mut connections = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < sessions && Instant::now() < deadline {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => panic!("fake backend accept: {e}"),
            };
            stream.set_nonblocking(false).expect("blocking");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            seen.extend(serve(connections, stream));
            connections += 1;
        }
        seen
    });
    (addr, handle)
}

/// A fake backend (identity none) for two connections: answers up to 354, then resets the
/// connection. Connection 0 resets right after 354, connection 1 after the message text arrived.
/// Returns what each connection saw.
fn fake_backend_resetting_in_data() -> (SocketAddr, thread::JoinHandle<Vec<Vec<String>>>) {
    fake_backend(2, |mode, stream| {
        vec![serve_resetting_in_data(mode, stream)]
    })
}

fn serve_resetting_in_data(mode: usize, stream: TcpStream) -> Vec<String> {
    let mut seen = Vec::new();
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);
    let _ = w.write_all(b"220 fake.backend ESMTP\r\n");
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        seen.push(format!("{mode}: {text}"));
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let answer: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250-fake.backend\r\n250 PIPELINING\r\n",
            "MAIL" => b"250 2.1.0 Ok\r\n",
            "RCPT" => b"250 2.1.5 Ok\r\n",
            "QUIT" => b"221 2.0.0 Bye\r\n",
            "DATA" => {
                let _ = w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                if mode == 1 {
                    let mut text = Vec::new();
                    let _ = r.read_until(b'\n', &mut text);
                    seen.push(format!("{mode}: text {:?}", String::from_utf8_lossy(&text)));
                } else {
                    thread::sleep(Duration::from_millis(100));
                }
                // Reset, not a polite close.
                let _ = socket2::SockRef::from(&w).set_linger(Some(Duration::ZERO));
                seen.push(format!("{mode}: reset"));
                break;
            }
            _ => b"250 2.0.0 Ok\r\n",
        };
        if w.write_all(answer).is_err() {
            break;
        }
    }
    seen
}

#[test]
fn backend_reset_during_data_gives_451() {
    let (fake, handle) = fake_backend_resetting_in_data();
    let gw = Gateway::start(GatewaySpec::new(fake, "none"));
    let mut failures = Vec::new();
    for mode in 0..2 {
        let mut c = Client::hello(gw.addr(), src("127.0.5.2"), "mx.example.net");
        c.open_data(&format!("backend reset (mode {mode})"), "backend-reset");
        thread::sleep(Duration::from_millis(300));
        c.send(b"Subject: reset\r\n\r\nline 1\r\nline 2\r\n.\r\n");
        match c.try_reply(REPLY_TIMEOUT) {
            Ok(r) if r.code == 451 => {}
            Ok(r) => failures.push(format!(
                "backend reset (mode {mode}): end of data -> {}",
                r.text
            )),
            Err(e) => failures.push(format!("backend reset (mode {mode}): {e}")),
        }
        c.send(b"QUIT\r\n");
        match c.try_reply(REPLY_TIMEOUT) {
            Ok(r) if r.code == 221 => {}
            other => failures.push(format!(
                "QUIT after the backend reset (mode {mode}): {other:?}"
            )),
        }
    }
    drop(gw);
    let seen = handle.join().expect("fake backend").concat();
    assert!(
        failures.is_empty(),
        "{}\n--- fake backend saw:\n{}",
        failures.join("\n"),
        seen.join("\n")
    );
}

#[test]
fn backend_failover_to_second_server() {
    let pf = postfix::shared();
    let dead = SocketAddr::from(([127, 0, 0, 1], gateway::free_port()));
    let mut spec = GatewaySpec::new(dead, "xclient");
    spec.backends.push((pf.xclient, "xclient"));
    let gw = Gateway::start(spec);
    // The first backend is down: the message goes to the second.
    assert_swaks_delivers(
        gw.addr(),
        src("127.0.5.3"),
        "mx.example.net",
        "backend-failover",
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Timeouts
// ---------------------------------------------------------------------------------------------

/// A gateway with `command_timeout = 1s` and a session from `source` on it, banner read.
fn one_second_command_timeout(source: &str) -> (Gateway, Client) {
    let pf = postfix::shared();
    let gw =
        Gateway::start(GatewaySpec::new(pf.xclient, "xclient").smtp("command_timeout", "\"1s\""));
    let c = Client::greeted(gw.addr(), src(source));
    (gw, c)
}

#[test]
fn silent_client_times_out() {
    let (_gw, mut c) = one_second_command_timeout("127.0.8.1");
    let start = Instant::now();
    let r = c
        .try_reply(Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("silent client: no 421 within 6 s: {e}"));
    let waited = start.elapsed();
    assert!(r.code == 421 && r.has("4.4.2"), "{}", r.text);
    assert!(
        waited >= Duration::from_millis(800) && waited <= Duration::from_secs(4),
        "421 after {waited:?} with command_timeout = 1s"
    );
    let (rest, closed) = c.read_to_close(Duration::from_secs(3));
    assert!(
        closed,
        "connection still open after the timeout reply (then got {rest:?})"
    );
}

#[test]
fn trickling_client_times_out() {
    // command_timeout is the time to send one command (RFC 5321 4.5.3.2), not the time between
    // two bytes: a client trickling a command one byte at a time must not hold a session forever.
    let (_gw, mut c) = one_second_command_timeout("127.0.8.2");
    let start = Instant::now();
    let mut got = None;
    for byte in b"NOOP this command never ends".iter().cycle().take(20) {
        if c.stream.write_all(&[*byte]).is_err() {
            break;
        }
        if let Ok(r) = c.try_reply(Duration::from_millis(400)) {
            got = Some((r, start.elapsed()));
            break;
        }
    }
    let (r, after) = got.unwrap_or_else(|| {
        panic!(
            "a client sending one byte every 400 ms is still connected after {:?} with \
             command_timeout = 1s (no reply at all)",
            start.elapsed()
        )
    });
    assert!(r.code == 421 && r.has("4.4.2"), "{}", r.text);
    assert!(
        after <= Duration::from_secs(3),
        "421 only after {after:?} with command_timeout = 1s"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Load
// ---------------------------------------------------------------------------------------------

fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn thousand_concurrent_sessions() {
    raise_nofile(8192);
    let pf = postfix::shared();
    let gw = Gateway::start(
        GatewaySpec::new(pf.xclient, "xclient")
            .smtp("max_connections", "1100")
            .smtp("max_connections_per_source", "300"),
    );
    let start = Instant::now();
    let mut clients = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let source = Ipv4Addr::new(127, 0, 6, (i % 4) as u8 + 1);
        clients.push(
            Client::try_connect(gw.addr(), source)
                .unwrap_or_else(|e| panic!("connection {i} from {source}: {e}")),
        );
    }
    let mut failures = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        match c.try_reply(REPLY_TIMEOUT) {
            Ok(r) if r.code == 220 => {}
            Ok(r) => failures.push(format!("connection {i}: {}", r.text)),
            Err(e) => failures.push(format!("connection {i}: {e}")),
        }
    }
    let all_greeted = start.elapsed();
    assert!(
        failures.is_empty(),
        "{} of 1000 sessions got no banner, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    // Still delivering while 1000 sessions are open.
    let out = swaks(
        gw.addr(),
        src("127.0.6.10"),
        "mx.example.net",
        "load-concurrent@example.org",
        &["--pipeline"],
    );
    assert!(out.ok, "swaks with 1000 sessions open\n{}", out.all());
    pf.wait_messages("load-concurrent", 1, DELIVERY_TIMEOUT);
    eprintln!("1000 sessions greeted in {all_greeted:?}");
    drop(clients);
}

#[test]
fn smtp_source_200_messages() {
    let pf = postfix::shared();
    let gw = Gateway::start(
        GatewaySpec::new(pf.xclient, "xclient").smtp("max_connections_per_source", "100"),
    );
    let start = Instant::now();
    let out = run(
        Command::new("smtp-source")
            .args([
                "-s",
                "20",
                "-m",
                "200",
                "-l",
                "1024",
                "-M",
                "mx-load.example.net",
            ])
            .args(["-f", "a@example.net", "-t", "load-source@example.org"])
            .arg(format!("127.0.0.1:{}", gw.addr().port())),
        Duration::from_secs(120),
    );
    let sent = start.elapsed();
    assert!(out.ok, "smtp-source failed\n{}", out.all());
    pf.wait_messages("load-source", 200, Duration::from_secs(90));
    let delivered = start.elapsed();
    pf.settle(IpAddr::V4(src("127.0.0.1")), 0, SETTLE_TIMEOUT);
    assert_eq!(pf.count("load-source"), 200, "exactly 200 messages");
    eprintln!("smtp-source: 200 messages sent in {sent:?}, delivered after {delivered:?}");
}

// ---------------------------------------------------------------------------------------------
// 10. Connection caps
// ---------------------------------------------------------------------------------------------

#[test]
fn per_source_connection_cap() {
    let pf = postfix::shared();
    let gw = Gateway::start(
        GatewaySpec::new(pf.xclient, "xclient").smtp("max_connections_per_source", "2"),
    );
    let source = src("127.0.7.1");
    let mut first = Client::greeted(gw.addr(), source);
    let mut second = Client::greeted(gw.addr(), source);
    let mut third = Client::connect(gw.addr(), source);
    let (text, closed) = third.read_to_close(Duration::from_secs(5));
    assert!(
        text.starts_with("421") && closed,
        "third concurrent connection from {source}: {text:?} (closed: {closed})"
    );
    // Another source is not affected.
    let mut other = Client::greeted(gw.addr(), src("127.0.7.2"));
    // A slot comes back when a session ends.
    first.expect("QUIT", 221);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = Client::connect(gw.addr(), source);
        let r = again.reply();
        if r.code == 220 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot for {source} 5 s after a session ended: {}",
            r.text
        );
        thread::sleep(Duration::from_millis(100));
    }
    second.expect("QUIT", 221);
    other.expect("QUIT", 221);
}

// ---------------------------------------------------------------------------------------------
// 11. Pipelining towards the backend
// ---------------------------------------------------------------------------------------------

/// Sends `lines` (CRLF added) in one write and reads one reply per line.
fn pipelined_group(c: &mut Client, lines: &[&str]) -> Vec<Reply> {
    let group: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
    c.send(group.as_bytes());
    lines.iter().map(|_| c.reply()).collect()
}

/// Asserts each reply's code and that its text contains the given needle.
#[track_caller]
fn assert_replies(replies: &[Reply], expected: &[(u16, &str)], what: &str) {
    let seen: Vec<&str> = replies.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(replies.len(), expected.len(), "{what}: {seen:#?}");
    for (r, (code, needle)) in replies.iter().zip(expected) {
        assert!(
            r.code == *code && r.has(needle),
            "{what}: expected {code} {needle:?} in this position, got {seen:#?}"
        );
    }
}

#[test]
fn pipelined_group_delivers_to_accepted_recipients_only() {
    let pf = postfix::shared();
    let gw = default_gateway(pf);
    let source = src("127.0.9.1");
    let mut c = Client::hello(gw.addr(), source, "mx.example.net");
    let replies = pipelined_group(
        &mut c,
        &[
            "MAIL FROM:<sender@example.net>",
            "RCPT TO:<pipe-group-a@example.org>",
            "RCPT TO:<someone@example.com>",
            &format!("RCPT TO:<{}>", postfix::REFUSED_RECIPIENT),
            "RCPT TO:<pipe-group-b@example.org>",
            "DATA",
        ],
    );
    assert_replies(
        &replies,
        &[
            (250, "2.1.0"),
            (250, "2.1.5"),
            (550, "5.7.1 <someone@example.com>"),
            (550, "refused by the test backend"),
            (250, "2.1.5"),
            (354, ""),
        ],
        "MAIL + RCPT (accepted, relay refused, backend refused, accepted) + DATA in one write",
    );
    c.end_data(
        "pipelined group",
        b"Subject: pipelined\r\n\r\nhello\r\n.\r\n",
        250,
    );
    c.expect("QUIT", 221);
    assert_mailboxes(
        pf,
        source,
        &["pipe-group-a", "pipe-group-b"],
        &["backend-refused"],
    );
}

/// What one backend session of [`scripted_backend`] saw: from its EHLO (or HELO) to the next
/// one on the same connection (the gateway reuses an idle connection for the next session when
/// the backend takes no identity), or to the end of the connection.
#[derive(Debug, Default)]
struct BackendSession {
    /// Every command line, in order.
    commands: Vec<String>,
    /// The commands that had arrived (after MAIL) before MAIL was answered.
    before_mail_reply: Vec<String>,
    /// Message texts received to their final dot.
    messages: usize,
}

/// A scripted backend (identity none) serving connections, one at a time, until it has seen
/// `sessions` sessions (a connection may carry several): EHLO offers PIPELINING
/// when `pipelining`; MAIL from a sender containing "refused" gets `550 5.7.1`, RCPT to a
/// recipient containing "refused" gets `550 5.1.1`; DATA takes the text and answers `250`. Before
/// answering a MAIL it waits 300 ms and records which commands arrived meanwhile: an
/// unpipelining forwarder never sends one before the MAIL reply.
fn scripted_backend(
    pipelining: bool,
    sessions: usize,
) -> (SocketAddr, thread::JoinHandle<Vec<BackendSession>>) {
    fake_backend(sessions, move |_, mut stream| {
        serve_scripted(&mut stream, pipelining)
    })
}

/// QUIT (221), the gateway stopped, and what the scripted backend saw: `sessions` sessions.
#[track_caller]
fn quit_and_collect(
    mut c: Client,
    gw: Gateway,
    handle: thread::JoinHandle<Vec<BackendSession>>,
    sessions: usize,
) -> Vec<BackendSession> {
    c.expect("QUIT", 221);
    drop(gw);
    let seen = handle.join().expect("scripted backend");
    assert_eq!(seen.len(), sessions, "backend sessions: {seen:#?}");
    seen
}

/// Reads whatever is available now (nothing blocks).
fn read_available(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut chunk = [0u8; 16384];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        buf.extend_from_slice(&chunk[..n]);
    }
    stream.set_nonblocking(false).expect("blocking");
}

/// Complete lines at the start of `buf`, without their CRLF.
fn complete_lines(buf: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(buf)
        .split("\r\n")
        .map(str::to_string)
        .collect();
    lines.pop();
    lines
}

/// Serves one connection; returns its sessions.
fn serve_scripted(stream: &mut TcpStream, pipelining: bool) -> Vec<BackendSession> {
    let mut sessions = Vec::new();
    let mut session = BackendSession::default();
    let mut buf = Vec::new();
    let _ = stream.write_all(b"220 scripted.backend ESMTP\r\n");
    let mut in_data = false;
    loop {
        let Some(nl) = buf.windows(2).position(|w| w == b"\r\n") else {
            let mut chunk = [0u8; 16384];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let line = String::from_utf8_lossy(&buf[..nl]).into_owned();
        buf.drain(..nl + 2);
        if in_data {
            if line == "." {
                in_data = false;
                session.messages += 1;
                let _ = stream.write_all(b"250 2.0.0 Ok: queued\r\n");
            }
            continue;
        }
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        if matches!(verb.as_str(), "EHLO" | "HELO") && !session.commands.is_empty() {
            sessions.push(std::mem::take(&mut session));
        }
        session.commands.push(line.clone());
        let answer: &[u8] = match verb.as_str() {
            "EHLO" if pipelining => b"250-scripted.backend\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "EHLO" => b"250-scripted.backend\r\n250 8BITMIME\r\n",
            "HELO" => b"250 scripted.backend\r\n",
            "MAIL" => {
                thread::sleep(Duration::from_millis(300));
                read_available(stream, &mut buf);
                session.before_mail_reply = complete_lines(&buf);
                if line.contains("refused") {
                    b"550 5.7.1 sender refused by the scripted backend\r\n"
                } else {
                    b"250 2.1.0 Ok\r\n"
                }
            }
            "RCPT" if line.contains("refused") => {
                b"550 5.1.1 recipient refused by the scripted backend\r\n"
            }
            "RCPT" => b"250 2.1.5 Ok\r\n",
            "DATA" => {
                in_data = true;
                b"354 End data with <CR><LF>.<CR><LF>\r\n"
            }
            "QUIT" => {
                let _ = stream.write_all(b"221 2.0.0 Bye\r\n");
                break;
            }
            _ => b"250 2.0.0 Ok\r\n",
        };
        if stream.write_all(answer).is_err() {
            break;
        }
    }
    if !session.commands.is_empty() {
        sessions.push(session);
    }
    sessions
}

/// The group of the scripted-backend tests: accepted, backend-refused, accepted, relay-refused
/// (a recipient the gateway refuses is answered once every earlier reply is known: last here, so
/// the three before it go out with MAIL).
const SCRIPTED_GROUP: [&str; 6] = [
    "MAIL FROM:<sender@example.net>",
    "RCPT TO:<a@example.org>",
    "RCPT TO:<refused@example.org>",
    "RCPT TO:<b@example.org>",
    "RCPT TO:<someone@example.com>",
    "DATA",
];

const SCRIPTED_REPLIES: [(u16, &str); 6] = [
    (250, "2.1.0"),
    (250, "2.1.5"),
    (550, "scripted backend"),
    (250, "2.1.5"),
    (550, "5.7.1 <someone@example.com>"),
    (354, ""),
];

/// A session from `source`: [`SCRIPTED_GROUP`] in one write, answered as [`SCRIPTED_REPLIES`],
/// then the message text (250) and QUIT.
#[track_caller]
fn send_scripted_group(gw: &Gateway, source: &str, what: &str) {
    // The session's end line comes after its backend connection went back to the pool: waiting
    // for it lets the next session find the connection there, however loaded the machine.
    let client = format!(": session client={source}:");
    let ended = [client.as_str()];
    let before = gw.count_logged(&ended);
    let mut c = Client::hello(gw.addr(), src(source), "mx.example.net");
    let replies = pipelined_group(&mut c, &SCRIPTED_GROUP);
    assert_replies(&replies, &SCRIPTED_REPLIES, what);
    let text = format!("Subject: {what}\r\n\r\nhello\r\n.\r\n");
    c.end_data(what, text.as_bytes(), 250);
    c.expect("QUIT", 221);
    assert!(
        gw.wait_logged_n(&ended, before + 1, Duration::from_secs(10)),
        "{what}: no session end logged:\n{}",
        gw.log()
    );
}

#[test]
fn pipelined_group_reaches_the_backend_in_one_write() {
    let (backend, handle) = scripted_backend(true, 2);
    let gw = Gateway::start(GatewaySpec::new(backend, "none"));
    send_scripted_group(&gw, "127.0.9.2", "pipelined group");

    // The backend refuses the sender: every RCPT gets the gateway's own 503, DATA too.
    let mut c = Client::hello(gw.addr(), src("127.0.9.2"), "mx.example.net");
    let replies = pipelined_group(
        &mut c,
        &[
            "MAIL FROM:<refused@example.net>",
            "RCPT TO:<a@example.org>",
            "RCPT TO:<someone@example.com>",
            "DATA",
        ],
    );
    assert_replies(
        &replies,
        &[
            (550, "scripted backend"),
            (503, "Need MAIL before RCPT"),
            (503, "Need MAIL before RCPT"),
            (503, "Need MAIL before DATA"),
        ],
        "pipelined group after a refused MAIL",
    );
    let seen = quit_and_collect(c, gw, handle, 2);
    assert_eq!(
        seen[0].before_mail_reply,
        [
            "RCPT TO:<a@example.org>",
            "RCPT TO:<refused@example.org>",
            "RCPT TO:<b@example.org>"
        ],
        "the RCPTs that passed the gateway's checks are written with MAIL; DATA waits: {seen:#?}"
    );
    assert!(
        !seen[0].commands.iter().any(|c| c.contains("example.com")),
        "a relay-refused recipient reached the backend: {seen:#?}"
    );
    assert_eq!(
        seen[1].before_mail_reply,
        ["RCPT TO:<a@example.org>"],
        "{seen:#?}"
    );
    assert!(
        !seen[1].commands.iter().any(|c| c == "DATA"),
        "DATA forwarded without a transaction: {seen:#?}"
    );
}

#[test]
fn a_pipelined_group_ending_in_data_reaches_the_backend_in_one_write_with_it() {
    let (backend, handle) = scripted_backend(true, 1);
    let gw = Gateway::start(GatewaySpec::new(backend, "none"));
    let what = "MAIL, RCPT, DATA in one group";
    let mut c = Client::hello(gw.addr(), src("127.0.9.4"), "mx.example.net");
    let replies = pipelined_group(
        &mut c,
        &[
            "MAIL FROM:<sender@example.net>",
            "RCPT TO:<a@example.org>",
            "DATA",
        ],
    );
    assert_replies(&replies, &[(250, "2.1.0"), (250, "2.1.5"), (354, "")], what);
    c.end_data(what, b"Subject: one write\r\n\r\nhello\r\n.\r\n", 250);
    let seen = quit_and_collect(c, gw, handle, 1);
    assert_eq!(
        seen[0].before_mail_reply,
        ["RCPT TO:<a@example.org>", "DATA"],
        "DATA goes with the MAIL and RCPT it ends: {seen:#?}"
    );
    assert_eq!(seen[0].messages, 1, "{seen:#?}");
}

#[test]
fn a_pipelined_data_the_backend_lets_in_without_recipients_gets_no_text() {
    // The scripted backend answers every DATA 354, even after refusing the only recipient.
    let (backend, handle) = scripted_backend(true, 2);
    let gw = Gateway::start(GatewaySpec::new(backend, "none"));
    let what = "a group whose only recipient the backend refuses";
    let mut c = Client::hello(gw.addr(), src("127.0.9.5"), "mx.example.net");
    let replies = pipelined_group(
        &mut c,
        &[
            "MAIL FROM:<sender@example.net>",
            "RCPT TO:<refused@example.org>",
            "DATA",
        ],
    );
    assert_replies(
        &replies,
        &[
            (250, "2.1.0"),
            (550, "scripted backend"),
            (554, "No valid recipients"),
        ],
        what,
    );
    // As after Postfix's own 554, the transaction is reset before the next one, which goes
    // through a new backend connection.
    c.expect("RSET", 250);
    let what = "the next transaction";
    let replies = pipelined_group(
        &mut c,
        &[
            "MAIL FROM:<sender@example.net>",
            "RCPT TO:<b@example.org>",
            "DATA",
        ],
    );
    assert_replies(&replies, &[(250, "2.1.0"), (250, "2.1.5"), (354, "")], what);
    c.end_data(what, b"Subject: after\r\n\r\nhello\r\n.\r\n", 250);
    c.expect("QUIT", 221);
    // The postmaster learns why a backend connection was dropped.
    let warning = ["WARN", "backend let a DATA without recipients in"];
    assert!(
        gw.wait_logged(&warning, Duration::from_secs(10)),
        "no warning logged:\n{}",
        gw.log()
    );
    drop(gw);
    let seen = handle.join().expect("scripted backend");
    assert_eq!(seen.len(), 2, "backend sessions: {seen:#?}");
    assert_eq!(
        (
            seen[0].commands.last().map(String::as_str),
            seen[0].messages
        ),
        (Some("DATA"), 0),
        "the connection whose DATA was let in without recipients ends there: {seen:#?}"
    );
    assert_eq!(
        seen[1].before_mail_reply,
        ["RCPT TO:<b@example.org>", "DATA"],
        "{seen:#?}"
    );
    assert_eq!(seen[1].messages, 1, "{seen:#?}");
}

#[test]
fn pipelined_group_without_backend_pipelining() {
    let (backend, handle) = scripted_backend(false, 1);
    let gw = Gateway::start(GatewaySpec::new(backend, "none"));
    send_scripted_group(&gw, "127.0.9.3", "group, backend without PIPELINING");
    drop(gw);
    let seen = handle.join().expect("scripted backend");
    assert_eq!(seen.len(), 1, "backend sessions: {seen:#?}");
    assert!(
        seen[0].before_mail_reply.is_empty(),
        "commands sent before the MAIL reply to a backend without PIPELINING: {seen:#?}"
    );
    assert_eq!(
        seen[0].commands[1..],
        [
            "MAIL FROM:<sender@example.net>",
            "RCPT TO:<a@example.org>",
            "RCPT TO:<refused@example.org>",
            "RCPT TO:<b@example.org>",
            "DATA",
            "QUIT",
        ],
        "{seen:#?}"
    );
}

/// A client that waits for each reply: the gateway answers its MAIL itself and sends it to the
/// backend in one write with the first recipient (`backend.mail_with_first_rcpt`, on by
/// default). A sender the backend refuses is the refusal of every recipient of the transaction,
/// as with Postfix's `smtpd_delay_reject`: no error counted, nothing delivered, and the client
/// may start the next transaction at once.
#[test]
fn a_mail_sent_alone_reaches_the_backend_with_the_first_recipient() {
    let (backend, handle) = scripted_backend(true, 1);
    // One error closes the session: the refusals below must not count as the client's.
    let gw = Gateway::start(GatewaySpec::new(backend, "none").smtp("max_errors", "0"));
    let what = "MAIL, RCPT, DATA one at a time";
    let mut c = Client::hello(gw.addr(), src("127.0.9.6"), "mx.example.net");
    c.open_data(what, "a");
    c.end_data(what, b"Subject: one at a time\r\n\r\nhello\r\n.\r\n", 250);

    let what = "a sender the backend refuses";
    let mail = c.step(what, "MAIL FROM:<refused@example.net>", 250);
    assert!(mail.text.contains("2.1.0"), "{what}: {}", mail.text);
    for rcpt in ["RCPT TO:<a@example.org>", "RCPT TO:<b@example.org>"] {
        let reply = c.step(what, rcpt, 550);
        assert!(
            reply
                .text
                .contains("sender refused by the scripted backend"),
            "{what}: {rcpt} -> {}",
            reply.text
        );
    }
    c.step(what, "DATA", 554);

    let what = "the next transaction, without RSET";
    c.open_data(what, "c");
    c.end_data(what, b"Subject: after\r\n\r\nhello\r\n.\r\n", 250);

    // A held MAIL the client resets with a new EHLO never reached the backend: nothing to
    // reset there either.
    let what = "a held MAIL, then EHLO";
    c.step(what, "MAIL FROM:<later@example.net>", 250);
    c.step(what, "EHLO mx.example.net", 250);
    let seen = quit_and_collect(c, gw, handle, 2);
    assert!(
        !seen
            .iter()
            .flat_map(|s| &s.commands)
            .any(|l| l == "RSET" || l.contains("later@")),
        "the backend saw the held MAIL or a reset for it: {seen:#?}"
    );
    assert_eq!(
        seen[1].commands.first().map(String::as_str),
        Some("EHLO mx.example.net"),
        "the new EHLO is replayed: {seen:#?}"
    );
    assert_eq!(
        seen[0].commands[1..9],
        [
            "MAIL FROM:<sender@example.net>",
            "RCPT TO:<a@example.org>",
            "DATA",
            "MAIL FROM:<refused@example.net>",
            "RCPT TO:<a@example.org>",
            "MAIL FROM:<sender@example.net>",
            "RCPT TO:<c@example.org>",
            "DATA",
        ],
        "the second recipient of the refused sender stays at the gateway: {seen:#?}"
    );
    assert_eq!(
        seen[0].before_mail_reply,
        ["RCPT TO:<c@example.org>"],
        "the recipient goes in the MAIL's write: {seen:#?}"
    );
    assert_eq!(seen[0].messages, 2, "{seen:#?}");
}

/// `backend.mail_with_first_rcpt = false`: each MAIL waits for the backend's own reply, which
/// the client gets as it is.
#[test]
fn a_mail_sent_alone_waits_for_the_backend_when_asked_to() {
    let (backend, handle) = scripted_backend(true, 1);
    let spec = GatewaySpec::new(backend, "none").backend("mail_with_first_rcpt", "false");
    let gw = Gateway::start(spec);
    let what = "MAIL answered by the backend";
    let mut c = Client::hello(gw.addr(), src("127.0.9.7"), "mx.example.net");
    let refused = c.step(what, "MAIL FROM:<refused@example.net>", 550);
    assert!(
        refused
            .text
            .contains("sender refused by the scripted backend"),
        "{what}: {}",
        refused.text
    );
    c.open_data(what, "a");
    c.end_data(what, b"Subject: waited\r\n\r\nhello\r\n.\r\n", 250);
    let seen = quit_and_collect(c, gw, handle, 1);
    assert!(
        seen[0].before_mail_reply.is_empty(),
        "a command went before the MAIL reply: {seen:#?}"
    );
    assert_eq!(seen[0].messages, 1, "{seen:#?}");
}

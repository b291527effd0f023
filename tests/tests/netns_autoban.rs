//! End-to-end tests of auto-ban (issue 4, section 7): session verdicts of the SMTP proxy feeding
//! the XDP blocklist, and bans surviving a daemon restart.
//!
//! The lab: a client namespace and a gateway namespace joined by a veth ([`Topology`]); in the
//! gateway namespace, `smtp-sink` (package postfix) as the backend MTA on 127.0.0.1:10025 and
//! `smtp-gateway run` (started with `nsenter --net`, so its bpffs pins outlive it) with XDP attached
//! natively on its veth and the SMTP proxy listening on port 25 (IPv4 and IPv6). Clients are raw
//! sockets bound to addresses of the client veth; every SMTP exchange and connect is bounded in
//! time.
//!
//! - [`pregreeter_is_banned_in_the_kernel_per_source_until_the_ttl_ends`]: a pregreeting client
//!   gets 521 and is banned (`block list`: origin autoban, reason "autoban: pregreet"); its next
//!   SYN is dropped silently and counted (`stats`: verdict and per-source drops), and only that
//!   SYN (the ban waits for the pregreet session to close); a clean IPv4 address next to it still
//!   delivers, while the IPv6 ban covers the bot's /64; an allowlisted pregreeter gets 521 but is never banned and still
//!   connects; the ban expires after its TTL, leaves the map, and the source connects again.
//! - [`bans_survive_sigterm_and_kill9_with_their_remaining_ttl`]: an auto-ban, a manual ban with
//!   a TTL and a permanent prefix keep dropping while no daemon runs (after SIGTERM, then after
//!   `kill -9`), and after each restart are listed with the same origin, reason and time added, and
//!   a remaining TTL that kept counting down (not reset).
//!
//! Each test has its own namespaces (`sgw<pid>-<tag>-gw|cl`), pins
//! (`/sys/fs/bpf/sgw-ab-<pid>-<tag>`) and files (`/tmp/sgw-ab-<pid>-<tag>`), so the tests run in
//! parallel with each other and with the other suites; the lab's guards kill the processes they
//! started by PID, detach, and delete everything when the test ends, also on panic.
//!
//! Needs root and `cargo build` first (or `SMTP_GATEWAY_BIN`):
//! `cargo test -p smtp-gateway-tests --test netns_autoban`.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use support::{
    daemon::Daemon,
    netns::{ChildGuard, Topology, in_netns, nsenter, start_service, wait_until},
};

const SMTP: u16 = 25;
/// The backend (smtp-sink) inside the gateway namespace.
const SINK_ADDR: &str = "127.0.0.1:10025";
/// The gateway's greet pause: a client that talks during it is a pregreeter.
const GREET_PAUSE: Duration = Duration::from_millis(300);

/// Pregreets and is banned.
const BOT_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));
const BOT_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11));
/// Behaves, next to the bots (the IPv6 one in the same /64 as [`BOT_V6`], so its ban covers it).
const CLEAN_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 12));
const CLEAN_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x12));
/// Pregreets too, but is in `dataplane.allowlist`.
const ALLOWED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 13));
/// Banned by `block add --ttl`.
const MANUAL_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 21));
/// Inside [`NET_V4_PREFIX`], banned for good by `block add`.
const NET_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 130));
const NET_V4_PREFIX: &str = "198.18.0.128/25";

/// A connect that must succeed gets this long (milliseconds when the path is open).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connect that must be dropped gets this long: under the 1 s initial SYN retransmission
/// timeout, so a blocked connect sends exactly one SYN.
const BLOCKED_TIMEOUT: Duration = Duration::from_millis(900);
/// One SMTP reply, or the close after a refusal.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The auto-ban follows the verdict asynchronously: it must be listed within this.
const BAN_TIMEOUT: Duration = Duration::from_secs(5);
/// The daemons' `dataplane.sweep_interval`.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// A raw SMTP client in the client namespace
// ---------------------------------------------------------------------------------------------

/// A blocking SMTP client on a TCP socket bound to a chosen source address of the client veth.
struct Smtp {
    stream: TcpStream,
    buf: Vec<u8>,
    /// "src -> dst", for messages.
    what: String,
}

impl Smtp {
    /// One TCP connect from `src` to the gateway's port 25 (the socket is made in the client
    /// namespace; it keeps it when used from this thread).
    fn connect(topo: &Topology, src: IpAddr, timeout: Duration) -> std::io::Result<Smtp> {
        let dst = Topology::gw_addr(src, SMTP);
        let ns = topo.cl_ns.clone();
        let stream = in_netns(&ns, move || -> std::io::Result<TcpStream> {
            let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            socket.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
            socket.connect_timeout(&SockAddr::from(dst), timeout)?;
            socket.set_tcp_nodelay(true)?;
            Ok(socket.into())
        })?;
        Ok(Smtp {
            stream,
            buf: Vec::new(),
            what: format!("{src} -> {dst}"),
        })
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.what));
    }

    /// Takes one complete (possibly multi-line) reply out of the buffer: (code, text).
    fn parse_buffered(&mut self) -> Option<(u16, String)> {
        let mut pos = 0;
        let mut lines = Vec::new();
        while let Some(nl) = self.buf[pos..].iter().position(|b| *b == b'\n') {
            let raw = &self.buf[pos..pos + nl];
            let line = String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw)).into_owned();
            pos += nl + 1;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or_else(|| panic!("{}: not an SMTP reply line: {line:?}", self.what));
            let last = !line[3..].starts_with('-');
            lines.push(line);
            if last {
                self.buf.drain(..pos);
                return Some((code, lines.join("\n")));
            }
        }
        None
    }

    /// The next reply; panics when none comes within [`REPLY_TIMEOUT`].
    fn reply(&mut self) -> (u16, String) {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some(reply) = self.parse_buffered() {
                return reply;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no complete reply within {REPLY_TIMEOUT:?}; buffered {:?}",
                self.what,
                String::from_utf8_lossy(&self.buf)
            );
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "{}: closed while waiting for a reply; buffered {:?}",
                    self.what,
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // A signal interrupts a read with a timeout even under SA_RESTART (signal(7)).
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("{}: read: {e}", self.what),
            }
        }
    }

    /// Sends `line` + CRLF and asserts the reply code; returns the reply text.
    fn expect(&mut self, line: &str, code: u16) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        let (got, text) = self.reply();
        assert_eq!(got, code, "{}: {line:?} -> {text}", self.what);
        text
    }

    /// Reads until the peer closes (or [`REPLY_TIMEOUT`]): everything received, and whether it
    /// closed (a reset counts as closed: the data before it is kept).
    fn read_to_close(&mut self) -> (String, bool) {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let closed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break false;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        (String::from_utf8_lossy(&self.buf).into_owned(), closed)
    }
}

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

/// One test's world. Fields drop in order: the backend, then the daemon (killed, detached, files
/// removed), then the namespaces.
struct Lab {
    /// `smtp-sink` in the gateway namespace, held until the lab drops (killed by PID).
    _sink: ChildGuard,
    gw: Daemon,
    topo: Topology,
}

impl Lab {
    /// Namespaces, backend and configuration for the test tagged `tag`; the daemon is not
    /// started. `autoban_ttl` is `[autoban] ttl`; `allowlist` goes to `dataplane.allowlist`.
    fn new(tag: &str, client_addrs: &[IpAddr], autoban_ttl: &str, allowlist: &[&str]) -> Self {
        // SAFETY: getuid has no preconditions.
        assert_eq!(
            unsafe { libc::getuid() },
            0,
            "the auto-ban end-to-end tests need root (namespaces, XDP, bpffs, smtp-sink -u)"
        );
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/tmp/sgw-ab-{pid}-{tag}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-ab-{pid}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sink")).expect("lab directory");
        // smtp-sink writes its dumps as `nobody`.
        std::os::unix::fs::chown(dir.join("sink"), Some(65534), Some(65534)).expect("chown sink");

        let topo = Topology::new(tag, client_addrs);
        let allowlist: Vec<String> = allowlist.iter().map(|a| format!("\"{a}\"")).collect();
        let config = format!(
            "[dataplane]\n\
             interfaces = [\"{iface}\"]\n\
             attach_mode = \"driver\"\n\
             protected_ports = [{SMTP}]\n\
             pin_dir = \"{pins}\"\n\
             sweep_interval = \"{sweep}s\"\n\
             allowlist = [{allow}]\n\
             \n\
             [smtp]\n\
             hostname = \"gw.test\"\n\
             listeners = [{{ address = \"{gw4}:{SMTP}\" }}, {{ address = \"[{gw6}]:{SMTP}\" }}]\n\
             greet_pause = \"{pause}ms\"\n\
             \n\
             [backend]\n\
             servers = [{{ address = \"{SINK_ADDR}\", identity = \"none\" }}]\n\
             \n\
             [relay]\n\
             accepted_domains = [\"example.org\"]\n\
             \n\
             [checks]\n\
             pregreet = {{ action = \"drop\", weight = 1 }}\n\
             \n\
             [autoban]\n\
             enabled = true\n\
             ttl = \"{autoban_ttl}\"\n\
             checks = {{ pregreet = 1 }}\n\
             \n\
             [metrics]\n\
             enabled = false\n",
            iface = topo.gw_if,
            pins = pin_dir.display(),
            sweep = SWEEP_INTERVAL.as_secs(),
            allow = allowlist.join(", "),
            gw4 = support::netns::GW_V4,
            gw6 = support::netns::GW_V6,
            pause = GREET_PAUSE.as_millis(),
        );
        // The daemon's guard owns the directory from here on, so a failing start of the backend
        // still cleans up.
        let gw = Daemon::new(&topo.gw_ns, &topo.gw_if, &dir, &pin_dir, &config);
        let sink = Self::start_sink(&topo, &dir);
        Lab {
            _sink: sink,
            gw,
            topo,
        }
    }

    /// `smtp-sink` on [`SINK_ADDR`] in the gateway namespace, one dump file per message under
    /// `<dir>/sink/`; returns once it answers with its banner.
    fn start_sink(topo: &Topology, dir: &Path) -> ChildGuard {
        let template = dir.join("sink").join("%Y%m%d%H%M%S.");
        let mut command = nsenter(&topo.gw_ns, "smtp-sink");
        command
            .args(["-u", "nobody", "-d"])
            .arg(&template)
            .args([SINK_ADDR, "64"]);
        start_service(
            &topo.gw_ns,
            command,
            &dir.join("smtp-sink.log"),
            "smtp-sink (package postfix)",
            SINK_ADDR.parse().expect("sink address"),
            Duration::from_secs(10),
            |mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 3];
                s.read_exact(&mut banner).is_ok() && banner == *b"220"
            },
        )
    }

    /// A connect from `src` to port 25 must time out: the SYN was dropped silently (no SYN-ACK,
    /// no RST — a RST would be "connection refused").
    fn assert_dropped(&self, src: IpAddr, when: &str) {
        let started = Instant::now();
        match Smtp::connect(&self.topo, src, BLOCKED_TIMEOUT) {
            Ok(_) => panic!("{when}: {src} connected to port {SMTP} (expected its SYN dropped)"),
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::TimedOut,
                "{when}: connect from {src} failed after {:?} with {e} (expected a silent drop: \
                 a timeout)",
                started.elapsed()
            ),
        }
    }

    /// A connect from `src` to port 25 must be refused (RST): the path is open, nobody listens.
    fn assert_refused(&self, src: IpAddr, when: &str) {
        match Smtp::connect(&self.topo, src, CONNECT_TIMEOUT) {
            Ok(_) => panic!("{when}: {src} connected to port {SMTP} (expected a refusal)"),
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::ConnectionRefused,
                "{when}: connect from {src}: {e} (expected connection refused: no listener)"
            ),
        }
    }

    /// `src` connects, waits for the whole banner (the 220 after the greet pause) and quits.
    fn assert_greeted(&self, src: IpAddr, when: &str) {
        let mut c = Smtp::connect(&self.topo, src, CONNECT_TIMEOUT).unwrap_or_else(|e| {
            panic!("{when}: connect from {src} to port {SMTP} failed: {e} (expected a session)")
        });
        let (code, text) = c.reply();
        assert_eq!(code, 220, "{when}: banner to {src}: {text}");
        assert!(text.contains("gw.test ESMTP"), "{when}: banner: {text}");
        c.expect("QUIT", 221);
    }

    /// `src` talks before the banner: it must get the greet-pause teaser, then 521, then the
    /// close, and never a final 220.
    fn pregreet(&self, src: IpAddr) {
        let mut c = Smtp::connect(&self.topo, src, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("pregreeter {src}: connect failed: {e}"));
        c.send(b"EHLO bot.example.net\r\n");
        let (text, closed) = c.read_to_close();
        assert!(
            text.starts_with("220-gw.test"),
            "pregreeter {src}: expected the greet-pause teaser first: {text:?}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("521 ")),
            "pregreeter {src}: expected 521: {text:?}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("220 ") || l.starts_with("250")),
            "pregreeter {src}: got a banner or a 250: {text:?}"
        );
        assert!(closed, "pregreeter {src}: session not closed: {text:?}");
    }

    /// `src` delivers one message to the backend through the gateway (250 after the final dot),
    /// and the backend has it (its dump file holds `marker`).
    fn deliver(&self, src: IpAddr, marker: &str, when: &str) {
        let mut c = Smtp::connect(&self.topo, src, CONNECT_TIMEOUT).unwrap_or_else(|e| {
            panic!("{when}: connect from {src} to port {SMTP} failed: {e} (expected a session)")
        });
        let (code, text) = c.reply();
        assert_eq!(code, 220, "{when}: banner to {src}: {text}");
        c.expect("EHLO client.example.net", 250);
        c.expect("MAIL FROM:<sender@example.net>", 250);
        c.expect("RCPT TO:<postmaster@example.org>", 250);
        c.expect("DATA", 354);
        c.send(
            format!(
                "From: <sender@example.net>\r\nTo: <postmaster@example.org>\r\n\
                 Subject: {marker}\r\n\r\nhello from {src}\r\n.\r\n"
            )
            .as_bytes(),
        );
        let (code, text) = c.reply();
        assert_eq!(code, 250, "{when}: end of data from {src}: {text}");
        c.expect("QUIT", 221);
        let sink = self.gw.dir.join("sink");
        let stored = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            std::fs::read_dir(&sink).into_iter().flatten().any(|e| {
                e.ok()
                    .and_then(|e| std::fs::read(e.path()).ok())
                    .is_some_and(|m| String::from_utf8_lossy(&m).contains(marker))
            })
        });
        assert!(
            stored,
            "{when}: the backend has no message {marker:?} from {src} (dumps in {})",
            sink.display()
        );
    }
}

/// What an auto-ban of `bot` covers with the default `[autoban]` prefixes: the IPv4 address,
/// the IPv6 /64.
fn ban_target(bot: IpAddr) -> String {
    match bot {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let net = ipnet::Ipv6Net::new(a, 64).expect("/64").trunc();
            net.to_string()
        }
    }
}

/// Asserts the fields an auto-ban entry must have.
fn assert_autoban_entry(entry: &Value, ttl: Duration, kind: &str) {
    assert_eq!(entry["origin"], "autoban", "{entry}");
    assert_eq!(entry["reason"], "autoban: pregreet", "{entry}");
    assert_eq!(entry["kind"], kind, "{entry}");
    assert_eq!(entry["active"], true, "{entry}");
    let left = entry["expires_in_secs"]
        .as_u64()
        .unwrap_or_else(|| panic!("an auto-ban must expire: {entry}"));
    assert!(
        left <= ttl.as_secs() && left + 3 >= ttl.as_secs(),
        "remaining {left}s, expected about the TTL {ttl:?}: {entry}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// (1) Pregreet -> 521 -> auto-ban -> next SYN dropped by XDP and counted; per source; the
/// allowlist wins; the ban expires.
#[test]
fn pregreeter_is_banned_in_the_kernel_per_source_until_the_ttl_ends() {
    const TTL: Duration = Duration::from_secs(8);
    let mut lab = Lab::new(
        "ban",
        &[BOT_V4, CLEAN_V4, ALLOWED_V4, BOT_V6, CLEAN_V6],
        &format!("{}s", TTL.as_secs()),
        &["198.18.0.13/32"],
    );
    lab.gw.start();
    let (_, mode) = lab.topo.gw_xdp().expect("XDP program attached");
    assert_eq!(mode, 1, "attach_mode = driver must attach natively");

    // The path works for everyone before any ban; a clean client delivers.
    lab.deliver(CLEAN_V4, "before-any-ban", "before any ban");

    // An allowlisted pregreeter: the SMTP check still refuses it, the kernel never bans it.
    let allowlisted_before = lab.gw.stats().verdict("allowlisted");
    lab.pregreet(ALLOWED_V4);
    // Both outcomes of the auto-ban are logged ("source banned in the kernel", "not banned:
    // source is allowlisted"): wait for either, then check which.
    let allowed = format!("source={ALLOWED_V4}");
    assert!(
        lab.gw.wait_logged(&["banned", &allowed], BAN_TIMEOUT),
        "the auto-ban never handled the allowlisted pregreeter:\n{}",
        lab.gw.log()
    );
    assert_eq!(
        lab.gw.block_entry(&ALLOWED_V4.to_string()),
        None,
        "an allowlisted source must never be banned"
    );
    assert!(
        lab.gw.wait_logged(
            &["not banned: source is allowlisted", &allowed],
            Duration::ZERO
        ),
        "no \"not banned\" line for the allowlisted pregreeter:\n{}",
        lab.gw.log()
    );
    lab.assert_greeted(ALLOWED_V4, "allowlisted pregreeter, afterwards");
    let stats = lab.gw.stats();
    assert!(
        stats.verdict("allowlisted") > allowlisted_before,
        "the allowlisted source's packets were not counted as allowlisted"
    );
    assert_eq!(
        stats.source(ALLOWED_V4, "drops"),
        0,
        "allowlisted source dropped"
    );

    // The bots pregreet, IPv4 and IPv6, and are banned.
    let pregreet_at = Instant::now();
    lab.pregreet(BOT_V4);
    lab.pregreet(BOT_V6);
    for (bot, kind) in [(BOT_V4, "exact"), (BOT_V6, "prefix")] {
        let entry = lab.gw.wait_banned(&ban_target(bot), BAN_TIMEOUT);
        assert_autoban_entry(&entry, TTL, kind);
    }
    assert!(
        lab.gw.wait_logged(
            &["source banned in the kernel", &format!("source={BOT_V4}")],
            BAN_TIMEOUT
        ),
        "no ban logged for {BOT_V4}:\n{}",
        lab.gw.log()
    );
    // Every probe below must end before the earliest possible expiry to mean anything.
    let before_expiry = |what: &str| {
        let at = pregreet_at.elapsed();
        assert!(
            at + BLOCKED_TIMEOUT + Duration::from_millis(500) < TTL,
            "the host is too slow to probe an {TTL:?} ban: {what} starts {at:?} after the ban"
        );
    };

    // Their next SYNs are dropped by XDP, silently, and counted per verdict and per source.
    let before = lab.gw.stats();
    for bot in [BOT_V4, BOT_V6] {
        before_expiry("the drop probe");
        lab.assert_dropped(bot, "banned pregreeter");
    }
    let after = lab.gw.stats();
    // The probe sends exactly one SYN (it gives up before the 1 s retransmission), and nothing
    // else from the bots is dropped: the ban is written only after the pregreet session has
    // closed (`autoban.grace`), so none of its last packets meet it.
    for (verdict, bot) in [("dropped_exact", BOT_V4), ("dropped_cidr", BOT_V6)] {
        let counts = (before.verdict(verdict), after.verdict(verdict));
        assert_eq!(
            counts.1,
            counts.0 + 1,
            "{verdict} went {} -> {}: expected {bot}'s one banned SYN",
            counts.0,
            counts.1
        );
    }
    for bot in [BOT_V4, BOT_V6] {
        let syns = (before.source(bot, "syns"), after.source(bot, "syns"));
        assert_eq!(
            syns.1,
            syns.0 + 1,
            "{bot}: per-source syns went {} -> {}: expected the probe's one SYN",
            syns.0,
            syns.1
        );
        let drops = (before.source(bot, "drops"), after.source(bot, "drops"));
        assert_eq!(
            drops.1,
            drops.0 + 1,
            "{bot}: per-source drops went {} -> {}: expected the banned SYN only",
            drops.0,
            drops.1
        );
    }
    assert_eq!(
        after.verdict("rate_limited"),
        before.verdict("rate_limited"),
        "the drops must come from the blocklist, not the rate limiter"
    );
    for clean in [CLEAN_V4, CLEAN_V6, ALLOWED_V4] {
        assert_eq!(after.source(clean, "drops"), 0, "{clean} was dropped");
    }

    // The ban is per source: the addresses next to the bots (the IPv6 one in the same /64) are
    // served while the bans hold.
    before_expiry("the clean delivery");
    lab.deliver(
        CLEAN_V4,
        "while-bots-banned",
        "clean IPv4 source while the bots are banned",
    );
    // IPv6 bans cover the bot's /64 (a host given a /64 can pick any address in it).
    lab.assert_dropped(CLEAN_V6, "another address in the banned bot's /64");
    for bot in [BOT_V4, BOT_V6] {
        let entry = lab
            .gw
            .block_entry(&ban_target(bot))
            .expect("the ban still holds during the clean sessions");
        assert_eq!(entry["active"], true, "{entry}");
    }
    assert!(
        pregreet_at.elapsed() < TTL,
        "the host is too slow: the clean sessions ended after the bans could have expired"
    );

    // Expiry: the sweeper removes the entries (not before the TTL), then the bots connect again.
    let bound = TTL + SWEEP_INTERVAL * 2 + Duration::from_secs(5);
    let swept = wait_until(
        bound.saturating_sub(pregreet_at.elapsed()),
        Duration::from_millis(100),
        || {
            let list = lab.gw.block_list();
            [BOT_V4, BOT_V6]
                .iter()
                .all(|b| !list.iter().any(|e| e["target"] == ban_target(*b).as_str()))
        },
    );
    let gone_at = pregreet_at.elapsed();
    assert!(
        swept,
        "the expired bans were not swept within {bound:?} of the pregreet: {:#?}",
        lab.gw.block_list()
    );
    assert!(
        gone_at >= TTL,
        "the bans left the map {gone_at:?} after the pregreet, before their {TTL:?} TTL"
    );
    let expired = lab.gw.stats();
    for bot in [BOT_V4, BOT_V6] {
        lab.assert_greeted(bot, "former pregreeter after its ban expired");
    }
    let now = lab.gw.stats();
    for bot in [BOT_V4, BOT_V6] {
        assert_eq!(
            now.source(bot, "drops"),
            expired.source(bot, "drops"),
            "{bot}: an expired ban must not drop"
        );
        assert!(
            now.source(bot, "syns") > expired.source(bot, "syns"),
            "{bot}: the SYN after expiry was not seen"
        );
    }
}

/// The remaining TTL of `entry`, seconds.
fn remaining(entry: &Value) -> u64 {
    entry["expires_in_secs"]
        .as_u64()
        .unwrap_or_else(|| panic!("entry without a TTL: {entry}"))
}

/// (2) An auto-ban, a manual ban with a TTL and a permanent prefix keep dropping with no daemon
/// (after SIGTERM, then after kill -9) and come back unchanged, TTLs still counting down.
#[test]
fn bans_survive_sigterm_and_kill9_with_their_remaining_ttl() {
    /// Long enough never to expire during the test; a reset to it is unmistakable.
    const TTL: Duration = Duration::from_secs(600);
    /// The shortest daemon-less interval: a reset TTL would be at least this much too long.
    const DOWN_AT_LEAST: Duration = Duration::from_secs(4);
    let mut lab = Lab::new(
        "rst",
        &[BOT_V4, CLEAN_V4, MANUAL_V4, NET_V4],
        &format!("{}s", TTL.as_secs()),
        &[],
    );
    lab.gw.start();
    let (prog_id, _) = lab.topo.gw_xdp().expect("XDP program attached");

    lab.pregreet(BOT_V4);
    let entry = lab.gw.wait_banned(&BOT_V4.to_string(), BAN_TIMEOUT);
    assert_autoban_entry(&entry, TTL, "exact");
    lab.gw.cli_ok(&[
        "block",
        "add",
        &MANUAL_V4.to_string(),
        "--ttl",
        "10m",
        "--reason",
        "manual ttl",
    ]);
    lab.gw
        .cli_ok(&["block", "add", NET_V4_PREFIX, "--reason", "permanent net"]);
    let banned = [BOT_V4, MANUAL_V4, NET_V4];
    for src in banned {
        lab.assert_dropped(src, "daemon running");
    }
    lab.assert_greeted(CLEAN_V4, "daemon running");

    // `why` through the daemon: the entries covering each source, its counters and sessions.
    let why = lab.gw.cli_json(&["why", &BOT_V4.to_string(), "--json"]);
    assert!(
        why["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("dropped")),
        "{why:#}"
    );
    assert_eq!(why["blocks"][0]["origin"], "autoban", "{why:#}");
    assert!(why["kernel"]["drops"].as_u64() >= Some(1), "{why:#}");
    assert!(why["kernel"]["syns"].as_u64() >= Some(2), "{why:#}");
    assert!(why["rate"]["burst"].as_u64() >= Some(1), "{why:#}");
    assert!(why["sessions"]["sessions"].as_u64() >= Some(1), "{why:#}");
    let why = lab.gw.cli_json(&["why", &NET_V4.to_string(), "--json"]);
    assert_eq!(why["blocks"][0]["target"], NET_V4_PREFIX, "{why:#}");
    assert_eq!(why["blocks"][0]["reason"], "permanent net", "{why:#}");
    let why = lab.gw.cli_json(&["why", &CLEAN_V4.to_string(), "--json"]);
    assert_eq!(why["verdict"], "passed", "{why:#}");
    assert_eq!(why["blocks"].as_array().map(Vec::len), Some(0), "{why:#}");

    for phase in ["SIGTERM", "kill -9"] {
        let listed_at = Instant::now();
        let before = lab.gw.block_list();
        assert_eq!(
            before.len(),
            3,
            "{phase}: expected exactly the 3 bans: {before:#?}"
        );
        let drops_before = lab.gw.stats();

        match phase {
            "SIGTERM" => {
                lab.gw.terminate();
                // The first run banned the bot, and says so when it stops.
                assert!(
                    lab.gw.wait_logged(
                        &["sources banned by session verdicts", "bans=1"],
                        Duration::ZERO
                    ),
                    "SIGTERM: no ban count in the daemon's last words:\n{}",
                    lab.gw.log()
                );
            }
            _ => lab.gw.kill9(),
        }
        assert!(
            lab.gw.link_pin().exists(),
            "{phase}: the link pin must outlive the daemon"
        );
        assert_eq!(
            lab.topo.gw_xdp().map(|(id, _)| id),
            Some(prog_id),
            "{phase}: the program must stay attached"
        );
        // No daemon: the kernel alone drops the banned sources silently, while a clean source's
        // SYN reaches the stack (refused: nobody listens).
        let down_at = Instant::now();
        for src in banned {
            lab.assert_dropped(src, &format!("no daemon after {phase}"));
        }
        lab.assert_refused(CLEAN_V4, &format!("no daemon after {phase}"));
        let stats = lab.gw.stats();
        let rose = |verdict: &str| stats.verdict(verdict) > drops_before.verdict(verdict);
        assert!(
            rose("dropped_exact") && rose("dropped_cidr"),
            "{phase}: the drops without a daemon were not counted"
        );
        for src in banned {
            assert!(
                stats.source(src, "drops") > drops_before.source(src, "drops"),
                "{phase}: {src}'s drop without a daemon was not counted"
            );
        }
        std::thread::sleep(DOWN_AT_LEAST.saturating_sub(down_at.elapsed()));

        lab.gw.start();
        let after = lab.gw.block_list();
        let elapsed = listed_at.elapsed().as_secs();
        assert_eq!(
            lab.topo.gw_xdp().map(|(id, _)| id),
            Some(prog_id),
            "{phase}: the restart must reuse the attached program, not load another"
        );
        assert_eq!(
            after.len(),
            before.len(),
            "{phase}: entries changed across the restart:\nbefore {before:#?}\nafter {after:#?}"
        );
        for old in &before {
            let target = old["target"].as_str().expect("target");
            let new = after
                .iter()
                .find(|e| e["target"].as_str() == Some(target))
                .unwrap_or_else(|| panic!("{phase}: {target} lost across the restart: {after:#?}"));
            for field in ["kind", "origin", "reason", "added_at"] {
                assert_eq!(
                    new[field], old[field],
                    "{phase}: {target}: {field} changed across the restart"
                );
            }
            assert_eq!(new["active"], true, "{phase}: {new}");
            if old["expires_in_secs"].is_null() {
                assert!(
                    new["expires_in_secs"].is_null(),
                    "{phase}: a permanent entry got a TTL: {new}"
                );
                continue;
            }
            // Both readings are whole seconds, rounded down: the difference is the time
            // between them, give or take one second.
            let (was, now) = (remaining(old), remaining(new));
            assert!(
                now + elapsed <= was + 1 && now + elapsed + 2 >= was,
                "{phase}: {target}: {was}s left before, {now}s left {elapsed}s later (expected \
                 about {}s: the TTL must keep counting down, not restart)",
                was.saturating_sub(elapsed)
            );
        }
        for src in banned {
            lab.assert_dropped(src, &format!("restarted after {phase}"));
        }
        lab.assert_greeted(CLEAN_V4, &format!("restarted after {phase}"));
    }

    // The restarted daemon bans again (its auto-ban writes to the maps it adopted).
    lab.gw.cli_ok(&["block", "del", &BOT_V4.to_string()]);
    lab.assert_greeted(BOT_V4, "after block del of the auto-ban");
    lab.pregreet(BOT_V4);
    let entry = lab.gw.wait_banned(&BOT_V4.to_string(), BAN_TIMEOUT);
    assert_autoban_entry(&entry, TTL, "exact");
    lab.assert_dropped(BOT_V4, "banned again by the restarted daemon");
}

//! The holding attack (issue 10, section 4): connections that take a session slot and keep it
//! without sending junk, alongside the clean senders.
//!
//! [`HOLD_CONNECTIONS`] connections from [`HOLD_SOURCES`] addresses of the attacker namespace
//! (198.18.2.10 and up, [`HOLD_PER_SOURCE`] each: the product's per-source cap), a third each:
//! - **never read**: a 2 KiB receive buffer, `EHLO` written in a loop until the socket blocks,
//!   no reply ever read, so the gateway's replies back up until its writes block;
//! - **trickle**: one byte of `NOOP\r\n` every `command_timeout − 1 s`, replies read;
//! - **park in DATA**: a real transaction up to `354`, then one text line every
//!   `data_timeout − 1 s`.
//!
//! The gateway runs the bench's configuration with the product's connection caps
//! (`max_connections` 1,000, 20 per source), `command_timeout` and `data_timeout` shortened to
//! [`HOLD_TIMEOUT`], and the session limits of issue 10 (`write_timeout`,
//! `max_session_duration`, `max_data_duration`) only when its configuration parser knows them.
//!
//! Measured: clean sessions/s while the holders hold, over the same gateway's no-attack rate (the
//! mean of a run just before the attack and one once every holder is gone); when the gateway
//! closed each held connection (the time until every slot came back, or how many were still
//! held when the bounded window ended); the gateway's RSS before, at
//! its peak during the attack, and after. Everything is bounded: the holders stop by themselves
//! at the end of the window, and every socket is closed then.

use std::{
    fmt::Write as _,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use smtp_gateway_tests::thousands;

use super::{GW_ATTACK, Gateway, Lab, SMTP_PORT, Sink, expect, in_netns, join, run_client};

/// Connections the attacker opens.
pub const HOLD_CONNECTIONS: usize = 1000;
/// Addresses it opens them from.
pub const HOLD_SOURCES: usize = 50;
/// Connections per source: the product's `max_connections_per_source` default.
const HOLD_PER_SOURCE: usize = HOLD_CONNECTIONS / HOLD_SOURCES;
/// `command_timeout` and `data_timeout` of the held gateway (issue 10 reproduced with 20 s).
const HOLD_TIMEOUT: Duration = Duration::from_secs(10);
/// The session limits of issue 10, set only when the configuration parser accepts them.
const OPTIONAL_LIMITS: &str = "write_timeout = \"5s\"\nmax_session_duration = \"60s\"\n\
                               max_data_duration = \"30s\"\n";
/// First holder address (198.18.2.10 .. 198.18.2.59), on the attacker veth.
const FIRST_HOLDER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
/// Receive buffer of a never-reading holder.
const NEVER_READ_RCVBUF: usize = 2048;
/// Bytes of `EHLO` a never-reading holder writes at most (it stops earlier when its socket blocks).
const NEVER_READ_MAX_BYTES: usize = 128 << 10;
/// Threads a mode opens its connections with (a refused connect waits for its timeout).
const OPENERS: usize = 16;
/// How often the holders act and look at their sockets.
const TICK: Duration = Duration::from_millis(100);

/// The holders' addresses, for the lab to put on the attacker veth.
pub fn holder_addrs() -> Vec<Ipv4Addr> {
    (0..HOLD_SOURCES as u32)
        .map(|i| Ipv4Addr::from(u32::from(FIRST_HOLDER) + i))
        .collect()
}

/// How a holder holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    NeverRead,
    Trickle,
    ParkInData,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::NeverRead, Mode::Trickle, Mode::ParkInData];

    fn label(self) -> &'static str {
        match self {
            Mode::NeverRead => "never read (EHLO loop, 2 KiB receive buffer)",
            Mode::Trickle => "trickle one byte per (command_timeout − 1 s)",
            Mode::ParkInData => "park in DATA, one line per (data_timeout − 1 s)",
        }
    }
}

/// What the holders of one mode saw.
#[derive(Debug, Default)]
struct ModeResult {
    /// Connections that got their slot (the banner, or past `354` when parking).
    held: usize,
    /// Connections refused or failed before holding (e.g. `421`).
    refused: usize,
    /// When the gateway closed each held connection, from the attack's start.
    closed_after: Vec<Duration>,
    /// The first few reasons a connection could not hold.
    errors: Vec<String>,
}

/// The whole holding run.
pub struct HoldResult {
    /// Clean sessions/s on the held gateway without the attack: the mean of the runs just
    /// before it and just after the holders were gone (the machine drifts over a minute).
    base_rate: f64,
    /// Those two runs.
    base_rates: (f64, f64),
    /// Clean sessions/s while the holders held.
    attack_rate: f64,
    /// Clean sessions that completed and failed under attack.
    completed: u64,
    failed: u64,
    /// First clean-client errors under attack.
    errors: Vec<String>,
    /// Per mode.
    modes: Vec<(Mode, ModeResult)>,
    /// The bounded observation window.
    window: Duration,
    /// Gateway VmRSS in KiB: before, peak during, after the holders closed.
    rss_kib: (u64, u64, u64),
    /// The `[smtp]` keys the held gateway ran with.
    smtp_keys: String,
    /// Whether the issue-10 session limits were known to this gateway.
    limits_known: bool,
    /// Held sessions the gateway closed to make room for a new client at `max_connections`
    /// (`smtp.evict_idle_after`), from its log.
    evicted: u64,
    /// Kernel counters over the attack: every XDP verdict but `passed`, and every network
    /// counter of the gateway's and the attacker's namespace (their veth's drops too), that grew;
    /// TcpExt `ListenOverflows` and `ListenDrops` (SYNs dropped for a full accept queue) always.
    kernel: Vec<(String, u64)>,
}

impl HoldResult {
    /// Clean rate under attack over the no-attack rate.
    pub fn ratio(&self) -> f64 {
        self.attack_rate / self.base_rate
    }
}

/// The `[smtp]` keys of the held gateway, and whether the issue-10 limits are among them.
fn smtp_keys() -> (String, bool) {
    let base = format!(
        "max_connections = {HOLD_CONNECTIONS}\nmax_connections_per_source = \
         {HOLD_PER_SOURCE}\ncommand_timeout = \"{}s\"\ndata_timeout = \"{}s\"\n",
        HOLD_TIMEOUT.as_secs(),
        HOLD_TIMEOUT.as_secs()
    );
    let with_limits = format!("{base}{OPTIONAL_LIMITS}");
    let probe = format!("[smtp]\n{with_limits}");
    if smtp_gateway::config::Config::parse(&probe, "bench-attack").is_ok() {
        (with_limits, true)
    } else {
        (base, false)
    }
}

/// VmRSS of `pid` in KiB (0 when unreadable).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether the peer closed or reset `s` (FIN or RST seen; unread data does not hide it).
fn peer_closed(s: &TcpStream) -> bool {
    let mut fd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Opens one holder's connection from `src` and brings it to where it holds.
fn open(mode: Mode, src: Ipv4Addr) -> Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(src), 0)))?;
    if mode == Mode::NeverRead {
        socket.set_recv_buffer_size(NEVER_READ_RCVBUF)?;
    }
    socket.set_tcp_nodelay(true)?;
    let dst = SocketAddr::from((GW_ATTACK, SMTP_PORT));
    socket
        .connect_timeout(&SockAddr::from(dst), Duration::from_secs(1))
        .context("connect")?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut s: TcpStream = socket.into();
    let mut buf = Vec::new();
    match mode {
        Mode::NeverRead => {}
        Mode::Trickle => expect(&mut s, &mut buf, 220, "connect")?,
        Mode::ParkInData => {
            expect(&mut s, &mut buf, 220, "connect")?;
            s.write_all(b"EHLO holder.example.net\r\n")?;
            expect(&mut s, &mut buf, 250, "EHLO")?;
            s.write_all(b"MAIL FROM:<hold@example.net>\r\n")?;
            expect(&mut s, &mut buf, 250, "MAIL")?;
            s.write_all(b"RCPT TO:<b@example.org>\r\n")?;
            expect(&mut s, &mut buf, 250, "RCPT")?;
            s.write_all(b"DATA\r\n")?;
            expect(&mut s, &mut buf, 354, "DATA")?;
            s.write_all(b"Subject: held\r\n")?;
        }
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// One held connection.
struct Held {
    stream: TcpStream,
    /// When it last sent something (trickle, park).
    last_sent: Instant,
    /// Bytes written so far (never read) or the trickle position.
    sent: usize,
    /// Closed by the gateway.
    closed: bool,
}

/// Runs the holders of `mode` from `sources` (one connection per entry) until `until`.
fn hold(
    mode: Mode,
    sources: Vec<Ipv4Addr>,
    started: Instant,
    until: Instant,
    holding: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    opened_all: Arc<Barrier>,
) -> Result<ModeResult> {
    let mut result = ModeResult::default();
    let mut held = Vec::new();
    // Opened in parallel (threads inherit this thread's network namespace).
    let chunk = sources.len().div_ceil(OPENERS).max(1);
    let opened: Vec<Result<TcpStream>> = std::thread::scope(|scope| {
        let workers: Vec<_> = sources
            .chunks(chunk)
            .map(|part| {
                let holding = &holding;
                scope.spawn(move || {
                    part.iter()
                        .map(|src| {
                            // One retry: a SYN lost in the lab's veth queues under the burst of
                            // a thousand connects is not the gateway refusing.
                            let s = open(mode, *src)
                                .or_else(|_| open(mode, *src))
                                .with_context(|| format!("holder {src}"))?;
                            holding.fetch_add(1, Ordering::Relaxed);
                            Ok(s)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    // Every mode's connections are open before any holder starts its traffic (the never-read
    // holders' EHLO bursts would otherwise compete with the other modes' connects).
    opened_all.wait();
    for o in opened {
        match o {
            Ok(stream) => {
                result.held += 1;
                held.push(Held {
                    stream,
                    last_sent: Instant::now(),
                    sent: 0,
                    closed: false,
                });
            }
            Err(e) => {
                result.refused += 1;
                if result.errors.len() < 3 {
                    result.errors.push(format!("{e:#}"));
                }
            }
        }
    }
    let pace = HOLD_TIMEOUT.saturating_sub(Duration::from_secs(1));
    let ehlo = b"EHLO holder.example.net\r\n";
    let noop = b"NOOP\r\n";
    let mut sink = [0u8; 4096];
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        let mut open_left = 0;
        for h in held.iter_mut().filter(|h| !h.closed) {
            if peer_closed(&h.stream) {
                h.closed = true;
                result.closed_after.push(started.elapsed());
                holding.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            open_left += 1;
            match mode {
                Mode::NeverRead => {
                    while h.sent < NEVER_READ_MAX_BYTES {
                        match h.stream.write(ehlo) {
                            Ok(n) => h.sent += n,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => break,
                        }
                    }
                }
                Mode::Trickle | Mode::ParkInData => {
                    // Replies are read (these holders are slow, not deaf).
                    while matches!(h.stream.read(&mut sink), Ok(n) if n > 0) {}
                    if h.last_sent.elapsed() >= pace {
                        let byte: &[u8] = if mode == Mode::Trickle {
                            let i = h.sent % noop.len();
                            &noop[i..=i]
                        } else {
                            b"held text line\r\n"
                        };
                        let _ = h.stream.write(byte);
                        h.sent += 1;
                        h.last_sent = Instant::now();
                    }
                }
            }
        }
        if open_left == 0 && result.held > 0 {
            break;
        }
        std::thread::sleep(TICK);
    }
    Ok(result)
}

/// Runs the holding attack against a fresh gateway (XDP on) and returns what it measured.
pub fn run(
    lab: &Lab,
    dir: &Path,
    sink: &Sink,
    duration: Duration,
    quick: bool,
) -> Result<HoldResult> {
    let (smtp_keys, limits_known) = smtp_keys();
    let mut gw = Gateway::start_with(lab, dir, true, sink.addr, &smtp_keys, "hold")?;
    run_client(lab, Duration::from_millis(500))?;
    let base = run_client(lab, duration)?;
    let base_rate = base.completed as f64 / base.elapsed.as_secs_f64();
    let pid = gw.proc.pid();
    let rss_before = rss_kib(pid);
    let counters = |gw: &Gateway| -> Result<Vec<(String, u64)>> {
        let mut all: Vec<(String, u64)> = gw
            .verdicts()?
            .into_iter()
            .filter(|(name, _)| name != "passed")
            .map(|(name, n)| (format!("XDP {name}"), n))
            .collect();
        for (side, ns, dev) in [
            ("gateway", &lab.gw, &lab.gw_attack_if),
            ("attacker", &lab.attacker, &lab.attack_if),
        ] {
            for (name, n) in lab.net_counters(ns, dev)? {
                all.push((format!("{side} {name}"), n));
            }
        }
        Ok(all)
    };
    let kernel_before = counters(&gw)?;
    // Long enough for every held slot to come back after the longest limit (data parking:
    // max_data_duration, or the timeouts), bounded.
    let window = if quick {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(75)
    };
    let started = Instant::now();
    let until = started + window;
    let holding = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = lab.holder_addrs.clone();
    let mut handles = Vec::new();
    let opened_all = Arc::new(Barrier::new(Mode::ALL.len()));
    for (m, mode) in Mode::ALL.into_iter().enumerate() {
        let sources: Vec<Ipv4Addr> = (0..HOLD_CONNECTIONS)
            .filter(|i| i % Mode::ALL.len() == m)
            .map(|i| addrs[i % addrs.len()])
            .collect();
        let (holding, stop, opened_all) = (holding.clone(), stop.clone(), opened_all.clone());
        handles.push((
            mode,
            in_netns(&lab.attacker, move || {
                hold(mode, sources, started, until, holding, stop, opened_all)
            }),
        ));
    }
    // The clean senders start once the holders have taken their slots (or after 10 s).
    let settle = Instant::now() + Duration::from_secs(10);
    while holding.load(Ordering::Relaxed) < HOLD_CONNECTIONS * 9 / 10 && Instant::now() < settle {
        std::thread::sleep(TICK);
    }
    eprintln!(
        "  holding attack: {} connections held after {:.1} s",
        holding.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    let mut rss_peak = rss_kib(pid);
    let attack = run_client(lab, duration)?;
    rss_peak = rss_peak.max(rss_kib(pid));
    while Instant::now() < until && holding.load(Ordering::Relaxed) > 0 {
        rss_peak = rss_peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let mut modes = Vec::new();
    for (mode, h) in handles {
        let m = join(h)?;
        eprintln!(
            "  {:<50} held {}, refused {}, closed by the gateway {} (first refusal: {})",
            mode.label(),
            m.held,
            m.refused,
            m.closed_after.len(),
            m.errors.first().map_or("none", String::as_str)
        );
        modes.push((mode, m));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib(pid);
    let kernel_after = counters(&gw)?;
    let kernel: Vec<(String, u64)> = kernel_after
        .into_iter()
        .map(|(name, n)| {
            let before = kernel_before
                .iter()
                .find(|(b, _)| *b == name)
                .map_or(0, |(_, v)| *v);
            (name, n.saturating_sub(before))
        })
        .filter(|(name, n)| {
            *n > 0
                || name.ends_with("TcpExt ListenOverflows")
                || name.ends_with("TcpExt ListenDrops")
        })
        .collect();
    eprintln!("  kernel over the attack: {kernel:?}");
    let evicted = gw.read_log()?.evicted;
    // The no-attack rate again, now that every holder is gone: the attack is compared with
    // the mean of the runs on either side of it.
    let base_after = run_client(lab, duration)?;
    let base_after_rate = base_after.completed as f64 / base_after.elapsed.as_secs_f64();
    drop(gw);
    let result = HoldResult {
        base_rate: (base_rate + base_after_rate) / 2.0,
        base_rates: (base_rate, base_after_rate),
        attack_rate: attack.completed as f64 / attack.elapsed.as_secs_f64(),
        completed: attack.completed,
        failed: attack.failed,
        errors: attack.errors,
        modes,
        window,
        rss_kib: (rss_before, rss_peak, rss_after),
        smtp_keys,
        limits_known,
        kernel,
        evicted,
    };
    eprintln!(
        "  holding attack: {:.0} clean sessions/s vs {:.0} without ({:.2}×), RSS {} / {} / {} KiB",
        result.attack_rate,
        result.base_rate,
        result.ratio(),
        rss_before,
        rss_peak,
        rss_after
    );
    Ok(result)
}

/// The report's section on the holding attack.
pub fn report(out: &mut String, r: &HoldResult, aim: f64) {
    let _ = writeln!(out, "\n## Holding attack\n");
    let _ = writeln!(
        out,
        "{HOLD_CONNECTIONS} connections from {HOLD_SOURCES} attacker addresses ({HOLD_PER_SOURCE} \
         each), a third per mode, against a gateway with XDP on and these `[smtp]` keys (the \
         bench's configuration otherwise):\n\n```toml\n{}```\n",
        r.smtp_keys
    );
    if !r.limits_known {
        let _ = writeln!(
            out,
            "This gateway does not know `smtp.write_timeout`, `smtp.max_session_duration` and \
             `smtp.max_data_duration` (issue 10): they were left out.\n"
        );
    }
    let _ = writeln!(
        out,
        "- clean sessions/s while held: {:.0} vs {:.0} on the same gateway without the attack \
         (the mean of {:.0} just before and {:.0} just after it): **{:.2}×** (aim ≥ {aim}×: \
         **{}**); {} clean sessions completed, {} failed{}",
        r.attack_rate,
        r.base_rate,
        r.base_rates.0,
        r.base_rates.1,
        r.ratio(),
        if r.ratio() >= aim { "met" } else { "missed" },
        thousands(r.completed),
        thousands(r.failed),
        r.errors
            .first()
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "- sessions the gateway closed to make room for a new client while every slot was taken \
         (`smtp.evict_idle_after`, default 2s; the longest idle session of the source holding \
         the most slots): {}",
        thousands(r.evicted)
    );
    let (before, peak, after) = r.rss_kib;
    let _ = writeln!(
        out,
        "- gateway RSS: {} KiB before, {} KiB at the peak of the attack, {} KiB after the \
         holders were gone\n",
        thousands(before),
        thousands(peak),
        thousands(after)
    );
    // Of the network counters, those that tell of a loss or a retry (the clean sessions make
    // the others grow too).
    let telling = |name: &str| {
        name.starts_with("XDP")
            || [
                "Drop", "drop", "Overflow", "Fail", "Retrans", "Timeout", "Discard", "Err",
                "Cookies", "Abort", "Reset",
            ]
            .iter()
            .any(|word| name.contains(word))
    };
    let kernel: Vec<String> = r
        .kernel
        .iter()
        .filter(|(name, _)| telling(name))
        .map(|(name, n)| format!("{name} {}", thousands(*n)))
        .collect();
    let _ = writeln!(
        out,
        "- kernel counters of loss or retry that grew over the attack (XDP verdicts; the \
         gateway's and the attacker's namespace: /proc/net/netstat, /proc/net/snmp, their veth's \
         drops): {}\n",
        kernel.join(", ")
    );
    let _ = writeln!(
        out,
        "| Mode | Held | Refused | Closed by the gateway | Last slot back after | Still held at \
         the end of the {} s window |",
        r.window.as_secs()
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|");
    for (mode, m) in &r.modes {
        let still = m.held - m.closed_after.len();
        let last = if still == 0 && !m.closed_after.is_empty() {
            m.closed_after
                .iter()
                .max()
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_default()
        } else {
            "not recovered".into()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {last} | {still} |",
            mode.label(),
            m.held,
            m.refused,
            m.closed_after.len()
        );
    }
    for (mode, m) in &r.modes {
        if let Some(e) = m.errors.first() {
            let _ = writeln!(out, "\nFirst refusal ({}): {e}", mode.label());
        }
    }
}

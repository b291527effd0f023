//! Memory per idle session: a fresh gateway gets N idle connections from this process (each reads
//! its 220 banner and then stays silent); the gateway's VmRSS is read before and after, and
//! (after − before) / N is the cost of one idle session.

use std::{
    io::{ErrorKind, Read},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::{
    Settings,
    gateway::{Gateway, LogStats},
    proc::raise_nofile,
};

pub struct MemoryRow {
    pub sessions: usize,
    pub before_kib: u64,
    pub after_kib: u64,
    pub closed_kib: u64,
    pub extra_sources: usize,
}

impl MemoryRow {
    pub fn per_session_kib(&self) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / self.sessions as f64
    }
}

/// Opens one connection from `source` (127.0.0.1: the kernel's choice) and reads the 220 banner.
fn open_idle(gateway: SocketAddr, source: Ipv4Addr) -> std::io::Result<TcpStream> {
    let stream = if source == Ipv4Addr::LOCALHOST {
        TcpStream::connect_timeout(&gateway, Duration::from_secs(5))?
    } else {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
        socket.connect_timeout(&gateway.into(), Duration::from_secs(5))?;
        socket.into()
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut banner = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = match (&stream).read(&mut buf) {
            Ok(n) => n,
            // A signal interrupts a read with a timeout even under SA_RESTART (signal(7)).
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "closed before the banner: {:?}",
                    String::from_utf8_lossy(&banner)
                ),
            ));
        }
        banner.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&banner);
        if let Some(last) = text
            .strip_suffix("\r\n")
            .and_then(|t| t.rsplit("\r\n").next())
        {
            if last.starts_with("220 ") {
                return Ok(stream);
            }
            if !last.starts_with("220-") {
                return Err(std::io::Error::other(format!("unexpected banner {text:?}")));
            }
        }
    }
}

pub fn memory(settings: &Settings, dir: &Path, backend: SocketAddr) -> Result<Vec<MemoryRow>> {
    let nofile = raise_nofile()?;
    let most = settings.idle.iter().copied().max().unwrap_or(0);
    ensure!(
        nofile >= most as u64 + 200,
        "RLIMIT_NOFILE hard limit {nofile} is too low for {most} idle connections"
    );
    let cap = most + most / 5 + 100;
    let extra = format!(
        "max_connections = {cap}\nmax_connections_per_source = {cap}\ncommand_timeout = \"10m\"\n"
    );
    let mut rows = Vec::new();
    for (i, &n) in settings.idle.iter().enumerate() {
        // A fresh gateway per level: nothing retained by an earlier level counts.
        let mut gw = Gateway::start(dir, i + 1, backend, &extra)?;
        // Warm-up: a few sessions first, so one-off allocations (runtime, first session) are in
        // the "before" figure.
        for _ in 0..20 {
            let s = open_idle(gw.addr, Ipv4Addr::LOCALHOST).context("warm-up connection")?;
            drop(s);
        }
        let warm = gw.wait_sessions(20)?;
        ensure!(
            warm.sessions == 20,
            "warm-up: {} of 20 sessions logged",
            warm.sessions
        );
        std::thread::sleep(Duration::from_millis(500));
        let before_kib = gw.rss_kib()?;
        eprintln!("opening {n} idle sessions (gateway RSS {before_kib} KiB)...");
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut conns = Vec::with_capacity(n);
        let mut source = Ipv4Addr::LOCALHOST;
        let mut extra_sources = 0;
        while conns.len() < n {
            ensure!(
                Instant::now() < deadline,
                "opening {n} connections took over 300 s"
            );
            match open_idle(gw.addr, source) {
                Ok(s) => conns.push(s),
                Err(e) if e.kind() == ErrorKind::AddrNotAvailable && extra_sources < 250 => {
                    // Local ports of this source address exhausted: continue from the next one.
                    extra_sources += 1;
                    let [a, b, c, d] = source.octets();
                    source = Ipv4Addr::new(a, b, c, if d == 1 { 2 } else { d + 1 });
                    eprintln!(
                        "  local ports exhausted after {}: now from {source}",
                        conns.len()
                    );
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("idle connection {}", conns.len() + 1));
                }
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        let after_kib = gw.rss_kib()?;
        let mut stats = LogStats::default();
        gw.read_log(&mut stats)?;
        ensure!(
            stats.sessions == 0,
            "{} of the idle sessions ended before they were closed",
            stats.sessions
        );
        drop(conns);
        let closed = gw.wait_sessions(n as u64)?;
        ensure!(
            closed.sessions == n as u64,
            "after closing {n} idle connections the gateway logged {} sessions",
            closed.sessions
        );
        closed.ensure_no_problems("after closing the idle connections")?;
        std::thread::sleep(Duration::from_millis(500));
        let closed_kib = gw.rss_kib()?;
        let row = MemoryRow {
            sessions: n,
            before_kib,
            after_kib,
            closed_kib,
            extra_sources,
        };
        eprintln!(
            "  {n} idle: {before_kib} -> {after_kib} KiB ({:.2} KiB/session), {closed_kib} KiB \
             after closing",
            row.per_session_kib()
        );
        rows.push(row);
    }
    Ok(rows)
}

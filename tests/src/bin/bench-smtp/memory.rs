//! Memory per idle session: a fresh gateway gets N idle connections from this process (each reads
//! its 220 banner and then stays silent); the gateway's VmRSS is read before and after, and
//! (after − before) / N is the cost of one idle session.
//!
//! The same for idle TLS sessions: a gateway with `[smtp.tls]` (the benchmark's self-signed
//! certificate, `tls.rs`) whose N clients each say EHLO, STARTTLS, complete the handshake
//! (rustls on both sides), say EHLO again and then stay silent.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::{
    Settings,
    gateway::{Gateway, LogStats},
    proc::raise_nofile,
    tls::{self, ServerCert},
};

/// What the idle sessions of a row did before falling silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleKind {
    /// Read the banner.
    Plain,
    /// Read the banner, EHLO, STARTTLS, TLS handshake, EHLO inside TLS.
    StartTls,
}

impl IdleKind {
    pub fn name(self) -> &'static str {
        match self {
            IdleKind::Plain => "plaintext",
            IdleKind::StartTls => "TLS (STARTTLS)",
        }
    }
}

pub struct MemoryRow {
    pub kind: IdleKind,
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

/// An idle client connection, held open until dropped.
enum IdleConn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl IdleConn {
    /// Opens one connection of `kind` from `source` (see [`open_idle`]).
    fn open(
        kind: IdleKind,
        gateway: SocketAddr,
        source: Ipv4Addr,
        tls: Option<&Arc<ClientConfig>>,
    ) -> std::io::Result<Self> {
        let stream = open_idle(gateway, source)?;
        match (kind, tls) {
            (IdleKind::Plain, _) => Ok(IdleConn::Plain(stream)),
            (IdleKind::StartTls, Some(config)) => {
                starttls(stream, config).map(|s| IdleConn::Tls(Box::new(s)))
            }
            (IdleKind::StartTls, None) => Err(std::io::Error::other("no TLS client configuration")),
        }
    }

    /// Closes the client end (no QUIT, no close_notify: as a client that goes away).
    fn close(self) {
        match self {
            IdleConn::Plain(tcp) => drop(tcp),
            IdleConn::Tls(tls) => drop(tls),
        }
    }
}

/// Reads one reply until its last line, which must start with `code` and a space.
fn read_reply(stream: &mut impl Read, code: &str) -> std::io::Result<()> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            // A signal interrupts a read with a timeout even under SA_RESTART (signal(7)).
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "closed before a {code} reply: {:?}",
                    String::from_utf8_lossy(&reply)
                ),
            ));
        }
        reply.extend_from_slice(buf.get(..n).unwrap_or_default());
        let text = String::from_utf8_lossy(&reply);
        if let Some(last) = text
            .strip_suffix("\r\n")
            .and_then(|t| t.rsplit("\r\n").next())
        {
            if last.starts_with(&format!("{code} ")) {
                return Ok(());
            }
            if !last.starts_with(&format!("{code}-")) {
                return Err(std::io::Error::other(format!(
                    "expected a {code} reply, got {text:?}"
                )));
            }
        }
    }
}

/// EHLO, STARTTLS and the handshake on a connection that read its banner, then EHLO inside TLS.
fn starttls(
    mut stream: TcpStream,
    config: &Arc<ClientConfig>,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    stream.write_all(b"EHLO client.bench.test\r\n")?;
    read_reply(&mut stream, "250")?;
    stream.write_all(b"STARTTLS\r\n")?;
    read_reply(&mut stream, "220")?;
    let name = tls::server_name().map_err(std::io::Error::other)?;
    let conn = ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    tls.write_all(b"EHLO client.bench.test\r\n")?;
    read_reply(&mut tls, "250")?;
    Ok(tls)
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
    let mut stream = stream;
    read_reply(&mut stream, "220")?;
    Ok(stream)
}

pub fn memory(
    settings: &Settings,
    dir: &Path,
    backend: SocketAddr,
    cert: &ServerCert,
) -> Result<Vec<MemoryRow>> {
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
    let tls = tls::client_config()?;
    let tls_section = &cert.gateway_section;
    let mut rows = Vec::new();
    let levels = settings.idle.len();
    for (k, kind) in [IdleKind::Plain, IdleKind::StartTls]
        .into_iter()
        .enumerate()
    {
        for (i, &n) in settings.idle.iter().enumerate() {
            rows.push(measure(
                dir,
                k * levels + i + 1,
                backend,
                &extra,
                (kind, n),
                (&tls, tls_section),
            )?);
        }
    }
    Ok(rows)
}

/// One row: a fresh gateway (number `number`) and `n` idle sessions of `kind`.
fn measure(
    dir: &Path,
    number: usize,
    backend: SocketAddr,
    extra: &str,
    (kind, n): (IdleKind, usize),
    (tls, tls_section): (&Arc<ClientConfig>, &str),
) -> Result<MemoryRow> {
    {
        // A fresh gateway per level: nothing retained by an earlier level counts.
        let sections = if kind == IdleKind::StartTls {
            tls_section
        } else {
            ""
        };
        let mut gw = Gateway::start_with(dir, number, backend, extra, sections)?;
        // Warm-up: a few sessions first, so one-off allocations (runtime, first session, TLS
        // configuration) are in the "before" figure.
        for _ in 0..20 {
            IdleConn::open(kind, gw.addr, Ipv4Addr::LOCALHOST, Some(tls))
                .context("warm-up connection")?
                .close();
        }
        let warm = gw.wait_sessions(20)?;
        ensure!(
            warm.sessions == 20,
            "warm-up: {} of 20 sessions logged",
            warm.sessions
        );
        std::thread::sleep(Duration::from_millis(500));
        let before_kib = gw.rss_kib()?;
        eprintln!(
            "opening {n} idle {} sessions (gateway RSS {before_kib} KiB)...",
            kind.name()
        );
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut conns = Vec::with_capacity(n);
        let mut source = Ipv4Addr::LOCALHOST;
        let mut extra_sources = 0;
        while conns.len() < n {
            ensure!(
                Instant::now() < deadline,
                "opening {n} connections took over 300 s"
            );
            match IdleConn::open(kind, gw.addr, source, Some(tls)) {
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
        conns.into_iter().for_each(IdleConn::close);
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
            kind,
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
        Ok(row)
    }
}

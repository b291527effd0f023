//! A small pipelining SMTP client that times every session.
//!
//! One message per session, like smtp-source: connect, wait for the 220 banner, `EHLO` (PIPELINING
//! must be announced), then `MAIL FROM`, `RCPT TO` and `DATA` in one write (an RFC 2920 command
//! group: DATA ends it), the message once `354` arrived, `QUIT`. Every reply code is checked.
//! Over TLS ([`Security`]): the same inside TLS 1.3 (a full handshake per session), begun at
//! connect (implicit TLS) or after `EHLO`, `STARTTLS` and its `220` (then `EHLO` again inside);
//! the session ends with the client's close_notify after the `221`.
//! A session's latency runs from the start of `connect` to the `221`. `sessions` threads each run
//! sessions back to back until `messages` sessions were started; all of it is bounded by a
//! deadline.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::{FROM, HELO, MESSAGE_BYTES, TO, tls};

/// How a session protects itself.
#[derive(Clone)]
pub enum Security {
    Plain,
    /// `STARTTLS` after the first `EHLO`.
    StartTls(Arc<ClientConfig>),
    /// TLS from the first byte (an `smtps` port).
    ImplicitTls(Arc<ClientConfig>),
}

/// What one client run gave.
pub struct ClientRun {
    pub wall: Duration,
    /// What one TLS session negotiated ("TLS13_AES_256_GCM_SHA384, X25519"); None in plain.
    pub negotiated: Option<String>,
    /// Session durations, µs, sorted.
    pub sessions_us: Vec<u64>,
}

impl ClientRun {
    /// The `q` quantile (0..=1) of the session durations, in ms (nearest rank).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.sessions_us.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((q * self.sessions_us.len() as f64).ceil() as usize).clamp(1, self.sessions_us.len());
        self.sessions_us[rank - 1] as f64 / 1000.0
    }
}

/// The message text: headers and 76-character lines up to about MESSAGE_BYTES, dot-terminated.
fn message() -> Vec<u8> {
    let mut text = format!(
        "From: <{FROM}>\r\nTo: <{TO}>\r\nSubject: bench-smtp\r\nMessage-ID: <bench@{HELO}>\r\n\r\n"
    );
    while text.len() + 80 < MESSAGE_BYTES as usize {
        text.push_str(&"x".repeat(76));
        text.push_str("\r\n");
    }
    text.push_str(".\r\n");
    text.into_bytes()
}

/// The connection's byte stream: plain TCP, or TLS over it.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// TLS (client side) over `tcp`; the handshake runs with the first read or write.
fn tls_over(tcp: TcpStream, config: &Arc<ClientConfig>) -> Result<Stream> {
    let conn = ClientConnection::new(config.clone(), tls::server_name()?)
        .context("starting a TLS client session")?;
    Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
}

struct Conn {
    reader: BufReader<Stream>,
}

impl Conn {
    fn open(target: SocketAddr, security: &Security) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connecting to {target}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let stream = match security {
            Security::ImplicitTls(config) => tls_over(stream, config)?,
            Security::Plain | Security::StartTls(_) => Stream::Tcp(stream),
        };
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// After the `220` to `STARTTLS`: the rest of the session runs inside TLS.
    fn start_tls(self, config: &Arc<ClientConfig>) -> Result<Self> {
        ensure!(
            self.reader.buffer().is_empty(),
            "the server sent more after its 220 to STARTTLS"
        );
        let Stream::Tcp(tcp) = self.reader.into_inner() else {
            bail!("STARTTLS inside TLS");
        };
        Ok(Self {
            reader: BufReader::new(tls_over(tcp, config)?),
        })
    }

    /// One reply (all its lines); fails unless its code is `code`.
    fn expect(&mut self, code: &str, after: &str) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            ensure!(lines.len() < 100, "reply to {after} longer than 100 lines");
            let mut line = String::new();
            let n = self.reader.read_line(&mut line)?;
            ensure!(n > 0, "connection closed waiting for the reply to {after}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        let last = lines.last().map_or("", String::as_str);
        ensure!(
            last.starts_with(code),
            "reply to {after}: {:?}, expected {code}",
            lines.join(" | ")
        );
        Ok(lines)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).context("sending")?;
        stream.flush().context("sending")
    }

    /// Ends a TLS session with the client's close_notify (nothing to do on plain TCP); returns
    /// the cipher suite and key exchange group it negotiated.
    fn close(mut self) -> Result<Option<String>> {
        let Stream::Tls(tls) = self.reader.get_mut() else {
            return Ok(None);
        };
        let negotiated = format!(
            "{}, {}",
            tls.conn
                .negotiated_cipher_suite()
                .map_or("?".into(), |s| format!("{:?}", s.suite())),
            tls.conn
                .negotiated_key_exchange_group()
                .map_or("?".into(), |g| format!("{:?}", g.name()))
        );
        tls.conn.send_close_notify();
        tls.flush().context("sending close_notify")?;
        Ok(Some(negotiated))
    }
}

/// One pipelined one-message session; returns what its TLS negotiated, if any.
fn session(target: SocketAddr, security: &Security, body: &[u8]) -> Result<Option<String>> {
    let mut c = Conn::open(target, security)?;
    c.expect("220", "connect")?;
    c.send(format!("EHLO {HELO}\r\n").as_bytes())?;
    let mut ehlo = c.expect("250", "EHLO")?;
    if let Security::StartTls(config) = security {
        c.send(b"STARTTLS\r\n")?;
        c.expect("220", "STARTTLS")?;
        c = c.start_tls(config)?;
        c.send(format!("EHLO {HELO}\r\n").as_bytes())?;
        ehlo = c.expect("250", "EHLO inside TLS")?;
    }
    ensure!(
        ehlo.iter().any(|l| l
            .get(4..)
            .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))),
        "PIPELINING not announced: {ehlo:?}"
    );
    c.send(format!("MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n").as_bytes())?;
    c.expect("250", "MAIL FROM")?;
    c.expect("250", "RCPT TO")?;
    c.expect("354", "DATA")?;
    c.send(body)?;
    c.expect("250", "end of data")?;
    c.send(b"QUIT\r\n")?;
    c.expect("221", "QUIT")?;
    c.close()
}

/// `messages` sessions, `sessions` at a time; fails on the first error or after `timeout`.
pub fn run(
    target: SocketAddr,
    security: &Security,
    sessions: u32,
    messages: u32,
    timeout: Duration,
) -> Result<ClientRun> {
    let body = Arc::new(message());
    let next = Arc::new(AtomicU32::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let negotiated = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    let deadline = started + timeout;
    let mut threads = Vec::new();
    for _ in 0..sessions.min(messages) {
        let (security, body, next, failed, first_error, negotiated) = (
            security.clone(),
            body.clone(),
            next.clone(),
            failed.clone(),
            first_error.clone(),
            negotiated.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut took = Vec::new();
            while !failed.load(Ordering::Relaxed) && next.fetch_add(1, Ordering::Relaxed) < messages
            {
                let t = Instant::now();
                let result = if t > deadline {
                    Err(anyhow::anyhow!("still running after {timeout:?}"))
                } else {
                    session(target, &security, &body)
                };
                match result {
                    Ok(tls) => {
                        took.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                        if let (Some(tls), Ok(mut slot)) = (tls, negotiated.lock()) {
                            slot.get_or_insert(tls);
                        }
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
            }
            took
        }));
    }
    let mut sessions_us = Vec::new();
    for t in threads {
        match t.join() {
            Ok(took) => sessions_us.extend(took),
            Err(_) => bail!("a client thread panicked"),
        }
    }
    let wall = started.elapsed();
    if let Some(e) = first_error.lock().ok().and_then(|mut s| s.take()) {
        bail!("pipelining client to {target}: {e}");
    }
    ensure!(
        sessions_us.len() == messages as usize,
        "pipelining client: {} of {messages} sessions completed",
        sessions_us.len()
    );
    sessions_us.sort_unstable();
    let negotiated = negotiated.lock().ok().and_then(|mut s| s.take());
    Ok(ClientRun {
        wall,
        negotiated,
        sessions_us,
    })
}

/// A plain (not pipelined) session that stops after RCPT; returns the RCPT reply code. Used to
/// let postscreen test the client once (it answers 450 to a new client that passed).
pub fn probe(target: SocketAddr) -> Result<String> {
    let mut c = Conn::open(target, &Security::Plain)?;
    c.expect("220", "connect")?;
    c.send(format!("EHLO {HELO}\r\n").as_bytes())?;
    c.expect("250", "EHLO")?;
    c.send(format!("MAIL FROM:<{FROM}>\r\n").as_bytes())?;
    c.expect("250", "MAIL FROM")?;
    c.send(format!("RCPT TO:<{TO}>\r\n").as_bytes())?;
    let reply = c.expect("", "RCPT TO")?;
    c.send(b"QUIT\r\n")?;
    let _ = c.expect("221", "QUIT");
    Ok(reply.last().cloned().unwrap_or_default())
}

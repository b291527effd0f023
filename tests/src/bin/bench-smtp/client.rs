//! A small pipelining SMTP client that times every session.
//!
//! One message per session, like smtp-source: connect, wait for the 220 banner, `EHLO` (PIPELINING
//! must be announced), then `MAIL FROM`, `RCPT TO` and `DATA` in one write (an RFC 2920 command
//! group: DATA ends it), the message once `354` arrived, `QUIT`. Every reply code is checked.
//! A session's latency runs from the start of `connect` to the `221`. `sessions` threads each run
//! sessions back to back until `messages` sessions were started; all of it is bounded by a
//! deadline.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{FROM, HELO, MESSAGE_BYTES, TO};

/// What one client run gave.
pub struct ClientRun {
    pub wall: Duration,
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

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(target: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connecting to {target}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
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
        self.writer.write_all(bytes).context("sending")
    }
}

/// One pipelined one-message session.
fn session(target: SocketAddr, body: &[u8]) -> Result<()> {
    let mut c = Conn::open(target)?;
    c.expect("220", "connect")?;
    c.send(format!("EHLO {HELO}\r\n").as_bytes())?;
    let ehlo = c.expect("250", "EHLO")?;
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
    Ok(())
}

/// `messages` sessions, `sessions` at a time; fails on the first error or after `timeout`.
pub fn run(
    target: SocketAddr,
    sessions: u32,
    messages: u32,
    timeout: Duration,
) -> Result<ClientRun> {
    let body = Arc::new(message());
    let next = Arc::new(AtomicU32::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    let deadline = started + timeout;
    let mut threads = Vec::new();
    for _ in 0..sessions.min(messages) {
        let (body, next, failed, first_error) = (
            body.clone(),
            next.clone(),
            failed.clone(),
            first_error.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut took = Vec::new();
            while !failed.load(Ordering::Relaxed) && next.fetch_add(1, Ordering::Relaxed) < messages
            {
                let t = Instant::now();
                let result = if t > deadline {
                    Err(anyhow::anyhow!("still running after {timeout:?}"))
                } else {
                    session(target, &body)
                };
                match result {
                    Ok(()) => took.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)),
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
    Ok(ClientRun { wall, sessions_us })
}

/// A plain (not pipelined) session that stops after RCPT; returns the RCPT reply code. Used to
/// let postscreen test the client once (it answers 450 to a new client that passed).
pub fn probe(target: SocketAddr) -> Result<String> {
    let mut c = Conn::open(target)?;
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

//! CPU per message over TLS: the gateway terminating TLS, implicit (an `smtps` listener) and
//! STARTTLS, against HAProxy terminating implicit TLS in TCP mode; every path relays the
//! plaintext to the same smtp-sink. HAProxy has no SMTP mode, so it cannot answer STARTTLS:
//! implicit TLS is the one TLS service both offer, and the gateway's STARTTLS row says what the
//! extra `EHLO`/`STARTTLS` exchange costs on top.
//!
//! The pipelining client (`client.rs`) in TLS 1.3 with resumption off: every session is a full
//! handshake (ECDHE and an ECDSA P-256 signature on the server), on both servers alike. At 1, 10
//! and 100 sessions; within each repeat the three paths run back to back, their order rotating
//! between repeats; each run is verified (the client got every reply it expected and sent its
//! close_notify, the sink counted every message, the gateway logged one session per message, no
//! check fired, no warning or error). CPU per message is each program's own cgroup.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context, Result, ensure};

use crate::{
    Settings,
    client::{self, Security},
    gateway::Gateway,
    haproxy::Haproxy,
    proc::Cgroup,
    sink::Sink,
    tls::{self, ServerCert},
};

/// Upper bound for one client run.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Report names of the three paths, in measuring order.
pub const GATEWAY_IMPLICIT: &str = "gateway, implicit TLS";
pub const GATEWAY_STARTTLS: &str = "gateway, STARTTLS";
pub const HAPROXY_IMPLICIT: &str = "HAProxy, implicit TLS";

/// One measured run.
pub struct TlsSample {
    pub rate: f64,
    /// CPU µs per message of the program's own cgroup.
    pub own_us: f64,
}

pub struct TlsCpu {
    pub names: Vec<&'static str>,
    pub levels: Vec<u32>,
    /// `samples[path][level]`, one per repeat.
    pub samples: Vec<Vec<Vec<TlsSample>>>,
    /// `messages[path][level]`: messages per run (from the warm-up rate).
    pub messages: Vec<Vec<u32>>,
    /// What each path's TLS negotiated (cipher suite, key exchange group).
    pub negotiated: Vec<String>,
    /// The HAProxy configuration used.
    pub haproxy_config: String,
    pub runs: u64,
    pub verified_messages: u64,
}

/// Which program a route goes through (whose cgroup's CPU counts).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Gateway,
    Haproxy,
}

/// A route under test: where the client connects, and how.
struct Route {
    name: &'static str,
    addr: SocketAddr,
    security: Security,
    server: Server,
}

/// The programs the routes go through.
struct Servers {
    gw: Gateway,
    hap: Haproxy,
}

impl Servers {
    fn cgroup(&self, server: Server) -> &Cgroup {
        match server {
            Server::Gateway => &self.gw.cgroup,
            Server::Haproxy => &self.hap.cgroup,
        }
    }
}

pub fn measure(
    settings: &Settings,
    dir: &Path,
    sink: &Sink,
    cert: &ServerCert,
    max_sessions: u32,
) -> Result<TlsCpu> {
    let extra = format!(
        "max_connections = {}\nmax_connections_per_source = {}\n",
        max_sessions * 20,
        max_sessions * 10
    );
    let gw = Gateway::start_tls(dir, 9, sink.addr, &extra, &cert.gateway_section)?;
    let hap = Haproxy::start(
        dir,
        "haproxy-tls",
        sink.addr,
        max_sessions,
        Some(&cert.haproxy_pem),
    )?;
    let config = tls::client_config()?;
    let smtps = gw
        .smtps_addr
        .context("the TLS gateway has no smtps listener")?;
    let paths = [
        Route {
            name: GATEWAY_IMPLICIT,
            addr: smtps,
            security: Security::ImplicitTls(config.clone()),
            server: Server::Gateway,
        },
        Route {
            name: GATEWAY_STARTTLS,
            addr: gw.addr,
            security: Security::StartTls(config.clone()),
            server: Server::Gateway,
        },
        Route {
            name: HAPROXY_IMPLICIT,
            addr: hap.addr,
            security: Security::ImplicitTls(config),
            server: Server::Haproxy,
        },
    ];
    let levels = settings.sessions.clone();
    let mut out = TlsCpu {
        names: paths.iter().map(|p| p.name).collect(),
        levels: levels.clone(),
        samples: paths
            .iter()
            .map(|_| levels.iter().map(|_| Vec::new()).collect())
            .collect(),
        messages: paths.iter().map(|_| vec![0; levels.len()]).collect(),
        negotiated: vec![String::new(); paths.len()],
        haproxy_config: hap.config.clone(),
        runs: 0,
        verified_messages: 0,
    };
    let mut servers = Servers { gw, hap };
    eprintln!(
        "TLS: warm-up (sizes each run to about {:?}):",
        settings.run_time
    );
    for (pi, p) in paths.iter().enumerate() {
        for (li, &sessions) in levels.iter().enumerate() {
            let n = (sessions * 2).max(settings.min_messages);
            let s = run_one(sink, &mut servers, p, sessions, n, &mut out, pi)?;
            let sized = (s.rate * settings.run_time.as_secs_f64()) as u32;
            out.messages[pi][li] = sized.clamp(
                (sessions * 4).max(settings.min_messages),
                settings.max_messages,
            );
        }
    }
    for r in 0..settings.repeats {
        for (li, &sessions) in levels.iter().enumerate() {
            eprintln!(
                "TLS repeat {}/{}, {sessions} sessions:",
                r + 1,
                settings.repeats
            );
            for k in 0..paths.len() {
                let pi = (k + r) % paths.len();
                let messages = out.messages[pi][li];
                let s = run_one(
                    sink,
                    &mut servers,
                    &paths[pi],
                    sessions,
                    messages,
                    &mut out,
                    pi,
                )?;
                out.samples[pi][li].push(s);
            }
        }
    }
    Ok(out)
}

/// One verified run of `messages` one-message sessions along `p`.
fn run_one(
    sink: &Sink,
    servers: &mut Servers,
    p: &Route,
    sessions: u32,
    messages: u32,
    out: &mut TlsCpu,
    pi: usize,
) -> Result<TlsSample> {
    let what = format!("{}: {sessions} sessions, {messages} msgs", p.name);
    let before = sink.messages()?;
    let c0 = servers.cgroup(p.server).usage()?;
    let run = client::run(p.addr, &p.security, sessions, messages, RUN_TIMEOUT)
        .with_context(|| what.clone())?;
    sink.expect(before, u64::from(messages), Duration::from_secs(5), &what)?;
    if p.server == Server::Gateway {
        servers.gw.verify(u64::from(messages), &what)?;
    }
    let own_us = servers
        .cgroup(p.server)
        .usage()?
        .saturating_sub(c0)
        .as_secs_f64()
        * 1e6
        / f64::from(messages);
    let rate = f64::from(messages) / run.wall.as_secs_f64().max(1e-9);
    let negotiated = run
        .negotiated
        .with_context(|| format!("{what}: no TLS session was negotiated"))?;
    if out.negotiated[pi].is_empty() {
        out.negotiated[pi] = negotiated;
    }
    // Every route must do the same cryptography, or its CPU is not comparable.
    if let Some(other) = out.negotiated.iter().find(|n| !n.is_empty()) {
        ensure!(
            *other == out.negotiated[pi],
            "{what}: negotiated {} where another route negotiated {other}",
            out.negotiated[pi]
        );
    }
    out.runs += 1;
    out.verified_messages += u64::from(messages);
    eprintln!("  {what}: {rate:.0} msgs/s, CPU µs/msg {own_us:.0}");
    Ok(TlsSample { rate, own_us })
}

//! `bench-smtp`: what the SMTP proxy costs against the direct path and against other relays, in
//! throughput, session latency, CPU per message, and memory per idle session.
//!
//! # What runs
//! Six paths to one `smtp-sink` (which counts every message), each started once and measured
//! in the same run: **direct** (the baseline); the **gateway** (`smtp-gateway run`, every cheap
//! check on: pregreet with greet_pause "0s", pipelining, non_smtp, bare newlines, HELO checks,
//! anti-relay with `example.org` accepted; DNSBL off); the **gateway with FCrDNS + SPF** (the
//! same plus `[dns]`, `[fcrdns]`, `[spf]` and `[auth_results]`, its only name server the test
//! kit's DNS responder on loopback, started here: `dns_gateway.rs`); **HAProxy** in TCP mode; **Haraka** with
//! `queue/smtp_forward` (npm, `.tools/haraka`); a private **Postfix** with postscreen in front
//! of smtpd, relaying to the sink (it queues: see `postfix.rs` for what is measured).
//!
//! Two clients, at 1, 10 and 100 concurrent sessions, one message per connection:
//! Postfix's `smtp-source` (no pipelining; msgs/s) and a pipelining client of ours
//! (`client.rs`; msgs/s and p50/p99 session latency). Within each repeat every contender runs
//! back to back, the order rotating between repeats; ratios are medians of per-repeat ratios.
//! One message per connection, so msgs/s is also sessions/s: the ratio of the gateway with
//! FCrDNS + SPF to the gateway without them is the cost of the DNS checks per session.
//! Each program runs in its own cgroup v2, so CPU per message covers all its processes.
//!
//! # TLS
//! CPU per message over TLS (`tls_cpu.rs`): the gateway terminating implicit TLS (an `smtps`
//! listener) and STARTTLS, against HAProxy terminating implicit TLS in TCP mode, each relaying
//! to the sink; the pipelining client with a full TLS 1.3 handshake per session (`tls.rs`).
//!
//! # How it checks itself
//! Every run: the client exited 0 (smtp-source) or got the expected reply to every command (ours);
//! smtp-sink counted exactly the messages sent; the gateway logged one session per message, no
//! check fired, no warning or error; the gateway with FCrDNS + SPF too (every SPF result but
//! pass is refused there), and its DNS responder has been asked for the sender's SPF record; Haraka logged no warning or error; Postfix logged one
//! `status=sent` per message, drained its queue, and logged no reject, postscreen test,
//! warning or deferral. Anything else stops the benchmark with an error.
//!
//! # Memory
//! A fresh gateway gets N idle connections (each reads its 220 banner, then stays silent);
//! (VmRSS after − before) / N is the cost of one idle session. N = 1,000 and 10,000; the same
//! for idle TLS sessions (after STARTTLS), reported next to the plaintext ones.
//!
//! # Layout
//! `bench-smtp/`: `proc.rs` (processes stopped by PID, cgroups, ports), `sink.rs`,
//! `gateway.rs`, `dns_gateway.rs`, `haproxy.rs`, `haraka.rs`, `postfix.rs` (one contender each), `contender.rs`
//! (their common interface), `source.rs` (smtp-source), `client.rs` (pipelining client),
//! `throughput.rs` (the measured runs), `tls.rs` (certificate, client configuration),
//! `tls_cpu.rs` (the TLS runs), `memory.rs`, `report.rs` (Markdown and figures JSON).
//!
//! Output: Markdown on stdout, progress on stderr; `--figures PATH` also writes the figures
//! (tests/src/figures.rs). `--quick`: a smoke run (2 repeats of short runs, 1,000 idle sessions).
//!
//! Everything runs on 127.0.0.0/8; the only DNS server asked is the benchmark's own responder on
//! 127.0.0.1 (never the system resolver). Needs root (bpffs, cgroups,
//! `smtp-sink -u`), the postfix and haproxy packages, Haraka in `.tools/haraka`
//! (`cargo xtask setup` installs all three) and a release build of `smtp-gateway` next to this
//! executable. Every process is stopped by PID when the benchmark ends, on error too; cgroups,
//! the temporary directory and the gateway's pins are removed.

// The modules live in bench-smtp/ (a crate root looks for them beside itself otherwise).
#[path = "bench-smtp/client.rs"]
mod client;
#[path = "bench-smtp/contender.rs"]
mod contender;
#[path = "bench-smtp/dns_gateway.rs"]
mod dns_gateway;
#[path = "bench-smtp/gateway.rs"]
mod gateway;
#[path = "bench-smtp/haproxy.rs"]
mod haproxy;
#[path = "bench-smtp/haraka.rs"]
mod haraka;
#[path = "bench-smtp/memory.rs"]
mod memory;
#[path = "bench-smtp/postfix.rs"]
mod postfix;
#[path = "bench-smtp/proc.rs"]
mod proc;
#[path = "bench-smtp/report.rs"]
mod report;
#[path = "bench-smtp/sink.rs"]
mod sink;
#[path = "bench-smtp/source.rs"]
mod source;
#[path = "bench-smtp/throughput.rs"]
mod throughput;
#[path = "bench-smtp/tls.rs"]
mod tls;
#[path = "bench-smtp/tls_cpu.rs"]
mod tls_cpu;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result, ensure};
use smtp_gateway_tests::{BenchArgs, TempDir, loadavg};

use crate::{
    contender::Contender, dns_gateway::DnsGateway, gateway::Gateway, haproxy::Haproxy,
    haraka::Haraka, postfix::Postfix, sink::Sink,
};

/// Message size given to smtp-source (`-l`), and about the size our client sends.
pub const MESSAGE_BYTES: u32 = 1024;
pub const FROM: &str = "a@example.net";
pub const TO: &str = "b@example.org";
/// HELO name the clients announce: a plain FQDN, so no HELO check fires.
pub const HELO: &str = "client.example.net";
/// Aims stated in the issue.
pub const AIM_DIRECT: f64 = 0.85;
pub const AIM_HARAKA: f64 = 5.0;
pub const AIM_HAPROXY: f64 = 1.0;
/// The gateway's own CPU per message (its cgroup) against HAProxy's own (issue 13): at most.
pub const AIM_CPU_VS_HAPROXY: f64 = 0.5;
/// The gateway with FCrDNS + SPF on against the same gateway with them off.
pub const AIM_DNS: f64 = 0.9;
/// Issue 13: at most 5 KiB per idle plaintext session at 10,000 sessions.
pub const AIM_KIB_PER_SESSION: f64 = 5.0;

pub struct Settings {
    quick: bool,
    /// Measured repeats per contender and session level.
    repeats: usize,
    /// Concurrent sessions.
    sessions: Vec<u32>,
    /// Each run is sized to last about this long (from the warm-up rate) ...
    run_time: Duration,
    /// ... but sends at least / at most this many messages.
    min_messages: u32,
    max_messages: u32,
    /// Idle connection counts for the memory measurement.
    idle: Vec<usize>,
    figures: Option<PathBuf>,
}

impl Settings {
    fn from_args() -> Result<Option<Self>> {
        let Some(BenchArgs { quick, figures }) = BenchArgs::parse(
            "bench-smtp",
            "smtp-source and a pipelining client -> {smtp-sink directly, \
                         smtp-gateway, smtp-gateway with FCrDNS + SPF (DNS responder on \
                         loopback), HAProxy, Haraka, Postfix postscreen} -> smtp-sink at 1, \
                         10 and 100 sessions (msgs/s, session latency, CPU per message), and \
                         the gateway's memory per idle session; prints Markdown. Needs root, \
                         the postfix and haproxy packages and Haraka (`cargo xtask setup`).",
            "smoke run: 2 short repeats, 1,000 idle sessions",
        )?
        else {
            return Ok(None);
        };
        Ok(Some(if quick {
            Self {
                quick,
                repeats: 2,
                sessions: vec![1, 10, 100],
                run_time: Duration::from_millis(400),
                min_messages: 100,
                max_messages: 2_000,
                idle: vec![1_000],
                figures,
            }
        } else {
            Self {
                quick,
                repeats: 7,
                sessions: vec![1, 10, 100],
                run_time: Duration::from_millis(1_500),
                min_messages: 200,
                max_messages: 10_000,
                idle: vec![1_000, 10_000],
                figures,
            }
        }))
    }
}

fn main() -> ExitCode {
    smtp_gateway_tests::bench_main(Settings::from_args(), |settings| run(&settings))
}

/// What the report says about how the contenders were set up.
pub struct Setup {
    pub versions: Vec<String>,
    pub commands: Vec<String>,
    /// (title, code-block language, text).
    pub configs: Vec<(String, &'static str, String)>,
}

/// Starts every contender (direct first, the baseline).
fn start_contenders(
    dir: &std::path::Path,
    sink: &Sink,
    max_sessions: u32,
) -> Result<(Vec<Contender>, Setup)> {
    // Every session comes from 127.0.0.1: the per-source cap must exceed the session count
    // (closing sessions still hold their slot for a moment).
    let extra = format!(
        "max_connections = {}\nmax_connections_per_source = {}\n",
        max_sessions * 20,
        max_sessions * 10
    );
    let gw = Gateway::start(dir, 0, sink.addr, &extra)?;
    let gw_dns = DnsGateway::start(dir, sink.addr, &extra)?;
    let hap = Haproxy::start(dir, "haproxy", sink.addr, max_sessions, None)?;
    let hk = Haraka::start(dir, sink.addr)?;
    let mut pf = Postfix::start(dir, sink.addr, max_sessions)?;
    // Let postscreen test 127.0.0.1 once (greet wait + deep protocol tests; a new client that
    // passes them gets 450 at RCPT and must reconnect), so every measured session is PASS OLD.
    let reply = client::probe(pf.addr).context("postscreen probe session")?;
    ensure!(
        reply.starts_with("450") || reply.starts_with("250"),
        "postscreen probe: RCPT got {reply:?}"
    );
    pf.expect_passed()?;
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let setup = Setup {
        versions: vec![
            format!("smtp-gateway {}", env!("CARGO_PKG_VERSION")),
            hap.version.clone(),
            format!("{} ({} workers)", hk.version, hk.nodes),
            pf.version.clone(),
            version("rustc", "--version"),
        ],
        commands: vec![
            format!("{}   # the backend of every path", sink.command),
            format!("smtp-source -s S -m N -l {MESSAGE_BYTES} -f {FROM} -t {TO} -M {HELO} ADDR"),
            "smtp-gateway -c gateway.toml --log-format json run".into(),
            "smtp-gateway -c gateway-dns.toml --log-format json run   # FCrDNS + SPF on".into(),
            "haproxy -db -f haproxy.cfg".into(),
            "haraka -i DIR && NODE_OPTIONS=\"--require DIR/nodelay.js\" haraka -c DIR   # \
             node .tools/haraka/node_modules/.bin/haraka"
                .into(),
            "postfix -c DIR start-fg   # main.cf and master.cf below".into(),
        ],
        configs: vec![
            ("gateway.toml".into(), "toml", gw.toml.clone()),
            (
                "gateway-dns.toml (FCrDNS + SPF on; the name server is the benchmark's DNS \
                 responder)"
                    .into(),
                "toml",
                gw_dns.gw.toml.clone(),
            ),
            (
                "The DNS responder's table (smtp_gateway_test_kit::DnsResponder)".into(),
                "",
                gw_dns.records.clone(),
            ),
            ("haproxy.cfg".into(), "", hap.config.clone()),
            (
                format!(
                    "Haraka (`haraka -i` defaults, then): plugins = {}; host_list = example.org; \
                     smtp.ini nodes = {}; smtp_forward.ini",
                    hk.plugins, hk.nodes
                ),
                "ini",
                format!(
                    "host={}\nport={}\nenable_tls=false",
                    sink.addr.ip(),
                    sink.addr.port()
                ),
            ),
            (
                "Haraka nodelay.js (TCP_NODELAY on every socket, as the gateway does; see \
                 haraka.rs)"
                    .into(),
                "js",
                haraka::NODELAY_JS.into(),
            ),
            ("Postfix main.cf".into(), "", pf.main_cf.clone()),
            ("Postfix master.cf".into(), "", pf.master_cf.clone()),
        ],
    };
    Ok((
        vec![
            Contender::Direct,
            Contender::Gateway(gw),
            Contender::GatewayDns(gw_dns),
            Contender::Haproxy(hap),
            Contender::Haraka(hk),
            Contender::Postfix(pf),
        ],
        setup,
    ))
}

fn run(settings: &Settings) -> Result<()> {
    let dir = TempDir(std::env::temp_dir().join(format!("sgw-bench-smtp-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    // 100 sessions through a proxy hold 200+ descriptors; the memory part needs 10,000+.
    proc::raise_nofile()?;
    let load_start = loadavg();
    let sink = Sink::start(&dir.0)?;
    let max_sessions = settings.sessions.iter().copied().max().unwrap_or(10);
    let (tp, setup, dns) = {
        let (mut contenders, setup) = start_contenders(&dir.0, &sink, max_sessions)?;
        let tp = throughput::measure(settings, &dir.0, &sink, &mut contenders)?;
        let dns = contenders.iter().find_map(|c| match c {
            Contender::GatewayDns(g) => Some(g.summary()),
            _ => None,
        });
        (tp, setup, dns)
        // Every contender stops here, before the TLS and memory measurements.
    };
    let cert = tls::ServerCert::create(&dir.0)?;
    let tls = tls_cpu::measure(settings, &dir.0, &sink, &cert, max_sessions)?;
    // The memory gateways need a backend address but never connect to it (connect_at = "mail").
    let mem = memory::memory(settings, &dir.0, sink.addr, &cert)?;
    drop(sink);
    let load = (load_start, loadavg());
    print!(
        "{}",
        report::markdown(settings, &setup, &tp, dns.as_ref(), &tls, &mem, &load)
    );
    if let Some(path) = &settings.figures {
        report::figures(&tp)
            .write(path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

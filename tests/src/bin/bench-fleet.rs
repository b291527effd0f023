//! `bench-fleet`: what sharing state through Redis costs and buys a fleet of gateways (issue 12,
//! "Measure").
//!
//! **Ban to drop on another node.** Two gateways, A and B, each with XDP (driver mode) on the veth
//! of its own network-namespace lab (tests/tests/support/netns.rs, daemons started by
//! tests/tests/support/daemon.rs), share one real `redis-server` on a unix socket in the run's
//! directory (tests/tests/support/store_lab.rs), `[store] engine = "redis"`, `fleet = true`. B
//! reconciles only at (re)subscription (`fleet_reconcile_interval = "1h"`), so a ban reaches it by
//! the pub/sub message alone. In each lab's client namespace a probe thread sends one real TCP SYN
//! from [`PROBE`] to the gateway's port 25 every [`PROBE_GAP`] (a non-blocking connect, closed at
//! once). One repeat: `smtp-gateway block add PROBE` is started on A (the CLI, through A's control
//! socket) and B's pinned verdict counter `dropped_exact` is polled every [`POLL`] until it rises:
//! B's XDP dropped a SYN from the banned source. Then B must list the source with origin `fleet`,
//! `block del` on A, and both gateways must pass the probe again before the next repeat. The
//! same-run baseline, alternated with it: `block add` on A → A's own XDP drops the probe. Both are
//! timed from the start of the CLI (its process start-up included), resolution about
//! [`PROBE_GAP`]; during a fleet ban A's counter is polled too, so A's first drop → B's first
//! drop times the propagation itself (Redis write, publish, B's subscriber, B's map write).
//! Aim: p99 ≤ 100 ms on loopback Redis.
//!
//! **Extra latency per SMTP session.** Two gateways on loopback (no XDP: `interfaces = []`), the
//! benchmarks' configuration (tests/src/gateway_config.rs: every cheap check on, no greet pause,
//! DNSBL off), in front of one `smtp-sink`, identical but for `[store]`: `engine = "redis"`
//! (the same Redis, `fleet = true`) vs `engine = "off"`. Every session comes from a source address
//! neither gateway has seen (127.x.y.z), so the redis gateway asks Redis for each client's pass
//! (the read a session waits for, at most `store.budget`) and queues the pass and the session's
//! outcome afterwards: the most a session costs the store. Sessions: connect, 220, EHLO, MAIL,
//! RCPT, DATA, a small message, 250, QUIT, 221, timed by the client; [`CLIENTS`] threads back to
//! back. Rounds alternate which gateway goes first. Aim: ≤ 1 ms extra at p99. Checks: every
//! session's message was accepted (250) and smtp-sink's counter grew by exactly the sessions run;
//! Redis holds a pass record for the redis gateway's clients afterwards.
//!
//! Output: Markdown on stdout, progress on stderr; `--figures PATH` writes a `Figures` JSON;
//! `--quick`: 10 bans and 2 rounds of 2×50 sessions (under a minute); default: 50 bans and 6
//! rounds of 2×200 sessions. Needs root, `redis-server`/`redis-cli`, `smtp-sink` (postfix) and
//! release builds of `smtp-gateway` and this binary. Namespaces `sgw<pid>-{fa,fb}-{gw,cl}`, pins
//! `/sys/fs/bpf/sgw-bf-<pid>-*`, files `/tmp/sgw-bf-<pid>*`: all removed when the run ends
//! (`Drop`, also on error and panic); every process started here is stopped by PID.

#[path = "../../tests/support/daemon.rs"]
#[allow(dead_code)]
mod daemon;
#[path = "../../tests/support/netns.rs"]
mod netns;
#[path = "../../tests/support/smtp_client.rs"]
#[allow(dead_code)]
mod smtp_client;
#[path = "../../tests/support/store_lab.rs"]
#[allow(dead_code)]
mod store_lab;

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use daemon::Daemon;
use netns::{Topology, in_netns, nsenter, wait_until};
use smtp_client::Client;
use smtp_gateway::dataplane::{Dataplane, config::DataplaneConfig, loader};
use smtp_gateway_tests::{
    BenchArgs, TempDir,
    figures::{Figure, Figures, Point, Series},
    gateway_config, loadavg, machine,
    proc::Proc,
    smtp_sink_messages,
};
use store_lab::Redis;

/// The banned source: one address in each lab's client namespace.
const PROBE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 50));
/// The protected port the probe's SYNs go to.
const SMTP: u16 = 25;
/// One probe SYN per lab this often: the latency's resolution.
const PROBE_GAP: Duration = Duration::from_micros(500);
/// The verdict counters are read this often while a ban is timed.
const POLL: Duration = Duration::from_micros(100);
/// A ban must drop within this, or the run fails.
const DROP_WITHIN: Duration = Duration::from_secs(10);
/// Longest the probe threads live, whatever happens.
const PROBE_LIFETIME: Duration = Duration::from_secs(900);
/// Key prefix in the shared Redis.
const PREFIX: &str = "sgw-bench-fleet:";
/// Client threads per session run (the machine has 2 cores).
const CLIENTS: usize = 2;
/// The ban-to-drop aim, ms at p99.
const BAN_AIM_MS: f64 = 100.0;
/// The extra session latency aim, ms at p99.
const SESSION_AIM_MS: f64 = 1.0;

struct Settings {
    quick: bool,
    /// Bans timed on each path (fleet and local).
    bans: usize,
    /// Session rounds (each runs both gateways).
    rounds: usize,
    /// Sessions per client thread per gateway per round.
    sessions: usize,
    figures: Option<PathBuf>,
}

impl Settings {
    fn from_args() -> Result<Option<Self>> {
        let Some(BenchArgs { quick, figures }) = BenchArgs::parse(
            "bench-fleet",
            "Fleet state through Redis: ban-to-drop latency on another gateway (block add on A, \
             XDP drop on B) against the local block add -> drop on A, and SMTP session latency \
             and rate with [store] engine = \"redis\" against \"off\"; prints Markdown. Needs \
             root, redis-server and postfix (smtp-sink).",
            "smoke run: 10 bans, 2 rounds of 2x50 sessions",
        )?
        else {
            return Ok(None);
        };
        Ok(Some(Settings {
            quick,
            bans: if quick { 10 } else { 50 },
            rounds: if quick { 2 } else { 6 },
            sessions: if quick { 50 } else { 200 },
            figures,
        }))
    }
}

fn main() -> ExitCode {
    smtp_gateway_tests::bench_main(Settings::from_args(), |settings| run(&settings))
}

// ───────────────────────────── ban to drop ─────────────────────────────

/// One gateway with XDP in its own lab. Fields drop in order: the daemon (detach needs the
/// namespace), then the namespaces.
struct Node {
    gw: Daemon,
    topo: Topology,
    /// Its configuration (the CLI's too).
    config: PathBuf,
}

impl Node {
    fn new(tag: &str, name: &str, redis: &Redis, reconcile: &str) -> Result<Node> {
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/tmp/sgw-bf-{pid}-{tag}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-bf-{pid}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let topo = Topology::new(tag, &[PROBE]);
        // The probe sends 2,000 SYNs/s from one source: the rate limiter would drop them first.
        let config = format!(
            "[dataplane]\n\
             interfaces = [\"{iface}\"]\n\
             attach_mode = \"driver\"\n\
             protected_ports = [{SMTP}]\n\
             pin_dir = \"{pins}\"\n\
             \n\
             [dataplane.rate_limit]\n\
             enabled = false\n\
             \n\
             [metrics]\n\
             enabled = false\n\
             \n\
             [store]\n\
             engine = \"redis\"\n\
             redis_url = \"{url}\"\n\
             key_prefix = \"{PREFIX}\"\n\
             node = \"{name}\"\n\
             fleet_reconcile_interval = \"{reconcile}\"\n",
            iface = topo.gw_if,
            pins = pin_dir.display(),
            url = redis.url(),
        );
        let gw = Daemon::new(&topo.gw_ns, &topo.gw_if, &dir, &pin_dir, &config);
        Ok(Node {
            config: dir.join("gateway.toml"),
            gw,
            topo,
        })
    }

    /// The pinned maps of its running daemon.
    fn dataplane(&self) -> Result<Dataplane> {
        let cfg = DataplaneConfig {
            pin_dir: self.gw.pin_dir.clone(),
            ..DataplaneConfig::default()
        };
        loader::open_existing(&cfg)?.context("no pinned maps")
    }

    /// `smtp-gateway block add PROBE` started (not waited for) in its namespace.
    fn spawn_block_add(&self) -> Result<Proc> {
        let mut cmd = nsenter(&self.topo.gw_ns, daemon::binary());
        cmd.arg("-c")
            .arg(&self.config)
            .args(["block", "add", &PROBE.to_string(), "--ttl", "10m"])
            .args(["--reason", "bench-fleet"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Proc::spawn("smtp-gateway block add", &mut cmd)
    }
}

/// Packets of verdict `name`, summed over CPUs.
fn verdict(dp: &Dataplane, name: &str) -> Result<u64> {
    Ok(dp
        .verdict_totals()?
        .iter()
        .find(|t| t.verdict == name)
        .map_or(0, |t| t.packets))
}

/// A thread in a lab's client namespace sending one SYN from [`PROBE`] every [`PROBE_GAP`]
/// until dropped (or [`PROBE_LIFETIME`]).
struct Probe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl Probe {
    fn start(ns: &str) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = ns.to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            in_netns(&ns, move || -> Result<u64> {
                let dst = Topology::gw_addr(PROBE, SMTP);
                let started = Instant::now();
                let mut sent = 0u64;
                while !flag.load(Ordering::Relaxed) && started.elapsed() < PROBE_LIFETIME {
                    let socket = socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::STREAM.nonblocking(),
                        Some(socket2::Protocol::TCP),
                    )?;
                    socket.bind(&SocketAddr::new(PROBE, 0).into())?;
                    // The SYN leaves inside connect(); closing a SYN_SENT socket sends nothing,
                    // and the SYN-ACK (when not dropped) meets no socket: the kernel resets it.
                    match socket.connect(&dst.into()) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                        Err(e) => return Err(anyhow!("probe connect: {e}")),
                    }
                    drop(socket);
                    sent += 1;
                    std::thread::sleep(PROBE_GAP);
                }
                Ok(sent)
            })
        });
        Probe {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; the SYNs it sent.
    fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(sent)) => sent,
            Some(Err(_)) => bail!("the probe thread panicked"),
            None => Ok(0),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits (bounded) until `dp` passes the probe again.
fn wait_passing(dp: &Dataplane, what: &str) -> Result<()> {
    let before = verdict(dp, "passed")?;
    ensure!(
        wait_until(Duration::from_secs(10), Duration::from_millis(1), || {
            verdict(dp, "passed").unwrap_or(0) > before
        }),
        "{what}: the probe does not pass"
    );
    Ok(())
}

/// Times one `block add PROBE` on `on`, until every one of `watched` drops the probe; returns
/// the first drop of each and the CLI's exit, in ms from the CLI's start.
fn time_ban(on: &Node, watched: &[&Dataplane]) -> Result<(Vec<f64>, f64)> {
    let dropped_before = watched
        .iter()
        .map(|dp| verdict(dp, "dropped_exact"))
        .collect::<Result<Vec<u64>>>()?;
    let t0 = Instant::now();
    let mut cli = on.spawn_block_add()?;
    let mut first: Vec<Option<Duration>> = vec![None; watched.len()];
    let mut exited = None;
    while first.iter().any(Option::is_none) || exited.is_none() {
        ensure!(
            t0.elapsed() < DROP_WITHIN,
            "no drop within {DROP_WITHIN:?} of block add (drops: {first:?}, CLI exited: \
             {exited:?})"
        );
        if exited.is_none()
            && let Some(status) = cli.child.as_mut().map(|c| c.try_wait()).transpose()?
            && let Some(status) = status
        {
            ensure!(status.success(), "smtp-gateway block add failed ({status})");
            exited = Some(t0.elapsed());
        }
        for ((dp, before), first) in watched.iter().zip(&dropped_before).zip(&mut first) {
            if first.is_none() && verdict(dp, "dropped_exact")? > *before {
                *first = Some(t0.elapsed());
            }
        }
        std::thread::sleep(POLL);
    }
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    Ok((first.into_iter().map(ms).collect(), ms(exited)))
}

/// Ban latencies, ms.
#[derive(Default)]
struct Bans {
    /// `block add` on A → B's XDP drops.
    fleet: Vec<f64>,
    /// `block add` on A → A's XDP drops.
    local: Vec<f64>,
    /// The CLI's own run (start → exit), over every ban.
    cli: Vec<f64>,
    /// Within one fleet ban: A's first drop → B's first drop (the propagation itself).
    propagation: Vec<f64>,
    /// Probe SYNs sent (both labs).
    probes: u64,
}

fn measure_bans(settings: &Settings, redis: &Redis) -> Result<Bans> {
    let mut a = Node::new("fa", "node-a", redis, "1h")?;
    let mut b = Node::new("fb", "node-b", redis, "1h")?;
    a.gw.start();
    b.gw.start();
    for (node, name) in [(&a, "A"), (&b, "B")] {
        ensure!(
            node.gw
                .wait_logged(&["fleet: ban propagation"], Duration::from_secs(10)),
            "{name} started no fleet task:\n{}",
            node.gw.log()
        );
    }
    let (dp_a, dp_b) = (a.dataplane()?, b.dataplane()?);
    let probe_a = Probe::start(&a.topo.cl_ns);
    let probe_b = Probe::start(&b.topo.cl_ns);
    wait_passing(&dp_a, "A before any ban")?;
    wait_passing(&dp_b, "B before any ban")?;
    let target = PROBE.to_string();
    let mut bans = Bans::default();
    let started = Instant::now();
    let bound = Duration::from_secs(60 + 5 * settings.bans as u64);
    for i in 0..settings.bans * 2 {
        ensure!(started.elapsed() < bound, "out of time for the bans");
        let fleet = i % 2 == 0;
        let watched: &[&Dataplane] = if fleet { &[&dp_b, &dp_a] } else { &[&dp_a] };
        let (first, exited) = time_ban(&a, watched)?;
        bans.cli.push(exited);
        let at = |i: usize| first.get(i).copied().unwrap_or_default();
        if fleet {
            bans.fleet.push(at(0));
            bans.propagation.push(at(0) - at(1));
            // The drop was B's copy of A's ban.
            let entry =
                b.gw.block_entry(&target)
                    .context("B dropped but lists nothing")?;
            ensure!(entry["origin"] == "fleet", "B's entry: {entry}");
        } else {
            bans.local.push(at(0));
        }
        a.gw.cli_ok(&["block", "del", &target]);
        wait_passing(&dp_a, "A after block del")?;
        wait_passing(&dp_b, "B after block del on A")?;
        // Do not start in phase with the probe.
        std::thread::sleep(Duration::from_micros(
            5_000 + (started.elapsed().as_micros() % 7_919) as u64,
        ));
        if (i + 1) % 10 == 0 {
            eprintln!("  {} of {} bans", i + 1, settings.bans * 2);
        }
    }
    bans.probes = probe_a.finish()? + probe_b.finish()?;
    drop((dp_a, dp_b));
    a.gw.terminate();
    b.gw.terminate();
    Ok(bans)
}

// ───────────────────────────── sessions ─────────────────────────────

/// `smtp-sink` on loopback, its counters (`-c`) in a file.
struct Sink {
    _proc: Proc,
    addr: SocketAddr,
    counters: PathBuf,
}

impl Sink {
    fn start(dir: &Path) -> Result<Sink> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let counters = dir.join("sink.counters");
        let out = std::fs::File::create(&counters).context("creating the sink's counters")?;
        let proc = Proc::spawn(
            "smtp-sink",
            Command::new("smtp-sink")
                .args(["-u", "nobody", "-c", &addr.to_string(), "256"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(Stdio::null()),
        )?;
        ensure!(
            wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
                std::net::TcpStream::connect(addr).is_ok()
            }),
            "smtp-sink does not listen on {addr}"
        );
        Ok(Sink {
            _proc: proc,
            addr,
            counters,
        })
    }

    fn messages(&self) -> Result<u64> {
        smtp_sink_messages(&self.counters)
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("binding an ephemeral port")?
        .port())
}

/// `smtp-gateway run` on loopback without XDP; `Drop` stops it by PID and detaches its pins.
struct LoopGateway {
    proc: Proc,
    config: PathBuf,
    pin_dir: PathBuf,
    addr: SocketAddr,
}

impl LoopGateway {
    /// `store` replaces the benchmark configuration's `[store]` section.
    fn start(dir: &Path, name: &str, backend: SocketAddr, store: &str) -> Result<LoopGateway> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-bf-{}-{name}", std::process::id()));
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let toml = gateway_config::toml(
            &format!("pin_dir = \"{}\"\ninterfaces = []\n", pin_dir.display()),
            &addr.to_string(),
            "",
            backend,
        );
        let toml = toml
            .strip_suffix("[store]\nengine = \"off\"\n")
            .context("the benchmark configuration no longer ends with its [store]")?
            .to_string()
            + store;
        let config = gateway_config::write(dir, &format!("{name}.toml"), &toml)?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).context("creating the gateway log")?;
        let mut proc = Proc::spawn(
            "smtp-gateway",
            Command::new(daemon::binary())
                .arg("-c")
                .arg(&config)
                .arg("run")
                .env("NO_COLOR", "1")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out),
        )?;
        let mut gw = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(|l| l.trim_end().ends_with(": ready")) {
                gw = Some(());
                break;
            }
            if let Some(status) = proc.exited() {
                bail!("gateway {name} exited ({status}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = LoopGateway {
            proc,
            config,
            pin_dir,
            addr,
        };
        ensure!(
            gw.is_some(),
            "gateway {name} not ready after 20 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Ok(started)
    }
}

impl Drop for LoopGateway {
    fn drop(&mut self) {
        self.proc.stop();
        if self.pin_dir.exists() {
            let _ = Command::new(daemon::binary())
                .arg("-c")
                .arg(&self.config)
                .arg("detach")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}

/// The `n`-th fresh loopback source: 127.1.0.1 onwards, hosts 1 to 254 of each /24.
fn source(n: u32) -> IpAddr {
    let net = (n / 254 + 256).to_be_bytes();
    let host = (n % 254 + 1) as u8;
    IpAddr::V4(Ipv4Addr::new(127, net[2], net[3], host))
}

/// One complete session from `src`; its latency in ms.
fn session(addr: SocketAddr, src: IpAddr) -> f64 {
    let t0 = Instant::now();
    let mut client = Client::connect(addr, src);
    let ehlo = client.cmd("EHLO client.example.net");
    assert!(ehlo.starts_with("250"), "EHLO: {ehlo}");
    let reply = client.send(
        "sender@example.net",
        "user@example.org",
        "Subject: bench-fleet\r\n\r\nhello\r\n",
    );
    assert!(reply.starts_with("250"), "DATA: {reply}");
    let quit = client.cmd("QUIT");
    assert!(quit.starts_with("221"), "QUIT: {quit}");
    t0.elapsed().as_secs_f64() * 1e3
}

/// [`CLIENTS`] threads of `per_client` sessions each, sources from `first`; (latencies ms,
/// sessions/s).
fn session_run(addr: SocketAddr, first: u32, per_client: usize) -> Result<(Vec<f64>, f64)> {
    let t0 = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let base = first + (c * per_client) as u32;
            std::thread::spawn(move || {
                (0..per_client)
                    .map(|i| session(addr, source(base + i as u32)))
                    .collect::<Vec<f64>>()
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in threads {
        latencies.extend(
            t.join()
                .map_err(|_| anyhow!("a session failed (see above)"))?,
        );
    }
    let rate = latencies.len() as f64 / t0.elapsed().as_secs_f64();
    Ok((latencies, rate))
}

/// Session figures of one gateway.
#[derive(Default)]
struct Sessions {
    /// Every session's latency, ms.
    latencies: Vec<f64>,
    /// Sessions/s per round.
    rates: Vec<f64>,
    /// p50 and p99 per round, ms.
    p50s: Vec<f64>,
    p99s: Vec<f64>,
}

fn measure_sessions(settings: &Settings, redis: &Redis, dir: &Path) -> Result<[Sessions; 2]> {
    let sink = Sink::start(dir)?;
    let off = LoopGateway::start(dir, "store-off", sink.addr, "[store]\nengine = \"off\"\n")?;
    let on = LoopGateway::start(
        dir,
        "store-redis",
        sink.addr,
        &format!(
            "[store]\nengine = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{PREFIX}\"\n\
             node = \"sessions\"\n",
            redis.url()
        ),
    )?;
    // Warm-up: connections, the Redis client, the backend pool.
    let mut next = 0u32;
    for gw in [&off, &on] {
        session_run(gw.addr, next, 10)?;
        next += (CLIENTS * 10) as u32;
    }
    let mut out = [Sessions::default(), Sessions::default()];
    let started = Instant::now();
    let bound = Duration::from_secs(120 + 60 * settings.rounds as u64);
    for round in 0..settings.rounds {
        for k in 0..2 {
            // Alternate which gateway goes first.
            let which = (round + k) % 2;
            let gw = if which == 0 { &off } else { &on };
            ensure!(started.elapsed() < bound, "out of time for the sessions");
            let before = sink.messages()?;
            let (mut lat, rate) = session_run(gw.addr, next, settings.sessions)?;
            next += (CLIENTS * settings.sessions) as u32;
            let n = lat.len() as u64;
            // smtp-sink rewrites its counters at its own pace: wait (bounded) for the last ones.
            let mut delivered = 0;
            wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                delivered = sink.messages().unwrap_or(0).saturating_sub(before);
                delivered >= n
            });
            ensure!(
                delivered == n,
                "{n} sessions accepted but smtp-sink counted {delivered}"
            );
            lat.sort_by(f64::total_cmp);
            let s = &mut out[which];
            s.p50s.push(quantile(&lat, 0.5));
            s.p99s.push(quantile(&lat, 0.99));
            s.rates.push(rate);
            s.latencies.extend(lat);
        }
        eprintln!("  round {} of {}", round + 1, settings.rounds);
    }
    let passes = redis.cli(&["--scan", "--pattern", &format!("{PREFIX}pass/*")]);
    let passes = passes.lines().count();
    ensure!(
        passes >= settings.rounds * CLIENTS * settings.sessions,
        "Redis holds {passes} pass records: the redis gateway did not use it"
    );
    for s in &mut out {
        s.latencies.sort_by(f64::total_cmp);
    }
    Ok(out)
}

// ───────────────────────────── report ─────────────────────────────

/// The `q`-quantile of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    let at = ((last as f64) * q).round() as usize;
    sorted.get(at.min(last)).copied().unwrap_or_default()
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: &[f64]) -> f64 {
    quantile(&sorted(v), 0.5)
}

fn run(settings: &Settings) -> Result<()> {
    let dir = TempDir(PathBuf::from(format!("/tmp/sgw-bf-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).context("creating the run's directory")?;
    let redis = Redis::start(&dir.0);
    let load_before = loadavg();
    eprintln!(
        "bans ({} fleet, {} local, alternated)...",
        settings.bans, settings.bans
    );
    let bans = measure_bans(settings, &redis)?;
    eprintln!(
        "  fleet p50 {:.2} ms, p99 {:.2} ms",
        quantile(&sorted(&bans.fleet), 0.5),
        quantile(&sorted(&bans.fleet), 0.99)
    );
    eprintln!(
        "sessions ({} rounds of {CLIENTS}x{} per gateway)...",
        settings.rounds, settings.sessions
    );
    let [off, on] = measure_sessions(settings, &redis, &dir.0)?;
    let load_after = loadavg();
    print!(
        "{}",
        report(settings, &bans, &off, &on, &load_before, &load_after)
    );
    if let Some(path) = &settings.figures {
        figures(settings, &bans, &off, &on)
            .write(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn verdict_text(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

fn report(
    settings: &Settings,
    bans: &Bans,
    off: &Sessions,
    on: &Sessions,
    load_before: &str,
    load_after: &str,
) -> String {
    let mut out = smtp_gateway_tests::report_title("bench-fleet", settings.quick);
    let fleet = sorted(&bans.fleet);
    let local = sorted(&bans.local);
    let cli = sorted(&bans.cli);
    let propagation = sorted(&bans.propagation);
    let (f50, f99, fmax) = (
        quantile(&fleet, 0.5),
        quantile(&fleet, 0.99),
        fleet.last().copied().unwrap_or_default(),
    );
    let (l50, l99) = (quantile(&local, 0.5), quantile(&local, 0.99));
    let _ = writeln!(
        out,
        "- load average before/after: {load_before} / {load_after}\n\
         - Redis: `redis-server` on a unix socket, shared by every gateway of the run\n"
    );
    let _ = writeln!(
        out,
        "## Ban to drop on another gateway\n\n\
         Two gateways (XDP native on their own veth, each in its own namespace lab) share Redis. \
         {n} times each, alternated: `smtp-gateway block add` on A (the CLI through A's control \
         socket) until B's XDP drops a SYN from the banned source (fleet), or A's own XDP drops it \
         (local baseline); during each fleet ban A's counter is watched too, which times the \
         propagation itself. A probe sends one SYN from that source to each gateway every {gap} µs \
         (the resolution); B's pinned `dropped_exact` counter is read every {poll} µs. Every fleet \
         ban was checked to be listed on B with origin `fleet`; `block del` on A and both gateways \
         passing the probe again came before the next ban. {probes} probe SYNs in all.\n\n\
         | path | p50 | p99 | max |\n|---|---|---|---|\n\
         | block add on A → dropped by B (fleet) | {f50:.2} ms | {f99:.2} ms | {fmax:.2} ms |\n\
         | block add on A → dropped by A (local baseline) | {l50:.2} ms | {l99:.2} ms | {lmax:.2} ms |\n\
         | the CLI's own run (start → exit), every ban | {c50:.2} ms | {c99:.2} ms | {cmax:.2} ms |\n\
         | within a fleet ban: A's first drop → B's first drop (the propagation) | {p50:.2} ms | \
         {p99:.2} ms | {pmax:.2} ms |\n\n\
         - fleet / local: {r50:.2}× at p50, {r99:.2}× at p99; the fleet's extra (Redis write, \
         publish, B's subscriber, B's map write): {d50:.2} ms at p50\n\
         - aim p99 ≤ {BAN_AIM_MS:.0} ms: {aim}\n",
        n = settings.bans,
        gap = PROBE_GAP.as_micros(),
        poll = POLL.as_micros(),
        probes = bans.probes,
        lmax = local.last().copied().unwrap_or_default(),
        p50 = quantile(&propagation, 0.5),
        p99 = quantile(&propagation, 0.99),
        pmax = propagation.last().copied().unwrap_or_default(),
        c50 = quantile(&cli, 0.5),
        c99 = quantile(&cli, 0.99),
        cmax = cli.last().copied().unwrap_or_default(),
        r50 = f50 / l50.max(1e-9),
        r99 = f99 / l99.max(1e-9),
        d50 = f50 - l50,
        aim = verdict_text(f99 <= BAN_AIM_MS),
    );
    let n = on.latencies.len();
    let (on50, on99) = (quantile(&on.latencies, 0.5), quantile(&on.latencies, 0.99));
    let (off50, off99) = (
        quantile(&off.latencies, 0.5),
        quantile(&off.latencies, 0.99),
    );
    let (on_rate, off_rate) = (median(&on.rates), median(&off.rates));
    let _ = writeln!(
        out,
        "## Extra latency per SMTP session from the store\n\n\
         Two gateways on loopback (no XDP), the benchmarks' configuration \
         (tests/src/gateway_config.rs: every cheap check on, no greet pause, DNSBL off), one \
         `smtp-sink` behind both; only `[store]` differs. {n} sessions per gateway in {rounds} \
         rounds ({CLIENTS} client threads × {per} sessions back to back per gateway per round, \
         which gateway goes first alternating), each from a source address never seen before, so \
         the redis gateway reads Redis for every client's pass and queues its pass and outcome. \
         Every message was accepted and counted by smtp-sink; Redis held a pass record for each \
         of the redis gateway's clients.\n\n\
         | `[store] engine` | session p50 | session p99 | sessions/s (median of rounds) |\n\
         |---|---|---|---|\n\
         | off | {off50:.2} ms | {off99:.2} ms | {off_rate:.0} |\n\
         | redis | {on50:.2} ms | {on99:.2} ms | {on_rate:.0} |\n\n\
         - extra per session with Redis: {e50:+.2} ms at p50, {e99:+.2} ms at p99 (per-round \
         p99 extra: median {er:+.2} ms, {emin:+.2} to {emax:+.2} ms)\n\
         - sessions/s redis / off: {ratio:.2}× (rounds: {rmin:.2}–{rmax:.2}×)\n\
         - aim ≤ {SESSION_AIM_MS:.0} ms extra at p99: {aim}\n",
        rounds = settings.rounds,
        per = settings.sessions,
        e50 = on50 - off50,
        e99 = on99 - off99,
        er = median(&round_diffs(&on.p99s, &off.p99s)),
        emin = sorted(&round_diffs(&on.p99s, &off.p99s))
            .first()
            .copied()
            .unwrap_or_default(),
        emax = sorted(&round_diffs(&on.p99s, &off.p99s))
            .last()
            .copied()
            .unwrap_or_default(),
        ratio = on_rate / off_rate.max(1e-9),
        rmin = sorted(&round_ratios(&on.rates, &off.rates))
            .first()
            .copied()
            .unwrap_or_default(),
        rmax = sorted(&round_ratios(&on.rates, &off.rates))
            .last()
            .copied()
            .unwrap_or_default(),
        aim = verdict_text(on99 - off99 <= SESSION_AIM_MS),
    );
    out
}

fn round_diffs(on: &[f64], off: &[f64]) -> Vec<f64> {
    on.iter().zip(off).map(|(a, b)| a - b).collect()
}

fn round_ratios(on: &[f64], off: &[f64]) -> Vec<f64> {
    on.iter().zip(off).map(|(a, b)| a / b.max(1e-9)).collect()
}

fn figures(settings: &Settings, bans: &Bans, off: &Sessions, on: &Sessions) -> Figures {
    let quick = if settings.quick { " --quick" } else { "" };
    let ban_fig = Figure {
        id: "ban-to-drop".into(),
        title: "block add on A: time until a SYN from the source is dropped".into(),
        x_label: "where".into(),
        y_label: "ms (bar: median, whisker: min–max)".into(),
        categories: vec![
            "on A (local)".into(),
            "on B (fleet)".into(),
            "A's drop → B's drop".into(),
        ],
        series: vec![Series {
            name: "block add → first drop".into(),
            points: vec![
                Point::from_samples("on A (local)", &bans.local),
                Point::from_samples("on B (fleet)", &bans.fleet),
                Point::from_samples("A's drop → B's drop", &bans.propagation),
            ],
        }],
        note: format!(
            "{} bans on each path, alternated, timed from the start of the CLI on A; the aim \
             for B is p99 ≤ {BAN_AIM_MS:.0} ms.",
            settings.bans
        ),
        ..Figure::default()
    };
    let p99 = Figure {
        id: "session-p99".into(),
        title: "SMTP session latency per round, store off vs redis".into(),
        x_label: "quantile".into(),
        y_label: "ms (bar: median of rounds, whisker: min–max)".into(),
        categories: vec!["p50".into(), "p99".into()],
        series: vec![
            Series {
                name: "engine = off".into(),
                points: vec![
                    Point::from_samples("p50", &off.p50s),
                    Point::from_samples("p99", &off.p99s),
                ],
            },
            Series {
                name: "engine = redis".into(),
                points: vec![
                    Point::from_samples("p50", &on.p50s),
                    Point::from_samples("p99", &on.p99s),
                ],
            },
        ],
        note: format!(
            "Every session from a new client address: the redis gateway reads Redis once per \
             session. Aim: ≤ {SESSION_AIM_MS:.0} ms extra at p99."
        ),
        ..Figure::default()
    };
    let rate = Figure {
        id: "session-rate".into(),
        title: "Sessions per second, store redis / off (same round)".into(),
        x_label: "".into(),
        y_label: "ratio".into(),
        categories: vec!["redis / off".into()],
        series: vec![Series {
            name: "sessions/s ratio".into(),
            points: vec![Point::from_samples(
                "redis / off",
                &round_ratios(&on.rates, &off.rates),
            )],
        }],
        note: format!("{CLIENTS} client threads back to back, one smtp-sink behind both."),
        ..Figure::default()
    };
    Figures {
        bench: "fleet".into(),
        command: format!("cargo xtask bench fleet{quick}"),
        machine: machine(),
        figures: vec![ban_fig, p99, rate],
    }
}

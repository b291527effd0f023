//! `bench-drop`: what dropping a SYN flood from blocklisted sources costs the kernel — our XDP
//! program against what operators use instead — and how soon `smtp-gateway block add` bites.
//!
//! Topology (tests/tests/support/netns.rs): a sender namespace and a gateway namespace joined by a
//! veth pair. trafgen (netsniff-ng) in the sender sends `flood` TCP SYNs to 198.18.0.1:25 as fast
//! as one CPU lets it, from sources drawn at random in 198.19.0.0/16 (spoofed, inside the
//! benchmarking range), and exits; a flood is bounded in packets (`-n`) and in time (killed by PID
//! at its deadline). Every method blocks 198.19.0.0/16 with one rule or entry, the way an operator
//! would write it:
//!
//! - sender only (baseline): the gateway's veth is down, so the sender's `veth_xmit` discards
//!   each frame: the cost of producing the flood with no receiver work at all;
//! - XDP native / XDP skb: our program attached through the library (`loader::attach`, as
//!   `smtp-gateway run` does), `smtp-gateway block add 198.19.0.0/16` (the LPM trie: the
//!   allowlist trie, the exact hash and the prefix trie are all looked up);
//! - iptables raw: `-t raw -A PREROUTING -s 198.19.0.0/16 -p tcp --dport 25 -j DROP`;
//! - nftables netdev ingress: `ip saddr 198.19.0.0/16 tcp dport 25 counter drop` at priority -500;
//! - userspace accept-then-close: a listener on port 25 that accepts and closes. With spoofed
//!   SYNs nothing completes, so this path never reaches the application: the kernel answers every
//!   SYN with a SYN-ACK (a request socket while the 128-entry queue has room, then SYN cookies,
//!   `net.ipv4.tcp_syncookies = 1`) and forgets it. The gateway namespace routes 198.19.0.0/16 to
//!   an ifb interface, so every SYN-ACK is built, routed and transmitted (the ifb driver frees
//!   it) without the sender having to absorb it; `rp_filter` is 0, so no SYN is refused for its
//!   source. This is the honest cost of a SYN the gateway does not drop; what a blocked *real*
//!   client costs in userspace (a full handshake, accept, close) is higher still and not measured.
//!
//! A second sender, xdp-live ([`live`]), delivers the same SYN as `xdp_frame`s instead of skbs:
//! in the sender namespace a four-instruction XDP program (`bpf_redirect(<sender veth>, 0)`,
//! loaded with a raw `bpf(2)`) is run by `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`
//! from a thread that joined that namespace; each frame leaves through the sender veth's
//! `ndo_xdp_xmit` into the gateway veth's ring and NAPI, where native XDP runs on it with no skb
//! (as on a NIC) and the other methods get an skb built around it. With trafgen's skbs, native
//! XDP on veth must copy each skb into a page first, which a NIC never does. veth accepts
//! redirected frames only when its peer (the gateway veth) has a native XDP program or GRO
//! (`veth_set_xdp_features`; without either, no frame is taken: tried on 6.18), so GRO is on
//! for the whole xdp-live series; the sender veth itself needs no program. Live frames repeat
//! one buffer: every frame comes from [`LIVE_SRC`] (same port, same sequence number), which
//! favours per-source caches alike for every method and turns the listener's work into matching
//! one pending request socket (SYN-ACK retransmissions are rate limited). Its sender-only
//! baseline is the flood with the gateway veth down: `veth_xdp_xmit` refuses every frame
//! (uncounted), so the count is the test run returning success. Every method runs in both
//! series, each against its own baseline, and the aims are judged per series.
//!
//! CPU: system + irq + softirq ticks of all CPUs (`/proc/stat`), read just before trafgen starts
//! and just after it exits, divided by the packets the method dropped. This VM has 2 CPUs shared
//! with other work, whose kernel time lands in that figure too; the machine's kernel time in the
//! 500 ms before each flood is reported as the background. The aims are therefore judged on the
//! flood's own kernel time: trafgen's system time (`RUSAGE_CHILDREN`; it includes the softirq work
//! the kernel does on its behalf, since veth delivers inside the sender's `dev_queue_xmit`) plus
//! every kernel thread's (softirq work deferred to ksoftirqd, threaded NAPI, kworkers, RCU), which
//! other tenants barely pollute. The
//! all-CPU figures and their verdicts are printed beside them. The kernel has no
//! `CONFIG_IRQ_TIME_ACCOUNTING`, so the split between system and softirq is tick-sampled; their
//! sum is what counts. "Net" figures subtract the same run's sender-only cost per packet.
//!
//! For xdp-live, the sender's time is the test-run thread's system time (`RUSAGE_THREAD`); the
//! receiver's NAPI runs in it when the batch re-enables bottom halves.
//!
//! Checks: trafgen reports sending exactly `flood` packets (xdp-live: the test run returns 0
//! and the sender veth's `tx_queue_0_xdp_xmit` rose by ≥ 90% of the frames; the methods are
//! judged on the frames it took); each method's own counter (XDP
//! verdicts, iptables/nft rule counters, TCP InSegs and OutSegs of the gateway namespace, the
//! sender veth's tx_dropped) rose by at least 99% of them; the XDP rows confirm the attach mode
//! (`ip -d link`: driver or generic); the listener accepted nothing. Any failure aborts the run.
//!
//! Block-add latency: XDP native with the rate limiter off; trafgen sends a steady stream of SYNs
//! from 198.19.1.1 (one per 200 µs); `smtp-gateway block add 198.19.1.1` is started and the pinned
//! verdict counters are polled every 100 µs until the first `dropped_exact`; then `block del` and
//! the stream must pass again before the next repeat. Resolution: about 0.3 ms.
//!
//! Output: Markdown on stdout, progress on stderr; `--quick` is a smoke run; `--figures PATH`
//! writes the figures (tests/src/figures.rs). Needs root, trafgen, iptables, nft. Namespaces
//! `sgw<pid>-bd-{gw,cl}`, pins `/sys/fs/bpf/sgw-bd-<pid>`, files `/tmp/sgw-bd-<pid>`; all removed
//! when the run ends, on error and panic too. Nothing leaves the namespaces: their only routes are
//! the veth's 198.18.0.0/24 and the ifb interface.

#[path = "../../tests/support/netns.rs"]
mod netns;

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use netns::{ChildGuard, Listener, Topology, in_netns, nsenter, wait_until};
use smtp_gateway::dataplane::{
    Dataplane,
    config::{AttachMode, DataplaneConfig},
    loader,
};
use smtp_gateway_tests::{
    BenchArgs, TempDir,
    figures::{Figure, Figures, Point, Series},
    machine, thousands,
};

/// The sender's own address on the veth (the flood's sources are spoofed).
const SENDER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Source prefix of the flood: every method blocks exactly this.
const FLOOD_NET: &str = "198.19.0.0/16";
/// The latency stream's single source (inside [`FLOOD_NET`], but only ever blocked exactly).
const STREAM_SRC: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
/// Gap between two SYNs of the latency stream.
const STREAM_GAP_US: u64 = 200;
/// Poll interval of the verdict counters while waiting for the first drop.
const POLL: Duration = Duration::from_micros(100);
/// The interface that swallows replies towards the flood's sources: an ifb device (this kernel
/// has no dummy driver) frees every packet that tc did not redirect to it, and needs no ARP.
const NULL_IF: &str = "sgwnull";
/// The one next hop of the replies (on-link through [`NULL_IF`]), so one neighbour entry serves
/// every spoofed source.
const NULL_HOP: &str = "198.18.99.1";
/// How long the machine's kernel CPU is sampled, flood-free, before each flood.
const BACKGROUND_WINDOW: Duration = Duration::from_millis(500);
/// Share of the flood a method's own counter must account for.
const MIN_ACCOUNTED: f64 = 0.99;
/// Share of the live frames the sender veth must take (its ring refuses some when the machine is
/// loaded; those reach no method and are left out of the per-packet figures).
const MIN_TAKEN: f64 = 0.9;
/// The one source of every xdp-live frame (live frames repeat one buffer), inside [`FLOOD_NET`].
const LIVE_SRC: Ipv4Addr = Ipv4Addr::new(198, 19, 23, 45);
/// Frames per batch of the live test run (the kernel's default, NAPI_POLL_WEIGHT; at most 256,
/// the veth ring's size).
const LIVE_BATCH: u32 = 64;

struct Settings {
    quick: bool,
    /// SYNs per flood (trafgen).
    flood: u64,
    /// Frames per flood (xdp-live: about 5 times as fast, so more of them for as many CPU ticks).
    live_flood: u64,
    /// Floods per method (round robin over the methods, so load changes hit them all alike).
    repeats: usize,
    /// `block add` latency measurements.
    latency_repeats: usize,
    figures: Option<PathBuf>,
}

impl Settings {
    fn from_args() -> Result<Option<Self>> {
        let Some(BenchArgs { quick, figures }) = BenchArgs::parse(
            "bench-drop",
            "SYN flood from blocklisted sources through a veth pair: CPU per dropped \
                         packet and drop rate for XDP native/skb, iptables raw, nftables ingress and \
                         a userspace listener, against the sender-only baseline; then the latency \
                         of `smtp-gateway block add`. Prints Markdown. Needs root.",
            "smoke run (smaller floods, fewer repeats)",
        )?
        else {
            return Ok(None);
        };
        Ok(Some(if quick {
            Self {
                quick,
                flood: 300_000,
                live_flood: 1_000_000,
                repeats: 2,
                latency_repeats: 5,
                figures,
            }
        } else {
            Self {
                quick,
                flood: 1_000_000,
                live_flood: 5_000_000,
                repeats: 5,
                latency_repeats: 21,
                figures,
            }
        }))
    }
}

/// How the flood reaches the gateway's veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    /// trafgen (AF_PACKET): skbs from the sender's stack, `veth_xmit` into the gateway.
    Trafgen,
    /// `BPF_PROG_TEST_RUN` live frames redirected into the sender veth: `xdp_frame`s, no skb
    /// (see [`live`]).
    XdpLive,
}

impl Sender {
    const ALL: [Sender; 2] = [Sender::Trafgen, Sender::XdpLive];

    fn name(self) -> &'static str {
        match self {
            Sender::Trafgen => "trafgen",
            Sender::XdpLive => "xdp-live",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    SenderOnly,
    XdpNative,
    XdpSkb,
    IptablesRaw,
    NftIngress,
    Userspace,
}

impl Method {
    const ALL: [Method; 6] = [
        Method::SenderOnly,
        Method::XdpNative,
        Method::XdpSkb,
        Method::IptablesRaw,
        Method::NftIngress,
        Method::Userspace,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::SenderOnly => "sender only (baseline)",
            Method::XdpNative => "XDP native (smtp-gateway)",
            Method::XdpSkb => "XDP skb/generic (smtp-gateway)",
            Method::IptablesRaw => "iptables raw PREROUTING DROP",
            Method::NftIngress => "nftables netdev ingress drop",
            Method::Userspace => "userspace listener (SYN-ACK, syncookies)",
        }
    }

    /// Short label for figures.
    fn label(self) -> &'static str {
        match self {
            Method::SenderOnly => "sender only",
            Method::XdpNative => "XDP native",
            Method::XdpSkb => "XDP skb",
            Method::IptablesRaw => "iptables raw",
            Method::NftIngress => "nft ingress",
            Method::Userspace => "userspace",
        }
    }

    /// What the method's own counter is.
    fn counter(self, sender: Sender) -> &'static str {
        match self {
            Method::SenderOnly if sender == Sender::XdpLive => {
                "test run completed (veth_xdp_xmit drops them uncounted)"
            }
            Method::SenderOnly => "sender veth tx_dropped",
            Method::XdpNative | Method::XdpSkb => "XDP verdict dropped_cidr",
            Method::IptablesRaw => "iptables rule packets",
            Method::NftIngress => "nft rule counter",
            Method::Userspace => "gateway Tcp InSegs (OutSegs: SYN-ACKs)",
        }
    }
}

/// Seconds of kernel time (system + irq + softirq) over all CPUs, from `/proc/stat`.
fn kernel_cpu_all() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().context("parsing /proc/stat"))
        .collect::<Result<_>>()?;
    ensure!(fields.len() >= 7, "short /proc/stat line {line:?}");
    // user nice system idle iowait irq softirq ...
    Ok((fields[2] + fields[5] + fields[6]) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// System time of every reaped child of this process, in seconds.
fn children_system_time() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return f64::NAN;
    }
    ru.ru_stime.tv_sec as f64 + ru.ru_stime.tv_usec as f64 / 1e6
}

/// System time (clock ticks) of every kernel thread (kthreadd and its children: ksoftirqd,
/// threaded NAPI, kworkers, RCU), by PID, with its name.
fn kthread_times() -> HashMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
            // After the parenthesised name: state, ppid, ... stime is the 13th field.
            let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            let ppid: u32 = rest.get(1)?.parse().ok()?;
            let stime: u64 = rest.get(12)?.parse().ok()?;
            (pid == 2 || ppid == 2).then_some((pid, (name, stime)))
        })
        .collect()
}

/// Kernel-thread system time between two [`kthread_times`] snapshots: the total in seconds and
/// the busiest threads (name, seconds).
fn kthread_delta(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
) -> (f64, Vec<(String, f64)>) {
    let mut busy: Vec<(String, f64)> = after
        .iter()
        .map(|(pid, (name, t))| {
            let t0 = before.get(pid).map_or(0, |(_, t0)| *t0);
            (name.clone(), t.saturating_sub(t0) as f64 / clock_ticks())
        })
        .filter(|(_, secs)| *secs > 0.0)
        .collect();
    busy.sort_by(|a, b| b.1.total_cmp(&a.1));
    (busy.iter().map(|(_, secs)| secs).sum::<f64>() + 0.0, busy)
}

/// Runs `command`; its stdout when it exits 0, an error with its output otherwise.
fn sh(command: &mut Command) -> Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the run's pins (links and maps) when dropped.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = loader::detach(&self.0)
        {
            eprintln!("warning: removing the pins in {}: {e:#}", self.0.display());
        }
    }
}

/// Where the flood's sources come from.
#[derive(Clone, Copy)]
enum Sources {
    /// Random in 198.19.0.0/16.
    Random,
    /// Always [`STREAM_SRC`].
    Stream,
}

struct Lab {
    topo: Topology,
    gw_mac: [u8; 6],
    /// The sender veth's ifindex (in the sender namespace).
    cl_ifindex: u32,
    /// The xdp-live sender's redirect program and its frame.
    redirect: std::os::fd::OwnedFd,
    live_frame: Vec<u8>,
    dir: TempDir,
    pin_dir: PathBuf,
    /// A configuration file naming only the pin directory, for the CLI.
    cli_config: PathBuf,
    gateway_bin: PathBuf,
    _pins: Pins,
}

/// What one flood measured.
struct Flood {
    wall: Duration,
    /// System + irq + softirq of all CPUs (seconds).
    cpu_all: f64,
    /// trafgen's system time + the kernel threads' (seconds).
    cpu_own: f64,
    /// Kernel CPU of the whole machine just before the flood, without it (CPUs busy in the
    /// kernel): how much of `cpu_all` other tenants may have added.
    background: f64,
}

/// One measurement of one method.
struct Sample {
    flood: Flood,
    dropped: u64,
    detail: String,
}

impl Lab {
    fn new() -> Result<Self> {
        let pid = std::process::id();
        let topo = Topology::new("bd", &[IpAddr::V4(SENDER)]);
        let link = sh(Command::new("ip")
            .args(["-j", "-n", &topo.gw_ns, "link", "show", "dev"])
            .arg(&topo.gw_if))?;
        let json: serde_json::Value = serde_json::from_str(&link).context("ip -j link show")?;
        let mac_text = json[0]["address"]
            .as_str()
            .context("no MAC address on the gateway veth")?;
        let gw_mac = parse_mac(mac_text)?;
        let link = sh(Command::new("ip")
            .args(["-j", "-n", &topo.cl_ns, "link", "show", "dev"])
            .arg(&topo.cl_if))?;
        let json: serde_json::Value = serde_json::from_str(&link).context("ip -j link show")?;
        let cl_mac = parse_mac(
            json[0]["address"]
                .as_str()
                .context("no MAC address on the sender veth")?,
        )?;
        let cl_ifindex = json[0]["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .context("no ifindex on the sender veth")?;
        live::install_interrupt_handler()?;
        let redirect = live::load_redirect(cl_ifindex)?;
        let live_frame = live::syn_frame(gw_mac, cl_mac, LIVE_SRC, Ipv4Addr::new(198, 18, 0, 1));

        // Replies to the flood's sources go to an ifb interface (built, routed, sent, freed);
        // no SYN is refused for its source.
        let gw = topo.gw_ns.clone();
        sh(Command::new("ip").args(["-n", &gw, "link", "add", NULL_IF, "type", "ifb"]))?;
        sh(Command::new("ip").args(["-n", &gw, "link", "set", NULL_IF, "up"]))?;
        sh(Command::new("ip").args([
            "-n", &gw, "route", "add", FLOOD_NET, "via", NULL_HOP, "dev", NULL_IF, "onlink",
        ]))?;
        sh(nsenter(&gw, "sysctl").args([
            "-q",
            "-w",
            "net.ipv4.conf.all.rp_filter=0",
            &format!("net.ipv4.conf.{}.rp_filter=0", topo.gw_if),
        ]))?;
        let cookies = sh(nsenter(&gw, "sysctl").args(["-n", "net.ipv4.tcp_syncookies"]))?;
        ensure!(
            cookies.trim() == "1",
            "net.ipv4.tcp_syncookies is {} in the gateway namespace (expected 1)",
            cookies.trim()
        );

        let dir = TempDir(PathBuf::from(format!("/tmp/sgw-bd-{pid}")));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-bd-{pid}"));
        let _ = loader::detach(&pin_dir);
        let cli_config = dir.0.join("gateway.toml");
        std::fs::write(
            &cli_config,
            format!("[dataplane]\npin_dir = \"{}\"\n", pin_dir.display()),
        )?;
        let gateway_bin = smtp_gateway_tests::gateway_binary()?;
        Ok(Lab {
            topo,
            gw_mac,
            cl_ifindex,
            redirect,
            live_frame,
            dir,
            pin_dir: pin_dir.clone(),
            cli_config,
            gateway_bin,
            _pins: Pins(pin_dir),
        })
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    ensure!(parts.len() == 6, "odd MAC address {text:?}");
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text}"))?;
    }
    Ok(mac)
}

/// Packets of verdict `name`, summed over CPUs.
fn verdict(dp: &Dataplane, name: &str) -> Result<u64> {
    Ok(dp
        .verdict_totals()?
        .iter()
        .find(|t| t.verdict == name)
        .map_or(0, |t| t.packets))
}

/// A counter of `/proc/net/snmp` or `/proc/net/netstat` (`file`) in namespace `ns`.
fn proc_net_counter(ns: &str, file: &str, group: &str, name: &str) -> Result<u64> {
    let text = sh(nsenter(ns, "cat").arg(format!("/proc/net/{file}")))?;
    let prefix = format!("{group}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    ensure!(lines.len() == 2, "no {group} lines in /proc/net/{file}");
    let names = lines[0].split_whitespace().skip(1);
    let values = lines[1].split_whitespace().skip(1);
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no {group} {name} in /proc/net/{file}"))
}

/// A trafgen we started, in its own process group (trafgen forks a worker, which a SIGKILL of the
/// parent alone would orphan): dropping it sends SIGINT to that group (the worker and the parent
/// stop), then SIGKILL to the group if the parent still runs after 5 s; the [`ChildGuard`] inside
/// reaps the process we started.
struct Trafgen(ChildGuard);

impl Trafgen {
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.child.try_wait()
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        let Ok(pgid) = libc::pid_t::try_from(self.0.child.id()) else {
            return;
        };
        if matches!(self.try_wait(), Ok(Some(_))) {
            // Exited on its own after its worker finished.
            return;
        }
        // SAFETY: signals the process group led by the child we started (not yet reaped).
        unsafe { libc::kill(-pgid, libc::SIGINT) };
        let stopped = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            matches!(self.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            // The leader is alive (not reaped), so the group is still ours.
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            eprintln!("warning: trafgen ({pgid}) ignored SIGINT; killed");
        }
    }
}

/// What [`Lab::arm`] set up that must live during the flood.
enum Armed {
    Nothing,
    Listener(Listener),
}

impl Lab {
    fn dataplane_config(&self, mode: AttachMode) -> DataplaneConfig {
        let mut cfg = DataplaneConfig {
            interfaces: vec![self.topo.gw_if.clone()],
            attach_mode: mode,
            pin_dir: self.pin_dir.clone(),
            ..DataplaneConfig::default()
        };
        // Only the blocklist decides: a source under the limit must pass, over it must drop for
        // being blocked, not for its rate.
        cfg.rate_limit.enabled = false;
        cfg
    }

    fn dataplane(&self) -> Result<Dataplane> {
        let cfg = DataplaneConfig {
            pin_dir: self.pin_dir.clone(),
            ..DataplaneConfig::default()
        };
        loader::open_existing(&cfg)?.context("no pinned maps")
    }

    /// `smtp-gateway -c <cli_config> <args>`.
    fn cli(&self, args: &[&str]) -> Result<String> {
        sh(Command::new(&self.gateway_bin)
            .arg("-c")
            .arg(&self.cli_config)
            .args(args)
            .env("NO_COLOR", "1"))
    }

    /// Attaches the program to the gateway veth in `mode` (from inside the gateway namespace, as
    /// the daemon does) and checks the kernel reports that mode.
    fn attach(&self, mode: AttachMode) -> Result<()> {
        let cfg = self.dataplane_config(mode);
        let inside = cfg.clone();
        in_netns(&self.topo.gw_ns, move || {
            loader::attach(&inside).map(drop).map_err(|e| e.to_string())
        })
        .map_err(|e| anyhow::anyhow!("attaching XDP ({mode:?}): {e}"))?;
        self.dataplane()?.apply_config(&cfg)?;
        let (_, got) = self
            .topo
            .gw_xdp()
            .context("no XDP program on the gateway veth after attach")?;
        // `ip -d link`: 1 = driver (native), 2 = generic (skb).
        let want = match mode {
            AttachMode::Driver => 1,
            AttachMode::Skb => 2,
        };
        ensure!(got == want, "XDP attached in mode {got}, expected {want}");
        Ok(())
    }

    fn detach(&self) -> Result<()> {
        loader::detach(&self.pin_dir)?;
        ensure!(
            wait_until(Duration::from_secs(5), Duration::from_millis(20), || self
                .topo
                .gw_xdp()
                .is_none()),
            "XDP still attached after detach"
        );
        Ok(())
    }

    fn link_up(&self, ns: &str, ifname: &str) -> Result<bool> {
        let out = sh(Command::new("ip").args(["-n", ns, "-o", "link", "show", ifname]))?;
        Ok(out.contains("LOWER_UP"))
    }

    fn arm(&self, method: Method) -> Result<Armed> {
        let gw = &self.topo.gw_ns;
        match method {
            Method::SenderOnly => {
                sh(Command::new("ip").args(["-n", gw, "link", "set", &self.topo.gw_if, "down"]))?;
            }
            Method::XdpNative | Method::XdpSkb => {
                let mode = if method == Method::XdpNative {
                    AttachMode::Driver
                } else {
                    AttachMode::Skb
                };
                self.attach(mode)?;
                self.cli(&["block", "add", FLOOD_NET, "--reason", "bench-drop"])?;
            }
            Method::IptablesRaw => {
                sh(nsenter(gw, "iptables").args([
                    "-w",
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-s",
                    FLOOD_NET,
                    "-p",
                    "tcp",
                    "--dport",
                    "25",
                    "-j",
                    "DROP",
                ]))?;
            }
            Method::NftIngress => {
                let rules = self.dir.0.join("ingress.nft");
                std::fs::write(
                    &rules,
                    format!(
                        "table netdev sgwbench {{\n  chain ingress {{\n    type filter hook \
                         ingress device \"{}\" priority -500; policy accept;\n    ip saddr \
                         {FLOOD_NET} tcp dport 25 counter drop\n  }}\n}}\n",
                        self.topo.gw_if
                    ),
                )?;
                sh(nsenter(gw, "nft").arg("-f").arg(&rules))?;
            }
            Method::Userspace => return Ok(Armed::Listener(Listener::start(gw, 25))),
        }
        Ok(Armed::Nothing)
    }

    fn disarm(&self, method: Method, armed: Armed) -> Result<()> {
        let gw = &self.topo.gw_ns;
        match method {
            Method::SenderOnly => {
                sh(Command::new("ip").args(["-n", gw, "link", "set", &self.topo.gw_if, "up"]))?;
                let up = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                    self.link_up(gw, &self.topo.gw_if).unwrap_or(false)
                        && self
                            .link_up(&self.topo.cl_ns, &self.topo.cl_if)
                            .unwrap_or(false)
                });
                ensure!(up, "the veth pair did not come back up within 10 s");
            }
            Method::XdpNative | Method::XdpSkb => self.detach()?,
            Method::IptablesRaw => {
                sh(nsenter(gw, "iptables").args(["-w", "-t", "raw", "-F", "PREROUTING"]))?;
            }
            Method::NftIngress => {
                sh(nsenter(gw, "nft").args(["delete", "table", "netdev", "sgwbench"]))?;
            }
            Method::Userspace => {}
        }
        if let Armed::Listener(listener) = armed {
            drop(listener);
        }
        Ok(())
    }

    /// The method's own count of the packets it dropped (or, for the listener, handled).
    fn counter(&self, method: Method) -> Result<u64> {
        let gw = &self.topo.gw_ns;
        match method {
            Method::SenderOnly => {
                let out = sh(Command::new("ip").args([
                    "-j",
                    "-s",
                    "-n",
                    &self.topo.cl_ns,
                    "link",
                    "show",
                    "dev",
                    &self.topo.cl_if,
                ]))?;
                let json: serde_json::Value = serde_json::from_str(&out)?;
                json[0]["stats64"]["tx"]["dropped"]
                    .as_u64()
                    .context("no tx dropped counter on the sender veth")
            }
            Method::XdpNative | Method::XdpSkb => verdict(&self.dataplane()?, "dropped_cidr"),
            Method::IptablesRaw => {
                let out = sh(nsenter(gw, "iptables").args([
                    "-w",
                    "-t",
                    "raw",
                    "-L",
                    "PREROUTING",
                    "-v",
                    "-x",
                    "-n",
                ]))?;
                out.lines()
                    .find(|l| l.contains("DROP"))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("no DROP rule counter in:\n{out}"))
            }
            Method::NftIngress => {
                let out = sh(nsenter(gw, "nft").args(["list", "table", "netdev", "sgwbench"]))?;
                out.split_once("packets ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("no rule counter in:\n{out}"))
            }
            Method::Userspace => proc_net_counter(gw, "snmp", "Tcp", "InSegs"),
        }
    }

    /// A trafgen config: TCP SYN to 198.18.0.1:25, random IP id, source port and sequence.
    fn trafgen_config(&self, sources: Sources) -> Result<PathBuf> {
        let dst = self
            .gw_mac
            .iter()
            .map(|b| format!("0x{b:02x}"))
            .collect::<Vec<_>>()
            .join(", ");
        let src = match sources {
            Sources::Random => "198, 19, drnd(2)".to_string(),
            Sources::Stream => {
                let [a, b, c, d] = STREAM_SRC.octets();
                format!("{a}, {b}, {c}, {d}")
            }
        };
        let text = format!(
            "{{\n  {dst}, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, c16(0x0800),\n  \
             0x45, 0x00, c16(40), drnd(2), c16(0x4000), 64, 6, csumip(14, 33),\n  \
             {src}, 198, 18, 0, 1,\n  \
             drnd(2), c16(25), drnd(4), c32(0), 0x50, 0x02, c16(512), csumtcp(14, 34), c16(0)\n}}\n"
        );
        let path = self.dir.0.join(match sources {
            Sources::Random => "flood.cfg",
            Sources::Stream => "stream.cfg",
        });
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts trafgen in the sender namespace: `count` packets, one CPU, `gap_us` between packets
    /// (none: full speed). It touches no sysctl (`--no-sock-mem`) and no IRQ affinity (`-Q`).
    fn spawn_trafgen(
        &self,
        sources: Sources,
        count: u64,
        gap_us: Option<u64>,
        log: &Path,
    ) -> Result<Trafgen> {
        let config = self.trafgen_config(sources)?;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = nsenter(&self.topo.cl_ns, "trafgen");
        cmd.arg("-o")
            .arg(&self.topo.cl_if)
            .arg("-i")
            .arg(&config)
            .args([
                "-n",
                &count.to_string(),
                "-P",
                "1",
                "--qdisc-path",
                "--no-sock-mem",
                "-Q",
                "-C",
                "-E",
                "1",
            ]);
        if let Some(gap) = gap_us {
            cmd.args(["-t", &format!("{gap}us")]);
        }
        // Its own process group: trafgen forks a worker, which must stop with it.
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting trafgen (apt-get install netsniff-ng)")?;
        Ok(Trafgen(ChildGuard::new(child, "trafgen")))
    }

    /// One flood of `count` SYNs at full speed from `sender`, with the CPU it cost.
    fn flood(&self, sender: Sender, count: u64) -> Result<Flood> {
        // Far above what the slowest method needs here (trafgen ~50k packets/s at worst, live
        // frames ~500k), still bounded.
        let per_second = match sender {
            Sender::Trafgen => 10_000,
            Sender::XdpLive => 100_000,
        };
        let deadline = Duration::from_secs(30).max(Duration::from_secs(count / per_second));
        let quiet_before = kernel_cpu_all()?;
        std::thread::sleep(BACKGROUND_WINDOW);
        let background = (kernel_cpu_all()? - quiet_before) / BACKGROUND_WINDOW.as_secs_f64();
        let kthreads_before = kthread_times();
        let all_before = kernel_cpu_all()?;
        let started = Instant::now();
        let (own_sender, check) = match sender {
            Sender::Trafgen => self.flood_trafgen(count, deadline)?,
            Sender::XdpLive => {
                let count32 = u32::try_from(count).context("flood too large for one test run")?;
                let sent = live::flood(
                    &self.topo.cl_ns,
                    &self.redirect,
                    &self.live_frame,
                    self.cl_ifindex,
                    count32,
                    LIVE_BATCH,
                    deadline,
                )?;
                (sent.system, Ok(()))
            }
        };
        let wall = started.elapsed();
        let all_after = kernel_cpu_all()?;
        let (kthreads, busiest) = kthread_delta(&kthreads_before, &kthread_times());
        let busiest: Vec<String> = busiest
            .iter()
            .take(3)
            .map(|(name, secs)| format!("{name} {:.0} ms", secs * 1e3))
            .collect();
        eprintln!(
            "    {} system {:.0} ms, kernel threads {:.0} ms ({})",
            sender.name(),
            own_sender * 1e3,
            kthreads * 1e3,
            busiest.join(", ")
        );
        check?;
        Ok(Flood {
            wall,
            cpu_all: all_after - all_before,
            cpu_own: own_sender + kthreads,
            background,
        })
    }

    /// Runs trafgen for `count` random-source SYNs; its system time, and whether it sent them all
    /// (checked after the CPU figures are read).
    fn flood_trafgen(&self, count: u64, deadline: Duration) -> Result<(f64, Result<()>)> {
        let log = self.dir.0.join("flood.log");
        let trafgen_before = children_system_time();
        let started = Instant::now();
        let mut child = self.spawn_trafgen(Sources::Random, count, None, &log)?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > deadline {
                drop(child);
                bail!("trafgen did not send {count} packets within {deadline:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let trafgen = children_system_time() - trafgen_before;
        let check = || -> Result<()> {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            ensure!(status.success(), "trafgen failed ({status}):\n{text}");
            let sent: u64 = text
                .lines()
                .find(|l| l.contains("packets outgoing"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("trafgen did not report what it sent:\n{text}"))?;
            ensure!(
                sent == count,
                "trafgen sent {sent} packets, {count} asked:\n{text}"
            );
            Ok(())
        };
        Ok((trafgen, check()))
    }

    /// The sender veth's `ndo_xdp_xmit` counters (`ethtool -S`): frames handed to the gateway
    /// veth's ring, and frames it refused.
    fn xdp_xmit(&self) -> Result<(u64, u64)> {
        let out = sh(nsenter(&self.topo.cl_ns, "ethtool")
            .arg("-S")
            .arg(&self.topo.cl_if))?;
        let stat = |name: &str| -> Result<u64> {
            out.lines()
                .filter_map(|l| l.trim().split_once(": "))
                .filter(|(k, _)| k.starts_with("tx_queue_") && k.ends_with(name))
                .map(|(_, v)| v.trim().parse::<u64>().context("ethtool -S value"))
                .sum()
        };
        Ok((stat("_xdp_xmit")?, stat("_xdp_xmit_errors")?))
    }

    /// GRO on the gateway veth: with it, veth runs NAPI for its peer's `ndo_xdp_xmit`
    /// (xdp_frames) even when no XDP program is attached; the xdp-live sender needs it for every
    /// method but native XDP.
    fn set_gro(&self, on: bool) -> Result<()> {
        sh(nsenter(&self.topo.gw_ns, "ethtool").args([
            "-K",
            &self.topo.gw_if,
            "gro",
            if on { "on" } else { "off" },
        ]))?;
        Ok(())
    }

    /// Arms `method`, floods, checks the method's counter, disarms.
    fn measure(&self, sender: Sender, method: Method, count: u64) -> Result<Sample> {
        let armed = self.arm(method)?;
        let gw = &self.topo.gw_ns;
        let before = self.counter(method)?;
        let tcp_before = if method == Method::Userspace {
            Some((
                proc_net_counter(gw, "snmp", "Tcp", "OutSegs")?,
                proc_net_counter(gw, "snmp", "Tcp", "PassiveOpens")?,
                proc_net_counter(gw, "netstat", "TcpExt", "SyncookiesSent")?,
            ))
        } else {
            None
        };
        let xmit_before = self.xdp_xmit()?;
        let flood = self.flood(sender, count)?;
        // Receive processing is synchronous with the sender on veth; a moment for stragglers.
        std::thread::sleep(Duration::from_millis(20));
        let (xmit, xmit_errors) = self.xdp_xmit()?;
        let (xmit, xmit_errors) = (xmit - xmit_before.0, xmit_errors - xmit_before.1);
        let mut dropped = self.counter(method)?.saturating_sub(before);
        let mut detail = String::new();
        // Packets that reached the gateway: all of trafgen's; the live frames the sender veth
        // took (under load its ring may refuse some, which never reach any method).
        let mut sent = count;
        if sender == Sender::XdpLive {
            if method == Method::SenderOnly {
                // The gateway veth is down: veth_xdp_xmit refuses every frame without counting
                // it. The test run returning 0 means it ran the program `count` times.
                ensure!(
                    xmit == 0,
                    "{xmit} live frames delivered with the gateway veth down"
                );
                dropped = count;
            } else {
                ensure!(
                    xmit as f64 >= MIN_TAKEN * count as f64,
                    "{}: the sender veth's ndo_xdp_xmit took {xmit} of {count} live frames \
                     ({xmit_errors} refused)",
                    method.name()
                );
                sent = xmit;
            }
            detail = format!("{} xdp_xmit, {} refused", thousands(xmit), xmit_errors);
        }
        if let Some((out0, opens0, cookies0)) = tcp_before {
            let replies = proc_net_counter(gw, "snmp", "Tcp", "OutSegs")? - out0;
            let opens = proc_net_counter(gw, "snmp", "Tcp", "PassiveOpens")? - opens0;
            let cookies = proc_net_counter(gw, "netstat", "TcpExt", "SyncookiesSent")? - cookies0;
            // Live frames are one SYN repeated: after the first, each matches the pending request
            // socket and its SYN-ACK retransmission is rate limited.
            ensure!(
                sender == Sender::XdpLive || replies as f64 >= MIN_ACCOUNTED * count as f64,
                "{}: {replies} segments sent for {count} SYNs (expected a SYN-ACK each)",
                method.name()
            );
            ensure!(opens == 0, "{}: {opens} connections opened", method.name());
            let tcp = format!(
                "{} SYN-ACKs, {:.0}% with SYN cookies, 0 connections",
                thousands(replies),
                100.0 * cookies as f64 / replies.max(1) as f64
            );
            detail = if detail.is_empty() {
                tcp
            } else {
                format!("{tcp}; {detail}")
            };
        }
        self.disarm(method, armed)?;
        ensure!(
            dropped as f64 >= MIN_ACCOUNTED * sent as f64 && dropped <= sent + sent / 100,
            "{}: its counter ({}) rose by {dropped} for {sent} packets sent",
            method.name(),
            method.counter(sender)
        );
        eprintln!(
            "  {:<42} {:>6.0} kpps  {:>6.0} ns/pkt all CPUs  {:>6.0} ns/pkt own",
            method.name(),
            dropped as f64 / flood.wall.as_secs_f64() / 1e3,
            flood.cpu_all * 1e9 / dropped as f64,
            flood.cpu_own * 1e9 / dropped as f64
        );
        Ok(Sample {
            flood,
            dropped,
            detail,
        })
    }

    /// Latency from starting `smtp-gateway block add` to the first SYN of a steady stream dropped
    /// by the program (XDP native), `repeats` times.
    fn block_add_latency(&self, repeats: usize) -> Result<Latency> {
        self.attach(AttachMode::Driver)?;
        let dp = self.dataplane()?;
        let bound = Duration::from_secs(20 + 2 * repeats as u64);
        let count = bound.as_micros() as u64 / STREAM_GAP_US;
        let log = self.dir.0.join("stream.log");
        let started = Instant::now();
        let mut stream = self.spawn_trafgen(Sources::Stream, count, Some(STREAM_GAP_US), &log)?;
        let passed = |dp: &Dataplane| verdict(dp, "passed").unwrap_or(0);
        let p0 = passed(&dp);
        ensure!(
            wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
                passed(&dp) > p0 + 10
            }),
            "the SYN stream never reached the program"
        );
        let target = STREAM_SRC.to_string();
        let mut latency = Latency::default();
        for _ in 0..repeats {
            ensure!(
                stream.try_wait()?.is_none(),
                "the SYN stream ended early: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            ensure!(
                started.elapsed() + Duration::from_secs(5) < bound,
                "out of time for the latency repeats"
            );
            let dropped_before = verdict(&dp, "dropped_exact")?;
            let t0 = Instant::now();
            let child = Command::new(&self.gateway_bin)
                .arg("-c")
                .arg(&self.cli_config)
                .args(["block", "add", &target, "--reason", "bench-drop"])
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting smtp-gateway block add")?;
            let mut cli = ChildGuard::new(child, "smtp-gateway block add");
            let (mut first, mut exited) = (None, None);
            while first.is_none() || exited.is_none() {
                ensure!(
                    t0.elapsed() < Duration::from_secs(10),
                    "no drop within 10 s of block add (exited: {exited:?})"
                );
                if exited.is_none()
                    && let Some(status) = cli.child.try_wait()?
                {
                    ensure!(status.success(), "smtp-gateway block add failed ({status})");
                    exited = Some(t0.elapsed());
                }
                if first.is_none() && verdict(&dp, "dropped_exact")? > dropped_before {
                    first = Some(t0.elapsed());
                }
                std::thread::sleep(POLL);
            }
            if let (Some(first), Some(exited)) = (first, exited) {
                latency.first_drop_ms.push(first.as_secs_f64() * 1e3);
                latency.cli_exit_ms.push(exited.as_secs_f64() * 1e3);
            }
            self.cli(&["block", "del", &target])?;
            let p = passed(&dp);
            ensure!(
                wait_until(Duration::from_secs(2), Duration::from_millis(1), || passed(
                    &dp
                ) > p),
                "the stream does not pass again after block del"
            );
            // Do not start in phase with the stream.
            std::thread::sleep(Duration::from_millis(
                20 + (t0.elapsed().as_micros() % 37) as u64,
            ));
        }
        drop(stream);
        drop(dp);
        self.detach()?;
        eprintln!(
            "  block add -> first drop: median {:.2} ms",
            median(&latency.first_drop_ms)
        );
        Ok(latency)
    }
}

#[derive(Default)]
struct Latency {
    first_drop_ms: Vec<f64>,
    cli_exit_ms: Vec<f64>,
}

fn median(samples: &[f64]) -> f64 {
    Point::from_samples("", samples).median
}

fn main() -> ExitCode {
    smtp_gateway_tests::bench_main(Settings::from_args(), run)
}

/// One sender's per-method results, in [`Method::ALL`] order.
struct ModeResults {
    sender: Sender,
    samples: Vec<(Method, Vec<Sample>)>,
}

/// Everything measured, in [`Sender::ALL`] order.
struct Results {
    modes: Vec<ModeResults>,
    latency: Latency,
}

impl ModeResults {
    fn of(&self, method: Method) -> &[Sample] {
        self.samples
            .iter()
            .find(|(m, _)| *m == method)
            .map_or(&[], |(_, s)| s.as_slice())
    }

    /// ns of kernel CPU (all CPUs) per packet, one value per flood.
    fn all_ns(&self, method: Method) -> Vec<f64> {
        self.of(method)
            .iter()
            .map(|s| s.flood.cpu_all * 1e9 / s.dropped as f64)
            .collect()
    }

    fn own_ns(&self, method: Method) -> Vec<f64> {
        self.of(method)
            .iter()
            .map(|s| s.flood.cpu_own * 1e9 / s.dropped as f64)
            .collect()
    }

    /// All-CPU ns per packet minus the sender-only median.
    fn net_ns(&self, method: Method) -> Vec<f64> {
        let base = median(&self.all_ns(Method::SenderOnly));
        self.all_ns(method).iter().map(|v| v - base).collect()
    }

    fn net_own_ns(&self, method: Method) -> Vec<f64> {
        let base = median(&self.own_ns(Method::SenderOnly));
        self.own_ns(method).iter().map(|v| v - base).collect()
    }

    fn rate_kpps(&self, method: Method) -> Vec<f64> {
        self.of(method)
            .iter()
            .map(|s| s.dropped as f64 / s.flood.wall.as_secs_f64() / 1e3)
            .collect()
    }
}

fn run(settings: Settings) -> Result<()> {
    // SAFETY: getuid has no preconditions.
    ensure!(
        unsafe { libc::getuid() } == 0,
        "bench-drop needs root (namespaces, XDP, bpffs)"
    );
    for tool in ["trafgen", "iptables", "nft", "nsenter", "ethtool"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing (cargo xtask setup installs it)"
        );
    }
    let lab = Lab::new()?;
    eprintln!(
        "flood: {} (trafgen) / {} (xdp-live) SYNs x {} repeats x {} methods x {} senders",
        settings.flood,
        settings.live_flood,
        settings.repeats,
        Method::ALL.len(),
        Sender::ALL.len()
    );
    let mut modes = Vec::new();
    for sender in Sender::ALL {
        let mut samples: Vec<(Method, Vec<Sample>)> =
            Method::ALL.iter().map(|m| (*m, Vec::new())).collect();
        if sender == Sender::XdpLive {
            lab.set_gro(true)?;
        }
        for repeat in 0..settings.repeats {
            eprintln!(
                "{}: repeat {}/{}",
                sender.name(),
                repeat + 1,
                settings.repeats
            );
            let count = match sender {
                Sender::Trafgen => settings.flood,
                Sender::XdpLive => settings.live_flood,
            };
            for (method, list) in &mut samples {
                list.push(lab.measure(sender, *method, count)?);
            }
        }
        if sender == Sender::XdpLive {
            lab.set_gro(false)?;
        }
        modes.push(ModeResults { sender, samples });
    }
    eprintln!(
        "block add latency ({} repeats)...",
        settings.latency_repeats
    );
    let latency = lab.block_add_latency(settings.latency_repeats)?;
    let results = Results { modes, latency };
    print!("{}", report(&settings, &results));
    if let Some(path) = &settings.figures {
        figures(&settings, &results)
            .write(path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    drop(lab);
    Ok(())
}

/// `0.25` as "1/4.0 of it", `1.6` as "1.6× it".
fn proportion(ratio: f64) -> String {
    if ratio >= 1.0 || ratio <= 0.0 {
        format!("{ratio:.1}× it")
    } else {
        format!("1/{:.1} of it", 1.0 / ratio)
    }
}

fn spread(samples: &[f64], digits: usize) -> String {
    let p = Point::from_samples("", samples);
    format!("{:.digits$}–{:.digits$}", p.min, p.max)
}

fn report(settings: &Settings, r: &Results) -> String {
    let mut out = String::new();
    let args: Vec<String> = std::env::args().collect();
    out.push_str(&smtp_gateway_tests::report_title(
        "bench-drop",
        settings.quick,
    ));
    let _ = writeln!(out, "- command: `{}`", args.join(" "));
    let _ = writeln!(
        out,
        "- load average when the report was written (1, 5, 15 min): {}",
        smtp_gateway_tests::loadavg()
    );
    let _ = writeln!(
        out,
        "- flood: TCP SYNs (54-byte IPv4 frames to 198.18.0.1:25) on one CPU at full speed through \
         a veth pair, from two senders, each with its own sender-only baseline: {} per run from \
         trafgen, {} from xdp-live (faster, so more frames for as many CPU ticks); {} runs per \
         method and sender, round robin over the methods; median and min–max",
        thousands(settings.flood),
        thousands(settings.live_flood),
        settings.repeats
    );
    let _ = writeln!(
        out,
        "- sender **trafgen**: AF_PACKET, sources random in {FLOOD_NET}; the frames enter the \
         gateway veth as skbs (`veth_xmit`), so native XDP there must first copy each into a page"
    );
    let _ = writeln!(
        out,
        "- sender **xdp-live**: an XDP program `bpf_redirect(<sender veth>, 0)` driven by \
         BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (batches of {LIVE_BATCH}) from a thread \
         in the sender namespace; frames leave through the sender veth's ndo_xdp_xmit and reach \
         the gateway veth as xdp_frames, with no skb: native XDP runs on them as on a NIC's \
         buffers; without an XDP program veth builds an skb around the frame for the stack. The \
         gateway veth has GRO on during this sender's runs (veth only accepts redirected frames \
         when its peer has an XDP program or GRO). Live frames repeat one buffer: **every frame \
         has the same source, {LIVE_SRC}:40000** (which favours per-source caches equally for \
         every method), and the userspace listener sees one SYN retransmitted: after the first, \
         each matches the pending request socket and its SYN-ACK retransmission is rate limited, \
         so that row is a cheaper path than a real flood's. Sent count: the sender veth's \
         tx_queue_0_xdp_xmit (≥ 90% of the frames, or the run aborts; each method must account for 99% of the frames it took); sender only: the gateway \
         veth is down and veth_xdp_xmit refuses every frame (uncounted; the test run completing \
         is the count)"
    );
    let _ = writeln!(
        out,
        "- every method blocks {FLOOD_NET} with one rule/entry; XDP: `smtp-gateway block add \
         {FLOOD_NET}` (prefix trie, after the allowlist trie and the exact hash miss); the \
         userspace listener answers each SYN (SYN-ACK, request socket then SYN cookies) and never \
         sees a connection; replies go to an ifb interface"
    );
    let _ = writeln!(
        out,
        "- CPU: system + irq + softirq of all CPUs from /proc/stat around each flood, per packet the \
         method dropped: it includes the other tenants of this shared VM (see the background \
         below), so the verdicts use the flood's own kernel time: trafgen's system time + the \
         kernel threads' (ksoftirqd, NAPI threads, kworkers, RCU: RUSAGE_CHILDREN, \
         /proc/PID/stat; for xdp-live, the test-run thread's system time, RUSAGE_THREAD), which \
         includes the receiver's softirq work because veth delivers inside the sender's transmit \
         (or hands it to a kernel thread), and which other tenants barely pollute. \"Net of sender\" subtracts the same \
         run's sender-only median (the cost of producing the flood, with the receiver's veth \
         down). Tick-sampled (no IRQ_TIME_ACCOUNTING): only the system + softirq sum counts"
    );
    let background: Vec<f64> = r
        .modes
        .iter()
        .flat_map(|m| &m.samples)
        .flat_map(|(_, s)| s.iter().map(|s| s.flood.background))
        .collect();
    let _ = writeln!(
        out,
        "- background: in the {} ms before each flood, the machine's kernel time without it was \
         {:.2} CPUs (median; {} over all floods): other tenants' share of the all-CPU figures\n",
        BACKGROUND_WINDOW.as_millis(),
        median(&background),
        spread(&background, 2)
    );
    for mode in &r.modes {
        mode_report(&mut out, mode);
    }
    let _ = writeln!(
        out,
        "\nveth is not a NIC: for frames the kernel stack sent (trafgen), native XDP on veth first \
         copies the skb into a page-pool page (a packet socket's skb head is never a page \
         fragment, `veth_convert_skb_to_xdp_buff`) and hands it over through the veth's NAPI \
         ring, while the skb paths (generic XDP, tc/nft ingress, iptables, TCP) take the sender's \
         skb as it is; on a NIC, native XDP runs on the DMA buffer before any skb exists. The \
         xdp-live sender removes that copy (the frames arrive as xdp_frames) and makes the skb \
         paths pay for building an skb, as on a NIC; it still runs through veth's ring and NAPI, \
         so these figures remain relative, no estimate of NIC performance."
    );
    latency_report(&mut out, &r.latency);
    out
}

/// One sender's table and aims.
fn mode_report(out: &mut String, r: &ModeResults) {
    let sender = r.sender;
    let _ = writeln!(out, "\n## Sender: {}\n", sender.name());
    let _ = writeln!(
        out,
        "| Method | Counted by | Drop rate kpps (median) | min–max | Flood's own CPU ns/pkt | \
         min–max | × sender only | Net of sender | All CPUs ns/pkt (raw) | min–max | Net of sender |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let base = median(&r.own_ns(Method::SenderOnly)).max(1.0);
    for method in Method::ALL {
        let (own, all) = (r.own_ns(method), r.all_ns(method));
        let net = |v: Vec<f64>| {
            if method == Method::SenderOnly {
                "–".to_string()
            } else {
                format!("{:.0}", median(&v))
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {:.0} | {} | {:.2} | {} | {:.0} | {} | {} |",
            method.name(),
            method.counter(sender),
            median(&r.rate_kpps(method)),
            spread(&r.rate_kpps(method), 0),
            median(&own),
            spread(&own, 0),
            median(&own) / base,
            net(r.net_own_ns(method)),
            median(&all),
            spread(&all, 0),
            net(r.net_ns(method)),
        );
    }
    if let Some(s) = r.of(Method::Userspace).last() {
        let _ = writeln!(out, "\nUserspace listener, last run: {}.", s.detail);
    }
    if sender == Sender::XdpLive
        && let Some(s) = r.of(Method::XdpNative).last()
    {
        let _ = writeln!(out, "XDP native, last run: {}.", s.detail);
    }

    let net = |m| median(&r.net_ns(m));
    let own = |m| median(&r.net_own_ns(m));
    let (xdp, ipt, user) = (Method::XdpNative, Method::IptablesRaw, Method::Userspace);
    let _ = writeln!(out, "\n### Aims ({})\n", sender.name());
    let _ = writeln!(
        out,
        "Two measures of the receiver's kernel CPU per packet, both net of the sender-only cost: \
         the flood's own time misses softirq work the kernel happens to run while another task is \
         current (charged to that task), so it is a lower bound; all CPUs includes the other \
         tenants' kernel time (background above), so it is an upper bound. An aim is met when it \
         holds on both.\n"
    );
    for (other, factor) in [(ipt, 5.0), (user, 50.0)] {
        let ratio = net(xdp) / net(other);
        let ratio_own = own(xdp) / own(other);
        let met_own = own(xdp) > 0.0 && ratio_own <= 1.0 / factor;
        let met_all = net(xdp) > 0.0 && ratio <= 1.0 / factor;
        let verdict = match (met_own, met_all) {
            (true, true) => "**met**",
            (false, false) => "**missed**",
            _ => "**undecided** (the two measures disagree)",
        };
        let _ = writeln!(
            out,
            "- {}: XDP native ≤ 1/{factor:.0} of {}'s CPU per packet: {verdict}. Flood's own: {:.0} \
             vs {:.0} ns ({}); all CPUs: {:.0} vs {:.0} ns ({}).",
            sender.name(),
            other.label(),
            own(xdp),
            own(other),
            proportion(ratio_own),
            net(xdp),
            net(other),
            proportion(ratio),
        );
    }
    // The nft ratio, for the record (no aim).
    let _ = writeln!(
        out,
        "- {}: XDP native vs nft ingress (no aim): flood's own {}; all CPUs {}.",
        sender.name(),
        proportion(own(xdp) / own(Method::NftIngress)),
        proportion(net(xdp) / net(Method::NftIngress)),
    );
}

fn latency_report(out: &mut String, l: &Latency) {
    let _ = writeln!(out, "\n## block add → first drop\n");
    let _ = writeln!(
        out,
        "XDP native, rate limiter off, a steady stream of SYNs from {STREAM_SRC} (one per \
         {STREAM_GAP_US} µs); timed from starting `smtp-gateway block add {STREAM_SRC}` to the \
         first `dropped_exact` seen in the pinned counters (polled every {} µs), {} repeats, the \
         entry deleted (and the stream seen passing) between repeats.\n",
        POLL.as_micros(),
        l.first_drop_ms.len()
    );
    let _ = writeln!(out, "| Interval | Median | min–max |\n|---|--:|--:|");
    let _ = writeln!(
        out,
        "| start of `block add` → first SYN dropped | {:.2} ms | {} ms |",
        median(&l.first_drop_ms),
        spread(&l.first_drop_ms, 2)
    );
    let _ = writeln!(
        out,
        "| start of `block add` → the CLI exited | {:.2} ms | {} ms |",
        median(&l.cli_exit_ms),
        spread(&l.cli_exit_ms, 2)
    );
}

/// One sender's CPU and rate figures; the trafgen ids are the ones this bench always had.
fn mode_figures(settings: &Settings, r: &ModeResults) -> [Figure; 2] {
    let suffix = match r.sender {
        Sender::Trafgen => String::new(),
        Sender::XdpLive => "-xdp-live".to_string(),
    };
    let (what, sources) = match r.sender {
        Sender::Trafgen => ("trafgen", format!("from random sources in {FLOOD_NET}")),
        Sender::XdpLive => (
            "xdp-live",
            format!("as XDP live frames (no skb), all from {LIVE_SRC}"),
        ),
    };
    let categories: Vec<String> = Method::ALL.iter().map(|m| m.label().to_string()).collect();
    let series = |name: &str, values: &dyn Fn(Method) -> Vec<f64>, skip_base: bool| Series {
        name: name.to_string(),
        points: Method::ALL
            .iter()
            .filter(|m| !(skip_base && **m == Method::SenderOnly))
            .map(|m| Point::from_samples(m.label(), &values(*m)))
            .collect(),
    };
    let cpu = Figure {
        id: format!("cpu-per-packet{suffix}"),
        title: format!("Kernel CPU per dropped SYN (sender: {what})"),
        x_label: "method".into(),
        y_label: "ns of CPU per packet".into(),
        log_y: false,
        categories: categories.clone(),
        series: vec![
            series(
                "flood's own (sender + kernel threads)",
                &|m| r.own_ns(m),
                false,
            ),
            series(
                "flood's own, net of sender only",
                &|m| r.net_own_ns(m),
                true,
            ),
            series("all CPUs, raw (/proc/stat)", &|m| r.all_ns(m), false),
        ],
        note: format!(
            "{} SYNs per flood {sources} over a veth pair, {} runs each; sender only = the flood \
             with the receiver's veth down. Aims (on the flood's own time, net of the sender): \
             XDP native ≤ 1/5 of iptables raw, ≤ 1/50 of userspace.",
            thousands(match r.sender {
                Sender::Trafgen => settings.flood,
                Sender::XdpLive => settings.live_flood,
            }),
            settings.repeats
        ),
    };
    let rate = Figure {
        id: format!("drop-rate{suffix}"),
        title: format!("Packets dropped per second (one sending CPU, {what})"),
        x_label: "method".into(),
        y_label: "thousand packets/s".into(),
        log_y: false,
        categories,
        series: vec![series("drop rate", &|m| r.rate_kpps(m), false)],
        note: "The sender and the receiving softirq share one CPU (veth): the rate falls as the \
               receiver's cost per packet rises."
            .into(),
    };
    [cpu, rate]
}

fn figures(settings: &Settings, r: &Results) -> Figures {
    let mut all: Vec<Figure> = r
        .modes
        .iter()
        .flat_map(|m| mode_figures(settings, m))
        .collect();
    let l = &r.latency;
    let latency = Figure {
        id: "block-add-latency".into(),
        title: "smtp-gateway block add: time to the first dropped SYN".into(),
        x_label: "interval from starting the CLI".into(),
        y_label: "ms".into(),
        log_y: false,
        categories: vec!["first SYN dropped".into(), "CLI exited".into()],
        series: vec![Series {
            name: "XDP native".into(),
            points: vec![
                Point::from_samples("first SYN dropped", &l.first_drop_ms),
                Point::from_samples("CLI exited", &l.cli_exit_ms),
            ],
        }],
        note: format!(
            "A SYN every {STREAM_GAP_US} µs from one source; counters polled every {} µs.",
            POLL.as_micros()
        ),
    };
    Figures {
        bench: "drop".into(),
        command: "cargo xtask bench drop".into(),
        machine: machine(),
        figures: {
            all.push(latency);
            all
        },
    }
}

/// The "xdp-live" sender: frames that reach the gateway's veth as `xdp_frame`s, with no skb, the
/// nearest thing to a NIC's receive path this machine has.
///
/// A four-instruction XDP program, loaded with a raw `bpf(BPF_PROG_LOAD)` (no eBPF crate), returns
/// `bpf_redirect(<sender veth ifindex>, 0)`; `BPF_PROG_TEST_RUN` with
/// `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux ≥ 5.18) runs it `repeat` times on one frame, from a thread
/// inside the sender namespace (the context's `ingress_ifindex` and the redirect's ifindex are
/// looked up in the caller's namespace). Every redirected frame leaves through the sender veth's
/// `ndo_xdp_xmit` into the gateway veth's ring, whose NAPI then runs the gateway's native XDP
/// program on it, or, without one, builds an skb around it for the stack. Live frames repeat one
/// buffer: every frame has the same source address and port.
mod live {
    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
        time::{Duration, Instant},
    };

    use anyhow::{Context, Result, bail};

    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    /// `enum bpf_func_id`: `BPF_FUNC_redirect`.
    const BPF_FUNC_REDIRECT: i32 = 23;
    const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

    /// `struct bpf_insn`: opcode, dst_reg (low nibble) and src_reg (high nibble), offset, imm.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Insn {
        code: u8,
        regs: u8,
        off: i16,
        imm: i32,
    }

    /// The head of `union bpf_attr` for `BPF_PROG_LOAD` (the kernel zero-fills the rest).
    #[repr(C)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }

    /// `union bpf_attr` for `BPF_PROG_TEST_RUN` (the `test` struct).
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }

    /// `struct xdp_md` as the test run's context.
    #[repr(C)]
    #[derive(Default)]
    struct XdpMd {
        data: u32,
        data_end: u32,
        data_meta: u32,
        ingress_ifindex: u32,
        rx_queue_index: u32,
        egress_ifindex: u32,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
        // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size we pass.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                std::mem::size_of::<T>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// Loads `r0 = bpf_redirect(ifindex, 0); return r0` as an XDP program. On failure the error
    /// carries errno and the verifier's log.
    pub fn load_redirect(ifindex: u32) -> Result<OwnedFd> {
        let ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
        let insn = |code, dst: u8, imm| Insn {
            code,
            regs: dst,
            off: 0,
            imm,
        };
        let prog = [
            insn(0xb7, 1, ifindex),           // BPF_ALU64|BPF_MOV|BPF_K: r1 = ifindex
            insn(0xb7, 2, 0),                 // r2 = 0 (flags)
            insn(0x85, 0, BPF_FUNC_REDIRECT), // BPF_JMP|BPF_CALL: r0 = bpf_redirect(r1, r2)
            insn(0x95, 0, 0),                 // BPF_JMP|BPF_EXIT: return r0
        ];
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..12].copy_from_slice(b"sgw_bd_redir");
        let mut log = vec![0u8; 64 * 1024];
        let mut load = |log_level: u32| {
            let mut attr = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_XDP,
                insn_cnt: prog.len() as u32,
                insns: prog.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level,
                log_size: if log_level > 0 { log.len() as u32 } else { 0 },
                log_buf: if log_level > 0 {
                    log.as_mut_ptr() as u64
                } else {
                    0
                },
                kern_version: 0,
                prog_flags: 0,
                prog_name: name,
                prog_ifindex: 0,
                expected_attach_type: 0,
            };
            bpf(BPF_PROG_LOAD, &mut attr)
        };
        let fd = match load(0) {
            Ok(fd) => fd,
            Err(first) => {
                // Again with the verifier's log, to say why.
                let again = load(1);
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                bail!(
                    "BPF_PROG_LOAD of the redirect program: {first} (with the log: {again:?}); \
                     verifier log:\n{}",
                    String::from_utf8_lossy(&log[..end])
                );
            }
        };
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Runs `prog` on `frame` `repeat` times as live frames arriving on `ifindex` (queue 0), in
    /// batches of `batch`. Must run on a thread inside the namespace that holds `ifindex`.
    fn test_run_live(
        prog: &OwnedFd,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
        batch: u32,
    ) -> std::io::Result<()> {
        let mut ctx = XdpMd {
            data_end: frame.len() as u32,
            ingress_ifindex: ifindex,
            ..XdpMd::default()
        };
        let mut attr = TestRunAttr {
            prog_fd: prog.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
            ctx_in: &mut ctx as *mut XdpMd as u64,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: batch,
            ..TestRunAttr::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).map(drop)
    }

    extern "C" fn ignore(_: libc::c_int) {}

    /// Installs a do-nothing SIGUSR1 handler: the signal then only interrupts a test run (it
    /// returns EINTR) on the thread it is sent to.
    pub fn install_interrupt_handler() -> Result<()> {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) != 0 {
                bail!("sigaction: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// What one live flood cost its sending thread.
    #[derive(Debug)]
    pub struct Sent {
        /// The thread's system time (seconds): the program runs, the redirects, and the
        /// receiver's softirq work that ran on this thread.
        pub system: f64,
    }

    /// Sends `count` live frames from a new thread inside namespace `ns`; interrupts it
    /// (SIGUSR1: EINTR) when it is not done by `deadline`.
    pub fn flood(
        ns: &str,
        prog: &OwnedFd,
        frame: &[u8],
        ifindex: u32,
        count: u32,
        batch: u32,
        deadline: Duration,
    ) -> Result<Sent> {
        let path = format!("/run/netns/{ns}");
        let netns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let prog = prog.try_clone()?;
        let frame = frame.to_vec();
        let thread = std::thread::spawn(move || -> Result<Sent, String> {
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            let stime = || {
                // SAFETY: getrusage fills the struct we pass.
                let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
                // SAFETY: a valid pointer to an rusage.
                unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
                ru.ru_stime.tv_sec as f64 + ru.ru_stime.tv_usec as f64 / 1e6
            };
            let before = stime();
            test_run_live(&prog, &frame, ifindex, count, batch)
                .map_err(|e| format!("BPF_PROG_TEST_RUN (live frames, {count}): {e}"))?;
            Ok(Sent {
                system: stime() - before,
            })
        });
        let started = Instant::now();
        let mut interrupted = false;
        while !thread.is_finished() {
            if !interrupted && started.elapsed() > deadline {
                use std::os::unix::thread::JoinHandleExt;
                // SAFETY: the thread is alive (not joined); SIGUSR1 has a do-nothing handler.
                unsafe { libc::pthread_kill(thread.as_pthread_t(), libc::SIGUSR1) };
                interrupted = true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let sent = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the live-frame thread panicked"))?
            .map_err(|e| anyhow::anyhow!(e));
        if interrupted {
            bail!("{count} live frames not sent within {deadline:?}; interrupted ({sent:?})");
        }
        sent
    }

    /// One Ethernet + IPv4 + TCP SYN frame (54 bytes) with valid checksums, from port 40000.
    pub fn syn_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        smtp_gateway_tests::syn_frame::Syn {
            dst_mac,
            src_mac,
            src: SocketAddrV4::new(src, 40000),
            dst: SocketAddrV4::new(dst, 25),
            seq: 0x0102_0304,
            window: 512,
        }
        .frame()
        .to_vec()
    }
}

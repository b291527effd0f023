//! `cargo xtask demo`: the gateway in a network-namespace lab with a real Postfix backend, and a
//! short scripted scenario a postmaster can watch (good mail over IPv4 and IPv6, a relay attempt,
//! a pregreeting bot and its auto-ban, a runtime block, a SYN flood), each step saying what should
//! happen and what did. A step whose outcome differs is marked ✘ and makes the demo exit 1.
//! `--fleet` runs the two-gateway variant instead (`demo/fleet.rs`: one Redis, a ban on A
//! dropped by B, a bot counted across both).
//!
//! ```text
//!  client   198.18.1.10, 2001:db8:1::10  eth0 ═══ gw-client  ─┐  gw: 198.18.0.1, 2001:db8::1 (lo)
//!  spammer  198.18.2.20                  eth0 ═══ gw-spammer ─┤  smtp-gateway: XDP on gw-*,
//!  flooder  198.18.3.30                  eth0 ═══ gw-flooder ─┘  SMTP proxy on port 25
//!                                                                 └─ XCLIENT ─▶ Postfix 127.0.0.1:10025
//! ```
//!
//! The gateway's FCrDNS and SPF checks ask the test kit's DNS responder, bound on the gateway
//! namespace's loopback: the good client's name is verified (Postfix's Received header carries
//! it, and the gateway's Authentication-Results says `iprev=pass`, `spf=pass`); the bots have no
//! name. No other resolver is ever asked.
//!
//! Namespaces `sgwdemo-<pid>-{gw,client,spammer,flooder}`, pins under `/sys/fs/bpf/sgwdemo-<pid>`,
//! files under `/tmp/sgwdemo-<pid>`. Only connected routes and one host route towards the gateway
//! exist, all in 198.18.0.0/15 and 2001:db8::/32: nothing leaves the namespaces. Every command
//! runs with a time limit; the lab's guard stops the daemon and Postfix by PID, detaches the XDP
//! program and deletes every namespace, pin and file when the demo ends, fails, or gets Ctrl-C.
//! xtask drives the built `smtp-gateway` binary; it never links the crate.

use std::{
    cell::Cell,
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use smtp_gateway_test_kit::{
    Account, DnsResponder, InstanceDir, MainCf, MasterCf, Records, gateway_binary, last_lines,
    strip_ansi,
};

use crate::{cargo, render, run_cmd, setup};

mod fleet;

/// The gateway's service addresses (on its loopback, routed to by every host).
const GW_V4: &str = "198.18.0.1";
const GW_V6: &str = "2001:db8::1";
const CLIENT_V4: &str = "198.18.1.10";
const CLIENT_V6: &str = "2001:db8:1::10";
const SPAMMER_V4: &str = "198.18.2.20";
const FLOODER_V4: &str = "198.18.3.30";
/// The Postfix backend, inside the gateway namespace.
const BACKEND: &str = "127.0.0.1:10025";
/// Name of the gateway in its banner.
const GW_NAME: &str = "gw.demo.example";
/// The legitimate client's HELO name and sender.
const CLIENT_HELO: &str = "mx.goodcorp.example";
const CLIENT_FROM: &str = "alice@goodcorp.example";
const RECIPIENT: &str = "postmaster@example.org";
/// Rate limit of the demo (SYNs per second per source, burst).
const SYN_RATE: f64 = 2.0;
const SYN_BURST: u32 = 5;

/// One host around the gateway, linked to it by a veth pair (`gw_if` in the gateway namespace,
/// `eth0` in the host's).
struct Host {
    name: &'static str,
    gw_if: &'static str,
    /// (gateway side, host side) of the link's IPv4 /24.
    v4: (&'static str, &'static str),
    /// (gateway side, host side) of the link's IPv6 /64, if any.
    v6: Option<(&'static str, &'static str)>,
}

const HOSTS: [Host; 3] = [
    Host {
        name: "client",
        gw_if: "gw-client",
        v4: ("198.18.1.1", CLIENT_V4),
        v6: Some(("2001:db8:1::1", CLIENT_V6)),
    },
    Host {
        name: "spammer",
        gw_if: "gw-spammer",
        v4: ("198.18.2.1", SPAMMER_V4),
        v6: None,
    },
    Host {
        name: "flooder",
        gw_if: "gw-flooder",
        v4: ("198.18.3.1", FLOODER_V4),
        v6: None,
    },
];

/// Every namespace of the lab (suffixes of the prefix).
const NAMESPACES: [&str; 4] = ["gw", "client", "spammer", "flooder"];

// ---------------------------------------------------------------------------------------------
// Signals: Ctrl-C sets a flag; every wait checks it, so the guard still cleans up.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

extern "C" fn on_signal(_signum: i32) {
    // An atomic store is async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn kill(pid: i32, sig: i32) -> i32;
    fn setns(fd: i32, nstype: i32) -> i32;
}

/// `setns(2)`'s flag for a network namespace.
const CLONE_NEWNET: i32 = 0x4000_0000;

/// The demo's name server: the test kit's DNS responder, bound on the gateway namespace's
/// loopback (from a thread that joined it), with the names of the good client's hosts: its
/// PTR and A/AAAA records (FCrDNS passes) and its domain's SPF record. The spammer and the
/// flooder have no name, as bots rarely do.
fn start_dns(netns: &Path) -> anyhow::Result<DnsResponder> {
    use std::os::fd::AsRawFd;
    let ns = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<DnsResponder> {
                // SAFETY: a valid namespace descriptor; only this thread moves.
                if unsafe { setns(ns.as_raw_fd(), CLONE_NEWNET) } != 0 {
                    bail!(
                        "setns {}: {}",
                        netns.display(),
                        std::io::Error::last_os_error()
                    );
                }
                let v4: std::net::Ipv4Addr = CLIENT_V4.parse()?;
                let v6: std::net::Ipv6Addr = CLIENT_V6.parse()?;
                let domain = CLIENT_FROM.rsplit('@').next().unwrap_or(CLIENT_FROM);
                let spf = format!("v=spf1 ip4:{v4} ip6:{v6} -all");
                let records = Records::new()
                    .ptr(v4.into(), &[CLIENT_HELO])
                    .ptr(v6.into(), &[CLIENT_HELO])
                    .a(CLIENT_HELO, &[v4])
                    .aaaa(CLIENT_HELO, &[v6])
                    .txt(domain, &[spf.as_str()]);
                Ok(DnsResponder::start(records)?)
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn install_signal_handlers() {
    for signum in [SIGINT, SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal(signum, on_signal) };
    }
}

const INTERRUPTED_MSG: &str = "interrupted (Ctrl-C)";

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sends `sig` to the process group led by `pid` (every command runs in its own group).
fn kill_group(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: signalling a process group we created (our child is its leader, not yet reaped).
        unsafe { kill(-pid, sig) };
    }
}

/// Stops a daemon we started: SIGTERM (its XDP program stays attached, pinned: `detach`, which
/// refuses while a daemon answers, removes it after this), then
/// SIGKILL to its process group if it has not exited 10 s later. Its exit status, or `None`
/// when it had to be killed.
fn stop_daemon(mut daemon: Child) -> Option<ExitStatus> {
    if let Ok(None) = daemon.try_wait()
        && let Ok(pid) = i32::try_from(daemon.id())
    {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { kill(pid, SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match daemon.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    if status.is_none() {
        kill_group(daemon.id(), SIGKILL);
        let _ = daemon.wait();
    }
    status
}

// ---------------------------------------------------------------------------------------------

/// `fleet`: the two-gateway variant (`demo/fleet.rs`) instead.
pub fn run(root: &Path, fleet: bool) -> anyhow::Result<()> {
    // swaks needs IO::Socket::INET6 for the IPv6 session.
    setup::apt(&["libio-socket-inet6-perl"])?;
    run_cmd(
        cargo()
            .current_dir(root)
            .args(["build", "--locked", "-p", "smtp-gateway"]),
    )?;
    let target = crate::target_dir(root);
    let bin = gateway_binary(&target.join("debug"))?;
    install_signal_handlers();
    if fleet {
        return fleet::run(bin);
    }

    let started = Instant::now();
    let mut story = Story::default();
    let mut lab = Lab::new(bin)?;
    println!("\n━━━ smtp-gateway demo ━━━ (Ctrl-C stops it and cleans up)");
    let result = scenario(&mut lab, &mut story);
    conclude("demo", started, &story, result, lab, |lab| {
        lab.show_logs();
        lab.keep_logs = true;
    })
}

/// Ends a demo whose scenario returned `result`: on an interruption or a failure, shows what
/// `on_failure` shows (the logs, kept), cleans up (drops `lab`), lists the expectations not met
/// and exits non-zero (everything is printed and cleaned up: no second error report); else
/// says how many expectations were met.
fn conclude<L>(
    name: &str,
    started: Instant,
    story: &Story,
    result: anyhow::Result<()>,
    mut lab: L,
    on_failure: impl FnOnce(&mut L),
) -> anyhow::Result<()> {
    let failed = result.is_err() || !story.failures.is_empty();
    if interrupted() {
        println!("\n✘ Interrupted: cleaning up.");
        drop(lab);
        std::process::exit(130);
    }
    if let Err(e) = &result {
        println!("\n✘ the demo stopped: {e:#}");
    }
    if failed {
        on_failure(&mut lab);
    }
    drop(lab);
    let secs = started.elapsed().as_secs_f64();
    if failed {
        if !story.failures.is_empty() {
            println!("\n✘ {} expectation(s) not met:", story.failures.len());
            for f in &story.failures {
                println!("  - {f}");
            }
        }
        println!("\n✘ The {name} failed ({secs:.1} s).");
        std::process::exit(1);
    }
    println!("\n✔ All {} expectations met in {secs:.1} s.", story.checks);
    Ok(())
}

/// The narrative: numbered steps, what is expected, what happened.
#[derive(Default)]
struct Story {
    step: u32,
    checks: u32,
    failures: Vec<String>,
}

impl Story {
    fn step(&mut self, title: &str) {
        self.step += 1;
        println!("\n{:>2}. {title}", self.step);
    }

    fn expect(&self, what: &str) {
        println!("    expected: {what}");
    }

    /// Indented detail lines (output of a command, a header).
    fn show(&self, text: &str) {
        for line in text.lines() {
            println!("        {}", line.trim_end_matches('\r'));
        }
    }

    fn check(&mut self, ok: bool, what: impl AsRef<str>) -> bool {
        let what = what.as_ref();
        self.checks += 1;
        println!("    {} {what}", if ok { "✔" } else { "✘" });
        if !ok {
            self.failures.push(format!("step {}: {what}", self.step));
        }
        ok
    }
}

/// A finished (or killed) command.
struct Ran {
    /// `None`: killed at its time limit (or on Ctrl-C).
    status: Option<ExitStatus>,
    /// stdout and stderr, interleaved.
    out: String,
    elapsed: Duration,
}

impl Ran {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn describe_status(&self) -> String {
        match self.status {
            None => format!("no result within {:.1} s", self.elapsed.as_secs_f64()),
            Some(s) => match s.code() {
                Some(code) => format!("exit {code}"),
                None => s.to_string(),
            },
        }
    }
}

/// A command started in the background, its output going to a file.
struct Running {
    child: Child,
    out: PathBuf,
    started: Instant,
}

/// The lab. Dropping it stops and removes everything it made.
struct Lab {
    bin: PathBuf,
    prefix: String,
    dir: PathBuf,
    logs: PathBuf,
    pin_dir: PathBuf,
    config: PathBuf,
    postfix: PathBuf,
    daemon: Option<Child>,
    /// The name server of the gateway's FCrDNS and SPF checks (in the gateway namespace).
    dns: Option<DnsResponder>,
    keep_logs: bool,
    runs: Cell<u32>,
}

impl Lab {
    fn new(bin: PathBuf) -> anyhow::Result<Self> {
        let prefix = format!("sgwdemo-{}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/{prefix}"));
        let mut lab = Lab {
            bin,
            logs: dir.join("logs"),
            config: dir.join("gateway.toml"),
            postfix: dir.join("postfix"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
            dir,
            prefix,
            daemon: None,
            dns: None,
            keep_logs: false,
            runs: Cell::new(0),
        };
        // Leftovers of an earlier demo that had the same PID and was killed before cleaning up.
        lab.cleanup();
        fs::create_dir_all(&lab.logs)
            .with_context(|| format!("creating {}", lab.logs.display()))?;
        Ok(lab)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// `nsenter --net=/run/netns/<prefix>-<host> <program>` (not `ip netns exec`, which remounts
    /// /sys and would hide bpffs pins).
    fn in_ns(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns(host)))
            .arg(program);
        cmd
    }

    /// `smtp-gateway -c <demo config> <args>` in the gateway namespace.
    fn gateway_cli(&self, args: &[&str]) -> Command {
        let mut cmd = self.in_ns("gw", &self.bin);
        cmd.arg("-c")
            .arg(&self.config)
            .args(args)
            .env("NO_COLOR", "1");
        cmd
    }

    /// Starts `cmd` in its own process group, output to a numbered file under logs/.
    fn spawn(&self, cmd: &mut Command) -> anyhow::Result<Running> {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let out = self.logs.join(format!("cmd-{n:03}.txt"));
        let file = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let what = render(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Running {
            child,
            out,
            started: Instant::now(),
        })
    }

    /// Waits for `running` at most `limit` (killing its process group then); Ctrl-C kills it
    /// too and, when `interruptible`, fails.
    fn finish(
        &self,
        mut running: Running,
        limit: Duration,
        interruptible: bool,
    ) -> anyhow::Result<Ran> {
        let status = loop {
            if let Some(status) = running.child.try_wait()? {
                break Some(status);
            }
            if running.started.elapsed() >= limit || (interruptible && interrupted()) {
                kill_group(running.child.id(), SIGKILL);
                let _ = running.child.wait();
                break None;
            }
            sleep(Duration::from_millis(10));
        };
        let elapsed = running.started.elapsed();
        if interruptible && interrupted() {
            bail!(INTERRUPTED_MSG);
        }
        let out = String::from_utf8_lossy(&fs::read(&running.out).unwrap_or_default()).into_owned();
        Ok(Ran {
            status,
            out,
            elapsed,
        })
    }

    /// Runs `cmd` to completion, at most `limit`.
    fn run(&self, cmd: &mut Command, limit: Duration) -> anyhow::Result<Ran> {
        let running = self.spawn(cmd)?;
        self.finish(running, limit, true)
    }

    /// Runs `cmd`, failing with its output unless it exits 0; returns the output.
    fn must(&self, cmd: &mut Command, limit: Duration) -> anyhow::Result<String> {
        let what = render(cmd);
        let ran = self.run(cmd, limit)?;
        if !ran.success() {
            bail!("{what}: {}\n{}", ran.describe_status(), ran.out.trim_end());
        }
        Ok(ran.out)
    }

    /// Runs `cmd` during cleanup: never interrupted, never failing.
    fn run_quietly(&self, cmd: &mut Command, limit: Duration) -> Option<Ran> {
        let running = self.spawn(cmd).ok()?;
        self.finish(running, limit, false).ok()
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        self.must(Command::new("ip").args(args), Duration::from_secs(10))
            .map(drop)
    }

    // -----------------------------------------------------------------------------------------
    // Building the lab.

    fn build_topology(&self) -> anyhow::Result<()> {
        for host in NAMESPACES {
            self.ip(&["netns", "add", &self.ns(host)])?;
            self.ip(&["-n", &self.ns(host), "link", "set", "lo", "up"])?;
        }
        let gw = self.ns("gw");
        for h in &HOSTS {
            let ns = self.ns(h.name);
            // Created directly inside the namespaces: the names never exist in the host namespace,
            // so concurrent demos (and tests) never collide.
            self.ip(&[
                "link", "add", h.gw_if, "netns", &gw, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            for (host, ifname) in [("gw", h.gw_if), (h.name, "eth0")] {
                // No duplicate address detection (addresses usable at once), no router
                // solicitations: the lab stays quiet.
                self.must(
                    self.in_ns(host, "sysctl").args([
                        "-q",
                        "-w",
                        &format!("net.ipv6.conf.{ifname}.accept_dad=0"),
                        &format!("net.ipv6.conf.{ifname}.router_solicitations=0"),
                    ]),
                    Duration::from_secs(10),
                )?;
            }
            self.ip(&[
                "-n",
                &gw,
                "addr",
                "add",
                &format!("{}/24", h.v4.0),
                "dev",
                h.gw_if,
            ])?;
            self.ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", h.v4.1),
                "dev",
                "eth0",
            ])?;
            if let Some((gw6, host6)) = h.v6 {
                self.ip(&[
                    "-n",
                    &gw,
                    "addr",
                    "add",
                    &format!("{gw6}/64"),
                    "dev",
                    h.gw_if,
                    "nodad",
                ])?;
                self.ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{host6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
            }
            self.ip(&["-n", &gw, "link", "set", h.gw_if, "up"])?;
            self.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            // The only route besides the connected ones: the gateway's service address.
            self.ip(&[
                "-n",
                &ns,
                "route",
                "add",
                &format!("{GW_V4}/32"),
                "via",
                h.v4.0,
            ])?;
            if let Some((gw6, _)) = h.v6 {
                self.ip(&[
                    "-n",
                    &ns,
                    "-6",
                    "route",
                    "add",
                    &format!("{GW_V6}/128"),
                    "via",
                    gw6,
                ])?;
            }
        }
        self.ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{GW_V4}/32"),
            "dev",
            "lo",
        ])?;
        self.ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{GW_V6}/128"),
            "dev",
            "lo",
        ])?;
        // Both ends of every link up, no tentative address left.
        let deadline = Instant::now() + Duration::from_secs(10);
        for h in &HOSTS {
            for (ns, ifname) in [(gw.clone(), h.gw_if), (self.ns(h.name), "eth0")] {
                loop {
                    let link = self.must(
                        Command::new("ip").args(["-n", &ns, "-o", "link", "show", ifname]),
                        Duration::from_secs(5),
                    )?;
                    let tentative = self.must(
                        Command::new("ip").args([
                            "-n",
                            &ns,
                            "-o",
                            "addr",
                            "show",
                            "dev",
                            ifname,
                            "tentative",
                        ]),
                        Duration::from_secs(5),
                    )?;
                    if link.contains("LOWER_UP") && tentative.trim().is_empty() {
                        break;
                    }
                    if Instant::now() >= deadline || interrupted() {
                        bail!("{ns}/{ifname} did not come up within 10 s");
                    }
                    sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }

    fn maildir(&self) -> PathBuf {
        self.postfix.join("mail/sink")
    }

    fn start_postfix(&self) -> anyhow::Result<()> {
        let instance = InstanceDir::create(&self.postfix)?;
        let nobody = Account::nobody()?;
        let mail = instance.create_owned_dir("mail", nobody)?;
        let main_cf = MainCf::new(&instance, "backend.demo.example")
            .maillog(&self.logs.join("postfix.log"))
            .set("inet_protocols", "all")
            .set("virtual_mailbox_domains", "example.org")
            .set("virtual_mailbox_base", mail.display())
            .set("virtual_mailbox_maps", "static:sink/")
            .set("virtual_uid_maps", format!("static:{}", nobody.uid))
            .set("virtual_gid_maps", format!("static:{}", nobody.gid))
            .set("default_transport", "discard")
            .set("relay_transport", "discard")
            .set("smtpd_authorized_xclient_hosts", "127.0.0.1")
            .set("mynetworks", "127.0.0.0/8")
            .set(
                "smtpd_relay_restrictions",
                "permit_mynetworks, reject_unauth_destination",
            );
        let master_cf = MasterCf::new()
            .service(format!("{BACKEND} inet n - n - - smtpd"))
            .service("virtual   unix  -       n       n       -       -       virtual");
        instance.write_config(&main_cf, &master_cf)?;
        let d = instance.path();
        let start = self.run(
            self.in_ns("gw", "postfix").arg("-c").arg(d).arg("start"),
            Duration::from_secs(60),
        )?;
        if !start.success() {
            bail!(
                "postfix -c {} start: {}\n{}\n{}",
                d.display(),
                start.describe_status(),
                start.out.trim_end(),
                tail(&self.logs.join("postfix.log"), 20)
            );
        }
        // Ready when it greets.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let probe = self.run(
                self.in_ns("gw", "bash")
                    .args(["-c", "exec 3<>/dev/tcp/127.0.0.1/10025 && head -c 3 <&3"]),
                Duration::from_secs(3),
            )?;
            if probe.out.starts_with("220") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "Postfix does not greet on {BACKEND} within 15 s:\n{}",
                    tail(&self.logs.join("postfix.log"), 20)
                );
            }
            sleep(Duration::from_millis(200));
        }
    }

    fn write_config(&mut self) -> anyhow::Result<()> {
        let dns = start_dns(Path::new(&format!("/run/netns/{}", self.ns("gw"))))?;
        let nameserver = dns.addr();
        self.dns = Some(dns);
        let interfaces = HOSTS
            .iter()
            .map(|h| format!("\"{}\"", h.gw_if))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "# smtp-gateway demo configuration (written by `cargo xtask demo`).\n\
             [dataplane]\n\
             interfaces = [{interfaces}]\n\
             attach_mode = \"driver\"\n\
             protected_ports = [25]\n\
             pin_dir = \"{pins}\"\n\
             sweep_interval = \"1s\"\n\
             \n\
             [dataplane.rate_limit]\n\
             enabled = true\n\
             syn_per_second = {SYN_RATE:?}\n\
             burst = {SYN_BURST}\n\
             \n\
             [smtp]\n\
             hostname = \"{GW_NAME}\"\n\
             greet_pause = \"1s\"\n\
             listeners = [{{ address = \"{GW_V4}:25\" }}, {{ address = \"[{GW_V6}]:25\" }}]\n\
             \n\
             [backend]\n\
             servers = [{{ address = \"{BACKEND}\", identity = \"xclient\" }}]\n\
             connect_timeout = \"5s\"\n\
             reply_timeout = \"30s\"\n\
             \n\
             [relay]\n\
             accepted_domains = [\"example.org\"]\n\
             \n\
             [dns]\n\
             nameservers = [\"{nameserver}\"]\n\
             \n\
             [fcrdns]\n\
             enabled = true\n\
             \n\
             [spf]\n\
             enabled = true\n\
             \n\
             [store]\n\
             path = \"{state}\"\n",
            pins = self.pin_dir.display(),
            state = self.dir.join("state.redb").display(),
        );
        fs::write(&self.config, config)?;
        Ok(())
    }

    fn daemon_log(&self) -> PathBuf {
        self.logs.join("gateway.log")
    }

    /// Starts `smtp-gateway run` in the gateway namespace; returns once it logged "ready".
    fn start_gateway(&mut self) -> anyhow::Result<()> {
        let mut slot = self.daemon.take();
        let (config, log) = (self.config.clone(), self.daemon_log());
        let started =
            self.start_daemon(&mut slot, "gw", &config, &log, "smtp-gateway run", |_| true);
        self.daemon = slot;
        started
    }

    /// Starts `smtp-gateway -c <config> run` in namespace `host`, its output in `log`, into
    /// `slot` (so that the clean-up stops it whatever happens next); returns once it logged
    /// "ready" and `also` holds for the log's text, within 20 s. `what` names it in errors.
    fn start_daemon(
        &self,
        slot: &mut Option<Child>,
        host: &str,
        config: &Path,
        log: &Path,
        what: &str,
        also: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let out = fs::File::create(log)?;
        let child = self
            .in_ns(host, &self.bin)
            .arg("-c")
            .arg(config)
            .arg("run")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let child = slot.insert(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("{what} exited during start-up ({status})");
            }
            let text = strip_ansi(&fs::read_to_string(log).unwrap_or_default());
            let ready = text
                .lines()
                .any(|l| l.trim_end().ends_with(": ready") || l.contains(": ready "));
            if ready && also(&text) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{what} not ready within 20 s");
            }
            if interrupted() {
                bail!(INTERRUPTED_MSG);
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The XDP program on `ifname` in the gateway namespace: (mode, program id).
    fn xdp_on(&self, ifname: &str) -> anyhow::Result<Option<(String, String)>> {
        let out = self.must(
            Command::new("ip").args(["-d", "-n", &self.ns("gw"), "link", "show", "dev", ifname]),
            Duration::from_secs(5),
        )?;
        let first = out.lines().next().unwrap_or_default();
        let mode = if first.contains(" xdpgeneric ") {
            "skb (generic)"
        } else if first.contains(" xdp ") {
            "driver (native)"
        } else if first.contains(" xdpoffload ") {
            "offload"
        } else {
            return Ok(None);
        };
        let id = out
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        Ok(Some((mode.to_string(), id)))
    }

    fn stats(&self) -> anyhow::Result<String> {
        self.must(
            &mut self.gateway_cli(&["stats", "--top", "10"]),
            Duration::from_secs(15),
        )
    }

    /// One swaks session from `host` to the gateway.
    fn swaks(&self, host: &str, server: &str, args: &[&str]) -> anyhow::Result<Ran> {
        self.run(
            self.in_ns(host, "swaks")
                .args(["--server", server, "--timeout", "15"])
                .args(args),
            Duration::from_secs(40),
        )
    }

    /// The messages in the backend's Maildir, oldest first.
    fn messages(&self) -> Vec<Message> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| fs::read_dir(self.maildir().join(sub)).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                Some((modified, e.path()))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, path)| fs::read(&path).ok())
            .map(|bytes| Message::parse(&String::from_utf8_lossy(&bytes)))
            .collect()
    }

    /// Waits at most 15 s for the message with `subject` to reach the Maildir.
    fn wait_message(&self, subject: &str) -> anyhow::Result<Option<Message>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(m) = self
                .messages()
                .into_iter()
                .find(|m| m.header("Subject") == Some(subject))
            {
                return Ok(Some(m));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            if interrupted() {
                bail!(INTERRUPTED_MSG);
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Good mail from the client over `server`, checked end to end: 250 from the gateway, the
    /// message in the Maildir with a Received header naming `client_addr`.
    fn good_mail(
        &self,
        story: &mut Story,
        server: &str,
        client_addr: &str,
        subject: &str,
    ) -> anyhow::Result<()> {
        let body = format!(
            "Hello postmaster,\n\nthis message went through the smtp-gateway demo ({subject}).\n"
        );
        let ran = self.swaks(
            "client",
            server,
            &[
                "--helo",
                CLIENT_HELO,
                "--from",
                CLIENT_FROM,
                "--to",
                RECIPIENT,
                "--pipeline",
                "--header",
                &format!("Subject: {subject}"),
                "--body",
                &body,
            ],
        )?;
        let last = reply_after(&ran.out, |l| l == "-> .").unwrap_or_else(|| "(none)".into());
        let ok = story.check(
            ran.success() && last.starts_with("250"),
            format!(
                "swaks: {}, final reply \"{last}\" ({:.1} s)",
                ran.describe_status(),
                ran.elapsed.as_secs_f64()
            ),
        );
        if !ok {
            story.show(&ran.out);
        }
        match self.wait_message(subject)? {
            None => {
                story.check(
                    false,
                    "the message did not reach the backend's Maildir in 15 s",
                );
            }
            Some(m) => {
                let received = m.header("Received").unwrap_or("(no Received header)");
                story.check(
                    received.contains(&format!("({CLIENT_HELO} ["))
                        && received.contains(&format!("{client_addr}]")),
                    format!(
                        "in the backend's Maildir; Postfix's Received header names \
                         {CLIENT_HELO} [{client_addr}] (the verified name and address came with \
                         XCLIENT):"
                    ),
                );
                story.show(&format!("Received: {received}"));
                let results = m
                    .header("Authentication-Results")
                    .unwrap_or("(no Authentication-Results header)");
                story.check(
                    results.contains("iprev=pass") && results.contains("spf=pass"),
                    "the gateway's Authentication-Results header: iprev=pass, spf=pass",
                );
                story.show(&format!("Authentication-Results: {results}"));
            }
        }
        Ok(())
    }

    fn show_logs(&self) {
        println!(
            "\n--- gateway daemon log ({}), last lines ---\n{}",
            self.daemon_log().display(),
            strip_ansi(&tail(&self.daemon_log(), 40))
        );
        let maillog = self.logs.join("postfix.log");
        // Without postfix-script's start-up warnings about file ownership in the private instance.
        let text = fs::read_to_string(&maillog).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("postfix-script"))
            .collect();
        println!(
            "--- Postfix log ({}), last lines ---\n{}",
            maillog.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }

    // -----------------------------------------------------------------------------------------
    // Cleanup: every step checks what exists, so it also clears leftovers and partial labs.

    /// Detaches the XDP program of the daemon configured by `config` (in namespace `host` while
    /// it exists, so the link is found), then removes `pin_dir`; whether the detach succeeded.
    fn detach_and_unpin(&self, host: &str, config: &Path, pin_dir: &Path) -> bool {
        let mut detached = false;
        if config.exists() {
            let mut detach = if Path::new(&format!("/run/netns/{}", self.ns(host))).exists() {
                self.in_ns(host, &self.bin)
            } else {
                Command::new(&self.bin)
            };
            detach.arg("-c").arg(config).arg("detach");
            detached = self
                .run_quietly(&mut detach, Duration::from_secs(20))
                .is_some_and(|r| r.success());
        }
        let _ = fs::remove_dir_all(pin_dir);
        detached
    }

    /// Deletes the namespaces of `hosts` that exist; how many.
    fn delete_namespaces(&self, hosts: &[&str]) -> usize {
        let mut deleted = 0;
        for host in hosts {
            let ns = self.ns(host);
            if Path::new(&format!("/run/netns/{ns}")).exists() {
                self.run_quietly(
                    Command::new("ip").args(["netns", "del", &ns]),
                    Duration::from_secs(10),
                );
                deleted += 1;
            }
        }
        deleted
    }

    fn cleanup(&mut self) -> Vec<String> {
        let mut done = Vec::new();
        if let Some(daemon) = self.daemon.take() {
            done.push(match stop_daemon(daemon) {
                Some(s) if s.success() => "gateway stopped (SIGTERM)".to_string(),
                Some(s) => format!("gateway stopped ({s})"),
                None => "gateway killed (no exit 10 s after SIGTERM)".to_string(),
            });
        }
        if self.pin_dir.exists() {
            if self.detach_and_unpin("gw", &self.config, &self.pin_dir) {
                done.push("XDP detached".to_string());
            }
            done.push(format!("pins removed ({})", self.pin_dir.display()));
        }
        let instance = InstanceDir::at(&self.postfix);
        if let Some(master) = instance.master_pid() {
            self.run_quietly(
                Command::new("postfix")
                    .arg("-c")
                    .arg(&self.postfix)
                    .arg("stop"),
                Duration::from_secs(20),
            );
            let still_running = || instance.master_pid() == Some(master);
            let deadline = Instant::now() + Duration::from_secs(10);
            while still_running() && Instant::now() < deadline {
                sleep(Duration::from_millis(50));
            }
            if still_running()
                && let Ok(pid) = i32::try_from(master)
            {
                // SAFETY: the master of our own instance (its pid file, process name checked).
                unsafe { kill(pid, SIGKILL) };
            }
            done.push("Postfix stopped".to_string());
        }
        let deleted = self.delete_namespaces(&NAMESPACES);
        if deleted > 0 {
            done.push(format!("{deleted} namespaces deleted"));
        }
        if self.dir.exists() {
            // Postfix's last children may still be closing files: retry briefly.
            for _ in 0..20 {
                let removed = if self.keep_logs {
                    fs::read_dir(&self.dir)
                        .map(|entries| {
                            entries
                                .filter_map(|e| e.ok())
                                .filter(|e| e.path() != self.logs)
                                .all(|e| {
                                    let p = e.path();
                                    if p.is_dir() {
                                        fs::remove_dir_all(&p).is_ok()
                                    } else {
                                        fs::remove_file(&p).is_ok()
                                    }
                                })
                        })
                        .unwrap_or(true)
                } else {
                    fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists()
                };
                if removed {
                    break;
                }
                sleep(Duration::from_millis(100));
            }
            if self.keep_logs {
                done.push(format!("logs kept in {}", self.logs.display()));
            } else {
                done.push(format!("{} removed", self.dir.display()));
            }
        }
        done
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let done = self.cleanup();
        if !done.is_empty() {
            println!("\nCleanup: {}.", done.join(", "));
        }
    }
}

/// One delivered message: its header fields, unfolded.
struct Message {
    headers: Vec<(String, String)>,
}

impl Message {
    fn parse(text: &str) -> Self {
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.to_string(), value.trim().to_string()));
            }
        }
        Message { headers }
    }

    /// The first (topmost) field `name`.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// In a swaks transcript, the server's reply (first line) to the first command line matching
/// `is_command` (`-> ...`, prefix trimmed).
fn reply_after(transcript: &str, is_command: impl Fn(&str) -> bool) -> Option<String> {
    let mut lines = transcript.lines().map(|l| l.trim());
    lines.find(|l| is_command(l))?;
    lines
        .find(|l| l.starts_with("<-") || l.starts_with("<**"))
        .map(|l| {
            l.trim_start_matches("<**")
                .trim_start_matches("<-")
                .trim()
                .to_string()
        })
}

/// The packets of verdict `name` in `smtp-gateway stats` output.
fn verdict(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        (fields.next() == Some(name))
            .then(|| fields.next()?.parse().ok())
            .flatten()
    })
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    last_lines(&fs::read_to_string(path).unwrap_or_default(), n)
}

// ---------------------------------------------------------------------------------------------
// The scenario.

fn scenario(lab: &mut Lab, story: &mut Story) -> anyhow::Result<()> {
    story.step("Building the lab: four network namespaces joined by veth pairs");
    lab.build_topology()?;
    println!(
        "      {:<8} {CLIENT_V4}, {CLIENT_V6}   eth0 ═══ gw-client  ─┐\n      \
         {:<8} {SPAMMER_V4}                   eth0 ═══ gw-spammer ─┤  gw {GW_V4}, {GW_V6}\n      \
         {:<8} {FLOODER_V4}                   eth0 ═══ gw-flooder ─┘\n      \
         namespaces {}-{{gw,client,spammer,flooder}}; no route outside 198.18.0.0/15 and 2001:db8::/32",
        "client", "spammer", "flooder", lab.prefix
    );
    story.check(true, "namespaces, links and addresses are up");

    story.step(&format!(
        "Starting the backend: a private Postfix instance in the gw namespace on {BACKEND}"
    ));
    story.expect(
        "it greets; it trusts XCLIENT from the gateway and delivers example.org to a Maildir",
    );
    lab.start_postfix()?;
    story.check(
        true,
        format!("Postfix answers 220 (config {})", lab.postfix.display()),
    );

    story.step("Starting the gateway: smtp-gateway run in the gw namespace");
    lab.write_config()?;
    println!(
        "      config {}, log {}\n      XDP on gw-client, gw-spammer, gw-flooder; port 25; SYN limit \
         {SYN_RATE}/s per source, burst {SYN_BURST}\n      SMTP proxy on {GW_V4}:25 and \
         [{GW_V6}]:25 (greet pause 1 s) -> Postfix {BACKEND} with XCLIENT",
        lab.config.display(),
        lab.daemon_log().display()
    );
    story.expect(
        "the daemon is ready and XDP is attached in driver mode to the three client-facing veths",
    );
    lab.start_gateway()?;
    for h in &HOSTS {
        match lab.xdp_on(h.gw_if)? {
            Some((mode, id)) => story.check(
                mode.starts_with("driver"),
                format!("{}: XDP program {id} attached, mode {mode}", h.gw_if),
            ),
            None => story.check(false, format!("{}: no XDP program attached", h.gw_if)),
        };
    }

    story.step(&format!(
        "Good mail over IPv4: client {CLIENT_V4} -> {GW_V4}:25, swaks --pipeline to {RECIPIENT}"
    ));
    story.expect(&format!(
        "250 after the message; delivered by Postfix with a Received header naming {CLIENT_V4}"
    ));
    lab.good_mail(
        story,
        &format!("{GW_V4}:25"),
        CLIENT_V4,
        "Demo 1: quarterly report (IPv4)",
    )?;

    story.step(&format!(
        "Good mail over IPv6: client {CLIENT_V6} -> [{GW_V6}]:25"
    ));
    story.expect(&format!(
        "250; delivered with a Received header naming IPv6:{CLIENT_V6}"
    ));
    lab.good_mail(
        story,
        &format!("[{GW_V6}]:25"),
        CLIENT_V6,
        "Demo 2: quarterly report (IPv6)",
    )?;

    story.step(&format!(
        "A relay attempt: spammer {SPAMMER_V4} asks for RCPT TO:<victim@elsewhere.test>"
    ));
    story.expect("550 5.7.1 (the gateway only accepts mail for example.org)");
    let relay = lab.swaks(
        "spammer",
        &format!("{GW_V4}:25"),
        &[
            "--helo",
            "mail.bulk-offers.test",
            "--from",
            "promo@bulk-offers.test",
            "--to",
            "victim@elsewhere.test",
            "--quit-after",
            "RCPT",
        ],
    )?;
    let reply = reply_after(&relay.out, |l| l.starts_with("-> RCPT TO:"))
        .unwrap_or_else(|| "(no reply)".into());
    if !story.check(
        reply.starts_with("550 5.7.1"),
        format!("RCPT TO:<victim@elsewhere.test> -> \"{reply}\""),
    ) {
        story.show(&relay.out);
    }

    story.step(&format!(
        "A pregreeting bot: spammer {SPAMMER_V4} sends \"EHLO bot\" right after connecting, \
         without waiting for the banner"
    ));
    story.expect("the gateway answers 521 and closes the connection (the backend never sees it)");
    let bot = lab.run(
        lab.in_ns("spammer", "bash").args([
            "-c",
            &format!("exec 3<>/dev/tcp/{GW_V4}/25 || exit 3; printf 'EHLO bot\\r\\n' >&3; cat <&3"),
        ]),
        Duration::from_secs(8),
    )?;
    let closed = bot.status.is_some();
    let got_521 = bot.out.lines().any(|l| l.starts_with("521"));
    story.check(
        closed && got_521,
        format!(
            "the bot got {} and the connection was {}",
            if got_521 { "521" } else { "no 521" },
            if closed {
                "closed by the gateway"
            } else {
                "still open after 8 s"
            }
        ),
    );
    story.show(
        &bot.out
            .lines()
            .map(|l| format!("bot received: {}", l.trim_end_matches('\r')))
            .collect::<Vec<_>>()
            .join("\n"),
    );

    // Since auto-ban, a pregreeter is put in the kernel blocklist by the gateway itself.
    let mut banned = None;
    for _ in 0..20 {
        let list = lab.must(
            &mut lab.gateway_cli(&["block", "list"]),
            Duration::from_secs(15),
        )?;
        banned = list
            .lines()
            .find(|l| l.split_whitespace().next() == Some(SPAMMER_V4))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
        if banned.is_some() {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    match banned {
        Some(row) => {
            story.check(
                true,
                "auto-ban: the gateway put the bot in the kernel blocklist by itself:",
            );
            story.show(&row);
        }
        None => println!("    · no auto-ban entry for {SPAMMER_V4} (auto-ban not active)"),
    }

    story.step(&format!(
        "The postmaster blocks the spammer for good, at run time: smtp-gateway block add \
         {SPAMMER_V4} --reason \"demo: spammer\""
    ));
    story.expect(
        "a permanent entry in the kernel map; the spammer's next connection gets no answer at \
         all (SYN dropped by XDP) while the client still delivers",
    );
    let added = lab.must(
        &mut lab.gateway_cli(&["block", "add", SPAMMER_V4, "--reason", "demo: spammer"]),
        Duration::from_secs(15),
    )?;
    story.show(added.trim_end());
    let list = lab.must(
        &mut lab.gateway_cli(&["block", "list"]),
        Duration::from_secs(15),
    )?;
    story.check(
        list.contains(SPAMMER_V4),
        format!("smtp-gateway block list shows {SPAMMER_V4}:"),
    );
    story.show(list.trim_end());
    let before = verdict(&lab.stats()?, "dropped_exact").unwrap_or(0);
    let blocked = lab.run(
        lab.in_ns("spammer", "bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/{GW_V4}/25")]),
        Duration::from_secs(3),
    )?;
    story.check(
        blocked.status.is_none(),
        match blocked.status {
            None => "spammer's connect to port 25: no answer within 3 s (timed out)".to_string(),
            Some(s) if s.success() => "spammer's connect to port 25 succeeded".to_string(),
            Some(_) => format!(
                "spammer's connect to port 25 failed at once: {}",
                blocked.out.trim()
            ),
        },
    );
    let after = verdict(&lab.stats()?, "dropped_exact").unwrap_or(0);
    story.check(
        after > before,
        format!(
            "XDP counted the drops (the SYNs, and the ACKs of the bot's closing connection): \
             dropped_exact {before} -> {after}"
        ),
    );
    lab.good_mail(
        story,
        &format!("{GW_V4}:25"),
        CLIENT_V4,
        "Demo 3: still delivering while the spammer is blocked",
    )?;

    story.step(&format!(
        "A SYN flood: flooder {FLOODER_V4} sends 300 SYNs at 500/s (hping3 -S -p 25 -c 300 -i u2000 \
         {GW_V4}); the client sends mail meanwhile"
    ));
    story.expect(&format!(
        "XDP lets about {SYN_BURST} SYNs (the burst) through and drops the rest (rate_limited > 0); \
         the client is not affected"
    ));
    let rate_before = verdict(&lab.stats()?, "rate_limited").unwrap_or(0);
    let flood = lab.spawn(lab.in_ns("flooder", "hping3").args([
        "-S", "-p", "25", "-c", "300", "-i", "u2000", "-I", "eth0", GW_V4,
    ]))?;
    sleep(Duration::from_millis(150));
    lab.good_mail(
        story,
        &format!("{GW_V4}:25"),
        CLIENT_V4,
        "Demo 4: delivered during a SYN flood",
    )?;
    let flood = lab.finish(flood, Duration::from_secs(20), true)?;
    let summary = flood
        .out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("(no hping3 summary)")
        .trim()
        .to_string();
    let answered = summary
        .split(", ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    story.check(
        flood.status.is_some() && summary.starts_with("300 packets transmitted"),
        format!("hping3: {summary}"),
    );
    let rate_after = verdict(&lab.stats()?, "rate_limited").unwrap_or(0);
    story.check(
        rate_after > rate_before && answered.is_some_and(|a| a < 300),
        format!(
            "XDP rate-limited the flooder: rate_limited {rate_before} -> {rate_after}, {} SYNs \
             answered by the gateway's kernel",
            answered.map_or("?".to_string(), |a| a.to_string())
        ),
    );

    story.step("What the data plane saw: smtp-gateway stats --top 10");
    let stats = lab.stats()?;
    story.show(stats.trim_end());
    let flooder_row = stats
        .lines()
        .find(|l| l.split_whitespace().next() == Some(FLOODER_V4));
    let spammer_row = stats
        .lines()
        .find(|l| l.split_whitespace().next() == Some(SPAMMER_V4));
    let drops = |row: Option<&str>| {
        row.and_then(|r| r.split_whitespace().nth(4))
            .and_then(|d| d.parse::<u64>().ok())
            .unwrap_or(0)
    };
    story.check(
        drops(flooder_row) > 0 && drops(spammer_row) > 0,
        format!(
            "per-source drops: flooder {}, spammer {}",
            drops(flooder_row),
            drops(spammer_row)
        ),
    );

    story.step("What the backend received (Postfix Maildir)");
    story.expect("the 4 messages of the client, nothing from the spammer, the bot or the flooder");
    let messages = lab.messages();
    story.check(
        messages.len() == 4,
        format!("{} messages in {}", messages.len(), lab.maildir().display()),
    );
    for (i, m) in messages.iter().enumerate() {
        let h = |name| m.header(name).unwrap_or("-");
        story.show(&format!(
            "#{} From: {} | To: {} | Subject: {}\n   Received: {}",
            i + 1,
            h("From"),
            h("To"),
            h("Subject"),
            h("Received")
        ));
    }
    Ok(())
}

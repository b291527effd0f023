//! End-to-end tests of the XDP data plane: the real `smtp-gateway` binary attached natively to a
//! veth in a network namespace, real TCP connects to port 25 from a client namespace, the operator
//! CLI on the pinned maps. Run as root, after `cargo build` (or through `cargo xtask test`).
//!
//! Each test builds its own lab (namespaces `sgw<pid>-<tag>-gw|cl`, veth `g<pid><tag>` /
//! `c<pid><tag>`, pins under `/sys/fs/bpf/sgw-e2e-<pid>-<tag>`, files under
//! `/tmp/sgw-e2e-<pid>-<tag>`), so the tests run in parallel; the lab's guard kills the daemon,
//! detaches, and deletes everything when the test ends, also on panic.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    daemon::Daemon,
    netns::{ChildGuard, Listener, Topology, nsenter, wait_until},
};

const SMTP: u16 = 25;

const ALLOWED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
const EXACT_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));
const FLOODER_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20));
/// Inside [`CIDR_V4_NET`].
const CIDR_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 130));
const CIDR_V4_NET: &str = "198.18.0.128/25";

const ALLOWED_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
const EXACT_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11));
/// Inside [`CIDR_V6_NET`] (the upper half of the link's /64).
const CIDR_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0x8000, 0, 0, 1));
const CIDR_V6_NET: &str = "2001:db8:0:0:8000::/65";

/// Every address on the client veth.
const CLIENT_ADDRS: [IpAddr; 7] = [
    ALLOWED_V4, EXACT_V4, FLOODER_V4, CIDR_V4, ALLOWED_V6, EXACT_V6, CIDR_V6,
];

/// A connect that must succeed gets this long (it takes milliseconds when the path is open).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connect that must be dropped gets this long: under the 1 s initial SYN retransmission
/// timeout, so a blocked connect sends exactly one SYN.
const BLOCKED_TIMEOUT: Duration = Duration::from_millis(900);

/// Rate limit of a lab's configuration.
struct RateLimit {
    syn_per_second: f64,
    burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        // The product defaults: far above what the functional tests send.
        RateLimit {
            syn_per_second: 5.0,
            burst: 20,
        }
    }
}

/// The daemon and the CLI of one lab, on a configuration with `rate`: the shared harness
/// ([`Daemon`]), whose `Drop` kills the daemon by PID, detaches, and removes the pins and files.
fn gateway(tag: &str, ns: &str, iface: &str, rate: &RateLimit) -> Daemon {
    let pid = std::process::id();
    let dir = PathBuf::from(format!("/tmp/sgw-e2e-{pid}-{tag}"));
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-e2e-{pid}-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("lab directory");
    let config = format!(
        "[dataplane]\n\
         interfaces = [\"{iface}\"]\n\
         protected_ports = [{SMTP}]\n\
         pin_dir = \"{}\"\n\
         sweep_interval = \"1s\"\n\
         \n\
         [dataplane.rate_limit]\n\
         enabled = true\n\
         syn_per_second = {:?}\n\
         burst = {}\n",
        pin_dir.display(),
        rate.syn_per_second,
        rate.burst
    );
    Daemon::new(ns, iface, &dir, &pin_dir, &config)
}

/// One test's world: topology, port-25 listener, gateway. Dropped listener first, then the
/// gateway (daemon killed, detached), then the namespaces.
struct Lab {
    listener: Listener,
    gw: Daemon,
    topo: Topology,
}

impl Lab {
    /// Builds the namespaces and the listener and checks that every client address reaches the
    /// listener before anything is attached. Does not start the daemon.
    fn new(tag: &str, rate: RateLimit) -> Self {
        // SAFETY: getuid has no preconditions.
        assert_eq!(
            unsafe { libc::getuid() },
            0,
            "the netns end-to-end tests need root (namespaces, XDP, bpffs)"
        );
        let topo = Topology::new(tag, &CLIENT_ADDRS);
        let listener = Listener::start(&topo.gw_ns, SMTP);
        let gw = gateway(tag, &topo.gw_ns, &topo.gw_if, &rate);
        let lab = Lab { listener, gw, topo };
        assert_eq!(lab.topo.gw_xdp(), None, "fresh veth has no XDP program");
        for src in CLIENT_ADDRS {
            lab.assert_connects(src, "before the gateway is attached");
        }
        lab
    }

    /// A real TCP connect from `src` to port 25 must complete, and the listener must have accepted
    /// exactly that connection.
    fn assert_connects(&self, src: IpAddr, when: &str) {
        let started = Instant::now();
        match self.topo.connect(src, SMTP, CONNECT_TIMEOUT) {
            Ok(local) => assert!(
                self.listener.accepted(local, Duration::from_secs(2)),
                "{when}: {local} connected but the listener never accepted it"
            ),
            Err(e) => panic!(
                "{when}: connect from {src} to port {SMTP} failed after {:?}: {e} (expected to pass)",
                started.elapsed()
            ),
        }
    }

    /// A real TCP connect from `src` to port 25 must time out: the SYN was silently dropped.
    fn assert_blocked(&self, src: IpAddr, when: &str) {
        let before = self.listener.accepted_from(src);
        match self.topo.connect(src, SMTP, BLOCKED_TIMEOUT) {
            Ok(local) => panic!("{when}: {local} connected to port {SMTP} (expected a drop)"),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::TimedOut,
                "{when}: connect from {src} failed with {e} (expected a silent drop: a timeout)"
            ),
        }
        assert_eq!(
            self.listener.accepted_from(src),
            before,
            "{when}: the listener accepted a connection from {src}"
        );
    }
}

/// (1) Allowed sources connect; exact and prefix blocklist entries drop real SYNs, IPv4 and IPv6,
/// whether added before the daemon started or while it runs; every drop is counted per verdict
/// and per source.
#[test]
fn blocked_sources_are_dropped_and_counted() {
    let mut lab = Lab::new("drop", RateLimit::default());
    // Before the daemon ever ran: the CLI creates the pinned maps, the daemon adopts them.
    lab.gw
        .cli_ok(&["block", "add", &EXACT_V4.to_string(), "--reason", "e2e"]);
    lab.gw.cli_ok(&["block", "add", &EXACT_V6.to_string()]);
    lab.gw.start();
    let (_, mode) = lab.topo.gw_xdp().expect("XDP program attached");
    assert_eq!(mode, 1, "attach_mode = driver must attach natively");
    // While it runs.
    lab.gw.cli_ok(&["block", "add", CIDR_V4_NET]);
    lab.gw.cli_ok(&["block", "add", CIDR_V6_NET]);

    for src in [ALLOWED_V4, ALLOWED_V6] {
        lab.assert_connects(src, "allowed source");
    }
    for src in [EXACT_V4, EXACT_V6] {
        lab.assert_blocked(src, "exact blocklist entry");
    }
    for src in [CIDR_V4, CIDR_V6] {
        lab.assert_blocked(src, "prefix blocklist entry");
    }
    // Still passing after the drops (no collateral damage).
    lab.assert_connects(ALLOWED_V4, "allowed source, again");

    let stats = lab.gw.stats();
    let exact = stats.verdict("dropped_exact");
    let cidr = stats.verdict("dropped_cidr");
    assert!(exact >= 2 && cidr >= 2, "exact {exact}, cidr {cidr}");
    assert!(stats.verdict("passed") > 0);
    assert_eq!(stats.verdict("rate_limited"), 0);
    for src in [EXACT_V4, EXACT_V6, CIDR_V4, CIDR_V6] {
        let drops = stats.tracked(src, "drops");
        let syns = stats.tracked(src, "syns");
        assert!(drops >= 1 && syns >= 1, "{src}: drops {drops}, syns {syns}");
    }
    // The verdict totals and the per-source rows agree: only these sources were blocked.
    assert_eq!(
        exact,
        stats.tracked(EXACT_V4, "drops") + stats.tracked(EXACT_V6, "drops")
    );
    assert_eq!(
        cidr,
        stats.tracked(CIDR_V4, "drops") + stats.tracked(CIDR_V6, "drops")
    );
    for src in [ALLOWED_V4, ALLOWED_V6] {
        assert_eq!(stats.tracked(src, "drops"), 0, "{src} was dropped");
        assert!(stats.tracked(src, "packets") >= 2, "{src}: SYN + ACK");
    }
    let listed: Vec<&str> = stats.0["top_by_drops"]
        .as_array()
        .expect("top_by_drops")
        .iter()
        .filter_map(|r| r["source"].as_str())
        .collect();
    for src in [EXACT_V4, EXACT_V6, CIDR_V4, CIDR_V6] {
        assert!(
            listed.contains(&src.to_string().as_str()),
            "{src} missing from top_by_drops {listed:?}"
        );
    }
}

/// (2) `block add` at run time drops a working source at once, `block del` lets it through again;
/// a `--ttl 2s` entry drops until it expires, then passes, and the sweeper removes it; an
/// allowlist entry wins over a block entry.
#[test]
fn runtime_block_del_ttl_and_allow() {
    let mut lab = Lab::new("rt", RateLimit::default());
    lab.gw.start();
    for src in [ALLOWED_V4, ALLOWED_V6] {
        let target = src.to_string();
        lab.assert_connects(src, "before block add");
        lab.gw
            .cli_ok(&["block", "add", &target, "--reason", "runtime"]);
        let entry = lab.gw.block_entry(&target).expect("listed after block add");
        assert_eq!(entry["active"], true, "{entry}");
        assert_eq!(entry["kind"], "exact", "{entry}");
        assert_eq!(entry["reason"], "runtime", "{entry}");
        assert_eq!(entry["expires_in_secs"], Value::Null, "{entry}");
        lab.assert_blocked(src, "after block add");
        lab.gw.cli_ok(&["block", "del", &target]);
        assert_eq!(lab.gw.block_entry(&target), None, "listed after block del");
        lab.assert_connects(src, "after block del");
        let again = lab.gw.cli(&["block", "del", &target]);
        assert!(
            !again.status.success(),
            "deleting a missing entry must fail"
        );
    }

    // A prefix added at run time, deleted by its exact prefix.
    lab.gw.cli_ok(&["block", "add", CIDR_V6_NET]);
    lab.assert_blocked(CIDR_V6, "after block add of the /65");
    lab.gw.cli_ok(&["block", "del", CIDR_V6_NET]);
    lab.assert_connects(CIDR_V6, "after block del of the /65");

    // TTL: dropped until expiry, then passing; the sweeper (sweep_interval = 1s) removes it.
    let target = EXACT_V4.to_string();
    let added = Instant::now();
    lab.gw.cli_ok(&["block", "add", &target, "--ttl", "2s"]);
    // The probe must end before the entry expires to mean anything.
    let probe_at = added.elapsed();
    assert!(
        probe_at + BLOCKED_TIMEOUT < Duration::from_millis(1900),
        "the host is too slow to probe a 2s TTL ({probe_at:?} after block add)"
    );
    lab.assert_blocked(EXACT_V4, "TTL entry before expiry");
    let entry = lab.gw.block_entry(&target).expect("TTL entry listed");
    let left = entry["expires_in_secs"]
        .as_u64()
        .expect("TTL entry expires");
    assert!(left <= 2, "{entry}");
    let drops_before_expiry = lab.gw.stats().tracked(EXACT_V4, "drops");
    assert!(drops_before_expiry >= 1);
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(added.elapsed()));
    lab.assert_connects(EXACT_V4, "TTL entry after expiry");
    assert_eq!(
        lab.gw.stats().tracked(EXACT_V4, "drops"),
        drops_before_expiry,
        "an expired entry must not drop"
    );
    let swept = wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        lab.gw.block_entry(&target).is_none()
    });
    assert!(swept, "the expired entry was not swept within 5s");

    // Allowlist wins over the blocklist; removing the allow entry restores the block.
    lab.gw.cli_ok(&["block", "add", &target]);
    lab.assert_blocked(EXACT_V4, "blocked again");
    let out = lab.gw.cli(&["allow", "add", &target, "--reason", "e2e"]);
    assert!(out.status.success(), "{out:?}");
    let allowlisted_before = lab.gw.stats().verdict("allowlisted");
    lab.assert_connects(EXACT_V4, "blocked but allowlisted");
    assert!(lab.gw.stats().verdict("allowlisted") > allowlisted_before);
    lab.gw.cli_ok(&["allow", "del", &target]);
    lab.assert_blocked(EXACT_V4, "allowlist entry removed");
}

/// (3) A SYN flood from one source (hping3, 300 SYNs at 500/s) is cut to the configured rate in
/// the kernel, while another source keeps connecting during and after the flood.
#[test]
fn syn_flood_is_rate_limited_per_source() {
    const SYNS: u64 = 300;
    let rate = RateLimit {
        syn_per_second: 2.0,
        burst: 5,
    };
    let (per_second, burst) = (rate.syn_per_second, u64::from(rate.burst));
    let mut lab = Lab::new("flood", rate);
    lab.gw.start();
    lab.assert_connects(ALLOWED_V4, "before the flood");

    let hping3 = ["/usr/sbin/hping3", "/usr/bin/hping3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("hping3 is missing: apt-get install -y hping3 (or cargo xtask setup)");
    let started = Instant::now();
    let child = nsenter(&lab.topo.cl_ns, hping3)
        .args(["-q", "-S", "-p", &SMTP.to_string(), "-c", &SYNS.to_string()])
        .args(["-i", "u2000", "-I", &lab.topo.cl_if])
        .args([
            "-a",
            &FLOODER_V4.to_string(),
            &support::netns::GW_V4.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hping3");
    let mut flood = ChildGuard::new(child, "hping3");

    // During the flood: the limiter drops the flooder, the other source is untouched.
    let limiting = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        lab.gw.stats().source(FLOODER_V4, "drops") > 0
    });
    assert!(limiting, "the flooder was never rate-limited");
    lab.assert_connects(ALLOWED_V4, "during the flood");
    flood.wait_bounded(Duration::from_secs(30));
    let flood_time = started.elapsed();
    lab.assert_connects(ALLOWED_V4, "after the flood");
    lab.assert_connects(ALLOWED_V6, "after the flood");

    let stats = lab.gw.stats();
    let syns = stats.tracked(FLOODER_V4, "syns");
    let drops = stats.tracked(FLOODER_V4, "drops");
    let limited = stats.verdict("rate_limited");
    assert!(
        (SYNS - 10..=SYNS).contains(&syns),
        "the flooder's SYNs did not reach the program: {syns} of {SYNS}"
    );
    // GCRA admits at most `burst` at once plus the rate over the flood's duration; a SYN per
    // extra CPU may slip through per race, and one of slack for rounding.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let admitted_max = burst + (per_second * flood_time.as_secs_f64()).ceil() as u64 + cpus;
    assert!(
        drops > 0 && drops + admitted_max >= syns,
        "flooder: {syns} SYNs, {drops} dropped; at most {admitted_max} should pass in {flood_time:?}"
    );
    assert!(
        limited >= drops,
        "rate_limited {limited} < flooder drops {drops}"
    );
    assert_eq!(stats.verdict("dropped_exact"), 0);
    assert_eq!(stats.verdict("dropped_cidr"), 0);
    for src in [ALLOWED_V4, ALLOWED_V6] {
        assert_eq!(stats.tracked(src, "drops"), 0, "{src} was dropped");
    }
}

/// (4) `kill -9` of the daemon leaves the kernel filter in place (pinned link and maps); a restart
/// keeps the entries and reuses the attached program instead of loading another.
#[test]
fn pinned_state_survives_kill_and_restart_reuses_program() {
    let mut lab = Lab::new("kill", RateLimit::default());
    lab.gw.start();
    let targets = [
        EXACT_V4.to_string(),
        CIDR_V4_NET.to_string(),
        EXACT_V6.to_string(),
    ];
    for target in &targets {
        lab.gw
            .cli_ok(&["block", "add", target, "--reason", "persist"]);
    }
    let (prog_id, _) = lab.topo.gw_xdp().expect("XDP program attached");
    lab.assert_blocked(EXACT_V4, "daemon running");
    lab.assert_connects(ALLOWED_V4, "daemon running");
    let exact_before = lab.gw.stats().verdict("dropped_exact");

    lab.gw.kill9();
    assert!(
        lab.gw.link_pin().exists(),
        "the link pin must survive the daemon"
    );
    assert_eq!(
        lab.topo.gw_xdp().map(|(id, _)| id),
        Some(prog_id),
        "the program must stay attached after kill -9"
    );
    for src in [EXACT_V4, CIDR_V4, EXACT_V6] {
        lab.assert_blocked(src, "daemon killed");
    }
    for src in [ALLOWED_V4, ALLOWED_V6] {
        lab.assert_connects(src, "daemon killed");
    }
    assert!(lab.gw.stats().verdict("dropped_exact") >= exact_before + 2);

    lab.gw.start();
    let log = lab.gw.log();
    let attach_line = log
        .lines()
        .find(|l| l.contains("XDP program attached"))
        .unwrap_or_else(|| panic!("no attach line in the restart log:\n{log}"));
    assert!(
        attach_line.contains("action=Reused"),
        "restart must reuse the pinned program: {attach_line}"
    );
    assert_eq!(
        lab.topo.gw_xdp().map(|(id, _)| id),
        Some(prog_id),
        "restart must not load a second program"
    );
    let listed: Vec<String> = lab
        .gw
        .block_list()
        .iter()
        .filter_map(|e| e["target"].as_str().map(str::to_string))
        .collect();
    for target in &targets {
        assert!(
            listed.contains(target),
            "{target} lost across restart: {listed:?}"
        );
        let entry = lab.gw.block_entry(target).expect("listed");
        assert_eq!(entry["reason"], "persist", "{entry}");
        assert_eq!(entry["active"], true, "{entry}");
    }
    for src in [EXACT_V4, CIDR_V4, EXACT_V6] {
        lab.assert_blocked(src, "after restart");
    }
    for src in [ALLOWED_V4, ALLOWED_V6] {
        lab.assert_connects(src, "after restart");
    }
    // Counters are pinned too: nothing was reset.
    assert!(lab.gw.stats().verdict("dropped_exact") >= exact_before + 4);
}

/// (5) `detach` takes the program off the interface and removes every pin; blocked sources then
/// connect. A plain SIGTERM before it leaves the protection in place.
#[test]
fn detach_removes_program_and_pins() {
    let mut lab = Lab::new("det", RateLimit::default());
    lab.gw.start();
    lab.gw.cli_ok(&["block", "add", &EXACT_V4.to_string()]);
    lab.gw.cli_ok(&["block", "add", &EXACT_V6.to_string()]);
    lab.assert_blocked(EXACT_V4, "attached");
    lab.assert_blocked(EXACT_V6, "attached");

    lab.gw.terminate();
    assert!(
        lab.gw.link_pin().exists(),
        "SIGTERM must leave the link pinned"
    );
    assert!(
        lab.topo.gw_xdp().is_some(),
        "SIGTERM must leave the program attached"
    );
    lab.assert_blocked(EXACT_V4, "daemon stopped, not detached");

    let out = lab.gw.cli_ok(&["detach"]);
    assert!(
        out.contains(&format!(
            "detached from 1 interface(s) [{}]",
            lab.topo.gw_if
        )),
        "{out}"
    );
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        lab.topo.gw_xdp().is_none()
    });
    assert!(
        gone,
        "XDP program still attached after detach: {:?}",
        lab.topo.gw_xdp()
    );
    assert!(
        !lab.gw.pin_dir.exists(),
        "{} still exists after detach",
        lab.gw.pin_dir.display()
    );
    for src in [EXACT_V4, EXACT_V6, ALLOWED_V4, ALLOWED_V6] {
        lab.assert_connects(src, "after detach");
    }
    let stats = lab.gw.cli(&["stats", "--json"]);
    assert!(
        !stats.status.success(),
        "stats must fail without pinned maps"
    );
    assert!(
        String::from_utf8_lossy(&stats.stderr).contains("no pinned data plane"),
        "{stats:?}"
    );
}

/// A network namespace of its own (`ip netns add`), deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        // A leftover of an earlier process with the same PID.
        let _ = support::netns::run(std::process::Command::new("ip").args(["netns", "del", &name]));
        support::netns::run_ok(std::process::Command::new("ip").args(["netns", "add", &name]));
        Netns(name)
    }

    /// `ip netns exec <ns> smtp-gateway -c <config> <args>`: a private mount namespace in which
    /// the host's /sys/fs/bpf is hidden (ip remounts /sys).
    fn exec(&self, config: &Path, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.0])
            .arg(support::daemon::binary())
            .arg("-c")
            .arg(config)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ =
            support::netns::run(std::process::Command::new("ip").args(["netns", "del", &self.0]));
    }
}

/// (6) Started with `ip netns exec` (a private mount namespace without the host's bpffs), neither
/// the CLI nor the daemon mounts a bpffs of its own, whose pins would die with it: both refuse,
/// saying where they looked, unless `dataplane.allow_private_bpffs` says so. Entered with
/// `nsenter --net` only, the same configuration works on the host's bpffs.
#[test]
fn a_bpffs_private_to_the_process_is_refused_unless_allowed() {
    let pid = std::process::id();
    let ns = Netns::new(format!("sgw{pid}-priv"));
    let dir = PathBuf::from(format!("/tmp/sgw-e2e-{pid}-priv"));
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-e2e-{pid}-priv"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("lab directory");
    let config = |allow: bool| {
        format!(
            "[dataplane]\n\
             pin_dir = \"{}\"\n\
             {allow}\
             \n\
             [smtp]\n\
             listeners = []\n\
             \n\
             [metrics]\n\
             enabled = false\n",
            pin_dir.display(),
            // Off by default.
            allow = if allow {
                "allow_private_bpffs = true\n"
            } else {
                ""
            }
        )
    };
    // Its drop kills the daemon (none here), detaches and removes the pins and the directory.
    let gw = Daemon::new(&ns.0, "lo", &dir, &pin_dir, &config(false));
    let refused = |out: &std::process::Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} must be refused: {err}");
        assert!(
            err.contains(&pin_dir.display().to_string())
                && err.contains("mount namespace")
                && err.contains("allow_private_bpffs"),
            "{what}: {err}"
        );
    };

    let cli = support::netns::run(
        &mut ns.exec(&dir.join("gateway.toml"), &["block", "add", "198.18.0.7"]),
    );
    refused(&cli, "block add under ip netns exec");
    let import = dir.join("drop.txt");
    std::fs::write(&import, "198.18.0.8\n").expect("import file");
    let cli = support::netns::run(&mut ns.exec(
        &dir.join("gateway.toml"),
        &["block", "import", &import.display().to_string()],
    ));
    refused(&cli, "block import under ip netns exec");

    let log = dir.join("daemon.log");
    let child = ns
        .exec(&dir.join("gateway.toml"), &["run"])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start the daemon");
    let mut daemon = ChildGuard::new(child, "the daemon under ip netns exec");
    let status = daemon.wait_bounded(Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!status.success(), "the daemon must refuse to start: {text}");
    assert!(
        text.contains("mount namespace") && text.contains("allow_private_bpffs"),
        "{text}"
    );
    assert!(
        !pin_dir.exists(),
        "nothing may appear in the host's bpffs: {}",
        pin_dir.display()
    );

    // Allowed explicitly: the entry goes into a bpffs that dies with the CLI.
    let private = dir.join("private.toml");
    std::fs::write(&private, config(true)).expect("config");
    let cli = support::netns::run(&mut ns.exec(&private, &["block", "add", "198.18.0.7"]));
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(!pin_dir.exists(), "the private state is not the host's");

    // The network namespace only: the host's bpffs, state that outlives the CLI.
    gw.cli_ok(&["block", "add", "198.18.0.7"]);
    assert!(gw.block_entry("198.18.0.7").is_some());
    assert!(pin_dir.exists());
}

/// (6) `why <address> --follow --for 3s`: while it runs, the verdict of each real packet from the
/// address is printed, as the XDP program decided it (a passed SYN, then a SYN dropped by an
/// exact entry added meanwhile); another source's packets are not; it ends by itself.
#[test]
fn why_follow_prints_the_kernel_verdict_of_each_packet() {
    let mut lab = Lab::new("follw", RateLimit::default());
    lab.gw.start();
    let out = lab.gw.dir.join("follow.out");
    let err = lab.gw.dir.join("follow.err");
    let file = |path: &Path| std::fs::File::create(path).expect("output file");
    let traced = EXACT_V4.to_string();
    let child = lab
        .gw
        .cli_command(&["why", &traced, "--follow", "--for", "3s"])
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .expect("start why --follow");
    let mut follower = ChildGuard::new(child, "why --follow");
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            read(&err).contains("tracing ")
        }),
        "why --follow never started tracing:\n{}",
        read(&err)
    );

    lab.assert_connects(EXACT_V4, "traced source, not blocked yet");
    lab.assert_connects(ALLOWED_V4, "untraced source");
    lab.gw.cli_ok(&["block", "add", &traced]);
    lab.assert_blocked(EXACT_V4, "traced source, blocked");

    let status = follower.wait_bounded(Duration::from_secs(10));
    let (stdout, stderr) = (read(&out), read(&err));
    assert!(
        status.success(),
        "why --follow: {status}\n{stdout}\n{stderr}"
    );
    // `<time> <src> -> port <port> <flags> <verdict>`, after the `why` report.
    let verdicts: Vec<(String, String, String)> = stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip(1);
            let src = words.next()?.to_string();
            (words.next()? == "->" && words.next()? == "port").then_some(())?;
            let port = words.next()?;
            let flags = words.next()?.to_string();
            Some((src, format!("{port} {flags}"), words.next()?.to_string()))
        })
        .collect();
    let seen = |flags: &str, verdict: &str| {
        verdicts
            .iter()
            .any(|(s, f, v)| *s == traced && f == flags && v == verdict)
    };
    assert!(seen("25 SYN", "passed"), "no passed SYN:\n{stdout}");
    assert!(seen("25 ACK", "passed"), "no passed ACK:\n{stdout}");
    assert!(seen("25 SYN", "dropped_exact"), "no dropped SYN:\n{stdout}");
    assert!(
        verdicts.iter().all(|(s, _, _)| *s == traced),
        "only the traced source is printed:\n{stdout}"
    );
    let dropped = verdicts
        .iter()
        .filter(|(_, _, v)| v == "dropped_exact")
        .count();
    assert_eq!(
        dropped, 1,
        "one SYN dropped within the connect timeout:\n{stdout}"
    );
    assert!(
        stderr.contains(&format!("{} packet(s) of {traced} traced", verdicts.len())),
        "{stderr}"
    );
    // Its trace is gone: the next follower starts from an empty table (no line left behind).
    let report = lab.gw.cli_ok(&["why", &traced]);
    assert!(report.contains("dropped: "), "{report}");
}

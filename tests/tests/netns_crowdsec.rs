//! End-to-end test of the CrowdSec bouncer (issue 12, section 4): a real CrowdSec Local API
//! (Debian's `crowdsec` 1.4.6, unpacked into `.tools/crowdsec` by `cargo xtask setup`, its
//! central API turned off) and `smtp-gateway run` with XDP on the gateway veth of a namespace
//! lab; decisions are made with the real `cscli`.
//!
//! [`crowdsec_decisions_drop_at_xdp_and_follow_the_lapi`]:
//! - a decision made before the gateway starts is in its first (startup) answer: the source's
//!   SYN is dropped, the entry is listed with origin `crowdsec`, reason `crowdsec: <scenario>`
//!   and the decision's time left; its neighbour still connects;
//! - a Range decision (IPv6) drops a source inside it;
//! - a decision on a target the operator blocked (`block add`) leaves that entry as it was, and
//!   its deletion does not remove it;
//! - a deleted decision lifts its entry: the source connects again;
//! - the LAPI stopped: the gateway logs the failed poll and keeps dropping; back, its new
//!   decisions are applied;
//! - a decision deleted while the gateway was stopped is gone after the restart (the startup
//!   answer no longer holds it), and one added meanwhile is applied.
//!
//! The LAPI listens on 127.0.0.1:8080 inside the gateway namespace (so parallel tests never
//! share a port); its database and files live in the lab's directory. Every process is stopped
//! by PID; namespaces, pins and files are removed when the test ends, also on panic.
//!
//! Needs root, `cargo xtask setup` and `cargo build` first:
//! `cargo test -p smtp-gateway-tests --test netns_crowdsec`.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use support::{
    daemon::Daemon,
    netns::{ChildGuard, Listener, Topology, nsenter, run, start_service, wait_until},
};

const SMTP: u16 = 25;
/// Where the LAPI listens, inside the gateway namespace.
const LAPI: &str = "127.0.0.1:8080";
/// The bouncer key registered with `cscli bouncers add`.
const KEY: &str = "7f3c2a9e51b04d6e8a1f0c3b2d4e6f80";

/// Banned before the gateway starts.
const EARLY: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 31));
/// Never banned: connects throughout.
const NEIGHBOUR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 32));
/// Inside the IPv6 Range decision.
const IN_RANGE: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x133));
const RANGE: &str = "2001:db8::100/120";
/// Blocked by the operator, then also by a decision.
const MANUAL: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 34));
/// Banned while the gateway is stopped.
const LATE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 35));

/// A connect that must succeed gets this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connect that must be dropped: under the 1 s SYN retransmission, so exactly one SYN.
const BLOCKED_TIMEOUT: Duration = Duration::from_millis(900);
/// The gateway polls every second; a change must show within this.
const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// The workspace's root (the `.tools` directory is there).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A private CrowdSec LAPI in the gateway namespace.
struct Lapi {
    ns: String,
    dir: PathBuf,
    config: PathBuf,
    child: Option<ChildGuard>,
    starts: usize,
}

impl Lapi {
    fn bin(name: &str) -> PathBuf {
        let path = root().join(".tools/crowdsec/usr/bin").join(name);
        assert!(
            path.exists(),
            "{} is missing: run `cargo xtask setup` (it unpacks Debian's crowdsec)",
            path.display()
        );
        path
    }

    /// Writes the LAPI's configuration (central API off, SQLite in `dir`), starts it, and
    /// registers a machine (for cscli) and the gateway's bouncer key.
    fn start(ns: &str, dir: &Path) -> Lapi {
        let etc = dir.join("etc");
        std::fs::create_dir_all(dir.join("data")).expect("lapi data dir");
        std::fs::create_dir_all(dir.join("hub")).expect("lapi hub dir");
        std::fs::create_dir_all(&etc).expect("lapi etc dir");
        let shipped = root().join(".tools/crowdsec/etc/crowdsec");
        for file in ["profiles.yaml", "simulation.yaml"] {
            std::fs::copy(shipped.join(file), etc.join(file)).expect("copy LAPI file");
        }
        std::fs::write(etc.join("acquis.yaml"), "").expect("acquis");
        let d = dir.display();
        let plugins = root().join(".tools/crowdsec/usr/lib/crowdsec/plugins");
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n  working_dir: {d}\n\
                 config_paths:\n  config_dir: {d}/etc/\n  data_dir: {d}/data/\n  simulation_path: {d}/etc/simulation.yaml\n  \
                 hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n  notification_dir: {d}/etc/notifications/\n  \
                 plugin_dir: {plugins}/\n\
                 crowdsec_service:\n  enable: false\n  acquisition_path: {d}/etc/acquis.yaml\n\
                 cscli:\n  output: human\n\
                 db_config:\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: false\n\
                 api:\n  client:\n    credentials_path: {d}/etc/local_api_credentials.yaml\n  \
                 server:\n    listen_uri: {LAPI}\n    profiles_path: {d}/etc/profiles.yaml\n    \
                 console_path: {d}/etc/console.yaml\n    trusted_ips: [127.0.0.1]\n\
                 prometheus:\n  enabled: false\n",
                plugins = plugins.display()
            ),
        )
        .expect("write the LAPI config");
        let mut lapi = Lapi {
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            config,
            child: None,
            starts: 0,
        };
        lapi.run();
        lapi.cscli(&[
            "machines",
            "add",
            "gwtest",
            "--auto",
            "-f",
            &format!("{d}/etc/local_api_credentials.yaml"),
        ]);
        lapi.cscli(&["bouncers", "add", "smtp-gateway", "-k", KEY]);
        lapi
    }

    /// Starts the LAPI process and waits until it accepts connections.
    fn run(&mut self) {
        assert!(self.child.is_none(), "the LAPI runs");
        self.starts += 1;
        let log_path = self.dir.join(format!("lapi-{}.log", self.starts));
        let mut command = nsenter(&self.ns, Self::bin("crowdsec"));
        command
            .arg("-c")
            .arg(&self.config)
            .arg("-no-cs")
            .current_dir(&self.dir);
        let guard = start_service(
            &self.ns,
            command,
            &log_path,
            "the crowdsec LAPI",
            LAPI.parse().expect("LAPI address"),
            Duration::from_secs(20),
            |_| true,
        );
        self.child = Some(guard);
    }

    /// Stops the LAPI (by PID).
    fn stop(&mut self) {
        let mut guard = self.child.take().expect("the LAPI runs");
        let _ = guard.child.kill();
        let _ = guard.wait_bounded(Duration::from_secs(10));
    }

    /// `cscli -c CONFIG <args>` in the gateway namespace; panics unless it succeeds.
    fn cscli(&self, args: &[&str]) -> String {
        let out = run(nsenter(&self.ns, Self::bin("cscli"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null()));
        assert!(
            out.status.success(),
            "cscli {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ban(&self, what: &str, value: &str, duration: &str, reason: &str) {
        self.cscli(&[
            "decisions",
            "add",
            what,
            value,
            "--duration",
            duration,
            "--reason",
            reason,
        ]);
    }

    fn unban(&self, what: &str, value: &str) {
        self.cscli(&["decisions", "delete", what, value]);
    }
}

/// The lab: namespaces, a TCP listener on port 25 in the gateway namespace, the LAPI and the
/// gateway (not started). Dropped in field order: the gateway first (its `detach` runs in its
/// namespace and removes its control socket), the namespaces last.
struct Lab {
    gw: Daemon,
    lapi: Lapi,
    _listener: Listener,
    topo: Topology,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/tmp/sgw-cs-{pid}-{tag}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-cs-{pid}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab directory");
        let topo = Topology::new(tag, &[EARLY, NEIGHBOUR, IN_RANGE, MANUAL, LATE]);
        let config = format!(
            "[dataplane]\n\
             interfaces = [\"{iface}\"]\n\
             attach_mode = \"driver\"\n\
             protected_ports = [{SMTP}]\n\
             pin_dir = \"{pins}\"\n\
             \n\
             [crowdsec]\n\
             enabled = true\n\
             url = \"http://{LAPI}/\"\n\
             api_key = \"{KEY}\"\n\
             poll_interval = \"1s\"\n\
             timeout = \"5s\"\n\
             \n\
             [metrics]\n\
             enabled = false\n",
            iface = topo.gw_if,
            pins = pin_dir.display(),
        );
        let gw = Daemon::new(&topo.gw_ns, &topo.gw_if, &dir, &pin_dir, &config);
        let lapi = Lapi::start(&topo.gw_ns, &dir.join("lapi"));
        let listener = Listener::start(&topo.gw_ns, SMTP);
        Lab {
            gw,
            lapi,
            _listener: listener,
            topo,
        }
    }

    fn assert_dropped(&self, src: IpAddr, when: &str) {
        if let Err(e) = self.topo.expect_dropped(src, SMTP, BLOCKED_TIMEOUT) {
            self.fail(when, &e);
        }
    }

    fn assert_connects(&self, src: IpAddr, when: &str) {
        if let Err(e) = self.topo.expect_connects(src, SMTP, CONNECT_TIMEOUT) {
            self.fail(when, &e);
        }
    }

    /// Panics with `what` and the gateway's state: its block list and its log.
    fn fail(&self, when: &str, what: &str) -> ! {
        panic!(
            "{when}: {what}\nblock list: {:#?}\n--- daemon log:\n{}",
            self.gw.block_list(),
            self.gw.log()
        )
    }

    /// Waits until `target` is no longer listed.
    fn wait_lifted(&self, target: &str) {
        let gone = wait_until(APPLY_TIMEOUT, Duration::from_millis(50), || {
            self.gw.block_entry(target).is_none()
        });
        assert!(
            gone,
            "{target} still listed after {APPLY_TIMEOUT:?}: {:#?}\n--- daemon log:\n{}",
            self.gw.block_list(),
            self.gw.log()
        );
    }
}

#[test]
fn crowdsec_decisions_drop_at_xdp_and_follow_the_lapi() {
    let mut lab = Lab::new("cs");
    let early = EARLY.to_string();
    lab.lapi.ban("--ip", &early, "1h", "ssh-bf-test");
    lab.gw.start();

    // The startup answer: dropped in the kernel, listed as CrowdSec's.
    let entry = lab.gw.wait_banned(&early, APPLY_TIMEOUT);
    assert_eq!(entry["origin"], "crowdsec", "{entry}");
    assert_eq!(entry["reason"], "crowdsec: ssh-bf-test", "{entry}");
    let left = entry["expires_in_secs"]
        .as_u64()
        .expect("a decision expires");
    assert!((3000..=3600).contains(&left), "time left {left}: {entry}");
    lab.assert_dropped(EARLY, "banned at startup");
    lab.assert_connects(NEIGHBOUR, "next to a banned source");

    // A Range decision, and a decision on what the operator blocked already.
    let manual = MANUAL.to_string();
    lab.gw
        .cli_ok(&["block", "add", &manual, "--reason", "operator's own"]);
    lab.lapi.ban("--ip", &manual, "2h", "manual-test");
    lab.lapi.ban("--range", RANGE, "1h", "range-test");
    let entry = lab.gw.wait_banned(RANGE, APPLY_TIMEOUT);
    assert_eq!(entry["origin"], "crowdsec", "{entry}");
    lab.assert_dropped(IN_RANGE, "inside a Range decision");
    let entry = lab.gw.block_entry(&manual).expect("the operator's entry");
    assert_eq!(entry["origin"], "cli", "CrowdSec replaced it: {entry}");
    assert_eq!(entry["reason"], "operator's own", "{entry}");

    // Deleted decisions: CrowdSec's entry goes, the operator's stays.
    lab.lapi.unban("--ip", &manual);
    lab.lapi.unban("--ip", &early);
    lab.wait_lifted(&early);
    lab.assert_connects(EARLY, "after its decision was deleted");
    let entry = lab
        .gw
        .block_entry(&manual)
        .expect("the operator's entry stays");
    assert_eq!(entry["origin"], "cli", "{entry}");
    lab.assert_dropped(MANUAL, "blocked by the operator");

    // The LAPI down: a failed poll is logged, the kernel keeps dropping.
    lab.lapi.stop();
    assert!(
        lab.gw
            .wait_logged(&["CrowdSec LAPI poll failed"], APPLY_TIMEOUT),
        "no failed poll logged:\n{}",
        lab.gw.log()
    );
    lab.assert_dropped(IN_RANGE, "while the LAPI is down");
    lab.lapi.run();
    let neighbour = NEIGHBOUR.to_string();
    lab.lapi.ban("--ip", &neighbour, "10m", "after-outage");
    lab.gw.wait_banned(&neighbour, APPLY_TIMEOUT);
    lab.assert_dropped(NEIGHBOUR, "banned after the LAPI came back");

    // Changes while the gateway is stopped: the startup answer brings them.
    lab.gw.terminate();
    lab.lapi.unban("--range", RANGE);
    let late = LATE.to_string();
    lab.lapi.ban("--ip", &late, "1h", "while-stopped");
    lab.gw.start();
    lab.gw.wait_banned(&late, APPLY_TIMEOUT);
    assert!(
        lab.gw.block_entry(RANGE).is_none(),
        "a decision deleted while the gateway was stopped is still enforced: {:#?}",
        lab.gw.block_list()
    );
    lab.assert_connects(
        IN_RANGE,
        "its Range decision deleted while the gateway was down",
    );
    lab.assert_dropped(LATE, "banned while the gateway was down");
    let entry = lab
        .gw
        .block_entry(&manual)
        .expect("the operator's entry survives");
    assert_eq!(entry["origin"], "cli", "{entry}");
}

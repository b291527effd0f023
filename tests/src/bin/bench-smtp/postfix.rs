//! A private Postfix: postscreen in front of smtpd, relaying `example.org` to the sink.
//!
//! Postfix queues: smtpd acknowledges a message once it is in the queue, and the queue manager
//! relays it to the sink afterwards. A run therefore measures the acceptance rate, then waits for
//! the queue to drain and checks that every message reached the sink (and was logged
//! `status=sent`); the CPU figure covers both, read after the drain.
//!
//! postscreen runs its cheap tests (pregreet with a 1 s greet wait, and the "deep protocol"
//! tests: pipelining, non-SMTP commands, bare newlines) with action `enforce`. All clients come
//! from 127.0.0.1, so one probe session passes them before the measurements; every later
//! session is a `PASS OLD` that postscreen hands to smtpd at once, as for a returning client.
//! No DNS: `smtpd_peername_lookup = no`, no DNSBL sites, `smtp_dns_support_level = disabled`, and
//! the relay is the literal `[127.0.0.1]:PORT`.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use smtp_gateway_test_kit::{InstanceDir, MainCf, MasterCf};

use crate::proc::{Cgroup, Proc, free_port, read_new_lines, wait_listening};

/// `postfix -c DIR start-fg` in its own cgroup (master and every daemon it forks).
pub struct Postfix {
    pub proc: Proc,
    pub cgroup: Cgroup,
    pub addr: SocketAddr,
    instance: InstanceDir,
    log_offset: u64,
    pub main_cf: String,
    pub master_cf: String,
    pub version: String,
}

/// Maillog lines that mean a session was not clean.
const PROBLEMS: &[&str] = &[
    "warning:",
    "fatal:",
    "panic:",
    "error:",
    "reject:",
    "NOQUEUE",
    "PREGREET",
    "NON-SMTP",
    "BARE NEWLINE",
    "COMMAND PIPELINING",
    "HANGUP",
    "DNSBL",
    "status=deferred",
    "status=bounced",
];

/// Warnings that say nothing about the sessions: this VM's file system clock runs ahead of its
/// system clock now and then, and cleanup(8) notes it (and resets the queue file's times).
const BENIGN: &[&str] = &[
    "warning: file system clock is",
    "warning: resetting file time stamps",
];

impl Postfix {
    pub fn start(dir: &Path, backend: SocketAddr, max_sessions: u32) -> Result<Self> {
        let instance = InstanceDir::create(dir.join("postfix"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let main_cf = MainCf::new(&instance, "postfix.bench.test")
            .set("mynetworks", "")
            .set("relay_domains", "example.org")
            .set(
                "relay_transport",
                format!("relay:[{}]:{}", backend.ip(), backend.port()),
            )
            .set("default_transport", "error:not relayed in this benchmark")
            .set("smtpd_relay_restrictions", "reject_unauth_destination")
            .set("smtpd_forbid_bare_newline", "yes")
            .set("smtpd_client_connection_count_limit", 0)
            .set("postscreen_access_list", "")
            .set("postscreen_dnsbl_sites", "")
            .set("postscreen_greet_wait", "1s")
            .set("postscreen_greet_action", "enforce")
            .set("postscreen_pipelining_enable", "yes")
            .set("postscreen_non_smtp_command_enable", "yes")
            .set("postscreen_bare_newline_enable", "yes")
            .set(
                "postscreen_cache_map",
                "btree:$data_directory/postscreen_cache",
            )
            .set("default_process_limit", max_sessions * 2 + 50);
        let master_cf = MasterCf::new()
            .service(format!("{addr} inet n - n - 1 postscreen"))
            .service("smtpd     pass  -       -       n       -       -       smtpd")
            .service("dnsblog   unix  -       -       n       -       0       dnsblog")
            .service("tlsproxy  unix  -       -       n       -       0       tlsproxy");
        instance.write_config(&main_cf, &master_cf)?;
        let (main_cf, master_cf) = (main_cf.render(), master_cf.render());
        let version = Command::new("postconf")
            .args(["-d", "-h", "mail_version"])
            .output()
            .map(|o| format!("Postfix {}", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_else(|_| "Postfix".into());

        let cgroup = Cgroup::create("postfix")?;
        let out = std::fs::File::create(instance.path().join("start-fg.out"))?;
        let mut cmd = Command::new("postfix");
        cmd.arg("-c")
            .arg(instance.path())
            .arg("start-fg")
            .stdout(out.try_clone()?)
            .stderr(out);
        let proc = cgroup.spawn("postfix", &mut cmd, "starting postfix start-fg")?;
        let mut pf = Postfix {
            proc,
            cgroup,
            addr,
            instance,
            log_offset: 0,
            main_cf,
            master_cf,
            version,
        };
        if let Err(e) = wait_listening(addr, &mut pf.proc, Duration::from_secs(30)) {
            bail!(
                "{e:#}\n--- start-fg output:\n{}\n--- maillog:\n{}",
                std::fs::read_to_string(pf.instance.path().join("start-fg.out"))
                    .unwrap_or_default(),
                std::fs::read_to_string(pf.instance.maillog()).unwrap_or_default()
            );
        }
        eprintln!("postfix ({}) with postscreen on {addr}", pf.proc.pid());
        Ok(pf)
    }

    /// New maillog lines since the last call.
    fn new_lines(&mut self) -> Result<Vec<String>> {
        read_new_lines(&self.instance.maillog(), &mut self.log_offset)
    }

    /// After the probe session: postscreen must have passed 127.0.0.1 (`PASS NEW`). Skips
    /// everything logged so far.
    pub fn expect_passed(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            seen.extend(self.new_lines()?);
            if seen.iter().any(|l| l.contains("PASS NEW")) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "postscreen did not log PASS NEW for the probe session:\n{}",
                seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for the queue to drain and checks the maillog since the last call:
    /// `messages` deliveries `status=sent`, every session a postscreen `PASS OLD`, nothing
    /// rejected, deferred or warned about. Returns how long the drain took.
    pub fn verify(&mut self, messages: u64, timeout: Duration, what: &str) -> Result<Duration> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut lines = Vec::new();
        let mut sent = 0u64;
        loop {
            for l in self.new_lines()? {
                if l.contains("status=sent") {
                    sent += 1;
                }
                lines.push(l);
            }
            if sent >= messages && self.instance.queue_is_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: Postfix relayed {sent} of {messages} messages in {timeout:?} (queue {})",
                if self.instance.queue_is_empty() {
                    "empty"
                } else {
                    "not empty"
                }
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let drained = started.elapsed();
        // Late lines of the same sessions (disconnects) are read with the next run.
        ensure!(
            sent == messages,
            "{what}: Postfix logged {sent} deliveries status=sent, expected {messages}"
        );
        let problems: Vec<&String> = lines
            .iter()
            .filter(|l| PROBLEMS.iter().any(|p| l.contains(p)))
            .filter(|l| !BENIGN.iter().any(|b| l.contains(b)))
            .collect();
        ensure!(
            problems.is_empty(),
            "{what}: Postfix logged:\n{}",
            problems
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        let passed_new = lines.iter().filter(|l| l.contains("PASS NEW")).count();
        ensure!(
            passed_new == 0,
            "{what}: postscreen re-tested the client ({passed_new} PASS NEW)"
        );
        Ok(drained)
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let stopped = Command::new("postfix")
            .arg("-c")
            .arg(self.instance.path())
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!(
                "warning: postfix -c {} stop: {stopped:?}",
                self.instance.path().display()
            );
        }
        if !self.proc.wait_exit(Duration::from_secs(10)) {
            self.proc.stop();
        }
    }
}

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
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::proc::{Cgroup, Proc, free_port, read_new_lines, wait_listening};

/// `postfix -c DIR start-fg` in its own cgroup (master and every daemon it forks).
pub struct Postfix {
    pub proc: Proc,
    pub cgroup: Cgroup,
    pub addr: SocketAddr,
    dir: PathBuf,
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

fn postfix_ids() -> Result<(u32, u32)> {
    let name = std::ffi::CString::new("postfix").context("NUL")?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    ensure!(
        !pw.is_null(),
        "no `postfix` user (is the postfix package installed?)"
    );
    // SAFETY: checked non-null above.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

impl Postfix {
    pub fn start(dir: &Path, backend: SocketAddr, max_sessions: u32) -> Result<Self> {
        let dir = dir.join("postfix");
        for sub in ["queue", "data"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}/{sub}", dir.display()))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let (uid, gid) = postfix_ids()?;
        std::os::unix::fs::chown(dir.join("data"), Some(uid), Some(gid))
            .context("chown data_directory")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let d = dir.display();
        let limit = max_sessions * 2 + 50;
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = postfix.bench.test\n\
             mydestination =\n\
             mynetworks =\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             biff = no\n\
             relay_domains = example.org\n\
             relay_transport = relay:[{backend_ip}]:{backend_port}\n\
             default_transport = error:not relayed in this benchmark\n\
             smtpd_relay_restrictions = reject_unauth_destination\n\
             smtpd_peername_lookup = no\n\
             smtpd_forbid_bare_newline = yes\n\
             smtp_dns_support_level = disabled\n\
             smtpd_client_connection_count_limit = 0\n\
             postscreen_access_list =\n\
             postscreen_dnsbl_sites =\n\
             postscreen_greet_wait = 1s\n\
             postscreen_greet_action = enforce\n\
             postscreen_pipelining_enable = yes\n\
             postscreen_non_smtp_command_enable = yes\n\
             postscreen_bare_newline_enable = yes\n\
             postscreen_cache_map = btree:$data_directory/postscreen_cache\n\
             master_service_disable =\n\
             default_process_limit = {limit}\n",
            backend_ip = backend.ip(),
            backend_port = backend.port(),
        );
        std::fs::write(dir.join("main.cf"), &main_cf).context("writing main.cf")?;
        let master_cf = format!(
            "{addr} inet n - n - 1 postscreen\n\
             smtpd     pass  -       -       n       -       -       smtpd\n\
             dnsblog   unix  -       -       n       -       0       dnsblog\n\
             tlsproxy  unix  -       -       n       -       0       tlsproxy\n\
             pickup    unix  n       -       n       60      1       pickup\n\
             cleanup   unix  n       -       n       -       0       cleanup\n\
             qmgr      unix  n       -       n       300     1       qmgr\n\
             rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
             bounce    unix  -       -       n       -       0       bounce\n\
             defer     unix  -       -       n       -       0       bounce\n\
             trace     unix  -       -       n       -       0       bounce\n\
             verify    unix  -       -       n       -       1       verify\n\
             flush     unix  n       -       n       1000?   0       flush\n\
             proxymap  unix  -       -       n       -       -       proxymap\n\
             smtp      unix  -       -       n       -       -       smtp\n\
             relay     unix  -       -       n       -       -       smtp\n\
             error     unix  -       -       n       -       -       error\n\
             retry     unix  -       -       n       -       -       error\n\
             discard   unix  -       -       n       -       -       discard\n\
             anvil     unix  -       -       n       -       1       anvil\n\
             scache    unix  -       -       n       -       1       scache\n\
             postlog   unix-dgram n  -       n       -       1       postlogd\n"
        );
        std::fs::write(dir.join("master.cf"), &master_cf).context("writing master.cf")?;
        let version = Command::new("postconf")
            .args(["-d", "-h", "mail_version"])
            .output()
            .map(|o| format!("Postfix {}", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_else(|_| "Postfix".into());

        let cgroup = Cgroup::create("postfix")?;
        let out = std::fs::File::create(dir.join("start-fg.out"))?;
        let mut cmd = Command::new("postfix");
        cmd.arg("-c")
            .arg(&dir)
            .arg("start-fg")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        cgroup.enter_on_exec(&mut cmd);
        let child = cmd.spawn().context("starting postfix start-fg")?;
        let mut pf = Postfix {
            proc: Proc::new("postfix", child),
            cgroup,
            addr,
            dir,
            log_offset: 0,
            main_cf,
            master_cf,
            version,
        };
        if let Err(e) = wait_listening(addr, &mut pf.proc, Duration::from_secs(30)) {
            bail!(
                "{e:#}\n--- start-fg output:\n{}\n--- maillog:\n{}",
                std::fs::read_to_string(pf.dir.join("start-fg.out")).unwrap_or_default(),
                std::fs::read_to_string(pf.dir.join("maillog")).unwrap_or_default()
            );
        }
        eprintln!("postfix ({}) with postscreen on {addr}", pf.proc.pid());
        Ok(pf)
    }

    /// New maillog lines since the last call.
    fn new_lines(&mut self) -> Result<Vec<String>> {
        read_new_lines(&self.dir.join("maillog"), &mut self.log_offset)
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

    /// Whether the queue holds no message.
    fn queue_empty(&self) -> bool {
        ["incoming", "active", "deferred", "hold", "maildrop"]
            .iter()
            .all(|q| count_files(&self.dir.join("queue").join(q)) == 0)
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
            if sent >= messages && self.queue_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: Postfix relayed {sent} of {messages} messages in {timeout:?} (queue {})",
                if self.queue_empty() {
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
            .arg(&self.dir)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!(
                "warning: postfix -c {} stop: {stopped:?}",
                self.dir.display()
            );
        }
        if !self.proc.wait_exit(Duration::from_secs(10)) {
            self.proc.stop();
        }
    }
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

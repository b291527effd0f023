//! One private Postfix instance per test binary, the backend behind the gateways under test.
//!
//! [`shared`] starts it on first use (in `$TMPDIR/sgw-smtp-pf-<pid>`) and registers a `libc::atexit`
//! handler that stops it (`postfix -c DIR stop`, then a kill of the master by PID) and removes its
//! directory when the test process exits, tests failed or not. Instances left behind by a test
//! process that was killed are reaped by the next one that starts (their owner PID is dead).
//!
//! Listeners, each on a free 127.0.0.1 port:
//! - [`Postfix::xclient`]: XCLIENT allowed from 127.0.0.1 (`smtpd_authorized_xclient_hosts`);
//! - [`Postfix::proxy`]: every connection starts with a PROXY header
//!   (`smtpd_upstream_proxy_protocol = haproxy`).
//!
//! `example.org` is delivered by a `pipe` transport into one Maildir per recipient local part,
//! lowercased (`mail/<local>/new/`), so tests running in parallel never share a mailbox; every
//! other domain goes to `discard`, except [`REFUSED_RECIPIENT`], which the backend itself refuses
//! at RCPT (`550 5.1.1`) so tests can tell its refusals from the gateway's. The backend accepts
//! bare newlines
//! (`smtpd_forbid_bare_newline = no`) and trusts all of 127.0.0.0/8 (`mynetworks`): it is an
//! open relay for loopback clients, so the gateway is the only thing protecting it.

use std::{
    fs,
    io::Read,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use smtp_gateway_test_kit::{self as kit, Account, InstanceDir, MainCf, MasterCf};

/// Directory name prefix of the instances (followed by the owner's PID).
const PREFIX: &str = "sgw-smtp-pf-";

/// The one recipient the backend refuses itself (`check_recipient_access`).
pub const REFUSED_RECIPIENT: &str = "backend-refused@example.org";

/// A running private Postfix.
pub struct Postfix {
    /// Instance directory (`main.cf`, `master.cf`, `queue/`, `data/`, `mail/`, `maillog`).
    instance: InstanceDir,
    /// The XCLIENT-authorised listener.
    pub xclient: SocketAddr,
    /// The PROXY-protocol listener.
    pub proxy: SocketAddr,
}

static INSTANCE: OnceLock<Postfix> = OnceLock::new();

/// The instance of this test binary, started on first use.
pub fn shared() -> &'static Postfix {
    INSTANCE.get_or_init(|| {
        reap_stale();
        let mut last = String::new();
        for _ in 0..3 {
            match Postfix::start() {
                Ok(pf) => {
                    // SAFETY: registering a plain extern "C" function; it only touches INSTANCE.
                    unsafe { libc::atexit(stop_at_exit) };
                    return pf;
                }
                // Most likely a port taken between choosing it and Postfix binding it: retry.
                Err(e) => last = e,
            }
        }
        panic!("cannot start the Postfix backend: {last}");
    })
}

extern "C" fn stop_at_exit() {
    if let Some(pf) = INSTANCE.get() {
        if std::env::var_os("SGW_KEEP_POSTFIX").is_some() {
            eprintln!("postfix instance kept in {}", pf.instance.path().display());
            stop_instance(pf.instance.path());
            return;
        }
        stop_instance(pf.instance.path());
        let _ = fs::remove_dir_all(pf.instance.path());
    }
}

/// A port nobody listens on right now (127.0.0.1).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Runs a command with stdout/stderr captured, killed after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<(bool, String), String> {
    let dir = std::env::temp_dir();
    let out_path = dir.join(format!(
        "sgw-pf-cmd-{}-{:?}.out",
        std::process::id(),
        thread::current().id()
    ));
    let out = fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = fs::read_to_string(&out_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    match status {
        Some(s) => Ok((s.success(), text)),
        None => Err(format!("{cmd:?} timed out after {timeout:?}: {text}")),
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Stops the instance in `dir`: `postfix stop`, then SIGKILL of the master if it is still there.
pub fn stop_instance(dir: &Path) {
    let instance = InstanceDir::at(dir);
    let master = instance.master_pid();
    let _ = run(
        Command::new("postfix").arg("-c").arg(dir).arg("stop"),
        Duration::from_secs(10),
    );
    if let Some(pid) = master {
        let deadline = Instant::now() + Duration::from_secs(5);
        while instance.master_pid() == Some(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        if instance.master_pid() == Some(pid)
            && let Ok(pid) = i32::try_from(pid)
        {
            // SAFETY: the master of our own instance, by PID (checked to be a Postfix master).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Stops and removes instances whose owning test process no longer exists.
fn reap_stale() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() as i32 || pid_alive(owner) {
            continue;
        }
        let dir = entry.path();
        if dir.join("main.cf").exists() {
            stop_instance(&dir);
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

impl Postfix {
    fn start() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        if dir.exists() {
            stop_instance(&dir);
            let _ = fs::remove_dir_all(&dir);
        }
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let kit = |e: kit::Error| e.to_string();
        let instance = InstanceDir::create(&dir).map_err(kit)?;
        let nobody = Account::nobody().map_err(kit)?;
        instance.create_owned_dir("mail", nobody).map_err(kit)?;

        let xclient = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.display();
        let deliver = dir.join("deliver.sh");
        // One Maildir per (lowercased) local part; `/` cannot escape the mail directory.
        fs::write(
            &deliver,
            format!(
                "#!/bin/sh\n\
                 u=$(printf %s \"$1\" | tr '/' '_')\n\
                 d={d}/mail/\"$u\"\n\
                 mkdir -p \"$d/tmp\" \"$d/new\" \"$d/cur\" || exit 75\n\
                 f=\"$(date +%s.%N).$$\"\n\
                 cat > \"$d/tmp/$f\" || exit 75\n\
                 mv \"$d/tmp/$f\" \"$d/new/$f\" || exit 75\n"
            ),
        )
        .map_err(|e| io("deliver.sh", e))?;
        fs::set_permissions(&deliver, fs::Permissions::from_mode(0o755))
            .map_err(|e| io("chmod deliver.sh", e))?;
        fs::write(
            dir.join("refused_recipients"),
            format!("{REFUSED_RECIPIENT} 550 5.1.1 refused by the test backend\n"),
        )
        .map_err(|e| io("refused_recipients", e))?;
        let main_cf = MainCf::new(&instance, "backend.test")
            .set("virtual_mailbox_domains", "example.org")
            .set("virtual_mailbox_maps", "static:ok")
            .set("virtual_transport", "sink")
            .set("sink_destination_recipient_limit", 1)
            .set("default_transport", "discard")
            .set("relay_transport", "discard")
            .set("smtpd_authorized_xclient_hosts", "127.0.0.1")
            .set("smtpd_forbid_bare_newline", "no")
            .set("mynetworks", "127.0.0.0/8")
            .set(
                "smtpd_relay_restrictions",
                "permit_mynetworks, reject_unauth_destination",
            )
            .set(
                "smtpd_recipient_restrictions",
                format!("check_recipient_access texthash:{d}/refused_recipients"),
            )
            .set("queue_run_delay", "1s")
            .set("minimal_backoff_time", "1s")
            .set("maximal_backoff_time", "2s")
            .set("in_flow_delay", "0s")
            .set("default_process_limit", 200);
        let master_cf = MasterCf::new()
            .service(format!("{xclient} inet n - n - - smtpd"))
            .service(format!(
                "{proxy} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy"
            ))
            .service(format!(
                "sink      unix  -       n       n       -       -       pipe\n  \
                 flags=DRu user=nobody argv={deliver} ${{user}}",
                deliver = deliver.display()
            ));
        instance.write_config(&main_cf, &master_cf).map_err(kit)?;

        let (ok, out) = run(
            Command::new("postfix").arg("-c").arg(&dir).arg("start"),
            Duration::from_secs(60),
        )?;
        let pf = Postfix {
            instance,
            xclient,
            proxy,
        };
        let fail = |why: String| {
            let log = pf.maillog();
            stop_instance(pf.instance.path());
            let _ = fs::remove_dir_all(pf.instance.path());
            Err(format!(
                "{why}\n--- postfix output:\n{out}\n--- maillog:\n{log}"
            ))
        };
        if !ok {
            return fail("`postfix start` failed".into());
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for addr in [xclient, proxy] {
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return fail(format!("Postfix does not listen on {addr}"));
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(pf)
    }

    /// The whole maillog so far.
    pub fn maillog(&self) -> String {
        fs::read_to_string(self.instance.maillog()).unwrap_or_default()
    }

    /// The last `n` lines of the maillog (for failure messages).
    pub fn maillog_tail(&self, n: usize) -> String {
        kit::last_lines(&self.maillog(), n)
    }

    /// `mail/<local>/new` of a recipient local part.
    fn new_dir(&self, local: &str) -> PathBuf {
        self.instance
            .path()
            .join("mail")
            .join(local.to_lowercase().replace('/', "_"))
            .join("new")
    }

    /// Messages delivered to `local@example.org` so far (file contents, oldest first).
    pub fn messages(&self, local: &str) -> Vec<Vec<u8>> {
        let Ok(entries) = fs::read_dir(self.new_dir(local)) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        files
            .iter()
            .filter_map(|p| {
                let mut v = Vec::new();
                fs::File::open(p).ok()?.read_to_end(&mut v).ok()?;
                Some(v)
            })
            .collect()
    }

    /// How many messages `local@example.org` received.
    pub fn count(&self, local: &str) -> usize {
        fs::read_dir(self.new_dir(local))
            .map(|e| e.count())
            .unwrap_or(0)
    }

    /// Waits until `local@example.org` holds at least `n` messages (panics after `timeout`).
    pub fn wait_messages(&self, local: &str, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.count(local);
            if have >= n {
                return self.messages(local);
            }
            if Instant::now() > deadline {
                panic!(
                    "{local}@example.org: {have} message(s) after {timeout:?}, expected {n}\n\
                     --- maillog tail:\n{}",
                    self.maillog_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Number of finished backend sessions of client `ip` (as told by XCLIENT or PROXY).
    pub fn disconnects(&self, ip: IpAddr) -> usize {
        let needle = format!("[{ip}]");
        self.maillog()
            .lines()
            .filter(|l| l.contains("postfix/smtpd") && l.contains("disconnect from"))
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Waits (bounded) until `sessions` backend sessions of `ip` have ended and the queue is
    /// empty, plus a short grace: after this, whatever those sessions could deliver has been.
    pub fn settle(&self, ip: IpAddr, sessions: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.disconnects(ip) < sessions && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        while !self.instance.queue_is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

//! One `smtp-gateway run` daemon per test, with its own configuration, free listener ports, a
//! unique bpffs pin directory and its own temp directory.
//!
//! [`Gateway`]'s `Drop` stops the daemon (SIGTERM, SIGKILL after 5 s), runs
//! `smtp-gateway -c CONFIG detach` to remove the pins and deletes the directory; when the test is
//! panicking it prints the daemon's log first.
//!
//! Binary: `$SMTP_GATEWAY_BIN`, else `target/<profile>/smtp-gateway` next to the test's `deps/`
//! directory (run `cargo build` first).

use std::{
    fmt::Write as _,
    fs,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// What to run a gateway with. Keys are TOML fragments written as given.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    /// Listener kinds (`smtp`, `submission`, `smtps`), one free port each.
    pub listeners: Vec<&'static str>,
    /// Backends as (address, identity).
    pub backends: Vec<(SocketAddr, &'static str)>,
    /// Extra `[smtp]` keys: (`key`, TOML value).
    pub smtp: Vec<(&'static str, String)>,
    /// Generate a self-signed certificate (openssl CLI) and configure `[smtp.tls]`.
    pub tls: bool,
    /// `[relay]` section body.
    pub relay: String,
    /// More sections, appended as is (`[checks]`, `[helo]`, ...).
    pub extra: String,
}

impl GatewaySpec {
    /// One `smtp` listener, host name `gw.test`, `example.org` accepted, backend `backend`.
    pub fn new(backend: SocketAddr, identity: &'static str) -> Self {
        Self {
            listeners: vec!["smtp"],
            backends: vec![(backend, identity)],
            smtp: Vec::new(),
            tls: false,
            relay: "accepted_domains = [\"example.org\"]\n".into(),
            extra: String::new(),
        }
    }

    /// Adds an `[smtp]` key with a raw TOML value (`"1s"` with quotes, `2` without).
    pub fn smtp(mut self, key: &'static str, toml_value: impl Into<String>) -> Self {
        self.smtp.push((key, toml_value.into()));
        self
    }

    /// Adds a listener of `kind`.
    pub fn listener(mut self, kind: &'static str) -> Self {
        self.listeners.push(kind);
        self
    }

    /// Enables `[smtp.tls]` with a fresh self-signed certificate.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Appends raw TOML sections.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }
}

/// A running gateway.
pub struct Gateway {
    child: Option<Child>,
    /// Its directory (config, log, certificate).
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// Listener addresses, in the order of [`GatewaySpec::listeners`].
    pub listeners: Vec<SocketAddr>,
}

pub use crate::support::daemon::binary;

/// A port nobody listens on right now (127.0.0.1).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

use crate::support::daemon::strip_ansi;

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// The owner PID in `<prefix><pid>-<n>`.
fn owner(name: &str, prefix: &str) -> Option<i32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Removes what gateways of dead test processes left (their daemons died with them thanks to
/// PR_SET_PDEATHSIG, but pins and directories stay when the test process was killed).
fn reap_stale() {
    let me = std::process::id() as i32;
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match owner(&name, "sgw-smtp-") {
                Some(pid) if pid != me && !pid_alive(pid) => {
                    let config = std::env::temp_dir().join(format!("sgw-smtp-reap-{me}.toml"));
                    let toml = format!("[dataplane]\npin_dir = \"/sys/fs/bpf/{name}\"\n");
                    if fs::write(&config, toml).is_ok() {
                        detach(&config);
                        let _ = fs::remove_file(&config);
                    }
                }
                _ => {}
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner(&name, "sgw-smtp-gw-")
                && pid != me
                && !pid_alive(pid)
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Writes a self-signed EC certificate for `gw.test` into `dir`; returns (cert, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=gw.test"])
        .args(["-addext", "subjectAltName=DNS:gw.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

impl Gateway {
    /// Starts a gateway and waits until it logs `ready` (its listeners are bound by then).
    pub fn start(spec: GatewaySpec) -> Gateway {
        static REAPED: Once = Once::new();
        REAPED.call_once(reap_stale);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("sgw-smtp-gw-{pid}-{n}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("gateway dir");
        let tls = spec.tls.then(|| self_signed(&dir));
        let pin_dir = format!("/sys/fs/bpf/sgw-smtp-{pid}-{n}");
        let config = dir.join("gateway.toml");
        let log = dir.join("gateway.log");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let listeners: Vec<SocketAddr> = spec
                .listeners
                .iter()
                .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
                .collect();
            let mut toml = String::new();
            let _ = writeln!(toml, "[dataplane]\npin_dir = \"{pin_dir}\"\n");
            let _ = writeln!(toml, "[smtp]\nhostname = \"gw.test\"");
            let list: Vec<String> = spec
                .listeners
                .iter()
                .zip(&listeners)
                .map(|(kind, addr)| format!("{{ address = \"{addr}\", kind = \"{kind}\" }}"))
                .collect();
            let _ = writeln!(toml, "listeners = [{}]", list.join(", "));
            for (key, value) in &spec.smtp {
                let _ = writeln!(toml, "{key} = {value}");
            }
            if let Some((cert, key)) = &tls {
                let _ = writeln!(
                    toml,
                    "\n[smtp.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"",
                    cert.display(),
                    key.display()
                );
            }
            let servers: Vec<String> = spec
                .backends
                .iter()
                .map(|(addr, id)| format!("{{ address = \"{addr}\", identity = \"{id}\" }}"))
                .collect();
            let _ = writeln!(toml, "\n[backend]\nservers = [{}]", servers.join(", "));
            let _ = writeln!(toml, "\n[relay]\n{}", spec.relay);
            toml.push_str(&spec.extra);
            // Several gateways run at once: none of them binds the default metrics port.
            let _ = writeln!(toml, "\n[metrics]\nenabled = false");
            fs::write(&config, &toml).expect("write gateway config");
            let log_file = fs::File::create(&log).expect("gateway log");
            let mut cmd = Command::new(binary());
            cmd.arg("-c")
                .arg(&config)
                .arg("run")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log fd"))
                .stderr(log_file);
            // SAFETY: prctl is async-signal-safe. If the test process dies without running
            // destructors (SIGKILL), the daemon gets SIGTERM instead of running on.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("spawn smtp-gateway");
            let mut child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = strip_ansi(&fs::read_to_string(&log).unwrap_or_default());
                if text.lines().any(|l| l.trim_end().ends_with(" ready")) {
                    return Gateway {
                        child,
                        dir,
                        config,
                        log,
                        listeners,
                    };
                }
                let exited = child
                    .as_mut()
                    .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                    .unwrap_or(true);
                if exited || Instant::now() > deadline {
                    last_log = format!("config:\n{toml}\nlog:\n{text}");
                    // Not a test failure yet: stop it and detach its pins, keep the directory.
                    terminate(child.take());
                    detach(&config);
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            if !last_log.contains("cannot listen") {
                break;
            }
            // A chosen port was taken in the meantime: try other ports.
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("smtp-gateway did not become ready\n{last_log}");
    }

    /// The first listener.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0]
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Stops the daemon and removes its pins (idempotent).
    fn stop(&mut self) {
        terminate(self.child.take());
        detach(&self.config);
    }
}

/// SIGTERM, then SIGKILL after 5 s; reaps the child.
fn terminate(child: Option<Child>) {
    let Some(mut child) = child else {
        return;
    };
    // SAFETY: our own child, by PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

/// `smtp-gateway -c CONFIG detach`: removes the pins of that configuration.
fn detach(config: &Path) {
    let out = Command::new(binary())
        .arg("-c")
        .arg(config)
        .arg("detach")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "smtp-gateway detach ({}): {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("smtp-gateway detach: {e}"),
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- gateway log ({}), last lines:\n{}",
                self.dir.display(),
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

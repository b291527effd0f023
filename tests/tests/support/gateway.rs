//! One `smtp-gateway run` daemon per test, with its own configuration, free listener ports, a
//! unique bpffs pin directory and its own temp directory.
//!
//! The daemon is started, waited for and stopped by the test kit's launcher
//! ([`kit::DaemonProcess`]). [`Gateway`]'s `Drop` stops it (SIGTERM, SIGKILL after 5 s), runs
//! `smtp-gateway -c CONFIG detach` to remove the pins and deletes the directory; when the test is
//! panicking it prints the daemon's log first. A test may kill it (`kill9`, a crash) or stop it
//! and start it again on the same files (`restart`).
//!
//! Binary: `$SMTP_GATEWAY_BIN`, else `target/<profile>/smtp-gateway` next to the test's `deps/`
//! directory (run `cargo build` first).

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use smtp_gateway_test_kit::{self as kit, DaemonProcess, Wait, launcher};

/// How long a gateway gets to log that it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long a stopped gateway gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// What to run a gateway with. Keys are TOML fragments written as given.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    /// Listener kinds (`smtp`, `submission`, `smtps`) and profiles (`None`: the kind's), one
    /// free port each.
    pub listeners: Vec<(&'static str, Option<&'static str>)>,
    /// Backends as (address, identity).
    pub backends: Vec<(SocketAddr, &'static str)>,
    /// Extra `[smtp]` keys: (`key`, TOML value).
    pub smtp: Vec<(&'static str, String)>,
    /// Extra `[backend]` keys: (`key`, TOML value).
    pub backend: Vec<(&'static str, String)>,
    /// Generate a self-signed certificate (openssl CLI) and configure `[smtp.tls]`.
    pub tls: bool,
    /// `[relay]` section body.
    pub relay: String,
    /// More sections, appended as is (`[checks]`, `[helo]`, ...).
    pub extra: String,
    /// Environment variables of the daemon (e.g. `RUST_LOG`).
    pub env: Vec<(&'static str, String)>,
}

impl GatewaySpec {
    /// One `smtp` listener, host name `gw.test`, `example.org` accepted, backend `backend`.
    pub fn new(backend: SocketAddr, identity: &'static str) -> Self {
        Self {
            listeners: vec![("smtp", None)],
            backends: vec![(backend, identity)],
            smtp: Vec::new(),
            backend: Vec::new(),
            tls: false,
            relay: "accepted_domains = [\"example.org\"]\n".into(),
            extra: String::new(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable of the daemon.
    pub fn env(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }

    /// Adds an `[smtp]` key with a raw TOML value (`"1s"` with quotes, `2` without).
    pub fn smtp(mut self, key: &'static str, toml_value: impl Into<String>) -> Self {
        self.smtp.push((key, toml_value.into()));
        self
    }

    /// Adds a `[backend]` key with a raw TOML value.
    pub fn backend(mut self, key: &'static str, toml_value: impl Into<String>) -> Self {
        self.backend.push((key, toml_value.into()));
        self
    }

    /// Adds a listener of `kind`.
    pub fn listener(mut self, kind: &'static str) -> Self {
        self.listeners.push((kind, None));
        self
    }

    /// Adds a listener of `kind` running `profile` (`listeners = [{ …, profile = "…" }]`).
    pub fn listener_with_profile(mut self, kind: &'static str, profile: &'static str) -> Self {
        self.listeners.push((kind, Some(profile)));
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
    /// The running daemon, until stopped.
    child: Option<DaemonProcess>,
    /// Its directory (config, log, certificate).
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// Listener addresses, in the order of [`GatewaySpec::listeners`].
    pub listeners: Vec<SocketAddr>,
    /// The daemon's environment, for restarts.
    env: Vec<(&'static str, String)>,
    /// Daemons started so far (each restart logs to its own file).
    starts: usize,
}

pub use crate::support::daemon::binary;

/// A port nobody listens on right now (127.0.0.1).
pub fn free_port() -> u16 {
    launcher::free_port().unwrap_or_else(|e| panic!("{e}"))
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
    smtp_gateway_test_kit::tls::self_signed(dir, "gw.test").unwrap_or_else(|e| panic!("{e}"))
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
                .map(|((kind, profile), addr)| match profile {
                    Some(p) => {
                        format!("{{ address = \"{addr}\", kind = \"{kind}\", profile = \"{p}\" }}")
                    }
                    None => format!("{{ address = \"{addr}\", kind = \"{kind}\" }}"),
                })
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
            for (key, value) in &spec.backend {
                let _ = writeln!(toml, "{key} = {value}");
            }
            let _ = writeln!(toml, "\n[relay]\n{}", spec.relay);
            toml.push_str(&spec.extra);
            // Every gateway keeps its state in its own directory unless the test chose a store.
            if !spec.extra.contains("[store]") {
                let _ = writeln!(
                    toml,
                    "\n[store]\npath = \"{}\"",
                    dir.join("state.redb").display()
                );
            }
            // Several gateways run at once: none of them binds the default metrics port.
            let _ = writeln!(toml, "\n[metrics]\nenabled = false");
            fs::write(&config, &toml).expect("write gateway config");
            let child = spawn(&config, &log, &spec.env);
            if wait_ready(&child) {
                return Gateway {
                    child: Some(child),
                    dir,
                    config,
                    log,
                    listeners,
                    env: spec.env,
                    starts: 1,
                };
            }
            last_log = format!("config:\n{toml}\nlog:\n{}", child.log());
            // Not a test failure yet: stop it and detach its pins, keep the directory.
            terminate(Some(child));
            detach(&config);
            if !last_log.contains("cannot listen") {
                break;
            }
            // A chosen port was taken in the meantime: try other ports.
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("smtp-gateway did not become ready\n{last_log}");
    }

    /// Kills the daemon with SIGKILL (no shutdown work at all: a crash), keeping its pins,
    /// directory and configuration.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the gateway");
        }
    }

    /// Stops the daemon (SIGTERM, as `stop` does) keeping its pins, directory and config.
    pub fn terminate(&mut self) {
        terminate(self.child.take());
    }

    /// Starts the daemon again (after [`Self::kill9`] or [`Self::terminate`]) on the same
    /// listeners, with its configuration changed by `edit`, logging to a new file; waits until
    /// it is ready.
    pub fn restart(&mut self, edit: impl FnOnce(String) -> String) {
        assert!(
            self.child.is_none(),
            "stop the gateway before restarting it"
        );
        let text = fs::read_to_string(&self.config).expect("read the gateway config");
        fs::write(&self.config, edit(text)).expect("write the gateway config");
        self.starts += 1;
        self.log = self.dir.join(format!("gateway-{}.log", self.starts));
        let child = spawn(&self.config, &self.log, &self.env);
        assert!(
            wait_ready(&child),
            "smtp-gateway did not become ready again:\n{}",
            child.log()
        );
        self.child = Some(child);
    }

    /// Waits (bounded, woken by each write to the log) for a line of the current log that
    /// contains every one of `needles`.
    pub fn wait_logged(&self, needles: &[&str], within: Duration) -> bool {
        let found = |log: &str| log.lines().any(|l| needles.iter().all(|n| l.contains(n)));
        match &self.child {
            Some(child) => child.wait_for(within, found) == Wait::Done,
            None => found(&self.log()),
        }
    }

    /// How many lines of the current log contain every one of `needles`.
    pub fn count_logged(&self, needles: &[&str]) -> usize {
        count_lines(&self.log(), needles)
    }

    /// Waits (bounded, woken by each write to the log) until at least `n` lines of the current
    /// log contain every one of `needles`.
    pub fn wait_logged_n(&self, needles: &[&str], n: usize, within: Duration) -> bool {
        match &self.child {
            Some(child) => {
                child.wait_for(within, |log| count_lines(log, needles) >= n) == Wait::Done
            }
            None => self.count_logged(needles) >= n,
        }
    }

    /// `smtp-gateway -c CONFIG <args>`; panics unless it succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run smtp-gateway");
        assert!(
            out.status.success(),
            "smtp-gateway {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Starts `smtp-gateway -c config run` logging to `log`, with `env`.
fn spawn(config: &Path, log: &Path, env: &[(&'static str, String)]) -> DaemonProcess {
    let mut command = launcher::run_command(&binary(), config);
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    // If the test process dies without running destructors (SIGKILL), the daemon gets
    // SIGTERM instead of running on.
    DaemonProcess::spawn(command, log, libc::SIGTERM)
        .unwrap_or_else(|e| panic!("spawn smtp-gateway: {e}"))
}

/// Whether the daemon logged that it is ready (its listeners are bound by then).
fn wait_ready(child: &DaemonProcess) -> bool {
    child.wait_for(READY_WITHIN, |text| {
        text.lines().any(|l| l.trim_end().ends_with(" ready"))
    }) == Wait::Done
}

/// SIGTERM, then SIGKILL after 5 s; reaps the child.
fn terminate(child: Option<DaemonProcess>) {
    if let Some(mut child) = child
        && let Err(e) = child.stop(STOP_GRACE)
    {
        eprintln!("stopping smtp-gateway: {e}");
    }
}

/// `smtp-gateway -c CONFIG detach`: removes the pins of that configuration.
fn detach(config: &Path) {
    match launcher::detach(&binary(), config) {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "smtp-gateway detach ({}): {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("{e}"),
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "--- gateway log ({}), last lines:\n{}",
                self.dir.display(),
                kit::last_lines(&self.log(), 80)
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Lines of `log` that contain every one of `needles`.
fn count_lines(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

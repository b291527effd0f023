//! The contender under test: `smtp-gateway run` with every cheap check on, and what it logged.

use std::{
    collections::BTreeMap,
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use smtp_gateway_tests::gateway_config;

use crate::proc::{Cgroup, Proc, free_port, read_new_lines};

/// What a gateway logged (JSON lines) since a point.
#[derive(Default, Debug)]
pub struct LogStats {
    pub sessions: u64,
    pub messages: u64,
    pub checks: Vec<String>,
    pub problems: Vec<String>,
    /// Sessions per `client_name` logged (`-` when no name was looked up).
    pub client_names: BTreeMap<String, u64>,
}

/// `smtp-gateway -c CONFIG run` with a JSON log, in its own cgroup; `Drop` stops it and runs
/// `detach`.
pub struct Gateway {
    // Field order is drop order: the process stops before its cgroup is removed.
    pub proc: Proc,
    pub cgroup: Cgroup,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    log_offset: u64,
    pub addr: SocketAddr,
    /// The implicit-TLS (`smtps`, profile `mx`) listener, when started with one.
    pub smtps_addr: Option<SocketAddr>,
    pub toml: String,
}

impl Gateway {
    /// Starts a gateway in front of `backend` with extra `[smtp]` keys and waits for `ready`.
    pub fn start(dir: &Path, n: usize, backend: SocketAddr, smtp_extra: &str) -> Result<Self> {
        Self::start_with(dir, n, backend, smtp_extra, "")
    }

    /// [`Gateway::start`] with `sections` (whole TOML sections, e.g. `[dns]`) appended to the
    /// benchmark configuration.
    pub fn start_with(
        dir: &Path,
        n: usize,
        backend: SocketAddr,
        smtp_extra: &str,
        sections: &str,
    ) -> Result<Self> {
        Self::start_inner(dir, n, backend, smtp_extra, sections, false)
    }

    /// [`Gateway::start_with`] with `tls_section` (`[smtp.tls]`) as its sections, so that the
    /// plain listener offers STARTTLS, and a second listener of kind `smtps` (implicit TLS)
    /// running the `mx` profile, as the plain one does: the same checks on both.
    pub fn start_tls(
        dir: &Path,
        n: usize,
        backend: SocketAddr,
        smtp_extra: &str,
        tls_section: &str,
    ) -> Result<Self> {
        Self::start_inner(dir, n, backend, smtp_extra, tls_section, true)
    }

    fn start_inner(
        dir: &Path,
        n: usize,
        backend: SocketAddr,
        smtp_extra: &str,
        sections: &str,
        smtps: bool,
    ) -> Result<Self> {
        let binary = smtp_gateway_tests::gateway_binary()?;
        let pin_dir = format!("/sys/fs/bpf/sgw-bench-smtp-{}-{n}", std::process::id());
        let config_name = format!("gateway-{n}.toml");
        let log = dir.join(format!("gateway-{n}.log"));
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let smtps_addr = if smtps {
                Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
            } else {
                None
            };
            let mut listeners = format!("{{ address = \"{addr}\" }}");
            if let Some(a) = smtps_addr {
                listeners.push_str(&format!(
                    ", {{ address = \"{a}\", kind = \"smtps\", profile = \"mx\" }}"
                ));
            }
            let mut toml = gateway_config::toml_listeners(
                &format!("pin_dir = \"{pin_dir}\"\ninterfaces = []\n"),
                &listeners,
                smtp_extra,
                backend,
            );
            if !sections.is_empty() {
                toml.push('\n');
                toml.push_str(sections);
            }
            let config = gateway_config::write(dir, &config_name, &toml)?;
            let out = File::create(&log).context("creating the gateway log")?;
            let err = out.try_clone()?;
            let cgroup = Cgroup::create(&format!("gateway-{n}"))?;
            let mut cmd = Command::new(&binary);
            cmd.arg("-c")
                .arg(&config)
                .args(["--log-format", "json", "run"])
                .env_remove("RUST_LOG")
                .stdout(out)
                .stderr(err);
            let what = format!("starting {}", binary.display());
            let proc = cgroup.spawn("smtp-gateway", &mut cmd, &what)?;
            let mut gw = Gateway {
                proc,
                cgroup,
                binary: binary.clone(),
                config: config.clone(),
                log: log.clone(),
                log_offset: 0,
                addr,
                smtps_addr,
                toml,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text
                    .lines()
                    .any(|l| log_message(l).as_deref() == Some("ready"))
                {
                    eprintln!("smtp-gateway ({}) on {addr}", gw.proc.pid());
                    // Skip the start-up lines.
                    gw.read_log(&mut LogStats::default())?;
                    return Ok(gw);
                }
                if let Some(status) = gw.proc.exited() {
                    last_error = format!("exited ({status}):\n{text}");
                    break;
                }
                if Instant::now() > deadline {
                    last_error = format!("not ready after 20 s:\n{text}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(gw);
            if !last_error.contains("cannot listen") {
                break;
            }
        }
        bail!("smtp-gateway did not start: {last_error}")
    }

    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid()))
            .context("reading the gateway's /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in the gateway's /proc status")
    }

    /// Adds what the gateway logged since the last call (complete lines only).
    pub fn read_log(&mut self, stats: &mut LogStats) -> Result<()> {
        for line in read_new_lines(&self.log, &mut self.log_offset)? {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                if !line.trim().is_empty() {
                    stats.problems.push(format!("unparsed log line: {line}"));
                }
                continue;
            };
            let fields = &v["fields"];
            let message = fields["message"].as_str().unwrap_or_default();
            let level = v["level"].as_str().unwrap_or_default();
            if level == "WARN" || level == "ERROR" {
                stats.problems.push(line.clone());
            }
            match message {
                "session" => {
                    stats.sessions += 1;
                    stats.messages += fields["messages"].as_u64().unwrap_or(0);
                    let name = fields["client_name"].as_str().unwrap_or("?");
                    *stats.client_names.entry(name.to_string()).or_default() += 1;
                }
                "check fired" => stats
                    .checks
                    .push(fields["check"].as_str().unwrap_or("?").to_string()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads the log until `sessions` sessions have been logged since the last reading, or 10 s.
    pub fn wait_sessions(&mut self, sessions: u64) -> Result<LogStats> {
        let mut stats = LogStats::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.read_log(&mut stats)?;
            if stats.sessions >= sessions || Instant::now() > deadline {
                return Ok(stats);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks a run of `messages` one-message sessions: each logged, carrying its message, no
    /// check fired, no warning or error. Returns what was logged.
    pub fn verify(&mut self, messages: u64, what: &str) -> Result<LogStats> {
        let stats = self.wait_sessions(messages)?;
        ensure!(
            stats.sessions == messages && stats.messages == messages,
            "{what}: the gateway logged {} sessions carrying {} messages, expected {messages}",
            stats.sessions,
            stats.messages
        );
        ensure!(
            stats.checks.is_empty(),
            "{what}: checks fired in the gateway: {:?}",
            stats.checks
        );
        stats.ensure_no_problems(what)?;
        Ok(stats)
    }
}

impl LogStats {
    /// Fails, quoting them, when the gateway logged warnings or errors; `what` names the run.
    pub fn ensure_no_problems(&self, what: &str) -> Result<()> {
        ensure!(
            self.problems.is_empty(),
            "{what}: the gateway logged warnings or errors:\n{}",
            self.problems.join("\n")
        );
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.proc.stop();
        match Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .arg("detach")
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: smtp-gateway detach ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: smtp-gateway detach: {e}"),
        }
    }
}

/// `fields.message` of a JSON log line.
fn log_message(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["fields"]["message"].as_str().map(str::to_string)
}

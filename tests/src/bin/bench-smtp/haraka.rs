//! Haraka (node) with `queue/smtp_forward` to the sink: a JavaScript SMTP server that relays each
//! message live, acknowledging it once the sink did.
//!
//! Installed by `cargo xtask setup` with npm into `.tools/haraka` (pinned version). The instance
//! directory comes from `haraka -i DIR`; its config then keeps only `rcpt_to.in_host_list`
//! (example.org) and `queue/smtp_forward` to the sink's literal address, so no plugin queries
//! DNS (the default `mail_from.is_resolvable` would).
//!
//! Haraka leaves Nagle's algorithm on for its sockets (no `setNoDelay` anywhere in Haraka 3.3),
//! so a client that waits for each reply stalls on delayed ACKs for tens of milliseconds per
//! session on loopback, which would measure the kernel's timers rather than Haraka. The gateway
//! sets TCP_NODELAY on both sides, so Haraka gets the same: a preload (`NODE_OPTIONS=--require
//! nodelay.js`, inherited by its workers) sets it on every socket it accepts or opens.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::proc::{Cgroup, Proc, free_port, read_new_lines, wait_listening};

/// TCP_NODELAY on every socket Haraka accepts (`connection` events) or opens (`connect`).
pub const NODELAY_JS: &str = "\
const net = require('node:net');
const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  this.setNoDelay(true);
  return connect.apply(this, args);
};
const emit = net.Server.prototype.emit;
net.Server.prototype.emit = function (event, socket, ...rest) {
  if (event === 'connection' && socket && typeof socket.setNoDelay === 'function') {
    socket.setNoDelay(true);
  }
  return emit.call(this, event, socket, ...rest);
};
";

/// Where `cargo xtask setup` installs Haraka.
pub fn install_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/haraka");
    dir.canonicalize().unwrap_or(dir)
}

/// `node .tools/haraka/node_modules/.bin/haraka -c DIR`, in its own cgroup (workers included).
pub struct Haraka {
    /// Held for its Drop: the process stops with this value.
    _proc: Proc,
    pub cgroup: Cgroup,
    pub addr: SocketAddr,
    log: PathBuf,
    log_offset: u64,
    pub version: String,
    pub plugins: String,
    pub nodes: usize,
}

impl Haraka {
    pub fn start(dir: &Path, backend: SocketAddr) -> Result<Self> {
        let bin = install_dir().join("node_modules/.bin/haraka");
        ensure!(
            bin.exists(),
            "{} not found: run `cargo xtask setup` (installs Haraka with npm)",
            bin.display()
        );
        let pkg = std::fs::read_to_string(install_dir().join("node_modules/Haraka/package.json"))
            .context("reading Haraka's package.json")?;
        let version = serde_json::from_str::<serde_json::Value>(&pkg)
            .ok()
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into());
        let node = Command::new("node")
            .arg("--version")
            .output()
            .context("running `node --version`")?;
        let version = format!(
            "Haraka {version} on node {}",
            String::from_utf8_lossy(&node.stdout).trim()
        );
        let home = dir.join("haraka");
        let out = Command::new("node")
            .arg(&bin)
            .arg("-i")
            .arg(&home)
            .stdin(Stdio::null())
            .output()
            .context("running `haraka -i`")?;
        ensure!(
            out.status.success(),
            "haraka -i {} failed: {}",
            home.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let nodes = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = home.join("config");
        let write = |name: &str, text: &str| {
            std::fs::write(config.join(name), text)
                .with_context(|| format!("writing Haraka's config/{name}"))
        };
        let plugins = "rcpt_to.in_host_list\nqueue/smtp_forward\n";
        write("plugins", plugins)?;
        write("host_list", "example.org\n")?;
        write("me", "haraka.bench.test\n")?;
        // One worker per CPU (Haraka's performance advice), quick stop.
        write(
            "smtp.ini",
            &format!("listen={addr}\nnodes={nodes}\nforce_shutdown_timeout=2\n"),
        )?;
        write(
            "smtp_forward.ini",
            &format!(
                "host={}\nport={}\nenable_tls=false\n",
                backend.ip(),
                backend.port()
            ),
        )?;
        write("log.ini", "[main]\nlevel=warn\ntimestamps=true\n")?;

        let nodelay = home.join("nodelay.js");
        std::fs::write(&nodelay, NODELAY_JS).context("writing nodelay.js")?;

        let cgroup = Cgroup::create("haraka")?;
        let log = dir.join("haraka.log");
        let out = File::create(&log)?;
        let mut cmd = Command::new("node");
        cmd.arg(&bin)
            .env("NODE_OPTIONS", format!("--require {}", nodelay.display()))
            .arg("-c")
            .arg(&home)
            .stdout(out.try_clone()?)
            .stderr(out);
        let mut proc = cgroup.spawn("haraka", &mut cmd, "starting Haraka")?;
        wait_listening(addr, &mut proc, Duration::from_secs(30))
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        // Workers listen one by one: give them a moment, then skip the start-up lines.
        std::thread::sleep(Duration::from_secs(2));
        let mut log_offset = 0;
        read_new_lines(&log, &mut log_offset)?;
        eprintln!("haraka ({}, {nodes} workers) on {addr}", proc.pid());
        Ok(Self {
            _proc: proc,
            cgroup,
            addr,
            log,
            log_offset,
            version,
            plugins: plugins.trim().replace('\n', ", "),
            nodes,
        })
    }

    /// Fails when Haraka logged a warning or worse since the last call.
    pub fn verify(&mut self, what: &str) -> Result<()> {
        let bad: Vec<String> = read_new_lines(&self.log, &mut self.log_offset)?
            .into_iter()
            .filter(|l| {
                ["[WARN]", "[ERROR]", "[CRIT]", "[ALERT]", "[EMERG]"]
                    .iter()
                    .any(|tag| l.contains(tag))
            })
            .collect();
        ensure!(bad.is_empty(), "{what}: Haraka logged:\n{}", bad.join("\n"));
        Ok(())
    }
}

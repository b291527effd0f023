//! HAProxy in TCP mode in front of the sink: the cost of a plain TCP relay, no SMTP inspection;
//! optionally terminating TLS (`bind ... ssl crt`: implicit TLS, as an `smtps` port) and relaying
//! the plaintext, which is the nearest HAProxy comes to a gateway doing STARTTLS (it has no SMTP
//! mode to answer STARTTLS with).

use std::{fs::File, net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};

use crate::proc::{Cgroup, Proc, free_port, wait_listening};

/// `haproxy -db -f haproxy.cfg` (foreground), in its own cgroup.
pub struct Haproxy {
    /// Held for its Drop: the process stops with this value.
    _proc: Proc,
    pub cgroup: Cgroup,
    pub addr: SocketAddr,
    pub config: String,
    pub version: String,
}

impl Haproxy {
    /// `tls`: the PEM file (certificate and key) to terminate TLS with; `name` tells the
    /// configuration, log file and cgroup apart.
    pub fn start(
        dir: &Path,
        name: &str,
        backend: SocketAddr,
        max_sessions: u32,
        tls: Option<&Path>,
    ) -> Result<Self> {
        let version = Command::new("haproxy")
            .arg("-v")
            .output()
            .context("running `haproxy -v` (Debian package haproxy; `cargo xtask setup`)")?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("haproxy")
            .to_string();
        let cgroup = Cgroup::create(name)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let maxconn = max_sessions * 20 + 100;
        let ssl = tls.map_or(String::new(), |pem| format!(" ssl crt {}", pem.display()));
        // With TLS, the gateway's own order of TLS 1.3 suites (smtp/tls.rs: AES-128-GCM first,
        // the server's choice), so that both do the same cryptography; HAProxy enforces the
        // server's order by default.
        let suites = if tls.is_some() {
            "\x20   ssl-default-bind-ciphersuites \
             TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256\n"
        } else {
            ""
        };
        let config = format!(
            "global\n\
             \x20   maxconn {maxconn}\n\
             {suites}\
             \n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \n\
             frontend smtp\n\
             \x20   bind {addr}{ssl}\n\
             \x20   default_backend sink\n\
             \n\
             backend sink\n\
             \x20   server sink {backend}\n"
        );
        let path = dir.join(format!("{name}.cfg"));
        std::fs::write(&path, &config).with_context(|| format!("writing {}", path.display()))?;
        let log_path = dir.join(format!("{name}.log"));
        let log = File::create(&log_path)?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut proc = cgroup.spawn("haproxy", &mut cmd, "starting haproxy")?;
        wait_listening(addr, &mut proc, Duration::from_secs(10))
            .with_context(|| std::fs::read_to_string(&log_path).unwrap_or_default())?;
        eprintln!("haproxy ({}) on {addr}", proc.pid());
        Ok(Self {
            _proc: proc,
            cgroup,
            addr,
            config,
            version,
        })
    }
}

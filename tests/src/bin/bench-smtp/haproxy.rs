//! HAProxy in TCP mode in front of the sink: the cost of a plain TCP relay, no SMTP inspection.

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
    pub fn start(dir: &Path, backend: SocketAddr, max_sessions: u32) -> Result<Self> {
        let version = Command::new("haproxy")
            .arg("-v")
            .output()
            .context("running `haproxy -v` (Debian package haproxy; `cargo xtask setup`)")?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("haproxy")
            .to_string();
        let cgroup = Cgroup::create("haproxy")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let maxconn = max_sessions * 20 + 100;
        let config = format!(
            "global\n\
             \x20   maxconn {maxconn}\n\
             \n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \n\
             frontend smtp\n\
             \x20   bind {addr}\n\
             \x20   default_backend sink\n\
             \n\
             backend sink\n\
             \x20   server sink {backend}\n"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, &config).with_context(|| format!("writing {}", path.display()))?;
        let log = File::create(dir.join("haproxy.log"))?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut proc = cgroup.spawn("haproxy", &mut cmd, "starting haproxy")?;
        wait_listening(addr, &mut proc, Duration::from_secs(10)).with_context(|| {
            std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
        })?;
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

//! `smtp-gateway` in a test's gateway namespace: the daemon (at most one at a time) and the CLI
//! on the same configuration, with `stats --json` read back. Shared by the network-namespace
//! suites. The daemon is started, waited for and stopped by the test kit's launcher
//! ([`kit::DaemonProcess`]).

use std::{
    net::IpAddr,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use smtp_gateway::dataplane::PinLayout;
// The suites (and support/gateway.rs) strip the daemon's log colours through this module.
pub use smtp_gateway_test_kit::strip_ansi;
use smtp_gateway_test_kit::{self as kit, DaemonProcess, Wait};

use super::netns::{nsenter, run, wait_until};

/// The daemon binary: `$SMTP_GATEWAY_BIN`, else `smtp-gateway` next to this test's `deps/`.
/// Panics with how to build it when it is missing.
pub fn binary() -> PathBuf {
    kit::profile_dir()
        .and_then(|dir| kit::gateway_binary(&dir))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `smtp-gateway` in the gateway namespace: the daemon (at most one at a time) and the CLI on the
/// same configuration. `Drop` kills the daemon by PID, detaches (program, links, pins) and removes
/// the lab's directory.
pub struct Daemon {
    ns: String,
    iface: String,
    bin: PathBuf,
    /// The lab's directory: config, daemon logs, the backend's message dumps.
    pub dir: PathBuf,
    config: PathBuf,
    pub pin_dir: PathBuf,
    /// The running daemon, until stopped.
    child: Option<DaemonProcess>,
    /// Logs of every daemon start, in order.
    logs: Vec<PathBuf>,
}

impl Daemon {
    /// Writes `config` (a complete file) to `dir` and removes pins a dead process with the same
    /// PID may have left.
    pub fn new(ns: &str, iface: &str, dir: &Path, pin_dir: &Path, config: &str) -> Self {
        let path = dir.join("gateway.toml");
        // Every daemon keeps its state in its own directory unless the test chose a store.
        let config = if config.contains("[store]") {
            config.to_string()
        } else {
            format!(
                "{config}\n[store]\npath = \"{}\"\n",
                dir.join("state.redb").display()
            )
        };
        std::fs::write(&path, config).expect("write the gateway config");
        let daemon = Daemon {
            ns: ns.to_string(),
            iface: iface.to_string(),
            bin: binary(),
            dir: dir.to_path_buf(),
            config: path,
            pin_dir: pin_dir.to_path_buf(),
            child: None,
            logs: Vec::new(),
        };
        if daemon.pin_dir.exists() {
            daemon.cli_ok(&["detach"]);
        }
        daemon
    }

    pub fn link_pin(&self) -> PathBuf {
        PinLayout::new(&self.pin_dir).link(&self.iface)
    }

    /// Starts `smtp-gateway run`; returns once the link is pinned and the daemon logged "ready"
    /// (its listeners are bound by then). Panics with the log otherwise.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the daemon already runs");
        let log = self.dir.join(format!("daemon-{}.log", self.logs.len() + 1));
        let mut command = nsenter(&self.ns, &self.bin);
        command
            .arg("-c")
            .arg(&self.config)
            .arg("run")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        // nsenter execs the daemon in place (same PID), so if the test process dies without
        // running destructors the daemon is killed with it.
        let mut child = DaemonProcess::spawn(command, &log, libc::SIGKILL)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.logs.push(log);
        // "ready" is logged once the program is attached and its link pinned.
        let ready = child.wait_for(Duration::from_secs(20), |log| {
            log.lines().any(|l| l.trim_end().ends_with(": ready"))
        });
        if ready == Wait::Exited {
            let status = child.wait().expect("wait");
            panic!(
                "smtp-gateway run exited during start-up ({status}):\n{}",
                self.log()
            );
        }
        assert!(
            ready == Wait::Done && self.link_pin().exists(),
            "smtp-gateway run not ready within 20s (link pin exists: {}):\n{}",
            self.link_pin().exists(),
            self.log()
        );
        self.child = Some(child);
    }

    /// SIGTERM, the orderly stop: the daemon must exit 0 within 15 s.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("the daemon runs");
        child.signal(libc::SIGTERM).expect("SIGTERM");
        let within = Duration::from_secs(15);
        let Some(status) = child.wait_exit(within).expect("wait") else {
            let _ = child.kill();
            panic!("smtp-gateway run did not finish within {within:?}; killed");
        };
        assert!(
            status.success(),
            "SIGTERM: the daemon exited with {status}:\n{}",
            self.log()
        );
    }

    /// SIGKILL: the daemon gets no chance to clean anything up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the daemon runs");
        let status = child.kill().expect("kill -9 the daemon");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "kill -9: {status}");
    }

    /// The log of the latest start, without colours.
    pub fn log(&self) -> String {
        self.logs
            .last()
            .map(|p| strip_ansi(&std::fs::read_to_string(p).unwrap_or_default()))
            .unwrap_or_default()
    }

    /// Waits (bounded, woken by each line the daemon logs) for a line of the current log that
    /// contains every one of `needles`; a stopped daemon's log is checked once.
    pub fn wait_logged(&self, needles: &[&str], within: Duration) -> bool {
        let found = |log: &str| log.lines().any(|l| needles.iter().all(|n| l.contains(n)));
        match &self.child {
            Some(child) => child.wait_for(within, found) == Wait::Done,
            None => found(&self.log()),
        }
    }

    /// `smtp-gateway -c CONFIG <args>` in the gateway namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(&mut self.cli_command(args))
    }

    /// The command of [`Self::cli`], not started (for a CLI that runs alongside the test, such as
    /// `why --follow`).
    pub fn cli_command(&self, args: &[&str]) -> std::process::Command {
        let mut command = nsenter(&self.ns, &self.bin);
        command
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        command
    }

    /// Like [`Self::cli`], panicking unless the command succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "smtp-gateway {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli_ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("smtp-gateway {args:?}: not JSON ({e}):\n{out}"))
    }

    /// `block list --json`: one entry per target.
    pub fn block_list(&self) -> Vec<Value> {
        match self.cli_json(&["block", "list", "--json"]) {
            Value::Array(entries) => entries,
            other => panic!("block list --json is not an array: {other}"),
        }
    }

    pub fn block_entry(&self, target: &str) -> Option<Value> {
        self.block_list()
            .into_iter()
            .find(|e| e["target"].as_str() == Some(target))
    }

    /// The allowlist entry of exactly `prefix` (`198.18.0.7/32`), if any.
    pub fn allow_entry(&self, prefix: &str) -> Option<Value> {
        match self.cli_json(&["allow", "list", "--json"]) {
            Value::Array(entries) => entries
                .into_iter()
                .find(|e| e["prefix"].as_str() == Some(prefix)),
            other => panic!("allow list --json is not an array: {other}"),
        }
    }

    /// Waits (bounded) until `target` is listed; returns its entry.
    pub fn wait_banned(&self, target: &str, within: Duration) -> Value {
        let mut entry = None;
        wait_until(within, Duration::from_millis(50), || {
            entry = self.block_entry(target);
            entry.is_some()
        });
        entry.unwrap_or_else(|| {
            panic!(
                "{target} was not banned within {within:?}; block list: {:#?}\n--- daemon log:\n{}",
                self.block_list(),
                self.log()
            )
        })
    }

    pub fn stats(&self) -> Stats {
        Stats(self.cli_json(&["stats", "--json", "--top", "100000"]))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
        }
        if std::thread::panicking() {
            for path in &self.logs {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("--- {} ---\n{}", path.display(), strip_ansi(&text));
            }
        }
        if self.pin_dir.exists() {
            let out = self.cli(&["detach"]);
            if !out.status.success() {
                eprintln!(
                    "cleanup: detach failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `stats --json` (format: smtp-gateway/src/cmd/stats.rs).
pub struct Stats(pub Value);

impl Stats {
    /// Packets of verdict `name` (e.g. `dropped_exact`).
    pub fn verdict(&self, name: &str) -> u64 {
        self.0["verdicts"]
            .as_array()
            .and_then(|all| all.iter().find(|v| v["verdict"] == name))
            .and_then(|v| v["packets"].as_u64())
            .unwrap_or_else(|| panic!("no verdict {name} in stats:\n{:#}", self.0))
    }

    /// The per-source row of `source` (every tracked source has packets, so all are listed in
    /// `top_by_packets` with a large `--top`).
    pub fn row(&self, source: IpAddr) -> Option<&Value> {
        let name = source.to_string();
        self.0["top_by_packets"]
            .as_array()?
            .iter()
            .find(|r| r["source"].as_str() == Some(name.as_str()))
    }

    /// Field `field` (`packets`, `syns`, `drops`) of the per-source row of `source`; 0 when the
    /// source is not tracked (yet).
    pub fn source(&self, source: IpAddr, field: &str) -> u64 {
        self.row(source).map_or(0, |r| {
            r[field]
                .as_u64()
                .unwrap_or_else(|| panic!("no {field} in the row of {source}: {r}"))
        })
    }

    /// Like [`Self::source`], panicking when the source is not tracked.
    pub fn tracked(&self, source: IpAddr, field: &str) -> u64 {
        self.row(source)
            .and_then(|r| r[field].as_u64())
            .unwrap_or_else(|| panic!("no row for {source} in stats:\n{:#}", self.0))
    }
}

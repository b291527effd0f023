//! Postfix's `smtp-source`: the non-pipelining client whose wall time gives msgs/s.

use std::{
    fs::File,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{FROM, HELO, MESSAGE_BYTES, TO, proc::Cgroup};

pub fn args(sessions: u32, messages: u32, target: SocketAddr) -> Vec<String> {
    vec![
        "-s".into(),
        sessions.to_string(),
        "-m".into(),
        messages.to_string(),
        "-l".into(),
        MESSAGE_BYTES.to_string(),
        "-f".into(),
        FROM.into(),
        "-t".into(),
        TO.into(),
        "-M".into(),
        HELO.into(),
        target.to_string(),
    ]
}

/// Runs smtp-source to `target` in `cgroup` and returns its wall time; fails unless it exits 0
/// within `timeout`.
pub fn run(
    dir: &Path,
    cgroup: &Cgroup,
    sessions: u32,
    messages: u32,
    target: SocketAddr,
    timeout: Duration,
) -> Result<Duration> {
    let err_path = dir.join("smtp-source.err");
    let err = File::create(&err_path)?;
    let mut cmd = Command::new("smtp-source");
    cmd.args(args(sessions, messages, target))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(err);
    let started = Instant::now();
    let mut proc = cgroup.spawn(
        "smtp-source",
        &mut cmd,
        "starting smtp-source (package postfix)",
    )?;
    let deadline = started + timeout;
    loop {
        let status = match proc.child.as_mut().map(std::process::Child::try_wait) {
            Some(Ok(Some(status))) => status,
            Some(Ok(None)) => {
                if Instant::now() > deadline {
                    proc.stop();
                    bail!("smtp-source to {target} still running after {timeout:?}; killed");
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Some(Err(e)) => return Err(e).context("waiting for smtp-source"),
            None => bail!("smtp-source vanished"),
        };
        let took = started.elapsed();
        proc.child = None;
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        ensure!(
            status.success(),
            "smtp-source -s {sessions} -m {messages} to {target} failed ({status}): {}",
            stderr.trim()
        );
        return Ok(took);
    }
}

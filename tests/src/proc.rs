//! A child process of a benchmark, stopped by PID (or by process group) when dropped: SIGTERM,
//! SIGKILL after 5 s, then reaped. Children spawned here also get SIGTERM should the benchmark
//! die without cleaning up.

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// A child process stopped by PID when dropped: SIGTERM, SIGKILL after 5 s, then reaped. A
/// process started with [`Proc::spawn_group`] leads its own process group, and the signals go to
/// that group (trafgen forks its senders: signalling the parent alone leaves them running).
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    /// Signals go to the process group the child leads (see [`Proc::spawn_group`]).
    group: bool,
}

impl Proc {
    /// Wraps an already spawned child.
    pub fn new(name: &str, child: Child) -> Self {
        Self {
            name: name.into(),
            child: Some(child),
            group: false,
        }
    }

    /// Waits up to `timeout` for it to exit by itself; true when it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Spawns `cmd` as the leader of a new process group, stopped as a group.
    pub fn spawn_group(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.process_group(0);
        let mut proc = Self::spawn(name, cmd)?;
        proc.group = true;
        Ok(proc)
    }

    /// Spawns `cmd`; the child gets SIGTERM if this process dies without cleaning up.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            group: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some("stopped".into()),
        }
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let Ok(pid) = i32::try_from(child.id()) else {
            let _ = child.kill();
            let _ = child.wait();
            return;
        };
        // Our own, not yet reaped child, or the process group it leads (same id).
        let target = if self.group { -pid } else { pid };
        // SAFETY: kill(2) on our child's PID or process group.
        unsafe { libc::kill(target, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("warning: {} ({pid}) ignored SIGTERM; killing it", self.name);
                    // SAFETY: as above.
                    unsafe { libc::kill(target, libc::SIGKILL) };
                    let _ = child.wait();
                    break;
                }
            }
        }
        if self.group {
            // Members that outlived the leader.
            // SAFETY: as above; ESRCH when the group is gone.
            unsafe { libc::kill(target, libc::SIGKILL) };
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

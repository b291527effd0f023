//! [`DaemonProcess`]: a started daemon writing its standard output and error straight to a log
//! file (so a line logged before a reply is in the file when the reply arrives). Waiting for a
//! log line or for the exit is woken by events — a write to the file, the process ending —
//! never by a fixed sleep.

use std::{
    fs::File,
    io,
    os::{fd::OwnedFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use super::events::{drain, pidfd, readable, watch_writes};
use crate::{Error, Result, strip_ansi};

/// Time a daemon gets to exit after SIGTERM before it is killed, when stopped by `Drop`.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// How a bounded wait on the daemon's log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The log satisfied the condition.
    Done,
    /// The daemon exited first (its log did not satisfy the condition).
    Exited,
    /// The time was up first.
    TimedOut,
}

/// A running daemon. `Drop` stops it (SIGTERM, SIGKILL after 5 s) and reaps it.
#[derive(Debug)]
pub struct DaemonProcess {
    /// The child, until reaped.
    child: Child,
    /// Its exit status once reaped: from then on its PID is never signalled again.
    status: Option<ExitStatus>,
    /// Readable once the process has exited.
    exit: OwnedFd,
    /// The file its standard output and error go to.
    log_path: PathBuf,
}

impl DaemonProcess {
    /// Spawns `command` with its standard output and error appended to `log` (created or
    /// truncated first). The daemon gets `death_signal` if the test process dies without
    /// running destructors.
    pub fn spawn(mut command: Command, log: &Path, death_signal: i32) -> Result<Self> {
        let file = File::create(log).map_err(Error::io("creating", log))?;
        let stdout = file.try_clone().map_err(Error::io("duplicating", log))?;
        command.stdout(stdout).stderr(file);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let program = PathBuf::from(command.get_program());
        let mut child = command.spawn().map_err(Error::io("starting", &program))?;
        let exit = match pidfd(child.id()) {
            Ok(fd) => fd,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::io("watching the exit of", program)(error));
            }
        };
        Ok(Self {
            child,
            status: None,
            exit,
            log_path: log.to_path_buf(),
        })
    }

    /// The daemon's PID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The file its output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the daemon wrote so far (standard output and error, colours removed).
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// Waits until `done` holds for the log so far, the daemon exits, or `within` passes,
    /// whichever comes first; woken by each write to the log and by the exit.
    pub fn wait_for(&self, within: Duration, mut done: impl FnMut(&str) -> bool) -> Wait {
        let deadline = Instant::now() + within;
        // Watch before the first read, so that no write falls between the two.
        let writes = watch_writes(&self.log_path).ok();
        loop {
            if done(&self.log()) {
                return Wait::Done;
            }
            if self.has_exited() {
                // It may have logged just before exiting.
                return if done(&self.log()) {
                    Wait::Done
                } else {
                    Wait::Exited
                };
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Wait::TimedOut;
            };
            let fds: Vec<&OwnedFd> = std::iter::once(&self.exit).chain(writes.as_ref()).collect();
            // Without a write watch (cannot happen on Linux with a regular file), the exit and
            // the deadline still end the wait; re-check at least every second meanwhile.
            let left = if writes.is_some() {
                left
            } else {
                left.min(Duration::from_secs(1))
            };
            if readable(&fds, left).is_err() {
                return Wait::TimedOut;
            }
            if let Some(writes) = &writes {
                drain(writes);
            }
        }
    }

    /// Waits until a line of the log contains `needle` (see [`wait_for`](Self::wait_for)).
    pub fn wait_for_line(&self, within: Duration, needle: &str) -> Wait {
        self.wait_for(within, |log| log.lines().any(|line| line.contains(needle)))
    }

    /// Whether the process has ended (reaped or not), without waiting.
    fn has_exited(&self) -> bool {
        self.status.is_some() || readable(&[&self.exit], Duration::ZERO).is_ok_and(|ready| ready[0])
    }

    /// Sends `signal` to the daemon by its PID; a no-op once it has been reaped (its PID may
    /// belong to another process by then).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: kill(2) on our own child, not reaped yet (we hold it and `status` is unset),
        // so the PID is still ours even if it has exited.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The exit status if the daemon has exited (reaps it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits for the daemon to exit (unbounded: signal it first) and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// Waits up to `within` for the daemon to exit, woken by the exit itself; the status if it
    /// did.
    pub fn wait_exit(&mut self, within: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + within;
        while !self.has_exited() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return self.try_wait();
            };
            readable(&[&self.exit], left)?;
        }
        self.wait().map(Some)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it. The status, or
    /// `None` when it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.try_wait()? {
            return Ok(Some(status));
        }
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_exit(grace)? {
            return Ok(Some(status));
        }
        self.kill()?;
        Ok(None)
    }

    /// SIGKILL and reap: the daemon gets no chance to clean up.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if self.status.is_none() {
            self.child.kill()?;
        }
        self.wait()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop(DROP_GRACE) {
            eprintln!("stopping daemon {}: {e}", self.child.id());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// A daemon stand-in: a shell script.
    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        command
    }

    fn log_file(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("test-kit-{}-{name}.log", std::process::id()))
    }

    #[test]
    fn waits_for_a_line_collects_both_streams_and_stops_by_signal() {
        let log = log_file("ready");
        let mut daemon = DaemonProcess::spawn(
            sh("echo starting >&2; sleep 0.2; printf '\\033[32mINFO\\033[0m ready\\n'; exec sleep 60"),
            &log,
            libc::SIGKILL,
        )
        .expect("spawn");
        assert_eq!(
            daemon.wait_for_line(Duration::from_secs(10), "ready"),
            Wait::Done
        );
        let text = daemon.log();
        assert!(text.contains("starting\n"), "{text}");
        assert!(text.contains("INFO ready"), "colours removed: {text}");
        assert_eq!(
            daemon.wait_for_line(Duration::from_millis(50), "never"),
            Wait::TimedOut
        );
        let status = daemon.stop(Duration::from_secs(5)).expect("stop");
        assert_eq!(
            status.expect("exited on SIGTERM").signal(),
            Some(libc::SIGTERM)
        );
        drop(daemon);
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn an_exit_ends_the_wait() {
        let log = log_file("exit");
        let mut daemon = DaemonProcess::spawn(sh("echo failed >&2; exit 3"), &log, libc::SIGKILL)
            .expect("spawn");
        let started = Instant::now();
        assert_eq!(
            daemon.wait_for_line(Duration::from_secs(10), "ready"),
            Wait::Exited
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(daemon.wait().expect("wait").code(), Some(3));
        assert!(daemon.log().contains("failed"));
        // Reaped: signalling is a no-op, never another process.
        daemon.signal(libc::SIGTERM).expect("no-op");
        let _ = std::fs::remove_file(&log);
    }
}

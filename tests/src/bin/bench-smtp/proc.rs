//! Processes the benchmark starts, and the cgroups that measure their CPU time.
//!
//! Every child is a [`Proc`] (the tests library's), stopped by PID when dropped. Every measured program runs in its own
//! cgroup v2 ([`Cgroup`]): the child joins it between fork and exec, so whatever it forks later
//! (Postfix's daemons, Haraka's workers) is counted too; `cpu.stat` `usage_usec` is the CPU time
//! of everything that ever ran in it.

use std::{
    ffi::CString,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

pub use smtp_gateway_tests::proc::Proc;

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid system).
fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup2 file system mounted (needed to measure CPU per contender)")
}

/// A cgroup v2 of our own: `<root>/sgw-bench-smtp-<pid>-<name>`. Removed when dropped, after
/// its processes are gone (`cgroup.kill` if any is left 5 s after its owner stopped it).
pub struct Cgroup {
    path: PathBuf,
    /// `cgroup.procs` as a C string, for the pre-exec hook.
    procs: CString,
}

impl Cgroup {
    pub fn create(name: &str) -> Result<Self> {
        let path = cgroup2_root()?.join(format!("sgw-bench-smtp-{}-{name}", std::process::id()));
        if path.exists() {
            // Left by a crashed run of this very PID: empty it and start over.
            drop(Cgroup {
                procs: CString::default(),
                path: path.clone(),
            });
        }
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .context("cgroup path with a NUL byte")?;
        Ok(Self { path, procs })
    }

    /// Makes `cmd`'s process join this cgroup between fork and exec.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        let procs = self.procs.clone();
        // SAFETY: the hook only calls async-signal-safe functions (open, write, close) on memory
        // prepared before the fork; io::Error::last_os_error does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
    }

    /// Starts `cmd` (stdin from /dev/null) inside this cgroup as the process `name`; `what`
    /// says what failed to start.
    pub fn spawn(&self, name: &str, cmd: &mut Command, what: &str) -> Result<Proc> {
        cmd.stdin(Stdio::null());
        self.enter_on_exec(cmd);
        let child = cmd.spawn().with_context(|| what.to_string())?;
        Ok(Proc::new(name, child))
    }

    /// CPU time (user + system) of everything that ran in this cgroup so far.
    pub fn usage(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(self.path.join("cpu.stat"))
            .with_context(|| format!("reading {}/cpu.stat", self.path.display()))?;
        let usec = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no usage_usec in {}/cpu.stat", self.path.display()))?;
        Ok(Duration::from_micros(usec))
    }

    fn pids(path: &Path) -> Vec<i32> {
        std::fs::read_to_string(path.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Whether no process is left, zombies included (`cgroup.procs` omits those, but a cgroup
    /// cannot be removed until they are reaped: `cgroup.events` says `populated 0` then).
    fn empty(path: &Path) -> bool {
        Self::pids(path).is_empty()
            && std::fs::read_to_string(path.join("cgroup.events"))
                .map_or(true, |e| e.lines().any(|l| l.trim() == "populated 0"))
    }

    fn wait_empty(path: &Path, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if Self::empty(path) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        if !Self::wait_empty(&self.path, Duration::from_secs(5)) {
            // Only processes we started (and their descendants) can be in our own cgroup.
            eprintln!(
                "warning: processes {:?} left in {}; killing the cgroup",
                Self::pids(&self.path),
                self.path.display()
            );
            if let Err(e) = std::fs::write(self.path.join("cgroup.kill"), "1") {
                eprintln!("warning: cgroup.kill: {e}");
            }
            Self::wait_empty(&self.path, Duration::from_secs(5));
        }
        // EBUSY while the last exited processes are being reaped: retry for a while.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    eprintln!("warning: removing cgroup {}: {e}", self.path.display());
                    return;
                }
            }
        }
    }
}

/// A port nobody listens on right now (127.0.0.1).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("binding an ephemeral port")?
        .port())
}

/// Waits until something accepts connections on `addr` (at most `timeout`).
pub fn wait_listening(addr: SocketAddr, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            bail!("{} exited ({status}) before listening on {addr}", proc.name);
        }
        ensure!(
            Instant::now() < deadline,
            "{} is not listening on {addr} after {timeout:?}",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (children inherit it); returns it.
pub fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(lim.rlim_cur)
}

/// Reads what was appended to a log file since `offset` (complete lines only) and advances it.
pub fn read_new_lines(path: &Path, offset: &mut u64) -> Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.seek(SeekFrom::Start(*offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
        return Ok(Vec::new());
    };
    *offset += end as u64 + 1;
    Ok(String::from_utf8_lossy(&bytes[..=end])
        .lines()
        .map(str::to_string)
        .collect())
}

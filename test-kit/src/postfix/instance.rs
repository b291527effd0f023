//! The directory of a private Postfix instance (`postfix -c DIR`).

use std::{
    fs,
    os::unix::fs::{PermissionsExt, chown},
    path::{Path, PathBuf},
};

use crate::{Account, Error, MainCf, MasterCf, Result};

/// The queues a message can wait in (everything below `queue/` that is not bookkeeping).
const QUEUES: [&str; 5] = ["incoming", "active", "deferred", "hold", "maildrop"];

/// A private instance's directory: `main.cf`, `master.cf`, `queue/`, `data/`, the default
/// `maillog`, and whatever the caller adds. Starting and stopping the instance is the caller's:
/// the tests run `postfix start`, the benchmark `postfix start-fg` in a cgroup, the demo
/// `postfix start` inside a network namespace.
#[derive(Clone, Debug)]
pub struct InstanceDir {
    /// The configuration directory (`postfix -c`), which also holds the queue and data.
    path: PathBuf,
}

impl InstanceDir {
    /// An instance directory that may or may not exist yet; touches nothing. For looking at an
    /// instance made earlier (a leftover to stop) and for the paths of one about to be made.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Creates `path` with the skeleton `postfix start` expects of a private instance:
    /// - `path` itself mode 0755, whatever the umask: Postfix's daemons run as `postfix` and must
    ///   reach `queue/` and `data/` below it;
    /// - `queue/` owned by root, as in a system instance (Postfix makes the queues inside and
    ///   gives them to `postfix`);
    /// - `data/` owned by `postfix`, which keeps its caches (postscreen, TLS sessions) there.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self> {
        let dir = Self::at(path);
        for sub in ["queue", "data"] {
            let sub = dir.path.join(sub);
            fs::create_dir_all(&sub).map_err(Error::io("creating", &sub))?;
        }
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755))
            .map_err(Error::io("chmod 0755", &dir.path))?;
        dir.give(&dir.path.join("data"), Account::postfix()?)?;
        Ok(dir)
    }

    /// Creates the subdirectory `name`, owned by `owner`: where a delivery agent running as an
    /// unprivileged user (`pipe user=nobody`, `virtual` with `virtual_uid_maps`) writes mail.
    pub fn create_owned_dir(&self, name: &str, owner: Account) -> Result<PathBuf> {
        let sub = self.path.join(name);
        fs::create_dir_all(&sub).map_err(Error::io("creating", &sub))?;
        self.give(&sub, owner)?;
        Ok(sub)
    }

    fn give(&self, path: &Path, owner: Account) -> Result<()> {
        chown(path, Some(owner.uid), Some(owner.gid)).map_err(Error::io("chown", path))
    }

    /// Writes `main.cf` and `master.cf`.
    pub fn write_config(&self, main: &MainCf, master: &MasterCf) -> Result<()> {
        for (name, text) in [("main.cf", main.render()), ("master.cf", master.render())] {
            let file = self.path.join(name);
            fs::write(&file, text).map_err(Error::io("writing", &file))?;
        }
        Ok(())
    }

    /// The directory (`postfix -c` takes it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where [`MainCf::new`] sends the instance's log (`maillog_file`) unless the caller moved it
    /// with [`MainCf::maillog`].
    pub fn maillog(&self) -> PathBuf {
        self.path.join("maillog")
    }

    /// The PID of this instance's running master process, if there is one. The PID file alone is
    /// not enough: it stays behind when the master is killed, and its PID may since belong to
    /// another process, which a caller about to SIGKILL it must not hit. So the process must
    /// also be called `master`.
    pub fn master_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.path.join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (pid > 0 && comm.trim() == "master").then_some(pid)
    }

    /// Whether no message waits in any queue: after accepting mail, the instance has delivered
    /// (or discarded, or bounced) all of it.
    pub fn queue_is_empty(&self) -> bool {
        QUEUES
            .iter()
            .all(|q| count_files(&self.path.join("queue").join(q)) == 0)
    }
}

/// Files below `dir`, at any depth (Postfix hashes queue files into subdirectories).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sgw-kit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn queue_counts_files_in_hashed_subdirectories() {
        let dir = InstanceDir::at(scratch("queue"));
        assert!(dir.queue_is_empty(), "no queue directory at all is empty");
        let hashed = dir.path().join("queue/deferred/A");
        fs::create_dir_all(&hashed).unwrap();
        fs::create_dir_all(dir.path().join("queue/pid")).unwrap();
        fs::write(dir.path().join("queue/pid/master.pid"), "1\n").unwrap();
        assert!(
            dir.queue_is_empty(),
            "bookkeeping and empty subdirectories are not mail"
        );
        fs::write(hashed.join("A1B2C3"), "").unwrap();
        assert!(!dir.queue_is_empty());
        fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn master_pid_needs_a_live_master() {
        let dir = InstanceDir::at(scratch("pid"));
        assert_eq!(dir.master_pid(), None, "no PID file");
        fs::create_dir_all(dir.path().join("queue/pid")).unwrap();
        // Our own PID: alive, but not a Postfix master.
        let own = std::process::id();
        fs::write(
            dir.path().join("queue/pid/master.pid"),
            format!("{own:>10}\n"),
        )
        .unwrap();
        assert_eq!(dir.master_pid(), None);
        fs::remove_dir_all(dir.path()).unwrap();
    }
}

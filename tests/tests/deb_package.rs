//! The Debian package, installed for real with `dpkg -i` and purged again: the files land where
//! the package says (binary, conffile, systemd unit, man pages, bash/zsh/fish completions), the
//! installed default configuration passes `smtp-gateway check-config`, `man -l` renders the page
//! naming every subcommand, installing starts and enables nothing and runs no maintainer script,
//! `dpkg --remove` keeps the configuration and the daemon's state, and `dpkg --purge` leaves
//! nothing behind, the state directory the daemon made included.
//!
//! Which package: `$SMTP_GATEWAY_DEB` (`cargo xtask test` builds one from the debug build and
//! sets it), else the newest `target/debian/**/smtp-gateway_*.deb` (`cargo xtask package`).
//!
//! It installs into the real system, so it refuses to run when the machine already has an
//! smtp-gateway installed (the package, or any of its files from something else), holds a lock
//! so two runs on one machine take turns, and purges the package when it ends, panic or not.
//! Needs root and dpkg, man-db (installed by `cargo xtask setup`).

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The Debian package name.
const PACKAGE: &str = "smtp-gateway";
/// Where the package installs the daemon.
const BINARY: &str = "/usr/sbin/smtp-gateway";
/// The configuration the binary reads by default, shipped as a conffile.
const CONFFILE: &str = "/etc/smtp-gateway/gateway.toml";
/// The systemd unit (shipped, never enabled by the package).
const UNIT: &str = "/lib/systemd/system/smtp-gateway.service";
/// The main man page (dpkg installs it compressed).
const MAN_PAGE: &str = "/usr/share/man/man8/smtp-gateway.8.gz";
/// The daemon's state directory (systemd `StateDirectory=`; `[store] path` is in it): the package
/// does not ship it, the daemon creates it, and the purge removes it.
const STATE_DIR: &str = "/var/lib/smtp-gateway";
/// Shell completions, in the directories each shell's Debian package reads.
const COMPLETIONS: [&str; 3] = [
    "/usr/share/bash-completion/completions/smtp-gateway",
    "/usr/share/zsh/vendor-completions/_smtp-gateway",
    "/usr/share/fish/vendor_completions.d/smtp-gateway.fish",
];
/// Serialises runs of this test on one machine (several checkouts may run their suites).
const LOCK: &str = "/run/lock/smtp-gateway-deb-test.lock";
/// How long dpkg may be kept waiting by another package manager run.
const DPKG_LOCK_WAIT: Duration = Duration::from_secs(300);

#[test]
fn package_installs_checks_config_renders_man_starts_nothing_and_purges() {
    // SAFETY: getuid has no preconditions.
    assert_eq!(
        unsafe { libc::getuid() },
        0,
        "the package test needs root (dpkg -i into the system)"
    );
    let deb = package_path();
    let _lock = lock();
    refuse_existing_installation();
    let before = gateway_processes();

    // From here on the package is purged however the test ends.
    let installed = Installed::new();
    let out = dpkg(&["-i".as_ref(), deb.as_os_str()]);
    assert!(
        out.status.success(),
        "dpkg -i {}: {}",
        deb.display(),
        text(&out)
    );

    // Files, where and how the package says.
    let mode = std::fs::metadata(BINARY)
        .unwrap_or_else(|e| panic!("{BINARY}: {e}"))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "{BINARY} mode {mode:o}");
    for path in [CONFFILE, UNIT, MAN_PAGE].iter().chain(&COMPLETIONS) {
        let len = std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{path} not installed: {e}"))
            .len();
        assert!(len > 0, "{path} is empty");
    }
    let conffiles = stdout(&run(Command::new("dpkg-query").args([
        "-W",
        "-f=${Conffiles}",
        PACKAGE,
    ])));
    assert!(
        conffiles.contains(CONFFILE),
        "{CONFFILE} is not a conffile: {conffiles}"
    );
    let unit = std::fs::read_to_string(UNIT).expect("unit");
    assert!(
        unit.contains(&format!("ExecStart={BINARY} ")),
        "the unit does not run the installed binary:\n{unit}"
    );
    // `systemctl help smtp-gateway` opens the installed page.
    assert!(
        unit.lines()
            .any(|l| l.starts_with("Documentation=") && l.contains("man:smtp-gateway(8)")),
        "the unit's Documentation= does not name the man page:\n{unit}"
    );

    // The installed default configuration is valid, read from where the binary looks.
    let out = run(Command::new(BINARY).arg("check-config"));
    assert!(out.status.success(), "check-config: {}", text(&out));
    assert!(
        stdout(&out).contains(&format!("{CONFFILE}: configuration is valid")),
        "check-config did not read {CONFFILE}: {}",
        text(&out)
    );

    // The man page renders and names every subcommand; each has its own page.
    let out = run(Command::new("man")
        .args(["-l", MAN_PAGE])
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "200")
        .env("LC_ALL", "C"));
    assert!(out.status.success(), "man -l {MAN_PAGE}: {}", text(&out));
    let page = plain(&stdout(&out));
    assert!(page.contains("smtp-gateway"), "man output:\n{page}");
    for sub in smtp_gateway::cli::command().get_subcommands() {
        let name = sub.get_name();
        assert!(
            page.contains(&format!("smtp-gateway-{name}(8)")),
            "the man page does not name `{name}`:\n{page}"
        );
        let sub_page = format!("/usr/share/man/man8/smtp-gateway-{name}.8.gz");
        assert!(Path::new(&sub_page).exists(), "{sub_page} not installed");
    }

    // Installing started nothing, enabled nothing and ran no maintainer script: the only one
    // is postrm, which acts on a purge alone.
    let scripts = stdout(&run(
        Command::new("dpkg-query").args(["--control-list", PACKAGE])
    ));
    for script in ["preinst", "postinst", "prerm", "config"] {
        assert!(
            !scripts.lines().any(|l| l.trim() == script),
            "the package has a {script} script: {scripts}"
        );
    }
    assert_eq!(
        gateway_processes(),
        before,
        "an smtp-gateway process appeared after dpkg -i"
    );
    if Path::new("/run/systemd/system").exists() {
        for (query, on) in [("is-active", "active"), ("is-enabled", "enabled")] {
            let out = run(Command::new("systemctl").args([query, PACKAGE]));
            assert_ne!(stdout(&out).trim(), on, "systemctl {query}: {}", text(&out));
        }
    }
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/smtp-gateway.service").exists(),
        "the unit was enabled"
    );

    // The state the daemon keeps, as its start creates it (systemd's StateDirectory=, mode
    // 0700, and the store in it).
    std::fs::create_dir(STATE_DIR).unwrap_or_else(|e| panic!("{STATE_DIR}: {e}"));
    std::fs::set_permissions(STATE_DIR, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("{STATE_DIR}: {e}"));
    let store = Path::new(STATE_DIR).join("state.redb");
    std::fs::write(&store, b"state").unwrap_or_else(|e| panic!("{}: {e}", store.display()));

    // Removed, the configuration and the state stay (Debian policy: until the purge).
    let out = dpkg(&["--remove".as_ref(), PACKAGE.as_ref()]);
    assert!(out.status.success(), "dpkg --remove: {}", text(&out));
    assert!(
        !Path::new(BINARY).exists(),
        "{BINARY} is left after the removal"
    );
    for path in [Path::new(CONFFILE), &store] {
        assert!(path.exists(), "dpkg --remove removed {}", path.display());
    }

    // Purged, nothing is left.
    let out = installed.purge();
    assert!(out.status.success(), "dpkg --purge: {}", text(&out));
    for path in [
        BINARY,
        CONFFILE,
        UNIT,
        MAN_PAGE,
        "/etc/smtp-gateway",
        STATE_DIR,
    ]
    .iter()
    .chain(&COMPLETIONS)
    {
        assert!(!Path::new(path).exists(), "{path} is left after the purge");
    }
    assert!(
        !is_known_to_dpkg(),
        "dpkg still knows {PACKAGE} after the purge"
    );
}

/// Purges the package when dropped (the test's way out on a panic) unless already purged.
struct Installed {
    /// Whether a purge is still owed.
    armed: bool,
}

impl Installed {
    fn new() -> Self {
        Installed { armed: true }
    }

    /// `dpkg --purge` now; its output.
    fn purge(mut self) -> Output {
        self.armed = false;
        purge()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.armed {
            let out = purge();
            if !out.status.success() {
                eprintln!("cleanup: dpkg --purge {PACKAGE}: {}", text(&out));
            }
        }
    }
}

fn purge() -> Output {
    dpkg(&["--purge".as_ref(), PACKAGE.as_ref()])
}

/// `dpkg ARGS`, waiting up to [`DPKG_LOCK_WAIT`] while another dpkg or apt holds its lock (dpkg
/// itself does not wait).
fn dpkg(args: &[&std::ffi::OsStr]) -> Output {
    let until = Instant::now() + DPKG_LOCK_WAIT;
    loop {
        let out = run(Command::new("dpkg").args(args));
        let locked = !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("lock")
            && Instant::now() < until;
        if !locked {
            return out;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Panics when the machine has smtp-gateway installed already: the test would replace, then
/// purge, somebody's installation.
fn refuse_existing_installation() {
    assert!(
        !is_known_to_dpkg(),
        "{PACKAGE} is installed on this machine (dpkg); this test installs and purges it, so it \
         will not run here (`dpkg --purge {PACKAGE}` first if it is a leftover of this test)"
    );
    for path in [BINARY, CONFFILE, UNIT, STATE_DIR] {
        assert!(
            !Path::new(path).exists(),
            "{path} exists and belongs to no smtp-gateway package: this test will not overwrite \
             it"
        );
    }
}

/// Whether dpkg has any record of the package (installed, half-installed or config files left).
fn is_known_to_dpkg() -> bool {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", PACKAGE]));
    out.status.success() && !matches!(stdout(&out).trim(), "" | "not-installed")
}

/// The `.deb` to install: `$SMTP_GATEWAY_DEB`, or the newest one under `target/debian/`.
fn package_path() -> PathBuf {
    if let Some(path) = std::env::var_os("SMTP_GATEWAY_DEB") {
        return PathBuf::from(path);
    }
    let profile = smtp_gateway_test_kit::profile_dir().expect("profile directory");
    let debian = profile.parent().unwrap_or(&profile).join("debian");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = [debian.clone(), debian.join("debug")]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("smtp-gateway_") && n.ends_with(".deb"))
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!(
            "no package in {}: run `cargo xtask package` (or `cargo xtask test`, which sets \
             SMTP_GATEWAY_DEB)",
            debian.display()
        )
    })
}

/// An exclusive lock on [`LOCK`], held until the file is dropped.
fn lock() -> File {
    let file = File::create(LOCK).unwrap_or_else(|e| panic!("{LOCK}: {e}"));
    // SAFETY: the descriptor is open for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {LOCK}: {}", std::io::Error::last_os_error());
    file
}

/// PIDs of processes running the installed binary.
fn gateway_processes() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            exe.to_str()?.starts_with(BINARY).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Runs a command with no input, in a non-interactive Debian frontend, and returns its output.
fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Status, stdout and stderr, for failure messages.
fn text(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Man output without overstrike formatting (`x\bx` bold, `_\bx` underline), should a pager
/// setting leave it in.
fn plain(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for c in page.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

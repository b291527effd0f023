//! `cargo xtask setup`: everything a fresh Debian 12 machine of this kind lacks.
//!
//! - apt: Debian's rustc 1.96 with a prebuilt `core` for bpfel-unknown-none, LLVM 22 for
//!   bpf-linker, and the tools the tests drive (iproute2, bpftool, ethtool, hping3, nsenter,
//!   Postfix with smtp-source, swaks, openssl, redis-server) and the font the plots are measured with;
//! - bpf-linker 0.13.0 built against LLVM 22 into `.tools/` (cached: 0.1 s when present);
//! - cargo-fuzz into `.tools/` the same way (the fuzz targets of `fuzz/`, `cargo xtask fuzz`;
//!   libFuzzer itself is compiled by the system g++ when the targets are built);
//! - cargo-deb into `.tools/` when a task makes the Debian package (`package`, `test`; cached);
//! - Debian's `crowdsec` (LAPI and cscli) unpacked into `.tools/crowdsec` for the bouncer's
//!   test: installed as a package its post-install script registers with CrowdSec's central
//!   API over the Internet and fails here; the tests run a private LAPI with that turned off;
//! - for the benchmarks only (`setup`, `bench`; not `test` or `demo`): trafgen, iptables,
//!   nftables, HAProxy, Node.js, and Haraka (pinned) installed with npm into
//!   `.tools/haraka`;
//! - bpffs mounted at /sys/fs/bpf.
//!
//! See docs/BUILDING.md for why this route (Debian's rustc has a prebuilt bpf `core`: no
//! nightly, no rust-src).

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

use crate::{cargo, run_cmd};

/// Debian packages the build and the tests need.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "iproute2",
    "bpftool",
    "ethtool",
    "hping3",
    "util-linux",
    // Real SMTP peers for the proxy tests and the demo (TESTING.md).
    "postfix",
    "swaks",
    "libnet-ssleay-perl",
    "libio-socket-ssl-perl",
    "libio-socket-inet6-perl",
    "openssl",
    "python3",
    // libfuzzer-sys compiles libFuzzer (C++) when the fuzz targets are built.
    "g++",
    "nmap",
    // The Debian package (`cargo xtask package`) and its test: dependencies computed by
    // dpkg-shlibdeps, `strip`, and `man -l` on the installed page.
    "dpkg-dev",
    "binutils",
    "man-db",
    // The packaged BDAT client of the CHUNKING tests (tests/tests/chunking.rs).
    "smtpping",
    // The CrowdSec LAPI unpacked into .tools/crowdsec (`crowdsec` below) links it.
    "libsqlite3-0",
    // The shared state store's engine for fleets (`[store] engine = "redis"`): the tests start
    // private servers on unix sockets (installing it starts nothing here).
    "redis-server",
    // The TTF plotters measures plot text with (plot.rs; its unit tests render plots).
    crate::plot::FONT_PACKAGE,
];

/// Debian packages only the benchmarks need (`cargo xtask bench`, `cargo xtask setup`).
const BENCH_APT_PACKAGES: &[&str] = &[
    // trafgen (SYN floods for bench-drop) and the filters XDP
    // is compared with (bench-drop).
    "netsniff-ng",
    "iptables",
    "nftables",
    // Contenders of `cargo xtask bench smtp` (Haraka itself comes from npm, see `haraka`).
    "haproxy",
    "nodejs",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz version `cargo xtask fuzz` (and the fuzzing in `cargo xtask test`) drives.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// cargo-deb version `cargo xtask package` builds with (3.8.0 builds with rustc 1.85+).
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Haraka version the SMTP benchmark compares against.
const HARAKA_VERSION: &str = "3.3.4";

/// What the build, the demo and the package need.
pub fn run(root: &Path) -> anyhow::Result<()> {
    if !is_root() {
        bail!("cargo xtask needs root (apt, bpffs, XDP, network namespaces)");
    }
    apt(APT_PACKAGES)?;
    bpf_linker(root)?;
    bpffs()?;
    Ok(())
}

/// What `cargo xtask fuzz` needs besides: cargo-fuzz.
pub fn for_fuzzing(root: &Path) -> anyhow::Result<()> {
    run(root)?;
    cargo_fuzz(root)
}

/// What `cargo xtask test` needs besides: cargo-fuzz (its last step fuzzes) and the CrowdSec
/// LAPI its CrowdSec tests run against. The demo builds neither (a minute of a fresh start).
pub fn for_tests(root: &Path) -> anyhow::Result<()> {
    for_fuzzing(root)?;
    crowdsec(root)
}

/// Debian package the CrowdSec LAPI and cscli come from.
const CROWDSEC_PACKAGE: &str = "crowdsec";

/// `crowdsec` and `cscli` unpacked (`apt-get download`, `dpkg-deb -x`) into `.tools/crowdsec`,
/// without running the package's scripts (skipped when they are there).
fn crowdsec(root: &Path) -> anyhow::Result<()> {
    let dir = root.join(".tools/crowdsec");
    if dir.join("usr/bin/crowdsec").exists() && dir.join("usr/bin/cscli").exists() {
        return Ok(());
    }
    eprintln!("setup: unpacking Debian's {CROWDSEC_PACKAGE} into .tools/crowdsec");
    let download = root.join(".tools/crowdsec-download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    let fetched = run_cmd(Command::new("apt-get").current_dir(&download).args([
        "download",
        "-qq",
        CROWDSEC_PACKAGE,
    ]));
    if fetched.is_err() {
        run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
        run_cmd(Command::new("apt-get").current_dir(&download).args([
            "download",
            "-qq",
            CROWDSEC_PACKAGE,
        ]))
        .context("downloading the crowdsec package")?;
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    std::fs::create_dir_all(&dir)?;
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))
        .context("unpacking the crowdsec package")?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(())
}

/// Everything, the benchmarks' contenders and tools included (`cargo xtask setup`, `bench`).
pub fn run_all(root: &Path) -> anyhow::Result<()> {
    for_tests(root)?;
    apt(BENCH_APT_PACKAGES)?;
    haraka(root)
}

/// The plot font only (`cargo xtask bench --render-only`, which needs nothing else): installed
/// when missing if we are root, otherwise an error saying what to install.
pub fn plot_font() -> anyhow::Result<()> {
    if Path::new(crate::plot::FONT).exists() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{} is missing: install Debian's {} (as root: `cargo xtask setup` or `apt-get install \
             {}`)",
            crate::plot::FONT,
            crate::plot::FONT_PACKAGE,
            crate::plot::FONT_PACKAGE
        );
    }
    apt(&[crate::plot::FONT_PACKAGE])
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc_getuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the missing packages (one `apt-get update` first).
pub fn apt(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn bpf_linker(root: &Path) -> anyhow::Result<()> {
    let tools = root.join(".tools");
    let linker = tools.join("bin/bpf-linker");
    if let Ok(out) = Command::new(&linker).arg("--version").output()
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} (about 2 minutes, once)");
    run_cmd(
        cargo()
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "--root",
            ])
            .arg(&tools),
    )
    .context("installing bpf-linker")
}

/// cargo-deb `CARGO_DEB_VERSION` in `.tools/bin` (built once, about 2 minutes; 0.1 s when
/// present); returns its path.
pub fn cargo_deb(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let tools = root.join(".tools");
    let bin = tools.join("bin/cargo-deb");
    if let Ok(out) = Command::new(&bin).arg("--version").output()
        && String::from_utf8_lossy(&out.stdout).contains(CARGO_DEB_VERSION)
    {
        return Ok(bin);
    }
    eprintln!("setup: building cargo-deb {CARGO_DEB_VERSION} (about 2 minutes, once)");
    run_cmd(
        cargo()
            .args([
                "install",
                "cargo-deb",
                "--version",
                CARGO_DEB_VERSION,
                "--locked",
                "--root",
            ])
            .arg(&tools),
    )
    .context("installing cargo-deb")?;
    Ok(bin)
}

/// `npm install Haraka@HARAKA_VERSION` into `.tools/haraka` (skipped when that version is there).
fn haraka(root: &Path) -> anyhow::Result<()> {
    let dir = root.join(".tools/haraka");
    let installed = std::fs::read_to_string(dir.join("node_modules/Haraka/package.json"))
        .is_ok_and(|p| p.contains(&format!("\"version\": \"{HARAKA_VERSION}\"")));
    if installed {
        return Ok(());
    }
    // Some node packages (NodeSource's) ship npm themselves; Debian's are separate.
    if Command::new("npm").arg("--version").output().is_err() {
        apt(&["npm"])?;
    }
    eprintln!("setup: installing Haraka {HARAKA_VERSION} with npm into .tools/haraka");
    std::fs::create_dir_all(&dir)?;
    run_cmd(
        Command::new("npm")
            .current_dir(&dir)
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(format!("Haraka@{HARAKA_VERSION}")),
    )
    .context("installing Haraka with npm")
}

fn bpffs() -> anyhow::Result<()> {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
        })
        .unwrap_or(false);
    if !mounted {
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

/// cargo-fuzz into `.tools/` (skipped when that version is there).
fn cargo_fuzz(root: &Path) -> anyhow::Result<()> {
    let tools = root.join(".tools");
    let bin = tools.join("bin/cargo-fuzz");
    if let Ok(out) = Command::new(&bin).args(["fuzz", "--version"]).output()
        && String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION)
    {
        return Ok(());
    }
    eprintln!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute, once)");
    run_cmd(
        cargo()
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
                "--root",
            ])
            .arg(&tools),
    )
    .context("installing cargo-fuzz")
}

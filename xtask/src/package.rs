//! `cargo xtask package`: the Debian package, `target/debian/smtp-gateway_<version>-1_<arch>.deb`.
//!
//! 1. `package-assets` (crate `packaging/`) writes the man pages and the bash, zsh and fish
//!    completions, generated from the daemon's own clap command, into
//!    `target/<profile>/deb-assets/`;
//! 2. `cargo build -p smtp-gateway` in the profile asked for (only the daemon: cargo-deb would
//!    build the whole workspace, since the generated files are under `target/`);
//! 3. cargo-deb (installed into `.tools/` by [`crate::setup::cargo_deb`], run with `--no-build`)
//!    packs the binary with those, `deploy/smtp-gateway.service` and `config/gateway.toml` (a
//!    conffile), as `[package.metadata.deb]` in `smtp-gateway/Cargo.toml` lists them.
//!
//! `cargo xtask package` packs a release build. `cargo xtask test` packs the debug build the
//! other tests already use ([`Build::Debug`], no second compile of the whole tree), for the test
//! that installs the package (`tests/tests/deb_package.rs`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{cargo, render, run_cmd};

/// Which build of the daemon the package carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `cargo build --release`: what `cargo xtask package` ships.
    Release,
    /// The debug binary `cargo build --workspace` already made: only for the package test, so
    /// `cargo xtask test` does not compile the tree a second time.
    Debug,
}

impl Build {
    /// Cargo's profile name.
    fn profile(self) -> &'static str {
        match self {
            Build::Release => "release",
            Build::Debug => "dev",
        }
    }

    /// The directory under `target/` the profile builds into.
    fn dir(self) -> &'static str {
        match self {
            Build::Release => "release",
            Build::Debug => "debug",
        }
    }
}

/// Builds the package; returns the path of the `.deb`.
pub fn build(root: &Path, build: Build) -> anyhow::Result<PathBuf> {
    let cargo_deb = crate::setup::cargo_deb(root)?;
    let target = crate::target_dir(root);
    let assets = target.join(build.dir()).join("deb-assets");
    // Fresh each time: no page of a subcommand that no longer exists.
    match std::fs::remove_dir_all(&assets) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", assets.display()));
        }
        _ => {}
    }
    run_cmd(
        cargo()
            .current_dir(root)
            .args([
                "run",
                "--quiet",
                "--locked",
                "-p",
                "smtp-gateway-packaging",
                "--bin",
                "package-assets",
                "--",
            ])
            .arg(&assets),
    )
    .context("generating the man pages and completions")?;
    gzip_man_pages(&assets.join("man"))?;
    let output = match build {
        Build::Release => target.join("debian"),
        // Beside, not over, a release package `cargo xtask package` made.
        Build::Debug => target.join("debian/debug"),
    };
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let mut deb = Command::new(&cargo_deb);
    deb.current_dir(root)
        .args([
            "--package",
            "smtp-gateway",
            "--locked",
            "--strip",
            "--profile",
            build.profile(),
        ])
        .arg("--output")
        .arg(&output);
    // Up to date already for the debug build under `cargo xtask test`.
    run_cmd(cargo().current_dir(root).args([
        "build",
        "--locked",
        "-p",
        "smtp-gateway",
        "--profile",
        build.profile(),
    ]))?;
    deb.arg("--no-build");
    if build == Build::Debug {
        // cargo-deb warns that it is meant for release builds; this package is only installed
        // by the package test.
        deb.arg("--quiet");
    }
    eprintln!("+ {}", render(&deb));
    // cargo-deb deletes every smtp-gateway_*.deb in target/debian/ whatever its output: the
    // debug package for the test must not cost the release package `cargo xtask package` made.
    let kept = match build {
        Build::Release => Vec::new(),
        Build::Debug => set_aside(&target.join("debian"))?,
    };
    let out = deb.output();
    for (aside, path) in &kept {
        std::fs::rename(aside, path).with_context(|| format!("restoring {}", path.display()))?;
    }
    let out = out.with_context(|| format!("cannot start {}", cargo_deb.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{} failed ({})", render(&deb), out.status);
    }
    // cargo-deb prints the path of the package it wrote as its last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo-deb did not say where the package is: {stdout}"))?;
    eprintln!("package: {}", path.display());
    Ok(path)
}

/// Renames the packages in `dir` (`*.deb`) to `*.deb.kept`; returns (new, old) paths.
fn set_aside(dir: &Path) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let mut kept = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(kept);
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let aside = path.with_extension("deb.kept");
            std::fs::rename(&path, &aside)
                .with_context(|| format!("setting {} aside", path.display()))?;
            kept.push((aside, path));
        }
    }
    Ok(kept)
}

/// `gzip -9n` every page in `dir` (Debian policy: compressed man pages; cargo-deb compresses only
/// pages it did not find under `target/`). `-n`: no name or time stamp, the same bytes every time.
fn gzip_man_pages(dir: &Path) -> anyhow::Result<()> {
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "8") {
            pages.push(path);
        }
    }
    if pages.is_empty() {
        bail!("no man page in {}", dir.display());
    }
    run_cmd(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))
}

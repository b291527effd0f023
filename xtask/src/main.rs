//! Project tasks: `cargo xtask setup | test | package | bench [NAME...] [--quick |
//! --render-only] | demo [--fleet] | fuzz [TARGET...] [--time S]`.
//!
//! Every task runs `setup` first, so one command works on a fresh machine of this kind
//! (Debian 12, root): apt packages, bpf-linker in the project-local `.tools/`, bpffs.
//! xtask itself depends on nothing that needs the eBPF toolchain, so it builds before setup.

mod bench;
mod demo;
mod disk;
mod fuzz;
mod package;
mod plot;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "smtp-gateway project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (apt packages, bpf-linker); idempotent, seconds when done.
    Setup,
    /// Build everything and run every test: format, lints, unit, XDP program and netns end-to-end.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Build the Debian package (release build, man pages, completions, systemd unit, conffile)
    /// into target/debian/.
    Package {
        /// Pack the debug build instead (no release compile; into target/debian/debug/, for
        /// running the package test by hand).
        #[arg(long)]
        debug: bool,
    },
    /// Run benchmarks, write docs/bench/<name>.{md,json,svg} and docs/BENCHMARKS.md.
    Bench {
        /// Which benchmarks (default: all).
        #[arg(value_enum)]
        which: Vec<bench::Which>,
        /// Fewer repeats and smaller sizes (smoke run; reports and plots go to
        /// target/bench-quick/, docs/ is left alone).
        #[arg(long)]
        quick: bool,
        /// Measure nothing: redraw the plots and rebuild docs/BENCHMARKS.md from the committed
        /// docs/bench/*.md and *.json.
        #[arg(long, conflicts_with_all = ["which", "quick"])]
        render_only: bool,
    },
    /// Run the gateway in a network-namespace lab with a real Postfix backend: good mail, a
    /// spammer, a runtime block and a SYN flood, narrated; everything is removed afterwards.
    Demo {
        /// Two gateways sharing one Redis instead: a ban on A drops on B, mail through each, a
        /// bot failing on A then on B banned on both.
        #[arg(long)]
        fleet: bool,
    },
    /// Build the cargo-fuzz targets of fuzz/ and run each for a while on its committed corpus;
    /// prints the executions per target, fails on a crash (the input stays in fuzz/artifacts/).
    Fuzz {
        /// Which targets (default: all, one after the other).
        targets: Vec<String>,
        /// Seconds each target runs.
        #[arg(long, default_value_t = 60)]
        time: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup::run_all(&root),
        Task::Test { cargo_args } => {
            disk::require(&root, disk::TEST_BYTES, "test")?;
            setup::for_tests(&root)?;
            test(&root, &cargo_args)
        }
        Task::Package { debug } => {
            setup::run(&root)?;
            let build = if debug {
                package::Build::Debug
            } else {
                package::Build::Release
            };
            package::build(&root, build).map(drop)
        }
        Task::Bench {
            render_only: true, ..
        } => {
            setup::plot_font()?;
            bench::render_only(&root)
        }
        Task::Bench { which, quick, .. } => {
            setup::run_all(&root)?;
            bench::run(&root, &which, quick)
        }
        Task::Demo { fleet } => {
            setup::run(&root)?;
            demo::run(&root, fleet)
        }
        Task::Fuzz { targets, time } => {
            setup::for_fuzzing(&root)?;
            fuzz::run(&root, &targets, time)
        }
    }
}

/// The workspace root (parent of xtask/).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (relative to the workspace root if
/// relative, as cargo takes it from there), else `target/`.
pub fn target_dir(root: &std::path::Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
}

/// Runs a command, echoing it, failing with its status.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", render(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", render(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", render(cmd));
    }
    Ok(())
}

fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn test(root: &std::path::Path, cargo_args: &[String]) -> anyhow::Result<()> {
    run_cmd(cargo().current_dir(root).args(["fmt", "--all", "--check"]))?;
    run_cmd(
        cargo()
            .current_dir(root.join("smtp-gateway-ebpf"))
            .args(["fmt", "--check"]),
    )?;
    run_cmd(
        cargo()
            .current_dir(root.join("fuzz"))
            .args(["fmt", "--check"]),
    )?;
    run_cmd(cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Builds the daemon binary the end-to-end tests drive.
    run_cmd(
        cargo()
            .current_dir(root)
            .args(["build", "--workspace", "--locked"]),
    )?;
    // The package test (tests/tests/deb_package.rs) installs this one: the debug build just
    // made, so the suite does not compile the tree a second time in release.
    let deb = package::build(root, package::Build::Debug)?;
    run_cmd(
        cargo()
            .current_dir(root)
            .args(["test", "--workspace", "--locked"])
            .env("SMTP_GATEWAY_DEB", &deb)
            .args(cargo_args),
    )?;
    // Every fuzz target for a short bounded time on its committed corpus: a crash fails the run.
    fuzz::run(root, &[], fuzz::CI_SECONDS)?;
    Ok(())
}

//! `cargo xtask fuzz [TARGET...] [--time S]`: builds the cargo-fuzz targets of `fuzz/` (no
//! sanitizer, so the stable toolchain builds them) and runs each for `S` seconds, one after the
//! other, on its committed seed corpus; prints the executions of each.
//!
//! - Seeds: `fuzz/corpus/<target>/` (committed, read only here). What libFuzzer finds on the way
//!   goes to `target/fuzz-corpus/<target>/`, so a run never dirties the tree; delete that folder
//!   to start from the seeds again.
//! - A crash, a panic, a timeout of one input or an out-of-memory fails the run; libFuzzer leaves
//!   the input in `fuzz/artifacts/<target>/` (reproduce with `cargo fuzz run -s none <target>
//!   <file>` in `fuzz/`), and it becomes a regression test in the normal test suite.
//! - `cargo xtask test` runs every target for [`CI_SECONDS`] after the unit tests.
//! - Each run's libFuzzer output is kept in `target/fuzz-logs/<target>.log`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{render, run_cmd};

/// Seconds each target runs in `cargo xtask test` (8 targets: under 2 minutes of fuzzing).
pub const CI_SECONDS: u64 = 10;

/// Longest time one input may take before libFuzzer calls it a hang (the session target waits
/// for a whole SMTP session; its own bound is 30 s).
const INPUT_TIMEOUT_S: u64 = 60;

/// Largest input libFuzzer generates (bytes): long enough for a pipelined session or a small
/// configuration file, short enough to keep the executions fast.
const MAX_INPUT_LEN: usize = 4096;

/// What one target's run gave.
struct Outcome {
    /// The target's name.
    target: String,
    /// Inputs executed (libFuzzer's `Done N runs`), if it got that far.
    runs: Option<u64>,
    /// Whether libFuzzer exited cleanly (no crash, hang or out-of-memory).
    ok: bool,
}

/// Builds the targets and runs `only` (every target when empty) for `seconds` each.
pub fn run(root: &Path, only: &[String], seconds: u64) -> anyhow::Result<()> {
    let dir = root.join("fuzz");
    let all = targets(root)?;
    for name in only {
        if !all.contains(name) {
            bail!("no fuzz target {name:?} (targets: {})", all.join(", "));
        }
    }
    let chosen: Vec<String> = if only.is_empty() { all } else { only.to_vec() };
    run_cmd(
        cargo_fuzz(root)
            .current_dir(&dir)
            .args(["build", "-s", "none"]),
    )
    .context("building the fuzz targets")?;
    let logs = root.join("target/fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    let mut outcomes = Vec::new();
    for target in &chosen {
        outcomes.push(run_one(
            root,
            target,
            seconds,
            &logs.join(format!("{target}.log")),
        )?);
    }
    println!(
        "\n{:<16} {:>14} {:>12}  result",
        "target", "executions", "per second"
    );
    for o in &outcomes {
        let runs = o.runs.map_or_else(|| "-".to_string(), |r| r.to_string());
        let rate = o
            .runs
            .map_or_else(|| "-".to_string(), |r| (r / seconds.max(1)).to_string());
        let result = if o.ok { "ok" } else { "FAILED" };
        println!("{:<16} {runs:>14} {rate:>12}  {result}", o.target);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz target(s) {} failed: the inputs are in fuzz/artifacts/<target>/, the logs in \
             target/fuzz-logs/",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `cargo fuzz list`: the targets declared in `fuzz/Cargo.toml`.
fn targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let out = cargo_fuzz(root)
        .current_dir(root.join("fuzz"))
        .arg("list")
        .output()
        .context("running cargo fuzz list (is cargo-fuzz installed? `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Runs one target for `seconds`, its output going to `log`.
fn run_one(root: &Path, target: &str, seconds: u64, log: &Path) -> anyhow::Result<Outcome> {
    let dir = root.join("fuzz");
    let seeds = dir.join("corpus").join(target);
    let work = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(dir.join("artifacts").join(target))?;
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = cargo_fuzz(root);
    // The first corpus folder receives what libFuzzer finds; the committed seeds come second.
    cmd.current_dir(&dir)
        .args(["run", "-s", "none", target])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-max_len={MAX_INPUT_LEN}"))
        .arg("-print_final_stats=1")
        .stdout(Stdio::null())
        .stderr(file);
    eprintln!(
        "+ {}  (for {seconds} s, log {})",
        render(&cmd),
        log.display()
    );
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", render(&cmd)))?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let runs = executions(&text);
    if !status.success() {
        // The end of the log says what happened (the panic message, the input's path).
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
    }
    Ok(Outcome {
        target: target.to_string(),
        runs,
        ok: status.success(),
    })
}

/// libFuzzer's `Done 123456 runs in 10 second(s)` (or `stat::number_of_executed_units`).
fn executions(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        if let Some(rest) = l.strip_prefix("Done ") {
            return rest.split_whitespace().next()?.parse().ok();
        }
        let rest = l.strip_prefix("stat::number_of_executed_units:")?;
        rest.trim().parse().ok()
    })
}

/// `cargo-fuzz` from the project-local tools (installed by `cargo xtask setup`).
fn cargo_fuzz(root: &Path) -> Command {
    let tools: PathBuf = root.join(".tools/bin");
    let mut cmd = Command::new(tools.join("cargo-fuzz"));
    // cargo-fuzz runs as a cargo subcommand: its first argument is its own name.
    cmd.arg("fuzz");
    // It calls `cargo` itself; the one running xtask is the one to use.
    if let Some(cargo) = std::env::var_os("CARGO") {
        cmd.env("CARGO", cargo);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::executions;

    #[test]
    fn reads_the_execution_count() {
        let log = "#2\tINITED cov: 5\n#65536\tpulse\nDone 1234567 runs in 11 second(s)\n";
        assert_eq!(executions(log), Some(1_234_567));
        assert_eq!(executions("stat::number_of_executed_units: 42\n"), Some(42));
        assert_eq!(executions("crash\n"), None);
    }
}

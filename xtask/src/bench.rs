//! `cargo xtask bench [NAME...] [--quick] [--render-only]`: runs the benchmark binaries (release
//! builds of the `smtp-gateway-tests` crate), keeps what each measured in docs/bench/, draws the
//! plots and writes docs/BENCHMARKS.md from every section.
//!
//! Per sub-benchmark `<name>` (binary `bench-<name>`):
//! - `docs/bench/<name>.md`: its Markdown report, headed by the command, the date and the machine;
//! - `docs/bench/<name>.json`: its `bench_figures::Figures` (the binary writes it when given
//!   `--figures PATH`; binaries whose `--help` does not mention `--figures` are run without it,
//!   and their section has no plots);
//! - `docs/bench/<name>-<figure id>.svg`: one plot per figure (see `plot.rs`).
//!
//! docs/BENCHMARKS.md is rebuilt from those files alone (`--render-only` does only that), so
//! sections measured at different times combine. Figures are ratios against baselines measured
//! in the same run; the machine and the exact command are recorded with them. `--quick` (smoke
//! run) writes the same files under target/bench-quick/ instead and leaves docs/ alone.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};
use bench_figures::Figures;
use clap::ValueEnum;

use crate::{plot, run_cmd};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Which {
    /// XDP program cost per packet (BPF_PROG_TEST_RUN) and bulk import time.
    Xdp,
    /// SMTP proxy throughput against direct-to-sink (smtp-source/smtp-sink), HAProxy, Haraka
    /// and Postfix, the gateway's sessions/s with FCrDNS + SPF on vs off (DNS responder on
    /// loopback), and memory per idle session.
    Smtp,
    /// Drop rate of a SYN flood: XDP against iptables/nft and userspace accept+close.
    Drop,
    /// Clean sessions per second and handshake latency while floods run, XDP on and off.
    Attack,
    /// Fleet state through Redis: ban-to-drop latency on another gateway against the local
    /// one, and SMTP session latency and rate with the Redis store against none.
    Fleet,
}

impl Which {
    /// Every sub-benchmark, in the order BENCHMARKS.md lists them.
    const ALL: [Which; 5] = [
        Which::Xdp,
        Which::Smtp,
        Which::Drop,
        Which::Attack,
        Which::Fleet,
    ];

    fn name(self) -> &'static str {
        match self {
            Which::Xdp => "xdp",
            Which::Smtp => "smtp",
            Which::Drop => "drop",
            Which::Attack => "attack",
            Which::Fleet => "fleet",
        }
    }

    fn binary(self) -> String {
        format!("bench-{}", self.name())
    }
}

/// Runs the selected benchmarks (all when `which` is empty), then redraws and rebuilds the index.
pub fn run(root: &Path, which: &[Which], quick: bool) -> anyhow::Result<()> {
    let explicit = !which.is_empty();
    let selected: Vec<Which> = Which::ALL
        .into_iter()
        .filter(|b| !explicit || which.contains(b))
        .collect();
    // Sub-benchmarks whose binary is not in this tree yet (written on another branch).
    let manifest = std::fs::read_to_string(root.join("tests/Cargo.toml"))
        .context("reading tests/Cargo.toml")?;
    let (present, missing): (Vec<Which>, Vec<Which>) = selected
        .into_iter()
        .partition(|b| manifest.contains(&format!("name = \"{}\"", b.binary())));
    if explicit && !missing.is_empty() {
        bail!(
            "no benchmark binary {} in tests/Cargo.toml (not merged into this tree yet?)",
            missing
                .iter()
                .map(|b| b.binary())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    run_cmd(crate::cargo().current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "smtp-gateway-tests",
        "-p",
        "smtp-gateway",
    ]))?;
    let out = if quick {
        root.join("target/bench-quick")
    } else {
        root.join("docs/bench")
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for bench in &present {
        run_binary(root, &out, *bench, quick)?;
        let svgs = render_section(&out, bench.name())?;
        for svg in svgs {
            eprintln!("plot: {}", svg.display());
        }
    }
    if quick {
        eprintln!(
            "quick run: reports and plots in {} (docs/ unchanged)",
            out.display()
        );
    } else {
        write_index(root)?;
    }
    for bench in &missing {
        eprintln!(
            "warning: skipped {}: its binary {} is not in this tree yet",
            bench.name(),
            bench.binary()
        );
    }
    Ok(())
}

/// `--render-only`: redraws every plot from docs/bench/*.json and rebuilds docs/BENCHMARKS.md;
/// runs nothing.
pub fn render_only(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("docs/bench");
    for name in section_names(&dir)? {
        for svg in render_section(&dir, &name)? {
            eprintln!("plot: {}", svg.display());
        }
    }
    write_index(root)
}

/// Whether `exe --help` mentions `--figures` (binaries from before the figures schema do not).
fn accepts_figures(exe: &Path) -> anyhow::Result<bool> {
    let out = Command::new(exe)
        .arg("--help")
        .output()
        .with_context(|| format!("cannot run {} --help", exe.display()))?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--figures"))
}

fn run_binary(root: &Path, out: &Path, bench: Which, quick: bool) -> anyhow::Result<()> {
    let name = bench.name();
    let binary = bench.binary();
    let exe = root.join("target/release").join(&binary);
    let json = out.join(format!("{name}.json"));
    // Written next to the final file and renamed on success: a failed run keeps the old figures.
    let json_new = out.join(format!("{name}.json.new"));
    let _ = std::fs::remove_file(&json_new);
    let figures = accepts_figures(&exe)?;
    let mut cmd = Command::new(&exe);
    if quick {
        cmd.arg("--quick");
    }
    if figures {
        cmd.arg("--figures").arg(&json_new);
    } else {
        eprintln!("note: {binary} does not accept --figures yet: its section has no plots");
    }
    eprintln!("+ {}", crate::render(&cmd));
    // Progress (stderr) as it happens; the report (stdout) is kept.
    let output = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{table}");
    if !output.status.success() {
        let _ = std::fs::remove_file(&json_new);
        bail!("{binary} failed ({})", output.status);
    }
    if figures {
        let doc = Figures::read(&json_new).with_context(|| {
            format!("{binary} wrote no valid figures to {}", json_new.display())
        })?;
        ensure!(
            doc.bench == name,
            "{binary} wrote figures for bench {:?}, not {name:?}",
            doc.bench
        );
        std::fs::rename(&json_new, &json)
            .with_context(|| format!("renaming {} to {}", json_new.display(), json.display()))?;
    } else if json.exists() {
        // Figures of an earlier run would not match the new tables.
        std::fs::remove_file(&json).with_context(|| format!("removing {}", json.display()))?;
    }
    let section = format!(
        "## {name}\n\nCommand: `cargo xtask bench {name}`{} — {}\n\n{}\n{table}\n",
        if quick { " --quick" } else { "" },
        today(),
        machine()
    );
    std::fs::write(out.join(format!("{name}.md")), section)
        .with_context(|| format!("writing {name}.md"))?;
    Ok(())
}

/// The sections in `dir` (`<name>.md`): the known benchmarks in their order, then the others
/// alphabetically.
fn section_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let rank = |n: &str| {
        Which::ALL
            .iter()
            .position(|b| b.name() == n)
            .unwrap_or(Which::ALL.len())
    };
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    Ok(names)
}

/// The figures of section `name` in `dir`, if it has any.
fn section_figures(dir: &Path, name: &str) -> anyhow::Result<Option<Figures>> {
    let path = dir.join(format!("{name}.json"));
    if !path.exists() {
        return Ok(None);
    }
    let doc = Figures::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        doc.bench == name,
        "{} holds figures of bench {:?}",
        path.display(),
        doc.bench
    );
    Ok(Some(doc))
}

/// Removes the section's old plots (`<name>-*.svg`) and draws its figures; returns the new files.
fn render_section(dir: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    let prefix = format!("{name}-");
    for entry in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&prefix) && file.ends_with(".svg") {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    match section_figures(dir, name)? {
        Some(doc) => plot::render(&doc, dir),
        None => Ok(Vec::new()),
    }
}

/// docs/BENCHMARKS.md from docs/bench/*.md, each followed by its plots (from its JSON) with their
/// notes.
fn write_index(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("docs/bench");
    let mut text = String::from(
        "# Benchmarks\n\nGenerated by `cargo xtask bench` (each section by its own sub-benchmark; \
         `cargo xtask bench --render-only` rebuilds this page and its plots from docs/bench/*.md \
         and *.json without measuring anything). These machines are shared 2-core VMs: every \
         figure is the median of repeats with its spread, and compared with a baseline measured \
         in the same run. In the plots a bar is the median and its whisker spans min to max.\n\n",
    );
    for name in section_names(&dir)? {
        let section = std::fs::read_to_string(dir.join(format!("{name}.md")))
            .with_context(|| format!("reading docs/bench/{name}.md"))?;
        text.push_str(&nest_headings(&section));
        text.push('\n');
        let Some(doc) = section_figures(&dir, &name)? else {
            continue;
        };
        if doc.figures.is_empty() {
            continue;
        }
        text.push_str(&format!("### {name}: plots\n\n"));
        for figure in &doc.figures {
            let svg = plot::svg_name(&doc.bench, figure);
            ensure!(
                dir.join(&svg).exists(),
                "docs/bench/{svg} is missing: run `cargo xtask bench --render-only`"
            );
            text.push_str(&format!("![{}](bench/{svg})\n\n", figure.title));
            if !figure.note.is_empty() {
                text.push_str(&format!("{}\n\n", figure.note));
            }
        }
        text.push_str(&format!(
            "Plotted from `docs/bench/{name}.json`, measured with `{}` on {}.\n\n",
            doc.command, doc.machine
        ));
    }
    std::fs::write(root.join("docs/BENCHMARKS.md"), text).context("writing docs/BENCHMARKS.md")?;
    eprintln!("wrote docs/BENCHMARKS.md");
    Ok(())
}

/// A section under its `## name` heading: the report's own title (`# bench-…`) goes, and its
/// headings move one level down so they nest under the section's.
fn nest_headings(section: &str) -> String {
    let mut out = String::new();
    for (i, line) in section.lines().enumerate() {
        if i > 0 && line.starts_with("# ") {
            continue;
        }
        if i > 0 && line.starts_with('#') {
            out.push('#');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// CPU model, cores, memory and kernel, for the record.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    format!("Machine: {cpu}, {cores} cores, {mem_gib} GiB, Linux {kernel}.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bench_figures::{Figure, Point, Series};

    /// A docs tree with an `xdp` section without figures and an `attack` section with one figure:
    /// the index lists them in order, embeds the plot with its note, and `render_only` redraws.
    #[test]
    fn index_embeds_plots_from_committed_files_only() {
        let root = std::env::temp_dir().join(format!("xtask-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("docs/bench");
        std::fs::create_dir_all(&dir).expect("dirs");
        std::fs::write(dir.join("xdp.md"), "## xdp\n\ntable\n").expect("md");
        std::fs::write(dir.join("attack.md"), "## attack\n\ntable\n").expect("md");
        std::fs::write(dir.join("attack-stale.svg"), "old").expect("svg");
        let doc = Figures {
            bench: "attack".into(),
            command: "cargo xtask bench attack".into(),
            machine: "m".into(),
            figures: vec![Figure {
                id: "rate".into(),
                title: "Clean sessions per second".into(),
                x_label: "scenario".into(),
                y_label: "ratio".into(),
                categories: vec!["a".into()],
                series: vec![Series {
                    name: "XDP on".into(),
                    points: vec![Point::from_samples("a", &[0.9, 1.0])],
                }],
                note: "The aim is 0.9.".into(),
                ..Figure::default()
            }],
        };
        doc.write(&dir.join("attack.json")).expect("json");
        render_only(&root).expect("render-only");
        let index = std::fs::read_to_string(root.join("docs/BENCHMARKS.md")).expect("index");
        assert_eq!(
            nest_headings("## x\n\n# bench-x\n## Aims\n### More\ntext # not a heading\n"),
            "## x\n\n### Aims\n#### More\ntext # not a heading\n"
        );
        let xdp = index.find("## xdp").expect("xdp section");
        let attack = index.find("## attack").expect("attack section");
        assert!(xdp < attack, "known sections keep their order");
        assert!(index.contains("![Clean sessions per second](bench/attack-rate.svg)"));
        assert!(index.contains("The aim is 0.9."));
        assert!(index.contains("`cargo xtask bench attack`"));
        assert!(dir.join("attack-rate.svg").exists());
        assert!(!dir.join("attack-stale.svg").exists(), "stale plot removed");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}

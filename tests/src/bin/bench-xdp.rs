//! `bench-xdp`: what the XDP program costs per packet, and how long a bulk import takes.
//!
//! - Per-packet cost: the program is loaded unattached (no interface, no traffic) and run with
//!   `BPF_PROG_TEST_RUN` on a crafted frame `repeat` times; the kernel reports the mean time per
//!   run. Each row is measured several times (median and min–max are printed), for a blocked
//!   source (hit: dropped) and an unblocked one (miss: passed), IPv4 and IPv6, with exact
//!   blocklists of 0, 100k and 1M filler entries. The baseline row is the cheapest path (a UDP
//!   frame: not inspected), measured in the same run, so the other rows read as ratios.
//! - Import: `smtp-gateway block import` of a file of 1M IPv4 + 1M IPv6 addresses into fresh maps,
//!   timed as an operator would see it. The binary is taken from the directory of this executable
//!   (build it first: `cargo build --release -p smtp-gateway`).
//!
//! Output: a Markdown report on stdout. `--quick` (CI smoke): fewer and shorter measurements, no
//! 1M level, and a 100k + 100k import.
//!
//! Needs root (CAP_BPF and bpffs). Every pin lives under `/sys/fs/bpf/sgw-bench-<pid>*` and is
//! removed when the benchmark ends, on error too. Map keys are never sent anywhere: the filler
//! addresses only have to be distinct (IPv4 fillers are in 240.0.0.0/4, IPv6 in 2001:db8::/32).

#[path = "../../tests/support/frames.rs"]
mod frames;

use smtp_gateway_tests::{TempDir, machine, thousands};
use std::{
    fmt::Write as _,
    io::{BufWriter, Write as _},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::programs::{TestRun, TestRunOptions};
use frames::{Frame, Ipv4, Ipv6, Tcp};
use smtp_gateway::{
    config::DataplaneConfig,
    dataplane::{Dataplane, Target, loader},
};
use smtp_gateway_common::{BlockEntry, Verdict, origin};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Test sources (RFC 2544 benchmarking range and the IPv6 documentation prefix).
const HIT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const MISS_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const HIT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const MISS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// The `i`-th IPv4 filler key: 240.0.0.0/4 (reserved) holds 268M of them.
fn filler_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xf000_0000 | i)
}

/// The `i`-th IPv6 filler key: inside 2001:db8:1000::/48.
fn filler_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from((0x2001_0db8_1000_u128 << 80) | u128::from(i))
}

struct Settings {
    quick: bool,
    /// `repeat` of one BPF_PROG_TEST_RUN call.
    repeat: u32,
    /// Measurements per row.
    runs: usize,
    /// Filler entries per family at each level.
    levels: Vec<u32>,
    /// Addresses per family in the import file.
    import_per_family: u32,
}

impl Settings {
    fn from_args() -> Result<Option<Self>> {
        let mut quick = false;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => quick = true,
                "-h" | "--help" => {
                    println!(
                        "usage: bench-xdp [--quick]\n\n\
                         Measures the XDP program with BPF_PROG_TEST_RUN and times \
                         `smtp-gateway block import`; prints Markdown. Needs root.\n\
                         --quick  CI smoke: fewer measurements, no 1M level, 100k import"
                    );
                    return Ok(None);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(Some(if quick {
            Self {
                quick,
                repeat: 100_000,
                runs: 3,
                levels: vec![0, 100_000],
                import_per_family: 100_000,
            }
        } else {
            Self {
                quick,
                repeat: 1_000_000,
                runs: 5,
                levels: vec![0, 100_000, 1_000_000],
                import_per_family: 1_000_000,
            }
        }))
    }
}

/// Removes a pin directory (maps and links) when dropped: on success, error and panic alike.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = loader::detach(&self.0) {
            eprintln!("warning: removing the pins in {}: {e:#}", self.0.display());
        }
    }
}

/// One measured row.
struct Row {
    path: String,
    family: &'static str,
    entries: Option<u32>,
    verdict: Verdict,
    action: u32,
    samples: Vec<u64>,
}

impl Row {
    fn median(&self) -> u64 {
        let mut s = self.samples.clone();
        s.sort_unstable();
        s[s.len() / 2]
    }
    fn min(&self) -> u64 {
        self.samples.iter().copied().min().unwrap_or(0)
    }
    fn max(&self) -> u64 {
        self.samples.iter().copied().max().unwrap_or(0)
    }
}

/// The unattached program and its maps.
struct Bench {
    ebpf: aya::Ebpf,
    dp: Dataplane,
    settings: Settings,
    v4_entries: u32,
    v6_entries: u32,
}

impl Bench {
    /// Runs `frame` `runs` times `repeat` times, checking that every run took the expected path
    /// (action and verdict counter) so a row can never silently measure another path.
    fn measure(
        &mut self,
        path: &str,
        family: &'static str,
        frame: &[u8],
        action: u32,
        verdict: Verdict,
        entries: Option<u32>,
    ) -> Result<Row> {
        let repeat = self.settings.repeat;
        let mut samples = Vec::with_capacity(self.settings.runs);
        for _ in 0..self.settings.runs {
            self.dp.reset_verdicts()?;
            let program = loader::loaded_program(&mut self.ebpf)?;
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat,
                    ..Default::default()
                })
                .with_context(|| format!("BPF_PROG_TEST_RUN of {path} ({family})"))?;
            ensure!(
                result.return_value == action,
                "{path} ({family}): XDP action {} instead of {action}",
                result.return_value
            );
            let totals = self.dp.verdict_totals()?;
            let counted: u64 = totals.iter().map(|t| t.packets).sum();
            let expected = totals
                .iter()
                .find(|t| t.verdict == verdict.name())
                .map_or(0, |t| t.packets);
            ensure!(
                counted == u64::from(repeat) && expected == u64::from(repeat),
                "{path} ({family}): {expected} of {counted} packets counted as {} (expected all \
                 {repeat}): {totals:?}",
                verdict.name()
            );
            samples.push(result.duration.as_nanos() as u64);
        }
        let row = Row {
            path: path.to_string(),
            family,
            entries,
            verdict,
            action,
            samples,
        };
        eprintln!(
            "  {:<38} {:<4} {:>9} entries: {} ns/packet",
            row.path,
            row.family,
            row.entries.map_or("-".into(), |n| n.to_string()),
            row.median()
        );
        Ok(row)
    }

    /// Adds exact IPv4 and IPv6 filler entries until each family holds `fillers` of them.
    fn fill_to(&mut self, fillers: u32, from: u32) -> Result<(Duration, u32)> {
        let entry = BlockEntry {
            expires_at_ns: 0,
            added_at_s: 0,
            reason: 0,
            origin: origin::IMPORT,
        };
        let started = Instant::now();
        for i in from..fillers {
            self.dp.block(Target::V4(filler_v4(i)), entry)?;
            self.dp.block(Target::V6(filler_v6(i)), entry)?;
        }
        self.v4_entries += fillers - from;
        self.v6_entries += fillers - from;
        Ok((started.elapsed(), 2 * (fillers - from)))
    }
}

fn syn_v4(src: Ipv4Addr) -> Vec<u8> {
    Frame::new()
        .ipv4(Ipv4 {
            src,
            ..Ipv4::new("0.0.0.0")
        })
        .tcp(Tcp::syn(25))
        .build()
}

fn syn_v6(src: Ipv6Addr) -> Vec<u8> {
    Frame::new()
        .ipv6(Ipv6 {
            src,
            ..Ipv6::new("::")
        })
        .tcp(Tcp::syn(25))
        .build()
}

fn main() -> ExitCode {
    match Settings::from_args().and_then(|s| match s {
        Some(settings) => run(settings),
        None => Ok(()),
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings) -> Result<()> {
    let pid = std::process::id();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-bench-{pid}"));
    let _ = loader::detach(&pin_dir);
    let pins = Pins(pin_dir.clone());

    let mut cfg = DataplaneConfig {
        pin_dir,
        ..DataplaneConfig::default()
    };
    // The rows measure the lookup paths: every repeat of a miss must pass, not hit the limiter
    // after the burst. The limiter has its own row below.
    cfg.rate_limit.enabled = false;
    let c = &mut cfg.capacity;
    c.block_v4 = 2_000_000;
    c.block_v6 = 2_000_000;
    c.rate_sources = 1024;
    c.source_stats = 1024;

    let (ebpf, mut dp) = loader::load_unattached(&cfg).context("loading the XDP program")?;
    dp.apply_config(&cfg)?;
    let mut bench = Bench {
        ebpf,
        dp,
        settings,
        v4_entries: 0,
        v6_entries: 0,
    };

    eprintln!("measuring (repeat {} per run)...", bench.settings.repeat);
    let baseline_frame = Frame::new()
        .ipv4(Ipv4 {
            src: MISS_V4,
            ..Ipv4::new("0.0.0.0")
        })
        .udp(25)
        .build();
    let mut rows = vec![bench.measure(
        "baseline: UDP to port 25 (not inspected)",
        "IPv4",
        &baseline_frame,
        XDP_PASS,
        Verdict::NotInspected,
        None,
    )?];

    let mut fills = Vec::new();
    let levels = bench.settings.levels.clone();
    let mut filled = 0;
    let entry = BlockEntry {
        expires_at_ns: 0,
        added_at_s: 0,
        reason: 0,
        origin: origin::CLI,
    };
    for level in levels {
        let (took, added) = bench.fill_to(level, filled)?;
        if added > 0 {
            fills.push((added, took));
        }
        filled = level;
        // Misses first: at level 0 the maps are truly empty.
        rows.push(bench.measure(
            "miss: SYN, source not blocked",
            "IPv4",
            &syn_v4(MISS_V4),
            XDP_PASS,
            Verdict::Passed,
            Some(bench.v4_entries),
        )?);
        rows.push(bench.measure(
            "miss: SYN, source not blocked",
            "IPv6",
            &syn_v6(MISS_V6),
            XDP_PASS,
            Verdict::Passed,
            Some(bench.v6_entries),
        )?);
        if level == 0 {
            bench.dp.block(Target::V4(HIT_V4), entry)?;
            bench.dp.block(Target::V6(HIT_V6), entry)?;
            bench.v4_entries += 1;
            bench.v6_entries += 1;
        }
        rows.push(bench.measure(
            "hit: SYN, source in exact blocklist",
            "IPv4",
            &syn_v4(HIT_V4),
            XDP_DROP,
            Verdict::DroppedExact,
            Some(bench.v4_entries),
        )?);
        rows.push(bench.measure(
            "hit: SYN, source in exact blocklist",
            "IPv6",
            &syn_v6(HIT_V6),
            XDP_DROP,
            Verdict::DroppedExact,
            Some(bench.v6_entries),
        )?);
    }

    // The SYN limiter: a source over its limit. Burst 1 at one SYN per 1000 s: once a first SYN
    // is admitted (below), no token comes back during the measurements.
    cfg.rate_limit.enabled = true;
    cfg.rate_limit.syn_per_second = 0.001;
    cfg.rate_limit.burst = 1;
    bench.dp.apply_config(&cfg)?;
    let limited_src = Ipv4Addr::new(198, 18, 0, 3);
    loader::loaded_program(&mut bench.ebpf)?
        .test_run(TestRunOptions {
            data_in: Some(&syn_v4(limited_src)),
            ..Default::default()
        })
        .context("priming the rate limiter")?;
    rows.push(bench.measure(
        "rate limiter: SYN over the limit",
        "IPv4",
        &syn_v4(limited_src),
        XDP_DROP,
        Verdict::RateLimited,
        Some(bench.v4_entries),
    )?);

    let import = time_import(&bench.settings)?;

    print_report(&bench.settings, &rows, &fills, &import);
    drop(bench);
    drop(pins);
    Ok(())
}

struct ImportResult {
    binary: PathBuf,
    per_family: u32,
    file_bytes: u64,
    wall: Duration,
    summary: String,
}

/// Times `smtp-gateway block import` of `per_family` IPv4 + IPv6 addresses into fresh maps.
fn time_import(settings: &Settings) -> Result<ImportResult> {
    let pid = std::process::id();
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe
        .parent()
        .context("this executable has no parent directory")?;
    let binary = dir.join("smtp-gateway");
    ensure!(
        binary.exists(),
        "{} not found: build it next to bench-xdp first (`cargo build --release -p smtp-gateway` \
         for a release bench)",
        binary.display()
    );

    let temp = TempDir(std::env::temp_dir().join(format!("sgw-bench-{pid}")));
    std::fs::create_dir_all(&temp.0).with_context(|| format!("creating {}", temp.0.display()))?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sgw-bench-{pid}-import"));
    let _ = loader::detach(&pin_dir);
    let pins = Pins(pin_dir.clone());

    let list = temp.0.join("blocklist.txt");
    let per_family = settings.import_per_family;
    eprintln!(
        "writing {} addresses to {}...",
        2 * per_family,
        list.display()
    );
    {
        let file =
            std::fs::File::create(&list).with_context(|| format!("creating {}", list.display()))?;
        let mut out = BufWriter::new(file);
        for i in 0..per_family {
            writeln!(out, "{}", filler_v4(i))?;
        }
        for i in 0..per_family {
            writeln!(out, "{}", filler_v6(i))?;
        }
        out.flush()
            .with_context(|| format!("writing {}", list.display()))?;
    }
    let file_bytes = std::fs::metadata(&list)?.len();

    let config = temp.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[dataplane]\npin_dir = {}\n",
            toml_string(&pin_dir.display().to_string())
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;

    eprintln!("timing {} block import...", binary.display());
    let started = Instant::now();
    let output = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .args(["block", "import"])
        .arg(&list)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "{} block import failed ({}): {}{}",
        binary.display(),
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("imported "))
        .unwrap_or_default()
        .to_string();
    let expected = format!("imported {} entries", 2 * per_family);
    ensure!(
        summary.starts_with(&expected),
        "unexpected import summary {summary:?} (expected {expected:?})"
    );
    verify_import(&pin_dir, per_family)?;
    drop(pins);
    Ok(ImportResult {
        binary,
        per_family,
        file_bytes,
        wall,
        summary,
    })
}

/// Checks the first and last address of each family landed in the imported maps.
fn verify_import(pin_dir: &Path, per_family: u32) -> Result<()> {
    let cfg = DataplaneConfig {
        pin_dir: pin_dir.to_path_buf(),
        ..DataplaneConfig::default()
    };
    let dp = loader::open_existing(&cfg)?.context("the import created no maps")?;
    for target in [
        Target::V4(filler_v4(0)),
        Target::V4(filler_v4(per_family - 1)),
        Target::V6(filler_v6(0)),
        Target::V6(filler_v6(per_family - 1)),
    ] {
        ensure!(
            dp.block_entry(target)?.is_some(),
            "{target} missing after the import"
        );
    }
    Ok(())
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn print_report(
    settings: &Settings,
    rows: &[Row],
    fills: &[(u32, Duration)],
    import: &ImportResult,
) {
    let baseline = rows.first().map_or(1, Row::median).max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# bench-xdp{}\n",
        if settings.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(out, "- machine: {}", machine());
    let _ = writeln!(
        out,
        "- method: BPF_PROG_TEST_RUN on an unattached program, repeat {} per run (the kernel \
         reports the mean per run), {} runs per row; median and min–max in ns per packet",
        thousands(u64::from(settings.repeat)),
        settings.runs
    );
    let _ = writeln!(
        out,
        "- frames: IPv4 TCP SYN 54 bytes, IPv6 TCP SYN 74 bytes, to port 25; rate limit off except \
         in its own row; the same frame is repeated, so map lookups are cache-hot (real traffic \
         from many sources adds cache misses)"
    );
    let _ = writeln!(
        out,
        "- entries: exact entries in the family's blocklist map at measurement time (fillers + the \
         blocked test source); the prefix tries are empty but still looked up on every inspected \
         packet\n"
    );
    let _ = writeln!(
        out,
        "| Path | Family | Exact entries | Verdict | Action | ns/packet (median) | min–max | × baseline |"
    );
    let _ = writeln!(out, "|---|---|--:|---|---|--:|--:|--:|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}–{} | {:.2} |",
            r.path,
            r.family,
            r.entries.map_or("–".into(), |n| thousands(u64::from(n))),
            r.verdict.name(),
            if r.action == XDP_DROP { "DROP" } else { "PASS" },
            r.median(),
            r.min(),
            r.max(),
            r.median() as f64 / baseline
        );
    }

    let _ = writeln!(out, "\n## Filling the maps\n");
    let _ = writeln!(
        out,
        "| Entries added (IPv4 + IPv6, `Dataplane::block`, one syscall each) | Time | Entries/s |"
    );
    let _ = writeln!(out, "|--:|--:|--:|");
    for (added, took) in fills {
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {} |",
            thousands(u64::from(*added)),
            took.as_secs_f64(),
            thousands((f64::from(*added) / took.as_secs_f64().max(1e-9)) as u64)
        );
    }

    let total = 2 * u64::from(import.per_family);
    let _ = writeln!(out, "\n## Import\n");
    let _ = writeln!(
        out,
        "| Command | Entries | File | Wall time | Entries/s |\n|---|--:|--:|--:|--:|"
    );
    let _ = writeln!(
        out,
        "| `smtp-gateway block import` (fresh maps) | {} IPv4 + {} IPv6 | {:.1} MB | {:.2} s | {} |",
        thousands(u64::from(import.per_family)),
        thousands(u64::from(import.per_family)),
        import.file_bytes as f64 / 1e6,
        import.wall.as_secs_f64(),
        thousands((total as f64 / import.wall.as_secs_f64().max(1e-9)) as u64)
    );
    let _ = writeln!(
        out,
        "\nBinary: {}. Its own summary: \"{}\"",
        import.binary.display(),
        import.summary
    );
    print!("{out}");
}

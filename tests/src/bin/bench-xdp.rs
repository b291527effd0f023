//! `bench-xdp`: what the XDP program costs per packet, and how long a bulk import takes.
//!
//! - Per-packet cost: the program is loaded unattached (no interface, no traffic) and run with
//!   `BPF_PROG_TEST_RUN` on a crafted frame `repeat` times; the kernel reports the mean time per
//!   run. Each row is measured several times (median and min–max are printed), for a blocked
//!   source (hit: dropped) and an unblocked one (miss: passed), IPv4 and IPv6, with exact
//!   blocklists of 0, 100k and 1M filler entries. The baseline row is the cheapest path (a UDP
//!   frame: not inspected), measured in the same run, so the other rows read as ratios.
//! - Distinct sources: the same paths at the largest level, but every frame from another source
//!   (misses: addresses never seen; hits: blocked fillers spread over the whole map), each run
//!   once (`repeat` 1), so the per-source maps insert a new entry and the blocklist lookup lands in
//!   a cold bucket, as in a flood from many sources. With `repeat` 1 the kernel's figure includes
//!   its own timer and bottom-half bracket around the run: these rows are read against a baseline
//!   measured the same way (UDP, not inspected, distinct sources), median and p10–p90 of the
//!   single runs.
//! - Trace (`why --follow`): with a trace active, a packet of an untraced source (one more lookup)
//!   and of a traced one (one aya-log line per packet, runs of 256 read after each run).
//! - Import: `smtp-gateway block import` of a file of 1M IPv4 + 1M IPv6 addresses into fresh maps,
//!   timed as an operator would see it. The binary is taken from the directory of this executable
//!   (build it first: `cargo build --release -p smtp-gateway`).
//! - Map memory: the kernel's own accounting of every pinned map (`bpftool map show`,
//!   `bytes_memlock`, which on Linux ≥ 6.4 is the map's memory use) at the default capacities of
//!   `config/gateway.toml`, once with the maps just created (empty) and once after the import.
//!
//! Output: a Markdown report on stdout; `--figures PATH` also writes the figures as JSON
//! (tests/src/figures.rs). `--quick` (CI smoke): fewer and shorter measurements, no 1M level, and a
//! 100k + 100k import.
//!
//! Needs root (CAP_BPF and bpffs). Every pin lives under `/sys/fs/bpf/sgw-bench-<pid>*` and is
//! removed when the benchmark ends, on error too. Map keys are never sent anywhere: the filler
//! addresses only have to be distinct (IPv4 fillers are in 240.0.0.0/4, IPv6 in 2001:db8::/32).

#[path = "../../tests/support/frames.rs"]
mod frames;

use smtp_gateway_tests::{
    BenchArgs, TempDir,
    figures::{Figure, Figures, Point, Series},
    machine, thousands,
};
use std::{
    fmt::Write as _,
    io::{BufWriter, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use aya::programs::{TestRun, TestRunOptions};
use frames::{Frame, Ipv4, Ipv6, Tcp};
use smtp_gateway::dataplane::{
    Dataplane, PinLayout, Target, clock, config::DataplaneConfig, follow::Follower, loader, trace,
};
use smtp_gateway_common::{BlockEntry, Verdict, maps, origin};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// `repeat` of a run on a traced source: its log lines (one per packet) must fit aya-log's ring
/// buffer (128 KiB) until read.
const TRACED_REPEAT: u32 = 256;

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
    /// Frames (one source each) per distinct-sources row.
    distinct: u32,
    /// Where to write the figures (`--figures PATH`).
    figures: Option<PathBuf>,
}

impl Settings {
    fn from_args() -> Result<Option<Self>> {
        let Some(BenchArgs { quick, figures }) = BenchArgs::parse(
            "bench-xdp",
            "Measures the XDP program with BPF_PROG_TEST_RUN, times \
                         `smtp-gateway block import` and the maps' kernel memory; prints \
                         Markdown. Needs root.",
            "CI smoke: fewer measurements, no 1M level, 100k import",
        )?
        else {
            return Ok(None);
        };
        Ok(Some(if quick {
            Self {
                quick,
                repeat: 100_000,
                runs: 3,
                levels: vec![0, 100_000],
                import_per_family: 100_000,
                distinct: 10_000,
                figures,
            }
        } else {
            Self {
                quick,
                repeat: 1_000_000,
                runs: 5,
                levels: vec![0, 100_000, 1_000_000],
                import_per_family: 1_000_000,
                distinct: 100_000,
                figures,
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
    /// One mean per run of `repeat` (one frame repeated), or one time per frame (distinct
    /// sources, `repeat` 1).
    samples: Vec<u64>,
    /// Every frame from another source, each run once.
    distinct: bool,
}

impl Row {
    fn median(&self) -> u64 {
        self.quantile(0.5)
    }
    /// The spread shown: min–max of the runs, or p10–p90 of the single runs of a distinct row.
    fn spread(&self) -> (u64, u64) {
        if self.distinct {
            (self.quantile(0.1), self.quantile(0.9))
        } else {
            (
                self.samples.iter().copied().min().unwrap_or(0),
                self.samples.iter().copied().max().unwrap_or(0),
            )
        }
    }
    fn quantile(&self, q: f64) -> u64 {
        let mut s = self.samples.clone();
        s.sort_unstable();
        let index = ((s.len().saturating_sub(1)) as f64 * q).round() as usize;
        s.get(index).copied().unwrap_or(0)
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
            distinct: false,
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

    /// Runs each of `frames` once (`repeat` 1), checking every action and that all were counted
    /// as `verdict`; one sample per frame.
    fn measure_distinct(
        &mut self,
        path: &str,
        family: &'static str,
        frames: &[Vec<u8>],
        action: u32,
        verdict: Verdict,
        entries: Option<u32>,
    ) -> Result<Row> {
        self.dp.reset_verdicts()?;
        let mut samples = Vec::with_capacity(frames.len());
        let program = loader::loaded_program(&mut self.ebpf)?;
        for frame in frames {
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat: 1,
                    ..Default::default()
                })
                .with_context(|| format!("BPF_PROG_TEST_RUN of {path} ({family})"))?;
            ensure!(
                result.return_value == action,
                "{path} ({family}, distinct sources): XDP action {} instead of {action}",
                result.return_value
            );
            samples.push(result.duration.as_nanos() as u64);
        }
        let totals = self.dp.verdict_totals()?;
        let counted: u64 = totals.iter().map(|t| t.packets).sum();
        let expected = totals
            .iter()
            .find(|t| t.verdict == verdict.name())
            .map_or(0, |t| t.packets);
        let n = frames.len() as u64;
        ensure!(
            counted == n && expected == n,
            "{path} ({family}, distinct sources): {expected} of {counted} packets counted as {} \
             (expected all {n}): {totals:?}",
            verdict.name()
        );
        let row = Row {
            path: format!("{path}, distinct sources"),
            family,
            entries,
            verdict,
            action,
            samples,
            distinct: true,
        };
        eprintln!(
            "  {:<38} {:<4} {:>9} entries: {} ns/packet (median of single runs)",
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
    smtp_gateway_tests::bench_main(Settings::from_args(), run)
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

    // Distinct sources at the largest level: misses from addresses never seen (10.0.0.0/8 and
    // 2001:db8:2::/48, one new source per frame), hits on fillers spread over the whole map.
    let n = bench.settings.distinct;
    let spread = |i: u32| -> u32 {
        // An odd multiplier modulo the filled level: distinct fillers in a scattered order.
        if filled == 0 {
            0
        } else {
            ((u64::from(i) * 2_654_435_761) % u64::from(filled)) as u32
        }
    };
    let udp: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            Frame::new()
                .ipv4(Ipv4 {
                    src: Ipv4Addr::from(0x0a00_0000 | i),
                    ..Ipv4::new("0.0.0.0")
                })
                .udp(25)
                .build()
        })
        .collect();
    let miss_v4: Vec<Vec<u8>> = (0..n)
        .map(|i| syn_v4(Ipv4Addr::from(0x0a00_0000 | i)))
        .collect();
    let miss_v6: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            syn_v6(Ipv6Addr::from(
                (0x2001_0db8_0002_u128 << 80) | u128::from(i),
            ))
        })
        .collect();
    let hit_v4: Vec<Vec<u8>> = (0..n).map(|i| syn_v4(filler_v4(spread(i)))).collect();
    let hit_v6: Vec<Vec<u8>> = (0..n).map(|i| syn_v6(filler_v6(spread(i)))).collect();
    let (v4_entries, v6_entries) = (bench.v4_entries, bench.v6_entries);
    rows.push(bench.measure_distinct(
        "baseline: UDP to port 25 (not inspected)",
        "IPv4",
        &udp,
        XDP_PASS,
        Verdict::NotInspected,
        None,
    )?);
    rows.push(bench.measure_distinct(
        "miss: SYN, source not blocked",
        "IPv4",
        &miss_v4,
        XDP_PASS,
        Verdict::Passed,
        Some(v4_entries),
    )?);
    rows.push(bench.measure_distinct(
        "miss: SYN, source not blocked",
        "IPv6",
        &miss_v6,
        XDP_PASS,
        Verdict::Passed,
        Some(v6_entries),
    )?);
    if filled > 0 {
        rows.push(bench.measure_distinct(
            "hit: SYN, source in exact blocklist",
            "IPv4",
            &hit_v4,
            XDP_DROP,
            Verdict::DroppedExact,
            Some(v4_entries),
        )?);
        rows.push(bench.measure_distinct(
            "hit: SYN, source in exact blocklist",
            "IPv6",
            &hit_v6,
            XDP_DROP,
            Verdict::DroppedExact,
            Some(v6_entries),
        )?);
    }

    // `why --follow`: with a trace active the program looks every inspected source up in the
    // TRACE map (another source traced: a miss), and logs each packet of a traced source with
    // aya-log. Logged runs are short (`TRACED_REPEAT`) and the log is read after each, so every
    // line fits the ring buffer and each run measures real logging, never a full buffer.
    let traced_src = Ipv4Addr::new(198, 18, 0, 4);
    let until = clock::monotonic_ns() + 3_600_000_000_000;
    bench
        .dp
        .trace_add(trace::source_key(IpAddr::V4(traced_src)), until)?;
    rows.push(bench.measure(
        "trace miss: SYN, another source traced",
        "IPv4",
        &syn_v4(MISS_V4),
        XDP_PASS,
        Verdict::Passed,
        Some(bench.v4_entries),
    )?);
    let mut follower = Follower::of_loaded(&mut bench.ebpf)?;
    let repeat = std::mem::replace(&mut bench.settings.repeat, TRACED_REPEAT);
    let runs = std::mem::replace(&mut bench.settings.runs, 1);
    let mut traced = None::<Row>;
    for _ in 0..runs {
        let row = bench.measure(
            "trace hit: SYN, source traced (one log line per packet)",
            "IPv4",
            &syn_v4(traced_src),
            XDP_PASS,
            Verdict::Passed,
            Some(bench.v4_entries),
        )?;
        let logged = follower.drain().len();
        ensure!(
            logged == TRACED_REPEAT as usize,
            "traced source: {logged} log lines for {TRACED_REPEAT} packets"
        );
        match &mut traced {
            Some(t) => t.samples.extend(row.samples),
            None => traced = Some(row),
        }
    }
    bench.settings.repeat = repeat;
    bench.settings.runs = runs;
    rows.extend(traced);
    bench.dp.trace_remove(
        trace::source_key(IpAddr::V4(traced_src)),
        until,
        clock::monotonic_ns(),
    )?;

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
    if let Some(path) = &bench.settings.figures {
        figures(&bench.settings, &rows, &import)
            .write(path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
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
    /// Kernel memory of every map, just created (empty).
    memory_empty: Vec<MapMemory>,
    /// The same after the import.
    memory_full: Vec<MapMemory>,
}

/// One pinned map as the kernel accounts for it.
struct MapMemory {
    name: &'static str,
    max_entries: u64,
    bytes: u64,
}

/// `bytes_memlock` of every pinned map of the layout under `pin_dir` (`bpftool map show pinned`).
fn map_memory(pin_dir: &Path) -> Result<Vec<MapMemory>> {
    let layout = PinLayout::new(pin_dir);
    let mut out = Vec::new();
    for name in maps::ALL {
        let path = layout.map(name);
        ensure!(path.exists(), "{} is not pinned", path.display());
        let output = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&path)
            .output()
            .context("running bpftool (apt-get install bpftool)")?;
        ensure!(
            output.status.success(),
            "bpftool map show pinned {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("bpftool output for {}", path.display()))?;
        let field = |key: &str| {
            json[key]
                .as_u64()
                .with_context(|| format!("no {key} for {name} in {json}"))
        };
        out.push(MapMemory {
            name,
            max_entries: field("max_entries")?,
            bytes: field("bytes_memlock")?,
        });
    }
    Ok(out)
}

fn total_bytes(maps: &[MapMemory]) -> u64 {
    maps.iter().map(|m| m.bytes).sum()
}

fn map_bytes(maps: &[MapMemory], name: &str) -> u64 {
    maps.iter().find(|m| m.name == name).map_or(0, |m| m.bytes)
}

/// Times `smtp-gateway block import` of `per_family` IPv4 + IPv6 addresses into fresh maps (at the
/// default capacities), and reads the maps' kernel memory before and after.
fn time_import(settings: &Settings) -> Result<ImportResult> {
    let pid = std::process::id();
    let binary = smtp_gateway_tests::gateway_binary()?;

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

    // The maps at the default capacities, just created: what an idle daemon holds.
    drop(loader::ensure_maps(&DataplaneConfig {
        pin_dir: pin_dir.clone(),
        ..DataplaneConfig::default()
    })?);
    let memory_empty = map_memory(&pin_dir)?;
    ensure!(
        map_bytes(&memory_empty, maps::BLOCK_V4) > 0,
        "bpftool reports no memory for an empty BLOCK_V4"
    );

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
    let memory_full = map_memory(&pin_dir)?;
    // Hash maps without preallocation grow with their entries: the import must show.
    for name in [maps::BLOCK_V4, maps::BLOCK_V6] {
        let (empty, full) = (
            map_bytes(&memory_empty, name),
            map_bytes(&memory_full, name),
        );
        ensure!(
            full > empty,
            "{name}: {full} bytes after importing {per_family} entries, {empty} empty"
        );
    }
    drop(pins);
    Ok(ImportResult {
        binary,
        per_family,
        file_bytes,
        wall,
        summary,
        memory_empty,
        memory_full,
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
    let baseline_of = |distinct: bool| {
        rows.iter()
            .find(|r| r.entries.is_none() && r.distinct == distinct)
            .map_or(1, Row::median)
            .max(1) as f64
    };
    let baseline = baseline_of(false);
    let mut out = String::new();
    out.push_str(&smtp_gateway_tests::report_title(
        "bench-xdp",
        settings.quick,
    ));
    let args: Vec<String> = std::env::args().collect();
    let _ = writeln!(out, "- command: `{}`", args.join(" "));
    let _ = writeln!(
        out,
        "- load average when the report was written (1, 5, 15 min): {}",
        smtp_gateway_tests::loadavg()
    );
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
         from many sources adds cache misses: see the distinct-sources rows)"
    );
    let _ = writeln!(
        out,
        "- distinct sources: {} frames per row, each from another source and run once (`repeat` \
         1): misses from addresses never seen (new per-source entries), hits on blocked fillers \
         scattered over the whole map; median and p10–p90 of the single runs. A single run's \
         figure includes the kernel's timer and bottom-half bracket: read these rows against \
         their own baseline (UDP, not inspected, distinct sources, same method); the per-source \
         table holds {} sources (per CPU, sets of two: a new source takes the place of the one \
         of its set seen least recently)",
        thousands(u64::from(settings.distinct)),
        thousands(1024)
    );
    let _ = writeln!(
        out,
        "- entries: exact entries in the family's blocklist map at measurement time (fillers + the \
         blocked test source); the prefix tries and allowlists are empty\n"
    );
    let _ = writeln!(
        out,
        "| Path | Family | Exact entries | Verdict | Action | ns/packet (median) | min–max (distinct: p10–p90) | × baseline |"
    );
    let _ = writeln!(out, "|---|---|--:|---|---|--:|--:|--:|");
    for r in rows {
        let (low, high) = r.spread();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}–{} | {:.2} |",
            r.path,
            r.family,
            r.entries.map_or("–".into(), |n| thousands(u64::from(n))),
            r.verdict.name(),
            if r.action == XDP_DROP { "DROP" } else { "PASS" },
            r.median(),
            low,
            high,
            r.median() as f64 / baseline_of(r.distinct)
        );
    }

    // Aims (README, issue 13): at most 40 ns per inspected SYN at the largest level, 1M + 1M
    // imported in at most 2 s.
    let top = settings.levels.iter().copied().max().unwrap_or(0);
    let inspected_rows = |distinct: bool| {
        rows.iter()
            .filter(move |r| {
                // The trace rows measure `why --follow` (a log line per packet), not the filter.
                r.distinct == distinct
                    && !r.path.starts_with("trace ")
                    && r.entries.is_some_and(|n| n >= top)
                    && matches!(r.verdict, Verdict::Passed | Verdict::DroppedExact)
            })
            .map(Row::median)
    };
    let inspected: Vec<u64> = inspected_rows(false).collect();
    let worst = inspected.iter().copied().max().unwrap_or(0);
    let _ = writeln!(out, "\n## Aims\n");
    let _ = writeln!(
        out,
        "- ≤ 40 ns per inspected SYN (hit or miss, IPv4 and IPv6) at {} exact entries: {} (the \
         slowest of those rows has a median of {worst} ns, {:.1}× the baseline).",
        thousands(u64::from(top)),
        if !inspected.is_empty() && worst <= 40 {
            "**met**"
        } else {
            "**missed**"
        },
        worst as f64 / baseline
    );
    // The aim was set where the uninspected baseline took 9 ns (issue 13): as a ratio to the
    // baseline of the same run, 40 / 9.
    let ratio_aim = 40.0 / 9.0;
    let _ = writeln!(
        out,
        "- The same aim as a ratio to this run's baseline (40 ns / 9 ns where it was set: \
         ≤ {ratio_aim:.1}×): {} ({:.2}×).",
        if !inspected.is_empty() && worst as f64 / baseline <= ratio_aim {
            "**met**"
        } else {
            "**missed**"
        },
        worst as f64 / baseline
    );
    let distinct_worst = inspected_rows(true).max().unwrap_or(0);
    let distinct_base = baseline_of(true);
    let _ = writeln!(
        out,
        "- Distinct sources (not an aim, the cache-miss cost): the slowest inspected row has a \
         median of {distinct_worst} ns per single run, {:.1}× its own baseline ({} ns more).",
        distinct_worst as f64 / distinct_base,
        (distinct_worst as f64 - distinct_base).max(0.0)
    );
    if import.per_family >= 1_000_000 {
        let _ = writeln!(
            out,
            "- `block import` of 1M IPv4 + 1M IPv6 entries in ≤ 2 s: {} ({:.1} s).",
            if import.wall.as_secs_f64() <= 2.0 {
                "**met**"
            } else {
                "**missed**"
            },
            import.wall.as_secs_f64()
        );
    } else {
        let _ = writeln!(
            out,
            "- `block import` of 1M + 1M in ≤ 2 s: not judged (this run imports {} + {}).",
            short(import.per_family),
            short(import.per_family)
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
        "| `smtp-gateway block import` (maps just created, empty) | {} IPv4 + {} IPv6 | {:.1} MB | {:.2} s | {} |",
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

    let _ = writeln!(out, "\n## Map memory\n");
    let _ = writeln!(
        out,
        "Kernel accounting of each pinned map (`bpftool map show pinned`, `bytes_memlock`), at the \
         default capacities of config/gateway.toml: just created, then after the import above. \
         The exact blocklists are hashes without preallocation (their bucket array is allocated \
         up front, entries on demand); LRU and array maps are preallocated, the per-CPU ones \
         (SOURCE_TABLE, VERDICTS) once per possible CPU.\n"
    );
    let _ = writeln!(
        out,
        "| Map | Max entries | Empty | After {} + {} | Per imported entry |\n|---|--:|--:|--:|--:|",
        short(import.per_family),
        short(import.per_family)
    );
    for (empty, full) in import.memory_empty.iter().zip(&import.memory_full) {
        let grown = full.bytes.saturating_sub(empty.bytes);
        let per_entry = if grown >= u64::from(import.per_family) {
            format!("{:.0} B", grown as f64 / f64::from(import.per_family))
        } else {
            "–".into()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            empty.name,
            thousands(empty.max_entries),
            mib(empty.bytes),
            mib(full.bytes),
            per_entry
        );
    }
    let _ = writeln!(
        out,
        "| **all maps** | | {} | {} | |",
        mib(total_bytes(&import.memory_empty)),
        mib(total_bytes(&import.memory_full))
    );
    print!("{out}");
}

fn mib(bytes: u64) -> String {
    if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

/// `1000000` as `1M`, `100000` as `100k`.
fn short(n: u32) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn figures(settings: &Settings, rows: &[Row], import: &ImportResult) -> Figures {
    let ns = |r: &Row| r.samples.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let mut categories: Vec<String> = Vec::new();
    let mut series: Vec<Series> = Vec::new();
    for r in rows.iter().filter(|r| !r.distinct) {
        let category = r.entries.map_or("baseline".to_string(), |n| {
            // The level, not the exact count (the blocked test source adds one).
            short(
                settings
                    .levels
                    .iter()
                    .copied()
                    .filter(|l| *l <= n)
                    .max()
                    .unwrap_or(0),
            )
        });
        if !categories.contains(&category) {
            categories.push(category.clone());
        }
        let name = if r.entries.is_none() {
            "UDP, not inspected (baseline)".to_string()
        } else {
            format!(
                "{} {}",
                r.path.split(':').next().unwrap_or(&r.path),
                r.family
            )
        };
        let point = Point::from_samples(category, &ns(r));
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(Series {
                name,
                points: vec![point],
            }),
        }
    }
    let per_packet = Figure {
        id: "ns-per-packet".into(),
        title: "XDP program cost per packet (BPF_PROG_TEST_RUN)".into(),
        x_label: "exact blocklist entries per family".into(),
        y_label: "ns per packet".into(),
        log_y: false,
        categories,
        series,
        note: format!(
            "Mean of {} runs of one frame per sample, {} samples; hit = dropped (exact blocklist), \
             miss = passed; aim: ≤ 40 ns per inspected packet.",
            thousands(u64::from(settings.repeat)),
            settings.runs
        ),
    };
    let distinct_rows: Vec<&Row> = rows.iter().filter(|r| r.distinct).collect();
    let distinct_label = |r: &Row| {
        if r.entries.is_none() {
            "UDP baseline".to_string()
        } else {
            format!(
                "{} {}",
                r.path.split(':').next().unwrap_or(&r.path),
                r.family
            )
        }
    };
    let per_packet_distinct = Figure {
        id: "ns-per-packet-distinct".into(),
        title: "XDP program cost per packet, every frame from another source".into(),
        x_label: "path".into(),
        y_label: "ns per single run".into(),
        log_y: false,
        categories: distinct_rows.iter().map(|r| distinct_label(r)).collect(),
        series: vec![Series {
            name: "distinct sources".into(),
            points: distinct_rows
                .iter()
                .map(|r| {
                    let (low, high) = r.spread();
                    Point {
                        category: distinct_label(r),
                        median: r.median() as f64,
                        min: low as f64,
                        max: high as f64,
                        repeats: r.samples.len(),
                    }
                })
                .collect(),
        }],
        note: format!(
            "{} frames per bar, one source each, run once (repeat 1) at the largest level; bars: \
             median, whiskers: p10–p90; read against the UDP baseline measured the same way.",
            thousands(u64::from(settings.distinct))
        ),
    };
    let level = format!(
        "{} + {}",
        short(import.per_family),
        short(import.per_family)
    );
    let memory = Figure {
        id: "map-memory".into(),
        title: "Kernel memory of the maps (default capacities)".into(),
        x_label: "exact blocklist entries (IPv4 + IPv6)".into(),
        y_label: "MiB".into(),
        log_y: false,
        categories: vec!["empty".into(), level.clone()],
        series: [maps::BLOCK_V4, maps::BLOCK_V6, "all maps"]
            .iter()
            .map(|name| {
                let bytes = |m: &[MapMemory]| {
                    if *name == "all maps" {
                        total_bytes(m)
                    } else {
                        map_bytes(m, name)
                    }
                };
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                Series {
                    name: name.to_string(),
                    points: vec![
                        Point::from_samples("empty", &[mib(bytes(&import.memory_empty))]),
                        Point::from_samples(level.clone(), &[mib(bytes(&import.memory_full))]),
                    ],
                }
            })
            .collect(),
        note: "bpftool map show: bytes_memlock (the kernel's accounting of each map), one \
               measurement."
            .into(),
    };
    let import_fig = Figure {
        id: "import".into(),
        title: "smtp-gateway block import".into(),
        x_label: "entries (IPv4 + IPv6)".into(),
        y_label: "seconds".into(),
        log_y: false,
        categories: vec![level.clone()],
        series: vec![Series {
            name: "wall time".into(),
            points: vec![Point::from_samples(level, &[import.wall.as_secs_f64()])],
        }],
        note: "One import into freshly created maps; aim: 1M + 1M in ≤ 2 s.".into(),
    };
    Figures {
        bench: "xdp".into(),
        command: "cargo xtask bench xdp".into(),
        machine: machine(),
        figures: vec![per_packet, per_packet_distinct, memory, import_fig],
    }
}

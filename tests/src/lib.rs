//! End-to-end test crate; the tests live in `tests/`, the benchmark binaries in `src/bin/`.
//! This library holds what the benchmark binaries share.

/// The figures schema (its own crate so xtask can read it without building the eBPF program);
/// re-exported so benchmark binaries write `smtp_gateway_tests::figures::Figures`.
pub use bench_figures as figures;

pub mod gateway_config;
pub mod proc;
pub mod syn_frame;

/// A benchmark binary's `main`: parses its settings (`None`: `--help` was printed), runs it, and
/// turns an error into a message on stderr and exit status 1.
pub fn bench_main<S>(
    settings: anyhow::Result<Option<S>>,
    run: impl FnOnce(S) -> anyhow::Result<()>,
) -> std::process::ExitCode {
    match settings.and_then(|s| s.map_or(Ok(()), run)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `smtp-gateway` binary the benchmarks drive: `$SMTP_GATEWAY_BIN`, or the one cargo built
/// next to the running benchmark (`target/release` for `cargo xtask bench`).
pub fn gateway_binary() -> anyhow::Result<std::path::PathBuf> {
    let dir = smtp_gateway_test_kit::profile_dir()?;
    smtp_gateway_test_kit::gateway_binary(&dir).map_err(|e| {
        anyhow::anyhow!("{e}: build it first (`cargo build --release -p smtp-gateway`)")
    })
}

/// The opening of a benchmark report: its title (marked when `quick`) and the machine line.
pub fn report_title(name: &str, quick: bool) -> String {
    let quick = if quick { " (quick)" } else { "" };
    format!("# {name}{quick}\n\n- machine: {}\n", machine())
}

/// The 1, 5 and 15 minute load averages ("1.59 2.38 3.44"), for benchmark reports: every
/// figure here shares its CPUs with whatever else the machine runs.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Messages an `smtp-sink -c` has received: the last `mesg=N` of its counters output (the
/// counters are rewritten in place, `\r`-separated).
pub fn smtp_sink_messages(counters: &std::path::Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(counters)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", counters.display()))?;
    Ok(text
        .rsplit(['\r', '\n'])
        .find_map(|seg| {
            seg.split_whitespace()
                .find_map(|f| f.strip_prefix("mesg="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0))
}

/// The command line every benchmark binary takes: `[--quick] [--figures PATH]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BenchArgs {
    /// Smoke run: fewer and shorter measurements.
    pub quick: bool,
    /// Where to write the figures JSON (`bench_figures::Figures`).
    pub figures: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// Parses the process's arguments. `--help` prints the usage of `name`, `about` and what
    /// `--quick` does, and gives `Ok(None)`.
    pub fn parse(name: &str, about: &str, quick: &str) -> anyhow::Result<Option<Self>> {
        Self::parse_from(std::env::args().skip(1), name, about, quick)
    }

    fn parse_from(
        args: impl IntoIterator<Item = String>,
        name: &str,
        about: &str,
        quick: &str,
    ) -> anyhow::Result<Option<Self>> {
        let mut parsed = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => parsed.quick = true,
                "--figures" => {
                    let path = args
                        .next()
                        .ok_or_else(|| anyhow::anyhow!("--figures needs a path"))?;
                    parsed.figures = Some(path.into());
                }
                "-h" | "--help" => {
                    println!(
                        "usage: {name} [--quick] [--figures PATH]\n\n{about}\n\
                         --quick         {quick}\n\
                         --figures PATH  also write the figures as JSON (bench_figures::Figures)"
                    );
                    return Ok(None);
                }
                other => anyhow::bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(Some(parsed))
    }
}

/// Removes a temporary directory when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.0)
        {
            eprintln!("warning: removing {}: {e}", self.0.display());
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "Linux <release>, <CPU model>, <n> CPUs", for benchmark reports.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {kernel}, {cpu}, {cpus} CPUs")
}

#[cfg(test)]
mod tests {
    #[test]
    fn smtp_sink_counters() {
        let dir = std::env::temp_dir().join(format!("sink-counters-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        std::fs::write(&path, "conn=1 mesg=2 rcpt=2\rconn=3 mesg=17 rcpt=17\r").unwrap();
        assert_eq!(super::smtp_sink_messages(&path).unwrap(), 17);
        std::fs::write(&path, "").unwrap();
        assert_eq!(super::smtp_sink_messages(&path).unwrap(), 0);
        assert!(super::smtp_sink_messages(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bench_args() {
        let parse = |args: &[&str]| {
            super::BenchArgs::parse_from(args.iter().map(|a| a.to_string()), "b", "", "")
        };
        assert_eq!(parse(&[]).unwrap(), Some(super::BenchArgs::default()));
        let both = parse(&["--figures", "/tmp/f.json", "--quick"])
            .unwrap()
            .unwrap();
        assert!(both.quick);
        assert_eq!(
            both.figures.as_deref(),
            Some(std::path::Path::new("/tmp/f.json"))
        );
        assert!(parse(&["--figures"]).is_err());
        assert!(parse(&["--fast"]).is_err());
        assert_eq!(parse(&["--help"]).unwrap(), None);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1_000), "1,000");
        assert_eq!(super::thousands(1_234_567), "1,234,567");
    }
}

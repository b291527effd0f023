//! `why <address> --follow [--for DURATION]`: the kernel's verdict for each packet from the
//! address, live. Adds the address to the pinned `TRACE` map (which sets the `TRACE` bit), reads
//! the attached programs' aya-log lines, prints those of the address until Ctrl-C, SIGTERM or
//! the end of the trace, then removes its entry (clearing the bit when no trace is left). Runs on
//! the pinned maps, daemon or not (root: CAP_BPF, CAP_SYS_ADMIN to read the programs' maps).

use std::{
    io::Write as _,
    net::IpAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use signal_hook::consts::signal;
use smtp_gateway::{
    config::Config,
    dataplane::{
        clock,
        follow::{Follower, TraceLine},
        loader, trace,
    },
};

/// `--for` when not given (shortened to `dataplane.trace_max_duration`).
const DEFAULT_DURATION: Duration = Duration::from_secs(60);
/// Longest wait for lines between two checks of the signals, the end and the trace entry.
const TICK: Duration = Duration::from_millis(200);

pub fn run(
    config: &Config,
    address: IpAddr,
    duration: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let max = config.dataplane.trace_max_duration;
    let duration = match duration {
        Some(d) if d > max => bail!(
            "--for {} is longer than dataplane.trace_max_duration ({})",
            humantime::format_duration(d),
            humantime::format_duration(max)
        ),
        Some(d) if d.is_zero() => bail!("--for must be longer than 0s"),
        Some(d) => d,
        None => DEFAULT_DURATION.min(max),
    };
    let address = address.to_canonical();
    let Some(mut dp) = loader::open_existing(&config.dataplane)? else {
        bail!(
            "no data plane under {} (start the daemon first)",
            config.dataplane.pin_dir.display()
        );
    };
    let programs = trace::program_ids(dp.layout())?;
    if programs.is_empty() {
        bail!(
            "the XDP program is not attached (no link pinned under {}): nothing to trace",
            dp.dir().display()
        );
    }
    // The readers first: no line written after the entry is added can be missed.
    let mut follower = Follower::attach(&programs)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = Vec::new();
    for sig in [signal::SIGINT, signal::SIGTERM] {
        signals.push(
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .with_context(|| format!("installing the handler of signal {sig}"))?,
        );
    }
    let key = trace::source_key(address);
    let until = clock::monotonic_ns().saturating_add(duration.as_nanos() as u64);
    let until = dp.trace_add(key, until)?;
    eprintln!(
        "tracing {address} for {} (program {}); Ctrl-C stops",
        humantime::format_duration(duration),
        programs
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let outcome = follow(
        &mut dp,
        (&mut follower, programs),
        key,
        until,
        address,
        json,
        &stop,
    );
    let cleanup = dp.trace_remove(key, until, clock::monotonic_ns());
    for id in signals {
        signal_hook::low_level::unregister(id);
    }
    let printed = outcome?;
    cleanup?;
    eprintln!("{printed} packet(s) of {address} traced");
    Ok(ExitCode::SUCCESS)
}

/// Prints the lines of `address` until a signal or the end of the trace; the number printed.
/// When the attached program changes (a daemon of another build replaced it), the new one's log
/// is followed from then on.
fn follow(
    dp: &mut smtp_gateway::dataplane::Dataplane,
    (follower, mut programs): (&mut Follower, Vec<u32>),
    key: smtp_gateway_common::SourceKey,
    until: u64,
    address: IpAddr,
    json: bool,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let now = clock::monotonic_ns();
        let done = stop.load(Ordering::SeqCst) || now >= until;
        let wait = if done {
            Duration::ZERO
        } else {
            TICK.min(Duration::from_nanos(until - now))
        };
        for line in follower.poll(wait) {
            if line.src.to_canonical() != address {
                continue;
            }
            print_line(&mut out, &line, json)?;
            printed += 1;
        }
        out.flush()?;
        if done {
            return Ok(printed);
        }
        dp.trace_keep(key, until)?;
        let now_attached = trace::program_ids(dp.layout())?;
        if !now_attached.is_empty() && now_attached != programs {
            *follower = Follower::attach(&now_attached)?;
            eprintln!(
                "the XDP program was replaced; following program {}",
                now_attached
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            programs = now_attached;
        }
    }
}

fn print_line(out: &mut impl std::io::Write, line: &TraceLine, json: bool) -> anyhow::Result<()> {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    if json {
        let value = serde_json::json!({
            "at_unix_ms": at.as_millis() as u64,
            "src": line.src,
            "dport": line.dport,
            "flags": line.flag_names(),
            "verdict": line.verdict,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(
            out,
            "{} {} -> port {} {} {}",
            humantime::format_rfc3339_millis(UNIX_EPOCH + at),
            line.src,
            line.dport,
            line.flag_names(),
            line.verdict
        )?;
    }
    Ok(())
}

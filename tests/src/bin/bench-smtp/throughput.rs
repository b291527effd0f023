//! The throughput, latency and CPU measurements: every contender at every session level, with
//! smtp-source and with the pipelining client, contenders interleaved within each repeat (their
//! order rotating between repeats), every run verified.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, ensure};

use crate::{Settings, client, contender::Contender, proc::Cgroup, sink::Sink, source};

/// Upper bound for one client run.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// One smtp-source run.
pub struct SourceSample {
    pub rate: f64,
    /// CPU µs per message of the contender's cgroup (0 for direct), and of client + sink +
    /// contender together.
    pub contender_us: f64,
    pub total_us: f64,
    /// Postfix: time from the end of smtp-source until its queue had drained.
    pub drain: Option<Duration>,
}

/// One pipelining-client run.
pub struct PipeSample {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Everything measured for one contender at one session level.
#[derive(Default)]
pub struct Cell {
    /// Messages per run (from the warm-up rate).
    pub messages: u32,
    pub source: Vec<SourceSample>,
    pub pipe: Vec<PipeSample>,
}

/// Counts of what was verified, for the report.
#[derive(Default)]
pub struct Verified {
    pub source_runs: u64,
    pub client_runs: u64,
    pub messages: u64,
    pub client_sessions: u64,
}

pub struct Throughput {
    pub names: Vec<&'static str>,
    pub levels: Vec<u32>,
    /// `cells[contender][level]`.
    pub cells: Vec<Vec<Cell>>,
    pub verified: Verified,
}

/// One verified smtp-source run; CPU read after the verification (Postfix: after its drain).
fn source_run(
    dir: &Path,
    sink: &Sink,
    clients: &Cgroup,
    c: &mut Contender,
    sessions: u32,
    messages: u32,
    verified: &mut Verified,
) -> Result<SourceSample> {
    let what = format!("{} smtp-source -s {sessions} -m {messages}", c.name());
    let before = sink.messages()?;
    let (c0, s0, k0) = (c.cpu()?, sink.cgroup.usage()?, clients.usage()?);
    let took = source::run(dir, clients, sessions, messages, c.addr(sink), RUN_TIMEOUT)
        .with_context(|| what.clone())?;
    let drain = c.verify(sink, before, u64::from(messages), &what)?;
    let (c1, s1, k1) = (c.cpu()?, sink.cgroup.usage()?, clients.usage()?);
    let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(messages);
    let contender_us = per_msg(c1.saturating_sub(c0));
    let total_us = contender_us + per_msg(s1.saturating_sub(s0)) + per_msg(k1.saturating_sub(k0));
    let rate = f64::from(messages) / took.as_secs_f64().max(1e-9);
    verified.source_runs += 1;
    verified.messages += u64::from(messages);
    eprintln!(
        "  {what}: {rate:.0} msgs/s, CPU µs/msg {contender_us:.0} (total {total_us:.0}){}",
        drain.map_or(String::new(), |d| format!(", queue drained {d:.2?} later"))
    );
    Ok(SourceSample {
        rate,
        contender_us,
        total_us,
        drain,
    })
}

/// One verified pipelining-client run.
fn pipe_run(
    sink: &Sink,
    c: &mut Contender,
    sessions: u32,
    messages: u32,
    verified: &mut Verified,
) -> Result<PipeSample> {
    let what = format!(
        "{} pipelining client {sessions} sessions, {messages} msgs",
        c.name()
    );
    let before = sink.messages()?;
    let run = client::run(
        c.addr(sink),
        &client::Security::Plain,
        sessions,
        messages,
        RUN_TIMEOUT,
    )
    .with_context(|| what.clone())?;
    c.verify(sink, before, u64::from(messages), &what)?;
    let rate = f64::from(messages) / run.wall.as_secs_f64().max(1e-9);
    let (p50_ms, p99_ms) = (run.quantile_ms(0.50), run.quantile_ms(0.99));
    verified.client_runs += 1;
    verified.client_sessions += run.sessions_us.len() as u64;
    verified.messages += u64::from(messages);
    eprintln!("  {what}: {rate:.0} msgs/s, p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms");
    Ok(PipeSample {
        rate,
        p50_ms,
        p99_ms,
    })
}

pub fn measure(
    settings: &Settings,
    dir: &Path,
    sink: &Sink,
    contenders: &mut [Contender],
) -> Result<Throughput> {
    let clients = Cgroup::create("clients")?;
    let mut verified = Verified::default();
    let levels = settings.sessions.clone();
    let mut cells: Vec<Vec<Cell>> = contenders
        .iter()
        .map(|_| levels.iter().map(|_| Cell::default()).collect())
        .collect();
    // Warm-up, which also sizes the runs: messages per run ≈ rate × run_seconds.
    eprintln!("warm-up (sizes each run to about {:?}):", settings.run_time);
    for (ci, c) in contenders.iter_mut().enumerate() {
        for (li, &sessions) in levels.iter().enumerate() {
            let n = (sessions * 2).max(settings.min_messages);
            let s = source_run(dir, sink, &clients, c, sessions, n, &mut verified)?;
            pipe_run(sink, c, sessions, n, &mut verified)?;
            let sized = (s.rate * settings.run_time.as_secs_f64()) as u32;
            cells[ci][li].messages = sized.clamp(
                (sessions * 4).max(settings.min_messages),
                settings.max_messages,
            );
        }
    }
    for r in 0..settings.repeats {
        for (li, &sessions) in levels.iter().enumerate() {
            eprintln!(
                "repeat {}/{}, {sessions} sessions:",
                r + 1,
                settings.repeats
            );
            let n = contenders.len();
            for k in 0..n {
                // Rotate the order between repeats so a drift of the machine favours no one.
                let ci = (k + r) % n;
                let c = &mut contenders[ci];
                let messages = cells[ci][li].messages;
                let s = source_run(dir, sink, &clients, c, sessions, messages, &mut verified)?;
                let p = pipe_run(sink, c, sessions, messages, &mut verified)?;
                cells[ci][li].source.push(s);
                cells[ci][li].pipe.push(p);
            }
        }
    }
    ensure!(
        verified.source_runs > 0,
        "no run was made (no session levels?)"
    );
    Ok(Throughput {
        names: contenders.iter().map(Contender::name).collect(),
        levels,
        cells,
        verified,
    })
}

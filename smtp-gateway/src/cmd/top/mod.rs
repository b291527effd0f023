//! `smtp-gateway top`: a live view of the busiest and most-dropped sources, refreshed every
//! `--interval`; one plain (or JSON) frame with `--once` or when stdout is not a terminal.
//!
//! - the command-line arguments ([`TopArgs`]) and sort keys are the library's `cli::top`, so
//!   the man page and completions see them;
//! - `source.rs`: where the numbers come from ([`source::Source::snapshot`]; the seam for the
//!   session columns the daemon's control socket will fill);
//! - `model.rs`: two snapshots -> rates and sorted rows (pure);
//! - `render.rs`: a view -> lines of text (pure, the same for both modes);
//! - `input.rs`: keys -> actions;
//! - `terminal.rs`: raw mode and the alternate screen, given back on every way out.

mod input;
mod model;
mod render;
mod source;
mod terminal;

use std::{
    io::{self, IsTerminal},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use crossterm::event::{self, Event};
use model::SortKey;
use serde::Serialize;
pub use smtp_gateway::cli::top::TopArgs;
use smtp_gateway::{config::Config, dataplane::stats::VerdictTotal};

use self::{
    input::Action,
    render::Frame,
    source::{Snapshot, Source, TopRow},
    terminal::Screen,
};

/// Layout width of a plain frame written to a pipe or file (nothing is cut).
const PLAIN_WIDTH: usize = 120;
/// How often the live loop looks at the termination-signal flag while it waits for keys.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

pub fn run(config: &Config, args: &TopArgs) -> anyhow::Result<ExitCode> {
    // Before the terminal is touched: without pinned maps it stays as it was.
    let mut source = Source::open(config)?;
    if args.once || !io::stdout().is_terminal() {
        once(&mut source, args)?;
    } else {
        live(&mut source, args)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--once --json` document.
#[derive(Serialize)]
struct OnceJson<'a> {
    /// When the maps were read (Unix seconds).
    taken_at_unix_s: u64,
    /// The order of `sources`.
    sort: SortKey,
    /// Every source the kernel tracks, shown or not.
    tracked_sources: usize,
    /// Kernel verdict totals, in verdict order.
    verdicts: &'a [VerdictTotal],
    /// Sorted by `sort`, at most `--top`.
    sources: Vec<&'a TopRow>,
}

/// One frame from one snapshot (no rates: there is no previous refresh), no escape codes.
fn once(source: &mut Source, args: &TopArgs) -> anyhow::Result<()> {
    let snapshot = source.snapshot()?;
    let view = model::build(None, &snapshot, args.sort);
    let on_terminal = io::stdout().is_terminal();
    // On a terminal the frame fits it; in a pipe every row is printed unless `--top` says.
    let (width, height) = match terminal::size() {
        Ok((w, h)) if on_terminal => (w, Some(h)),
        _ => (PLAIN_WIDTH, None),
    };
    if args.json {
        let limit = args.top.unwrap_or(usize::MAX);
        let doc = OnceJson {
            taken_at_unix_s: snapshot.taken_at_unix_s,
            sort: args.sort,
            tracked_sources: snapshot.sources.len(),
            verdicts: &snapshot.verdicts,
            sources: view.rows.iter().take(limit).map(|r| &r.row).collect(),
        };
        out!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let frame = Frame {
        view: &view,
        sort: args.sort,
        interval: args.interval,
        taken_at_unix_s: snapshot.taken_at_unix_s,
        width,
        height,
        max_rows: args.top,
        interactive: false,
    };
    for line in frame.lines() {
        out!("{}", line.text);
    }
    Ok(())
}

/// Why the live loop woke up.
enum Wake {
    /// A key with an action.
    Key(Action),
    /// The terminal was resized.
    Redraw,
    /// The interval is over.
    Refresh,
}

fn live(source: &mut Source, args: &TopArgs) -> anyhow::Result<()> {
    let mut screen = Screen::enter()?;
    let mut sort = args.sort;
    let mut previous: Option<Snapshot> = None;
    let mut current = source.snapshot()?;
    loop {
        let view = model::build(previous.as_ref(), &current, sort);
        let (width, height) = screen.size()?;
        let frame = Frame {
            view: &view,
            sort,
            interval: args.interval,
            taken_at_unix_s: current.taken_at_unix_s,
            width,
            height: Some(height),
            max_rows: args.top,
            interactive: true,
        };
        screen.draw(&frame.lines())?;
        match wait(&screen, current.taken + args.interval, view.sessions_known)? {
            Wake::Key(Action::Quit) => return Ok(()),
            Wake::Key(Action::Sort(key)) => sort = key,
            Wake::Key(Action::Cycle(step)) => sort = sort.cycle(step, view.sessions_known),
            Wake::Redraw => {}
            Wake::Refresh => {
                let next = source.snapshot()?;
                previous = Some(std::mem::replace(&mut current, next));
            }
        }
    }
}

/// Waits for a key that does something, a resize, a termination signal or `deadline`.
fn wait(screen: &Screen, deadline: Instant, sessions_known: bool) -> anyhow::Result<Wake> {
    loop {
        if screen.stopped() {
            return Ok(Wake::Key(Action::Quit));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Wake::Refresh);
        }
        let ready = match event::poll(left.min(SIGNAL_CHECK)) {
            Ok(ready) => ready,
            // A signal interrupted the wait: the flag is read at the top of the loop.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(e) => return Err(e).context("waiting for keys"),
        };
        if !ready {
            continue;
        }
        match event::read().context("reading keys")? {
            Event::Key(key) => {
                if let Some(action) = input::action(key, sessions_known) {
                    return Ok(Wake::Key(action));
                }
            }
            Event::Resize(..) => return Ok(Wake::Redraw),
            _ => {}
        }
    }
}

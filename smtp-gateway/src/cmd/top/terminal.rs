//! The live screen: raw mode and the alternate screen for as long as a [`Screen`] lives.
//!
//! The terminal is given back on every way out: `Drop` (quit keys, errors returned with `?`),
//! a panic hook that restores it before the panic message is printed (so the message lands on
//! the normal screen), and SIGTERM/SIGINT/SIGHUP, which only set a flag that the event loop reads
//! so the same `Drop` runs. Restoring twice is harmless: the first one wins.

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context;
use crossterm::{
    cursor, execute, queue,
    style::{Attribute, Print, SetAttribute},
    terminal::{self, ClearType},
};
use signal_hook::{SigId, consts::signal};

use super::render::Line;

/// The size assumed for a terminal that reports none: a pseudo-terminal nobody sized (a
/// `script`, an `ssh -T` with a pty forced, some CI runners) says 0 x 0, and a frame 0 columns
/// wide is blank. 80 x 24 is the VT100's, what `stty` and curses assume too.
const UNSIZED: (u16, u16) = (80, 24);

/// Columns and lines of the terminal on stdout; [`UNSIZED`] when it reports 0 for either.
pub fn size() -> anyhow::Result<(usize, usize)> {
    let (w, h) = match terminal::size().context("reading the terminal size")? {
        (0, _) | (_, 0) => UNSIZED,
        sized => sized,
    };
    Ok((usize::from(w), usize::from(h)))
}

/// Whether the terminal is in raw mode on the alternate screen (and must be given back).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Raw mode and the alternate screen; restored on drop.
pub struct Screen {
    /// Set by SIGTERM, SIGINT or SIGHUP: the loop stops as if `q` was pressed.
    stop: Arc<AtomicBool>,
    /// The signal handlers, unregistered on drop.
    signals: Vec<SigId>,
}

impl Screen {
    /// Enters raw mode and the alternate screen and hides the cursor.
    pub fn enter() -> anyhow::Result<Self> {
        install_panic_hook();
        let stop = Arc::new(AtomicBool::new(false));
        let mut signals = Vec::new();
        for sig in [signal::SIGTERM, signal::SIGINT, signal::SIGHUP] {
            signals.push(
                signal_hook::flag::register(sig, Arc::clone(&stop))
                    .with_context(|| format!("installing the handler of signal {sig}"))?,
            );
        }
        // From here on `Drop` restores whatever was changed.
        let screen = Self { stop, signals };
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        ACTIVE.store(true, Ordering::SeqCst);
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .context("entering the alternate screen")?;
        Ok(screen)
    }

    /// Whether a termination signal arrived.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Columns and lines of the terminal ([`size`]).
    pub fn size(&self) -> anyhow::Result<(usize, usize)> {
        size()
    }

    /// Draws a frame over the previous one (line by line, no full clear: no flicker).
    pub fn draw(&mut self, lines: &[Line]) -> anyhow::Result<()> {
        let mut out = io::stdout().lock();
        for (y, line) in lines.iter().enumerate() {
            let y = u16::try_from(y).unwrap_or(u16::MAX);
            queue!(out, cursor::MoveTo(0, y))?;
            let parts = line.highlight.and_then(|(start, end)| {
                let text = &line.text;
                Some((text.get(..start)?, text.get(start..end)?, text.get(end..)?))
            });
            match parts {
                Some((before, title, after)) => queue!(
                    out,
                    Print(before),
                    SetAttribute(Attribute::Reverse),
                    Print(title),
                    SetAttribute(Attribute::NoReverse),
                    Print(after),
                )?,
                None => queue!(out, Print(&line.text))?,
            }
            queue!(out, terminal::Clear(ClearType::UntilNewLine))?;
        }
        queue!(out, terminal::Clear(ClearType::FromCursorDown))?;
        out.flush().context("drawing the frame")
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
        for id in self.signals.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Leaves the alternate screen and raw mode, once. Errors cannot be reported anywhere useful
/// (the terminal is what failed), so they are ignored.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(
            io::stdout(),
            SetAttribute(Attribute::Reset),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// Restores the terminal before the previous hook prints the panic message.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

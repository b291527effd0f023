//! Runs a call that may panic inside a dependency and turns the panic into text: redb 2 asserts
//! (panics) on some damaged files instead of returning an error, and a damaged file is an
//! ordinary failure the daemon must report, not a crash.
//!
//! The panic hook stays in place for every other thread: [`contain`] installs, once, a hook that
//! delegates to the one it replaced, except on a thread inside [`contain`], where it only records
//! the panic (so the default hook's message and backtrace do not reach stderr for a panic that
//! becomes an error).

use std::{
    cell::RefCell,
    panic::{self, AssertUnwindSafe, PanicHookInfo},
    sync::Once,
};

thread_local! {
    /// `Some` while [`contain`] runs on this thread: the description of a panic, once caught.
    static CAUGHT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Installs the delegating hook once per process.
static HOOK: Once = Once::new();

/// What `f` returned, or the description of its panic (message and where it was raised).
pub(super) fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let recorded = CAUGHT.with(|caught| match caught.borrow_mut().as_mut() {
                Some(slot) => {
                    *slot = Some(describe(info));
                    true
                }
                None => false,
            });
            if !recorded {
                previous(info);
            }
        }));
    });
    CAUGHT.with(|caught| *caught.borrow_mut() = Some(None));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let described = CAUGHT.with(|caught| caught.borrow_mut().take()).flatten();
    result.map_err(|payload| {
        described.unwrap_or_else(|| {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned());
            text.unwrap_or_else(|| "a panic".into())
        })
    })
}

/// A panic on one line: its message and the file and line that raised it.
fn describe(info: &PanicHookInfo<'_>) -> String {
    let message = info
        .payload_as_str()
        .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "a panic".into());
    match info.location() {
        Some(at) => {
            let file = std::path::Path::new(at.file())
                .file_name()
                .map_or_else(|| at.file().into(), |f| f.to_string_lossy());
            format!("{message} at {file}:{}", at.line())
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_description_and_a_value_passes_through() {
        assert_eq!(contain(|| 7), Ok(7));
        let caught = contain(|| -> u8 { panic!("torn\nheader") }).expect_err("caught");
        assert!(caught.starts_with("torn header at contain.rs:"), "{caught}");
        // The thread is itself again: the next call records nothing stale.
        assert_eq!(contain(|| "ok"), Ok("ok"));
    }
}

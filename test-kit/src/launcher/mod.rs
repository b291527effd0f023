//! One way to run the `smtp-gateway` daemon under test, for both test crates: build the command
//! line for a configuration, start it with its output collected ([`DaemonProcess`]), wait for
//! readiness by what it logs (never a fixed sleep), stop it by PID, and remove its pins
//! afterwards ([`detach`]).
//!
//! - `process.rs`: [`DaemonProcess`], the running daemon, its log and its stop.
//! - `events.rs`: the exit (pidfd) and log writes (inotify) that wake its waits.

mod events;
mod process;

use std::{
    ffi::OsStr,
    net::TcpListener,
    path::Path,
    process::{Command, Output, Stdio},
};

pub use process::{DaemonProcess, Wait};

use crate::{Error, Result};

/// `<binary> -c <config> run` with no input: the daemon as an operator starts it. Prefix a
/// wrapper (`nsenter`, `setpriv`) with [`wrapped`].
pub fn run_command(binary: &Path, config: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(config)
        .arg("run")
        .stdin(Stdio::null());
    command
}

/// `<wrapper...> <binary> -c <config> run`: the daemon started through a command that execs it
/// in place (same PID), e.g. `nsenter --net=...` or `setpriv --reuid=...`. An empty wrapper is
/// [`run_command`].
pub fn wrapped(wrapper: &[impl AsRef<OsStr>], binary: &Path, config: &Path) -> Command {
    let Some((program, args)) = wrapper.split_first() else {
        return run_command(binary, config);
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .arg(binary)
        .arg("-c")
        .arg(config)
        .arg("run")
        .stdin(Stdio::null());
    command
}

/// `<binary> -c <config> detach`: removes the program, links and pins of that configuration.
pub fn detach(binary: &Path, config: &Path) -> Result<Output> {
    Command::new(binary)
        .arg("-c")
        .arg(config)
        .arg("detach")
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("running detach with", config))
}

/// A TCP port on 127.0.0.1 nobody listens on right now (another process may take it before the
/// daemon binds it: callers retry on "cannot listen").
pub fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(Error::io("binding an ephemeral port on", "127.0.0.1:0"))
}

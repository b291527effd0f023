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
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    path::Path,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
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

/// A TCP port that nobody listens on right now on 127.0.0.1 (nor on ::1, where there is one).
///
/// The port is not held: a daemon binds it after this returns. So it is taken below the kernel's
/// ephemeral range (`net.ipv4.ip_local_port_range`), from a sequence that starts at a place set by
/// the process id: no outgoing connection of this machine (a test's client, the gateway's backend
/// connection) can be given it between this check and the daemon's bind, and two test processes
/// walk different stretches. A port the kernel picked for `127.0.0.1:0` was in that range, and a
/// parallel test's connect took it now and then ("Address already in use").
pub fn free_port() -> Result<u16> {
    let (low, high) = unshared_port_range();
    let span = u32::from(high - low) + 1;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let step = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let offset = start.wrapping_add(step) % span;
        let Some(port) = u16::try_from(offset).ok().and_then(|o| low.checked_add(o)) else {
            continue;
        };
        let free_v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        let free_v6 = || TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() || !ipv6_loopback();
        if free_v4 && free_v6() {
            return Ok(port);
        }
    }
    Err(Error::io(
        "finding a free port below the ephemeral range on",
        "127.0.0.1",
    )(std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

/// Where the next [`free_port`] call of this process looks (an offset in the range).
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// Lowest port [`free_port`] hands out (below the registered ports most daemons use).
const LOWEST_TEST_PORT: u16 = 20_000;

/// The ports [`free_port`] walks: from [`LOWEST_TEST_PORT`] to just below the kernel's ephemeral
/// range (read from procfs; Linux's default range starts at 32768).
fn unshared_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > LOWEST_TEST_PORT + 1_000 {
        (LOWEST_TEST_PORT, ephemeral_low - 1)
    } else {
        // An unusual range that starts low: use the ports above it instead.
        (61_000, 65_000)
    }
}

/// Whether this machine has an IPv6 loopback to check a port on.
fn ipv6_loopback() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_outside_the_ephemeral_range_and_not_repeated() {
        let (low, high) = unshared_port_range();
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("a free port")).collect();
        for port in &ports {
            assert!((low..=high).contains(port), "{port} outside {low}..={high}");
            assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, *port)).is_ok());
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        // What the kernel picks for a port-0 bind or an outgoing connect is never one of ours.
        let ephemeral = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("ephemeral")
            .port();
        assert!(
            !(low..=high).contains(&ephemeral),
            "{ephemeral} in {low}..={high}"
        );
    }
}

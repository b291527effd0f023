//! What the end-to-end tests (`tests/tests`), the benchmarks (`tests/src/bin`) and `cargo xtask
//! demo` all need to set up, written once.
//!
//! Each of them runs a private Postfix instance (its own `main.cf`, `master.cf`, queue and log
//! under a temporary directory, never the system's `/etc/postfix`) and drives the built
//! `smtp-gateway` binary. The Postfix parts that do not depend on the caller's role — the
//! directory skeleton and its ownership, the daemon table of `master.cf`, the `main.cf` lines that
//! keep an instance private and offline — live here; listeners, delivery, postscreen, cgroups and
//! namespaces stay with the caller, which extends [`MainCf`] and [`MasterCf`] with them.
//!
//! The tests also need a DNS server of their own (the system resolver is never used): [`dns`]
//! answers from a table on loopback.
//!
//! xtask depends on this crate, so it has no eBPF or aya dependency; smtp-gateway's tests use it
//! too, so it never depends on smtp-gateway.
//!
//! # Layout
//! - `error.rs`: [`Error`], what can go wrong while setting up.
//! - `account.rs`: [`Account`], the numeric ids of `postfix` and `nobody` (for `chown` and for
//!   Postfix settings that want numbers).
//! - `postfix/instance.rs`: [`InstanceDir`], the instance directory: skeleton, ownership, writing
//!   the configuration, the running master, whether the queue is empty.
//! - `postfix/main_cf.rs`: [`MainCf`], the shared `main.cf` base and the caller's settings.
//! - `postfix/master_cf.rs`: [`MasterCf`], the caller's listeners and the standard daemon table.
//! - `binary.rs`: [`gateway_binary`] and [`profile_dir`], where the `smtp-gateway` binary is.
//! - `log.rs`: [`strip_ansi`] and [`last_lines`], for showing daemon logs in failure reports.
//! - `launcher/`: [`DaemonProcess`] and the `run`/`detach` command lines: starting the daemon
//!   with a configuration, waiting for what it logs, stopping it by PID.
//! - `dns/`: [`DnsResponder`] and its [`Records`] table, a DNS server on `127.0.0.1:0`.
//! - `tls.rs`: [`tls::self_signed`], a certificate for a gateway's `[smtp.tls]`.
//! - `tcp_info.rs`: [`tcp_info::data_segments`], the data segments a socket sent and received.

mod account;
mod binary;
pub mod dns;
mod error;
pub mod launcher;
mod log;
mod postfix;
pub mod tcp_info;
pub mod tls;

pub use account::Account;
pub use binary::{GATEWAY_BIN_ENV, gateway_binary, profile_dir};
pub use dns::{DnsResponder, Records};
pub use error::{Error, Result};
pub use launcher::{DaemonProcess, Wait};
pub use log::{last_lines, strip_ansi};
pub use postfix::{InstanceDir, MainCf, MasterCf};

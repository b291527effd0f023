//! # smtp-gateway
//!
//! An edge SMTP filter: an XDP program drops blocklisted and over-eager sources in the kernel;
//! a userspace daemon loads it, keeps its maps and proxies SMTP to the backend MTA.
//!
//! ## Layout
//! - `config.rs`: the TOML configuration, parse -> validate: aggregates the sections each feature
//!   owns;
//! - `invalid.rs`: [`invalid::Invalid`] (also `config::Invalid`), what every section's validation
//!   returns; a leaf, so no section imports the aggregate;
//! - `cli.rs`: the command line (clap), parsed by the binary; [`cli::command`] feeds the man page
//!   and shell completions;
//! - `checks.rs`: every check of the proxy declared once (name, `[checks]` key, default, stage,
//!   reply);
//! - `dataplane/`: everything about the kernel half (load, attach, pins, maps, lists, import,
//!   counters, expiry);
//! - `events.rs`: the verdict event bus (checks fired, sessions ended): `smtp/` publishes,
//!   `autoban.rs`, `metrics.rs` and `source_outcomes.rs` read;
//! - `autoban.rs`: session verdicts -> kernel blocklist entries with a TTL;
//! - `crowdsec/`: a CrowdSec bouncer, LAPI ban decisions -> kernel blocklist entries;
//! - `metrics/`: the process counters sessions increment (`mod.rs`), `[metrics]` (`config.rs`)
//!   and the Prometheus `GET /metrics` endpoint (`endpoint.rs`);
//! - `daemon/`: `smtp-gateway run` — attach, push the config, sweep, reload (and the config file
//!   watcher), stop; `[daemon]` and giving up privileges after setup;
//! - `smtp/`: the SMTP filtering proxy (listeners, sessions, checks, forwarding, TLS);
//! - `policy/`: pure verdict functions (anti-relay, HELO, DNSBL, FCrDNS, SPF; `[dns]`, the resolver
//!   they share);
//! - `signal.rs`: the control signals the daemon reacts to;
//! - `bounded_line.rs`: operator files (imports, reputation lists) read a line at a time, at
//!   most 4096 bytes of a line held;
//! - `reload.rs`: reload requests (SIGHUP, file change, control socket) for the one reload path;
//! - `control/`: the root-only control socket and the operations behind it;
//! - `source_outcomes.rs`: per-source session verdicts, beside the kernel's per-source counters;
//! - `store/`: the state that outlives a restart (and, with Redis, spans a fleet): one interface,
//!   two engines (`embedded.rs`: redb, `redis.rs`), `[store]`; the pass cache, auto-ban and the
//!   session outcomes write through it;
//! - `fuzzing.rs`: entry points for the fuzz targets and property tests (hidden, not an API).
//!
//! The binary (`main.rs`) parses arguments ([`cli`]) and dispatches to `cmd/`.

// Client bytes, DNS answers, list files and the config are all hostile: a cut inside a multi-byte
// character would panic, so text is never sliced at a byte index anywhere in the crate.
#![deny(clippy::string_slice)]

pub mod autoban;
pub mod bounded_file;
pub mod bounded_line;
pub mod checks;
pub mod cli;
pub mod config;
pub mod control;
pub mod crowdsec;
pub mod daemon;
pub mod dataplane;
pub mod events;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod invalid;
pub mod log_line;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod signal;
pub mod smtp;
pub mod source_outcomes;
pub mod store;

//! The kernel data plane seen from userspace.
//!
//! - `config.rs`: `[dataplane]`, the section this half owns, and its validation;
//! - `shared.rs`: [`SharedDataplane`], the one data plane the daemon's tasks share;
//! - `object.rs`: the embedded XDP object and its hash;
//! - `pins.rs`: the versioned pin directory in bpffs, the layout check, retired pins;
//! - `loader.rs`: create maps, attach/reuse/replace links, detach;
//! - `maps.rs`: typed handles on every pinned map, runtime config push;
//! - `target.rs`: addresses and prefixes as operators write them;
//! - `lists.rs`: blocklist and allowlist add/delete/list, the configured allowlist kept in step;
//! - `reasons.rs`: reason texts stored in the kernel;
//! - `import.rs`: bulk import (plain lists, Spamhaus DROP text and JSON);
//! - `batch.rs`: `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_LOOKUP_BATCH` (many entries per system
//!   call) for the import and the per-source table;
//! - `stats.rs`: verdict and per-source counters (the per-source table read and summed by key);
//! - `sweeper.rs`: removal of expired entries, and the daemon task that sweeps periodically;
//! - `trace.rs`: the traced sources of `why --follow` and the `TRACE` bit;
//! - `follow.rs`: reading the program's aya-log trace lines (`why --follow`);
//! - `clock.rs`: the monotonic clock the program uses;
//! - `error.rs`: [`DataplaneError`].

mod batch;
pub mod clock;
pub mod config;
mod error;
pub mod follow;
pub mod import;
pub mod lists;
pub mod loader;
mod lpm_exact;
mod maps;
pub mod object;
mod pins;
pub mod reasons;
mod shared;
pub mod stats;
pub mod sweeper;
mod target;
pub mod trace;

pub use error::DataplaneError;
pub use maps::{Dataplane, kernel_config};
pub use pins::PinLayout;
pub use shared::SharedDataplane;
pub use target::{Target, TargetError};

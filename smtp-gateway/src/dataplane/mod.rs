//! The kernel data plane seen from userspace.
//!
//! - `object.rs`: the embedded XDP object and its hash;
//! - `pins.rs`: the versioned pin directory in bpffs and the layout check;
//! - `loader.rs`: create maps, attach/reuse/replace links, detach;
//! - `maps.rs`: typed handles on every pinned map, runtime config push;
//! - `target.rs`: addresses and prefixes as operators write them;
//! - `lists.rs`: blocklist and allowlist add/delete/list;
//! - `reasons.rs`: reason texts stored in the kernel;
//! - `import.rs`: bulk import (plain lists, Spamhaus DROP text and JSON);
//! - `stats.rs`: verdict and per-source counters;
//! - `sweeper.rs`: removal of expired entries;
//! - `clock.rs`: the monotonic clock the program uses;
//! - `error.rs`: [`DataplaneError`].

pub mod clock;
mod error;
pub mod import;
pub mod lists;
pub mod loader;
mod maps;
pub mod object;
mod pins;
pub mod reasons;
pub mod stats;
pub mod sweeper;
mod target;

pub use error::DataplaneError;
pub use maps::{Dataplane, kernel_config};
pub use pins::PinLayout;
pub use target::{Target, TargetError};

//! The SMTP filtering proxy.
//!
//! - `config.rs`: `[smtp]`, `[backend]`, `[score]` and [`ProxyConfig`](config::ProxyConfig), the
//!   sections a session reads;
//! - `server.rs`: listeners, the global connection cap, accept loop;
//! - `slots.rs`: connection slots per source, and the idle session that makes room at the cap;
//! - `session_guard.rs`: a session task's panic caught, logged, counted, its slots released;
//! - `connection.rs`: line framing and batched replies over plain or TLS streams;
//! - `session/`: the per-client state machine and its checks, one file per verb (`mod.rs` the
//!   state, run loop and check firing; `line.rs` line checks, parsing and dispatch; `ehlo.rs`,
//!   `auth.rs`, `mail.rs`, `rcpt.rs`, `data.rs`, `bdat.rs`, `starttls.rs`; `backend.rs` the
//!   session's backend: open, lose, settle, release);
//! - `auth_results.rs`: the `Authentication-Results` header added to relayed mail, and the
//!   filter dropping the client's ones that claim our authserv-id;
//! - `text.rs`: the message-text relay (after `354`), streamed to the backend, smuggling-proof;
//! - `chunk.rs`: one BDAT chunk (CHUNKING), counted bytes relayed as one chunk or discarded;
//! - `chunk_headers.rs`: the forged `Authentication-Results` filter over chunked bytes;
//! - `backend.rs`: one backend MTA session (identity, STARTTLS, EHLO replay, commands);
//! - `backend_pool.rs`: failover over the servers, and idle connections kept for the next session;
//! - `ehlo_caps.rs`: the backend's EHLO keywords, parsed once;
//! - `parameters.rs`: the MAIL and RCPT parameters taken (those of the extensions offered);
//! - `pipeline.rs`: MAIL/RCPT forwarded without waiting, and how their replies settle in order;
//! - `profile.rs`: per-listener policy profiles (`[profiles.<name>]`: checks, greet pause, DNSBL,
//!   relay rules, AUTH required), resolved against the top-level sections;
//! - `identity.rs`: PROXY v2 header and XCLIENT;
//! - `reply.rs`: SMTP replies; `tls.rs`: rustls;
//! - `test_peers.rs` (tests only): the recording backend and client peers of the relay tests.
//!
//! Sessions publish their verdicts on the crate's event bus (`crate::events`). Client bytes are
//! never cut at a byte index (`clippy::string_slice` is denied here): a cut inside a multi-byte
//! character panics the session task.

#![deny(clippy::string_slice)]

pub mod auth_results;
pub mod backend;
pub mod backend_pool;
pub mod chunk;
pub mod chunk_headers;
pub mod config;
pub mod connection;
pub mod ehlo_caps;
pub mod identity;
pub mod parameters;
pub mod pipeline;
pub mod profile;
pub mod reply;
pub mod server;
pub mod session;
pub mod session_guard;
pub mod slots;
#[cfg(test)]
mod test_peers;
pub mod text;
pub mod tls;
pub mod tls_accept;

use tokio_rustls::TlsAcceptor;

use crate::{events, policy::dnsbl::Dnsbl};

/// What every session of one configuration generation shares.
pub struct Shared {
    /// The configuration sections the sessions run with (not the whole file).
    pub config: config::ProxyConfig,
    /// DNSBL scorer, when enabled.
    pub dnsbl: Option<std::sync::Arc<Dnsbl>>,
    /// Client-name lookups (FCrDNS), when enabled.
    pub fcrdns: Option<std::sync::Arc<crate::policy::fcrdns::Fcrdns>>,
    /// SPF evaluation, when enabled.
    pub spf: Option<std::sync::Arc<crate::policy::spf::Spf>>,
    /// TLS acceptor, when `[smtp.tls]` is configured.
    pub tls: Option<TlsAcceptor>,
    /// Verdict events.
    pub events: events::EventSender,
    /// STARTTLS connectors, one per `config.backend.servers` entry.
    pub backend_tls: Vec<Option<tls::BackendConnector>>,
    /// Reputation lists.
    pub reputation: std::sync::Arc<crate::policy::reputation::Reputation>,
    /// Clients that passed recently.
    pub pass_cache: std::sync::Arc<crate::policy::pass_cache::PassCache>,
    /// Greylisting state (one for the whole run; `config.greylist` says how it is used).
    pub greylist: std::sync::Arc<crate::policy::greylist::Greylist>,
    /// Process counters (one set for the whole run, shared by every generation).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Per-source session outcomes (one table for the whole run).
    pub outcomes: std::sync::Arc<crate::source_outcomes::SourceOutcomes>,
    /// Session ends, for the auto-ban.
    pub ends: events::EndSender,
    /// Idle backend connections (one pool for the whole run).
    pub backend_pool: std::sync::Arc<backend_pool::BackendPool>,
}

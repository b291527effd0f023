//! Pure verdict functions over what a session has shown so far; no I/O except DNS lookups in
//! `dnsbl/`, `fcrdns.rs`, `spf/` and reading list files in `reputation/`. Each module owns its `[...]` configuration
//! section type.
//!
//! - `address.rs`: mail-path grammar (paths on MAIL/RCPT lines, local part and domain, address
//!   literals, domain-name syntax);
//! - `relay.rs`: anti-relay (accepted domains, relay networks, address tricks);
//! - `helo.rs`: HELO/EHLO heuristics;
//! - `dns.rs`: `[dns]`, the one resolver the DNS checks share (configured name servers only);
//! - `fcrdns.rs`: verified client names (PTR confirmed forward), `iprev`;
//! - `spf/`: SPF at MAIL FROM (`mail-auth` over the shared resolver);
//! - `dnsbl/`: DNSBL/DNSWL scoring through an async resolver (section, site grammar, answer
//!   filters, resolver and scoring);
//! - `reputation/`: large sender/HELO/IP lists in bloom filters with exact confirmation (section,
//!   entry grammar, list loading, compact storage);
//! - `pass_cache.rs`: clients that passed, remembered so they skip the slow checks;
//! - `greylist/`: greylisting at RCPT (section, triplet normalisation, local table and store).

pub mod address;
pub mod dns;
pub mod dnsbl;
pub mod fcrdns;
pub mod greylist;
pub mod helo;
pub mod pass_cache;
pub mod relay;
pub mod reputation;
pub mod spf;

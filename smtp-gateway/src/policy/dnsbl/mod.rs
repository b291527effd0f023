//! DNSBL/DNSWL scoring in the manner of Postfix postscreen (`postscreen_dnsbl_sites`).
//!
//! Each configured site is `zone[=filter][*weight]`: the client address is looked up as an A
//! record under `zone` (IPv4 octets or IPv6 nibbles reversed), the answers are matched against
//! the optional `filter`, and when at least one answer matches the site's `weight` is added to
//! the score once. Allowlists (DNSWL) use negative weights. A client whose total reaches
//! `threshold` is `listed`.
//!
//! Lookups never reject mail by themselves: a site that times out, fails or answers with a list
//! error code contributes 0 and is reported in [`DnsblScore::failures`]. Several sites may name
//! the same zone with different filters and weights (e.g. one per Spamhaus return code); the zone
//! is queried once.
//!
//! The resolver is built from the configured name servers only: the system configuration
//! (`/etc/resolv.conf`, `/etc/hosts`) is never read.
//!
//! # Layout
//! - `config.rs`: [`DnsblConfig`], the `[dnsbl]` section, its defaults and validation;
//! - `site.rs`: [`DnsblSite`], the `zone[=filter][*weight]` grammar and zone names;
//! - `filter.rs`: [`AnswerFilter`], which A answers of a list count (postscreen octet syntax);
//! - `error.rs`: [`DnsblError`] and [`Problem`], why a configuration or resolver is refused;
//! - `score.rs`: [`DnsblScore`] and its hits and failures, the outcome of one client's lookups;
//! - `resolver.rs`: [`Dnsbl`], the resolver over the configured name servers, query names and
//!   the scoring of the answers.

mod config;
mod error;
mod filter;
mod resolver;
mod score;
mod site;

pub use config::DnsblConfig;
pub use error::{DnsblError, Problem};
pub use filter::{AnswerFilter, FilterError};
pub use resolver::Dnsbl;
pub use score::{DnsblFailure, DnsblHit, DnsblScore, LookupFailure};
pub use site::{DnsblSite, SiteSyntaxError, ZoneError};

/// Helpers shared by the unit tests of this folder.
#[cfg(test)]
mod test_support {
    use std::net::Ipv4Addr;

    use super::DnsblSite;

    /// `text` as an IPv4 address.
    pub(super) fn ip4(text: &str) -> Ipv4Addr {
        text.parse().expect("test address")
    }

    /// `text` as a site, panicking with the reason when it does not parse.
    pub(super) fn site(text: &str) -> DnsblSite {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }
}

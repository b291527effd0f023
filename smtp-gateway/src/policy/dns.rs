//! `[dns]`: the one resolver the DNS checks share (DNSBL, FCrDNS, SPF): the configured name
//! servers only (never the system resolver, `/etc/resolv.conf` or `/etc/hosts`), a per-query
//! timeout, and a cache bounded in entries and in time.
//!
//! `dnsbl.nameservers` (the key of earlier versions) still works as the fallback when
//! `dns.nameservers` is empty; setting both is refused, so the file never says two things.

use std::{net::SocketAddr, time::Duration};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{NetError, runtime::TokioRuntimeProvider},
};
use serde::Deserialize;

use crate::invalid::Invalid;

/// Shortest accepted `dns.timeout`.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest accepted `dns.timeout` (a client waits meanwhile).
const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// Most accepted `dns.attempts`.
const MAX_ATTEMPTS: usize = 5;
/// Bounds of `dns.cache_size` (answers).
const CACHE_SIZE_RANGE: std::ops::RangeInclusive<u64> = 0..=1_000_000;
/// Bounds of `dns.max_cache_ttl`.
const MAX_CACHE_TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(86_400);

/// `[dns]`: the resolver of the DNSBL, FCrDNS and SPF checks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Recursive name servers, as `ip:port` (UDP, TCP after a truncated answer). No default:
    /// the system resolver is never used. Empty: `dnsbl.nameservers` (the older key).
    pub nameservers: Vec<SocketAddr>,
    /// How long one query waits for an answer before it is retried or fails (default `1s`,
    /// `10ms..=30s`). Each check also has a deadline of its own for all its lookups.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Tries per query, the first included (default `2`, `1..=5`).
    pub attempts: usize,
    /// Answers kept in the cache (default `4096`, `0..=1000000`; 0 turns caching off).
    pub cache_size: u64,
    /// Longest time an answer is cached, whatever its TTL (default `1h`, `1s..=1d`).
    #[serde(with = "humantime_serde")]
    pub max_cache_ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(1),
            attempts: 2,
            cache_size: 4096,
            max_cache_ttl: Duration::from_secs(3600),
        }
    }
}

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// A DNS check is on and no name server is configured.
    #[error(
        "dns.nameservers: at least one name server is required for {0} (the system resolver is never used)"
    )]
    NoNameservers(&'static str),
    /// hickory refused the configuration.
    #[error("dns.nameservers: cannot build the DNS resolver: {0}")]
    Build(#[source] NetError),
}

impl DnsConfig {
    /// Checks the values serde cannot; `legacy` is `dnsbl.nameservers`.
    pub fn validate(&self, legacy: &[SocketAddr]) -> Result<(), Invalid> {
        if !self.nameservers.is_empty() && !legacy.is_empty() {
            return Err(Invalid::new(
                "dnsbl.nameservers",
                "moved to dns.nameservers (shared by DNSBL, FCrDNS and SPF); set only dns.nameservers",
            ));
        }
        if let Some(addr) = self
            .nameservers
            .iter()
            .find(|a| a.ip().is_unspecified() || a.port() == 0)
        {
            return Err(Invalid::new(
                "dns.nameservers",
                format!("{addr} is not a usable name server address"),
            ));
        }
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&self.timeout) {
            return Err(Invalid::new(
                "dns.timeout",
                format!(
                    "{} is out of range (10ms..=30s)",
                    humantime::format_duration(self.timeout)
                ),
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.attempts) {
            return Err(Invalid::new(
                "dns.attempts",
                format!("{} is out of range (1..={MAX_ATTEMPTS})", self.attempts),
            ));
        }
        if !CACHE_SIZE_RANGE.contains(&self.cache_size) {
            return Err(Invalid::new(
                "dns.cache_size",
                format!("{} is out of range (0..=1000000)", self.cache_size),
            ));
        }
        if !MAX_CACHE_TTL_RANGE.contains(&self.max_cache_ttl) {
            return Err(Invalid::new(
                "dns.max_cache_ttl",
                format!(
                    "{} is out of range (1s..=1d)",
                    humantime::format_duration(self.max_cache_ttl)
                ),
            ));
        }
        Ok(())
    }

    /// The name servers in force: `dns.nameservers`, else `legacy` (`dnsbl.nameservers`).
    pub fn effective_nameservers<'a>(&'a self, legacy: &'a [SocketAddr]) -> &'a [SocketAddr] {
        if self.nameservers.is_empty() {
            legacy
        } else {
            &self.nameservers
        }
    }

    /// A resolver over `nameservers` only, with this section's timeout, attempts and cache
    /// bounds. `user` names the check that needs it (for the error). No I/O happens here.
    pub fn resolver(
        &self,
        nameservers: &[SocketAddr],
        user: &'static str,
    ) -> Result<TokioResolver, ResolverError> {
        if nameservers.is_empty() {
            return Err(ResolverError::NoNameservers(user));
        }
        let name_servers = nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut options = ResolverOpts::default();
        options.timeout = self.timeout;
        options.attempts = self.attempts;
        options.cache_size = self.cache_size;
        options.positive_max_ttl = Some(self.max_cache_ttl);
        options.negative_max_ttl = Some(self.max_cache_ttl);
        options.use_hosts_file = ResolveHosts::Never;
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .map_err(ResolverError::Build)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DnsConfig, toml::de::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            dns: DnsConfig,
        }
        toml::from_str::<File>(text).map(|f| f.dns)
    }

    #[test]
    fn defaults_and_bounds() {
        let c = parse("[dns]\n").expect("empty section");
        assert_eq!(c, DnsConfig::default());
        assert_eq!(c.validate(&[]), Ok(()));
        let err = parse("[dns]\ncache = 3\n").expect_err("unknown key");
        assert!(err.to_string().contains("cache"), "{err}");
        let key = |c: DnsConfig| c.validate(&[]).expect_err("refused").key;
        assert_eq!(
            key(DnsConfig {
                timeout: Duration::ZERO,
                ..DnsConfig::default()
            }),
            "dns.timeout"
        );
        assert_eq!(
            key(DnsConfig {
                attempts: 0,
                ..DnsConfig::default()
            }),
            "dns.attempts"
        );
        assert_eq!(
            key(DnsConfig {
                max_cache_ttl: Duration::ZERO,
                ..DnsConfig::default()
            }),
            "dns.max_cache_ttl"
        );
        assert_eq!(
            key(DnsConfig {
                nameservers: vec!["0.0.0.0:53".parse().expect("addr")],
                ..DnsConfig::default()
            }),
            "dns.nameservers"
        );
    }

    #[test]
    fn the_older_dnsbl_key_is_the_fallback_and_never_a_second_opinion() {
        let legacy: Vec<SocketAddr> = vec!["127.0.0.1:53".parse().expect("addr")];
        let c = DnsConfig::default();
        assert_eq!(c.validate(&legacy), Ok(()));
        assert_eq!(c.effective_nameservers(&legacy), &legacy[..]);
        let c = DnsConfig {
            nameservers: vec!["127.0.0.2:53".parse().expect("addr")],
            ..DnsConfig::default()
        };
        assert_eq!(c.effective_nameservers(&[]), &c.nameservers[..]);
        let err = c.validate(&legacy).expect_err("both set");
        assert_eq!(err.key, "dnsbl.nameservers");
        assert!(err.reason.contains("dns.nameservers"), "{}", err.reason);
        assert!(matches!(
            c.resolver(&[], "SPF"),
            Err(ResolverError::NoNameservers("SPF"))
        ));
    }
}

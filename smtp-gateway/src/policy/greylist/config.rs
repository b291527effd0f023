//! `[greylist]`: whether greylisting runs, its delays, the auto-allowlist, the networks a
//! triplet groups clients by, the big-sender domains whose SPF pass skips it, and the bound of
//! the local table.

use std::time::Duration;

use serde::Deserialize;

use crate::{invalid::Invalid, policy::address::check_domain_syntax};

/// Bounds of `greylist.delay`.
const DELAY_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86_400));
/// Largest `greylist.retry_window` (30 days).
const MAX_RETRY_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// Largest `greylist.pass_ttl` and `greylist.auto_allowlist_ttl` (365 days).
const MAX_LONG_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Largest `greylist.auto_allowlist_after`.
const MAX_AUTO_ALLOWLIST_AFTER: u32 = 1_000;
/// Largest `greylist.local_capacity`.
const MAX_LOCAL_CAPACITY: usize = 10_000_000;
/// Most `greylist.spf_bypass_domains` entries.
const MAX_SPF_BYPASS_DOMAINS: usize = 10_000;

/// `[greylist]`: greylisting at RCPT on (client network, normalised sender, recipient).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistConfig {
    /// Whether greylisting runs (default `false`). It runs only on listeners whose profile has
    /// `greylist` on (the built-in `mx` profile follows this switch; `submission` never
    /// greylists).
    pub enabled: bool,
    /// How long a new triplet is answered `451 4.7.1` before a retry passes (default `5m`,
    /// `1s..=1d`).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// How long after `delay` a retry is still awaited (default `2d`, up to `30d`): a triplet
    /// not retried within `delay + retry_window` starts over.
    #[serde(with = "humantime_serde")]
    pub retry_window: Duration,
    /// How long a triplet that passed keeps passing without a new delay (default `35d`, at
    /// least `retry_window`, up to `365d`).
    #[serde(with = "humantime_serde")]
    pub pass_ttl: Duration,
    /// A client network whose triplets passed in this many sessions is allowlisted: none of its
    /// triplets is greylisted for `auto_allowlist_ttl` (default `5`, `0..=1000`; `0` disables
    /// the auto-allowlist).
    pub auto_allowlist_after: u32,
    /// How long an auto-allowlisted client network skips greylisting, and how long its pass
    /// count is kept (default `35d`, `1s..=365d`).
    #[serde(with = "humantime_serde")]
    pub auto_allowlist_ttl: Duration,
    /// The IPv4 prefix length that groups clients in triplets and in the auto-allowlist
    /// (default `24`, `8..=32`): a retry from another host of the sender's pool passes.
    pub ipv4_prefix: u8,
    /// The IPv6 prefix length that groups clients (default `64`, `16..=128`).
    pub ipv6_prefix: u8,
    /// Big senders: a client whose SPF result is `pass` for one of these domains (or a
    /// subdomain) is never greylisted (needs `[spf] enabled`). Default none; at most 10,000.
    pub spf_bypass_domains: Vec<String>,
    /// Triplets and client networks this node remembers at most (default `100000`,
    /// `1..=10000000`; the oldest go first). With a state store the store holds them too, and
    /// with Redis the whole fleet shares them.
    pub local_capacity: usize,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(2 * 86_400),
            pass_ttl: Duration::from_secs(35 * 86_400),
            auto_allowlist_after: 5,
            auto_allowlist_ttl: Duration::from_secs(35 * 86_400),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            spf_bypass_domains: Vec::new(),
            local_capacity: 100_000,
        }
    }
}

impl GreylistConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        Invalid::duration_in("greylist.delay", self.delay, DELAY_RANGE.0, DELAY_RANGE.1)?;
        Invalid::duration_in(
            "greylist.retry_window",
            self.retry_window,
            Duration::from_secs(1),
            MAX_RETRY_WINDOW,
        )?;
        Invalid::duration_in(
            "greylist.pass_ttl",
            self.pass_ttl,
            self.retry_window,
            MAX_LONG_TTL,
        )?;
        Invalid::at_most(
            "greylist.auto_allowlist_after",
            self.auto_allowlist_after,
            MAX_AUTO_ALLOWLIST_AFTER,
        )?;
        Invalid::duration_in(
            "greylist.auto_allowlist_ttl",
            self.auto_allowlist_ttl,
            Duration::from_secs(1),
            MAX_LONG_TTL,
        )?;
        Invalid::in_range("greylist.ipv4_prefix", self.ipv4_prefix, 8, 32)?;
        Invalid::in_range("greylist.ipv6_prefix", self.ipv6_prefix, 16, 128)?;
        Invalid::in_range(
            "greylist.local_capacity",
            self.local_capacity,
            1,
            MAX_LOCAL_CAPACITY,
        )?;
        Invalid::at_most(
            "greylist.spf_bypass_domains",
            self.spf_bypass_domains.len(),
            MAX_SPF_BYPASS_DOMAINS,
        )?;
        for domain in &self.spf_bypass_domains {
            let name = domain.strip_suffix('.').unwrap_or(domain);
            if let Err(why) = check_domain_syntax(name) {
                return Err(Invalid::new(
                    "greylist.spf_bypass_domains",
                    format!("{domain:?}: {why}"),
                ));
            }
        }
        Ok(())
    }

    /// Whether `domain` (an SPF-checked domain) is one of `spf_bypass_domains` or below one,
    /// case and a trailing dot aside.
    pub fn is_big_sender(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.spf_bypass_domains.iter().any(|big| {
            let big = big.trim_end_matches('.').to_ascii_lowercase();
            domain == big
                || domain
                    .strip_suffix(big.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        greylist: GreylistConfig,
    }

    fn parse(text: &str) -> Result<GreylistConfig, String> {
        let c = toml::from_str::<File>(text)
            .map_err(|e| e.to_string())?
            .greylist;
        c.validate().map_err(|e| e.key)?;
        Ok(c)
    }

    #[test]
    fn defaults_keys_and_bounds() {
        assert_eq!(parse("[greylist]\n"), Ok(GreylistConfig::default()));
        assert!(!GreylistConfig::default().enabled, "off by default");
        let c = parse(
            "[greylist]\nenabled = true\ndelay = \"2s\"\nretry_window = \"1h\"\npass_ttl = \"2h\"\n\
             auto_allowlist_after = 0\nipv4_prefix = 32\nipv6_prefix = 128\n\
             spf_bypass_domains = [\"Example.COM.\"]\nlocal_capacity = 10\n",
        )
        .expect("valid");
        assert_eq!(c.delay, Duration::from_secs(2));
        assert!(
            parse("[greylist]\ndelai = \"2s\"\n").is_err(),
            "unknown key"
        );
        for (text, key) in [
            ("delay = \"0s\"", "greylist.delay"),
            ("delay = \"2d\"", "greylist.delay"),
            ("retry_window = \"31d\"", "greylist.retry_window"),
            ("pass_ttl = \"1d\"", "greylist.pass_ttl"),
            ("pass_ttl = \"400d\"", "greylist.pass_ttl"),
            (
                "auto_allowlist_after = 1001",
                "greylist.auto_allowlist_after",
            ),
            ("auto_allowlist_ttl = \"0s\"", "greylist.auto_allowlist_ttl"),
            ("ipv4_prefix = 7", "greylist.ipv4_prefix"),
            ("ipv4_prefix = 33", "greylist.ipv4_prefix"),
            ("ipv6_prefix = 129", "greylist.ipv6_prefix"),
            ("local_capacity = 0", "greylist.local_capacity"),
            (
                "spf_bypass_domains = [\"bad domain\"]",
                "greylist.spf_bypass_domains",
            ),
            ("spf_bypass_domains = [\"\"]", "greylist.spf_bypass_domains"),
        ] {
            assert_eq!(
                parse(&format!("[greylist]\n{text}\n")),
                Err(key.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn big_senders_match_the_domain_and_below_only() {
        let c = GreylistConfig {
            spf_bypass_domains: vec!["Example.com.".into()],
            ..GreylistConfig::default()
        };
        assert!(c.is_big_sender("example.com"));
        assert!(c.is_big_sender("MAIL.example.COM."));
        assert!(!c.is_big_sender("badexample.com"));
        assert!(!c.is_big_sender("example.com.evil"));
        assert!(!c.is_big_sender(""));
        assert!(!c.is_big_sender("ё.例"));
    }
}

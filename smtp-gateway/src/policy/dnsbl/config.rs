//! `[dnsbl]`: the section, its documented defaults and the checks serde cannot make.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::{
    error::{DnsblError, MAX_TIMEOUT, MIN_TIMEOUT, Problem},
    filter::AnswerFilter,
    site::{DnsblSite, normalize_zone},
};

/// `[dnsbl]`: DNS block- and allowlists consulted for each connecting client.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsblConfig {
    /// Whether clients are looked up at all (default `false`; `nameservers` and `sites` are then
    /// required).
    pub enabled: bool,
    /// Recursive name servers queried, as `ip:port` (UDP, TCP after a truncated answer). There is
    /// no default and the system resolver is never used: DNSBLs refuse queries from large public
    /// resolvers, so point this at a local one.
    pub nameservers: Vec<SocketAddr>,
    /// Deadline for all lookups of one client together (default `2s`); a site that has not
    /// answered by then contributes 0 and is reported as a failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Total weight at which a client counts as listed (default `3`, at least 1).
    pub threshold: i32,
    /// The lists, each `"zone[=filter][*weight]"` (e.g. `"zen.example=127.0.0.[2..11]*3"`) or a
    /// table `{ zone = "...", filter = "...", weight = N }`. Default: none.
    pub sites: Vec<DnsblSite>,
}

impl Default for DnsblConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            threshold: 3,
            sites: Vec::new(),
        }
    }
}

/// Checks `site` (number `index` in the list) and compiles its filter; returns the normalized
/// zone too.
pub(super) fn compile_site(
    index: usize,
    site: &DnsblSite,
) -> Result<(String, i32, Option<AnswerFilter>), DnsblError> {
    let zone = normalize_zone(&site.zone)
        .map_err(|e| DnsblError::invalid(format_args!("sites[{index}].zone"), e))?;
    let filter = match &site.filter {
        Some(text) => Some(text.parse::<AnswerFilter>().map_err(|source| {
            DnsblError::invalid(
                format_args!("sites[{index}].filter"),
                Problem::Filter {
                    filter: text.clone(),
                    source,
                },
            )
        })?),
        None => None,
    };
    if site.weight == 0 {
        return Err(DnsblError::invalid(
            format_args!("sites[{index}].weight"),
            Problem::ZeroWeight,
        ));
    }
    Ok((zone, site.weight, filter))
}

impl DnsblConfig {
    /// Checks values serde cannot; returns the dotted key (`dnsbl.…`) and the reason, like
    /// `Config::validate`. Sites are checked even when the section is disabled.
    pub fn validate(&self) -> Result<(), crate::invalid::Invalid> {
        use crate::invalid::Invalid;
        self.check(self.enabled).map_err(|e| match e {
            DnsblError::Invalid { key, problem } => Invalid::new(key, problem.to_string()),
            other => Invalid::new("dnsbl", other.to_string()),
        })
    }

    /// The checks behind [`validate`](Self::validate); `in_use` requires name servers and sites.
    pub(super) fn check(&self, in_use: bool) -> Result<(), DnsblError> {
        if in_use && self.nameservers.is_empty() {
            return Err(DnsblError::invalid("nameservers", Problem::NoNameservers));
        }
        if let Some(addr) = self
            .nameservers
            .iter()
            .find(|a| a.ip().is_unspecified() || a.port() == 0)
        {
            return Err(DnsblError::invalid(
                "nameservers",
                Problem::Nameserver(*addr),
            ));
        }
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&self.timeout) {
            return Err(DnsblError::invalid(
                "timeout",
                Problem::Timeout(self.timeout),
            ));
        }
        if self.threshold < 1 {
            return Err(DnsblError::invalid(
                "threshold",
                Problem::Threshold(self.threshold),
            ));
        }
        if in_use && self.sites.is_empty() {
            return Err(DnsblError::invalid("sites", Problem::NoSites));
        }
        for (index, site) in self.sites.iter().enumerate() {
            compile_site(index, site)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::dnsbl::test_support::site;

    /// Parses `[dnsbl]` TOML the way the configuration file is read.
    fn parse_section(text: &str) -> Result<DnsblConfig, toml::de::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            dnsbl: DnsblConfig,
        }
        toml::from_str::<File>(text).map(|f| f.dnsbl)
    }

    #[test]
    fn empty_section_gives_documented_defaults() {
        let c = parse_section("[dnsbl]\n").expect("empty section is valid");
        assert_eq!(c, DnsblConfig::default());
        assert!(!c.enabled);
        assert!(c.nameservers.is_empty());
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.threshold, 3);
        assert!(c.sites.is_empty());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn sites_deserialize_from_strings_and_tables() {
        let c = parse_section(
            r#"
            [dnsbl]
            enabled = true
            nameservers = ["127.0.0.1:53", "[::1]:5353"]
            timeout = "1500ms"
            threshold = 4
            sites = [
                "zen.example=127.0.0.[2..11]*3",
                { zone = "list.dnswl.example", filter = "127.0.[0..255].[1..3]", weight = -2 },
                { zone = "bl.example" },
            ]
            "#,
        )
        .expect("valid section");
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.threshold, 4);
        assert_eq!(c.nameservers.len(), 2);
        assert_eq!(
            c.sites,
            vec![
                site("zen.example=127.0.0.[2..11]*3"),
                site("list.dnswl.example=127.0.[0..255].[1..3]*-2"),
                site("bl.example*1"),
            ]
        );
        assert_eq!(c.validate(), Ok(()));

        // Array-of-tables form.
        let c = parse_section("[dnsbl]\n[[dnsbl.sites]]\nzone = \"zen.example\"\nweight = 2\n")
            .expect("valid section");
        assert_eq!(c.sites, vec![site("zen.example*2")]);
    }

    #[test]
    fn unknown_keys_and_bad_types_are_refused() {
        let err = parse_section("[dnsbl]\nthreshhold = 3\n").unwrap_err();
        assert!(err.to_string().contains("threshhold"), "{err}");
        let err =
            parse_section("[dnsbl]\nsites = [{ zone = \"a.example\", wieght = 2 }]\n").unwrap_err();
        assert!(err.to_string().contains("wieght"), "{err}");
        let err = parse_section("[dnsbl]\nsites = [{ weight = 2 }]\n").unwrap_err();
        assert!(err.to_string().contains("zone"), "{err}");
        let err = parse_section("[dnsbl]\nsites = [\"a.example*two\"]\n").unwrap_err();
        assert!(err.to_string().contains("weight"), "{err}");
        let err = parse_section("[dnsbl]\nsites = [3]\n").unwrap_err();
        assert!(err.to_string().contains("site string"), "{err}");
        let err = parse_section("[dnsbl]\nnameservers = [\"127.0.0.1\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("nameservers") || err.to_string().contains("socket"),
            "{err}"
        );
        let err = parse_section("[dnsbl]\ntimeout = \"2 fortnights\"\n").unwrap_err();
        assert!(
            err.to_string().contains("timeout") || err.to_string().contains("unit"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let base = DnsblConfig {
            enabled: true,
            nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
            sites: vec![site("zen.example*3")],
            ..DnsblConfig::default()
        };
        assert_eq!(base.validate(), Ok(()));
        let key_of = |c: &DnsblConfig| {
            let e = c.validate().expect_err("should be refused");
            (e.key, e.reason)
        };

        let c = DnsblConfig {
            nameservers: vec![],
            ..base.clone()
        };
        let (key, message) = key_of(&c);
        assert_eq!(key, "dnsbl.nameservers");
        assert!(message.contains("name server"), "{message}");
        // Disabled: nothing required, but what is written must still be valid.
        assert_eq!(
            DnsblConfig {
                enabled: false,
                ..c.clone()
            }
            .validate(),
            Ok(())
        );

        let c = DnsblConfig {
            sites: vec![],
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.sites");

        let c = DnsblConfig {
            nameservers: vec!["0.0.0.0:53".parse().expect("addr")],
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.nameservers");
        let c = DnsblConfig {
            nameservers: vec!["127.0.0.1:0".parse().expect("addr")],
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.nameservers");

        let c = DnsblConfig {
            timeout: Duration::ZERO,
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.timeout");
        let c = DnsblConfig {
            timeout: Duration::from_secs(61),
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.timeout");
        let c = DnsblConfig {
            threshold: 0,
            ..base.clone()
        };
        assert_eq!(key_of(&c).0, "dnsbl.threshold");

        let with_site = |text: &str| DnsblConfig {
            enabled: false,
            sites: vec![site("ok.example"), site(text)],
            ..base.clone()
        };
        let (key, message) = key_of(&with_site("zen..example*3"));
        assert_eq!(key, "dnsbl.sites[1].zone");
        assert!(message.contains("zen..example"), "{message}");
        let (key, message) = key_of(&with_site("zen.example=127.0.0.256*3"));
        assert_eq!(key, "dnsbl.sites[1].filter");
        assert!(
            message.contains("256") && message.contains("greater than 255"),
            "{message}"
        );
        let (key, message) = key_of(&with_site("zen.example=127.0.0.[11..2]*3"));
        assert_eq!(key, "dnsbl.sites[1].filter");
        assert!(
            message.contains("11..2") && message.contains("reversed"),
            "{message}"
        );
        let (key, _) = key_of(&with_site("zen.example*0"));
        assert_eq!(key, "dnsbl.sites[1].weight");
        let (key, _) = key_of(&with_site("=127.0.0.2*3"));
        assert_eq!(key, "dnsbl.sites[1].zone");
    }
}

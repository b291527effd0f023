//! Per-listener policy profiles: a listener names one (`listeners = [{ address = "...", profile =
//! "submission" }]`) and its sessions run with it: which checks run with which action, the greet
//! pause, DNSBL on or off, greylisting on or off, the relay rules and whether AUTH is required
//! before MAIL.
//!
//! A `[profiles.<name>]` table states only what differs from the top-level sections
//! (`[checks]`, `smtp.greet_pause`, `dnsbl.enabled`, `[relay]`); every key it leaves out is
//! theirs. Its `checks` table is generated from the check table (`checks.rs`), so a new check
//! can be set per profile without a line here.
//!
//! Two profiles are built in, and a table of the same name changes them key by key:
//! - `mx`: the top-level sections as they are. A `smtp` listener (port 25) without `profile`
//!   runs with it, so an MX configuration without profiles behaves exactly as before.
//! - `submission` (ports 587/465; a `submission` or `smtps` listener without `profile` runs with
//!   it): MAIL needs a successful AUTH first (`530 5.7.0 Authentication
//!   required`), and the checks meant for MX traffic are off: no DNSBL lookup, no greet pause,
//!   no greylisting,
//!   `pregreet` ignored, and the HELO checks that score ignored (a mail program's HELO names
//!   the laptop it runs on, often a private address literal behind NAT: it says nothing about a
//!   client that must log in before MAIL). They are off for every client of the listener, not only the
//!   authenticated ones, plain or implicit TLS alike: the banner comes before any client can
//!   authenticate, and with AUTH required before MAIL only authenticated clients reach the
//!   first MAIL, where the DNSBL score would be collected.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::Deserialize;

use crate::{
    checks::{Action, ChecksConfig, ChecksOverride},
    invalid::Invalid,
    policy::relay::RelayConfig,
};

/// The profile of a listener without `profile`.
pub const MX: &str = "mx";
/// The built-in profile for submission listeners.
pub const SUBMISSION: &str = "submission";

/// `[profiles.<name>]`: what the profile sets differently from the top-level sections.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// MAIL FROM before a successful AUTH is refused with `530 5.7.0 Authentication required`.
    pub require_auth: Option<bool>,
    /// Replaces `smtp.greet_pause` ("0s": no pause).
    #[serde(with = "humantime_serde::option")]
    pub greet_pause: Option<Duration>,
    /// `false`: no DNSBL lookup for this listener's clients (`true` looks up only when
    /// `[dnsbl] enabled`).
    pub dnsbl: Option<bool>,
    /// `false`: no greylisting on this listener (`true`, the default except for `submission`,
    /// greylists only when `[greylist] enabled`).
    pub greylist: Option<bool>,
    /// `[checks]` entries set differently (same keys and values as `[checks]`).
    pub checks: ChecksOverride,
    /// `[relay]` keys set differently.
    pub relay: RelayOverride,
}

/// A check the built-in `submission` profile does not run.
const IGNORED: Option<crate::checks::CheckSetting> = Some(crate::checks::CheckSetting {
    action: Action::Ignore,
    weight: 1,
});

impl ProfileConfig {
    /// The built-in settings of `name` (empty for a name that is not built in).
    fn built_in(name: &str) -> ProfileConfig {
        match name {
            SUBMISSION => ProfileConfig {
                require_auth: Some(true),
                greet_pause: Some(Duration::ZERO),
                dnsbl: Some(false),
                greylist: Some(false),
                checks: ChecksOverride {
                    pregreet: IGNORED,
                    helo_unbracketed_literal: IGNORED,
                    helo_literal_mismatch: IGNORED,
                    helo_not_fqdn: IGNORED,
                    helo_dynamic: IGNORED,
                    helo_embedded_ip: IGNORED,
                    ..ChecksOverride::default()
                },
                relay: RelayOverride::default(),
            },
            _ => ProfileConfig::default(),
        }
    }

    /// `self` with every key `over` sets taken from `over`.
    fn overridden_by(self, over: &ProfileConfig) -> ProfileConfig {
        ProfileConfig {
            require_auth: over.require_auth.or(self.require_auth),
            greet_pause: over.greet_pause.or(self.greet_pause),
            dnsbl: over.dnsbl.or(self.dnsbl),
            greylist: over.greylist.or(self.greylist),
            checks: self.checks.overridden_by(&over.checks),
            relay: RelayOverride {
                accepted_domains: over
                    .relay
                    .accepted_domains
                    .clone()
                    .or(self.relay.accepted_domains),
                relay_networks: over
                    .relay
                    .relay_networks
                    .clone()
                    .or(self.relay.relay_networks),
                allow_address_literals: over
                    .relay
                    .allow_address_literals
                    .or(self.relay.allow_address_literals),
            },
        }
    }
}

/// `[profiles.<name>.relay]`: the `[relay]` keys a profile sets differently.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayOverride {
    /// Replaces `relay.accepted_domains`.
    pub accepted_domains: Option<Vec<String>>,
    /// Replaces `relay.relay_networks`.
    pub relay_networks: Option<Vec<ipnet::IpNet>>,
    /// Replaces `relay.allow_address_literals`.
    pub allow_address_literals: Option<bool>,
}

impl RelayOverride {
    /// `base` with the keys set here replaced.
    fn apply(&self, base: &RelayConfig) -> RelayConfig {
        RelayConfig {
            accepted_domains: self
                .accepted_domains
                .clone()
                .unwrap_or_else(|| base.accepted_domains.clone()),
            relay_networks: self
                .relay_networks
                .clone()
                .unwrap_or_else(|| base.relay_networks.clone()),
            allow_address_literals: self
                .allow_address_literals
                .unwrap_or(base.allow_address_literals),
        }
    }
}

/// The top-level settings a profile starts from.
#[derive(Debug, Clone, Copy)]
pub struct Base<'a> {
    /// `[checks]`.
    pub checks: &'a ChecksConfig,
    /// `smtp.greet_pause`.
    pub greet_pause: Duration,
    /// `[relay]`.
    pub relay: &'a RelayConfig,
}

/// One profile resolved against the top-level sections: what a session runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Its name (in the session line).
    pub name: String,
    /// The action of every check.
    pub checks: ChecksConfig,
    /// Pause before the final banner line.
    pub greet_pause: Duration,
    /// Whether the DNSBL is asked about this listener's clients (when `[dnsbl]` is enabled).
    pub dnsbl: bool,
    /// Anti-relay.
    pub relay: RelayConfig,
    /// MAIL needs a successful AUTH first.
    pub require_auth: bool,
    /// Whether this listener's recipients are greylisted (when `[greylist]` is enabled).
    pub greylist: bool,
    /// A clean delivery puts the client in the pass cache, which lets it skip the DNSBL and the
    /// greet pause on every listener: only when this profile ran both as the top level does.
    pub earns_pass: bool,
}

impl Profile {
    fn resolve(name: &str, config: &ProfileConfig, base: Base<'_>) -> Profile {
        let greet_pause = config.greet_pause.unwrap_or(base.greet_pause);
        let dnsbl = config.dnsbl.unwrap_or(true);
        Profile {
            name: name.to_string(),
            checks: config.checks.apply(base.checks),
            greet_pause,
            dnsbl,
            relay: config.relay.apply(base.relay),
            require_auth: config.require_auth.unwrap_or(false),
            greylist: config.greylist.unwrap_or(true),
            earns_pass: dnsbl && greet_pause >= base.greet_pause,
        }
    }
}

/// `[profiles]`: the profile tables of the file, by name.
pub type ProfilesConfig = BTreeMap<String, ProfileConfig>;

/// Every profile of one configuration, resolved (the built-in ones included).
#[derive(Debug, Clone, PartialEq)]
pub struct Profiles {
    /// [`MX`], what a listener without a profile runs with.
    mx: Arc<Profile>,
    /// By name, [`MX`] and [`SUBMISSION`] included.
    by_name: BTreeMap<String, Arc<Profile>>,
}

impl Profiles {
    /// The built-in profiles changed by the file's tables, and the file's own ones.
    pub fn resolve(tables: &ProfilesConfig, base: Base<'_>) -> Profiles {
        let mut by_name = BTreeMap::new();
        for name in [MX, SUBMISSION]
            .into_iter()
            .chain(tables.keys().map(String::as_str))
        {
            let config = match tables.get(name) {
                Some(table) => ProfileConfig::built_in(name).overridden_by(table),
                None => ProfileConfig::built_in(name),
            };
            by_name.insert(
                name.to_string(),
                Arc::new(Profile::resolve(name, &config, base)),
            );
        }
        let mx = match by_name.get(MX) {
            Some(mx) => mx.clone(),
            None => Arc::new(Profile::resolve(MX, &ProfileConfig::default(), base)),
        };
        Profiles { mx, by_name }
    }

    /// The profile a listener names (`None`: [`MX`]); `None` for an unknown name, which
    /// validation refuses, so only a listener kept from an older generation can meet one.
    pub fn get(&self, name: Option<&str>) -> Option<Arc<Profile>> {
        match name {
            None => Some(self.mx.clone()),
            Some(name) => self.by_name.get(name).cloned(),
        }
    }

    /// [`MX`].
    pub fn mx(&self) -> Arc<Profile> {
        self.mx.clone()
    }

    /// Every profile name, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

impl Default for Profiles {
    fn default() -> Self {
        let (checks, relay) = (ChecksConfig::default(), RelayConfig::default());
        Profiles::resolve(
            &ProfilesConfig::new(),
            Base {
                checks: &checks,
                greet_pause: Duration::ZERO,
                relay: &relay,
            },
        )
    }
}

/// Checks the profile tables: names, the greet pause (at most `max_greet_pause`, as
/// `smtp.greet_pause`), and each profile's check weights and relay rules as `[checks]` and
/// `[relay]` are checked (the key named is the profile's).
pub fn validate(
    tables: &ProfilesConfig,
    base_checks: &ChecksConfig,
    base_relay: &RelayConfig,
    max_greet_pause: Duration,
) -> Result<(), Invalid> {
    let in_profile =
        |name: &str, e: Invalid| Invalid::new(format!("profiles.{name}.{}", e.key), e.reason);
    for (name, table) in tables {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Invalid::new(
                format!("profiles.{name}"),
                "a profile name is letters, digits, `-` and `_`",
            ));
        }
        if let Some(pause) = table.greet_pause {
            let key = format!("profiles.{name}.greet_pause");
            Invalid::duration_in(&key, pause, Duration::ZERO, max_greet_pause)?;
        }
        let checks = table.checks.apply(base_checks);
        checks.validate().map_err(|e| in_profile(name, e))?;
        let relay = table.relay.apply(base_relay);
        relay.validate().map_err(|e| in_profile(name, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{Check, CheckSetting};

    fn base_checks() -> ChecksConfig {
        ChecksConfig {
            dnsbl: CheckSetting {
                action: Action::Reject,
                weight: 3,
            },
            ..ChecksConfig::default()
        }
    }

    fn resolve(toml: &str) -> Profiles {
        let tables: ProfilesConfig = toml::from_str(toml).expect("profile tables");
        let checks = base_checks();
        let relay = RelayConfig {
            accepted_domains: vec!["example.org".into()],
            ..RelayConfig::default()
        };
        Profiles::resolve(
            &tables,
            Base {
                checks: &checks,
                greet_pause: Duration::from_secs(3),
                relay: &relay,
            },
        )
    }

    #[test]
    fn mx_is_the_top_level_sections_and_the_default_of_a_listener() {
        let profiles = resolve("");
        let mx = profiles.get(None).expect("mx");
        assert_eq!(mx.name, MX);
        assert_eq!(mx.checks, base_checks());
        assert_eq!(mx.greet_pause, Duration::from_secs(3));
        assert!(mx.dnsbl && !mx.require_auth && mx.earns_pass);
        assert_eq!(mx.relay.accepted_domains, vec!["example.org".to_string()]);
        assert_eq!(profiles.get(Some(MX)), Some(mx.clone()));
        assert_eq!(profiles.mx(), mx);
        assert_eq!(profiles.get(Some("nonesuch")), None);
    }

    #[test]
    fn submission_requires_auth_and_skips_the_mx_checks() {
        let sub = resolve("").get(Some(SUBMISSION)).expect("submission");
        assert!(sub.require_auth && !sub.dnsbl);
        assert!(
            !sub.earns_pass,
            "a clean submission session must not let its client skip the MX checks"
        );
        assert_eq!(sub.greet_pause, Duration::ZERO);
        assert_eq!(sub.checks.get(Check::Pregreet).action, Action::Ignore);
        for helo in [
            Check::HeloUnbracketedLiteral,
            Check::HeloLiteralMismatch,
            Check::HeloNotFqdn,
            Check::HeloDynamic,
            Check::HeloEmbeddedIp,
        ] {
            assert_eq!(sub.checks.get(helo).action, Action::Ignore, "{helo:?}");
        }
        assert_eq!(sub.checks.get(Check::HeloInvalid).action, Action::Reject);
        // Everything else is the top level's.
        assert_eq!(sub.checks.get(Check::Dnsbl).action, Action::Reject);
        assert_eq!(sub.relay.accepted_domains, vec!["example.org".to_string()]);
    }

    #[test]
    fn a_table_changes_a_built_in_profile_key_by_key_and_adds_its_own() {
        let profiles = resolve(
            r#"
            [submission]
            greet_pause = "1s"
            [partners]
            dnsbl = false
            checks = { helo_not_fqdn = { action = "reject" } }
            relay = { relay_networks = ["198.18.7.0/24"] }
            "#,
        );
        let sub = profiles.get(Some(SUBMISSION)).expect("submission");
        assert_eq!(sub.greet_pause, Duration::from_secs(1));
        assert!(
            sub.require_auth && !sub.dnsbl,
            "the other built-in keys stay"
        );
        let partners = profiles.get(Some("partners")).expect("partners");
        assert!(!partners.dnsbl && !partners.require_auth);
        assert_eq!(partners.greet_pause, Duration::from_secs(3));
        assert_eq!(
            partners.checks.get(Check::HeloNotFqdn).action,
            Action::Reject
        );
        assert_eq!(partners.checks.get(Check::Dnsbl).action, Action::Reject);
        assert_eq!(partners.relay.relay_networks.len(), 1);
        assert_eq!(
            partners.relay.accepted_domains,
            vec!["example.org".to_string()]
        );
    }

    #[test]
    fn every_check_can_be_set_per_profile() {
        for check in Check::ALL {
            let toml = format!(
                "[p]\nchecks = {{ {} = {{ action = \"drop\" }} }}\n",
                check.name()
            );
            let p = resolve(&toml).get(Some("p")).expect("p");
            assert_eq!(p.checks.get(check).action, Action::Drop, "{}", check.name());
        }
        let err =
            toml::from_str::<ProfilesConfig>("[p]\nchecks = { pregret = { action = \"drop\" } }\n")
                .expect_err("an unknown check is refused");
        assert!(err.to_string().contains("pregret"), "{err}");
    }

    #[test]
    fn bad_names_and_relay_rules_are_refused_with_the_profile_key() {
        let (checks, relay) = (ChecksConfig::default(), RelayConfig::default());
        let max = Duration::from_secs(300);
        let refused = |toml: &str| {
            let tables: ProfilesConfig = toml::from_str(toml).expect("tables");
            validate(&tables, &checks, &relay, max).expect_err(toml).key
        };
        assert_eq!(
            refused("[p.relay]\nrelay_networks = [\"0.0.0.0/0\"]\n"),
            "profiles.p.relay.relay_networks"
        );
        assert_eq!(refused("[\"a b\"]\n"), "profiles.a b");
        assert_eq!(
            refused("[p]\ngreet_pause = \"301s\"\n"),
            "profiles.p.greet_pause"
        );
        assert_eq!(
            refused("[p.checks]\ndnsbl = { action = \"score\", weight = 1000000 }\n"),
            "profiles.p.checks.dnsbl.weight"
        );
        let fine: ProfilesConfig = toml::from_str("[p]\ngreet_pause = \"5s\"\n").expect("tables");
        assert_eq!(validate(&fine, &checks, &relay, max), Ok(()));
    }
}

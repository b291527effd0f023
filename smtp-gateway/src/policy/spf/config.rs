//! `[spf]`: whether SPF is evaluated, the session's time budget for it, and what each result
//! other than `fail` does (`fail` is the `[checks] spf` setting).

use std::time::Duration;

use serde::Deserialize;

use super::SpfOutcome;
use crate::{
    checks::{Action, CheckSetting},
    invalid::Invalid,
};

/// Bounds of `spf.timeout`.
const TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(60);

/// `[spf]`: SPF (RFC 7208) at MAIL FROM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpfConfig {
    /// Whether the MAIL FROM domain (the HELO name for the null sender) is evaluated (default
    /// `false`). Needs `dns.nameservers`.
    pub enabled: bool,
    /// Time all SPF evaluations of one session may take together (default `5s`,
    /// `10ms..=60s`); an evaluation cut short is a `temperror`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `softfail` (`~all`): default `score`, weight 1. `reject` gives `550 5.7.23`.
    pub softfail: CheckSetting,
    /// `neutral` (`?all`): default `ignore`. `reject` gives `550 5.7.23`.
    pub neutral: CheckSetting,
    /// `none` (no SPF record): default `ignore`. `reject` gives `550 5.7.23`.
    pub none: CheckSetting,
    /// `temperror` (DNS timeout or failure): default `ignore`. Never a `5xx`: `reject` gives
    /// `451 4.7.24`.
    pub temperror: CheckSetting,
    /// `permerror` (a broken record, e.g. two of them): default `score`, weight 1. `reject`
    /// gives `550 5.7.24`.
    pub permerror: CheckSetting,
}

impl Default for SpfConfig {
    fn default() -> Self {
        let setting = |action, weight| CheckSetting { action, weight };
        Self {
            enabled: false,
            timeout: Duration::from_secs(5),
            softfail: setting(Action::Score, 1),
            neutral: setting(Action::Ignore, 1),
            none: setting(Action::Ignore, 1),
            temperror: setting(Action::Ignore, 1),
            permerror: setting(Action::Score, 1),
        }
    }
}

impl SpfConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !TIMEOUT_RANGE.contains(&self.timeout) {
            return Err(Invalid::new(
                "spf.timeout",
                format!(
                    "{} is out of range (10ms..=60s)",
                    humantime::format_duration(self.timeout)
                ),
            ));
        }
        for (name, setting) in [
            ("softfail", self.softfail),
            ("neutral", self.neutral),
            ("none", self.none),
            ("temperror", self.temperror),
            ("permerror", self.permerror),
        ] {
            Invalid::in_range(
                &format!("spf.{name}.weight"),
                setting.weight,
                -crate::checks::MAX_WEIGHT,
                crate::checks::MAX_WEIGHT,
            )?;
        }
        Ok(())
    }

    /// The setting of `outcome`, `fail` being `fail` (the `[checks] spf` setting); `None` for
    /// `pass`.
    pub fn setting(&self, outcome: SpfOutcome, fail: CheckSetting) -> Option<CheckSetting> {
        match outcome {
            SpfOutcome::Pass => None,
            SpfOutcome::Fail => Some(fail),
            SpfOutcome::SoftFail => Some(self.softfail),
            SpfOutcome::Neutral => Some(self.neutral),
            SpfOutcome::None => Some(self.none),
            SpfOutcome::TempError => Some(self.temperror),
            SpfOutcome::PermError => Some(self.permerror),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_defaults_and_keys() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            spf: SpfConfig,
        }
        let c = toml::from_str::<File>("[spf]\n").expect("empty").spf;
        assert_eq!(c, SpfConfig::default());
        let c = toml::from_str::<File>(
            "[spf]\nenabled = true\npermerror = { action = \"reject\" }\ntemperror = { action = \"score\", weight = 2 }\n",
        )
        .expect("valid")
        .spf;
        assert_eq!(c.permerror.action, Action::Reject);
        assert_eq!(c.temperror.weight, 2);
        assert!(toml::from_str::<File>("[spf]\nfial = { action = \"reject\" }\n").is_err());
        let fail = CheckSetting {
            action: Action::Reject,
            weight: 3,
        };
        assert_eq!(c.setting(SpfOutcome::Fail, fail), Some(fail));
        assert_eq!(c.setting(SpfOutcome::Pass, fail), None);
        let c = SpfConfig {
            timeout: Duration::ZERO,
            ..SpfConfig::default()
        };
        assert_eq!(c.validate().expect_err("refused").key, "spf.timeout");
        let c = SpfConfig {
            softfail: CheckSetting {
                action: Action::Score,
                weight: 1001,
            },
            ..SpfConfig::default()
        };
        assert_eq!(
            c.validate().expect_err("refused").key,
            "spf.softfail.weight"
        );
    }
}

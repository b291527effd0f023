//! `[reputation]`: the lists, each a `[[reputation.lists]]` table, and the checks serde cannot
//! make.

use std::{fmt, path::PathBuf};

use serde::Deserialize;

/// Default `false_positive_rate` of a list's bloom filter.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 0.001;

/// `false_positive_rate` must be below this (a filter that says "maybe" half the time is useless).
const MAX_FALSE_POSITIVE_RATE: f64 = 0.5;

/// Longest list name: it is the check detail in logs, metrics and replies.
const MAX_NAME_LEN: usize = 64;

/// `[reputation]`: local reputation lists.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// The lists, each a `[[reputation.lists]]` table. Default: none.
    pub lists: Vec<ListConfig>,
}

/// One `[[reputation.lists]]` entry: a file of entries of one kind.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// The list's name, reported as the detail of the check that fired: 1 to 64 ASCII letters,
    /// digits, `-`, `_` or `.`, unique (case-insensitively) among the lists. Required.
    pub name: String,
    /// What the entries are: `sender_domain`, `sender_address`, `helo` or `ip`. Required.
    pub kind: ListKind,
    /// The list file (absolute path): one entry per line, `#` comments, blank lines. Required.
    pub path: PathBuf,
    /// Share of non-members the bloom filter lets through to the exact store, which rules them
    /// out; lower costs more memory (14.4 bits per entry at 0.001, 9.6 at 0.01). Range
    /// `0 < rate < 0.5`. Default: 0.001.
    #[serde(default = "default_false_positive_rate")]
    pub false_positive_rate: f64,
}

/// serde default of [`ListConfig::false_positive_rate`].
fn default_false_positive_rate() -> f64 {
    DEFAULT_FALSE_POSITIVE_RATE
}

/// What a list holds and which lookup consults it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// Domains, matched against the sender's domain and its parents ([`Reputation::check_sender`]).
    SenderDomain,
    /// Whole addresses, matched against the sender ([`Reputation::check_sender`]).
    SenderAddress,
    /// HELO/EHLO names or address literals, matched exactly ([`Reputation::check_helo`]).
    Helo,
    /// IP addresses and CIDR prefixes, matched against the client ([`Reputation::check_ip`]).
    Ip,
}

impl ListKind {
    /// The configuration spelling (`sender_domain`, ...), for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::SenderDomain => "sender_domain",
            Self::SenderAddress => "sender_address",
            Self::Helo => "helo",
            Self::Ip => "ip",
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ReputationConfig {
    /// Checks what serde cannot. Returns the key (`reputation.lists`) and why a list is wrong,
    /// naming it by position and name.
    pub fn validate(&self) -> Result<(), crate::invalid::Invalid> {
        let bad = |message: String| Err(crate::invalid::Invalid::new("reputation.lists", message));
        for (index, list) in self.lists.iter().enumerate() {
            let name = &list.name;
            if name.is_empty() {
                return bad(format!("lists[{index}]: name is empty"));
            }
            if name.len() > MAX_NAME_LEN
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return bad(format!(
                    "lists[{index}]: name {name:?} must be 1 to {MAX_NAME_LEN} ASCII letters, \
                     digits, '-', '_' or '.'"
                ));
            }
            if self.lists[..index]
                .iter()
                .any(|other| other.name.eq_ignore_ascii_case(name))
            {
                return bad(format!(
                    "lists[{index}]: name {name:?} is used by another list"
                ));
            }
            let rate = list.false_positive_rate;
            // Written so that NaN fails too.
            if !(rate > 0.0 && rate < MAX_FALSE_POSITIVE_RATE) {
                return bad(format!(
                    "list {name:?}: false_positive_rate {rate} is out of range \
                     (0 < rate < {MAX_FALSE_POSITIVE_RATE})"
                ));
            }
            if !list.path.is_absolute() {
                return bad(format!(
                    "list {name:?}: path {:?} must be absolute",
                    list.path
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::reputation::{Reputation, ReputationError};

    #[test]
    fn section_parses_with_documented_defaults_and_refuses_unknown_keys() {
        let cfg: ReputationConfig = toml::from_str("").expect("empty section");
        assert_eq!(cfg, ReputationConfig::default());
        assert!(cfg.lists.is_empty());
        let cfg: ReputationConfig = toml::from_str(
            "[[lists]]\nname = \"disposable\"\nkind = \"sender_domain\"\n\
             path = \"/etc/smtp-gateway/lists/disposable.txt\"\n\
             [[lists]]\nname = \"drop\"\nkind = \"ip\"\npath = \"/var/lib/drop.txt\"\n\
             false_positive_rate = 0.01\n",
        )
        .expect("two lists");
        assert_eq!(
            cfg.lists[0],
            ListConfig {
                name: "disposable".into(),
                kind: ListKind::SenderDomain,
                path: "/etc/smtp-gateway/lists/disposable.txt".into(),
                false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE,
            }
        );
        assert_eq!(cfg.lists[1].kind, ListKind::Ip);
        assert_eq!(cfg.lists[1].false_positive_rate, 0.01);
        assert_eq!(cfg.validate(), Ok(()));
        for kind in ["sender_address", "helo"] {
            let text = format!("[[lists]]\nname = \"x\"\nkind = \"{kind}\"\npath = \"/x\"\n");
            let cfg: ReputationConfig = toml::from_str(&text).expect(kind);
            assert_eq!(cfg.lists[0].kind.name(), kind);
        }
        for (text, part) in [
            ("list = []\n", "list"),
            (
                "[[lists]]\nname = \"x\"\nkind = \"ip\"\npath = \"/x\"\nfp_rate = 0.1\n",
                "fp_rate",
            ),
            (
                "[[lists]]\nname = \"x\"\nkind = \"domain\"\npath = \"/x\"\n",
                "domain",
            ),
            ("[[lists]]\nkind = \"ip\"\npath = \"/x\"\n", "name"),
            ("[[lists]]\nname = \"x\"\nkind = \"ip\"\n", "path"),
        ] {
            let err = toml::from_str::<ReputationConfig>(text).expect_err(text);
            assert!(err.to_string().contains(part), "{text}: {err}");
        }
    }

    #[test]
    fn validate_names_the_key_and_the_bad_value() {
        let good = |name: &str| ListConfig {
            name: name.to_string(),
            kind: ListKind::Ip,
            path: "/etc/smtp-gateway/lists/x.txt".into(),
            false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE,
        };
        let ok = ReputationConfig {
            lists: vec![good("a"), good("Spam_list-2.v4"), good(&"n".repeat(64))],
        };
        assert_eq!(ok.validate(), Ok(()));
        let cases: Vec<(Vec<ListConfig>, &str)> = vec![
            (vec![good("")], "lists[0]: name is empty"),
            (
                vec![good("a"), good("spam list")],
                "lists[1]: name \"spam list\"",
            ),
            (vec![good("bad\r\nname")], "must be 1 to 64"),
            (vec![good(&"n".repeat(65))], "must be 1 to 64"),
            (vec![good("spam"), good("SPAM")], "used by another list"),
            (
                vec![ListConfig {
                    false_positive_rate: 0.0,
                    ..good("a")
                }],
                "false_positive_rate 0 is out of range",
            ),
            (
                vec![ListConfig {
                    false_positive_rate: 0.5,
                    ..good("a")
                }],
                "out of range (0 < rate < 0.5)",
            ),
            (
                vec![ListConfig {
                    false_positive_rate: -0.1,
                    ..good("a")
                }],
                "out of range",
            ),
            (
                vec![ListConfig {
                    false_positive_rate: f64::NAN,
                    ..good("a")
                }],
                "NaN is out of range",
            ),
            (
                vec![ListConfig {
                    path: "lists/x.txt".into(),
                    ..good("a")
                }],
                "must be absolute",
            ),
            (
                vec![ListConfig {
                    path: PathBuf::new(),
                    ..good("a")
                }],
                "must be absolute",
            ),
        ];
        for (lists, part) in cases {
            let cfg = ReputationConfig { lists };
            let e = cfg.validate().expect_err(part);
            let (key, message) = (e.key, e.reason);
            assert_eq!(key, "reputation.lists");
            assert!(message.contains(part), "{message} says {part}");
            // `load` validates too: never a panic in the bloom filter's constructor.
            let err = Reputation::load(&cfg).expect_err(part);
            assert!(matches!(err, ReputationError::Config { .. }), "{err}");
            assert!(err.to_string().starts_with("reputation.lists: "), "{err}");
        }
    }
}

//! Every check the SMTP proxy runs, declared once: its [`Check`] variant, its name (the
//! `[checks]` key, and the event, log and metric label), its `[checks]` field with the default
//! action and weight, the stage of the session it runs at and the reply it gives. The table at the
//! bottom of this file is the only place a check is listed; [`Check`], [`Check::ALL`],
//! [`Check::name`], [`ChecksConfig`], its defaults and [`ChecksConfig::get`] are generated from it,
//! and so is the table in the documentation of [`Check`] (stage and reply of every check).
//!
//! What the actions mean everywhere: `ignore` logs and counts; `score` adds the weight to the
//! session score (`[score]`: at `tarpit` every reply is delayed, at `tempfail` and `reject`
//! MAIL FROM / RCPT TO get `451 4.7.1` / `550 5.7.1`); `reject` gives the reply in the table and
//! lets the session go on; `drop` says `421 4.7.0 <text>, closing connection` (`521` for
//! `pregreet`) and closes.

use serde::Deserialize;

use crate::{invalid::Invalid, policy::helo::HeloFinding};

/// What a failed check does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Nothing (still logged and counted).
    Ignore,
    /// Add the check's weight to the session score.
    Score,
    /// Refuse the command or transaction with a permanent error (550/554), session goes on.
    Reject,
    /// Say `521`/`421` and close the connection.
    Drop,
}

/// One check's setting.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckSetting {
    /// What happens when it fires.
    pub action: Action,
    /// Score added when `action = "score"`.
    #[serde(default = "default_weight")]
    pub weight: i32,
}

fn default_weight() -> i32 {
    1
}

const fn setting(action: Action, weight: i32) -> CheckSetting {
    CheckSetting { action, weight }
}

/// Generates [`Check`], [`ChecksConfig`] and their tables from one row per check:
/// `doc; Variant, key = (DefaultAction, default weight), "stage", "reply";`.
macro_rules! checks {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident, $key:ident = ($action:ident, $weight:literal), $stage:literal, $reply:literal;
    )*) => {
        /// Every check the proxy runs; its name is its `[checks]` key. Typed, so a check's setting
        /// is an exhaustive match and a misspelt name cannot silently fall back to "ignore".
        ///
        /// | check | stage | reply (`reject`; `drop` closes with `421`) |
        /// |---|---|---|
        #[doc = concat!($("| `", stringify!($key), "` | ", $stage, " | ", $reply, " |\n"),*)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Check {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Check {
            /// Every check, in `[checks]` order.
            pub const ALL: [Check; [$(stringify!($variant)),*].len()] = [$(Check::$variant),*];

            /// The `[checks]` key (also the event, log and metric label).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Check::$variant => stringify!($key),)*
                }
            }
        }

        /// `[checks]`: the action of every check.
        #[derive(Debug, Clone, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct ChecksConfig {
            $($(#[doc = $doc])* pub $key: CheckSetting,)*
        }

        impl Default for ChecksConfig {
            fn default() -> Self {
                Self {
                    $($key: setting(Action::$action, $weight),)*
                }
            }
        }

        impl ChecksConfig {
            /// The setting of `check`.
            pub fn get(&self, check: Check) -> CheckSetting {
                match check {
                    $(Check::$variant => self.$key,)*
                }
            }
        }
    };
}

/// Largest check weight (and smallest, negated).
pub const MAX_WEIGHT: i32 = 1000;

impl ChecksConfig {
    /// Every weight within ±[`MAX_WEIGHT`] (a session score sums them).
    pub fn validate(&self) -> Result<(), Invalid> {
        for check in Check::ALL {
            let key = format!("checks.{}.weight", check.name());
            Invalid::in_range(&key, self.get(check).weight, -MAX_WEIGHT, MAX_WEIGHT)?;
        }
        Ok(())
    }
}

impl Check {
    /// The check called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The check a HELO finding fires.
    pub const fn from_helo(finding: HeloFinding) -> Check {
        use HeloFinding as F;
        match finding {
            F::Missing => Check::HeloMissing,
            F::Invalid => Check::HeloInvalid,
            F::UnbracketedLiteral => Check::HeloUnbracketedLiteral,
            F::LiteralMismatch => Check::HeloLiteralMismatch,
            F::OwnName => Check::HeloOwnName,
            F::NotFqdn => Check::HeloNotFqdn,
            F::Dynamic => Check::HeloDynamic,
            F::EmbeddedIp => Check::HeloEmbeddedIp,
        }
    }
}

checks! {
    /// Client talked before the banner (or during the greet pause).
    Pregreet, pregreet = (Drop, 1),
        "banner (talk before `220` or during `smtp.greet_pause`)",
        "`521 5.5.1 Protocol error: talked before the greeting`, then close (`reject` closes too)";
    /// Commands pipelined before the EHLO reply, or message text before `354`.
    Pipelining, pipelining = (Drop, 1),
        "HELO/EHLO (commands buffered before its reply); DATA (text before `354`)",
        "`421 4.7.0 Protocol error: pipelining before the EHLO reply` / `... message text before 354` (`reject` closes too)";
    /// HTTP, CONNECT, a TLS hello on a plaintext port, or binary garbage.
    NonSmtp, non_smtp = (Drop, 1),
        "every command line",
        "`421 4.7.0 Not an SMTP client` (`reject` closes too)";
    /// Bare LF or bare CR in a command line.
    BareNewline, bare_newline = (Drop, 1),
        "every command line; message text (when `smtp.bare_newlines = \"reject\"`)",
        "`500 5.5.2 Commands must end with CRLF`; in text `554 5.6.0 Message refused: bare LF or bare CR in message text ...` whatever the action";
    /// NUL byte in a command line.
    NulByte, nul_byte = (Drop, 1),
        "every command line",
        "`500 5.5.2 NUL byte in command`";
    /// Command line over `smtp.max_command_line`, or text line over `smtp.max_text_line`.
    LongLine, long_line = (Reject, 1),
        "every command line; message text",
        "`500 5.5.2 Line too long`; in text (`reject`/`drop` only) `554 5.6.0 Message refused: text line too long ...`";
    /// MAIL before HELO/EHLO.
    HeloMissing, helo_missing = (Reject, 1),
        "MAIL FROM",
        "`503 5.5.1 Send HELO/EHLO first`";
    /// HELO name is neither a domain nor an address literal.
    HeloInvalid, helo_invalid = (Reject, 1),
        "HELO/EHLO",
        "`550 5.7.1 HELO/EHLO <name> refused (helo_invalid)`";
    /// HELO is a bare IP address instead of `[address]`.
    HeloUnbracketedLiteral, helo_unbracketed_literal = (Score, 1),
        "HELO/EHLO",
        "`550 5.7.1 HELO/EHLO <name> refused (helo_unbracketed_literal)`";
    /// HELO address literal is not the client's address.
    HeloLiteralMismatch, helo_literal_mismatch = (Score, 2),
        "HELO/EHLO",
        "`550 5.7.1 HELO/EHLO <name> refused (helo_literal_mismatch)`";
    /// HELO claims to be this gateway.
    HeloOwnName, helo_own_name = (Reject, 1),
        "HELO/EHLO",
        "`550 5.7.1 HELO/EHLO <name> refused (helo_own_name)`";
    /// HELO is a single label.
    HeloNotFqdn, helo_not_fqdn = (Score, 1),
        "HELO/EHLO",
        "`550 5.7.1 HELO/EHLO <name> refused (helo_not_fqdn)`";
    /// HELO matches a dynamic-host pattern.
    HeloDynamic, helo_dynamic = (Score, 1),
        "HELO/EHLO",
        "`550 5.7.1 HELO/EHLO <name> refused (helo_dynamic)`";
    /// HELO embeds the client's IPv4 address.
    HeloEmbeddedIp, helo_embedded_ip = (Score, 1),
        "HELO/EHLO",
        "`550 5.7.1 HELO/EHLO <name> refused (helo_embedded_ip)`";
    /// DNSBL score at or over `dnsbl.threshold`.
    Dnsbl, dnsbl = (Score, 3),
        "first MAIL FROM (the lookup starts at connect)",
        "`554 5.7.1 Service unavailable; client host refused by policy`";
    /// More than `smtp.max_errors` errors.
    TooManyErrors, too_many_errors = (Drop, 1),
        "any error reply past `smtp.max_errors`",
        "none of its own (the error's reply was given); `drop`: `421 4.7.0 Too many errors`";
    /// More than `smtp.max_unknown_commands` unknown commands.
    TooManyUnknownCommands, too_many_unknown_commands = (Drop, 1),
        "unknown command past `smtp.max_unknown_commands`",
        "none of its own (`500 5.5.2 Command unrecognized` was given); `drop`: `421 4.7.0 Too many unknown commands`";
    /// RCPT refused by anti-relay.
    RelayAttempt, relay_attempt = (Score, 1),
        "RCPT TO",
        "`550 5.7.1 <rcpt>: <reason>` whatever the action; `drop` then closes";
    /// Client IP, HELO name or sender found in a `[reputation]` list.
    Reputation, reputation = (Score, 3),
        "HELO/EHLO (name); first MAIL FROM (client address); MAIL FROM (sender)",
        "HELO: `550 5.7.1 HELO/EHLO <name> refused (reputation)`; address: `554 5.7.1 Service unavailable; client host refused by policy`; sender: `550 5.7.1 <sender>: sender refused by policy`";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_has_a_config_key_and_round_trips_its_name() {
        // Each name must be a [checks] key: a TOML table setting it parses (unknown keys fail).
        for check in Check::ALL {
            let toml = format!("{} = {{ action = \"ignore\" }}", check.name());
            let cfg: ChecksConfig = toml::from_str(&toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
            assert_eq!(cfg.get(check).action, Action::Ignore, "{}", check.name());
            assert_eq!(Check::from_name(check.name()), Some(check));
        }
        assert_eq!(Check::from_name("pregret"), None);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = ChecksConfig::default();
        assert_eq!(Check::ALL.len(), 19);
        assert_eq!(c.pregreet, setting(Action::Drop, 1));
        assert_eq!(c.long_line, setting(Action::Reject, 1));
        assert_eq!(c.helo_literal_mismatch, setting(Action::Score, 2));
        assert_eq!(c.dnsbl, setting(Action::Score, 3));
        assert_eq!(c.reputation, setting(Action::Score, 3));
        assert_eq!(Check::ALL[0], Check::Pregreet);
        assert_eq!(Check::ALL[18], Check::Reputation);
    }
}

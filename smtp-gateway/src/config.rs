//! The TOML configuration: `parse -> validate -> Config`. Unknown keys are errors (a typo in a
//! security filter must fail loudly); every error names the key and, when it can be found, the line.
//! `config/gateway.toml` is the complete, commented reference of every option and its default.
//!
//! Each feature owns its section and its validation (`dataplane/config.rs`, `smtp/config.rs`,
//! `checks.rs`, `policy/`, `autoban.rs`, `metrics/config.rs`, `daemon/config.rs`,
//! `store/config.rs`); this file only
//! aggregates them: it loads and parses the file, runs every section's `validate()` and the rules
//! that span sections, and finds the line of a refused key. Every `validate()` returns
//! [`Invalid`] (`invalid.rs`, a leaf below every section, re-exported here).

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::invalid::Invalid;

use crate::{
    autoban::AutobanConfig,
    checks::ChecksConfig,
    crowdsec::config::CrowdsecConfig,
    daemon::config::DaemonConfig,
    dataplane::config::DataplaneConfig,
    metrics::config::MetricsConfig,
    policy::{
        dns::DnsConfig, dnsbl::DnsblConfig, fcrdns::FcrdnsConfig, greylist::GreylistConfig,
        helo::HeloConfig, relay::RelayConfig, reputation::ReputationConfig, spf::SpfConfig,
    },
    smtp::{
        auth_results::AuthResultsConfig,
        config::{BackendConfig, ListenerKind, MAX_PAUSE, ProxyConfig, ScoreConfig, SmtpConfig},
        profile::{self, Profiles, ProfilesConfig},
    },
    store::StoreConfig,
};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smtp-gateway/gateway.toml";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read (in the message, so not a `source`: the CLI prints the
        /// chain, and it would say it twice).
        error: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type (the message names key and line).
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from (usually the path).
        origin: String,
        /// The line and what is wrong on it.
        message: String,
    },
    /// A value of the right type but outside what the gateway accepts.
    #[error("{origin}{line}: {key}: {message}", line = line.map(|l| format!(": line {l}")).unwrap_or_default())]
    Invalid {
        /// Where the text came from (usually the path).
        origin: String,
        /// The dotted key refused.
        key: String,
        /// The line defining it, when it can be found.
        line: Option<usize>,
        /// Why it was refused.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The XDP data plane: interfaces, protected ports, blocklists, rate limit.
    pub dataplane: DataplaneConfig,
    /// The SMTP proxy: listeners, limits, timeouts, TLS.
    pub smtp: SmtpConfig,
    /// The MTA behind the gateway.
    pub backend: BackendConfig,
    /// What each check does when it fires.
    pub checks: ChecksConfig,
    /// Score thresholds.
    pub score: ScoreConfig,
    /// Anti-relay.
    pub relay: RelayConfig,
    /// HELO/EHLO heuristics.
    pub helo: HeloConfig,
    /// The resolver shared by the DNS checks (DNSBL, FCrDNS, SPF).
    pub dns: DnsConfig,
    /// DNSBL/DNSWL scoring.
    pub dnsbl: DnsblConfig,
    /// Verified client names (FCrDNS).
    pub fcrdns: FcrdnsConfig,
    /// SPF at MAIL FROM.
    pub spf: SpfConfig,
    /// Greylisting at RCPT.
    pub greylist: GreylistConfig,
    /// The `Authentication-Results` header added to relayed mail.
    pub auth_results: AuthResultsConfig,
    /// Large reputation lists (bloom filters with exact confirmation).
    pub reputation: ReputationConfig,
    /// Session verdicts that ban sources in the kernel.
    pub autoban: AutobanConfig,
    /// CrowdSec LAPI decisions into the kernel blocklist.
    pub crowdsec: CrowdsecConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The daemon process: control socket, reload on change, privileges after setup.
    pub daemon: DaemonConfig,
    /// Per-listener policy profiles (`[profiles.<name>]`), by name.
    pub profiles: ProfilesConfig,
    /// The state that outlives a restart (embedded file or Redis).
    pub store: StoreConfig,
}

/// Where control sockets live when `daemon.control_socket` is empty.
pub const CONTROL_SOCKET_DIR: &str = "/run/smtp-gateway";

/// The largest configuration file read, in bytes: the reference file is about 50 KB, and a
/// wrong path (`/dev/zero`, a log) must not be read into memory without end.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The text of the configuration file at `path`, at most [`MAX_CONFIG_BYTES`].
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let error = |error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    };
    let bytes = crate::bounded_file::read(path, MAX_CONFIG_BYTES).map_err(error)?;
    String::from_utf8(bytes).map_err(|_| {
        error(std::io::Error::other(
            "not UTF-8 text: not a configuration file",
        ))
    })
}

/// Refuses a file with no option and no section (comments only count as empty): loading it
/// would reset every option to its default. A reload refuses it (a file cut short, say, in its
/// leading comments), and so do `run` and `check-config` ([`Config::load_not_empty`]).
pub fn refuse_empty(path: &Path, text: &str) -> Result<(), ConfigError> {
    if toml::from_str::<toml::Table>(text).is_ok_and(|t| t.is_empty()) {
        return Err(ConfigError::Read {
            path: path.to_path_buf(),
            error: std::io::Error::other(
                "the file is empty (no option, no section); an empty configuration would reset \
                 every option to its default, so it is not applied",
            ),
        });
    }
    Ok(())
}

impl Config {
    /// The control socket path: `daemon.control_socket`, or the one derived from the pin dir.
    pub fn control_socket(&self) -> PathBuf {
        if !self.daemon.control_socket.as_os_str().is_empty() {
            return self.daemon.control_socket.clone();
        }
        let name = self
            .dataplane
            .pin_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "smtp-gateway".into());
        Path::new(CONTROL_SOCKET_DIR).join(format!("{name}.sock"))
    }

    /// The sections the proxy's sessions read, as they are in the file.
    pub fn proxy(&self) -> ProxyConfig {
        ProxyConfig {
            smtp: self.smtp.clone(),
            backend: self.backend.clone(),
            checks: self.checks.clone(),
            score: self.score,
            relay: self.relay.clone(),
            helo: self.helo.clone(),
            spf: self.spf.clone(),
            greylist: self.greylist.clone(),
            auth_results: self.auth_results.clone(),
            profiles: Profiles::resolve(
                &self.profiles,
                profile::Base {
                    checks: &self.checks,
                    greet_pause: self.smtp.greet_pause,
                    relay: &self.relay,
                },
            ),
        }
    }

    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// [`load`](Self::load) for `run` and `check-config`: a file with no option and no section
    /// is refused ([`refuse_empty`]) as a reload refuses it, rather than started on every
    /// default (the default pin directory, control socket and store).
    pub fn load_not_empty(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        refuse_empty(path, &text)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors (usually the path).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: describe_toml_error(&e, text),
        })?;
        config.validate().map_err(|invalid| ConfigError::Invalid {
            origin: origin.to_string(),
            line: locate_invalid(text, &invalid),
            key: invalid.key,
            message: invalid.reason,
        })?;
        config
            .validate_listener_profiles()
            .map_err(|(at, invalid)| ConfigError::Invalid {
                origin: origin.to_string(),
                line: at.locate(text).or_else(|| locate_invalid(text, &invalid)),
                key: invalid.key,
                message: invalid.reason,
            })?;
        Ok(config)
    }

    /// Checks a configuration put together from others (a reload runs the file's options with
    /// the running values of those that need a restart): the rules [`Config::parse`] applies,
    /// without a line to point at.
    pub fn validate_assembled(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |Invalid { key, reason, .. }| ConfigError::Invalid {
            origin: origin.to_string(),
            line: None,
            key,
            message: format!("{reason} (with the options that need a restart as they run now)"),
        };
        self.validate().map_err(invalid)?;
        self.validate_listener_profiles()
            .map_err(|(_, e)| invalid(e))
    }

    /// Checks values serde cannot: every section, then the rules that span sections.
    fn validate(&self) -> Result<(), Invalid> {
        self.dataplane.validate()?;
        self.smtp.validate()?;
        self.backend.validate()?;
        self.validate_proxy_across_sections()?;
        self.checks.validate()?;
        self.score.validate()?;
        self.relay.validate()?;
        self.helo.validate()?;
        self.dns.validate(&self.dnsbl.nameservers)?;
        self.dnsbl.validate_with(!self.dns.nameservers.is_empty())?;
        self.fcrdns.validate()?;
        self.spf.validate()?;
        self.greylist.validate()?;
        if self.greylist.enabled
            && !self.greylist.spf_bypass_domains.is_empty()
            && !self.spf.enabled
        {
            return Err(Invalid::new(
                "greylist.spf_bypass_domains",
                "needs spf.enabled = true (the bypass is an SPF pass for one of these domains)",
            ));
        }
        self.auth_results.validate()?;
        self.validate_dns_users()?;
        self.reputation.validate()?;
        self.autoban.validate()?;
        self.crowdsec.validate()?;
        self.metrics.validate()?;
        self.validate_metrics_listen()?;
        self.daemon.validate()?;
        self.store.validate()?;
        profile::validate(&self.profiles, &self.checks, &self.relay, MAX_PAUSE)?;
        Ok(())
    }

    /// Every listener names a profile that exists, and one that requires AUTH only on a port
    /// that can offer it: a `submission` or `smtps` listener, with `[smtp.tls]` (AUTH is offered
    /// inside TLS only, RFC 4954 section 4: no password in clear). The error comes with where to
    /// find its line.
    fn validate_listener_profiles(&self) -> Result<(), (ListenerAt, Invalid)> {
        let profiles = self.proxy().profiles;
        for listener in &self.smtp.listeners {
            let name = listener.profile_name();
            let at = ListenerAt::Profile(name.to_string());
            let Some(found) = profiles.get(Some(name)) else {
                let known = profiles.names().collect::<Vec<_>>().join(", ");
                let reason = format!(
                    "{}: unknown profile {name:?} (profiles: {known})",
                    listener.address
                );
                return Err((at, Invalid::new("smtp.listeners", reason)));
            };
            if found.require_auth && listener.kind == ListenerKind::Smtp {
                let reason = format!(
                    "{}: profile {name:?} requires AUTH, which a `smtp` listener never offers \
                     (kind = \"submission\" or \"smtps\")",
                    listener.address
                );
                return Err((at, Invalid::new("smtp.listeners", reason)));
            }
            if found.require_auth && self.smtp.tls.is_none() {
                let reason = format!(
                    "{}: profile {name:?} requires AUTH before MAIL, and AUTH is offered only \
                     inside TLS (no password in clear), but [smtp.tls] is not configured: no \
                     client could ever send mail there (configure [smtp.tls], or give the \
                     listener a profile without require_auth)",
                    listener.address
                );
                let at = ListenerAt::Address(listener.address);
                return Err((at, Invalid::new("smtp.listeners", reason)));
            }
        }
        Ok(())
    }

    /// `metrics.listen` (when `metrics.enabled`) is no SMTP listener's address: both cannot
    /// listen there (an unspecified address, `0.0.0.0` or `::`, takes the port on every one).
    fn validate_metrics_listen(&self) -> Result<(), Invalid> {
        let metrics = self.metrics.listen;
        if !self.metrics.enabled {
            return Ok(());
        }
        for listener in &self.smtp.listeners {
            let smtp = listener.address;
            let overlap = smtp.ip() == metrics.ip()
                || smtp.ip().is_unspecified()
                || metrics.ip().is_unspecified();
            if smtp.port() == metrics.port() && overlap {
                return Err(Invalid::new(
                    "metrics.listen",
                    format!(
                        "{metrics} takes the port of smtp.listeners address {smtp}: both cannot \
                         listen there"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[fcrdns]` and `[spf]` need name servers (`[dns]`, or the older `dnsbl.nameservers`).
    fn validate_dns_users(&self) -> Result<(), Invalid> {
        let servers = self.dns.effective_nameservers(&self.dnsbl.nameservers);
        for (on, section) in [(self.fcrdns.enabled, "fcrdns"), (self.spf.enabled, "spf")] {
            if on && servers.is_empty() {
                return Err(Invalid::new(
                    "dns.nameservers",
                    format!(
                        "at least one name server is required when {section}.enabled = true (the system resolver is never used)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[backend]` against `[smtp]`: no more pooled connections than sessions, and a backend
    /// whenever the proxy listens.
    fn validate_proxy_across_sections(&self) -> Result<(), Invalid> {
        let (s, b) = (&self.smtp, &self.backend);
        if b.pool_size > s.max_connections {
            return Err(Invalid::new(
                "backend.pool_size",
                format!(
                    "{} is above smtp.max_connections ({})",
                    b.pool_size, s.max_connections
                ),
            ));
        }
        if !s.listeners.is_empty() && b.servers.is_empty() {
            return Err(Invalid::new(
                "backend.servers",
                "at least one backend is required when smtp.listeners is set",
            )
            .at_line_of("smtp.listeners"));
        }
        Ok(())
    }
}

/// One line: "line N: what is wrong: `the offending line`" (quoting the line names the key even
/// when toml's message does not, e.g. for a value of the wrong type).
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text
        .as_bytes()
        .iter()
        .take(start)
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let line_text = text.lines().nth(line_no - 1).unwrap_or("").trim();
    if line_text.is_empty() {
        format!("line {line_no}: {message}")
    } else {
        format!("line {line_no}: {message}: `{line_text}`")
    }
}

/// Which listener a refusal of [`Config::validate_listener_profiles`] is about, to find its line.
enum ListenerAt {
    /// The one naming this profile (`profile = "name"`).
    Profile(String),
    /// The one at this address (`address = "..."`).
    Address(std::net::SocketAddr),
}

impl ListenerAt {
    /// The line (1-based) of the listener in `text`, when it can be found.
    fn locate(&self, text: &str) -> Option<usize> {
        match self {
            ListenerAt::Profile(name) => locate_profile_use(text, name),
            ListenerAt::Address(address) => {
                let quoted = format!("\"{address}\"");
                text.lines()
                    .position(|line| line.contains(&quoted))
                    .map(|index| index + 1)
            }
        }
    }
}

/// Finds the line (1-based) where a listener names profile `name` (`profile = "name"`).
fn locate_profile_use(text: &str, name: &str) -> Option<usize> {
    let quoted = format!("\"{name}\"");
    text.lines()
        .position(|line| {
            line.split("profile")
                .skip(1)
                .any(|rest| rest.trim_start().starts_with('=') && rest.contains(&quoted))
        })
        .map(|index| index + 1)
}

/// Every key `text` defines, with its line (1-based): `a.b.c` for `c = ...` inside `[a.b]` (or
/// `b.c = ...` inside `[a]`), and each table header's own name.
fn defined_keys(text: &str) -> impl Iterator<Item = (usize, String)> + '_ {
    let mut table = String::new();
    text.lines().enumerate().filter_map(move |(index, raw)| {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = header.trim().trim_start_matches('[').trim().to_string();
            return Some((index + 1, table.clone()));
        }
        let (name, _) = line.split_once('=')?;
        let name: String = name.split('.').map(str::trim).collect::<Vec<_>>().join(".");
        Some((
            index + 1,
            if table.is_empty() {
                name
            } else {
                format!("{table}.{name}")
            },
        ))
    })
}

/// Finds the line (1-based) defining dotted `key` such as `dataplane.rate_limit.burst`: the line
/// `burst = ...` inside `[dataplane.rate_limit]`, or a dotted key inside an ancestor table.
fn locate_key(text: &str, key: &str) -> Option<usize> {
    defined_keys(text).find_map(|(line, full)| (full == key).then_some(line))
}

/// The line (1-based) of the closest ancestor of `key` that `text` defines: the inline table
/// holding it (`pregreet = { weight = 2000 }` for `checks.pregreet.weight`), else its section.
fn locate_ancestor(text: &str, key: &str) -> Option<usize> {
    defined_keys(text)
        .filter(|(_, full)| {
            key.strip_prefix(full.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
        })
        .fold(
            None,
            |best: Option<(usize, usize)>, (line, full)| match best {
                Some((_, len)) if len >= full.len() => best,
                _ => Some((line, full.len())),
            },
        )
        .map(|(line, _)| line)
}

/// The line of a refusal: its key's own, else that of the key requiring it
/// ([`Invalid::line_of`]), else the closest ancestor of either (an inline table, a section).
fn locate_invalid(text: &str, invalid: &Invalid) -> Option<usize> {
    let keys = || std::iter::once(invalid.key.as_str()).chain(invalid.line_of.as_deref());
    keys()
        .find_map(|k| locate_key(text, k))
        .or_else(|| keys().find_map(|k| locate_ancestor(text, k)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::config::AttachMode;
    use crate::smtp::config::ListenerConfig;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    #[test]
    fn a_file_past_the_size_bound_is_refused_unread() {
        let path = std::env::temp_dir().join(format!("sgw-cfg-big-{}.toml", std::process::id()));
        let mut text = String::from("[smtp]\nhostname = \"mx.example.net\"\n");
        text.push_str(&"#".repeat(usize::try_from(MAX_CONFIG_BYTES).expect("fits")));
        std::fs::write(&path, &text).expect("write");
        let refused = Config::load(&path).expect_err("refused");
        assert!(
            refused.to_string().contains("larger than 16777216 bytes"),
            "{refused}"
        );
        // At the bound, the file is read.
        text.truncate(usize::try_from(MAX_CONFIG_BYTES).expect("fits"));
        std::fs::write(&path, &text).expect("write");
        let loaded = Config::load(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(loaded.expect("loaded").smtp.hostname, "mx.example.net");
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").expect("empty config is valid");
        assert_eq!(c.dataplane.protected_ports, vec![25, 465, 587]);
        assert_eq!(c.dataplane.attach_mode, AttachMode::Driver);
        assert_eq!(c.dataplane.rate_limit.ipv6_prefix, 64);
    }

    #[test]
    fn reference_config_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
        let c = Config::load(&path).expect("config/gateway.toml must be valid");
        // The reference states every default: parsing it must give exactly the defaults, apart
        // from the examples of what has no default (listeners, TLS, backends). Interfaces are not
        // among them: the shipped file attaches to nothing until the operator names one.
        let mut expected = Config::default();
        expected.smtp.listeners = c.smtp.listeners.clone();
        expected.smtp.tls = c.smtp.tls.clone();
        expected.backend.servers = c.backend.servers.clone();
        assert_eq!(c, expected);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name_and_line() {
        let err = parse("[dataplane]\nprotected_ports = [25]\nratelimit = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ratelimit"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn greylisting_big_senders_need_spf() {
        let text = "[greylist]\nenabled = true\nspf_bypass_domains = [\"example.com\"]\n";
        let err = parse(text).unwrap_err();
        assert!(
            err.to_string().contains("greylist.spf_bypass_domains"),
            "{err}"
        );
        let text =
            format!("{text}[dns]\nnameservers = [\"127.0.0.1:53\"]\n[spf]\nenabled = true\n");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn unknown_section_is_rejected() {
        let err = parse("[dataplan]\n").unwrap_err();
        assert!(err.to_string().contains("dataplan"), "{err}");
    }

    #[test]
    fn bad_prefix_is_rejected() {
        let err = parse("[dataplane]\nallowlist = [\"198.18.0.0/33\"]\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse("[dataplane]\nallowlist = [\"198.18.0.1/24\"]\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("dataplane.allowlist") && msg.contains("198.18.0.0/24"),
            "{msg}"
        );
        assert!(msg.contains("test.toml: line 2:"), "{msg}");
    }

    #[test]
    fn trace_limits_are_bounded() {
        for (text, key) in [
            (
                "[dataplane.capacity]\ntrace_sources = 0\n",
                "capacity.trace_sources",
            ),
            (
                "[dataplane.capacity]\ntrace_sources = 1025\n",
                "capacity.trace_sources",
            ),
            (
                "[dataplane]\ntrace_max_duration = \"0s\"\n",
                "trace_max_duration",
            ),
            (
                "[dataplane]\ntrace_max_duration = \"25h\"\n",
                "trace_max_duration",
            ),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let c = parse("[dataplane]\ntrace_max_duration = \"1h\"\n[dataplane.capacity]\ntrace_sources = 1024\n")
            .expect("in bounds");
        assert_eq!(c.dataplane.capacity.trace_sources, 1024);
    }

    #[test]
    fn bad_ports_are_rejected() {
        let err = parse("[dataplane]\nprotected_ports = [25, 70000]\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse("[dataplane]\nprotected_ports = [0]\n").unwrap_err();
        assert!(
            err.to_string().contains("dataplane.protected_ports"),
            "{err}"
        );
        let err = parse("[dataplane]\nprotected_ports = []\n").unwrap_err();
        assert!(err.to_string().contains("at least one port"), "{err}");
    }

    #[test]
    fn proxy_sections_are_validated() {
        let err = parse("[smtp]\nlisteners = [{ address = \"127.0.0.1:2525\" }]\n").unwrap_err();
        assert!(err.to_string().contains("backend.servers"), "{err}");
        let err = parse(
            "[smtp]\nlisteners = [{ address = \"127.0.0.1:465\", kind = \"smtps\" }]\n[backend]\nservers = [{ address = \"127.0.0.1:10025\" }]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("[smtp.tls]"), "{err}");
        let err = parse("[smtp]\nmax_command_line = 100\n").unwrap_err();
        assert!(
            err.to_string().contains("smtp.max_command_line")
                && err.to_string().contains(": line 2:"),
            "{err}"
        );
        let err = parse("[checks]\npregreet = { action = \"explode\" }\n").unwrap_err();
        assert!(
            err.to_string().contains("explode") && err.to_string().contains("line 2"),
            "{err}"
        );
        let err = parse("[score]\ntempfail = 9\nreject = 5\n").unwrap_err();
        assert!(err.to_string().contains("score.tempfail"), "{err}");
        let err = parse("[relay]\naccepted_domains = [\"exa mple.org\"]\n").unwrap_err();
        assert!(err.to_string().contains("relay.accepted_domains"), "{err}");
        let err = parse("[dnsbl]\nenabled = true\n").unwrap_err();
        assert!(err.to_string().contains("dnsbl.nameservers"), "{err}");
        let err = parse(
            "[backend]\nservers = [{ address = \"127.0.0.1:25\", identity = \"xclient2\" }]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("xclient2"), "{err}");
    }

    /// Every numeric leaf of `value` (integers, floats, durations written as strings, array
    /// elements), as a dotted path with its value multiplied by 10⁹ (zero becomes 10⁹).
    fn enlarged_leaves(value: &toml::Value, path: &str, out: &mut Vec<(String, toml::Value)>) {
        const FACTOR: i64 = 1_000_000_000;
        match value {
            toml::Value::Table(table) => {
                for (key, v) in table {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    enlarged_leaves(v, &path, out);
                }
            }
            toml::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    enlarged_leaves(v, &format!("{path}[{i}]"), out);
                }
            }
            toml::Value::Integer(n) => {
                let big = if *n == 0 {
                    FACTOR
                } else {
                    n.saturating_mul(FACTOR)
                };
                out.push((path.to_string(), toml::Value::Integer(big)));
            }
            toml::Value::Float(f) => {
                let big = if *f == 0.0 { 1e9 } else { f * 1e9 };
                out.push((path.to_string(), toml::Value::Float(big)));
            }
            toml::Value::String(text) => {
                if let Ok(d) = humantime::parse_duration(text) {
                    let secs = d.as_secs().max(1).saturating_mul(FACTOR as u64);
                    out.push((path.to_string(), toml::Value::String(format!("{secs}s"))));
                }
            }
            _ => {}
        }
    }

    /// Replaces the leaf at dotted `path` (as [`enlarged_leaves`] writes it) in `value`.
    fn replace_leaf(value: &mut toml::Value, path: &str, new: toml::Value) {
        let mut at = value;
        for part in path.split('.') {
            let (key, index) = match part.split_once('[') {
                Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            at = at.get_mut(key).expect("path from enlarged_leaves");
            if let Some(i) = index {
                at = at.get_mut(i).expect("index from enlarged_leaves");
            }
        }
        *at = new;
    }

    #[test]
    fn every_numeric_option_is_bounded_instead_of_panicking_later() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
        let text = std::fs::read_to_string(&path).expect("reference config");
        let reference: toml::Value = toml::from_str(&text).expect("reference parses");
        let mut leaves = Vec::new();
        enlarged_leaves(&reference, "", &mut leaves);
        assert!(
            leaves.len() > 50,
            "only {} numeric options found",
            leaves.len()
        );
        let mut accepted = Vec::new();
        for (key, big) in leaves {
            let mut config = reference.clone();
            replace_leaf(&mut config, &key, big.clone());
            let text = toml::to_string(&config).expect("serialise");
            let parsed = std::panic::catch_unwind(|| Config::parse(&text, "big.toml"));
            match parsed {
                Err(_) => accepted.push(format!("{key} = {big}: panicked")),
                Ok(Ok(_)) => accepted.push(format!("{key} = {big}: accepted")),
                Ok(Err(e)) => {
                    // The refusal names the option (its key, or the offending line quoted).
                    let leaf = key.rsplit('.').next().unwrap_or(&key);
                    let leaf = leaf.split('[').next().unwrap_or(leaf);
                    if !e.to_string().contains(leaf) {
                        accepted.push(format!("{key} = {big}: refused without naming it: {e}"));
                    }
                }
            }
        }
        assert!(
            accepted.is_empty(),
            "numeric options without an upper bound:\n{}",
            accepted.join("\n")
        );
    }

    #[test]
    fn listeners_without_a_profile_run_with_their_kinds() {
        let c = parse(
            "[backend]\nservers = [{ address = \"127.0.0.1:10025\" }]\n[smtp]\n\
             listeners = [{ address = \"127.0.0.1:25\" },\n\
             { address = \"127.0.0.1:587\", kind = \"submission\" },\n\
             { address = \"127.0.0.1:465\", kind = \"smtps\" },\n\
             { address = \"127.0.0.1:2587\", kind = \"submission\", profile = \"mx\" }]\n\
             [smtp.tls]\ncertificate = \"/c.pem\"\nprivate_key = \"/k.pem\"\n",
        )
        .expect("config");
        let names: Vec<&str> = c
            .smtp
            .listeners
            .iter()
            .map(ListenerConfig::profile_name)
            .collect();
        assert_eq!(names, ["mx", "submission", "submission", "mx"]);
    }

    #[test]
    fn listener_profiles_are_checked_with_their_line() {
        let base = "[backend]\nservers = [{ address = \"127.0.0.1:10025\" }]\n[smtp]\n";
        let tls = "[smtp.tls]\ncertificate = \"/c.pem\"\nprivate_key = \"/k.pem\"\n";
        let c = parse(&format!(
            "{base}listeners = [{{ address = \"127.0.0.1:587\", kind = \"submission\", profile = \"submission\" }}]\n{tls}"
        ))
        .expect("built-in profile");
        let profiles = c.proxy().profiles;
        assert!(
            profiles
                .get(Some("submission"))
                .is_some_and(|p| p.require_auth)
        );
        let err = parse(&format!(
            "{base}listeners = [\n  {{ address = \"127.0.0.1:25\", profile = \"strict\" }},\n]\n"
        ))
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("test.toml: line 5:") && msg.contains("\"strict\""),
            "{msg}"
        );
        // A profile of the file's own is found; one requiring AUTH on a port without AUTH is not.
        parse(&format!(
            "{base}listeners = [{{ address = \"127.0.0.1:25\", profile = \"strict\" }}]\n[profiles.strict]\ngreet_pause = \"2s\"\n"
        ))
        .expect("own profile");
        let err = parse(&format!(
            "{base}listeners = [{{ address = \"127.0.0.1:25\", profile = \"submission\" }}]\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("requires AUTH"), "{err}");
        // AUTH is offered inside TLS only: without [smtp.tls] the listener could never take mail.
        let err = parse(&format!(
            "{base}listeners = [{{ address = \"127.0.0.1:25\" }},\n  {{ address = \"127.0.0.1:587\", kind = \"submission\" }}]\n"
        ))
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("test.toml: line 5:")
                && msg.contains("127.0.0.1:587")
                && msg.contains("[smtp.tls]"),
            "{msg}"
        );
        let err = parse("[profiles.p]\nrequire_auth = \"yes\"\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse("[profiles.p.relay]\nrelay_networks = [\"0.0.0.0/0\"]\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("profiles.p.relay.relay_networks") && msg.contains("test.toml: line 2:"),
            "{msg}"
        );
    }

    #[test]
    fn bad_enum_and_ranges_are_rejected() {
        let err = parse("[dataplane]\nattach_mode = \"native\"\n").unwrap_err();
        assert!(err.to_string().contains("native"), "{err}");
        let err = parse("[dataplane.rate_limit]\nburst = 0\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("dataplane.rate_limit.burst") && msg.contains(": line 2:"),
            "{msg}"
        );
        let err = parse("[dataplane.rate_limit]\nsyn_per_second = -1.0\n").unwrap_err();
        assert!(err.to_string().contains("syn_per_second"), "{err}");
        let err = parse("[dataplane.rate_limit]\nipv6_prefix = 129\n").unwrap_err();
        assert!(err.to_string().contains("ipv6_prefix"), "{err}");
        let err =
            parse("[dataplane]\ninterfaces = [\"a-very-long-interface-name\"]\n").unwrap_err();
        assert!(err.to_string().contains("interface name"), "{err}");
        let err = parse("[dataplane]\nsweep_interval = \"10 parsecs\"\n").unwrap_err();
        assert!(err.to_string().contains("sweep_interval"), "{err}");
        let err = parse("[dataplane.capacity]\nblock_v4 = 0\n").unwrap_err();
        assert!(err.to_string().contains("capacity.block_v4"), "{err}");
        let err = parse("[dataplane]\npin_dir = \"relative\"\n").unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
    }
}

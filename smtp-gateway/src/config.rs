//! The TOML configuration: `parse -> validate -> Config`. Unknown keys are errors (a typo in a
//! security filter must fail loudly); every error names the key and, when it can be found, the line.
//! `config/gateway.toml` is the complete, commented reference of every option and its default.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::policy::{dnsbl::DnsblConfig, helo::HeloConfig, relay::RelayConfig};
pub use crate::smtp::config::{
    Action, BackendConfig, BackendServer, BareNewlinePolicy, ChecksConfig, ConnectAt, Identity,
    ListenerConfig, ListenerKind, ScoreConfig, SmtpConfig, TlsConfig,
};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smtp-gateway/gateway.toml";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type (the message names key and line).
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value of the right type but outside what the gateway accepts.
    #[error("{origin}{line}: {key}: {message}", line = line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        origin: String,
        key: String,
        line: Option<usize>,
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
    /// DNSBL/DNSWL scoring.
    pub dnsbl: DnsblConfig,
    /// Large reputation lists (bloom filters with exact confirmation).
    pub reputation: crate::policy::reputation::ReputationConfig,
    /// Session verdicts that ban sources in the kernel.
    pub autoban: crate::autoban::AutobanConfig,
    /// The Prometheus endpoint.
    pub metrics: crate::metrics::MetricsConfig,
    /// The daemon process: control socket, reload on change, privileges after setup.
    pub daemon: DaemonConfig,
}

/// `[daemon]`: the process itself.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The control socket (root only, mode 0600) the CLI talks to. Empty: derived from
    /// `dataplane.pin_dir` (`/run/smtp-gateway/<pin dir name>.sock`), so a daemon and the CLI
    /// sharing a configuration, and so a data plane, find each other.
    pub control_socket: PathBuf,
    /// How long the CLI waits for the daemon's answer (a reload reading large lists may take a
    /// while).
    #[serde(with = "humantime_serde")]
    pub control_timeout: Duration,
    /// Reload when the configuration file changes, as on SIGHUP.
    pub watch_config: bool,
    /// Quiet time after the last change to the file before the reload (editors write in steps).
    #[serde(with = "humantime_serde")]
    pub watch_debounce: Duration,
    /// Give up privileges once the listeners are bound and the XDP program is attached.
    pub drop_privileges: bool,
    /// User to become after setup. Empty: stay uid 0, but without capabilities.
    pub user: String,
    /// Group to become after setup. Empty: the user's primary group.
    pub group: String,
    /// Capabilities kept after setup (`CAP_BPF`, ...). None are needed on Linux 6.5 and later:
    /// the daemon works on the maps through descriptors it opened during setup.
    pub keep_capabilities: Vec<String>,
}

/// Where control sockets live when `daemon.control_socket` is empty.
pub const CONTROL_SOCKET_DIR: &str = "/run/smtp-gateway";

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            control_socket: PathBuf::new(),
            control_timeout: Duration::from_secs(30),
            watch_config: true,
            watch_debounce: Duration::from_millis(500),
            drop_privileges: true,
            user: String::new(),
            group: String::new(),
            keep_capabilities: Vec::new(),
        }
    }
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
}

/// `[dataplane]`: the kernel half of the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Interfaces the XDP program is attached to. Empty: the kernel filter is not attached (the
    /// maps are still created so the CLI works).
    pub interfaces: Vec<String>,
    /// `driver` (native XDP, the default) or `skb` (generic XDP, for drivers without native
    /// support). An unsupported mode is an error, never a silent fallback.
    pub attach_mode: AttachMode,
    /// TCP destination ports the filter protects; all other traffic passes uninspected.
    pub protected_ports: Vec<u16>,
    /// Directory in bpffs holding the pinned maps and links (a `v<layout>` directory below it).
    pub pin_dir: PathBuf,
    /// IPv4 first fragments towards a protected port: `drop` or `inspect`.
    pub fragments: PacketPolicy,
    /// IPv6 packets towards a protected port whose TCP header follows extension headers:
    /// `drop` or `inspect`.
    pub ipv6_extension_headers: PacketPolicy,
    /// Truncated or invalid IP headers: `drop` or `pass` (to the kernel stack).
    pub malformed: MalformedPolicy,
    /// How often the daemon removes expired blocklist entries from the kernel maps.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Sources that are never dropped nor rate-limited (addresses or prefixes), applied at start.
    pub allowlist: Vec<IpNet>,
    /// Per-source SYN rate limit.
    pub rate_limit: RateLimitConfig,
    /// Map capacities (taking effect when the maps are created; changing them needs `detach`).
    pub capacity: CapacityConfig,
    /// Mount a bpffs at /sys/fs/bpf even in a mount namespace that is not the host's (where it
    /// would be private to the process: its pins die with it). Off: refused with an explanation.
    pub allow_private_bpffs: bool,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            attach_mode: AttachMode::Driver,
            protected_ports: vec![25, 465, 587],
            pin_dir: PathBuf::from("/sys/fs/bpf/smtp-gateway"),
            fragments: PacketPolicy::Drop,
            ipv6_extension_headers: PacketPolicy::Drop,
            malformed: MalformedPolicy::Drop,
            sweep_interval: Duration::from_secs(10),
            allowlist: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            capacity: CapacityConfig::default(),
            allow_private_bpffs: false,
        }
    }
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native XDP in the driver.
    Driver,
    /// Generic XDP after the skb is built (slower, works everywhere).
    Skb,
}

/// What to do with packets the program cannot fully trust.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PacketPolicy {
    /// Drop and count.
    Drop,
    /// Apply the normal allowlist/blocklist/rate-limit checks.
    Inspect,
}

/// What to do with malformed IP packets.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MalformedPolicy {
    /// Drop and count.
    Drop,
    /// Count and pass to the kernel stack.
    Pass,
}

/// `[dataplane.rate_limit]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Whether new connections (SYN) are rate-limited per source.
    pub enabled: bool,
    /// Sustained SYNs per second allowed per source (fractions allowed, e.g. 0.5).
    pub syn_per_second: f64,
    /// SYNs a source may send at once before the rate applies.
    pub burst: u32,
    /// IPv4 sources sharing a bucket (32 = per address).
    pub ipv4_prefix: u8,
    /// IPv6 sources sharing a bucket (64 = per /64, what one host usually controls).
    pub ipv6_prefix: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            syn_per_second: 5.0,
            burst: 20,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

/// `[dataplane.capacity]`: maximum entries of each kernel map.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Exact IPv4 blocklist entries.
    pub block_v4: u32,
    /// Exact IPv6 blocklist entries.
    pub block_v6: u32,
    /// IPv4 blocklist prefixes.
    pub block_net_v4: u32,
    /// IPv6 blocklist prefixes.
    pub block_net_v6: u32,
    /// IPv4 allowlist prefixes.
    pub allow_v4: u32,
    /// IPv6 allowlist prefixes.
    pub allow_v6: u32,
    /// Sources tracked by the SYN rate limiter (least recently seen evicted first).
    pub rate_sources: u32,
    /// Sources with per-source counters (least recently seen evicted first).
    pub source_stats: u32,
    /// Distinct reason texts.
    pub reasons: u32,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        use smtp_gateway_common::capacity as c;
        Self {
            block_v4: c::BLOCK_V4,
            block_v6: c::BLOCK_V6,
            block_net_v4: c::BLOCK_NET_V4,
            block_net_v6: c::BLOCK_NET_V6,
            allow_v4: c::ALLOW_V4,
            allow_v6: c::ALLOW_V6,
            rate_sources: c::RATE_STATE,
            source_stats: c::SOURCE_STATS,
            reasons: c::REASONS,
        }
    }
}

/// Largest capacity accepted for any map (the kernel's own limits are lower for some types).
const MAX_CAPACITY: u32 = 64 * 1024 * 1024;

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors (usually the path).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: describe_toml_error(&e, text),
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin.to_string(),
                line: locate_key(text, &key),
                key,
                message,
            })?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges, names, consistency. Returns the key and the reason.
    fn validate(&self) -> Result<(), (String, String)> {
        self.validate_dataplane()?;
        self.validate_smtp()?;
        self.relay.validate()?;
        self.helo.validate()?;
        self.dnsbl.validate()?;
        self.reputation.validate()?;
        self.autoban.validate()?;
        self.metrics.validate()?;
        self.validate_daemon()?;
        Ok(())
    }

    fn validate_daemon(&self) -> Result<(), (String, String)> {
        let d = &self.daemon;
        if d.control_timeout < Duration::from_secs(1) {
            return Err((
                "daemon.control_timeout".into(),
                "must be at least 1s".into(),
            ));
        }
        if d.watch_debounce > Duration::from_secs(60) {
            return Err(("daemon.watch_debounce".into(), "must be at most 60s".into()));
        }
        for name in &d.keep_capabilities {
            if name.parse::<caps::Capability>().is_err() {
                return Err((
                    "daemon.keep_capabilities".into(),
                    format!("{name:?} is not a capability name (like \"CAP_BPF\")"),
                ));
            }
        }
        if !d.drop_privileges && (!d.user.is_empty() || !d.group.is_empty()) {
            return Err((
                "daemon.user".into(),
                "user and group need daemon.drop_privileges = true".into(),
            ));
        }
        Ok(())
    }

    fn validate_smtp(&self) -> Result<(), (String, String)> {
        let s = &self.smtp;
        let bad = |key: &str, message: String| Err((key.to_string(), message));
        if s.hostname.trim().is_empty() || s.hostname.contains(char::is_whitespace) {
            return bad(
                "smtp.hostname",
                format!("{:?} is not a host name", s.hostname),
            );
        }
        for (i, l) in s.listeners.iter().enumerate() {
            if s.listeners[..i].iter().any(|o| o.address == l.address) {
                return bad("smtp.listeners", format!("{} is listed twice", l.address));
            }
            if l.kind == ListenerKind::Smtps && s.tls.is_none() {
                return bad(
                    "smtp.listeners",
                    format!("{} is `smtps` but [smtp.tls] is not configured", l.address),
                );
            }
        }
        for (key, value, min) in [
            ("smtp.max_connections", s.max_connections, 1),
            (
                "smtp.max_connections_per_source",
                s.max_connections_per_source,
                1,
            ),
            ("smtp.max_command_line", s.max_command_line, 512),
            ("smtp.max_text_line", s.max_text_line, 1000),
            ("smtp.max_recipients", s.max_recipients, 1),
            ("smtp.max_messages", s.max_messages, 1),
        ] {
            if value < min {
                return bad(key, format!("{value} is below the minimum of {min}"));
            }
        }
        if s.max_message_size < 1024 {
            return bad(
                "smtp.max_message_size",
                format!("{} is below 1024 bytes", s.max_message_size),
            );
        }
        for (key, d) in [
            ("smtp.command_timeout", s.command_timeout),
            ("smtp.data_timeout", s.data_timeout),
        ] {
            if d < Duration::from_secs(1) {
                return bad(key, "must be at least 1s".into());
            }
        }
        let b = &self.backend;
        if b.pool_size > 0
            && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&b.pool_idle)
        {
            return bad("backend.pool_idle", "must be between 1s and 1h".into());
        }
        if b.pool_size > s.max_connections {
            return bad(
                "backend.pool_size",
                format!(
                    "{} is above smtp.max_connections ({})",
                    b.pool_size, s.max_connections
                ),
            );
        }
        if !s.listeners.is_empty() && self.backend.servers.is_empty() {
            return bad(
                "backend.servers",
                "at least one backend is required when smtp.listeners is set".into(),
            );
        }
        if self.score.tarpit > self.score.tempfail {
            return bad(
                "score.tarpit",
                format!(
                    "{} is above score.tempfail ({})",
                    self.score.tarpit, self.score.tempfail
                ),
            );
        }
        if self.score.tempfail > self.score.reject {
            return bad(
                "score.tempfail",
                format!(
                    "{} is above score.reject ({})",
                    self.score.tempfail, self.score.reject
                ),
            );
        }
        Ok(())
    }

    fn validate_dataplane(&self) -> Result<(), (String, String)> {
        let d = &self.dataplane;
        let bad = |key: &str, message: String| Err((format!("dataplane.{key}"), message));
        for name in &d.interfaces {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return bad(
                    "interfaces",
                    format!(
                        "{name:?} is not a valid interface name (1 to 15 characters, no '/' or spaces)"
                    ),
                );
            }
        }
        if d.protected_ports.is_empty() {
            return bad("protected_ports", "at least one port is required".into());
        }
        if d.protected_ports.contains(&0) {
            return bad("protected_ports", "port 0 is not a valid TCP port".into());
        }
        if !d.pin_dir.is_absolute() {
            return bad(
                "pin_dir",
                format!("{} must be an absolute path", d.pin_dir.display()),
            );
        }
        if d.sweep_interval < Duration::from_secs(1) {
            return bad("sweep_interval", "must be at least 1s".into());
        }
        for net in &d.allowlist {
            if net.trunc() != *net {
                return bad(
                    "allowlist",
                    format!("{net} has host bits set (did you mean {}?)", net.trunc()),
                );
            }
        }
        let r = &d.rate_limit;
        if !(r.syn_per_second.is_finite() && r.syn_per_second > 0.0 && r.syn_per_second <= 1e6) {
            return bad(
                "rate_limit.syn_per_second",
                format!("{} is out of range (0 < rate <= 1000000)", r.syn_per_second),
            );
        }
        if r.burst == 0 || r.burst > 1_000_000 {
            return bad(
                "rate_limit.burst",
                format!("{} is out of range (1..=1000000)", r.burst),
            );
        }
        if !(1..=32).contains(&r.ipv4_prefix) {
            return bad(
                "rate_limit.ipv4_prefix",
                format!("/{} is out of range (1..=32)", r.ipv4_prefix),
            );
        }
        if !(1..=128).contains(&r.ipv6_prefix) {
            return bad(
                "rate_limit.ipv6_prefix",
                format!("/{} is out of range (1..=128)", r.ipv6_prefix),
            );
        }
        let c = &d.capacity;
        for (key, value) in [
            ("block_v4", c.block_v4),
            ("block_v6", c.block_v6),
            ("block_net_v4", c.block_net_v4),
            ("block_net_v6", c.block_net_v6),
            ("allow_v4", c.allow_v4),
            ("allow_v6", c.allow_v6),
            ("rate_sources", c.rate_sources),
            ("source_stats", c.source_stats),
            ("reasons", c.reasons),
        ] {
            if value == 0 || value > MAX_CAPACITY {
                return bad(
                    &format!("capacity.{key}"),
                    format!("{value} is out of range (1..={MAX_CAPACITY})"),
                );
            }
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
    let line_no = text[..start].matches('\n').count() + 1;
    let line_text = text.lines().nth(line_no - 1).unwrap_or("").trim();
    if line_text.is_empty() {
        format!("line {line_no}: {message}")
    } else {
        format!("line {line_no}: {message}: `{line_text}`")
    }
}

/// Finds the line (1-based) defining dotted `key` such as `dataplane.rate_limit.burst`: the line
/// `burst = ...` inside `[dataplane.rate_limit]`, or a dotted key inside an ancestor table.
fn locate_key(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = header.trim().trim_start_matches('[').to_string();
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name: String = name.split('.').map(str::trim).collect::<Vec<_>>().join(".");
        let full = if table.is_empty() {
            name
        } else {
            format!("{table}.{name}")
        };
        if full == key {
            return Some(index + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
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
        // from the example interface.
        let mut expected = Config::default();
        expected.dataplane.interfaces = c.dataplane.interfaces.clone();
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
        assert!(msg.contains("test.toml:2"), "{msg}");
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
            err.to_string().contains("smtp.max_command_line") && err.to_string().contains(":2"),
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

    #[test]
    fn bad_enum_and_ranges_are_rejected() {
        let err = parse("[dataplane]\nattach_mode = \"native\"\n").unwrap_err();
        assert!(err.to_string().contains("native"), "{err}");
        let err = parse("[dataplane.rate_limit]\nburst = 0\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("dataplane.rate_limit.burst") && msg.contains(":2"),
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

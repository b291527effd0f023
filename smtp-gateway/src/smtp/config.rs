//! `[smtp]`, `[backend]`, `[checks]` and `[score]`: the proxy's configuration sections.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// `[smtp]`: listeners, limits and timeouts of the proxy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Name in the banner and EHLO reply (default: the system host name).
    pub hostname: String,
    /// Sockets to accept SMTP on. Empty: the proxy is off (kernel data plane only).
    pub listeners: Vec<ListenerConfig>,
    /// Sessions at once over all listeners; more get `421` and are closed.
    pub max_connections: usize,
    /// Sessions at once from one source (IPv4 address or IPv6 /64); more get `421`.
    pub max_connections_per_source: usize,
    /// Pause before the final banner line, after a `220-` teaser; a client that talks during it
    /// is a pregreeter. 0 disables the pause (talking before the banner is still caught).
    #[serde(with = "humantime_serde")]
    pub greet_pause: Duration,
    /// Time a client may take to send one command (RFC 5321 4.5.3.2: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Time a client may take between two chunks of message text.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Largest message accepted (advertised as SIZE), in bytes.
    pub max_message_size: u64,
    /// Longest command line, CRLF included (RFC 5321: 512).
    pub max_command_line: usize,
    /// Longest message text line, CRLF included (RFC 5321: 1000).
    pub max_text_line: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Messages per session.
    pub max_messages: usize,
    /// Protocol errors (syntax, bad sequence, refused recipients) per session.
    pub max_errors: usize,
    /// Unknown commands per session.
    pub max_unknown_commands: usize,
    /// Bare LF or bare CR in message text: `reject` the message, or `normalize` to CRLF (a lone
    /// "." produced by normalising is dot-stuffed, so it can never end the data at the backend).
    pub bare_newlines: BareNewlinePolicy,
    /// How long a client that delivered mail with no check firing skips the slow checks
    /// (greet pause, DNSBL). "0s" disables the cache.
    #[serde(with = "humantime_serde")]
    pub pass_cache_ttl: Duration,
    /// Clients remembered at most (oldest evicted first).
    pub pass_cache_size: usize,
    /// On SIGTERM: how long running sessions may take to finish before they are closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Delay before each reply once the session score reaches `score.tarpit`.
    #[serde(with = "humantime_serde")]
    pub tarpit_delay: Duration,
    /// Certificate and key for STARTTLS and implicit TLS.
    pub tls: Option<TlsConfig>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            hostname: system_hostname(),
            listeners: Vec::new(),
            max_connections: 1000,
            max_connections_per_source: 20,
            greet_pause: Duration::ZERO,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_message_size: 50 * 1024 * 1024,
            max_command_line: 512,
            max_text_line: 1000,
            max_recipients: 100,
            max_messages: 100,
            max_errors: 10,
            max_unknown_commands: 3,
            bare_newlines: BareNewlinePolicy::Reject,
            pass_cache_ttl: Duration::from_secs(3600),
            pass_cache_size: 100_000,
            tarpit_delay: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// The host name of this machine (`gethostname`), or "localhost".
pub fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port, e.g. "0.0.0.0:25" or "[::]:25".
    pub address: SocketAddr,
    /// `smtp` (port 25, STARTTLS offered when TLS is configured), `submission` (587, STARTTLS) or
    /// `smtps` (465, implicit TLS).
    #[serde(default)]
    pub kind: ListenerKind,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MX traffic.
    #[default]
    Smtp,
    /// Message submission (RFC 6409).
    Submission,
    /// Submission over implicit TLS (RFC 8314).
    Smtps,
}

/// How bare LF / bare CR in message text are handled.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BareNewlinePolicy {
    /// Refuse the message with `554 5.6.0`.
    Reject,
    /// Rewrite as CRLF (dot-stuffing a resulting lone ".").
    Normalize,
}

/// `[smtp.tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub certificate: PathBuf,
    /// PEM private key.
    pub private_key: PathBuf,
}

/// `[backend]`: the MTA the clean sessions are forwarded to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Backends in order of preference; the next is tried when one cannot be reached.
    pub servers: Vec<BackendServer>,
    /// When the backend connection is opened: at the first `MAIL FROM` (default: checks finish
    /// first, no backend resources for sessions that never send mail) or right after `EHLO`.
    pub connect_at: ConnectAt,
    /// Time allowed to connect and receive the backend's banner; also bounds the QUIT that ends a
    /// backend session.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for any backend reply (the final reply after DATA included).
    #[serde(with = "humantime_serde")]
    pub reply_timeout: Duration,
    /// Idle connections kept per `identity = "none"` server for the next session; 0: every
    /// session opens its own and ends it with QUIT.
    pub pool_size: usize,
    /// How long a pooled connection may stay idle before it is closed with QUIT; below the
    /// backend's own idle timeout (Postfix `smtpd_timeout`, 300s).
    #[serde(with = "humantime_serde")]
    pub pool_idle: Duration,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            connect_at: ConnectAt::Mail,
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(600),
            pool_size: 16,
            pool_idle: Duration::from_secs(30),
        }
    }
}

/// One backend MTA.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendServer {
    /// Address and port of the MTA.
    pub address: SocketAddr,
    /// How the client's identity is passed: `xclient` (Postfix `smtpd_authorized_xclient_hosts`),
    /// `proxy-v2` (a PROXY protocol v2 header; Postfix `smtpd_upstream_proxy_protocol = haproxy`)
    /// or `none`.
    #[serde(default)]
    pub identity: Identity,
    /// STARTTLS to this backend, verified against a CA. Absent: plaintext (fine on loopback or a
    /// private link).
    #[serde(default)]
    pub tls: Option<BackendTls>,
}

/// `tls = { ca = "...", server_name = "..." }` of a backend.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// PEM file of the CA certificate(s) the backend's certificate must chain to.
    pub ca: PathBuf,
    /// Name to verify in the backend's certificate (default: its IP address).
    pub server_name: Option<String>,
}

/// Client identity passing.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Identity {
    /// XCLIENT ADDR/PORT/NAME/HELO/PROTO/LOGIN.
    #[default]
    Xclient,
    /// PROXY protocol version 2 header.
    ProxyV2,
    /// Nothing: the backend sees the gateway as the client.
    None,
}

/// When to connect to the backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnectAt {
    /// After the client's EHLO/HELO.
    Ehlo,
    /// At the first MAIL FROM.
    Mail,
}

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

/// Every check the proxy runs; its name is its `[checks]` key. Typed, so a check's setting is an
/// exhaustive match and a misspelt name cannot silently fall back to "ignore".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    Pregreet,
    Pipelining,
    NonSmtp,
    BareNewline,
    NulByte,
    LongLine,
    HeloMissing,
    HeloInvalid,
    HeloUnbracketedLiteral,
    HeloLiteralMismatch,
    HeloOwnName,
    HeloNotFqdn,
    HeloDynamic,
    HeloEmbeddedIp,
    Dnsbl,
    TooManyErrors,
    TooManyUnknownCommands,
    RelayAttempt,
    Reputation,
}

impl Check {
    /// Every check, in `[checks]` order.
    pub const ALL: [Check; 19] = [
        Check::Pregreet,
        Check::Pipelining,
        Check::NonSmtp,
        Check::BareNewline,
        Check::NulByte,
        Check::LongLine,
        Check::HeloMissing,
        Check::HeloInvalid,
        Check::HeloUnbracketedLiteral,
        Check::HeloLiteralMismatch,
        Check::HeloOwnName,
        Check::HeloNotFqdn,
        Check::HeloDynamic,
        Check::HeloEmbeddedIp,
        Check::Dnsbl,
        Check::TooManyErrors,
        Check::TooManyUnknownCommands,
        Check::RelayAttempt,
        Check::Reputation,
    ];

    /// The `[checks]` key (also the event, log and metric label).
    pub const fn name(self) -> &'static str {
        match self {
            Check::Pregreet => "pregreet",
            Check::Pipelining => "pipelining",
            Check::NonSmtp => "non_smtp",
            Check::BareNewline => "bare_newline",
            Check::NulByte => "nul_byte",
            Check::LongLine => "long_line",
            Check::HeloMissing => "helo_missing",
            Check::HeloInvalid => "helo_invalid",
            Check::HeloUnbracketedLiteral => "helo_unbracketed_literal",
            Check::HeloLiteralMismatch => "helo_literal_mismatch",
            Check::HeloOwnName => "helo_own_name",
            Check::HeloNotFqdn => "helo_not_fqdn",
            Check::HeloDynamic => "helo_dynamic",
            Check::HeloEmbeddedIp => "helo_embedded_ip",
            Check::Dnsbl => "dnsbl",
            Check::TooManyErrors => "too_many_errors",
            Check::TooManyUnknownCommands => "too_many_unknown_commands",
            Check::RelayAttempt => "relay_attempt",
            Check::Reputation => "reputation",
        }
    }

    /// The check called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The check a HELO finding fires.
    pub const fn from_helo(finding: crate::policy::helo::HeloFinding) -> Check {
        use crate::policy::helo::HeloFinding as F;
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

/// `[checks]`: the action of every check.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksConfig {
    /// Client talked before the banner (or during the greet pause).
    pub pregreet: CheckSetting,
    /// Commands pipelined before the EHLO reply, or message text before `354`.
    pub pipelining: CheckSetting,
    /// HTTP, CONNECT, a TLS hello on a plaintext port, or binary garbage.
    pub non_smtp: CheckSetting,
    /// Bare LF or bare CR in a command line.
    pub bare_newline: CheckSetting,
    /// NUL byte in a command line.
    pub nul_byte: CheckSetting,
    /// Command line over `smtp.max_command_line`, or text line over `smtp.max_text_line`.
    pub long_line: CheckSetting,
    /// MAIL before HELO/EHLO.
    pub helo_missing: CheckSetting,
    /// HELO name is neither a domain nor an address literal.
    pub helo_invalid: CheckSetting,
    /// HELO is a bare IP address instead of `[address]`.
    pub helo_unbracketed_literal: CheckSetting,
    /// HELO address literal is not the client's address.
    pub helo_literal_mismatch: CheckSetting,
    /// HELO claims to be this gateway.
    pub helo_own_name: CheckSetting,
    /// HELO is a single label.
    pub helo_not_fqdn: CheckSetting,
    /// HELO matches a dynamic-host pattern.
    pub helo_dynamic: CheckSetting,
    /// HELO embeds the client's IPv4 address.
    pub helo_embedded_ip: CheckSetting,
    /// DNSBL score at or over `dnsbl.threshold`.
    pub dnsbl: CheckSetting,
    /// More than `smtp.max_errors` errors.
    pub too_many_errors: CheckSetting,
    /// More than `smtp.max_unknown_commands` unknown commands.
    pub too_many_unknown_commands: CheckSetting,
    /// RCPT refused by anti-relay.
    pub relay_attempt: CheckSetting,
    /// Client IP, HELO name or sender found in a `[reputation]` list.
    pub reputation: CheckSetting,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        use Action::*;
        Self {
            pregreet: setting(Drop, 1),
            pipelining: setting(Drop, 1),
            non_smtp: setting(Drop, 1),
            bare_newline: setting(Drop, 1),
            nul_byte: setting(Drop, 1),
            long_line: setting(Reject, 1),
            helo_missing: setting(Reject, 1),
            helo_invalid: setting(Reject, 1),
            helo_unbracketed_literal: setting(Score, 1),
            helo_literal_mismatch: setting(Score, 2),
            helo_own_name: setting(Reject, 1),
            helo_not_fqdn: setting(Score, 1),
            helo_dynamic: setting(Score, 1),
            helo_embedded_ip: setting(Score, 1),
            dnsbl: setting(Score, 3),
            too_many_errors: setting(Drop, 1),
            too_many_unknown_commands: setting(Drop, 1),
            relay_attempt: setting(Score, 1),
            reputation: setting(Score, 3),
        }
    }
}

impl ChecksConfig {
    /// The setting of `check`.
    pub fn get(&self, check: Check) -> CheckSetting {
        match check {
            Check::Pregreet => self.pregreet,
            Check::Pipelining => self.pipelining,
            Check::NonSmtp => self.non_smtp,
            Check::BareNewline => self.bare_newline,
            Check::NulByte => self.nul_byte,
            Check::LongLine => self.long_line,
            Check::HeloMissing => self.helo_missing,
            Check::HeloInvalid => self.helo_invalid,
            Check::HeloUnbracketedLiteral => self.helo_unbracketed_literal,
            Check::HeloLiteralMismatch => self.helo_literal_mismatch,
            Check::HeloOwnName => self.helo_own_name,
            Check::HeloNotFqdn => self.helo_not_fqdn,
            Check::HeloDynamic => self.helo_dynamic,
            Check::HeloEmbeddedIp => self.helo_embedded_ip,
            Check::Dnsbl => self.dnsbl,
            Check::TooManyErrors => self.too_many_errors,
            Check::TooManyUnknownCommands => self.too_many_unknown_commands,
            Check::RelayAttempt => self.relay_attempt,
            Check::Reputation => self.reputation,
        }
    }
}

/// `[score]`: what the summed score of `score`-action checks means.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreConfig {
    /// At or over this, every reply is delayed by `smtp.tarpit_delay` (slows bulk senders).
    pub tarpit: i32,
    /// At or over this, MAIL FROM / RCPT TO get `451 4.7.1` (try later).
    pub tempfail: i32,
    /// At or over this, MAIL FROM / RCPT TO get `550 5.7.1`.
    pub reject: i32,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            tarpit: 2,
            tempfail: 3,
            reject: 5,
        }
    }
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
}

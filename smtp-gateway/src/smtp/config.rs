//! The proxy's configuration: `[smtp]`, `[backend]` and `[score]` with their validation, and
//! [`ProxyConfig`], the sections a session reads (these three, `[checks]` from `checks.rs`,
//! `[relay]` and `[helo]` from `policy/`). Rules that span sections stay in `config.rs`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    checks::ChecksConfig,
    config::invalid::Invalid,
    policy::{helo::HeloConfig, relay::RelayConfig},
};

/// The sections the proxy's sessions run with: one configuration generation's worth, built by
/// the daemon from the whole file (with our own host name added to `helo.own_names`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyConfig {
    /// `[smtp]`: listeners, limits, timeouts, TLS.
    pub smtp: SmtpConfig,
    /// `[backend]`: the MTA behind the gateway.
    pub backend: BackendConfig,
    /// `[checks]`: what each check does when it fires.
    pub checks: ChecksConfig,
    /// `[score]`: score thresholds.
    pub score: ScoreConfig,
    /// `[relay]`: anti-relay.
    pub relay: RelayConfig,
    /// `[helo]`: HELO/EHLO heuristics.
    pub helo: HeloConfig,
}

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
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

impl SmtpConfig {
    /// Checks values serde cannot: host name, listeners, limits, timeouts.
    pub fn validate(&self) -> Result<(), Invalid> {
        let s = self;
        let bad = |key: &str, reason: String| Err(Invalid::new(key, reason));
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
        Ok(())
    }
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

impl BackendConfig {
    /// Checks values serde cannot (the pool against `[smtp]` is a rule of `config.rs`).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.pool_size > 0
            && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.pool_idle)
        {
            return Err(Invalid::new(
                "backend.pool_idle",
                "must be between 1s and 1h",
            ));
        }
        Ok(())
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

impl ScoreConfig {
    /// The thresholds must rise: tarpit <= tempfail <= reject.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.tarpit > self.tempfail {
            return Err(Invalid::new(
                "score.tarpit",
                format!(
                    "{} is above score.tempfail ({})",
                    self.tarpit, self.tempfail
                ),
            ));
        }
        if self.tempfail > self.reject {
            return Err(Invalid::new(
                "score.tempfail",
                format!("{} is above score.reject ({})", self.tempfail, self.reject),
            ));
        }
        Ok(())
    }
}

//! The proxy's configuration: `[smtp]`, `[backend]` and `[score]` with their validation, and
//! [`ProxyConfig`], the sections a session reads (these three, `[checks]` from `checks.rs`,
//! `[relay]`, `[helo]` and `[spf]` from `policy/`, `[auth_results]` from `auth_results.rs`, and
//! the policy profiles resolved against them by `profile.rs`). Rules that span sections stay in
//! `config.rs`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    checks::ChecksConfig,
    invalid::Invalid,
    policy::{helo::HeloConfig, relay::RelayConfig},
    smtp::profile::Profiles,
};

/// Largest `smtp.max_connections` and `smtp.max_connections_per_source` (far below tokio's
/// semaphore maximum; each session costs a socket and buffers).
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Largest `smtp.max_command_line`.
pub const MAX_COMMAND_LINE: usize = 65_536;
/// Largest `smtp.max_text_line`.
pub const MAX_TEXT_LINE: usize = 1_048_576;
/// Largest `smtp.max_recipients`, `max_messages`, `max_errors` and `max_unknown_commands`.
pub const MAX_PER_SESSION: usize = 100_000;
/// Largest `smtp.max_message_size` (4 GiB).
pub const MAX_MESSAGE_SIZE: u64 = 4 * 1024 * 1024 * 1024;
/// Largest `smtp.max_chunk_size` (1 GiB).
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;
/// Largest `smtp.pass_cache_size`.
pub const MAX_PASS_CACHE_SIZE: usize = 10_000_000;
/// Largest `smtp.pass_cache_ttl` (30 days).
pub const MAX_PASS_CACHE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest `smtp.command_timeout`, `data_timeout`, `shutdown_timeout` and the backend's
/// `reply_timeout` (1 hour).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest `smtp.greet_pause`, `smtp.tarpit_delay` and `backend.connect_timeout` (5 minutes).
pub const MAX_PAUSE: Duration = Duration::from_secs(300);
/// Largest `backend.pool_size`.
pub const MAX_POOL_SIZE: usize = 10_000;
/// Largest `score.*` threshold (and smallest, negated).
pub const MAX_SCORE: i32 = 1_000_000;

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
    /// `[spf]`: the setting of each SPF result and the session's time for SPF.
    pub spf: crate::policy::spf::SpfConfig,
    /// `[greylist]`: greylisting at RCPT (on listeners whose profile has `greylist` on).
    pub greylist: crate::policy::greylist::GreylistConfig,
    /// `[auth_results]`: the `Authentication-Results` header.
    pub auth_results: super::auth_results::AuthResultsConfig,
    /// The policy profiles, resolved against `checks`, `smtp.greet_pause` and `relay`: a
    /// session reads its checks, greet pause, DNSBL switch and relay rules from its listener's.
    pub profiles: Profiles,
}

/// Upper bound of `smtp.junk_command_limit`.
const MAX_JUNK_COMMANDS: usize = 1_000_000;

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
    /// At `max_connections`, a session that has waited this long for its client (for a command,
    /// text, to read its replies, in its TLS handshake, or in the tarpit) makes room for a new
    /// client: the longest idle one among the sources holding the most slots, never one holding
    /// fewer than the newcomer's. It gets `421 4.7.0` (a stalled handshake is closed without a
    /// word). 0 turns this off (newcomers get `421` at the cap).
    #[serde(with = "humantime_serde")]
    pub evict_idle_after: Duration,
    /// Pause before the final banner line, after a `220-` teaser; a client that talks during it
    /// is a pregreeter. 0 disables the pause (talking before the banner is still caught).
    #[serde(with = "humantime_serde")]
    pub greet_pause: Duration,
    /// Time a client may take to send one command (RFC 5321 4.5.3.2: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Time a client may take for each line of message text.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Time one write to the client (a batch of replies, the TLS close) may take; a client that
    /// does not read its replies within it is closed without a goodbye, and its slots come back.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Longest session, whatever the client does (Postfix has none; a client sending one `NOOP`
    /// per command timeout would otherwise hold its slot forever). Past it: `421 4.4.2`.
    #[serde(with = "humantime_serde")]
    pub max_session_duration: Duration,
    /// Longest message text transfer (from `354` to the final dot), however steadily the text
    /// trickles in. Past it: `421 4.4.2`, the backend transaction is aborted.
    #[serde(with = "humantime_serde")]
    pub max_data_duration: Duration,
    /// Message text the client sent is passed on to the backend at least this often (besides
    /// every 64 KiB), so a slow sender's backend session never sits idle into its own timeout.
    #[serde(with = "humantime_serde")]
    pub text_flush_interval: Duration,
    /// Largest message accepted (advertised as SIZE), in bytes.
    pub max_message_size: u64,
    /// Largest BDAT chunk (RFC 3030) a client may announce, in bytes (1024 to 1 GiB). A chunk
    /// within it is always read to its end (relayed, or discarded when refused); a larger one is
    /// answered `552 5.3.4` and the session closed without reading it.
    pub max_chunk_size: u64,
    /// Longest command line, CRLF included (RFC 5321: 512).
    pub max_command_line: usize,
    /// Longest message text line, CRLF included (RFC 5321: 1000).
    pub max_text_line: usize,
    /// Recipients accepted per message (a refused one does not count, as with Postfix's
    /// `smtpd_recipient_limit`).
    pub max_recipients: usize,
    /// Messages per session.
    pub max_messages: usize,
    /// Protocol errors (syntax, bad sequence, refused recipients) per session.
    pub max_errors: usize,
    /// Unknown commands per session.
    pub max_unknown_commands: usize,
    /// Junk commands (NOOP, VRFY, HELP, RSET, a HELO/EHLO after the first) since the last
    /// delivered message (Postfix `smtpd_junk_command_limit`); past it: `421 4.7.0`, closed.
    pub junk_command_limit: usize,
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
            evict_idle_after: Duration::from_secs(2),
            greet_pause: Duration::ZERO,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            write_timeout: Duration::from_secs(30),
            max_session_duration: Duration::from_secs(3600),
            max_data_duration: Duration::from_secs(900),
            text_flush_interval: Duration::from_secs(5),
            max_message_size: 50 * 1024 * 1024,
            max_chunk_size: 50 * 1024 * 1024,
            max_command_line: 512,
            max_text_line: 1000,
            max_recipients: 100,
            max_messages: 100,
            max_errors: 10,
            max_unknown_commands: 3,
            junk_command_limit: 100,
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
        // A DNS name: labels of at most 63 characters, at most 253 in all. An underscore is let
        // through: the default is this machine's host name, which may have one.
        let name = s
            .hostname
            .strip_suffix('.')
            .unwrap_or(&s.hostname)
            .replace('_', "a");
        if let Err(why) = crate::policy::address::check_domain_syntax(&name).and_then(|()| {
            name.is_ascii()
                .then_some(())
                .ok_or("not ASCII (use the A-label)")
        }) {
            return bad(
                "smtp.hostname",
                format!("{:?} is not a host name: {why}", s.hostname),
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
        for (key, value, min, max) in [
            (
                "smtp.max_connections",
                s.max_connections,
                1,
                MAX_CONNECTIONS,
            ),
            (
                "smtp.max_connections_per_source",
                s.max_connections_per_source,
                1,
                MAX_CONNECTIONS,
            ),
            (
                "smtp.max_command_line",
                s.max_command_line,
                512,
                MAX_COMMAND_LINE,
            ),
            ("smtp.max_text_line", s.max_text_line, 1000, MAX_TEXT_LINE),
            ("smtp.max_recipients", s.max_recipients, 1, MAX_PER_SESSION),
            ("smtp.max_messages", s.max_messages, 1, MAX_PER_SESSION),
            ("smtp.max_errors", s.max_errors, 0, MAX_PER_SESSION),
            (
                "smtp.max_unknown_commands",
                s.max_unknown_commands,
                0,
                MAX_PER_SESSION,
            ),
            (
                "smtp.pass_cache_size",
                s.pass_cache_size,
                0,
                MAX_PASS_CACHE_SIZE,
            ),
        ] {
            if value < min {
                return bad(key, format!("{value} is below the minimum of {min}"));
            }
            Invalid::at_most(key, value, max)?;
        }
        if s.max_message_size < 1024 {
            return bad(
                "smtp.max_message_size",
                format!("{} is below 1024 bytes", s.max_message_size),
            );
        }
        Invalid::in_range(
            "smtp.max_chunk_size",
            s.max_chunk_size,
            1024,
            MAX_CHUNK_SIZE,
        )?;
        Invalid::at_most(
            "smtp.max_message_size",
            s.max_message_size,
            MAX_MESSAGE_SIZE,
        )?;
        if !(1..=MAX_JUNK_COMMANDS).contains(&s.junk_command_limit) {
            return bad(
                "smtp.junk_command_limit",
                format!(
                    "{} is not between 1 and {MAX_JUNK_COMMANDS}",
                    s.junk_command_limit
                ),
            );
        }
        let secs = Duration::from_secs;
        for (key, d, min, max) in [
            (
                "smtp.command_timeout",
                s.command_timeout,
                secs(1),
                MAX_TIMEOUT,
            ),
            ("smtp.data_timeout", s.data_timeout, secs(1), MAX_TIMEOUT),
            ("smtp.write_timeout", s.write_timeout, secs(1), secs(3600)),
            (
                "smtp.max_session_duration",
                s.max_session_duration,
                secs(1),
                secs(24 * 3600),
            ),
            (
                "smtp.max_data_duration",
                s.max_data_duration,
                secs(1),
                secs(24 * 3600),
            ),
            (
                "smtp.text_flush_interval",
                s.text_flush_interval,
                Duration::from_millis(100),
                secs(60),
            ),
            ("smtp.greet_pause", s.greet_pause, Duration::ZERO, MAX_PAUSE),
            (
                "smtp.evict_idle_after",
                s.evict_idle_after,
                Duration::ZERO,
                MAX_TIMEOUT,
            ),
            (
                "smtp.tarpit_delay",
                s.tarpit_delay,
                Duration::ZERO,
                MAX_PAUSE,
            ),
            (
                "smtp.shutdown_timeout",
                s.shutdown_timeout,
                Duration::ZERO,
                MAX_TIMEOUT,
            ),
            (
                "smtp.pass_cache_ttl",
                s.pass_cache_ttl,
                Duration::ZERO,
                MAX_PASS_CACHE_TTL,
            ),
        ] {
            Invalid::duration_in(key, d, min, max)?;
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
    /// The policy profile its sessions run with (`[profiles.<name>]`, or the built-in `mx` and
    /// `submission`). Absent: the kind's ([`ListenerConfig::profile_name`]).
    #[serde(default)]
    pub profile: Option<String>,
}

impl ListenerConfig {
    /// The profile its sessions run with: the one it names, else its kind's: `mx` for `smtp`
    /// (the top-level sections as they are), `submission` for `submission` and `smtps` (AUTH
    /// before MAIL, none of the MX-only checks).
    pub fn profile_name(&self) -> &str {
        match (&self.profile, self.kind) {
            (Some(name), _) => name,
            (None, ListenerKind::Smtp) => crate::smtp::profile::MX,
            (None, ListenerKind::Submission | ListenerKind::Smtps) => {
                crate::smtp::profile::SUBMISSION
            }
        }
    }
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
    /// Backend sessions one client session may open (or take from the pool), failed attempts
    /// included, 1 to 100; beyond, the client gets `421` and is closed (a client that keeps
    /// losing, replacing or failing to open its backend session must not cost the backend a
    /// connection each time).
    pub max_connections_per_session: usize,
    /// A `MAIL FROM` that arrives alone (the client waits for each reply) is answered `250` by
    /// the gateway once its own checks pass and goes to the backend in one write with the first
    /// recipient (RFC 2920, when the backend offers PIPELINING): one backend round trip fewer
    /// per message. A sender the backend refuses gets its refusal as the reply to every RCPT of
    /// the transaction (as Postfix's `smtpd_delay_reject` does). `false`: the backend's own MAIL
    /// reply is awaited and relayed.
    pub mail_with_first_rcpt: bool,
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
            max_connections_per_session: 3,
            mail_with_first_rcpt: true,
        }
    }
}

impl BackendConfig {
    /// Checks values serde cannot (the pool against `[smtp]` is a rule of `config.rs`).
    pub fn validate(&self) -> Result<(), Invalid> {
        Invalid::at_most("backend.pool_size", self.pool_size, MAX_POOL_SIZE)?;
        Invalid::duration_in(
            "backend.connect_timeout",
            self.connect_timeout,
            Duration::from_secs(1),
            MAX_PAUSE,
        )?;
        Invalid::duration_in(
            "backend.reply_timeout",
            self.reply_timeout,
            Duration::from_secs(1),
            MAX_TIMEOUT,
        )?;
        if self.pool_size > 0
            && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.pool_idle)
        {
            return Err(Invalid::new(
                "backend.pool_idle",
                "must be between 1s and 1h",
            ));
        }
        if !(1..=100).contains(&self.max_connections_per_session) {
            return Err(Invalid::new(
                "backend.max_connections_per_session",
                "must be between 1 and 100",
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
    /// The thresholds must rise: tarpit <= tempfail <= reject, each within ±[`MAX_SCORE`].
    pub fn validate(&self) -> Result<(), Invalid> {
        for (key, value) in [
            ("score.tarpit", self.tarpit),
            ("score.tempfail", self.tempfail),
            ("score.reject", self.reject),
        ] {
            Invalid::in_range(key, value, -MAX_SCORE, MAX_SCORE)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(change: impl FnOnce(&mut SmtpConfig)) -> String {
        let mut c = SmtpConfig::default();
        change(&mut c);
        match c.validate() {
            Ok(()) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_host_name_is_a_dns_name_and_may_have_an_underscore() {
        for name in [
            "mx.example.net",
            "vm",
            "mail_1.example.net",
            "mx.example.net.",
        ] {
            let c = SmtpConfig {
                hostname: name.into(),
                ..SmtpConfig::default()
            };
            assert_eq!(c.validate(), Ok(()), "{name}");
        }
        let long = format!("{}.example.net", "a".repeat(64));
        for name in [
            long.as_str(),
            "mx..example.net",
            "",
            "mx example.net",
            "\u{e9}.example",
        ] {
            assert!(
                rejected(|c| c.hostname = name.into()).contains("smtp.hostname"),
                "{name}"
            );
        }
    }

    #[test]
    fn the_holding_limits_default_to_their_documented_values() {
        let c = SmtpConfig::default();
        assert_eq!(c.write_timeout, Duration::from_secs(30));
        assert_eq!(c.max_session_duration, Duration::from_secs(3600));
        assert_eq!(c.max_data_duration, Duration::from_secs(900));
        assert_eq!(c.text_flush_interval, Duration::from_secs(5));
        assert_eq!(c.junk_command_limit, 100);
        assert_eq!(c.max_chunk_size, 50 * 1024 * 1024);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn the_holding_limits_are_bounded() {
        let secs = Duration::from_secs;
        for (key, e) in [
            (
                "smtp.write_timeout",
                rejected(|c| c.write_timeout = Duration::ZERO),
            ),
            (
                "smtp.write_timeout",
                rejected(|c| c.write_timeout = secs(3601)),
            ),
            (
                "smtp.max_session_duration",
                rejected(|c| c.max_session_duration = Duration::from_millis(500)),
            ),
            (
                "smtp.max_session_duration",
                rejected(|c| c.max_session_duration = secs(24 * 3600 + 1)),
            ),
            (
                "smtp.max_data_duration",
                rejected(|c| c.max_data_duration = Duration::ZERO),
            ),
            (
                "smtp.max_data_duration",
                rejected(|c| c.max_data_duration = secs(24 * 3600 + 1)),
            ),
            (
                "smtp.text_flush_interval",
                rejected(|c| c.text_flush_interval = Duration::from_millis(99)),
            ),
            (
                "smtp.text_flush_interval",
                rejected(|c| c.text_flush_interval = secs(61)),
            ),
            (
                "smtp.junk_command_limit",
                rejected(|c| c.junk_command_limit = 0),
            ),
            (
                "smtp.junk_command_limit",
                rejected(|c| c.junk_command_limit = MAX_JUNK_COMMANDS + 1),
            ),
            ("smtp.max_chunk_size", rejected(|c| c.max_chunk_size = 1023)),
            (
                "smtp.max_chunk_size",
                rejected(|c| c.max_chunk_size = MAX_CHUNK_SIZE + 1),
            ),
        ] {
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}

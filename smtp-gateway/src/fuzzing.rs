//! Entry points for the fuzz targets (`fuzz/`) and the property tests (`tests/properties_*.rs`).
//!
//! Not an API: hidden from the docs, no stability promise. It exists so that the parsers and the
//! framing can be driven from outside the crate while the modules stay private to it, and so that
//! this file is the only one outside the modules themselves that names their paths: a move inside
//! the crate is fixed here once, not in every target.
//!
//! Everything here is what the daemon itself runs: no copy of a parser, only the glue a harness
//! needs (a plain stream wrapped as a client connection, a backend connection with no identity, a
//! session configuration from TOML text).

use std::{io::Cursor, net::SocketAddr, sync::Arc, time::Duration};

use smtp_proto::Request;
use tokio::net::TcpStream;

pub use crate::{
    dataplane::{
        Target, TargetError,
        config::{DataplaneConfig, RateLimitConfig},
        kernel_config,
    },
    policy::{
        address::PathError,
        relay::{RelayConfig, RelayRefusal, RelayVerdict, check_recipient},
    },
    smtp::{
        backend::{Backend, BackendError},
        config::BareNewlinePolicy,
        connection::{ConnError, Connection, Ending, Line},
        pipeline::{Awaiting, Settled, settle},
        reply::{Reply, ReplyLine, parse_reply_line},
    },
};

/// `Config::parse` on `text`: the error's message when it is refused.
pub fn parse_config(text: &str) -> Result<(), String> {
    crate::config::Config::parse(text, "fuzz")
        .map(drop)
        .map_err(|e| e.to_string())
}

/// What `block import` would make of `text`: (lines accepted, lines refused).
pub fn parse_import(text: &[u8]) -> (usize, usize) {
    // Reading from memory cannot fail.
    match crate::dataplane::import::parse(Cursor::new(text)) {
        Ok((good, bad)) => (good.len(), bad.len()),
        Err(_) => (0, 0),
    }
}

/// One import line: `Ok(None)` for blank and comment lines.
pub fn parse_import_line(text: &str) -> Result<Option<(Target, Option<String>)>, String> {
    crate::dataplane::import::parse_line(text)
}

/// A plain (not TLS) client connection over `tcp`, with the default `smtp.write_timeout`.
pub fn client_connection(tcp: TcpStream) -> Connection {
    let write_timeout = crate::smtp::config::SmtpConfig::default().write_timeout;
    Connection::new(crate::smtp::connection::MaybeTls::Plain(tcp), write_timeout)
}

/// How the session reads a RCPT line: the address smtp-proto parsed (or the address-literal
/// fallback for what smtp-proto refuses) and the path the relay policy is given (the raw path as
/// the client wrote it, falling back to the parsed address). `None`: not a RCPT the session
/// would judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptPaths {
    /// `RcptTo::address` from the parser (what a backend parsing the line like it would use).
    pub parsed: String,
    /// What `check_recipient` is given.
    pub policy: String,
}

/// Parses `line` (without its CRLF) the way the session does and, for a RCPT, returns both paths.
pub fn rcpt_paths(line: &[u8]) -> Option<RcptPaths> {
    let parsed = parse_request(line)?;
    let Request::Rcpt { to } = parsed else {
        return None;
    };
    let policy = crate::policy::address::policy_path(line, &to.address);
    Some(RcptPaths {
        parsed: to.address,
        policy,
    })
}

/// The session's command parse: smtp-proto, with the address-literal fallback for MAIL and RCPT
/// paths it refuses. `None` when the line is refused.
fn parse_request(line: &[u8]) -> Option<Request<String>> {
    let line = self::line(line.to_vec(), Ending::CrLf, false);
    crate::smtp::session::line::parse_command(&line).ok()
}

/// Every pure step the session applies to one received line before dispatching it: the non-SMTP
/// recognition, the pipelining admission test, the parse (with its fallback) and the raw path.
/// Returns whether the line parsed as a command.
pub fn classify_line(line: &Line) -> bool {
    let _ = crate::smtp::session::line::non_smtp(&line.data);
    let _ = crate::smtp::session::line::may_join_group(line);
    let _ = crate::policy::address::raw_path(&line.data);
    crate::smtp::session::line::parse_command(line).is_ok()
}

/// A [`Line`] as the framer builds it from `data` (flags computed from the bytes).
pub fn line(data: Vec<u8>, ending: Ending, too_long: bool) -> Line {
    Line {
        bare_cr: data.contains(&b'\r'),
        nul: data.contains(&0),
        data,
        ending,
        too_long,
    }
}

/// A client connection over an in-memory peer (fuzz build only), with the default
/// `smtp.write_timeout`.
#[cfg(fuzzing)]
pub fn memory_connection(peer: impl crate::smtp::connection::MemoryStream + 'static) -> Connection {
    let write_timeout = crate::smtp::config::SmtpConfig::default().write_timeout;
    Connection::new(
        crate::smtp::connection::MaybeTls::Memory(Box::new(peer)),
        write_timeout,
    )
}

/// Opens a backend session over an in-memory backend (fuzz build only: no identity, no pool, no
/// TLS) with `timeout` for every reply; `EHLO fuzz` is sent after the banner.
#[cfg(fuzzing)]
pub async fn memory_backend(
    peer: impl crate::smtp::connection::MemoryStream + 'static,
    timeout: Duration,
) -> Result<Backend, BackendError> {
    use crate::smtp::{
        config::{BackendConfig, BackendServer, Identity},
        identity::ClientIdentity,
    };
    let server = BackendServer {
        address: SocketAddr::from(([127, 0, 0, 1], 2525)),
        identity: Identity::None,
        tls: None,
    };
    let cfg = BackendConfig {
        servers: vec![server.clone()],
        connect_timeout: timeout,
        reply_timeout: timeout,
        pool_size: 0,
        ..BackendConfig::default()
    };
    let client = ClientIdentity {
        addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        name: None,
        reverse_name: None,
        helo: Some("fuzz".into()),
        esmtp: true,
        login: None,
    };
    let local = SocketAddr::from(([127, 0, 0, 1], 25));
    let stream = crate::smtp::connection::MaybeTls::Memory(Box::new(peer));
    Backend::over(stream, &cfg, &server, None, &client, local, "fuzz").await
}

/// Limits of [`relay_text`] (the `[smtp]` settings the message-text relay reads).
#[derive(Debug, Clone, Copy)]
pub struct TextSettings {
    /// `smtp.max_message_size`.
    pub max_size: u64,
    /// `smtp.max_line_length` (text lines).
    pub max_line: usize,
    /// `smtp.bare_newlines`.
    pub bare_newlines: BareNewlinePolicy,
    /// Over-long lines refuse the message.
    pub refuse_long_lines: bool,
    /// Time allowed for each text line.
    pub timeout: Duration,
}

/// How [`relay_text`] ended.
#[derive(Debug)]
pub enum TextEnd {
    /// The backend's final reply code.
    Relayed(u16),
    /// The gateway refused the text (the backend transaction was aborted).
    Refused,
    /// The backend failed while the text streamed.
    BackendFailed,
    /// The client went away (or ran out of time) before the end of data.
    ClientGone,
}

/// Streams message text from `conn` to `backend` as the session does after `354`.
pub async fn relay_text(
    conn: &mut Connection,
    backend: &mut Backend,
    settings: TextSettings,
) -> TextEnd {
    use crate::smtp::text::{TextLimits, TextRelayEnd, relay_message};
    let defaults = crate::smtp::config::SmtpConfig::default();
    let limits = TextLimits {
        max_size: settings.max_size,
        max_line: settings.max_line,
        bare_newlines: settings.bare_newlines,
        timeout: settings.timeout,
        deadline: tokio::time::Instant::now() + defaults.max_data_duration,
        flush_interval: defaults.text_flush_interval,
        refuse_long_lines: settings.refuse_long_lines,
    };
    match relay_message(conn, backend, &limits).await.0 {
        TextRelayEnd::Relayed { reply, .. } => TextEnd::Relayed(reply.code),
        TextRelayEnd::Refused(_) => TextEnd::Refused,
        TextRelayEnd::BackendFailed(_) => TextEnd::BackendFailed,
        TextRelayEnd::ClientGone | TextRelayEnd::TimeLimit | TextRelayEnd::Timeout => {
            TextEnd::ClientGone
        }
    }
}

/// Why a [`SessionHarness`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The configuration text was refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The reputation lists could not be loaded.
    #[error(transparent)]
    Reputation(#[from] crate::policy::reputation::ReputationError),
}

/// What a whole client session needs, built once from a configuration text (no DNSBL, no TLS,
/// whatever backend the text names).
pub struct SessionHarness {
    /// The state every session of one configuration generation shares.
    shared: Arc<crate::smtp::Shared>,
}

impl SessionHarness {
    /// Parses `config` (a complete `gateway.toml`) and builds the shared session state.
    pub fn new(config: &str) -> Result<Self, HarnessError> {
        let config = crate::config::Config::parse(config, "fuzz")?;
        let (events, _) = crate::events::channel();
        let (ends, _) = crate::events::ends_channel(0);
        let reputation = crate::policy::reputation::Reputation::load(&config.reputation)?;
        let shared = crate::smtp::Shared {
            dnsbl: None,
            fcrdns: None,
            spf: None,
            tls: None,
            backend_tls: config.backend.servers.iter().map(|_| None).collect(),
            events,
            reputation: Arc::new(reputation),
            pass_cache: Arc::new(crate::policy::pass_cache::PassCache::new(Duration::ZERO, 1)),
            greylist: Arc::new(crate::policy::greylist::Greylist::new(1)),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            outcomes: Arc::new(crate::source_outcomes::SourceOutcomes::new(16)),
            ends,
            backend_pool: Arc::new(crate::smtp::backend_pool::BackendPool::new()),
            config: config.proxy(),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// Runs one MX session on `conn` (accepted from `client` on `local`) to its end.
    pub async fn run(&self, conn: Connection, client: SocketAddr, local: SocketAddr) {
        let pass = self
            .shared
            .pass_cache
            .lookup(client.ip().to_canonical())
            .await;
        crate::smtp::session::Session::new(
            self.shared.clone(),
            conn,
            client,
            local,
            crate::smtp::config::ListenerKind::Smtp,
            self.shared.config.profiles.mx(),
            pass,
        )
        .run()
        .await;
    }
}

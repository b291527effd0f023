//! One client session: banner (with pregreet detection), the command loop with its checks,
//! and the live forwarding of clean transactions to the backend.
//!
//! Replies to a pipelined group are queued and written together when no further complete command
//! is buffered. Every reply to MAIL, RCPT and the final reply after DATA that says 2xx is the
//! backend's own: the gateway never answers `250` for mail the backend did not accept.
//!
//! When the backend offers PIPELINING and the client's next command is already buffered, a MAIL
//! or RCPT that passed every gateway check is queued towards the backend instead of waiting for
//! its reply (`pipeline.rs`). The awaited replies are settled, in order, before anything whose
//! handling depends on them: a recipient the gateway refuses, DATA, any other command, or the end
//! of the buffered group. Until its reply is read, a forwarded MAIL's transaction is assumed open.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use smtp_proto::{Error as ParseError, Request};
use tokio::sync::watch;

use super::{
    Shared,
    backend::Backend,
    config::{Action, Check, ConnectAt, ListenerKind},
    connection::{ConnError, Connection, Ending, Line},
    data::{DataOutcome, TextLimits, TextViolation, relay_message},
    events::{Event, SessionEnd, SessionVerdict},
    identity::ClientIdentity,
    pipeline::{Awaiting, Pipeline, Settled},
    reply::Reply,
};
use crate::policy::{
    dnsbl::DnsblScore,
    helo,
    relay::{self, RelayRefusal, RelayVerdict},
};

/// Most challenge/response rounds in one AUTH exchange.
const MAX_SASL_STEPS: usize = 10;
/// Longest SASL response line (RFC 4954 section 4: 12288 octets).
const MAX_SASL_LINE: usize = 12288;

/// What the command loop does next.
enum Flow {
    Continue,
    Close,
}

/// What a fired check means for the current command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Go on.
    Pass,
    /// Refuse the current command / transaction.
    Reject,
    /// Close the session.
    Drop,
}

/// The open transaction.
#[derive(Default)]
struct Transaction {
    /// Recipients the backend accepted.
    accepted: usize,
    /// Recipients tried.
    tried: usize,
}

/// Per-session state.
pub struct Session {
    shared: Arc<Shared>,
    conn: Connection,
    client: SocketAddr,
    local: SocketAddr,
    kind: ListenerKind,
    started: Instant,
    helo: Option<String>,
    esmtp: bool,
    /// The EHLO reply was sent (pipelining is legitimate from then on).
    ehlo_answered: bool,
    score: i32,
    fired: Vec<&'static str>,
    errors: usize,
    unknown: usize,
    messages: usize,
    backend: Option<Backend>,
    txn: Option<Transaction>,
    dnsbl: Option<tokio::task::JoinHandle<DnsblScore>>,
    dnsbl_done: bool,
    /// The client passed recently: the slow checks are skipped.
    cached: bool,
    /// Daemon shutdown: an idle session is told `421` at its next command wait.
    shutdown: Option<watch::Receiver<bool>>,
    /// SASL mechanisms the backend offers (its EHLO `AUTH` line), relayed on submission ports.
    backend_auth: Option<String>,
    /// The backend accepted the client's AUTH: it may relay (the backend decides what it may do).
    authenticated: bool,
    /// Last backend reply to a final DATA, for the session log line.
    last_backend_reply: Option<String>,
    bytes: u64,
    recipients: usize,
    sender: Option<String>,
    /// The worst thing a check or the score did to this session so far.
    refused: Option<SessionVerdict>,
    /// MAIL/RCPT commands forwarded to the backend whose replies are not read yet.
    pipeline: Pipeline,
}

impl Session {
    /// A session on an accepted connection (TLS already done for implicit-TLS listeners).
    pub fn new(
        shared: Arc<Shared>,
        conn: Connection,
        client: SocketAddr,
        local: SocketAddr,
        kind: ListenerKind,
    ) -> Self {
        let cached = shared
            .pass_cache
            .contains(canonical(client.ip()), Instant::now());
        let dnsbl = if cached {
            None
        } else {
            shared.dnsbl.clone().map(|d| {
                let ip = client.ip();
                tokio::spawn(async move { d.score(ip).await })
            })
        };
        Self {
            shared,
            conn,
            client,
            local,
            kind,
            started: Instant::now(),
            helo: None,
            esmtp: false,
            ehlo_answered: false,
            score: 0,
            fired: Vec::new(),
            errors: 0,
            unknown: 0,
            messages: 0,
            backend: None,
            txn: None,
            dnsbl,
            dnsbl_done: false,
            cached,
            backend_auth: None,
            authenticated: false,
            shutdown: None,
            last_backend_reply: None,
            bytes: 0,
            recipients: 0,
            sender: None,
            refused: None,
            pipeline: Pipeline::default(),
        }
    }

    fn source(&self) -> IpAddr {
        canonical(self.client.ip())
    }

    fn reply(&mut self, reply: Reply) {
        self.conn.queue(reply.to_wire().as_bytes());
    }

    /// Records a check that fired and says what it means now.
    fn fire(&mut self, check: Check, detail: impl Into<String>) -> Outcome {
        let setting = self.shared.config.checks.get(check);
        let detail = detail.into();
        self.fired.push(check.name());
        tracing::info!(client = %self.client, check = check.name(), action = ?setting.action, detail = %detail, "check fired");
        let _ = self.shared.events.send(Event {
            source: self.source(),
            check,
            action: setting.action,
            detail,
        });
        match setting.action {
            Action::Ignore => Outcome::Pass,
            Action::Score => {
                self.score += setting.weight;
                Outcome::Pass
            }
            Action::Reject => {
                self.refuse(SessionVerdict::Rejected);
                Outcome::Reject
            }
            Action::Drop => {
                self.refuse(SessionVerdict::Dropped);
                Outcome::Drop
            }
        }
    }

    /// Remembers the worst refusal of the session.
    fn refuse(&mut self, verdict: SessionVerdict) {
        self.refused = self.refused.max(Some(verdict));
    }

    /// How the session ended.
    fn verdict(&self) -> SessionVerdict {
        match self.refused {
            Some(v) => v,
            None if self.messages > 0 => SessionVerdict::Delivered,
            None => SessionVerdict::Clean,
        }
    }

    /// Makes the session end politely (`421`) when `shutdown` turns true while it waits for a
    /// command; a transaction in progress (DATA) finishes first.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Waits for the daemon's shutdown (forever when there is none).
    async fn shutting_down(shutdown: &mut Option<watch::Receiver<bool>>) {
        match shutdown {
            Some(rx) => {
                let _ = rx.wait_for(|s| *s).await;
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        let flow = self.greet().await;
        if matches!(flow, Flow::Continue) {
            self.command_loop().await;
        }
        if let Some(backend) = self.backend.take() {
            self.release_backend(backend).await;
        }
        self.conn.shutdown().await;
        let verdict = self.verdict();
        let end = SessionEnd {
            source: self.source(),
            verdict,
            delivered: self.messages as u64,
            checks: self.fired.clone(),
        };
        self.shared.outcomes.record(&end);
        let _ = self.shared.ends.send(end);
        tracing::info!(
            client = %self.client,
            helo = self.helo.as_deref().unwrap_or("-"),
            sender = self.sender.as_deref().unwrap_or("-"),
            recipients = self.recipients,
            messages = self.messages,
            bytes = self.bytes,
            checks = ?self.fired,
            score = self.score,
            verdict = verdict.name(),
            backend_reply = self.last_backend_reply.as_deref().unwrap_or("-"),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "session"
        );
    }

    /// Hands the backend connection to the pool when the next session can use it as it is
    /// (between transactions, no reply outstanding, no AUTH on it); otherwise ends it with QUIT.
    async fn release_backend(&mut self, backend: Backend) {
        let cfg = &self.shared.config.backend;
        let idle = self.txn.is_none() && self.pipeline.is_empty() && !self.authenticated;
        let unkept = if idle && backend.shareable() && cfg.pool_size > 0 {
            self.shared
                .backend_pool
                .put(backend, cfg.pool_size, cfg.pool_idle)
        } else {
            Some(backend)
        };
        if let Some(backend) = unkept {
            backend.quit().await;
        }
    }

    async fn greet(&mut self) -> Flow {
        let host = self.shared.config.smtp.hostname.clone();
        let pause = self.shared.config.smtp.greet_pause;
        let early = if pause.is_zero() || self.cached {
            self.conn.input_pending()
        } else {
            self.conn.queue(format!("220-{host} ESMTP\r\n").as_bytes());
            if self.conn.flush().await.is_err() {
                return Flow::Close;
            }
            match self.conn.input_within(pause).await {
                Ok(talked) => talked,
                Err(_) => return Flow::Close,
            }
        };
        if early {
            let sniff = self
                .conn
                .peek()
                .iter()
                .take(40)
                .copied()
                .collect::<Vec<u8>>();
            if self.fire(Check::Pregreet, String::from_utf8_lossy(&sniff)) != Outcome::Pass {
                self.reply(Reply::new(
                    521,
                    "5.5.1 Protocol error: talked before the greeting",
                ));
                let _ = self.conn.flush().await;
                return Flow::Close;
            }
        }
        self.reply(Reply::new(220, format!("{host} ESMTP")));
        Flow::Continue
    }

    async fn command_loop(&mut self) {
        let smtp = self.shared.config.smtp.clone();
        loop {
            if !self.conn.has_line() {
                // The end of the buffered group: every forwarded command gets its reply now.
                if let Flow::Close = self.settle_pipeline().await {
                    let _ = self.conn.flush().await;
                    return;
                }
                if self.score > 0 && self.score >= self.shared.config.score.tarpit {
                    tokio::time::sleep(smtp.tarpit_delay).await;
                }
                if self.conn.flush().await.is_err() {
                    return;
                }
                self.conn.shrink_idle();
            }
            let read = tokio::select! {
                biased;
                read = self.conn.read_line(smtp.max_command_line, smtp.command_timeout) => read,
                _ = Self::shutting_down(&mut self.shutdown) => {
                    self.reply(Reply::new(421, "4.3.2 Service shutting down, closing connection"));
                    let _ = self.conn.flush().await;
                    return;
                }
            };
            let line = match read {
                Ok(Some(line)) => line,
                Ok(None) | Err(ConnError::Io(_)) => return,
                Err(ConnError::Timeout) => {
                    self.reply(Reply::new(421, "4.4.2 Timeout, closing connection"));
                    let _ = self.conn.flush().await;
                    return;
                }
            };
            if line.ending == Ending::Eof {
                return;
            }
            match self.handle_line(line).await {
                Flow::Continue => {}
                Flow::Close => {
                    let _ = self.conn.flush().await;
                    return;
                }
            }
        }
    }

    /// Closes with `421` after a drop-action check.
    fn drop_reply(&mut self, text: &str) -> Flow {
        self.reply(Reply::new(421, format!("4.7.0 {text}, closing connection")));
        Flow::Close
    }

    /// Fires `check` for the current command: `Some(flow)` when its action refuses the command
    /// (`refusal`, counted as an error) or drops the session (`421 4.7.0 {drop_text}`).
    fn enforce(
        &mut self,
        check: Check,
        detail: impl Into<String>,
        refusal: Reply,
        drop_text: &str,
    ) -> Option<Flow> {
        match self.fire(check, detail) {
            Outcome::Pass => None,
            Outcome::Drop => Some(self.drop_reply(drop_text)),
            Outcome::Reject => {
                self.reply(refusal);
                Some(self.count_error().unwrap_or(Flow::Continue))
            }
        }
    }

    /// Counts a protocol error; past the limit the `too_many_errors` check fires.
    fn count_error(&mut self) -> Option<Flow> {
        self.errors += 1;
        if self.errors > self.shared.config.smtp.max_errors
            && self.fire(Check::TooManyErrors, format!("{} errors", self.errors)) == Outcome::Drop
        {
            return Some(self.drop_reply("Too many errors"));
        }
        None
    }

    async fn handle_line(&mut self, line: Line) -> Flow {
        // Only a clean RCPT can join the forwarded group; anything else may reply, close or
        // depend on the transaction, so the awaited replies come first.
        if !self.pipeline.is_empty()
            && !may_join_group(&line)
            && let Flow::Close = self.settle_pipeline().await
        {
            return Flow::Close;
        }
        if let Some(kind) = non_smtp(&line.data)
            && self.fire(Check::NonSmtp, kind) != Outcome::Pass
        {
            return self.drop_reply("Not an SMTP client");
        }
        if line.too_long {
            let detail = format!(
                "command line over {} bytes",
                self.shared.config.smtp.max_command_line
            );
            let refusal = Reply::new(500, "5.5.2 Line too long");
            if let Some(flow) = self.enforce(Check::LongLine, detail, refusal, "Line too long") {
                return flow;
            }
        }
        if line.nul {
            let refusal = Reply::new(500, "5.5.2 NUL byte in command");
            if let Some(flow) = self.enforce(
                Check::NulByte,
                "NUL in command",
                refusal,
                "NUL byte in command",
            ) {
                return flow;
            }
        }
        if line.ending == Ending::BareLf || line.bare_cr {
            let refusal = Reply::new(500, "5.5.2 Commands must end with CRLF");
            let detail = "bare LF or CR in command";
            if let Some(flow) = self.enforce(
                Check::BareNewline,
                detail,
                refusal,
                "Bare LF or CR in command",
            ) {
                return flow;
            }
        }
        let raw = line.with_crlf();
        let parsed = match Request::parse(&mut raw.iter()).map(Request::into_owned) {
            Err(e @ (ParseError::InvalidRecipientAddress | ParseError::InvalidSenderAddress)) => {
                literal_path_request(&line.data).ok_or(e)
            }
            other => other,
        };
        if !self.pipeline.is_empty()
            && !matches!(parsed, Ok(Request::Rcpt { .. }))
            && let Flow::Close = self.settle_pipeline().await
        {
            return Flow::Close;
        }
        match parsed {
            Ok(request) => self.dispatch(request, &line.data).await,
            Err(ParseError::UnknownCommand) => {
                self.unknown += 1;
                self.reply(Reply::new(500, "5.5.2 Command unrecognized"));
                if self.unknown > self.shared.config.smtp.max_unknown_commands
                    && self.fire(
                        Check::TooManyUnknownCommands,
                        format!("{} unknown commands", self.unknown),
                    ) == Outcome::Drop
                {
                    return self.drop_reply("Too many unknown commands");
                }
                Flow::Continue
            }
            Err(e) => {
                let text = match e {
                    ParseError::SyntaxError { syntax } => format!("5.5.4 Syntax: {syntax}"),
                    ParseError::InvalidSenderAddress => "5.1.7 Invalid sender address".into(),
                    ParseError::InvalidRecipientAddress => "5.1.3 Invalid recipient address".into(),
                    ParseError::InvalidParameter { param } => {
                        format!("5.5.4 Invalid parameter {param}")
                    }
                    ParseError::UnsupportedParameter { param } => {
                        format!("5.5.4 Unsupported parameter {param}")
                    }
                    _ => "5.5.2 Syntax error".into(),
                };
                self.reply(Reply::new(501, text));
                self.count_error().unwrap_or(Flow::Continue)
            }
        }
    }

    async fn dispatch(&mut self, request: Request<String>, raw: &[u8]) -> Flow {
        match request {
            Request::Ehlo { host } => self.handle_helo(host, true).await,
            Request::Helo { host } => self.handle_helo(host, false).await,
            Request::Mail { from } => self.handle_mail(from.address, raw).await,
            Request::Rcpt { to } => self.handle_rcpt(to.address, raw).await,
            Request::Data => self.handle_data().await,
            Request::Rset => {
                self.txn = None;
                match self.backend.as_mut() {
                    Some(b) => match b.command(b"RSET").await {
                        Ok(r) => self.reply(r),
                        Err(e) => return self.backend_lost(e),
                    },
                    None => self.reply(Reply::new(250, "2.0.0 Ok")),
                }
                Flow::Continue
            }
            Request::Noop { .. } => {
                self.reply(Reply::new(250, "2.0.0 Ok"));
                Flow::Continue
            }
            Request::Quit => {
                self.reply(Reply::new(221, "2.0.0 Bye"));
                Flow::Close
            }
            Request::StartTls => self.handle_starttls().await,
            Request::Vrfy { .. } => {
                self.reply(Reply::new(
                    252,
                    "2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
                ));
                Flow::Continue
            }
            Request::Help { .. } => {
                self.reply(Reply::new(214, "2.0.0 See RFC 5321"));
                Flow::Continue
            }
            Request::Auth { .. } => self.handle_auth(raw).await,
            Request::Bdat { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => {
                self.reply(Reply::new(502, "5.5.1 Command not implemented"));
                self.count_error().unwrap_or(Flow::Continue)
            }
        }
    }

    fn capabilities(&self) -> Vec<String> {
        let smtp = &self.shared.config.smtp;
        let mut caps = vec![
            smtp.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", smtp.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.shared.tls.is_some() && !self.conn.is_tls() {
            caps.push("STARTTLS".into());
        }
        if self.auth_possible()
            && let Some(mechanisms) = &self.backend_auth
        {
            caps.push(format!("AUTH {mechanisms}"));
        }
        caps
    }

    /// AUTH is relayed on submission ports, and only inside TLS (no password in clear).
    fn auth_possible(&self) -> bool {
        self.kind != ListenerKind::Smtp && self.conn.is_tls()
    }

    /// Relays a SASL exchange between client and backend; the backend decides.
    async fn handle_auth(&mut self, raw: &[u8]) -> Flow {
        if self.kind == ListenerKind::Smtp || (self.backend_auth.is_none() && self.conn.is_tls()) {
            self.reply(Reply::new(502, "5.5.1 AUTH not available on this port"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        if !self.conn.is_tls() {
            self.reply(Reply::new(
                538,
                "5.7.11 Encryption required for requested authentication mechanism",
            ));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        if self.authenticated || self.txn.is_some() {
            self.reply(Reply::new(503, "5.5.1 AUTH not allowed now"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        let Some(backend) = self.backend.as_mut() else {
            self.reply(Reply::new(503, "5.5.1 Send EHLO first"));
            return Flow::Continue;
        };
        // Whatever the outcome, the connection carries this client's SASL state from now on.
        backend.keep_private();
        let mut reply = match backend.command(raw).await {
            Ok(r) => r,
            Err(e) => return self.backend_lost(e),
        };
        // A bounded challenge/response exchange; the client's responses are never logged.
        for _ in 0..MAX_SASL_STEPS {
            if reply.code != 334 {
                break;
            }
            self.reply(reply);
            if self.conn.flush().await.is_err() {
                return Flow::Close;
            }
            let smtp = &self.shared.config.smtp;
            let line = match self
                .conn
                .read_line(MAX_SASL_LINE, smtp.command_timeout)
                .await
            {
                Ok(Some(line)) if !line.too_long && line.ending != Ending::Eof => line,
                _ => return Flow::Close,
            };
            let Some(backend) = self.backend.as_mut() else {
                return Flow::Close;
            };
            reply = match backend.command(&line.data).await {
                Ok(r) => r,
                Err(e) => return self.backend_lost(e),
            };
        }
        if reply.code == 235 {
            self.authenticated = true;
        }
        let failed = !reply.is_positive();
        self.reply(reply);
        if failed {
            return self.count_error().unwrap_or(Flow::Continue);
        }
        Flow::Continue
    }

    async fn handle_helo(&mut self, host: String, esmtp: bool) -> Flow {
        if !self.ehlo_answered && self.conn.buffered() > 0 {
            let outcome = self.fire(Check::Pipelining, "commands sent before the EHLO reply");
            if outcome != Outcome::Pass {
                return self.drop_reply("Protocol error: pipelining before the EHLO reply");
            }
        }
        // A new HELO resets the transaction and any backend session (it was made with the old one).
        self.txn = None;
        if let Some(b) = self.backend.take() {
            b.quit().await;
        }
        let own = [self.local.ip()];
        let findings = helo::inspect(&self.shared.config.helo, &host, self.client.ip(), &own);
        let mut refused = None;
        for finding in &findings {
            let check = Check::from_helo(*finding);
            match self.fire(check, host.clone()) {
                Outcome::Drop => return self.drop_reply("HELO refused"),
                Outcome::Reject => refused = Some(check.name()),
                Outcome::Pass => {}
            }
        }
        let lists = self.shared.reputation.check_helo(&host);
        if !lists.is_empty() {
            match self.fire(
                Check::Reputation,
                format!("HELO {host} in {}", lists.join(", ")),
            ) {
                Outcome::Drop => return self.drop_reply("HELO refused"),
                Outcome::Reject => refused = Some(Check::Reputation.name()),
                Outcome::Pass => {}
            }
        }
        if let Some(check) = refused {
            self.reply(Reply::new(
                550,
                format!("5.7.1 HELO/EHLO {host} refused ({check})"),
            ));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        self.helo = Some(host);
        self.esmtp = esmtp;
        // On submission ports inside TLS the backend is reached now: its AUTH mechanisms are
        // offered to the client and the exchange is relayed to it.
        if (self.shared.config.backend.connect_at == ConnectAt::Ehlo
            || (esmtp && self.auth_possible()))
            && let Err(flow) = self.ensure_backend().await
        {
            self.ehlo_answered = true;
            return flow;
        }
        if esmtp {
            let caps = self.capabilities();
            self.reply(Reply::multi(250, caps));
        } else {
            let host = self.shared.config.smtp.hostname.clone();
            self.reply(Reply::new(250, host));
        }
        self.ehlo_answered = true;
        Flow::Continue
    }

    /// Collects the DNSBL result once (bounded by the DNSBL timeout inside the lookup).
    async fn dnsbl_verdict(&mut self) -> Outcome {
        if self.dnsbl_done {
            return Outcome::Pass;
        }
        self.dnsbl_done = true;
        let lists = self.shared.reputation.check_ip(self.source());
        if !lists.is_empty() {
            let detail = format!("client address in {}", lists.join(", "));
            let outcome = self.fire(Check::Reputation, detail);
            if outcome != Outcome::Pass {
                return outcome;
            }
        }
        let Some(task) = self.dnsbl.take() else {
            return Outcome::Pass;
        };
        match task.await {
            Ok(score) if score.listed => {
                let zones: Vec<String> = score.hits.iter().map(|h| h.zone.clone()).collect();
                self.fire(
                    Check::Dnsbl,
                    format!("score {} ({})", score.total, zones.join(", ")),
                )
            }
            Ok(_) => Outcome::Pass,
            Err(e) => {
                tracing::warn!(client = %self.client, error = %e, "DNSBL lookup task failed; not counted");
                Outcome::Pass
            }
        }
    }

    /// The score thresholds, as a refusal when crossed.
    fn score_refusal(&self) -> Option<Reply> {
        let s = &self.shared.config.score;
        if self.score >= s.reject {
            Some(Reply::new(
                550,
                format!(
                    "5.7.1 Refused: session score {} (checks: {})",
                    self.score,
                    self.fired.join(", ")
                ),
            ))
        } else if self.score >= s.tempfail {
            Some(Reply::new(
                451,
                format!("4.7.1 Try again later: session score {}", self.score),
            ))
        } else {
            None
        }
    }

    fn identity(&self) -> ClientIdentity {
        ClientIdentity {
            addr: SocketAddr::new(self.source(), self.client.port()),
            name: None,
            helo: self.helo.clone(),
            esmtp: self.esmtp,
            login: None,
        }
    }

    /// Opens the backend session if there is none; on failure the client got `451` (Err(Continue))
    /// or the session must close.
    async fn ensure_backend(&mut self) -> Result<(), Flow> {
        if self.backend.is_some() {
            return Ok(());
        }
        let shared = self.shared.clone();
        match Backend::connect(
            &shared.config.backend,
            &shared.backend_tls,
            &shared.backend_pool,
            &self.identity(),
            self.local,
            &shared.config.smtp.hostname,
        )
        .await
        {
            Ok((mut backend, ehlo, reused)) => {
                self.shared.metrics.backend_session(reused);
                backend.record_reply_times(self.shared.metrics.backend_reply_histogram());
                self.backend_auth = ehlo.lines.iter().skip(1).find_map(|l| {
                    let (keyword, rest) = l.split_once(' ')?;
                    keyword
                        .eq_ignore_ascii_case("AUTH")
                        .then(|| rest.trim().to_string())
                });
                self.backend = Some(backend);
                Ok(())
            }
            Err(e) => {
                tracing::error!(client = %self.client, error = %e, "no backend available");
                self.reply(Reply::new(
                    451,
                    "4.4.1 Mail service temporarily unavailable, try again later",
                ));
                Err(Flow::Continue)
            }
        }
    }

    /// The backend failed mid-session: the client gets `451` and may try again in this session
    /// (the next MAIL reconnects).
    fn backend_lost(&mut self, e: super::backend::BackendError) -> Flow {
        tracing::error!(client = %self.client, error = %e, "backend failed");
        self.backend = None;
        self.txn = None;
        self.reply(Reply::new(
            451,
            "4.4.2 Mail service temporarily unavailable, try again later",
        ));
        Flow::Continue
    }

    async fn handle_mail(&mut self, from: String, raw: &[u8]) -> Flow {
        if self.helo.is_none() {
            let refusal = Reply::new(503, "5.5.1 Send HELO/EHLO first");
            let detail = "MAIL before HELO/EHLO";
            if let Some(flow) =
                self.enforce(Check::HeloMissing, detail, refusal, "HELO/EHLO required")
            {
                return flow;
            }
        }
        if self.txn.is_some() {
            self.reply(Reply::new(503, "5.5.1 Nested MAIL command"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        if self.messages >= self.shared.config.smtp.max_messages {
            self.reply(Reply::new(
                452,
                "4.5.3 Too many messages in this session, try again later",
            ));
            return Flow::Continue;
        }
        match self.dnsbl_verdict().await {
            Outcome::Drop => return self.drop_reply("Client host refused"),
            Outcome::Reject => {
                self.reply(Reply::new(
                    554,
                    "5.7.1 Service unavailable; client host refused by policy",
                ));
                return Flow::Continue;
            }
            Outcome::Pass => {}
        }
        let lists = self.shared.reputation.check_sender(&from);
        if !lists.is_empty() {
            let detail = format!("sender {from} in {}", lists.join(", "));
            let refusal = Reply::new(550, format!("5.7.1 <{from}>: sender refused by policy"));
            if let Some(flow) = self.enforce(Check::Reputation, detail, refusal, "Sender refused") {
                return flow;
            }
        }
        if let Some(refusal) = self.score_refusal() {
            self.refuse(if refusal.code >= 500 {
                SessionVerdict::Rejected
            } else {
                SessionVerdict::Tempfailed
            });
            self.reply(refusal);
            return Flow::Continue;
        }
        if let Err(flow) = self.ensure_backend().await {
            return flow;
        }
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Continue;
        };
        if backend.pipelining() && self.conn.has_line() {
            backend.queue_command(raw);
            self.pipeline.push(Awaiting::Mail { from });
            // Assumed open until the reply is settled (a refusal closes it again).
            self.txn = Some(Transaction::default());
            return Flow::Continue;
        }
        match backend.command(raw).await {
            Ok(reply) => {
                if reply.is_positive() {
                    self.txn = Some(Transaction::default());
                    self.sender = Some(from);
                }
                self.reply(reply);
                Flow::Continue
            }
            Err(e) => self.backend_lost(e),
        }
    }

    async fn handle_rcpt(&mut self, to: String, raw: &[u8]) -> Flow {
        // A recipient the gateway would answer itself fires checks and counts errors as the
        // settled transaction dictates: settle what is awaited first.
        if !self.pipeline.is_empty()
            && !self.rcpt_forwardable(&to, raw)
            && let Flow::Close = self.settle_pipeline().await
        {
            return Flow::Close;
        }
        let Some(txn) = self.txn.as_mut() else {
            self.reply(Reply::new(503, "5.5.1 Need MAIL before RCPT"));
            return self.count_error().unwrap_or(Flow::Continue);
        };
        txn.tried += 1;
        if txn.tried > self.shared.config.smtp.max_recipients {
            self.reply(Reply::new(452, "4.5.3 Too many recipients"));
            return Flow::Continue;
        }
        // The policy judges the path exactly as the client wrote it (the parser drops source
        // routes, but the raw line, route included, is what the backend would receive).
        let raw_path = raw_path(raw).unwrap_or_else(|| to.clone());
        match relay::check_recipient(
            &self.shared.config.relay,
            self.source(),
            self.authenticated,
            &raw_path,
        ) {
            RelayVerdict::Accept { .. } => {}
            RelayVerdict::Reject {
                reason: reason @ (RelayRefusal::InvalidSyntax(_) | RelayRefusal::NullRecipient),
            } => {
                self.reply(Reply::new(501, format!("5.1.3 <{to}>: {reason}")));
                return self.count_error().unwrap_or(Flow::Continue);
            }
            RelayVerdict::Reject { reason } => {
                let outcome = self.fire(Check::RelayAttempt, format!("{to}: {reason}"));
                // Refused whatever the check's action (which only decides score or drop).
                self.refuse(SessionVerdict::Rejected);
                self.reply(Reply::new(550, format!("5.7.1 <{to}>: {reason}")));
                if outcome == Outcome::Drop {
                    return self.drop_reply("Relay attempts");
                }
                return self.count_error().unwrap_or(Flow::Continue);
            }
        }
        if let Some(refusal) = self.score_refusal() {
            self.refuse(if refusal.code >= 500 {
                SessionVerdict::Rejected
            } else {
                SessionVerdict::Tempfailed
            });
            self.reply(refusal);
            return Flow::Continue;
        }
        let Some(backend) = self.backend.as_mut() else {
            self.reply(Reply::new(503, "5.5.1 Need MAIL before RCPT"));
            return Flow::Continue;
        };
        // Joins the group when more commands are buffered, and always once replies are awaited
        // (they come in order: this one is read after them).
        if backend.pipelining() && (self.conn.has_line() || !self.pipeline.is_empty()) {
            backend.queue_command(raw);
            self.pipeline.push(Awaiting::Rcpt);
            return Flow::Continue;
        }
        match backend.command(raw).await {
            Ok(reply) => {
                if reply.is_positive() {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.accepted += 1;
                    }
                    self.recipients += 1;
                }
                self.reply(reply);
                Flow::Continue
            }
            Err(e) => self.backend_lost(e),
        }
    }

    /// Whether `handle_rcpt` would forward this recipient without firing a check or answering it
    /// itself, were the transaction open (as it is assumed while its MAIL reply is awaited).
    fn rcpt_forwardable(&self, to: &str, raw: &[u8]) -> bool {
        let Some(txn) = self.txn.as_ref() else {
            return false;
        };
        let raw_path = raw_path(raw).unwrap_or_else(|| to.to_string());
        txn.tried < self.shared.config.smtp.max_recipients
            && matches!(
                relay::check_recipient(
                    &self.shared.config.relay,
                    self.source(),
                    self.authenticated,
                    &raw_path,
                ),
                RelayVerdict::Accept { .. }
            )
            && self.score_refusal().is_none()
            && self.backend.is_some()
    }

    /// Reads the reply of every forwarded command, in order, and applies each as the unpipelined
    /// command would have: transaction, sender, recipient counts, errors, the reply relayed.
    async fn settle_pipeline(&mut self) -> Flow {
        while let Some(awaiting) = self.pipeline.oldest() {
            let reply = match self.backend.as_mut() {
                Some(backend) => backend.pipelined_reply().await,
                None => Err(super::backend::BackendError::Closed),
            };
            match super::pipeline::settle(awaiting, self.txn.is_some(), reply) {
                Settled::Opened { from, reply } => {
                    self.sender = Some(from);
                    self.reply(reply);
                }
                Settled::NotOpened(reply) => {
                    self.txn = None;
                    self.reply(reply);
                }
                Settled::Accepted(reply) => {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.accepted += 1;
                    }
                    self.recipients += 1;
                    self.reply(reply);
                }
                Settled::Refused(reply) => self.reply(reply),
                Settled::NoTransaction { discarded } => {
                    if let (Err(e), Some(_)) = (discarded, self.backend.as_ref()) {
                        tracing::warn!(client = %self.client, error = %e, "backend failed after a refused MAIL; reconnecting at the next one");
                        self.backend = None;
                    }
                    self.reply(Reply::new(503, "5.5.1 Need MAIL before RCPT"));
                    if let Some(flow) = self.count_error() {
                        self.pipeline.clear();
                        return flow;
                    }
                }
                Settled::Lost(e) => {
                    let _ = self.backend_lost(e);
                }
            }
        }
        Flow::Continue
    }

    async fn handle_data(&mut self) -> Flow {
        let accepted = self.txn.as_ref().map(|t| t.accepted).unwrap_or(0);
        if self.txn.is_none() {
            self.reply(Reply::new(503, "5.5.1 Need MAIL before DATA"));
            return self.count_error().unwrap_or(Flow::Continue);
        }
        if accepted == 0 {
            self.reply(Reply::new(554, "5.5.1 No valid recipients"));
            return Flow::Continue;
        }
        if self.conn.buffered() > 0 {
            let outcome = self.fire(Check::Pipelining, "message text sent before the 354 reply");
            if outcome != Outcome::Pass {
                self.txn = None;
                self.backend = None;
                return self.drop_reply("Protocol error: message text before 354");
            }
        }
        let Some(backend) = self.backend.as_mut() else {
            self.reply(Reply::new(503, "5.5.1 Need MAIL before DATA"));
            return Flow::Continue;
        };
        let go_ahead = match backend.command(b"DATA").await {
            Ok(reply) => reply,
            Err(e) => return self.backend_lost(e),
        };
        if go_ahead.code != 354 {
            self.txn = None;
            self.reply(go_ahead);
            return Flow::Continue;
        }
        self.reply(go_ahead);
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        let smtp = &self.shared.config.smtp;
        let long = self.shared.config.checks.get(Check::LongLine).action;
        let limits = TextLimits {
            max_size: smtp.max_message_size,
            max_line: smtp.max_text_line,
            bare_newlines: smtp.bare_newlines,
            timeout: smtp.data_timeout,
            refuse_long_lines: matches!(long, Action::Reject | Action::Drop),
        };
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Close;
        };
        let (outcome, size) = relay_message(&mut self.conn, backend, &limits).await;
        self.txn = None;
        self.bytes += size;
        match outcome {
            DataOutcome::Relayed(reply) => {
                self.shared.metrics.message(reply.is_positive());
                if reply.is_positive() {
                    self.messages += 1;
                    if self.fired.is_empty() {
                        self.shared.pass_cache.insert(self.source(), Instant::now());
                    }
                }
                self.last_backend_reply = Some(reply.summary());
                self.reply(reply);
                Flow::Continue
            }
            DataOutcome::Refused(violation) => {
                self.shared.metrics.message(false);
                // Abort the backend transaction: it never saw the final dot.
                self.backend = None;
                let check = match violation {
                    TextViolation::BareNewline => Some(Check::BareNewline),
                    TextViolation::LongLine => Some(Check::LongLine),
                    TextViolation::TooBig => None,
                };
                let mut close = false;
                if let Some(check) = check {
                    close = self.fire(check, "in message text") == Outcome::Drop;
                }
                self.reply(violation.reply());
                if close { Flow::Close } else { Flow::Continue }
            }
            DataOutcome::BackendFailed(e) => self.backend_lost(e),
            DataOutcome::ClientGone => {
                self.backend = None;
                Flow::Close
            }
        }
    }

    async fn handle_starttls(&mut self) -> Flow {
        let Some(acceptor) = self.shared.tls.clone() else {
            self.reply(Reply::new(502, "5.5.1 STARTTLS not available"));
            return Flow::Continue;
        };
        if self.conn.is_tls() || self.kind == ListenerKind::Smtps {
            self.reply(Reply::new(503, "5.5.1 TLS already active"));
            return Flow::Continue;
        }
        // Anything pipelined after STARTTLS is plaintext an attacker could have injected
        // (CVE-2011-0411): it is discarded, never interpreted inside the TLS session.
        let discarded = self.conn.discard_input();
        if discarded > 0 {
            tracing::warn!(client = %self.client, discarded, "plaintext after STARTTLS discarded");
        }
        self.reply(Reply::new(220, "2.0.0 Ready to start TLS"));
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        if let Err(e) = self
            .conn
            .start_tls(&acceptor, self.shared.config.smtp.command_timeout)
            .await
        {
            self.shared.metrics.tls_handshake(false);
            tracing::info!(client = %self.client, error = %e, "TLS handshake failed");
            return Flow::Close;
        }
        self.shared.metrics.tls_handshake(true);
        // Forget everything learnt in plaintext (RFC 3207 section 4.2).
        self.helo = None;
        self.esmtp = false;
        self.ehlo_answered = false;
        self.txn = None;
        if let Some(b) = self.backend.take() {
            b.quit().await;
        }
        Flow::Continue
    }
}

/// A RCPT line no line-level check fires on: the only kind of line that can be handled while
/// forwarded commands still await their replies.
pub(crate) fn may_join_group(line: &Line) -> bool {
    line.ending == Ending::CrLf
        && !line.too_long
        && !line.nul
        && !line.bare_cr
        && line
            .data
            .get(..5)
            .is_some_and(|verb| verb.eq_ignore_ascii_case(b"RCPT "))
        && non_smtp(&line.data).is_none()
}

/// The path between `<` and `>` of a MAIL/RCPT line as the client wrote it (quotes respected).
pub(crate) fn raw_path(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let start = text.find('<')? + 1;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text[start..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(text[start..start + i].to_string()),
            _ => {}
        }
    }
    None
}

/// smtp-proto refuses address literals in paths (`user@[198.51.100.7]`), which RFC 5321 4.1.2
/// allows; such MAIL/RCPT paths are extracted here so the relay policy decides on them. The raw
/// line (parameters included) is what gets forwarded.
pub(crate) fn literal_path_request(line: &[u8]) -> Option<Request<String>> {
    // The verb is compared as bytes: the client's text may hold a multi-byte character where a
    // string slice at 8 or 10 would cut through it.
    let verb_is = |verb: &[u8]| {
        line.get(..verb.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(verb))
    };
    let (rcpt, rest) = if verb_is(b"RCPT TO:") {
        (true, line.get(8..)?)
    } else if verb_is(b"MAIL FROM:") {
        (false, line.get(10..)?)
    } else {
        return None;
    };
    let inner = std::str::from_utf8(rest)
        .ok()?
        .trim_start()
        .strip_prefix('<')?;
    let address = &inner[..inner.find('>')?];
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || !(domain.starts_with('[') && domain.ends_with(']')) {
        return None;
    }
    Some(if rcpt {
        Request::Rcpt {
            to: smtp_proto::RcptTo {
                address: address.to_string(),
                orcpt: None,
                rrvs: 0,
                flags: 0,
            },
        }
    } else {
        Request::Mail {
            from: smtp_proto::MailFrom {
                address: address.to_string(),
                ..Default::default()
            },
        }
    })
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Recognises traffic that is not SMTP: HTTP requests, proxy CONNECT, a TLS ClientHello sent to a
/// plaintext port, or binary bytes.
pub(crate) fn non_smtp(line: &[u8]) -> Option<&'static str> {
    const HTTP: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
        b"TRACE ",
    ];
    if line.starts_with(b"CONNECT ") {
        return Some("proxy CONNECT");
    }
    if HTTP.iter().any(|verb| line.starts_with(verb))
        || line.starts_with(b"Host:")
        || line.starts_with(b"User-Agent:")
    {
        return Some("HTTP request");
    }
    if line.first() == Some(&0x16) && line.get(1) == Some(&0x03) {
        return Some("TLS handshake on a plaintext port");
    }
    let controls = line
        .iter()
        .filter(|b| (**b < 0x20 && **b != b'\t' && **b != b'\r') || **b == 0x7f)
        .count();
    if controls > 0 && controls * 4 >= line.len().max(1) {
        return Some("binary data");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::non_smtp;

    #[test]
    fn raw_paths_keep_what_the_parser_drops() {
        assert_eq!(
            super::raw_path(b"RCPT TO:<@evil.test:user@example.org>").as_deref(),
            Some("@evil.test:user@example.org")
        );
        assert_eq!(
            super::raw_path(b"RCPT TO:<\"a>b\"@example.org> NOTIFY=NEVER").as_deref(),
            Some("\"a>b\"@example.org")
        );
        assert_eq!(super::raw_path(b"RCPT TO:user@example.org"), None);
    }

    #[test]
    fn address_literal_paths_reach_the_policy() {
        use smtp_proto::Request;
        match super::literal_path_request(b"RCPT TO:<user@[198.51.100.7]> NOTIFY=NEVER") {
            Some(Request::Rcpt { to }) => assert_eq!(to.address, "user@[198.51.100.7]"),
            other => panic!("{other:?}"),
        }
        match super::literal_path_request(b"mail from: <a@[IPv6:2001:db8::1]>") {
            Some(Request::Mail { from }) => assert_eq!(from.address, "a@[IPv6:2001:db8::1]"),
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"RCPT TO:<user@example.org>"[..],
            b"RCPT TO:<@[1.2.3.4]>",
            b"RCPT TO:user@[1.2.3.4]",
            b"VRFY x",
        ] {
            assert!(
                super::literal_path_request(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn recognises_non_smtp() {
        assert_eq!(non_smtp(b"GET / HTTP/1.1"), Some("HTTP request"));
        assert_eq!(
            non_smtp(b"CONNECT mx.example:25 HTTP/1.1"),
            Some("proxy CONNECT")
        );
        assert_eq!(
            non_smtp(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some("TLS handshake on a plaintext port")
        );
        assert_eq!(non_smtp(&[0x01, 0x02, 0x03, b'a']), Some("binary data"));
        for ok in [
            &b"EHLO mx.example.org"[..],
            b"MAIL FROM:<a@b>",
            b"HELO\tx",
            b"quit",
        ] {
            assert_eq!(non_smtp(ok), None, "{}", String::from_utf8_lossy(ok));
        }
    }
}

//! One client session: banner (with pregreet detection), the command loop with its checks,
//! and the live forwarding of clean transactions to the backend. Every wait is bounded: each
//! command by `smtp.command_timeout`, the whole session by `smtp.max_session_duration`, each
//! write to the client by `smtp.write_timeout` (`connection.rs`).
//!
//! Replies to a pipelined group are queued and written together when no further complete command
//! is buffered. Every reply to MAIL, RCPT, BDAT and the final reply after DATA that says 2xx is
//! the backend's own: the gateway never answers `250` for mail the backend did not accept.
//!
//! When the backend offers PIPELINING and the client's next command is already buffered, a MAIL
//! or RCPT that passed every gateway check is queued towards the backend instead of waiting for
//! its reply (`pipeline.rs`). The awaited replies are settled, in order, before anything whose
//! handling depends on them: a recipient the gateway refuses, any other command, or the end of
//! the buffered group. A DATA ending the group is written with them and its reply read after
//! theirs; the gateway then decides on the settled transaction, as unpipelined (`data.rs`). Until
//! its reply is read, a forwarded MAIL's transaction is assumed open.
//!
//! ## Layout (one `impl Session` block per file)
//! - `mod.rs`: the session state, the run loop (banner, command loop with its deadlines, session
//!   line), and what a fired check does (`fire`, `enforce`, errors, the score thresholds);
//! - `line.rs`: reading a command (a line in progress that is plainly not SMTP is not waited
//!   for), line checks, parsing, dispatch by verb (and the one-line verbs: RSET, NOOP, QUIT,
//!   VRFY, HELP; the junk-command count);
//! - `ehlo.rs`, `auth.rs`, `mail.rs`, `rcpt.rs`, `data.rs`, `bdat.rs`, `starttls.rs`: one verb
//!   each;
//! - `backend.rs`: the session's backend: open it (at most `backend.max_connections_per_session`
//!   times), lose it, settle its pipelined replies, release it to the pool;
//! - `fired.rs`: the checks that fired, one counter per check;
//! - `dns_checks.rs`: the client's name (FCrDNS), SPF at MAIL FROM, the `Authentication-Results`
//!   header;
//! - `greylist.rs`: greylisting at RCPT and what bypasses it.

mod auth;
mod backend;
mod bdat;
mod data;
mod dns_checks;
mod ehlo;
mod fired;
mod greylist;
pub(crate) mod line;
mod mail;
mod rcpt;
mod starttls;
mod waits;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use tokio::sync::watch;

use super::{
    Shared,
    backend::Backend,
    config::ListenerKind,
    connection::{ConnError, Connection, Ending},
    pipeline::Pipeline,
    reply::Reply,
};
use crate::{
    checks::{Action, Check},
    events::{Event, SessionEnd, SessionVerdict},
    policy::{dnsbl::DnsblScore, pass_cache::PassLookup},
    smtp::profile::Profile,
};
use waits::{Raced, Stall};

/// What the command loop does next.
enum Flow {
    Continue,
    Close,
}

/// What a fired check does to the current command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckEffect {
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
    /// The sender of MAIL FROM (greylisting's triplet).
    from: String,
    /// Recipients the backend accepted.
    accepted: usize,
    /// How the message text is being sent: RFC 3030 forbids DATA and BDAT in one transaction.
    body: Body,
    /// The forged `Authentication-Results` filter of a chunked message, from its first chunk
    /// (`bdat.rs`; `None` when `[auth_results]` has nothing to add).
    chunk_headers: Option<crate::smtp::chunk_headers::ChunkHeaders>,
    /// The MAIL FROM line the gateway answered itself and has not sent yet: it goes to the
    /// backend with the first recipient (`backend.mail_with_first_rcpt`, `mail.rs`).
    held_mail: Option<Box<[u8]>>,
    /// What the backend answered that held MAIL when it refused it (or `451` when it failed on
    /// it): the reply of every RCPT of this transaction, which the backend does not have.
    refused: Option<Reply>,
}

impl Transaction {
    /// The backend has this transaction (or is assumed to while its MAIL reply is awaited):
    /// its MAIL was sent and not refused.
    fn at_backend(&self) -> bool {
        self.held_mail.is_none() && self.refused.is_none()
    }

    /// Open for recipients: the backend did not refuse its held MAIL.
    fn open(&self) -> bool {
        self.refused.is_none()
    }
}

/// How a transaction's message text is sent, once the client chose.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Neither DATA nor BDAT yet.
    #[default]
    None,
    /// DATA was tried (and refused without ending the transaction).
    Data,
    /// BDAT chunks (`bdat.rs`).
    Chunks {
        /// Client bytes received in the chunks so far (`smtp.max_message_size` applies to them).
        size: u64,
        /// When every chunk must be in: `smtp.max_data_duration` from the first BDAT, or the end
        /// of the session if sooner.
        deadline: tokio::time::Instant,
    },
}

/// Per-session state.
pub struct Session {
    // Connection.
    /// What every session of this configuration generation shares (config, lists, pool, buses).
    shared: Arc<Shared>,
    /// The client connection (plain or TLS): buffered input, queued replies.
    conn: Connection,
    /// The listener's kind: AUTH and STARTTLS depend on it.
    kind: ListenerKind,
    /// The listener's policy profile: the checks' actions, greet pause, DNSBL, relay rules,
    /// AUTH required.
    profile: Arc<Profile>,
    /// The gateway's own address on this connection (HELO literal check, identity to the backend).
    local: SocketAddr,
    /// When the connection was accepted, for the session line.
    started: Instant,
    /// When the session must end, whatever the client does (`smtp.max_session_duration`).
    ends_by: tokio::time::Instant,
    /// Daemon shutdown: an idle session is told `421` at its next command wait.
    shutdown: Option<watch::Receiver<bool>>,

    // Client identity.
    /// The client's address as accepted (possibly IPv4-mapped; see [`Session::source`]).
    client: SocketAddr,
    /// The client passed recently (the pass cache): the slow checks are skipped.
    passed_recently: bool,
    /// The state store did not answer about the client and `store.on_timeout = "closed"`: the
    /// greeting is a 421.
    store_refused: bool,
    /// The DNSBL lookup started at accept, collected at the first MAIL.
    dnsbl: Option<tokio::task::JoinHandle<DnsblScore>>,
    /// The client's address was judged (reputation `ip` lists, DNSBL): once per session.
    address_checked: bool,
    /// A DNSWL (a DNSBL site of negative weight) lists the client: never greylisted.
    dnswl: bool,
    /// A triplet of this session passed greylisting (counted once towards the auto-allowlist).
    greylist_passed: bool,
    /// The client's name (looked up from the connect on) and the SPF verdict.
    dns: dns_checks::DnsState,

    // Handshake.
    /// The HELO/EHLO name the client gave (none before, and again none after STARTTLS).
    helo: Option<String>,
    /// The client said EHLO (not HELO).
    esmtp: bool,
    /// The EHLO reply was sent (pipelining is legitimate from then on).
    ehlo_answered: bool,

    // Transaction.
    /// The open transaction, if any (boxed: an idle session holds only the pointer).
    txn: Option<Box<Transaction>>,
    /// The last sender the backend accepted, for the session line.
    sender: Option<String>,
    /// Recipients the backend accepted over the session.
    recipients: usize,
    /// Messages the backend accepted over the session.
    messages: usize,
    /// Message text bytes relayed over the session.
    bytes: u64,
    /// Last backend reply to a final DATA, for the session log line.
    last_backend_reply: Option<String>,
    /// RCPT/DATA still answered `503` without counting an error: the rest of an RFC 2920 group
    /// whose MAIL was refused or whose transaction was lost (at most `max_recipients` + 1).
    excused_503s: usize,

    // Backend.
    /// The backend session carrying this client's transactions, once opened.
    backend: Option<Backend>,
    /// SASL mechanisms the backend offers (its EHLO `AUTH` line), relayed on submission ports.
    backend_auth: Option<String>,
    /// MAIL/RCPT commands forwarded to the backend whose replies are not read yet.
    pipeline: Pipeline,
    /// Backend sessions opened, taken from the pool or tried in vain so far, bounded by
    /// `backend.max_connections_per_session`.
    backend_sessions: usize,

    // Scoring.
    /// Sum of the weights of the `score`-action checks that fired.
    score: i32,
    /// The checks that fired, one counter each (session line, events, per-source table).
    fired: fired::FiredChecks,
    /// Protocol errors so far (`max_errors`).
    errors: usize,
    /// Unknown commands so far (`max_unknown_commands`).
    unknown_commands: usize,
    /// Junk commands since the last delivered message (`junk_command_limit`).
    junk_commands: usize,
    /// The worst thing a check or the score did to this session so far.
    worst_refusal: Option<SessionVerdict>,
}

impl Session {
    /// A session on an accepted connection (TLS already done for implicit-TLS listeners);
    /// `pass` is what the pass cache knows of the client ([`PassCache::lookup`]).
    ///
    /// [`PassCache::lookup`]: crate::policy::pass_cache::PassCache::lookup
    pub fn new(
        shared: Arc<Shared>,
        conn: Connection,
        client: SocketAddr,
        local: SocketAddr,
        kind: ListenerKind,
        profile: Arc<Profile>,
        pass: PassLookup,
    ) -> Self {
        let passed_recently = pass == PassLookup::Passed;
        let store_refused = pass == PassLookup::Refuse;
        let dnsbl = if passed_recently || !profile.dnsbl {
            None
        } else {
            shared.dnsbl.clone().map(|d| {
                let ip = client.ip();
                tokio::spawn(async move { d.score(ip).await })
            })
        };
        let dns = dns_checks::DnsState::start(shared.fcrdns.clone(), client.ip());
        let ends_by = tokio::time::Instant::now() + shared.config.smtp.max_session_duration;
        Self {
            shared,
            conn,
            kind,
            profile,
            local,
            started: Instant::now(),
            ends_by,
            shutdown: None,
            client,
            passed_recently,
            store_refused,
            dnsbl,
            address_checked: false,
            dnswl: false,
            greylist_passed: false,
            dns,
            helo: None,
            esmtp: false,
            ehlo_answered: false,
            txn: None,
            sender: None,
            recipients: 0,
            messages: 0,
            bytes: 0,
            last_backend_reply: None,
            excused_503s: 0,
            backend: None,
            backend_auth: None,
            pipeline: Pipeline::default(),
            backend_sessions: 0,
            score: 0,
            fired: fired::FiredChecks::default(),
            errors: 0,
            unknown_commands: 0,
            junk_commands: 0,
            worst_refusal: None,
        }
    }

    /// Makes the session end politely (`421`) when `shutdown` turns true while it waits for a
    /// command; a transaction in progress (DATA) finishes first.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The client's address, IPv4-mapped addresses as IPv4.
    fn source(&self) -> IpAddr {
        self.client.ip().to_canonical()
    }

    /// Queues a reply to the client (written at the end of the pipelined group).
    fn reply(&mut self, reply: Reply) {
        self.conn.queue(reply.to_wire().as_bytes());
    }

    /// Records a check that fired and says what it means now.
    fn fire(&mut self, check: Check, detail: impl Into<String>) -> CheckEffect {
        self.fire_as(check, detail, false)
    }

    /// [`Session::fire`] for evidence a well-behaved client repeats: every STARTTLS client says
    /// its EHLO again inside TLS (RFC 3207), with the same name. The check is logged, counted and
    /// acted on each time, but its weight is added to the score only the first time.
    fn fire_scored_once(&mut self, check: Check, detail: impl Into<String>) -> CheckEffect {
        let repeated = self.fired.contains(check);
        let score = self.score;
        let effect = self.fire(check, detail);
        if repeated {
            self.score = score;
        }
        effect
    }

    /// [`Session::fire`] for a check whose command is refused with a `5xx` whatever its action
    /// (the event says so: it may count towards a ban).
    fn fire_refusing(&mut self, check: Check, detail: impl Into<String>) -> CheckEffect {
        self.fire_as(check, detail, true)
    }

    fn fire_as(&mut self, check: Check, detail: impl Into<String>, refused: bool) -> CheckEffect {
        let setting = self.profile.checks.get(check);
        self.fire_with(check, setting, detail, refused, false)
    }

    /// [`Session::fire_as`] with an explicit `setting` (a check whose setting depends on its
    /// finding, e.g. the SPF result); a `temporary` finding is refused with a `4xx` by the
    /// caller, so its event is never permanent and its refusal counts as a tempfail.
    fn fire_with(
        &mut self,
        check: Check,
        setting: crate::checks::CheckSetting,
        detail: impl Into<String>,
        refused: bool,
        temporary: bool,
    ) -> CheckEffect {
        let detail = detail.into();
        self.fired.record(check);
        tracing::info!(client = %self.client, check = check.name(), action = ?setting.action, detail = %detail, "check fired");
        let _ = self.shared.events.send(Event {
            source: self.source(),
            check,
            action: setting.action,
            detail,
            permanent: !temporary
                && (refused || matches!(setting.action, Action::Reject | Action::Drop)),
        });
        match setting.action {
            Action::Ignore => CheckEffect::Pass,
            Action::Score => {
                self.score = self.score.saturating_add(setting.weight);
                CheckEffect::Pass
            }
            Action::Reject => {
                self.record_refusal(if temporary {
                    SessionVerdict::Tempfailed
                } else {
                    SessionVerdict::Rejected
                });
                CheckEffect::Reject
            }
            Action::Drop => {
                self.record_refusal(SessionVerdict::Dropped);
                CheckEffect::Drop
            }
        }
    }

    /// Remembers the worst refusal of the session (for its verdict; nothing is sent).
    fn record_refusal(&mut self, verdict: SessionVerdict) {
        self.worst_refusal = self.worst_refusal.max(Some(verdict));
    }

    /// How the session ended.
    fn verdict(&self) -> SessionVerdict {
        match self.worst_refusal {
            Some(v) => v,
            None if self.messages > 0 => SessionVerdict::Delivered,
            None => SessionVerdict::Clean,
        }
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        // What is not the command loop is boxed: this future is allocated at the size of its
        // largest state for the whole session, and a session spends its life waiting in the
        // loop (see `command_loop`).
        let flow = Box::pin(self.greet()).await;
        if matches!(flow, Flow::Continue) {
            self.command_loop().await;
        }
        // The client's last replies (and over TLS the close_notify, in the same write) first:
        // a backend ended with QUIT should not hold them up.
        self.conn.shutdown().await;
        if let Some(backend) = self.backend.take() {
            Box::pin(self.release_backend(backend)).await;
        }
        if self.conn.evicted() {
            tracing::info!(
                client = %self.client,
                evict_idle_after = %humantime::format_duration(self.shared.config.smtp.evict_idle_after),
                "idle session closed to make room for a new client at max_connections"
            );
        } else if self.conn.stalled() {
            tracing::info!(
                client = %self.client,
                write_timeout = %humantime::format_duration(self.shared.config.smtp.write_timeout),
                "client does not read its replies; closed without a goodbye"
            );
        }
        let verdict = self.verdict();
        let end = SessionEnd {
            source: self.source(),
            verdict,
            delivered: self.messages as u64,
            checks: self.fired.names(),
        };
        self.shared.outcomes.record(&end);
        let _ = self.shared.ends.send(end);
        tracing::info!(
            client = %self.client,
            client_name = self.dns.known_name().map(|n| n.xclient_name()).unwrap_or("-"),
            helo = self.helo.as_deref().unwrap_or("-"),
            sender = self.sender.as_deref().unwrap_or("-"),
            recipients = self.recipients,
            messages = self.messages,
            bytes = self.bytes,
            checks = ?self.fired.names(),
            score = self.score,
            verdict = verdict.name(),
            backend_reply = self.last_backend_reply.as_deref().unwrap_or("-"),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "session"
        );
    }

    /// The banner, after the greet pause (a client that talks first fires `pregreet`).
    async fn greet(&mut self) -> Flow {
        let host = self.shared.config.smtp.hostname.clone();
        if self.store_refused {
            self.reply(Reply::new(
                421,
                format!("4.3.0 {host} Service temporarily unavailable, try again later"),
            ));
            let _ = self.conn.flush().await;
            return Flow::Close;
        }
        let pause = self.profile.greet_pause;
        let early = if pause.is_zero() || self.passed_recently {
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
            if self.fire(Check::Pregreet, String::from_utf8_lossy(&sniff)) != CheckEffect::Pass {
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

    /// Reads and handles command lines until the session ends; replies are written at the end
    /// of each buffered group.
    ///
    /// An idle session waits here, in `read_command`, for its whole life: the handling of a
    /// command (MAIL with its DNS checks and backend connect, DATA and BDAT relays, STARTTLS)
    /// and the backend's pipelined replies run boxed, only while they are live, so the session's
    /// future is no bigger than this wait needs (10,000 idle sessions, issue 13).
    async fn command_loop(&mut self) {
        // The generation's configuration, shared: a copy would be per-session memory.
        let shared = self.shared.clone();
        let smtp = &shared.config.smtp;
        loop {
            if !self.conn.has_line() {
                // The end of the buffered group: every forwarded command gets its reply now.
                if !self.pipeline.is_empty()
                    && let Flow::Close = Box::pin(self.settle_pipeline()).await
                {
                    let _ = self.conn.flush().await;
                    return;
                }
                // (A zero delay is no sleep at all: tokio rounds a timer up to its next
                // millisecond tick, so `sleep(0)` would still hold every reply up to 1 ms.)
                if self.score > 0
                    && self.score >= self.shared.config.score.tarpit
                    && !smtp.tarpit_delay.is_zero()
                    && !self.authenticated()
                    && self.conn.pause(smtp.tarpit_delay).await.is_err()
                {
                    return;
                }
                if self.conn.flush().await.is_err() {
                    return;
                }
                self.conn.shrink_idle();
            }
            let deadline = (tokio::time::Instant::now() + smtp.command_timeout).min(self.ends_by);
            let sniff = matches!(
                self.profile.checks.get(Check::NonSmtp).action,
                Action::Reject | Action::Drop
            );
            let read = line::read_command(&mut self.conn, smtp.max_command_line, deadline, sniff);
            let read = match Self::unless_shutting_down(&mut self.shutdown, read).await {
                Raced::Read(read) => read,
                Raced::ShuttingDown => {
                    self.close_for_shutdown();
                    return;
                }
            };
            let line = match read {
                Ok(line::Incoming::Line(line)) => line,
                Ok(line::Incoming::NotSmtp(kind)) => {
                    // Only a refusing action gets here: the line in progress is not waited for.
                    let _ = self.fire(Check::NonSmtp, kind);
                    self.drop_reply("Not an SMTP client");
                    let _ = self.conn.flush().await;
                    return;
                }
                Ok(line::Incoming::Closed) | Err(ConnError::Io(_)) => return,
                Err(ConnError::Timeout) => {
                    self.close_stalled(self.stall_at(deadline, Stall::Idle), "command");
                    return;
                }
            };
            if line.ending == Ending::Eof {
                return;
            }
            match Box::pin(self.handle_line(line)).await {
                Flow::Continue => {}
                // The replies still queued are written by the session's close (`run`), in the
                // same write as a TLS close_notify.
                Flow::Close => return,
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
            CheckEffect::Pass => None,
            CheckEffect::Drop => Some(self.drop_reply(drop_text)),
            CheckEffect::Reject => {
                self.reply(refusal);
                Some(self.count_error().unwrap_or(Flow::Continue))
            }
        }
    }

    /// Counts a protocol error; past the limit the `too_many_errors` check fires.
    fn count_error(&mut self) -> Option<Flow> {
        self.errors += 1;
        if self.errors > self.shared.config.smtp.max_errors
            && self.fire(Check::TooManyErrors, format!("{} errors", self.errors))
                == CheckEffect::Drop
        {
            return Some(self.drop_reply("Too many errors"));
        }
        None
    }

    /// The score thresholds, as a refusal when crossed. Not for a client the backend accepted
    /// the login of: the score judges how it greeted (a roaming user's client behind NAT often
    /// greets with a private address literal), and its login says more than that (Postfix's
    /// `permit_sasl_authenticated` comes before every restriction too).
    fn score_refusal(&self) -> Option<Reply> {
        let s = &self.shared.config.score;
        if self.authenticated() {
            None
        } else if self.score >= s.reject {
            Some(Reply::new(
                550,
                format!(
                    "5.7.1 Refused: session score {} (checks: {})",
                    self.score,
                    self.fired.summary()
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

    /// Refuses the current MAIL or RCPT when the score crossed a threshold: the refusal is
    /// recorded (rejected or tempfailed) and answered, and `Some(Continue)` returned.
    fn refuse_on_score(&mut self) -> Option<Flow> {
        let refusal = self.score_refusal()?;
        self.record_refusal(if refusal.code >= 500 {
            SessionVerdict::Rejected
        } else {
            SessionVerdict::Tempfailed
        });
        self.reply(refusal);
        Some(Flow::Continue)
    }
}

//! The live connection to the backend MTA: connect to one server, pass the client's identity,
//! replay the client's EHLO, then relay commands (one at a time, or several written together when
//! the backend offers PIPELINING) and stream message text. Failover between servers and idle
//! connections are the pool's (`backend_pool.rs`).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use super::{
    config::{BackendConfig, BackendServer, Identity},
    connection::MaybeTls,
    ehlo_caps::EhloCaps,
    identity::{ClientIdentity, proxy_v2_header, xclient_command},
    reply::{Reply, parse_reply_line},
    tls::BackendConnector,
};

/// Longest backend reply line accepted.
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one backend reply.
const MAX_REPLY_LINES: usize = 100;

/// What went wrong with the backend (always answered to the client as 4xx).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no backend configured")]
    NoServers,
    #[error("backend {addr}: {detail}")]
    Unavailable { addr: SocketAddr, detail: String },
    #[error("backend timed out")]
    Timeout,
    #[error("backend closed the connection")]
    Closed,
    #[error("backend sent an invalid reply: {0:?}")]
    Protocol(String),
    #[error("backend I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A 421 (RFC 5321: the server closes the channel): the connection is gone as far as the
    /// session is concerned, and the backend's text is for the log, not for the client.
    #[error("backend is closing the connection: {0}")]
    Closing(String),
}

/// The backend side: plain, or upgraded with STARTTLS.
pub(crate) type BackendStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// An open backend session.
pub struct Backend {
    /// The connection, plain or TLS, with its read buffer.
    stream: BufReader<BackendStream>,
    /// Which server.
    pub addr: SocketAddr,
    /// Bound on every write and on every reply read (`backend.reply_timeout`).
    reply_timeout: Duration,
    /// Bound on the courtesy QUIT at the end (`backend.connect_timeout`): the session task and its
    /// connection slot must not wait `reply_timeout` for it.
    quit_timeout: Duration,
    /// Where command round trips are recorded, once the session asked for it.
    reply_times: Option<prometheus_client::metrics::histogram::Histogram>,
    /// What the backend offered in its reply to the client's EHLO (PIPELINING: commands may be
    /// written together, RFC 2920; AUTH: the mechanisms relayed on submission ports).
    caps: EhloCaps,
    /// The session was greeted with EHLO ([`Self::caps`] are the backend's extensions; after
    /// HELO it offers none).
    esmtp: bool,
    /// Commands queued with [`Backend::queue_command`], written by the next flush.
    queued: Vec<u8>,
    /// When the queued commands were last written: the start of their round trips.
    flushed_at: std::time::Instant,
    /// The server takes no per-connection identity (`identity = "none"`) and no client's SASL
    /// state is on it: the connection may serve the next session.
    shareable: bool,
    /// The backend accepted a client's AUTH on this connection.
    authenticated: bool,
    /// Commands written or queued whose reply has not been read (one for the final reply once the
    /// backend said `354`): a connection with replies outstanding cannot serve another session.
    outstanding: usize,
    /// The backend said `354`: the next reply read is the final one after the message text.
    in_text: bool,
    /// The backend gave an error reply (4xx/5xx) since the last message it accepted: it counts
    /// errors per connection (Postfix sleeps, then closes), so the next session must not get it.
    errors_since_delivery: bool,
}

/// `server` cannot be used: `detail` says why.
fn unavailable(server: &BackendServer, detail: String) -> BackendError {
    BackendError::Unavailable {
        addr: server.address,
        detail,
    }
}

impl Backend {
    /// Connects to `server`, upgrades with STARTTLS when `tls` is given, passes the identity and
    /// replays the client's HELO/EHLO ([`Backend::caps`] then holds what the backend offered).
    pub async fn connect(
        cfg: &BackendConfig,
        server: &BackendServer,
        tls: Option<&BackendConnector>,
        client: &ClientIdentity,
        local: SocketAddr,
        gateway_name: &str,
    ) -> Result<Self, BackendError> {
        let unavailable = |detail| unavailable(server, detail);
        let tcp = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(server.address))
            .await
            .map_err(|_| unavailable("connect timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        tcp.set_nodelay(true)?;
        Self::over(
            MaybeTls::Plain(tcp),
            cfg,
            server,
            tls,
            client,
            local,
            gateway_name,
        )
        .await
    }

    /// [`Backend::connect`] on a stream already connected to `server`.
    pub(crate) async fn over(
        stream: BackendStream,
        cfg: &BackendConfig,
        server: &BackendServer,
        tls: Option<&BackendConnector>,
        client: &ClientIdentity,
        local: SocketAddr,
        gateway_name: &str,
    ) -> Result<Self, BackendError> {
        let unavailable = |detail| unavailable(server, detail);
        let mut backend = Self {
            stream: BufReader::new(stream),
            addr: server.address,
            reply_timeout: cfg.reply_timeout,
            quit_timeout: cfg.connect_timeout,
            reply_times: None,
            caps: EhloCaps::default(),
            esmtp: false,
            queued: Vec::new(),
            flushed_at: std::time::Instant::now(),
            shareable: server.identity == Identity::None,
            authenticated: false,
            outstanding: 0,
            in_text: false,
            errors_since_delivery: false,
        };
        if server.identity == Identity::ProxyV2 {
            backend.write(&proxy_v2_header(client.addr, local)).await?;
        }
        let banner = tokio::time::timeout(cfg.connect_timeout, backend.read_reply())
            .await
            .map_err(|_| unavailable("no banner".into()))??;
        if banner.code != 220 {
            return Err(unavailable(format!("banner {}", banner.summary())));
        }
        if let Some(tls) = tls {
            backend
                .start_tls(tls, gateway_name)
                .await
                .map_err(|e| match e {
                    BackendError::Io(io) => unavailable(format!("STARTTLS: {io}")),
                    other => other,
                })?;
        }
        if server.identity == Identity::Xclient {
            let ehlo = backend
                .command(format!("EHLO {gateway_name}").as_bytes())
                .await?;
            let offered = EhloCaps::parse(&ehlo);
            if offered.xclient().is_none() {
                return Err(unavailable(
                    "does not offer XCLIENT to the gateway (smtpd_authorized_xclient_hosts)".into(),
                ));
            }
            let reply = backend
                .command(xclient_command(client, &offered).as_bytes())
                .await?;
            if reply.code != 220 {
                return Err(unavailable(format!("XCLIENT refused: {}", reply.summary())));
            }
        }
        backend.hello(client, gateway_name).await?;
        Ok(backend)
    }

    /// Replays the client's HELO or EHLO (the gateway's name when it gave none; HELO when the
    /// backend answers EHLO `500` or `502`, RFC 5321 3.2); on a reused connection this also
    /// starts the new session's state on the backend (RFC 5321 4.1.4).
    /// Returns the backend's reply; [`Backend::caps`] holds what it offered.
    pub async fn hello(
        &mut self,
        client: &ClientIdentity,
        gateway_name: &str,
    ) -> Result<Reply, BackendError> {
        let helo = client.helo.as_deref().unwrap_or(gateway_name);
        let mut verb = if client.esmtp { "EHLO" } else { "HELO" };
        let mut ehlo = self.command(format!("{verb} {helo}").as_bytes()).await?;
        if verb == "EHLO" && matches!(ehlo.code, 500 | 502) {
            // RFC 5321 3.2: a server that does not know EHLO is greeted with HELO (it then
            // offers no extension).
            verb = "HELO";
            ehlo = self.command(format!("HELO {helo}").as_bytes()).await?;
        }
        if !ehlo.is_positive() {
            return Err(BackendError::Unavailable {
                addr: self.addr,
                detail: format!("{verb} refused: {}", ehlo.summary()),
            });
        }
        self.caps = EhloCaps::parse(&ehlo);
        self.esmtp = verb == "EHLO";
        Ok(ehlo)
    }

    /// Whether this connection may serve another session: its server takes no per-connection
    /// identity, no client's SASL state is on it, no reply is outstanding and the backend gave
    /// no error reply since its last accepted message. (The session decides whether its own state
    /// allows it: no open transaction.)
    pub fn shareable(&self) -> bool {
        self.shareable
            && !self.authenticated
            && self.outstanding == 0
            && self.queued.is_empty()
            && !self.errors_since_delivery
    }

    /// Whether the session was greeted with EHLO (after HELO, [`Self::caps`] is empty).
    pub fn esmtp(&self) -> bool {
        self.esmtp
    }

    /// Keeps this connection to its session (it carries the client's AUTH).
    pub fn keep_private(&mut self) {
        self.shareable = false;
    }

    /// The backend accepted the client's AUTH on this connection.
    pub fn set_authenticated(&mut self) {
        self.authenticated = true;
        self.shareable = false;
    }

    /// Whether the backend accepted a client's AUTH on this connection.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether an idle connection is still usable: nothing buffered or queued, and the backend
    /// has neither closed it nor sent anything unasked (a 421 before its own idle timeout). Looks
    /// without waiting.
    pub fn still_open(&mut self) -> bool {
        self.queued.is_empty() && !self.spoke_out_of_turn()
    }

    /// Whether the backend has sent something (or closed) while no reply is due yet: the final
    /// reply to a message before its final dot, say. Looks without waiting; a byte it reads is
    /// lost, so the connection is done for when this is true.
    pub fn spoke_out_of_turn(&mut self) -> bool {
        if !self.stream.buffer().is_empty() {
            return true;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        tokio::io::AsyncRead::poll_read(
            std::pin::Pin::new(self.stream.get_mut()),
            &mut cx,
            &mut buf,
        )
        .is_ready()
    }

    /// EHLO, STARTTLS, handshake verifying the backend's certificate.
    async fn start_tls(
        &mut self,
        tls: &BackendConnector,
        gateway_name: &str,
    ) -> Result<(), BackendError> {
        let ehlo = self
            .command(format!("EHLO {gateway_name}").as_bytes())
            .await?;
        if !EhloCaps::parse(&ehlo).starttls() {
            return Err(BackendError::Protocol(
                "backend does not offer STARTTLS".into(),
            ));
        }
        let reply = self.command(b"STARTTLS").await?;
        if reply.code != 220 {
            return Err(BackendError::Protocol(format!(
                "STARTTLS refused: {}",
                reply.summary()
            )));
        }
        if !self.stream.buffer().is_empty() {
            return Err(BackendError::Protocol(
                "data pipelined after the STARTTLS reply".into(),
            ));
        }
        let MaybeTls::Plain(tcp) = std::mem::replace(self.stream.get_mut(), MaybeTls::Upgrading)
        else {
            return Err(BackendError::Protocol("STARTTLS on a TLS stream".into()));
        };
        let stream = tokio::time::timeout(
            self.reply_timeout,
            tls.connector.connect(tls.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| BackendError::Timeout)??;
        *self.stream.get_mut() = MaybeTls::Tls(Box::new(stream));
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        let s = self.stream.get_mut();
        tokio::time::timeout(self.reply_timeout, async {
            s.write_all(bytes).await?;
            s.flush().await
        })
        .await
        .map_err(|_| BackendError::Timeout)??;
        Ok(())
    }

    /// Records the round trip of every later command in `histogram` (seconds).
    pub fn record_reply_times(
        &mut self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) {
        self.reply_times = Some(histogram);
    }

    /// What the backend offered in its reply to the client's EHLO.
    pub fn caps(&self) -> &EhloCaps {
        &self.caps
    }

    /// Whether the backend offered PIPELINING in its reply to the client's EHLO.
    pub fn pipelining(&self) -> bool {
        self.caps.pipelining()
    }

    /// Queues one command line (CRLF added) without sending it: the next
    /// [`Backend::pipelined_reply`] writes every queued command at once. The caller reads one
    /// reply per queued command, in order, before any [`Backend::command`].
    pub fn queue_command(&mut self, line: &[u8]) {
        self.outstanding += 1;
        self.queued.extend_from_slice(line);
        self.queued.extend_from_slice(b"\r\n");
    }

    /// Writes the queued commands (if any are left) and reads the reply to the oldest command
    /// not answered yet.
    pub async fn pipelined_reply(&mut self) -> Result<Reply, BackendError> {
        if !self.queued.is_empty() {
            let queued = std::mem::take(&mut self.queued);
            self.flushed_at = std::time::Instant::now();
            self.write(&queued).await?;
        }
        let reply = self.read_reply().await?;
        if let Some(h) = &self.reply_times {
            h.observe(self.flushed_at.elapsed().as_secs_f64());
        }
        Ok(reply)
    }

    /// Sends one command line (CRLF added) and returns the reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, BackendError> {
        let started = std::time::Instant::now();
        // Anything still queued goes first (callers have read every earlier reply by now).
        let mut buf = std::mem::take(&mut self.queued);
        buf.reserve(line.len() + 2);
        buf.extend_from_slice(line);
        buf.extend_from_slice(b"\r\n");
        self.outstanding += 1;
        self.write(&buf).await?;
        let reply = self.read_reply().await?;
        if let Some(h) = &self.reply_times {
            h.observe(started.elapsed().as_secs_f64());
        }
        self.after_data_reply(&reply);
        Ok(reply)
    }

    /// Reads the reply to a DATA queued with [`Backend::queue_command`] behind the MAIL and RCPT
    /// of its group, once their replies were read: as after [`Backend::command`], a `354` means
    /// the text is awaited and its final reply owed.
    pub async fn pipelined_data_reply(&mut self) -> Result<Reply, BackendError> {
        let reply = self.pipelined_reply().await?;
        self.after_data_reply(&reply);
        Ok(reply)
    }

    /// Accounts for the backend's reply to DATA.
    fn after_data_reply(&mut self, reply: &Reply) {
        if reply.code == 354 {
            // The final reply after the text is owed too.
            self.outstanding += 1;
            self.in_text = true;
        }
    }

    /// Starts one BDAT chunk of `size` bytes (RFC 3030): writes `BDAT size [LAST]`, the gateway's
    /// own command line with the count it will send; the bytes follow with [`Backend::send_text`],
    /// and the reply is read with [`Backend::read_reply`] once all of them are written.
    pub async fn start_chunk(&mut self, size: u64, last: bool) -> Result<(), BackendError> {
        let mut buf = std::mem::take(&mut self.queued);
        let line = if last {
            format!("BDAT {size} LAST\r\n")
        } else {
            format!("BDAT {size}\r\n")
        };
        buf.extend_from_slice(line.as_bytes());
        self.outstanding += 1;
        // The reply to the last chunk is the final reply for the message.
        self.in_text = last;
        self.write(&buf).await
    }

    /// Sends message text (already framed and dot-stuffed), or the bytes of a BDAT chunk.
    pub async fn send_text(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.write(bytes).await
    }

    /// Reads one complete reply (and accounts for it: outstanding replies, errors since the last
    /// accepted message).
    pub async fn read_reply(&mut self) -> Result<Reply, BackendError> {
        let reply = tokio::time::timeout(self.reply_timeout, self.read_reply_inner())
            .await
            .map_err(|_| BackendError::Timeout)??;
        self.outstanding = self.outstanding.saturating_sub(1);
        let final_reply = std::mem::take(&mut self.in_text);
        if reply.code >= 400 {
            self.errors_since_delivery = true;
        } else if final_reply {
            self.errors_since_delivery = false;
        }
        if reply.code == 421 {
            return Err(BackendError::Closing(reply.lines.join(" ")));
        }
        Ok(reply)
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, BackendError> {
        let mut lines = Vec::new();
        let mut code = 0;
        loop {
            let mut raw = Vec::new();
            let n = (&mut self.stream)
                .take(MAX_REPLY_LINE as u64)
                .read_until(b'\n', &mut raw)
                .await?;
            if n == 0 {
                return Err(BackendError::Closed);
            }
            while matches!(raw.last(), Some(b'\n' | b'\r')) {
                raw.pop();
            }
            let line = parse_reply_line(&raw).ok_or_else(|| {
                BackendError::Protocol(String::from_utf8_lossy(&raw).into_owned())
            })?;
            if code != 0 && line.code != code {
                return Err(BackendError::Protocol(format!(
                    "code changed from {code} to {}",
                    line.code
                )));
            }
            code = line.code;
            lines.push(line.text);
            if line.last {
                return Ok(Reply::multi(code, lines));
            }
            if lines.len() > MAX_REPLY_LINES {
                return Err(BackendError::Protocol("reply too long".into()));
            }
        }
    }

    /// Ends the backend session politely (best effort, bounded).
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(self.quit_timeout, self.command(b"QUIT")).await;
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A backend on loopback: `550` to `RCPT TO:<bad@...>`, no reply at all to `NOOP`, `354` to
    /// DATA (then `250` at the final dot), `250` to the rest.
    async fn server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (read, mut write) = tcp.into_split();
            let mut lines = BufReader::new(read).lines();
            let _ = write.write_all(b"220 backend.test\r\n").await;
            let mut in_text = false;
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: &[u8] = match line.as_str() {
                    "." if in_text => {
                        in_text = false;
                        b"250 2.0.0 queued\r\n"
                    }
                    _ if in_text => continue,
                    "NOOP" => continue,
                    "DATA" => {
                        in_text = true;
                        b"354 go ahead\r\n"
                    }
                    l if l.starts_with("RCPT TO:<bad@") => b"550 5.1.1 unknown\r\n",
                    l if l.starts_with("RCPT TO:<closing@") => {
                        b"421 4.3.2 backend.internal Service shutting down\r\n"
                    }
                    _ => b"250 2.0.0 Ok\r\n",
                };
                let _ = write.write_all(reply).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_backend_that_says_421_is_closing_and_counts_as_lost() {
        // RFC 5321: 421 is the server closing the channel. Relayed, the client heard the
        // backend's name and "closing" while its own connection went on.
        let mut backend = crate::smtp::test_peers::backend_session(server().await).await;
        assert_eq!(
            backend
                .command(b"MAIL FROM:<a@b.test>")
                .await
                .map(|r| r.code)
                .ok(),
            Some(250)
        );
        match backend.command(b"RCPT TO:<closing@b.test>").await {
            Err(BackendError::Closing(text)) => assert!(text.contains("shutting down"), "{text}"),
            other => panic!("not a closing backend: {other:?}"),
        }
    }

    #[tokio::test]
    async fn only_a_connection_with_no_reply_outstanding_and_no_error_is_shareable() {
        let address = server().await;
        let cfg = BackendConfig {
            reply_timeout: Duration::from_millis(300),
            ..BackendConfig::default()
        };
        let server = BackendServer {
            address,
            identity: Identity::None,
            tls: None,
        };
        let client = ClientIdentity {
            addr: SocketAddr::from(([192, 0, 2, 1], 4000)),
            name: None,
            reverse_name: None,
            helo: Some("client.example".into()),
            esmtp: true,
            login: None,
        };
        let local = SocketAddr::from(([127, 0, 0, 1], 25));
        let mut b = Backend::connect(&cfg, &server, None, &client, local, "gw.test")
            .await
            .expect("connect");
        assert!(b.shareable(), "fresh");

        b.queue_command(b"MAIL FROM:<a@example.net>");
        assert!(!b.shareable(), "a command queued, its reply unread");
        assert_eq!(b.pipelined_reply().await.expect("MAIL").code, 250);
        assert!(b.shareable(), "every reply read");

        assert_eq!(
            b.command(b"RCPT TO:<bad@example.org>")
                .await
                .expect("RCPT")
                .code,
            550
        );
        assert!(!b.shareable(), "an error reply since the last message");
        assert_eq!(
            b.command(b"RCPT TO:<ok@example.org>")
                .await
                .expect("RCPT")
                .code,
            250
        );
        assert_eq!(b.command(b"DATA").await.expect("DATA").code, 354);
        assert!(!b.shareable(), "the final reply is owed");
        b.send_text(b"Subject: t\r\n\r\nhi\r\n.\r\n")
            .await
            .expect("text");
        assert_eq!(b.read_reply().await.expect("final").code, 250);
        assert!(b.shareable(), "a delivered message clears the errors");

        assert!(matches!(
            b.command(b"NOOP").await,
            Err(BackendError::Timeout)
        ));
        assert!(!b.shareable(), "a reply still outstanding");
        b.set_authenticated();
        assert!(b.authenticated() && !b.shareable());
    }
}

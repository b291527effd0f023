//! Buffered SMTP framing over a plain or TLS stream: lines in (with everything a check needs to
//! know about them), replies out in batches. "No complete line yet" means "read more", not an error.
//!
//! Every write has a deadline (`smtp.write_timeout`): a client that does not read its replies
//! cannot hold its session (and its connection slots) by letting the socket's send buffer fill.
//! Once a write missed its deadline the connection is *stalled*: nothing more is written to it,
//! not even a goodbye, and closing it does not wait.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::TlsAcceptor;

use super::{
    slots::Idle,
    tls_accept::{self, ClientTls},
};

/// Input buffer of a session reading commands: commands fit. It is allocated when input has
/// arrived and given back between commands ([`Connection::shrink_idle`]): an idle session holds
/// no buffer, so 10,000 idle sessions stay small.
const IDLE_BUFFER: usize = 1024;
/// Output buffer allocated for the first reply queued after an idle wait (given back with the
/// input buffer).
const WRITE_BUFFER: usize = 512;
/// Below this much free room the buffer grows (message text streams in larger reads).
const MIN_SPARE: usize = 512;
/// Growth step while data flows.
const READ_CHUNK: usize = 16 * 1024;
/// The goodbye of a session told to make room at capacity (`slots.rs`), written only if the
/// socket takes it at once.
const EVICTED_REPLY: &[u8] =
    b"421 4.7.0 Too many connections; closing an idle one, try again later\r\n";

/// How a line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// CRLF, as RFC 5321 requires.
    CrLf,
    /// LF without CR.
    BareLf,
    /// The peer closed the connection mid-line.
    Eof,
    /// The line goes on past the limit: this is a part of it, the rest follows
    /// ([`Connection::read_piece_until`]).
    Continues,
}

/// One line as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Content without the line ending (truncated when `too_long`).
    pub data: Vec<u8>,
    /// How it ended.
    pub ending: Ending,
    /// A CR not followed by LF inside the line.
    pub bare_cr: bool,
    /// A NUL byte inside the line.
    pub nul: bool,
    /// Longer than the limit (ending included); the excess was discarded.
    pub too_long: bool,
}

impl Line {
    /// `data` without its line ending; `ending` is how the line really ended on the wire, known
    /// even when `data` was truncated (an over-long line) and its CR cut off or discarded.
    fn new(data: Vec<u8>, ending: Ending, too_long: bool) -> Self {
        let bare_cr = data.contains(&b'\r');
        let nul = data.contains(&0);
        Self {
            data,
            ending,
            bare_cr,
            nul,
            too_long,
        }
    }

    /// Content followed by CRLF.
    pub fn with_crlf(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data.len() + 2);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(b"\r\n");
        v
    }
}

/// Why reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// No complete line within the time allowed.
    #[error("timed out")]
    Timeout,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A TCP stream that may have been upgraded to TLS (`T`: the rustls server or client stream).
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    /// An in-memory peer: only in the fuzz build (`--cfg fuzzing`), where the targets drive the
    /// daemon's framing, relay and sessions without the kernel's TCP stack.
    #[cfg(fuzzing)]
    Memory(Box<dyn MemoryStream>),
    /// Only during an upgrade.
    Upgrading,
}

/// What an in-memory peer of the fuzz build implements.
#[cfg(fuzzing)]
pub trait MemoryStream: AsyncRead + AsyncWrite + Send + Unpin {}

#[cfg(fuzzing)]
impl<S: AsyncRead + AsyncWrite + Send + Unpin> MemoryStream for S {}

/// The client side of a session.
pub type Stream = MaybeTls<ClientTls>;

impl Stream {
    /// Ends a TLS session with a close_notify (flushed); a plain stream has nothing to say. The
    /// TCP connection itself closes when the stream is dropped.
    async fn close_notify(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(_) | MaybeTls::Upgrading => Ok(()),
            MaybeTls::Tls(tls) => {
                tls.get_mut().1.send_close_notify();
                tls.flush().await
            }
            #[cfg(fuzzing)]
            MaybeTls::Memory(s) => s.shutdown().await,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(fuzzing)]
            MaybeTls::Memory(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Upgrading => Poll::Ready(Err(io::Error::other("stream is being upgraded"))),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(fuzzing)]
            MaybeTls::Memory(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Upgrading => Poll::Ready(Err(io::Error::other("stream is being upgraded"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(fuzzing)]
            MaybeTls::Memory(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Upgrading => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(fuzzing)]
            MaybeTls::Memory(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// A client connection with its input and output buffers.
pub struct Connection {
    /// The client's socket, plain or TLS.
    stream: Stream,
    /// Received bytes; those before `rpos` are consumed. Lines are taken by moving `rpos`, not
    /// by shifting the buffer, which would cost a memmove of the rest for every line.
    rbuf: Vec<u8>,
    /// Start of the unconsumed input in `rbuf`.
    rpos: usize,
    /// Replies queued for the next flush (pipelined groups are answered in one write).
    wbuf: Vec<u8>,
    /// How long one flush (or the close) may take before the client counts as not reading.
    write_timeout: Duration,
    /// A write missed its deadline: nothing more is written to this connection.
    stalled: bool,
    /// Set while the session waits for its client; read by the slot table at capacity.
    idle: Option<Arc<Idle>>,
    /// A wait ended because the slot table told this connection to make room.
    made_room: bool,
}

impl Connection {
    /// Wraps a stream; every flush must finish within `write_timeout`.
    pub fn new(stream: Stream, write_timeout: Duration) -> Self {
        Self {
            stream,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            write_timeout,
            stalled: false,
            idle: None,
            made_room: false,
        }
    }

    /// Marks `idle` while waiting for the client (for a line, for text, for it to read its
    /// replies), and ends the connection when the slot table tells it to make room: the wait
    /// fails as if the client had gone, after a `421` written only if the socket takes it at
    /// once.
    pub fn with_idle(mut self, idle: Arc<Idle>) -> Self {
        self.idle = Some(idle);
        self
    }

    /// Whether the connection was closed to make room for another client (a session told so
    /// that ended by itself before its next wait was not).
    pub fn evicted(&self) -> bool {
        self.made_room
    }

    /// Whether a write missed its deadline (the client does not read its replies).
    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, MaybeTls::Tls(_))
    }

    /// Bytes received and not consumed yet (pipelined input).
    pub fn buffered(&self) -> usize {
        self.rbuf.len() - self.rpos
    }

    /// Whether a complete line is already buffered.
    pub fn has_line(&self) -> bool {
        self.peek().contains(&b'\n')
    }

    /// The buffered, unconsumed bytes (for protocol sniffing).
    pub fn peek(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Drops every buffered input byte; returns how many.
    pub fn discard_input(&mut self) -> usize {
        let n = self.buffered();
        self.rbuf.clear();
        self.rpos = 0;
        n
    }

    /// Moves up to `max` buffered bytes into `out` (appended) and consumes them; returns how
    /// many. Counted input (a BDAT chunk) is taken this way, whatever bytes it holds.
    pub fn take_into(&mut self, max: usize, out: &mut Vec<u8>) -> usize {
        let n = self.buffered().min(max);
        out.extend(self.peek().iter().take(n));
        self.consume(n);
        n
    }

    /// Marks the next `n` buffered bytes consumed.
    fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// Reads more input (at least one byte, or 0 at the end of the stream), giving up at
    /// `deadline`, waiting as an idle session (see [`Connection::with_idle`]).
    pub async fn read_more_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<usize, ConnError> {
        let Some(idle) = self.idle.clone() else {
            return self.read_more(deadline).await;
        };
        // The read first: when input is already there the eviction watch is never polled, so
        // a busy session pays nothing for it (no waiter registered on the `Notify`).
        match idle.wait(self.read_more(deadline)).await {
            Some(read) => read,
            None => Err(self.make_room().await),
        }
    }

    /// Waits `delay` before the queued replies go out (the tarpit), as an idle session: the
    /// session waits on purpose, and one told to make room meanwhile ends here with its goodbye
    /// (`Err`). Otherwise a client that kept its score at the tarpit held its slot through every
    /// delay, and enough of them refused every newcomer at the cap.
    pub async fn pause(&mut self, delay: Duration) -> Result<(), ConnError> {
        let Some(idle) = self.idle.clone() else {
            tokio::time::sleep(delay).await;
            return Ok(());
        };
        match idle.wait(tokio::time::sleep(delay)).await {
            Some(()) => Ok(()),
            None => Err(self.make_room().await),
        }
    }

    /// Ends the connection for another client: the goodbye only if the socket takes it at
    /// once, then nothing more is written.
    async fn make_room(&mut self) -> ConnError {
        self.made_room = true;
        self.wbuf.clear();
        self.wbuf.extend_from_slice(EVICTED_REPLY);
        // An elapsed deadline: the write is tried once, never waited for.
        let _ = self.write_until(tokio::time::Instant::now()).await;
        self.stalled = true;
        ConnError::Io(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed to make room for another client",
        ))
    }

    /// Reads more input, giving up at `deadline`; not an idle wait (the greet pause: the
    /// client is waiting for us).
    async fn read_more(&mut self, deadline: tokio::time::Instant) -> Result<usize, ConnError> {
        if self.rbuf.capacity() == 0 {
            // No buffer while idle: a plain socket is waited on until readable, and the buffer
            // allocated for what arrived (TLS keeps its own buffers: read at once).
            let stream = &mut self.stream;
            let rbuf = &mut self.rbuf;
            let read = tokio::time::timeout_at(deadline, async move {
                if let MaybeTls::Plain(tcp) = stream {
                    tcp.readable().await?;
                }
                rbuf.reserve(IDLE_BUFFER);
                stream.read_buf(rbuf).await
            });
            return match read.await {
                Ok(Ok(n)) => Ok(n),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(ConnError::Timeout),
            };
        }
        if self.rbuf.capacity() - self.rbuf.len() < MIN_SPARE {
            // Reclaim the consumed prefix (one move per refill) before growing.
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            if self.rbuf.capacity() - self.rbuf.len() < MIN_SPARE {
                self.rbuf.reserve(READ_CHUNK);
            }
        }
        // Reads into the spare capacity: nothing is zero-filled.
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ConnError::Timeout),
        }
    }

    /// Gives back the buffers once the session is between commands again with nothing pending
    /// (they are allocated again when input arrives or a reply is queued): a session waiting
    /// for its client holds no buffer, whatever message text it carried before.
    pub fn shrink_idle(&mut self) {
        if self.buffered() == 0 {
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
        if self.wbuf.is_empty() {
            self.wbuf = Vec::new();
        }
    }

    /// Waits up to `pause` for input; whether any arrived (pregreet detection).
    pub async fn input_within(&mut self, pause: Duration) -> Result<bool, ConnError> {
        if self.buffered() > 0 {
            return Ok(true);
        }
        match self.read_more(tokio::time::Instant::now() + pause).await {
            Ok(n) => Ok(n > 0),
            Err(ConnError::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether input has already arrived, without waiting: bytes in the socket (plain streams),
    /// or bytes TLS already received and can decrypt without waiting (implicit TLS: data the
    /// client sent along with its handshake).
    pub fn input_pending(&mut self) -> bool {
        if self.buffered() > 0 {
            return true;
        }
        let mut buf = [0u8; 512];
        let n = match &mut self.stream {
            MaybeTls::Plain(s) => s.try_read(&mut buf).unwrap_or(0),
            MaybeTls::Tls(tls) => poll_once(Pin::new(tls.as_mut()), &mut buf),
            #[cfg(fuzzing)]
            MaybeTls::Memory(s) => poll_once(Pin::new(s.as_mut()), &mut buf),
            MaybeTls::Upgrading => 0,
        };
        self.rbuf
            .extend_from_slice(buf.get(..n).unwrap_or_default());
        n > 0
    }

    /// Waits until a complete line is buffered, or `max` bytes of one, or the stream ended,
    /// consuming nothing: `Err(Timeout)` at `deadline`, and the line is still read as usual.
    pub async fn wait_line_until(
        &mut self,
        max: usize,
        deadline: tokio::time::Instant,
    ) -> Result<(), ConnError> {
        while !self.has_line() && self.buffered() < max {
            if self.read_more_until(deadline).await? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Reads one line of at most `max` bytes (ending included) within `timeout`: see
    /// [`Connection::read_line_until`].
    pub async fn read_line(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Option<Line>, ConnError> {
        self.read_line_until(max, tokio::time::Instant::now() + timeout)
            .await
    }

    /// Reads one line of at most `max` bytes (ending included), giving up at `deadline`.
    /// `Ok(None)`: the peer closed with nothing pending. Over-long lines are consumed up to their
    /// end and returned truncated.
    pub async fn read_line_until(
        &mut self,
        max: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Line>, ConnError> {
        // One deadline for the whole line: a client trickling a byte at a time gets no more time
        // than a silent one.
        let mut too_long = false;
        let mut kept: Vec<u8> = Vec::new();
        // Last byte of input discarded while skipping an over-long line: it tells whether the LF
        // that ends the line was preceded by CR.
        let mut last_discarded: Option<u8> = None;
        // Bytes of this line discarded so far (`kept` included): tells whether the CR of a CRLF
        // split across reads is the last byte of `kept`, where it is the ending, not content.
        let mut discarded = 0;
        // Bytes already searched for LF, so a line arriving in pieces is scanned once.
        let mut scanned = 0;
        loop {
            if let Some(i) = self.peek()[scanned..].iter().position(|b| *b == b'\n') {
                let lf = scanned + i;
                let cr = match lf {
                    0 => last_discarded == Some(b'\r'),
                    _ => self.peek()[lf - 1] == b'\r',
                };
                let ending = if cr { Ending::CrLf } else { Ending::BareLf };
                // A CR before the LF belongs to the ending (it may be in the discarded tail: lf = 0).
                let content_end = if cr { lf.saturating_sub(1) } else { lf };
                let line = if too_long {
                    if cr && lf == 0 && discarded == kept.len() {
                        kept.pop();
                    }
                    Line::new(std::mem::take(&mut kept), ending, true)
                } else if lf + 1 > max {
                    Line::new(self.peek()[..max.min(content_end)].to_vec(), ending, true)
                } else {
                    Line::new(self.peek()[..content_end].to_vec(), ending, false)
                };
                self.consume(lf + 1);
                return Ok(Some(line));
            }
            scanned = self.buffered();
            if self.buffered() >= max {
                // No end in sight: keep the start, discard the rest until the line ends.
                if !too_long {
                    kept = self.peek()[..max].to_vec();
                    too_long = true;
                }
                last_discarded = self.peek().last().copied();
                discarded += self.discard_input();
                scanned = 0;
            }
            if self.read_more_until(deadline).await? == 0 {
                if too_long {
                    // The rest of the over-long line (shorter than the limit) goes with it: it
                    // is not a line of its own.
                    self.discard_input();
                    return Ok(Some(Line::new(kept, Ending::Eof, true)));
                }
                if self.buffered() == 0 {
                    return Ok(None);
                }
                let data = self.peek().to_vec();
                self.discard_input();
                return Ok(Some(Line::new(data, Ending::Eof, false)));
            }
        }
    }

    /// Reads one line of at most `max` bytes (ending included), like
    /// [`Connection::read_line_until`], except that a longer line is not cut: its first
    /// `max - 3` bytes come back as a piece ending [`Ending::Continues`] (flagged `too_long`; with
    /// a CRLF and the space of a fold it fits in `max`), and the next call reads on from there. A CR at the end of a piece is left for the next one, so a
    /// CRLF is never split between two pieces. Holds at most `max` bytes of a line.
    pub async fn read_piece_until(
        &mut self,
        max: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Line>, ConnError> {
        let max = max.max(5);
        let mut scanned = 0;
        loop {
            let window = self.buffered().min(max);
            let found = self
                .peek()
                .get(scanned..window)
                .and_then(|bytes| bytes.iter().position(|b| *b == b'\n'));
            if let Some(i) = found {
                let lf = scanned + i;
                let cr = lf > 0 && self.peek().get(lf - 1) == Some(&b'\r');
                let (end, ending) = if cr {
                    (lf - 1, Ending::CrLf)
                } else {
                    (lf, Ending::BareLf)
                };
                let line = Line::new(self.peek()[..end].to_vec(), ending, false);
                self.consume(lf + 1);
                return Ok(Some(line));
            }
            scanned = window;
            if self.buffered() >= max {
                // Room for the CRLF and the space of a fold: each piece, folded, fits in `max`.
                let mut cut = max - 3;
                if self.peek().get(cut - 1) == Some(&b'\r') {
                    cut -= 1;
                }
                let piece = Line::new(self.peek()[..cut].to_vec(), Ending::Continues, true);
                self.consume(cut);
                return Ok(Some(piece));
            }
            if self.read_more_until(deadline).await? == 0 {
                if self.buffered() == 0 {
                    return Ok(None);
                }
                let data = self.peek().to_vec();
                self.discard_input();
                return Ok(Some(Line::new(data, Ending::Eof, false)));
            }
        }
    }

    /// Queues raw bytes for the next flush.
    pub fn queue(&mut self, bytes: &[u8]) {
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(WRITE_BUFFER.max(bytes.len()));
        }
        self.wbuf.extend_from_slice(bytes);
    }

    /// Sends everything queued within `smtp.write_timeout`. A write that misses it stalls the
    /// connection: the reply is dropped and every later flush fails at once.
    pub async fn flush(&mut self) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        self.flush_until(deadline).await
    }

    /// Sends everything queued, giving up (and stalling the connection) at `deadline`; a client
    /// that is not reading is an idle one (see [`Connection::with_idle`]).
    async fn flush_until(&mut self, deadline: tokio::time::Instant) -> io::Result<()> {
        if self.stalled {
            return Err(stalled_error());
        }
        let Some(idle) = self.idle.clone() else {
            return self.write_until(deadline).await;
        };
        // The write first, as for reads: a reply the socket takes at once costs no waiter.
        let written = idle.wait(self.write_until(deadline)).await;
        written.unwrap_or_else(|| {
            self.wbuf.clear();
            self.stalled = true;
            self.made_room = true;
            Err(stalled_error())
        })
    }

    /// Writes everything queued, giving up (and stalling the connection) at `deadline`.
    async fn write_until(&mut self, deadline: tokio::time::Instant) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let stream = &mut self.stream;
        let wbuf = &self.wbuf;
        let written = tokio::time::timeout_at(deadline, async {
            stream.write_all(wbuf).await?;
            stream.flush().await
        })
        .await;
        self.wbuf.clear();
        match written {
            Ok(result) => result,
            Err(_) => {
                self.stalled = true;
                Err(stalled_error())
            }
        }
    }

    /// Upgrades a plain stream to TLS (after `220 Ready to start TLS` was flushed).
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor, timeout: Duration) -> io::Result<()> {
        let MaybeTls::Plain(tcp) = std::mem::replace(&mut self.stream, MaybeTls::Upgrading) else {
            return Err(io::Error::other("STARTTLS on a stream that is not plain"));
        };
        let next = tls_accept::Next::ClientEhlo;
        let tls = tls_accept::accept(acceptor, tcp, timeout, next, self.idle.as_deref()).await?;
        self.stream = MaybeTls::Tls(Box::new(tls));
        Ok(())
    }

    /// Sends what is queued and, over TLS, a close_notify, both within one `smtp.write_timeout`;
    /// a stalled connection is left to be dropped without another write. The caller drops the
    /// connection right after: its close() sends the FIN, so no `shutdown(2)` is made (it was one
    /// system call per session, and failed with ENOTCONN for most clients, which close first).
    pub async fn shutdown(&mut self) {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        if !self.stalled
            && let MaybeTls::Tls(tls) = &mut self.stream
        {
            // The last replies go into the TLS session's own buffer, as records, so that the
            // close_notify leaves with them in one write (one wake-up of the client) rather
            // than in a write of its own; what it does not take is flushed first below.
            let taken =
                std::io::Write::write(&mut tls.get_mut().1.writer(), &self.wbuf).unwrap_or(0);
            self.wbuf.drain(..taken.min(self.wbuf.len()));
        }
        if self.flush_until(deadline).await.is_err() {
            return;
        }
        if tokio::time::timeout_at(deadline, self.stream.close_notify())
            .await
            .is_err()
        {
            self.stalled = true;
        }
    }
}

/// Reads what `stream` has without waiting (one poll: a pending read is "nothing yet").
fn poll_once<S: AsyncRead + ?Sized>(stream: Pin<&mut S>, buf: &mut [u8]) -> usize {
    let mut read = ReadBuf::new(buf);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) => read.filled().len(),
        _ => 0,
    }
}

/// The error of a write that missed its deadline (or of any write after one did).
fn stalled_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client does not read its replies",
    )
}

#[cfg(test)]
mod tests {
    use super::{super::test_peers::loopback_pair, *};

    /// A TLS 1.3 session over loopback, with the gateway's own acceptor
    /// (`test_peers::tls_peers`): the client's stream and the session's connection.
    async fn tls_pair() -> (tokio_rustls::client::TlsStream<TcpStream>, Connection) {
        use super::super::test_peers::{tls_name, tls_peers};
        let (acceptor, connector) = tls_peers(&rustls::version::TLS13);
        let (peer, sock) = loopback_pair().await;
        let (client, server) = tokio::join!(
            connector.connect(tls_name(), peer),
            tls_accept::accept(
                &acceptor,
                sock,
                Duration::from_secs(5),
                tls_accept::Next::ClientEhlo,
                None,
            )
        );
        let conn = Connection::new(
            MaybeTls::Tls(Box::new(server.expect("server handshake"))),
            Duration::from_secs(5),
        );
        (client.expect("client handshake"), conn)
    }

    /// What the peer reads to its end after the session queued a last reply and closed.
    async fn read_after_close<P: AsyncRead + Unpin>(mut peer: P, mut conn: Connection) -> Vec<u8> {
        conn.queue(b"221 2.0.0 Bye\r\n");
        conn.shutdown().await;
        drop(conn);
        let mut got = Vec::new();
        // Over TLS, a TCP close without close_notify is an UnexpectedEof error here.
        peer.read_to_end(&mut got).await.expect("a clean end");
        got
    }

    #[tokio::test]
    async fn a_tls_session_ends_with_its_last_reply_and_a_close_notify() {
        let (client, conn) = tls_pair().await;
        assert_eq!(read_after_close(client, conn).await, b"221 2.0.0 Bye\r\n");
    }

    /// Data segments `tcp` has sent so far.
    fn data_segments_out(tcp: &TcpStream) -> u32 {
        smtp_gateway_test_kit::tcp_info::data_segments(tcp)
            .expect("TCP_INFO")
            .0
    }

    #[tokio::test]
    async fn a_tls_sessions_last_reply_and_its_close_notify_leave_in_one_segment() {
        let (client, mut conn) = tls_pair().await;
        let MaybeTls::Tls(tls) = &conn.stream else {
            panic!("not a TLS stream");
        };
        // As the accept loop does: every write is a segment of its own.
        tls.get_ref().0.tcp().set_nodelay(true).expect("nodelay");
        let before = data_segments_out(tls.get_ref().0.tcp());
        conn.queue(b"221 2.0.0 Bye\r\n");
        conn.shutdown().await;
        let MaybeTls::Tls(tls) = &conn.stream else {
            panic!("not a TLS stream");
        };
        let sent = data_segments_out(tls.get_ref().0.tcp()) - before;
        assert_eq!(sent, 1, "one write for the 221 and the close_notify");
        drop(conn);
        let mut client = client;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("a clean end");
        assert_eq!(got, b"221 2.0.0 Bye\r\n");
    }

    #[tokio::test]
    async fn a_plain_session_ends_with_its_last_reply_and_a_fin() {
        let (peer, sock) = loopback_pair().await;
        let conn = Connection::new(MaybeTls::Plain(sock), Duration::from_secs(5));
        assert_eq!(read_after_close(peer, conn).await, b"221 2.0.0 Bye\r\n");
    }

    #[test]
    fn line_classification() {
        let l = Line::new(b"a\rb".to_vec(), Ending::CrLf, false);
        assert!(l.bare_cr && l.ending == Ending::CrLf);
        assert!(Line::new(b"a\0b".to_vec(), Ending::BareLf, false).nul);
    }

    #[tokio::test]
    async fn reads_pipelined_lines_and_flags_long_ones() {
        let (mut s, sock) = loopback_pair().await;
        let long = "X".repeat(600);
        s.write_all(format!("EHLO a\r\nMAIL FROM:<>\n{long}\r\nQUIT\r\npartial").as_bytes())
            .await
            .expect("write");
        drop(s);
        let mut c = Connection::new(MaybeTls::Plain(sock), Duration::from_secs(5));
        let t = Duration::from_secs(5);
        let l = c.read_line(512, t).await.expect("read").expect("line");
        assert_eq!(
            (l.data.as_slice(), l.ending),
            (&b"EHLO a"[..], Ending::CrLf)
        );
        assert!(c.has_line(), "the rest of the pipelined group is buffered");
        let l = c.read_line(512, t).await.expect("read").expect("line");
        assert_eq!(l.ending, Ending::BareLf);
        let l = c.read_line(512, t).await.expect("read").expect("line");
        assert!(l.too_long && l.data.len() == 512);
        assert_eq!(
            l.ending,
            Ending::CrLf,
            "a truncated line keeps its real ending"
        );
        let l = c.read_line(512, t).await.expect("read").expect("line");
        assert_eq!(l.data, b"QUIT");
        let l = c.read_line(512, t).await.expect("read").expect("line");
        assert_eq!(
            (l.data.as_slice(), l.ending),
            (&b"partial"[..], Ending::Eof)
        );
        assert!(c.read_line(512, t).await.expect("read").is_none());
    }

    #[tokio::test]
    async fn an_over_long_line_whose_cr_was_discarded_still_ends_with_crlf() {
        let (mut s, sock) = loopback_pair().await;
        let client = tokio::spawn(async move {
            s.write_all(format!("{}\r", "Y".repeat(700)).as_bytes())
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(b"\nNEXT\r\n").await.expect("write");
        });
        let mut c = Connection::new(MaybeTls::Plain(sock), Duration::from_secs(5));
        let t = Duration::from_secs(5);
        let l = c.read_line(512, t).await.expect("read").expect("line");
        assert!(l.too_long);
        assert_eq!(l.ending, Ending::CrLf);
        let l = c.read_line(512, t).await.expect("read").expect("line");
        assert_eq!((l.data.as_slice(), l.ending), (&b"NEXT"[..], Ending::CrLf));
        client.await.expect("client");
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_stalls_the_connection_at_the_write_deadline() {
        // Connected and never read from, kept open for the whole test.
        let (_peer, sock) = loopback_pair().await;
        let write_timeout = Duration::from_millis(200);
        let mut c = Connection::new(MaybeTls::Plain(sock), write_timeout);
        let reply = vec![b'x'; 64 * 1024];
        let started = tokio::time::Instant::now();
        let failed = loop {
            c.queue(&reply);
            if let Err(e) = c.flush().await {
                break e;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the socket buffers never filled"
            );
        };
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut);
        assert!(c.stalled());
        // Nothing more is tried: a later flush and the close return at once.
        let after = tokio::time::Instant::now();
        c.queue(b"421 4.4.2 Timeout\r\n");
        assert!(c.flush().await.is_err());
        c.shutdown().await;
        assert!(after.elapsed() < write_timeout, "{:?}", after.elapsed());
    }
}

//! A client's TLS handshake (implicit TLS and STARTTLS). On an implicit-TLS connection the
//! TLS 1.3 session tickets are held back until the banner, so that both leave in one write.
//!
//! rustls queues a TLS 1.3 server's tickets as soon as the client's Finished is read, and
//! tokio-rustls flushes them when the handshake ends: a write (a TCP segment, a wake-up of the
//! client) of their own, right before the banner. Under TLS 1.3 the client needs nothing more
//! from the server once it has sent its Finished (tickets are only for a later resumption), and
//! on an implicit-TLS connection it waits for the banner without writing, so nothing waits for
//! the tickets. Two cases send them at once, as before:
//! - STARTTLS: the client writes its `EHLO` right behind its Finished. A client with Nagle's
//!   algorithm on (most do not set TCP_NODELAY) holds that `EHLO` until its Finished is
//!   acknowledged, and with nothing to send back the server acknowledges late (delayed ACK,
//!   40 ms on Linux): the tickets are what acknowledge the Finished at once. Measured with a
//!   Python `smtplib` client: 80 sessions/s instead of 450 when they were held.
//! - TLS 1.2: the server's last flight ends the client's handshake.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use rustls::ProtocolVersion;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::slots::Idle;

/// A client's TLS session.
pub type ClientTls = TlsStream<Corked>;

/// How the TCP stream under a client's TLS session treats writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// During the handshake: every write is held, and sent before the next read (the server's
    /// flight before it waits for the client's answer); a flush sends nothing.
    Handshake,
    /// After a TLS 1.3 handshake: what is held (the tickets) leaves with the next write or
    /// flush; reads do not send it.
    HoldUntilFlush,
    /// Writes go straight to the socket once nothing is held.
    Direct,
}

/// The TCP stream under a client's TLS session: a plain pass-through except right after the
/// handshake, where it holds the session tickets for the first reply.
pub struct Corked {
    tcp: TcpStream,
    /// Written and not sent yet: bounded by one flight of the handshake, or by the tickets plus
    /// one reply batch (the session flushes every batch it writes, within `smtp.write_timeout`).
    held: Vec<u8>,
    mode: Mode,
}

impl Corked {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            held: Vec::new(),
            mode: Mode::Handshake,
        }
    }

    /// The socket (the tests read its TCP_INFO).
    #[cfg(test)]
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Sends what the socket takes now, without waiting (the alert of a failed handshake).
    fn send_held_now(&mut self) {
        if let Ok(n) = self.tcp.try_write(&self.held) {
            self.held.drain(..n.min(self.held.len()));
        }
    }

    /// Sends everything held; the buffer's memory is released once it is empty (an idle
    /// session keeps none).
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n.min(self.held.len()));
        }
        self.held = Vec::new();
        if self.mode == Mode::HoldUntilFlush {
            self.mode = Mode::Direct;
        }
        Poll::Ready(Ok(()))
    }

    /// Holds `bufs` behind what is held already; after the handshake, starts sending (what the
    /// socket does not take now leaves with the caller's flush).
    fn hold(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut n = 0;
        for b in bufs {
            self.held.extend_from_slice(b);
            n += b.len();
        }
        if self.mode != Mode::Handshake
            && let Poll::Ready(Err(e)) = self.poll_send_held(cx)
        {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Corked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.mode == Mode::Handshake {
            ready!(this.poll_send_held(cx))?;
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Corked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.mode == Mode::Direct && this.held.is_empty() {
            return Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        }
        this.hold(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.mode == Mode::Handshake {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Who writes first once the handshake is done: the server on an implicit-TLS connection (its
/// banner), the client after STARTTLS (its `EHLO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Banner,
    ClientEhlo,
}

/// Runs the server side of a TLS handshake on `tcp` within `timeout`. A failed handshake's
/// alert is still sent (if the socket takes it at once). Before a banner (`next`) the TLS 1.3
/// tickets wait for the session's first write; otherwise everything the handshake wrote is
/// sent before this returns.
///
/// The handshake is a wait for the client as an idle session (`idle`): a client that stalls
/// in it is among those that make room at the global cap (`smtp.evict_idle_after`), closed
/// without a byte, as no reply can be sent before the handshake is done. Otherwise a few
/// silent connections to an `smtps` port, or stalled after STARTTLS, held their slots for
/// `smtp.command_timeout` and every newcomer was refused.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
    next: Next,
    idle: Option<&Idle>,
) -> io::Result<ClientTls> {
    let deadline = tokio::time::Instant::now() + timeout;
    let handshake =
        tokio::time::timeout_at(deadline, acceptor.accept(Corked::new(tcp)).into_fallible());
    let outcome = match idle {
        Some(idle) => idle.wait(handshake).await,
        None => Some(handshake.await),
    };
    let mut tls = match outcome {
        Some(Ok(Ok(tls))) => tls,
        Some(Ok(Err((e, mut corked)))) => {
            corked.send_held_now();
            return Err(e);
        }
        Some(Err(_)) => return Err(timed_out()),
        None => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, MadeRoom)),
    };
    let tls13 = tls.get_ref().1.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    let corked = tls.get_mut().0;
    if tls13 && next == Next::Banner {
        corked.mode = Mode::HoldUntilFlush;
    } else {
        corked.mode = Mode::Direct;
        tokio::time::timeout_at(deadline, corked.flush())
            .await
            .map_err(|_| timed_out())??;
    }
    Ok(tls)
}

/// Why a handshake ended: its client stalled in it and was closed to make room for a new client.
#[derive(Debug, thiserror::Error)]
#[error("stalled TLS handshake closed to make room for a new client at max_connections")]
pub struct MadeRoom;

/// Whether `e` is a handshake that ended to make room ([`MadeRoom`]).
pub fn made_room(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<MadeRoom>())
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
}

#[cfg(test)]
mod tests {
    use rustls::HandshakeKind;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::smtp::test_peers::{loopback_pair, tls_name, tls_peers as endpoints};

    /// A loopback connection: the client's socket and the accepted one, which writes every
    /// write as a segment of its own, as the accept loop's sockets do.
    async fn loopback() -> (TcpStream, TcpStream) {
        let (peer, sock) = loopback_pair().await;
        sock.set_nodelay(true).expect("nodelay");
        (peer, sock)
    }

    fn data_segments_out(tcp: &TcpStream) -> u32 {
        smtp_gateway_test_kit::tcp_info::data_segments(tcp)
            .expect("TCP_INFO")
            .0
    }

    /// One session: the handshake, then either the server's banner (implicit TLS) or the
    /// client's `EHLO` answered (STARTTLS). Returns the data segments the server had sent when
    /// the handshake ended and at the end, the line the client read, and how the client's
    /// handshake went.
    async fn session(
        acceptor: &TlsAcceptor,
        connector: &TlsConnector,
        client_speaks_first: bool,
    ) -> ((u32, u32), String, Option<HandshakeKind>) {
        let (peer, sock) = loopback().await;
        let limit = Duration::from_secs(10);
        let server = async {
            let next = if client_speaks_first {
                Next::ClientEhlo
            } else {
                Next::Banner
            };
            let mut tls = accept(acceptor, sock, limit, next, None)
                .await
                .expect("server handshake");
            let after_handshake = data_segments_out(tls.get_ref().0.tcp());
            if client_speaks_first {
                let mut line = String::new();
                let mut reader = BufReader::new(&mut tls);
                reader.read_line(&mut line).await.expect("EHLO");
                assert_eq!(line, "EHLO client.example.net\r\n");
            }
            tls.write_all(b"250 mx.example.net\r\n")
                .await
                .expect("reply");
            tls.flush().await.expect("flush");
            (after_handshake, data_segments_out(tls.get_ref().0.tcp()))
        };
        let client = async {
            let mut tls = connector
                .connect(tls_name(), peer)
                .await
                .expect("client handshake");
            if client_speaks_first {
                tls.write_all(b"EHLO client.example.net\r\n")
                    .await
                    .expect("EHLO");
            }
            let mut line = String::new();
            BufReader::new(&mut tls)
                .read_line(&mut line)
                .await
                .expect("the reply");
            let kind = tls.get_ref().1.handshake_kind();
            (line, kind)
        };
        let (segments, (line, kind)) =
            tokio::time::timeout(limit, async { tokio::join!(server, client) })
                .await
                .expect("the session ends in time");
        (segments, line, kind)
    }

    #[tokio::test]
    async fn the_tls13_tickets_leave_with_the_banner_and_before_a_clients_ehlo() {
        // (client speaks first, data segments when the handshake ended, at the end)
        let cases = [
            // Implicit TLS: the server's flight, then the tickets with the banner.
            (false, 1, 2),
            // STARTTLS: the tickets acknowledge the client's Finished before its EHLO.
            (true, 2, 3),
        ];
        for (client_speaks_first, handshake, total) in cases {
            let (acceptor, connector) = endpoints(&rustls::version::TLS13);
            let (segments, line, kind) = session(&acceptor, &connector, client_speaks_first).await;
            assert_eq!(line, "250 mx.example.net\r\n");
            assert_eq!(kind, Some(HandshakeKind::Full));
            assert_eq!(
                segments,
                (handshake, total),
                "client speaks first: {client_speaks_first}"
            );
            // The tickets did arrive: the next session resumes with one.
            let (_, line, kind) = session(&acceptor, &connector, client_speaks_first).await;
            assert_eq!(line, "250 mx.example.net\r\n");
            assert_eq!(kind, Some(HandshakeKind::Resumed));
        }
    }

    #[tokio::test]
    async fn a_tls12_handshake_is_finished_before_the_banner() {
        // A TLS 1.2 client waits for the server's Finished before it sends anything: holding
        // it for the banner would hold up the client's handshake for the greet pause.
        let (acceptor, connector) = endpoints(&rustls::version::TLS12);
        let ((handshake, _), line, kind) = session(&acceptor, &connector, false).await;
        assert_eq!(line, "250 mx.example.net\r\n");
        assert_eq!(kind, Some(HandshakeKind::Full));
        assert_eq!(handshake, 2, "the server's two flights");
    }

    #[tokio::test]
    async fn a_failed_handshake_still_sends_its_alert() {
        let (acceptor, _) = endpoints(&rustls::version::TLS13);
        let (mut peer, sock) = loopback().await;
        // A handshake record whose message is not a ClientHello.
        peer.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x63, 0x00, 0x00, 0x00])
            .await
            .expect("write");
        let err = accept(&acceptor, sock, Duration::from_secs(10), Next::Banner, None)
            .await
            .err()
            .expect("the handshake fails");
        assert_ne!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut got))
            .await
            .expect("the server closes")
            .expect("read");
        // An alert record: content type 21.
        assert_eq!(got.first(), Some(&0x15), "{got:?}");
    }
}

//! What the fuzz targets share: one current-thread tokio runtime per process, loopback TCP pairs
//! that close with a reset (so millions of runs leave no TIME_WAIT behind), a writer that hands
//! the input to the gateway in fuzzer-chosen chunks, each one read before the next is written,
//! and a fake backend MTA that greets, answers EHLO and records what it is sent.
//!
//! The gateway code under test is reached only through `smtp_gateway::fuzzing`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
};

/// The process's runtime (libFuzzer runs inputs one after the other on one thread).
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A connected loopback pair: (client side, server side, client address, server address).
pub async fn tcp_pair(listener: &TcpListener) -> (TcpStream, TcpStream, SocketAddr, SocketAddr) {
    let addr = listener.local_addr().expect("listener address");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.expect("connect");
    let (server, peer) = accepted.expect("accept");
    for s in [&client, &server] {
        // Closing with RST: no TIME_WAIT, so the ephemeral ports are never exhausted.
        s.set_zero_linger().expect("SO_LINGER");
        s.set_nodelay(true).expect("TCP_NODELAY");
    }
    (client, server, peer, addr)
}

/// A listener on a loopback address that changes with every call (127.1.0.1 onwards), any
/// port: a connection that still ends in TIME_WAIT (the gateway's own sockets close without a
/// reset) then blocks a port towards that address only, so millions of runs never run out.
pub async fn listener() -> TcpListener {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % (1 << 22);
    let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + n);
    TcpListener::bind(SocketAddr::from((addr, 0)))
        .await
        .expect("bind")
}

/// Bytes waiting in the receive queue of `fd` (SIOCINQ).
fn queued(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc == 0 { n.max(0) as usize } else { 0 }
}

/// Splits `data` into chunks whose sizes come from `seed` (1 to 64 bytes, many of them small,
/// so line endings and CRLF pairs are split everywhere); seed 0 sends everything at once.
pub fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![data];
    }
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = match state % 4 {
            0 => 1,
            1 => 2 + (state >> 8) as usize % 3,
            _ => 1 + (state >> 8) as usize % 64,
        };
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// Writes `pieces` to `w` one at a time, waiting (boundedly) until the reader's socket `reader`
/// has taken each piece before writing the next, so the gateway sees these exact reads; then
/// closes the write side.
pub async fn write_chunked<W: AsyncWrite + Unpin>(
    mut w: W,
    reader: RawFd,
    pieces: Vec<Vec<u8>>,
) -> W {
    for piece in pieces {
        if w.write_all(&piece).await.is_err() {
            break;
        }
        for _ in 0..200 {
            if queued(reader) == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    let _ = w.shutdown().await;
    w
}

/// The raw descriptor of a stream (to watch its receive queue).
pub fn fd(s: &TcpStream) -> RawFd {
    s.as_raw_fd()
}

/// A fake backend MTA on `listener`: greets, answers the EHLO with `ehlo`, then sends `script`
/// (if any) and records everything it receives until the gateway closes, answering `250` each
/// time what it holds ends with an end of data.
pub async fn fake_backend(listener: TcpListener, ehlo: &'static [u8], script: Vec<u8>) -> Vec<u8> {
    let (mut s, _) = listener.accept().await.expect("backend accept");
    let _ = s.set_zero_linger();
    let _ = s.write_all(b"220 fake ESMTP\r\n").await;
    let mut buf = vec![0u8; 16 * 1024];
    let mut hello = Vec::new();
    while !hello.ends_with(b"\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(n) => hello.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.write_all(ehlo).await;
    if !script.is_empty() {
        let _ = s.write_all(&script).await;
        let _ = s.shutdown().await;
    }
    let mut text = Vec::new();
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return text,
            Ok(n) => {
                text.extend_from_slice(&buf[..n]);
                if text.ends_with(b"\r\n.\r\n") || text == b".\r\n" {
                    let _ = s.write_all(b"250 2.0.0 queued\r\n").await;
                }
            }
        }
    }
}

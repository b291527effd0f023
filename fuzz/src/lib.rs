//! What the fuzz targets share: one current-thread tokio runtime per process, the fuzzer's
//! chunking of the client's bytes, and two in-memory peers the gateway's own streams take in the
//! fuzz build (`MaybeTls::Memory`, `--cfg fuzzing`):
//! - [`ChunkedClient`]: a client whose bytes arrive in exactly the fuzzer-chosen reads, then the
//!   end of the stream; everything the gateway writes to it is taken (a client reading every
//!   reply);
//! - [`FakeBackend`]: a backend MTA that greets, answers the EHLO, then sends its script (if
//!   any) and closes, or records everything it is sent and answers `250` to each end of data.
//!
//! No socket, no kernel TCP: millions of runs cost only the gateway's own code. The gateway code
//! under test is reached only through `smtp_gateway::fuzzing`.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, Waker},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
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

/// A client whose bytes reach the gateway in the given pieces, one read each (a piece larger
/// than the reader's room is split), then the end of the stream. Writes to it always succeed.
pub struct ChunkedClient {
    pieces: VecDeque<Vec<u8>>,
    /// Says nothing before the gateway has written something (its banner), as a real client.
    waits_for_banner: bool,
    /// A read waiting for the banner.
    reader: Option<Waker>,
    /// Everything the gateway wrote to it (shared with the harness).
    replies: Arc<Mutex<Vec<u8>>>,
}

impl ChunkedClient {
    /// `data` cut by [`chunks`] with `seed`, available at once.
    pub fn new(data: &[u8], seed: u8) -> Self {
        Self {
            pieces: chunks(data, seed).into_iter().map(<[u8]>::to_vec).collect(),
            waits_for_banner: false,
            reader: None,
            replies: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The handle on everything the gateway writes to this client.
    pub fn replies(&self) -> Arc<Mutex<Vec<u8>>> {
        self.replies.clone()
    }

    /// The same client, sending only once the gateway has written something (a session's
    /// banner); without it every session would end as a pregreeter.
    pub fn after_banner(mut self) -> Self {
        self.waits_for_banner = true;
        self
    }
}

impl AsyncRead for ChunkedClient {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.waits_for_banner {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(mut piece) = self.pieces.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                piece.drain(..n);
                self.pieces.push_front(piece);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChunkedClient {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.waits_for_banner = false;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        if let Ok(mut replies) = self.replies.lock() {
            replies.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where a [`FakeBackend`] is in its conversation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the gateway's EHLO line.
    Hello,
    /// Sent its script and the end of its stream.
    Scripted,
    /// Recording what the gateway sends.
    Recording,
}

/// A backend MTA in memory: `220` at once, `ehlo` in answer to the first line, then either
/// `script` followed by the end of its stream, or (no script) the recorder of everything sent
/// after the EHLO, answering `250 2.0.0 queued` each time that ends with an end of data.
pub struct FakeBackend {
    phase: Phase,
    /// What the gateway reads next.
    output: VecDeque<u8>,
    ehlo: &'static [u8],
    script: Vec<u8>,
    /// The EHLO line in progress.
    hello: Vec<u8>,
    /// Everything recorded after the EHLO (shared with the harness).
    recorded: Arc<Mutex<Vec<u8>>>,
    /// A read waiting for the next reply.
    reader: Option<Waker>,
}

impl FakeBackend {
    /// A backend and the handle on what it records.
    pub fn new(ehlo: &'static [u8], script: Vec<u8>) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let backend = Self {
            phase: Phase::Hello,
            output: b"220 fake ESMTP\r\n".iter().copied().collect(),
            ehlo,
            script,
            hello: Vec::new(),
            recorded: recorded.clone(),
            reader: None,
        };
        (backend, recorded)
    }
}

impl AsyncRead for FakeBackend {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.output.len().min(buf.remaining());
        if n > 0 {
            let bytes: Vec<u8> = self.output.drain(..n).collect();
            buf.put_slice(&bytes);
            return Poll::Ready(Ok(()));
        }
        if self.phase == Phase::Scripted {
            // The end of its stream.
            return Poll::Ready(Ok(()));
        }
        // Nothing to say until the gateway writes more: woken by that write.
        self.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for FakeBackend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.phase {
            Phase::Hello => {
                self.hello.extend_from_slice(buf);
                if self.hello.contains(&b'\n') {
                    let ehlo = self.ehlo;
                    self.output.extend(ehlo);
                    if self.script.is_empty() {
                        self.phase = Phase::Recording;
                    } else {
                        let script = std::mem::take(&mut self.script);
                        self.output.extend(script);
                        self.phase = Phase::Scripted;
                    }
                }
            }
            Phase::Scripted => {}
            Phase::Recording => {
                let ended = {
                    let mut text = self.recorded.lock().expect("recorder");
                    text.extend_from_slice(buf);
                    text.ends_with(b"\r\n.\r\n") || text.as_slice() == b".\r\n"
                };
                if ended {
                    self.output.extend(b"250 2.0.0 queued\r\n");
                }
            }
        }
        if !self.output.is_empty()
            && let Some(reader) = self.reader.take()
        {
            reader.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

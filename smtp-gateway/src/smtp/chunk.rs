//! One BDAT chunk (RFC 3030 CHUNKING): exactly the announced number of bytes read from the
//! client and streamed to the backend as one chunk of the same length, or read and thrown away
//! when the gateway refuses it. (The BDAT verb itself is `session/bdat.rs`.)
//!
//! A chunk is opaque: the gateway counts bytes and never looks at them. A bare CR or LF, a line
//! that is a lone ".", anything, is relayed unchanged: there is no end-of-data marker in BDAT,
//! so nothing inside a chunk can end the message or start a command at the backend. The command
//! line the backend gets is the gateway's own `BDAT n [LAST]`, with the count of the bytes it
//! relays (the client's line is never forwarded), so the gateway and the backend always agree on
//! where a chunk ends: no second message can be smuggled through a chunk.
//!
//! Time: each read must bring bytes within `smtp.data_timeout`, the whole chunk must be in by
//! [`ChunkLimits::deadline`] (`smtp.max_data_duration` from the transaction's first BDAT, or the
//! session's end if sooner). Bytes go to the backend as they arrive: nothing is buffered beyond
//! one read.
//!
//! Header block: while a chunked message is in its header block and `[auth_results]` is on, the
//! client's forged `Authentication-Results` fields are taken out (`chunk_headers.rs`). The
//! backend's BDAT count must be known before its bytes, so the filtered bytes wait until the
//! header block ends (then they go with the rest of the client's chunk, as one backend chunk of
//! the new count), or until the client's chunk ends, or until they pass
//! [`ChunkHeaders::flush_at`] (then they go as a backend chunk of their own, whose reply must be
//! positive). A client chunk that the filter holds whole (it ends inside a header line) sends
//! nothing yet: the gateway answers it itself ([`ChunkEnd::Held`]); its bytes go with the next.

use tokio::time::Instant;

use super::{
    backend::{Backend, BackendError},
    chunk_headers::ChunkHeaders,
    connection::{ConnError, Connection},
    reply::Reply,
};

/// Time limits for one chunk.
pub struct ChunkLimits {
    /// Time allowed for each read to bring bytes (`smtp.data_timeout`).
    pub timeout: std::time::Duration,
    /// When the chunk must be complete (`smtp.max_data_duration` from the transaction's first
    /// BDAT, or the end of the session if sooner).
    pub deadline: Instant,
}

/// How reading one chunk ended.
#[derive(Debug)]
pub enum ChunkEnd {
    /// Every byte was read (and relayed, when there was a backend): read the backend's reply.
    Complete,
    /// Every byte was read and the header filter holds them (the chunk ends inside a header
    /// line): nothing went to the backend, the gateway answers the chunk itself.
    Held,
    /// Every byte was read, but the backend refused a chunk the gateway sent for part of the
    /// header block (the rest was discarded): this is the chunk's reply.
    Refused(Reply),
    /// Every byte was read, but the backend failed while they streamed (it must be dropped).
    BackendFailed(BackendError),
    /// The client disconnected before the chunk's end.
    ClientGone,
    /// The client sent nothing for `smtp.data_timeout` before the chunk's end (answered `421`).
    Timeout,
    /// The chunk was not complete by [`ChunkLimits::deadline`].
    TimeLimit,
}

/// A `BDAT` command line, read by its grammar (RFC 3030: `"BDAT" SP chunk-size [SP "LAST"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdatLine {
    /// A well-formed line: the chunk's exact size, and whether it is the last.
    Chunk { size: u64, last: bool },
    /// The size is digits but does not fit in a `u64` (smtp-proto saturates such numbers; the
    /// gateway must never read a different count than the client announced).
    TooLarge,
    /// Anything else: no size, a size that is not digits, a word other than `LAST`, or words
    /// after it (smtp-proto skips what follows `LAST`).
    Malformed,
}

/// Reads a `BDAT` command line (`line` as received, its line ending included or not). Words are
/// separated by spaces or tabs, any number of them, as smtp-proto reads the verb; `LAST` in any
/// case.
pub fn bdat_line(line: &[u8]) -> BdatLine {
    let mut words = line
        .split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty());
    let verb = words.next();
    let digits = words.next();
    let marker = words.next();
    let (Some(verb), Some(digits), None) = (verb, digits, words.next()) else {
        return BdatLine::Malformed;
    };
    if !verb.eq_ignore_ascii_case(b"BDAT") || !digits.iter().all(u8::is_ascii_digit) {
        return BdatLine::Malformed;
    }
    let last = match marker {
        None => false,
        Some(word) if word.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return BdatLine::Malformed,
    };
    let size = digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    match size {
        Some(size) => BdatLine::Chunk { size, last },
        None => BdatLine::TooLarge,
    }
}

/// Reads exactly `size` bytes of a chunk from `conn`. With a backend, it first gets
/// `BDAT (prefix + size) [LAST]` and `prefix`, then every byte as it arrives; without one the
/// bytes are discarded (the stream stays in step with the client). A backend that fails on the
/// way does not stop the reading: the client's chunk is still consumed to its end. With
/// `headers` still in the message's header block, the bytes go through it first (see the
/// module documentation).
pub async fn relay_chunk(
    conn: &mut Connection,
    mut backend: Option<&mut Backend>,
    mut headers: Option<&mut ChunkHeaders>,
    prefix: &[u8],
    size: u64,
    last: bool,
    limits: &ChunkLimits,
) -> ChunkEnd {
    let mut failed: Option<BackendError> = None;
    let mut refused: Option<Reply> = None;
    // Filtered bytes waiting for their backend chunk, while the header filter runs.
    let mut held: Vec<u8> = Vec::new();
    let mut filtering = backend.is_some() && headers.as_deref().is_some_and(|h| !h.in_body());
    if filtering {
        held.extend_from_slice(prefix);
    } else if let Some(b) = backend.as_deref_mut() {
        let total = size.saturating_add(prefix.len() as u64);
        if let Err(e) = start_chunk(b, total, last, prefix).await {
            failed = Some(e);
        }
    }
    let mut left = size;
    let mut piece = Vec::new();
    while left > 0 {
        if conn.buffered() == 0 {
            let read_deadline = (Instant::now() + limits.timeout).min(limits.deadline);
            match conn.read_more_until(read_deadline).await {
                Ok(0) | Err(ConnError::Io(_)) => return ChunkEnd::ClientGone,
                Ok(_) => {}
                Err(ConnError::Timeout) if read_deadline >= limits.deadline => {
                    return ChunkEnd::TimeLimit;
                }
                Err(ConnError::Timeout) => return ChunkEnd::Timeout,
            }
        }
        piece.clear();
        let want = usize::try_from(left).unwrap_or(usize::MAX);
        let n = conn.take_into(want, &mut piece);
        left = left.saturating_sub(n as u64);
        if failed.is_some() || refused.is_some() {
            continue;
        }
        let Some(b) = backend.as_deref_mut() else {
            continue;
        };
        let mut rest: &[u8] = &piece;
        if filtering && let Some(h) = headers.as_deref_mut() {
            let used = h.feed(&piece, &mut held);
            rest = piece.get(used..).unwrap_or_default();
            if h.in_body() {
                // The header block ended: what waits and the rest of the chunk go as one.
                filtering = false;
                let total = (held.len() as u64)
                    .saturating_add(rest.len() as u64)
                    .saturating_add(left);
                if let Err(e) = start_chunk(b, total, last, &held).await {
                    failed = Some(e);
                    continue;
                }
                held.clear();
            } else {
                if held.len() >= h.flush_at() {
                    match interim_chunk(b, &held).await {
                        Ok(None) => {}
                        Ok(Some(reply)) => refused = Some(reply),
                        Err(e) => failed = Some(e),
                    }
                    held.clear();
                }
                continue;
            }
        }
        if let Err(e) = b.send_text(rest).await {
            failed = Some(e);
        }
    }
    if let Some(e) = failed {
        return ChunkEnd::BackendFailed(e);
    }
    if let Some(reply) = refused {
        return ChunkEnd::Refused(reply);
    }
    if filtering && let Some(b) = backend {
        // The whole chunk was inside the header block.
        if last && let Some(h) = headers {
            h.finish(&mut held);
        }
        if held.is_empty() && !last {
            return ChunkEnd::Held;
        }
        if let Err(e) = start_chunk(b, held.len() as u64, last, &held).await {
            return ChunkEnd::BackendFailed(e);
        }
    }
    ChunkEnd::Complete
}

/// `BDAT size [LAST]` and the chunk's first bytes.
async fn start_chunk(
    backend: &mut Backend,
    size: u64,
    last: bool,
    first: &[u8],
) -> Result<(), BackendError> {
    backend.start_chunk(size, last).await?;
    if first.is_empty() {
        return Ok(());
    }
    backend.send_text(first).await
}

/// Sends `bytes` as a chunk of their own (not the last) and reads its reply: `Some` when the
/// backend refused it.
async fn interim_chunk(backend: &mut Backend, bytes: &[u8]) -> Result<Option<Reply>, BackendError> {
    start_chunk(backend, bytes.len() as u64, false, bytes).await?;
    let reply = backend.read_reply().await?;
    Ok((!reply.is_positive()).then_some(reply))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::smtp::test_peers::{Until, backend_session, client_connection, recording_backend};

    #[test]
    fn a_bdat_line_is_read_by_its_grammar() {
        use BdatLine::{Chunk, Malformed, TooLarge};
        for (line, read) in [
            (
                &b"BDAT 0 LAST"[..],
                Chunk {
                    size: 0,
                    last: true,
                },
            ),
            (
                b"BDAT 1234",
                Chunk {
                    size: 1234,
                    last: false,
                },
            ),
            (
                b"BDAT 1234\r\n",
                Chunk {
                    size: 1234,
                    last: false,
                },
            ),
            (
                b"bdat  17  last\r\n",
                Chunk {
                    size: 17,
                    last: true,
                },
            ),
            (
                b"BDAT\t5\tLast",
                Chunk {
                    size: 5,
                    last: true,
                },
            ),
            (
                b"BDAT 18446744073709551615",
                Chunk {
                    size: u64::MAX,
                    last: false,
                },
            ),
            (b"BDAT 18446744073709551616", TooLarge),
            (b"BDAT 99999999999999999999999999999 LAST", TooLarge),
            (b"BDAT", Malformed),
            (b"BDAT x", Malformed),
            (b"BDAT 12x LAST", Malformed),
            (b"BDAT -1", Malformed),
            (b"BDAT 5 LAST EXTRA", Malformed),
            (b"BDAT 5 LAST LAST", Malformed),
            (b"BDAT 5 MORE", Malformed),
            (b"BDAT 5 LASTX", Malformed),
            (b"BDATX 5", Malformed),
            (b"BDAT LAST", Malformed),
        ] {
            assert_eq!(bdat_line(line), read, "{}", String::from_utf8_lossy(line));
        }
    }

    /// Relays one chunk of `size` announced bytes out of `client_bytes` (what follows the BDAT
    /// line); returns how it ended, what the backend got and what is left in the client buffer.
    async fn relay(
        client_bytes: &'static [u8],
        size: u64,
        prefix: &[u8],
        backend_expects: usize,
    ) -> (ChunkEnd, Vec<u8>, Vec<u8>) {
        let (backend_addr, recorder) = recording_backend(Until::Bytes(backend_expects)).await;
        let mut backend = backend_session(backend_addr).await;
        assert!(backend.caps().chunking());
        let (mut conn, client) =
            client_connection(vec![client_bytes.to_vec()], Duration::ZERO).await;
        let client = client.await.expect("client");
        let limits = ChunkLimits {
            timeout: Duration::from_millis(500),
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let end = relay_chunk(
            &mut conn,
            Some(&mut backend),
            None,
            prefix,
            size,
            true,
            &limits,
        )
        .await;
        let mut rest = Vec::new();
        // Whatever the client sent after the chunk is still there, for the command loop.
        while conn.buffered() < client_bytes.len().saturating_sub(size as usize) {
            if conn
                .read_more_until(Instant::now() + Duration::from_millis(200))
                .await
                .is_err()
            {
                break;
            }
        }
        conn.take_into(usize::MAX, &mut rest);
        drop(client);
        drop(backend);
        (end, recorder.await.expect("recorder"), rest)
    }

    #[tokio::test]
    async fn a_chunk_is_relayed_byte_for_byte_under_the_gateways_own_count() {
        // Dots, bare LF, bare CR and even "\r\n.\r\n" plus commands: opaque chunk content.
        let chunk = b"Subject: x\r\n\r\n.leading dot\nbare LF\rbare CR\r\n.\r\nMAIL FROM:<a@b>\r\n";
        let mut sent = chunk.to_vec();
        sent.extend_from_slice(b"QUIT\r\n");
        let sent: &'static [u8] = Box::leak(sent.into_boxed_slice());
        let header = format!("BDAT {} LAST\r\n", chunk.len());
        let (end, got, rest) =
            relay(sent, chunk.len() as u64, b"", header.len() + chunk.len()).await;
        assert!(matches!(end, ChunkEnd::Complete), "{end:?}");
        let mut expected = header.into_bytes();
        expected.extend_from_slice(chunk);
        assert_eq!(got, expected);
        assert_eq!(
            rest, b"QUIT\r\n",
            "the next command stays for the command loop"
        );
    }

    #[tokio::test]
    async fn the_prefix_goes_in_front_of_the_chunk_and_is_counted() {
        let prefix = b"X-Added: 1\r\n";
        let chunk = b"Subject: y\r\n\r\nbody\r\n";
        let header = format!("BDAT {} LAST\r\n", prefix.len() + chunk.len());
        let expect = header.len() + prefix.len() + chunk.len();
        let (end, got, _) = relay(chunk, chunk.len() as u64, prefix, expect).await;
        assert!(matches!(end, ChunkEnd::Complete));
        let mut expected = header.into_bytes();
        expected.extend_from_slice(prefix);
        expected.extend_from_slice(chunk);
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_short_chunk_is_waited_for_then_times_out() {
        // A timeout, which the session answers with 421 4.4.2 (a client that is gone gets
        // nothing).
        let (end, _, _) = relay(b"only part", 100, b"", 20).await;
        assert!(matches!(end, ChunkEnd::Timeout), "{end:?}");
    }
}

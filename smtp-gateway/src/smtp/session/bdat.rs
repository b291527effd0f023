//! BDAT (RFC 3030 CHUNKING): the message text in counted chunks, each relayed to the backend as
//! one chunk of the same length as it arrives (`smtp/chunk.rs`), each answered with the backend's
//! own reply (never a `250` the backend did not give).
//!
//! CHUNKING is offered only where the backend offers it: the session's backend when it is open
//! at EHLO (`backend.connect_at = "ehlo"`, a submission login, a repeated EHLO), else what the last
//! backend session the pool handed out offered. A backend without CHUNKING never sees BDAT: the
//! gateway does not convert chunks to DATA. A chunk is opaque bytes (bare CR and LF, lone dots,
//! binary): converting it to DATA would mean rewriting those bytes (dot-stuffing, line endings,
//! line lengths) and so changing the message, and one final reply for many chunk replies; when
//! the backend that serves the transaction turns out to lack CHUNKING (failover to a server
//! without it, or its configuration changed since the EHLO), the chunk is read and discarded and
//! answered `451 4.3.3`, so the client retries later rather than have its message altered.
//!
//! The gateway answers a chunk itself, after reading and discarding it (RFC 3030 section 3: the
//! stream stays in step with the client, whose next command follows the chunk), when there is no
//! transaction (`503`), after HELO instead of EHLO (`503`: CHUNKING was never offered; the
//! backend session, told HELO too, offers no extensions), when DATA was tried in it (`503`,
//! section 2), when no recipient was
//! accepted (`554`), or when the chunks together would pass `smtp.max_message_size` (`552 5.3.4`;
//! the backend transaction is reset). Pipelined BDATs after a refused one meet no transaction
//! and get `503`s that are not counted as errors. A chunk announced over `smtp.max_chunk_size`
//! is not read: `552 5.3.4` and the session closes (reading it only to throw it away would let a
//! client hold the session for `smtp.max_data_duration`). A BDAT line outside RFC 3030's
//! grammar (`BDAT chunk-size [LAST]`, nothing after `LAST`) gets `501 5.5.4` and the session
//! closes too: where its chunk ends is unknown.
//!
//! The client's forged `Authentication-Results` fields are taken out of a chunked message's
//! header block as they are out of DATA (`chunk_headers.rs`, `chunk.rs`). A chunk that ends inside
//! a header line the filter must still read is held: it is answered `250 2.0.0 n octets
//! received` by the gateway and its bytes go to the backend with the next chunk. That reply
//! accepts a chunk, never the message: only the backend's reply to the last chunk does that.
//!
//! Time: every chunk of a transaction must be in within `smtp.max_data_duration` of its first
//! BDAT (or by the session's end), each read within `smtp.data_timeout`, as for DATA.

use super::{Body, Flow, Session, waits::Stall};
use crate::smtp::{
    backend::BackendError,
    chunk::{self, BdatLine, ChunkEnd, ChunkLimits},
    chunk_headers::ChunkHeaders,
    reply::Reply,
    text::TextViolation,
};

/// Why the gateway answers a chunk itself (it is read and discarded first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No open transaction.
    NoTransaction,
    /// The client said HELO, not EHLO: CHUNKING was never offered (RFC 3030 section 2).
    NotEsmtp,
    /// DATA was tried in this transaction.
    AfterData,
    /// No recipient was accepted.
    NoRecipients,
    /// The chunks together pass `smtp.max_message_size`.
    TooBig,
    /// The transaction's backend does not offer CHUNKING.
    NoChunking,
    /// The transaction has no backend (it was lost).
    NoBackend,
}

impl Session {
    /// Whether CHUNKING is offered to the client: the session's backend offers it, or, before
    /// that is open, the last backend session the pool handed out did.
    pub(super) fn backend_chunking(&self) -> bool {
        match &self.backend {
            Some(backend) => backend.caps().chunking(),
            None => self.shared.backend_pool.chunking_seen(),
        }
    }

    /// What a chunked message's first chunk starts with at the backend (the gateway's
    /// `Authentication-Results:` header; that chunk's count includes it) and the filter of the
    /// client's forged ones, kept for every chunk of the message. Nothing when there is nothing
    /// to report (`dns_checks.rs`).
    fn chunked_message_start(&self) -> (Vec<u8>, Option<ChunkHeaders>) {
        match self.auth_results() {
            Some((header, filter)) => (
                header,
                Some(ChunkHeaders::new(
                    filter,
                    self.shared.config.smtp.max_text_line,
                )),
            ),
            None => (Vec::new(), None),
        }
    }

    /// `BDAT n [LAST]` (`raw` the command line as received, read by its grammar here, not by
    /// smtp-proto's) and its chunk. A line outside the grammar, or a chunk over
    /// `smtp.max_chunk_size`, closes the session: the first cannot be measured, and nothing after
    /// it can be told apart from commands; reading the second only to throw it away would let a
    /// client hold the session for `smtp.max_data_duration`.
    pub(super) async fn handle_bdat(&mut self, raw: &[u8]) -> Flow {
        let smtp = &self.shared.config.smtp;
        let max_chunk = smtp.max_chunk_size;
        let (size, last) = match chunk::bdat_line(raw) {
            BdatLine::Chunk { size, last } if size <= max_chunk => (size, last),
            BdatLine::Chunk { .. } | BdatLine::TooLarge => {
                tracing::info!(client = %self.client, line = %String::from_utf8_lossy(raw), "BDAT chunk over smtp.max_chunk_size; closing without reading it");
                self.reply(Reply::new(
                    552,
                    format!("5.3.4 BDAT chunk larger than {max_chunk} bytes, closing connection"),
                ));
                return Flow::Close;
            }
            BdatLine::Malformed => {
                tracing::info!(client = %self.client, line = %String::from_utf8_lossy(raw), "BDAT line outside its syntax; closing");
                self.reply(Reply::new(
                    501,
                    "5.5.4 Syntax: BDAT chunk-size [LAST], closing connection",
                ));
                return Flow::Close;
            }
        };
        let (so_far, deadline) = match self.txn.as_ref().map(|t| t.body) {
            Some(Body::Chunks { size, deadline }) => (size, deadline),
            _ => (
                0,
                (tokio::time::Instant::now() + smtp.max_data_duration).min(self.ends_by),
            ),
        };
        let limits = ChunkLimits {
            timeout: smtp.data_timeout,
            deadline,
        };
        let total = so_far.saturating_add(size);
        if let Some(refusal) = self.chunk_refusal(total) {
            let end =
                chunk::relay_chunk(&mut self.conn, None, None, &[], size, last, &limits).await;
            if let Some(flow) = self.chunk_unfinished(end, &limits) {
                return flow;
            }
            return self.refuse_chunk(refusal, last).await;
        }
        let prefix = if !self.txn_has_chunks() {
            let (prefix, headers) = self.chunked_message_start();
            if let Some(txn) = self.txn.as_mut() {
                txn.chunk_headers = headers;
            }
            prefix
        } else {
            Vec::new()
        };
        let end = chunk::relay_chunk(
            &mut self.conn,
            self.backend.as_mut(),
            self.txn.as_mut().and_then(|t| t.chunk_headers.as_mut()),
            &prefix,
            size,
            last,
            &limits,
        )
        .await;
        self.bytes += size;
        if let Some(txn) = self.txn.as_mut() {
            txn.body = Body::Chunks {
                size: total,
                deadline,
            };
        }
        let reply = match end {
            // The filter holds the chunk's bytes (they go with the next chunk): the chunk is
            // answered here, never the message (only the backend's reply to LAST is that).
            ChunkEnd::Held => Ok(Reply::new(250, format!("2.0.0 {size} octets received"))),
            ChunkEnd::Refused(reply) => Ok(reply),
            ChunkEnd::Complete => match self.backend.as_mut() {
                Some(backend) => backend.read_reply().await,
                None => Err(BackendError::Closed),
            },
            unfinished => match self.chunk_unfinished(unfinished, &limits) {
                Some(flow) => return flow,
                None => Err(BackendError::Closed),
            },
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return self.backend_lost(e),
        };
        if last
            && let Some(dropped) = self
                .txn
                .as_ref()
                .and_then(|t| t.chunk_headers.as_ref())
                .map(ChunkHeaders::dropped)
                .filter(|n| *n > 0)
        {
            tracing::info!(client = %self.client, dropped, "client's Authentication-Results with our authserv-id removed");
        }
        if last {
            self.txn = None;
            self.final_reply(reply);
        } else {
            self.reply(reply);
        }
        Flow::Continue
    }

    /// Whether the open transaction already had a chunk.
    fn txn_has_chunks(&self) -> bool {
        matches!(self.txn.as_ref().map(|t| t.body), Some(Body::Chunks { .. }))
    }

    /// Why the gateway must answer this chunk itself, `total` the message size with it.
    fn chunk_refusal(&self, total: u64) -> Option<Refusal> {
        let Some(txn) = self.txn.as_ref() else {
            return Some(Refusal::NoTransaction);
        };
        if !self.esmtp {
            return Some(Refusal::NotEsmtp);
        }
        let refusal = if txn.body == Body::Data {
            Refusal::AfterData
        } else if txn.accepted == 0 {
            Refusal::NoRecipients
        } else if total > self.shared.config.smtp.max_message_size {
            Refusal::TooBig
        } else {
            match &self.backend {
                None => Refusal::NoBackend,
                Some(backend) if !backend.caps().chunking() => Refusal::NoChunking,
                Some(_) => return None,
            }
        };
        Some(refusal)
    }

    /// How a chunk's reading ended, when it did not end with every byte read: the session
    /// closes (the backend, possibly mid-chunk, is dropped) or the backend is lost.
    fn chunk_unfinished(&mut self, end: ChunkEnd, limits: &ChunkLimits) -> Option<Flow> {
        match end {
            ChunkEnd::Complete | ChunkEnd::Held | ChunkEnd::Refused(_) => None,
            ChunkEnd::BackendFailed(e) => Some(self.backend_lost(e)),
            ChunkEnd::ClientGone => {
                self.backend = None;
                Some(Flow::Close)
            }
            ChunkEnd::Timeout => {
                // Abort the backend transaction: it never got the whole chunk.
                self.backend = None;
                Some(self.close_stalled(Stall::Idle, "BDAT"))
            }
            ChunkEnd::TimeLimit => {
                // Abort the backend transaction: it never got the whole chunk.
                self.backend = None;
                let stall = self.stall_at(limits.deadline, Stall::Transfer);
                Some(self.close_stalled(stall, "BDAT"))
            }
        }
    }

    /// Answers a chunk the gateway refused (already read and discarded).
    async fn refuse_chunk(&mut self, refusal: Refusal, last: bool) -> Flow {
        match refusal {
            Refusal::NoTransaction => {
                self.reply(Reply::new(503, "5.5.1 Need MAIL before BDAT"));
                self.no_transaction_error(last).unwrap_or(Flow::Continue)
            }
            Refusal::NotEsmtp => {
                self.reply(Reply::new(
                    503,
                    "5.5.1 BDAT needs EHLO and CHUNKING (RFC 3030)",
                ));
                self.count_error().unwrap_or(Flow::Continue)
            }
            Refusal::AfterData => {
                self.reply(Reply::new(
                    503,
                    "5.5.1 BDAT after DATA in one transaction; send RSET",
                ));
                self.count_error().unwrap_or(Flow::Continue)
            }
            Refusal::NoRecipients => {
                self.reply(Reply::new(554, "5.5.1 No valid recipients"));
                Flow::Continue
            }
            Refusal::TooBig => {
                self.shared.metrics.message(false);
                self.end_chunked_transaction().await;
                self.reply(TextViolation::TooBig.reply());
                Flow::Continue
            }
            Refusal::NoChunking => {
                tracing::warn!(client = %self.client, "the transaction's backend does not offer CHUNKING; BDAT refused");
                self.end_chunked_transaction().await;
                self.reply(Reply::new(
                    451,
                    "4.3.3 CHUNKING is not available at the moment, try again later",
                ));
                Flow::Continue
            }
            Refusal::NoBackend => self.backend_lost(BackendError::Closed),
        }
    }

    /// Ends a transaction the gateway refused: the backend resets its side (chunks it already
    /// got included; one that fails at it is let go), and the client's pipelined BDATs that
    /// follow meet no transaction, their `503`s excused.
    async fn end_chunked_transaction(&mut self) {
        self.txn = None;
        self.excuse_group();
        if let Some(backend) = self.backend.as_mut()
            && let Err(e) = backend.command(b"RSET").await
        {
            tracing::warn!(client = %self.client, error = %e, "backend failed at RSET; reconnecting when needed");
            self.backend = None;
        }
    }
}

//! The message-text relay: the text between `354` and the end of data, streamed to the backend
//! without buffering the whole message. (The DATA verb itself is `session/data.rs`.)
//!
//! Only `CRLF . CRLF` ends the data. Lines are forwarded byte for byte (dot-stuffing included) when
//! they end with CRLF and hold no bare CR. A bare LF or bare CR is either refused (the backend
//! transaction is aborted by closing it before the final dot, so it can never accept a partial
//! or smuggled message) or normalised to CRLF, dot-stuffing any resulting lone ".", so no backend
//! can read an end of data anywhere but where the gateway does.
//!
//! Time: each line must arrive within `smtp.data_timeout`, the whole text by `TextLimits::deadline`
//! (`smtp.max_data_duration`, or the session's end if sooner), and the text received is passed on
//! to the backend at least every `smtp.text_flush_interval` (not only every 64 KiB), so the
//! backend of a slow but honest sender never sits idle into its own timeout.
//!
//! With a [`HeaderRewrite`], an `Authentication-Results` header goes in before the first line and
//! each line passes the header-block filter until the end of the header block
//! (`auth_results.rs`); nothing more is buffered.

use tokio::time::Instant;

use super::{
    auth_results::HeaderFilter,
    backend::{Backend, BackendError},
    config::BareNewlinePolicy,
    connection::{ConnError, Connection, Ending},
    reply::Reply,
};

/// Text is sent to the backend in chunks of about this size.
const FLUSH_AT: usize = 64 * 1024;

/// Limits for one message.
pub struct TextLimits {
    /// Largest message (`smtp.max_message_size`), in bytes.
    pub max_size: u64,
    /// Longest text line, CRLF included (`smtp.max_text_line`).
    pub max_line: usize,
    /// What a bare LF or CR does (`smtp.bare_newlines`).
    pub bare_newlines: BareNewlinePolicy,
    /// Time allowed for each line (`smtp.data_timeout`).
    pub timeout: std::time::Duration,
    /// When the whole text must be in (`smtp.max_data_duration` from the `354`, or the end of the
    /// session if sooner).
    pub deadline: tokio::time::Instant,
    /// Text received is sent to the backend at least this often (`smtp.text_flush_interval`).
    pub flush_interval: std::time::Duration,
    /// Over-long lines refuse the message (`long_line` check not `ignore`/`score`).
    pub refuse_long_lines: bool,
}

/// Something in the text the gateway refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextViolation {
    BareNewline,
    LongLine,
    TooBig,
}

impl TextViolation {
    /// The reply refusing the message.
    pub fn reply(self) -> Reply {
        match self {
            TextViolation::BareNewline => Reply::new(
                554,
                "5.6.0 Message refused: bare LF or bare CR in message text (RFC 5321 section 2.3.8)",
            ),
            TextViolation::LongLine => Reply::new(
                554,
                "5.6.0 Message refused: text line too long (RFC 5321 section 4.5.3.1.6)",
            ),
            TextViolation::TooBig => Reply::new(552, "5.3.4 Message size exceeds the fixed limit"),
        }
    }
}

/// 1 when `data` starts with the dot a client doubles at the start of a line (a line the client
/// started, not a folded rest), else 0.
fn stuffing_dot(at_client_line_start: bool, folded: bool, data: &[u8]) -> u64 {
    u64::from(at_client_line_start && !folded && data.first() == Some(&b'.'))
}

/// `data` after `first`: the fold's space, or a stuffing dot.
fn prefixed(first: u8, data: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(data.len() + 1);
    line.push(first);
    line.extend_from_slice(data);
    line
}

/// How relaying one message's text ended.
pub enum TextRelayEnd {
    /// The backend's final reply (positive or not): relay it. `folded`: a line longer than
    /// `max_text_line` was folded (long_line not refusing), which the caller reports.
    Relayed { reply: Reply, folded: bool },
    /// Refused by the gateway; the backend transaction was aborted.
    Refused(TextViolation),
    /// The backend failed while the text streamed (the client's text was read to its end).
    BackendFailed(BackendError),
    /// The client disconnected before the end of data.
    ClientGone,
    /// The client sent nothing for `smtp.data_timeout` before the end of data (the backend
    /// transaction must be aborted; the client is told `421`).
    Timeout,
    /// The text was not complete by [`TextLimits::deadline`]; the backend transaction must be
    /// aborted (it never saw the final dot).
    TimeLimit,
}

/// Streams one message from `conn` to `backend`. On `Refused` and `BackendFailed` the caller
/// must drop the backend (it is mid-DATA).
pub async fn relay_message(
    conn: &mut Connection,
    backend: &mut Backend,
    limits: &TextLimits,
) -> (TextRelayEnd, u64) {
    relay_message_filtered(conn, backend, limits, None).await
}

/// What the relay adds to the message and takes out of its header block
/// (`auth_results.rs`).
pub struct HeaderRewrite<'a> {
    /// Header lines put in before the client's first line (CRLF-terminated).
    pub prepend: &'a [u8],
    /// The header-block filter each line goes through.
    pub filter: &'a mut HeaderFilter,
}

/// [`relay_message`] with `rewrite`: its header goes in before the first line, and every line
/// passes its filter (which stops looking at the end of the header block).
pub async fn relay_message_filtered(
    conn: &mut Connection,
    backend: &mut Backend,
    limits: &TextLimits,
    mut rewrite: Option<HeaderRewrite<'_>>,
) -> (TextRelayEnd, u64) {
    let mut size: u64 = 0;
    let mut violation: Option<TextViolation> = None;
    let mut backend_error: Option<BackendError> = None;
    let mut out: Vec<u8> = Vec::with_capacity(FLUSH_AT + 1024);
    if let Some(rewrite) = &rewrite {
        out.extend_from_slice(rewrite.prepend);
    }
    // One line of text as it goes to the backend (through the header filter, if any).
    let mut emit = |out: &mut Vec<u8>, line: &[u8]| match rewrite.as_mut() {
        Some(rewrite) if !rewrite.filter.in_body() => rewrite.filter.line(line, out),
        _ => {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    };
    // The line before the current one ended with a real CRLF (the DATA command did).
    let mut prev_crlf = true;
    // The line before the current one was a piece of a longer line, and this is its rest.
    let mut continued = false;
    // A line was folded (long_line not refusing): the caller fires the check.
    let mut folded_lines = false;
    // Lines are read with room for the CRLF; anything longer is flagged.
    let read_max = limits.max_line.max(3);
    // When the text received so far must be with the backend at the latest.
    let mut flush_due = Instant::now() + limits.flush_interval;
    // The end of a read that timed out: the whole text's deadline, or only the line's.
    let timed_out = |line_deadline: Instant| {
        if line_deadline >= limits.deadline {
            TextRelayEnd::TimeLimit
        } else {
            TextRelayEnd::Timeout
        }
    };
    loop {
        let line_deadline = (Instant::now() + limits.timeout).min(limits.deadline);
        // Before waiting for the client, what it sent is passed on once the flush is due.
        while !out.is_empty() && !conn.has_line() {
            match conn
                .wait_line_until(read_max, flush_due.min(line_deadline))
                .await
            {
                Ok(()) => break,
                Err(ConnError::Timeout) if Instant::now() < line_deadline => {
                    if let Err(e) = backend.send_text(&out).await {
                        backend_error = Some(e);
                    }
                    out.clear();
                    flush_due = Instant::now() + limits.flush_interval;
                }
                Err(ConnError::Timeout) => return (timed_out(line_deadline), size),
                Err(ConnError::Io(_)) => return (TextRelayEnd::ClientGone, size),
            }
        }
        // A line longer than the limit is refused whole, or (long_line not refusing) read in
        // pieces and folded, never cut short.
        let read = if limits.refuse_long_lines {
            conn.read_line_until(read_max, line_deadline).await
        } else {
            conn.read_piece_until(read_max, line_deadline).await
        };
        let line = match read {
            Ok(Some(line)) => line,
            Err(ConnError::Timeout) => return (timed_out(line_deadline), size),
            Ok(None) | Err(ConnError::Io(_)) => {
                return (TextRelayEnd::ClientGone, size);
            }
        };
        if line.ending == Ending::Eof {
            return (TextRelayEnd::ClientGone, size);
        }
        // A piece of a longer line ends as cleanly as a line (the fold is the gateway's).
        let clean_crlf = matches!(line.ending, Ending::CrLf | Ending::Continues) && !line.bare_cr;
        // (After a piece `prev_crlf` is false: the rest of a folded line never ends the data.)
        if line.data == b"." && line.ending == Ending::CrLf && prev_crlf {
            break;
        }
        // Whether this line starts where the client started a line (after a real CRLF), or is
        // the folded rest of one (which starts with the gateway's space). If not, it only starts
        // a line because the gateway normalises the bare LF before it.
        let at_client_line_start = prev_crlf || continued;
        let folded = continued;
        continued = line.ending == Ending::Continues;
        folded_lines |= continued;
        prev_crlf = line.ending == Ending::CrLf;
        // The message's bytes (RFC 1870): its line endings, not the fold, and not the dot the
        // client doubled at the start of a line for the transfer.
        let stuffing = stuffing_dot(at_client_line_start, folded, &line.data);
        size += line.data.len() as u64 + if continued { 0 } else { 2 } - stuffing;
        if violation.is_none() {
            if size > limits.max_size {
                violation = Some(TextViolation::TooBig);
            } else if line.too_long && limits.refuse_long_lines {
                violation = Some(TextViolation::LongLine);
            } else if (!clean_crlf || !at_client_line_start)
                && limits.bare_newlines == BareNewlinePolicy::Reject
            {
                violation = Some(TextViolation::BareNewline);
            }
        }
        if violation.is_some() || backend_error.is_some() {
            continue;
        }
        if clean_crlf && at_client_line_start {
            if folded {
                // Folded as Postfix's SMTP client folds (CRLF and a space): a header stays a
                // header, and the piece can never start with a dot.
                emit(&mut out, &prefixed(b' ', &line.data));
            } else if line.ending == Ending::Continues && line.data == b"." {
                // The first piece of a folded line is a line of its own at the backend: a lone
                // dot there would end the data. Stuffed, it stays text.
                emit(&mut out, &prefixed(b'.', &line.data));
            } else {
                emit(&mut out, &line.data);
            }
        } else {
            // Normalise: every bare CR and bare LF becomes CRLF. A piece that starts a line only
            // because of that was never dot-stuffed by the client: stuff it, so the backend reads
            // its leading dot as text and a lone "." can never end the data there.
            // A piece that is exactly "." (e.g. the client's ".\r..." line split at the bare CR)
            // is stuffed wherever it comes from: only the real end of data may be a lone dot.
            for (k, piece) in line.data.split(|b| *b == b'\r').enumerate() {
                let synthetic_start = k > 0 || !at_client_line_start;
                if k == 0 && folded {
                    emit(&mut out, &prefixed(b' ', piece));
                } else if (synthetic_start && piece.first() == Some(&b'.')) || piece == b"." {
                    emit(&mut out, &prefixed(b'.', piece));
                } else {
                    emit(&mut out, piece);
                }
            }
        }
        if out.len() >= FLUSH_AT {
            if let Err(e) = backend.send_text(&out).await {
                backend_error = Some(e);
            }
            out.clear();
            flush_due = Instant::now() + limits.flush_interval;
        }
    }
    if let Some(v) = violation {
        return (TextRelayEnd::Refused(v), size);
    }
    if let Some(e) = backend_error {
        return (TextRelayEnd::BackendFailed(e), size);
    }
    if let Some(rewrite) = rewrite.as_mut() {
        rewrite.filter.finish(&mut out);
    }
    // Nothing may have come back before the final dot: an early reply would be taken for the
    // message's (a 250 for a message the backend then refuses).
    if backend.spoke_out_of_turn() {
        let e = BackendError::Protocol("a reply before the end of the message text".into());
        return (TextRelayEnd::BackendFailed(e), size);
    }
    out.extend_from_slice(b".\r\n");
    if let Err(e) = backend.send_text(&out).await {
        return (TextRelayEnd::BackendFailed(e), size);
    }
    match backend.read_reply().await {
        Ok(reply) => (
            TextRelayEnd::Relayed {
                reply,
                folded: folded_lines,
            },
            size,
        ),
        Err(e) => (TextRelayEnd::BackendFailed(e), size),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::smtp::test_peers::{Until, backend_session, client_connection, recording_backend};

    /// Relays `client_text` (what the client sends after 354) and returns the outcome and the
    /// bytes the backend received.
    async fn relay(
        client_text: &'static [u8],
        policy: BareNewlinePolicy,
    ) -> (TextRelayEnd, Vec<u8>) {
        relay_with(client_text, policy, true).await
    }

    async fn relay_with(
        client_text: &'static [u8],
        policy: BareNewlinePolicy,
        refuse_long_lines: bool,
    ) -> (TextRelayEnd, Vec<u8>) {
        let (outcome, text, _) = relay_sized(client_text, policy, refuse_long_lines).await;
        (outcome, text)
    }

    /// [`relay_with`], with the message size the relay counted.
    async fn relay_sized(
        client_text: &'static [u8],
        policy: BareNewlinePolicy,
        refuse_long_lines: bool,
    ) -> (TextRelayEnd, Vec<u8>, u64) {
        relay_limited(client_text, policy, refuse_long_lines, 1000).await
    }

    /// [`relay_sized`] with text lines of at most `max_line` bytes.
    async fn relay_limited(
        client_text: &'static [u8],
        policy: BareNewlinePolicy,
        refuse_long_lines: bool,
        max_line: usize,
    ) -> (TextRelayEnd, Vec<u8>, u64) {
        let (backend_addr, recorder) = recording_backend(Until::Dot).await;
        let mut backend = backend_session(backend_addr).await;
        let (mut conn, _client) =
            client_connection(vec![client_text.to_vec()], Duration::ZERO).await;
        let limits = TextLimits {
            max_size: 1 << 20,
            max_line,
            bare_newlines: policy,
            timeout: Duration::from_secs(2),
            deadline: Instant::now() + Duration::from_secs(10),
            flush_interval: Duration::from_secs(5),
            refuse_long_lines,
        };
        let (outcome, size) = relay_message(&mut conn, &mut backend, &limits).await;
        drop(backend);
        let text = recorder.await.expect("recorder");
        (outcome, text, size)
    }

    #[tokio::test]
    async fn a_client_silent_in_its_text_is_a_timeout_not_a_client_gone() {
        // The session answers a timeout with 421 4.4.2 (a client that is gone gets nothing).
        let (outcome, received, _) = relay_sized(
            b"Subject: x\r\n\r\npartial",
            BareNewlinePolicy::Reject,
            true,
        )
        .await;
        assert!(matches!(outcome, TextRelayEnd::Timeout), "timeout");
        assert!(!received.ends_with(b"\r\n.\r\n"), "no end of data");
    }

    #[tokio::test]
    async fn a_folded_line_whose_first_piece_is_a_lone_dot_ends_nothing() {
        // Found by the text_relay fuzz target: with a short line limit, a line ".\rMA" was cut
        // before its CR into the piece "." and forwarded as ".\r\n", an end of data in the
        // middle of the message (the rest would have reached the backend as commands).
        let (outcome, received, _) = relay_limited(
            b"a\r\n.\rMA\r\n.\r\n",
            BareNewlinePolicy::Normalize,
            false,
            3,
        )
        .await;
        assert!(matches!(outcome, TextRelayEnd::Relayed { .. }), "relayed");
        let text = String::from_utf8_lossy(&received).into_owned();
        assert_eq!(text.matches("\r\n.\r\n").count(), 1, "{text:?}");
        assert!(text.ends_with("\r\n.\r\n"), "{text:?}");
    }

    #[tokio::test]
    async fn the_size_counts_the_message_not_its_stuffing_dots() {
        // RFC 1870: the size is the message's, CRLFs included, without the dots the client
        // doubled for the transfer. ".a" is sent as "..a".
        let (_, _, size) = relay_sized(b"..a\r\nb\r\n.\r\n", BareNewlinePolicy::Reject, true).await;
        assert_eq!(size, 7, "\".a\\r\\nb\\r\\n\"");
    }

    const SMUGGLE: &str =
        "MAIL FROM:<s@evil.test>\r\nRCPT TO:<v@example.org>\r\nDATA\r\nsmuggled\r\n";

    fn variants() -> Vec<(&'static str, &'static [u8])> {
        let leak = |v: &str| -> &'static [u8] {
            Box::leak(
                format!("Subject: x\r\n\r\ntext{v}{SMUGGLE}.\r\n")
                    .into_bytes()
                    .into_boxed_slice(),
            )
        };
        [
            "\n.\n",
            "\n.\r\n",
            "\r.\r",
            "\r\n.\r",
            "\r.\r\n",
            "\r\n.\n",
            "\n.\r",
            "\r\n.\r\r\n",
        ]
        .into_iter()
        .map(|v| (v, leak(v)))
        .collect()
    }

    #[tokio::test]
    async fn reject_mode_never_sends_the_final_dot_for_any_smuggling_variant() {
        for (variant, text) in variants() {
            let (outcome, received) = relay(text, BareNewlinePolicy::Reject).await;
            assert!(
                matches!(outcome, TextRelayEnd::Refused(TextViolation::BareNewline)),
                "{variant:?}: refused"
            );
            assert!(
                !received.windows(5).any(|w| w == b"\r\n.\r\n"),
                "{variant:?}: the backend must never see an end of data: {:?}",
                String::from_utf8_lossy(&received)
            );
        }
    }

    #[tokio::test]
    async fn normalize_mode_has_exactly_one_end_of_data_at_the_end() {
        for (variant, text) in variants() {
            let (outcome, received) = relay(text, BareNewlinePolicy::Normalize).await;
            assert!(
                matches!(outcome, TextRelayEnd::Relayed { .. }),
                "{variant:?}: relayed"
            );
            let ends = received.windows(5).filter(|w| *w == b"\r\n.\r\n").count();
            assert_eq!(
                ends,
                1,
                "{variant:?}: {:?}",
                String::from_utf8_lossy(&received)
            );
            assert!(received.ends_with(b"\r\n.\r\n"), "{variant:?}");
            assert!(
                !received.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
                "{variant:?}: no bare LF reaches the backend"
            );
            assert!(
                String::from_utf8_lossy(&received).contains("MAIL FROM:<s@evil.test>"),
                "{variant:?}: the would-be commands arrive as text"
            );
        }
    }

    #[tokio::test]
    async fn clean_text_is_forwarded_byte_for_byte_with_its_stuffing() {
        let text = b"Subject: x\r\n\r\n..leading dot\r\nline\r\n.\r\n";
        let (outcome, received) = relay(text, BareNewlinePolicy::Reject).await;
        assert!(matches!(outcome, TextRelayEnd::Relayed { .. }));
        assert_eq!(received, text.to_vec());
    }

    /// An over-long line must not hide the end of data after it, nor count as a bare newline.
    #[tokio::test]
    async fn an_over_long_text_line_keeps_the_end_of_data_in_sight() {
        let text: &'static [u8] = Box::leak(
            format!("Subject: x\r\n\r\n{}\r\n.\r\n", "x".repeat(1200))
                .into_bytes()
                .into_boxed_slice(),
        );
        let (outcome, _) = relay_with(text, BareNewlinePolicy::Reject, true).await;
        assert!(matches!(
            outcome,
            TextRelayEnd::Refused(TextViolation::LongLine)
        ));
        let (outcome, received) = relay_with(text, BareNewlinePolicy::Reject, false).await;
        assert!(
            matches!(outcome, TextRelayEnd::Relayed { .. }),
            "long_line ignored: relayed"
        );
        assert!(received.ends_with(b"\r\n.\r\n"));
    }

    #[tokio::test]
    async fn an_over_long_text_line_let_through_loses_no_byte() {
        // long_line = "ignore"/"score": the line goes to the backend whole, folded as Postfix's
        // SMTP client folds one (CRLF and a space every max_text_line), never cut short.
        let line = format!("{}.{}TAIL", "a".repeat(1500), "b".repeat(1200));
        let text: &'static [u8] = Box::leak(
            format!("Subject: x\r\n\r\n{line}\r\n.\r\n")
                .into_bytes()
                .into_boxed_slice(),
        );
        let (outcome, received) = relay_with(text, BareNewlinePolicy::Reject, false).await;
        assert!(matches!(outcome, TextRelayEnd::Relayed { .. }), "relayed");
        let received = String::from_utf8(received).expect("text");
        assert!(
            received.split("\r\n").all(|l| l.len() + 2 <= 1000),
            "every line within the limit, CRLF included: {received:?}"
        );
        assert_eq!(
            received.replace("\r\n ", ""),
            format!("Subject: x\r\n\r\n{line}\r\n.\r\n"),
            "folded, nothing lost"
        );
    }

    #[tokio::test]
    async fn normalised_pieces_starting_with_a_dot_are_stuffed() {
        let (_, received) =
            relay(b"a\r.foo\r\nb\n.bar\r\n.\r\n", BareNewlinePolicy::Normalize).await;
        assert_eq!(received, b"a\r\n..foo\r\nb\r\n..bar\r\n.\r\n".to_vec());
    }
}

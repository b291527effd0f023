//! Message text between `354` and the end of data, streamed to the backend without buffering the
//! whole message.
//!
//! Only `CRLF . CRLF` ends the data. Lines are forwarded byte for byte (dot-stuffing included) when
//! they end with CRLF and hold no bare CR. A bare LF or bare CR is either refused (the backend
//! transaction is aborted by closing it before the final dot, so it can never accept a partial
//! or smuggled message) or normalised to CRLF, dot-stuffing any resulting lone ".", so no backend
//! can read an end of data anywhere but where the gateway does.

use super::{
    backend::{Backend, BackendError},
    config::BareNewlinePolicy,
    connection::{ConnError, Connection, Ending},
    reply::Reply,
};

/// Text is sent to the backend in chunks of about this size.
const FLUSH_AT: usize = 64 * 1024;

/// Limits for one message.
pub struct TextLimits {
    pub max_size: u64,
    pub max_line: usize,
    pub bare_newlines: BareNewlinePolicy,
    pub timeout: std::time::Duration,
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

/// How the message ended.
pub enum DataOutcome {
    /// The backend's final reply (positive or not): relay it.
    Relayed(Reply),
    /// Refused by the gateway; the backend transaction was aborted.
    Refused(TextViolation),
    /// The backend failed while the text streamed (the client's text was read to its end).
    BackendFailed(BackendError),
    /// The client disconnected or timed out before the end of data.
    ClientGone,
}

/// Streams one message from `conn` to `backend`. On `Refused` and `BackendFailed` the caller
/// must drop the backend (it is mid-DATA).
pub async fn relay_message(
    conn: &mut Connection,
    backend: &mut Backend,
    limits: &TextLimits,
) -> (DataOutcome, u64) {
    let mut size: u64 = 0;
    let mut violation: Option<TextViolation> = None;
    let mut backend_error: Option<BackendError> = None;
    let mut out: Vec<u8> = Vec::with_capacity(FLUSH_AT + 1024);
    // The line before the current one ended with a real CRLF (the DATA command did).
    let mut prev_crlf = true;
    // Lines are read with room for the CRLF; anything longer is flagged.
    let read_max = limits.max_line.max(3);
    loop {
        let line = match conn.read_line(read_max, limits.timeout).await {
            Ok(Some(line)) => line,
            Ok(None) | Err(ConnError::Timeout) | Err(ConnError::Io(_)) => {
                return (DataOutcome::ClientGone, size);
            }
        };
        if line.ending == Ending::Eof {
            return (DataOutcome::ClientGone, size);
        }
        let clean_crlf = line.ending == Ending::CrLf && !line.bare_cr;
        if line.data == b"." && line.ending == Ending::CrLf && prev_crlf {
            break;
        }
        prev_crlf = line.ending == Ending::CrLf;
        size += line.data.len() as u64 + 2;
        if violation.is_none() {
            if size > limits.max_size {
                violation = Some(TextViolation::TooBig);
            } else if line.too_long && limits.refuse_long_lines {
                violation = Some(TextViolation::LongLine);
            } else if !clean_crlf && limits.bare_newlines == BareNewlinePolicy::Reject {
                violation = Some(TextViolation::BareNewline);
            }
        }
        if violation.is_some() || backend_error.is_some() {
            continue;
        }
        if clean_crlf {
            out.extend_from_slice(&line.data);
            out.extend_from_slice(b"\r\n");
        } else {
            // Normalise: every bare CR and the bare LF become CRLF; a lone "." is stuffed.
            for piece in line.data.split(|b| *b == b'\r') {
                if piece == b"." {
                    out.push(b'.');
                }
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
        }
        if out.len() >= FLUSH_AT {
            if let Err(e) = backend.send_text(&out).await {
                backend_error = Some(e);
            }
            out.clear();
        }
    }
    if let Some(v) = violation {
        return (DataOutcome::Refused(v), size);
    }
    if let Some(e) = backend_error {
        return (DataOutcome::BackendFailed(e), size);
    }
    out.extend_from_slice(b".\r\n");
    if let Err(e) = backend.send_text(&out).await {
        return (DataOutcome::BackendFailed(e), size);
    }
    match backend.read_reply().await {
        Ok(reply) => (DataOutcome::Relayed(reply), size),
        Err(e) => (DataOutcome::BackendFailed(e), size),
    }
}

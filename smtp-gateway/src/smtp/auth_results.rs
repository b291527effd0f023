//! The `Authentication-Results` header (RFC 8601) the gateway prepends to a relayed message, and
//! the filter that drops the client's own headers of that name claiming our authserv-id (RFC 8601
//! section 5), folded continuation lines included.
//!
//! The filter sees the message text one line at a time, as the relay (`text.rs`) reads it, and
//! stops at the first empty line (the end of the header block): the message is never buffered.
//! Only an `Authentication-Results` field whose authserv-id is not on its first line is held, until
//! the id shows up (at most [`MAX_HELD_LINES`] lines; a field still without an id then is dropped).

use std::net::IpAddr;

use serde::Deserialize;

use crate::invalid::Invalid;
use crate::policy::{
    fcrdns::ClientName,
    spf::{SpfIdentity, SpfVerdict},
};

/// Lines of one `Authentication-Results` field held while its authserv-id is not known yet.
pub const MAX_HELD_LINES: usize = 16;

/// Longest accepted `auth_results.authserv_id`.
const MAX_AUTHSERV_ID: usize = 253;

/// `[auth_results]`: the `Authentication-Results` header of relayed mail.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthResultsConfig {
    /// Whether the header is added and the client's ones claiming our authserv-id dropped
    /// (default `true`; only when `[fcrdns]` or `[spf]` is enabled: otherwise there is nothing
    /// to report).
    pub enabled: bool,
    /// The authserv-id (RFC 8601 section 2.5) naming this gateway in the header; empty (the
    /// default): `smtp.hostname`. A domain name, at most 253 characters.
    pub authserv_id: String,
}

impl Default for AuthResultsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            authserv_id: String::new(),
        }
    }
}

impl AuthResultsConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        let id = &self.authserv_id;
        let ok = id.len() <= MAX_AUTHSERV_ID
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !ok {
            return Err(Invalid::new(
                "auth_results.authserv_id",
                format!(
                    "{id:?} is not a host name (letters, digits, '.', '-', '_'; at most {MAX_AUTHSERV_ID})"
                ),
            ));
        }
        Ok(())
    }

    /// The authserv-id in force: `authserv_id`, else `hostname`.
    pub fn id<'a>(&'a self, hostname: &'a str) -> &'a str {
        if self.authserv_id.is_empty() {
            hostname
        } else {
            &self.authserv_id
        }
    }
}

/// The header field name.
const FIELD: &[u8] = b"authentication-results";

/// The `Authentication-Results:` header for `authserv_id` with the `iprev` result of `client`
/// (when the client's name was looked up) and the SPF verdict (when SPF ran), CRLF-terminated.
pub fn header(
    authserv_id: &str,
    client: IpAddr,
    name: Option<&ClientName>,
    spf: Option<&SpfVerdict>,
) -> Vec<u8> {
    let mut out = format!("Authentication-Results: {}", sanitize_token(authserv_id));
    let mut any = false;
    if let Some(name) = name {
        any = true;
        out.push_str(";\r\n\tiprev=");
        out.push_str(name.iprev());
        out.push_str(" policy.iprev=");
        out.push_str(&client.to_canonical().to_string());
        let shown = match name {
            ClientName::Verified { name } => Some(name),
            ClientName::Unverified { reverse } | ClientName::TempFail { reverse } => {
                reverse.as_ref()
            }
        };
        if let Some(shown) = shown {
            out.push_str(" (");
            out.push_str(&sanitize_token(shown));
            out.push(')');
        }
    }
    if let Some(spf) = spf {
        any = true;
        out.push_str(";\r\n\tspf=");
        out.push_str(spf.outcome.name());
        match &spf.identity {
            SpfIdentity::MailFrom(sender) => {
                out.push_str(" smtp.mailfrom=");
                out.push_str(&property_value(sender));
            }
            SpfIdentity::Helo(helo) => {
                out.push_str(" smtp.helo=");
                out.push_str(&property_value(helo));
            }
        }
    }
    if !any {
        out.push_str("; none");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// `text` with everything but letters, digits, `.`, `-`, `_` and `:` left out (names and
/// addresses in the header, never a folded or broken line).
fn sanitize_token(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        .collect()
}

/// `value` as an RFC 8601 property value: as it is when it is made of atext and `@` and `.`,
/// else a quoted-string (control characters left out).
fn property_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.@".contains(c) || !c.is_ascii()
        })
        && !value.chars().any(char::is_control);
    if plain {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Where the filter is in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// In the header block; `dropping`: the current field is one of ours (its continuation
    /// lines go too).
    Headers {
        /// The current field is dropped.
        dropping: bool,
    },
    /// An `Authentication-Results` field whose authserv-id is not known yet (its lines held).
    Holding(Vec<Line>),
    /// Past the header block: everything passes.
    Body,
}

/// One held line: its content (without the line end) and the line end it came with (CRLF for
/// DATA; whatever the client sent inside a BDAT chunk, which is relayed unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// The line without its end.
    content: Vec<u8>,
    /// Its end, as received.
    end: Vec<u8>,
}

impl Line {
    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.content);
        out.extend_from_slice(&self.end);
    }
}

/// Drops the client's `Authentication-Results` fields that claim our authserv-id.
#[derive(Debug)]
pub struct HeaderFilter {
    /// Our authserv-id, lowercase.
    authserv_id: Vec<u8>,
    /// Where the filter is.
    state: State,
    /// Fields dropped so far (for the log).
    dropped: usize,
}

impl HeaderFilter {
    /// A filter for `authserv_id` (compared case-insensitively, with or without one trailing
    /// dot).
    pub fn new(authserv_id: &str) -> Self {
        let id = authserv_id.strip_suffix('.').unwrap_or(authserv_id);
        Self {
            authserv_id: id.to_ascii_lowercase().into_bytes(),
            state: State::Headers { dropping: false },
            dropped: 0,
        }
    }

    /// The fields dropped so far.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Whether the filter is past the header block (every line passes).
    pub fn in_body(&self) -> bool {
        self.state == State::Body
    }

    /// Takes one text line (`line` without its CRLF, as it goes to the backend: dot-stuffed)
    /// and appends what passes to `out`, CRLF-terminated.
    pub fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        self.line_ending(line, b"\r\n", out);
    }

    /// Takes one line, `content` without its end and `end` the bytes that ended it (CRLF, a
    /// bare LF, or nothing for the unterminated end of a BDAT message), and appends what passes
    /// to `out` with its own end.
    pub fn line_ending(&mut self, content: &[u8], end: &[u8], out: &mut Vec<u8>) {
        let line = Line {
            content: content.to_vec(),
            end: end.to_vec(),
        };
        let state = std::mem::replace(&mut self.state, State::Body);
        self.state = match state {
            State::Body => {
                line.emit(out);
                State::Body
            }
            State::Headers { dropping } if is_continuation(content) => {
                if !dropping {
                    line.emit(out);
                }
                State::Headers { dropping }
            }
            State::Holding(mut held) if is_continuation(content) => {
                held.push(line);
                self.decide(held, out)
            }
            State::Holding(held) => {
                // The field ended without an authserv-id: not a claim of ours.
                for held_line in &held {
                    held_line.emit(out);
                }
                self.start_field(line, out)
            }
            State::Headers { .. } => self.start_field(line, out),
        };
    }

    /// A line longer than the filter may hold, of which `start` is known (the rest follows
    /// unseen). Returns whether the whole line passes (`true`: `start` was appended to `out`
    /// and the rest of the line goes after it) or is dropped (`false`: so is its rest). An
    /// over-long line that is, or continues, an `Authentication-Results` field is dropped with
    /// that field: its authserv-id cannot be read, and it is not passed on in our name. Any
    /// other passes and the filter stays in the header block (its end is an empty line).
    pub fn long_line(&mut self, start: &[u8], out: &mut Vec<u8>) -> bool {
        let state = std::mem::replace(&mut self.state, State::Body);
        let continuation = is_continuation(start);
        let (state, passes) = match state {
            State::Body => (State::Body, true),
            State::Headers { dropping } if continuation => (State::Headers { dropping }, !dropping),
            State::Holding(_) if continuation => {
                self.dropped += 1;
                (State::Headers { dropping: true }, false)
            }
            State::Holding(held) => {
                for held_line in &held {
                    held_line.emit(out);
                }
                self.long_field(start)
            }
            State::Headers { .. } => self.long_field(start),
        };
        self.state = state;
        if passes {
            out.extend_from_slice(start);
        }
        passes
    }

    /// An over-long line that starts a field: dropped when it is an `Authentication-Results`.
    fn long_field(&mut self, start: &[u8]) -> (State, bool) {
        let name = start
            .iter()
            .position(|b| *b == b':')
            .and_then(|colon| start.get(..colon))
            .unwrap_or(start);
        if name.trim_ascii_end().eq_ignore_ascii_case(FIELD) {
            self.dropped += 1;
            (State::Headers { dropping: true }, false)
        } else {
            (State::Headers { dropping: false }, true)
        }
    }

    /// The end of the text: a field still held is not a claim of ours (it passes).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let State::Holding(held) = std::mem::replace(&mut self.state, State::Body) {
            for line in held {
                line.emit(out);
            }
        }
    }

    /// A line that is not a continuation, in the header block.
    fn start_field(&mut self, line: Line, out: &mut Vec<u8>) -> State {
        let Some(colon) = line.content.iter().position(|b| *b == b':') else {
            // The empty line, or a line that is no header field: the header block ends (as
            // for the backend, which reads the body from there).
            line.emit(out);
            return State::Body;
        };
        let (name, _) = line.content.split_at(colon);
        if !name.trim_ascii_end().eq_ignore_ascii_case(FIELD) {
            line.emit(out);
            return State::Headers { dropping: false };
        }
        self.decide(vec![line], out)
    }

    /// An `Authentication-Results` field of `held` lines: dropped, passed, or held further.
    fn decide(&mut self, held: Vec<Line>, out: &mut Vec<u8>) -> State {
        let mut value: Vec<u8> = Vec::new();
        for (k, line) in held.iter().enumerate() {
            let line = &line.content;
            let part = if k == 0 {
                line.iter()
                    .position(|b| *b == b':')
                    .and_then(|colon| line.get(colon + 1..))
                    .unwrap_or_default()
            } else {
                line.as_slice()
            };
            value.extend_from_slice(part);
            value.push(b' ');
        }
        // One trailing dot (an absolute domain name) names the same host.
        let ours = |id: &[u8]| {
            let id = id.strip_suffix(b".").unwrap_or(id);
            id.eq_ignore_ascii_case(&self.authserv_id)
        };
        match authserv_id(&value) {
            Some(id) if ours(&id) => {
                self.dropped += 1;
                State::Headers { dropping: true }
            }
            Some(_) => {
                for line in &held {
                    line.emit(out);
                }
                State::Headers { dropping: false }
            }
            None if held.len() >= MAX_HELD_LINES => {
                // No authserv-id in all that: malformed, and not passed on in our name.
                self.dropped += 1;
                State::Headers { dropping: true }
            }
            None => State::Holding(held),
        }
    }
}

/// Whether `line` continues the previous header field (starts with a space or a tab).
fn is_continuation(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// The authserv-id at the start of an `Authentication-Results` value (after comments and white
/// space), or `None` when the value holds none yet.
fn authserv_id(value: &[u8]) -> Option<Vec<u8>> {
    let mut i = 0;
    let mut depth = 0usize;
    // Skip CFWS.
    while let Some(&b) = value.get(i) {
        match b {
            b'\\' if depth > 0 => i += 1,
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let rest = value.get(i..).filter(|r| !r.is_empty())?;
    if let Some(quoted) = rest.strip_prefix(b"\"") {
        let mut id = Vec::new();
        let mut bytes = quoted.iter();
        while let Some(&b) = bytes.next() {
            match b {
                b'"' => return Some(id),
                b'\\' => id.push(*bytes.next()?),
                _ => id.push(b),
            }
        }
        return None;
    }
    let end = rest
        .iter()
        .position(|b| matches!(b, b';' | b' ' | b'\t' | b'(' | b'\r' | b'\n'))
        .unwrap_or(rest.len());
    rest.get(..end).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::spf::SpfOutcome;

    /// Runs `text` (CRLF lines) through a filter for `gw.test`.
    fn filter(text: &str) -> String {
        filter_for("GW.test", text)
    }

    /// Runs `text` (CRLF lines) through a filter for `id`.
    fn filter_for(id: &str, text: &str) -> String {
        let mut f = HeaderFilter::new(id);
        let mut out = Vec::new();
        let body = text.strip_suffix("\r\n").unwrap_or(text);
        for line in body.split("\r\n") {
            f.line(line.as_bytes(), &mut out);
        }
        f.finish(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn our_fields_go_with_their_continuations_others_stay() {
        let text = "Received: from x\r\n\tby y\r\n\
            Authentication-Results: gw.test; spf=pass\r\n\
            \tsmtp.mailfrom=a@b\r\n\
            Authentication-Results: other.test; spf=fail\r\n\
            authentication-results :  (comment (nested) ) \"GW.TEST\"; none\r\n\
            Subject: hi\r\n\
            \r\n\
            Authentication-Results: gw.test; in the body\r\n";
        assert_eq!(
            filter(text),
            "Received: from x\r\n\tby y\r\n\
            Authentication-Results: other.test; spf=fail\r\n\
            Subject: hi\r\n\
            \r\n\
            Authentication-Results: gw.test; in the body\r\n"
        );
    }

    #[test]
    fn an_id_on_a_continuation_line_is_found() {
        let text = "Authentication-Results:\r\n  (a comment)\r\n gw.test;\r\n spf=pass\r\nX: y\r\n\r\nbody\r\n";
        assert_eq!(filter(text), "X: y\r\n\r\nbody\r\n");
        let text = "Authentication-Results:\r\n other.test; spf=pass\r\nX: y\r\n\r\n";
        assert_eq!(filter(text), text);
        // A field that never names an id passes (it claims nothing) ...
        let text = "Authentication-Results:\r\nX: y\r\n\r\n";
        assert_eq!(filter(text), text);
        // ... unless it holds too long.
        let mut text = String::from("Authentication-Results:\r\n");
        for _ in 0..MAX_HELD_LINES {
            text.push_str(" (padding)\r\n");
        }
        text.push_str(" gw.test; spf=pass\r\nX: y\r\n\r\n");
        assert_eq!(filter(&text), "X: y\r\n\r\n");
        // Held at the end of the text: passed on.
        assert_eq!(
            filter("Authentication-Results:\r\n"),
            "Authentication-Results:\r\n"
        );
    }

    #[test]
    fn ids_that_only_start_like_ours_are_not_ours() {
        let text = "Authentication-Results: gw.test.evil; spf=pass\r\n\r\n";
        assert_eq!(filter(text), text);
        let text = "Authentication-Results-Original: gw.test; spf=pass\r\n\r\n";
        assert_eq!(filter(text), text);
    }

    #[test]
    fn our_id_written_as_an_absolute_domain_name_is_ours() {
        // `gw.test.` names the same host as `gw.test` (a trailing dot is the DNS root), and a
        // reader that strips it would take the forged field for ours: it passed.
        let text = "Authentication-Results: gw.test.; dkim=pass\r\n\
            Authentication-Results: \"GW.TEST.\"; spf=pass\r\nX: y\r\n\r\n";
        assert_eq!(filter(text), "X: y\r\n\r\n");
        let text = "Authentication-Results: gw.test..; spf=pass\r\n\r\n";
        assert_eq!(filter(text), text);
        // The same with the dot in the configured id.
        let text = "Authentication-Results: gw.test; spf=pass\r\nX: y\r\n\r\n";
        assert_eq!(filter_for("gw.test.", text), "X: y\r\n\r\n");
    }

    #[test]
    fn section_defaults_and_validation() {
        let c = AuthResultsConfig::default();
        assert!(c.enabled);
        assert_eq!(c.id("gw.test"), "gw.test");
        assert_eq!(c.validate(), Ok(()));
        let c = AuthResultsConfig {
            authserv_id: "mx.example.org".into(),
            ..AuthResultsConfig::default()
        };
        assert_eq!(c.id("gw.test"), "mx.example.org");
        let c = AuthResultsConfig {
            authserv_id: "a b;".into(),
            ..AuthResultsConfig::default()
        };
        assert_eq!(
            c.validate().expect_err("refused").key,
            "auth_results.authserv_id"
        );
    }

    #[test]
    fn header_lists_the_results() {
        let client: IpAddr = "198.51.100.7".parse().expect("ip");
        let name = ClientName::Verified {
            name: "mx.good.test".into(),
        };
        let spf = SpfVerdict {
            outcome: SpfOutcome::Pass,
            identity: SpfIdentity::MailFrom("a@pass.test".into()),
            domain: "pass.test".into(),
        };
        assert_eq!(
            String::from_utf8(header("gw.test", client, Some(&name), Some(&spf))).expect("utf-8"),
            "Authentication-Results: gw.test;\r\n\tiprev=pass policy.iprev=198.51.100.7 (mx.good.test);\r\n\tspf=pass smtp.mailfrom=a@pass.test\r\n"
        );
        let spf = SpfVerdict {
            outcome: SpfOutcome::SoftFail,
            identity: SpfIdentity::MailFrom("\"odd \\\"one\"@x.test".into()),
            domain: "x.test".into(),
        };
        let h = String::from_utf8(header("gw.test", client, None, Some(&spf))).expect("utf-8");
        assert!(
            h.ends_with("spf=softfail smtp.mailfrom=\"\\\"odd \\\\\\\"one\\\"@x.test\"\r\n"),
            "{h}"
        );
        let helo = SpfVerdict {
            outcome: SpfOutcome::None,
            identity: SpfIdentity::Helo("helo.test".into()),
            domain: "helo.test".into(),
        };
        let h = String::from_utf8(header("gw.test", client, None, Some(&helo))).expect("utf-8");
        assert!(h.ends_with("spf=none smtp.helo=helo.test\r\n"), "{h}");
        assert_eq!(
            header("gw.test", client, None, None),
            b"Authentication-Results: gw.test; none\r\n"
        );
        let h = header(
            "gw.test",
            client,
            Some(&ClientName::Unverified { reverse: None }),
            None,
        );
        assert!(h.ends_with(b"iprev=permerror policy.iprev=198.51.100.7\r\n"));
    }

    /// The relay (`text.rs`) with the filter, the client's text arriving in random chunks: the
    /// backend gets our header first, the forged ones gone, everything else byte for byte.
    #[tokio::test]
    async fn the_relay_filters_whatever_the_chunking() {
        use std::time::Duration;

        use crate::smtp::{
            config::BareNewlinePolicy,
            test_peers::{Until, backend_session, client_connection, recording_backend},
            text::{HeaderRewrite, TextLimits, TextRelayEnd, relay_message_filtered},
        };

        const CLIENT_TEXT: &[u8] = b"Received: from a\r\n\tby b\r\n\
            Authentication-Results: gw.test; spf=pass\r\n\t smtp.mailfrom=x@forged.test\r\n\
            Authentication-Results: other.test; spf=fail\r\n\
            Authentication-Results:\r\n (c) gw.test; dkim=pass\r\n\
            Subject: s\r\n\r\n\
            Authentication-Results: gw.test; body\r\n..dot\r\n.\r\n";
        const EXPECTED: &[u8] = b"Authentication-Results: gw.test; none\r\n\
            Received: from a\r\n\tby b\r\n\
            Authentication-Results: other.test; spf=fail\r\n\
            Subject: s\r\n\r\n\
            Authentication-Results: gw.test; body\r\n..dot\r\n.\r\n";

        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..12 {
            let (backend_addr, recorder) = recording_backend(Until::Dot).await;
            let mut backend = backend_session(backend_addr).await;
            // Chunk sizes 1..=9 from a xorshift sequence, different each round.
            let mut chunks = Vec::new();
            let mut rest = CLIENT_TEXT;
            while !rest.is_empty() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let size = (1 + (state % 9) as usize).min(rest.len());
                let (chunk, tail) = rest.split_at(size);
                chunks.push(chunk.to_vec());
                rest = tail;
            }
            let (mut conn, client) = client_connection(chunks, Duration::from_micros(200)).await;
            let limits = TextLimits {
                max_size: 1 << 20,
                max_line: 1000,
                bare_newlines: BareNewlinePolicy::Reject,
                timeout: Duration::from_secs(5),
                deadline: tokio::time::Instant::now() + Duration::from_secs(10),
                flush_interval: Duration::from_millis(1),
                refuse_long_lines: true,
            };
            let prepend = header("gw.test", "127.0.0.1".parse().expect("ip"), None, None);
            let mut filter = HeaderFilter::new("gw.test");
            let rewrite = HeaderRewrite {
                prepend: &prepend,
                filter: &mut filter,
            };
            let (end, _) =
                relay_message_filtered(&mut conn, &mut backend, &limits, Some(rewrite)).await;
            assert!(matches!(end, TextRelayEnd::Relayed { .. }), "round {round}");
            let _client = client.await.expect("client");
            drop(backend);
            let received = recorder.await.expect("recorder");
            assert_eq!(
                String::from_utf8_lossy(&received),
                String::from_utf8_lossy(EXPECTED),
                "round {round}"
            );
            assert_eq!(filter.dropped(), 2, "round {round}");
        }
    }
}

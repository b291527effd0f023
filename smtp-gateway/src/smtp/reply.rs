//! SMTP replies: ours (built here) and the backend's (parsed line by line, relayed verbatim).

use std::fmt::Write as _;

/// A complete reply: a code and one or more text lines (enhanced status code included in text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Text of each line, without code, separator or CRLF.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply.
    pub fn multi(code: u16, lines: Vec<String>) -> Self {
        Self { code, lines }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The wire form, `code-text` for every line but the last, CRLF-terminated. A control
    /// character in a text (but a tab) goes out as `?`: texts quote what clients and backends
    /// sent, and a CR or LF there would start a reply line of its own.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        if self.lines.is_empty() {
            let _ = write!(out, "{}\r\n", self.code);
        }
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(out, "{}{}", self.code, sep);
            out.extend(
                line.chars()
                    .map(|c| if c.is_control() && c != '\t' { '?' } else { c }),
            );
            out.push_str("\r\n");
        }
        out
    }

    /// The first line's text, for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} {}",
            self.code,
            self.lines.first().map(String::as_str).unwrap_or("")
        )
    }
}

/// One line of a (backend) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    /// `false` for `code-text` continuation lines.
    pub last: bool,
    pub text: String,
}

/// Parses one reply line (without CRLF). `None` when it is not `DDD[ -]text` or `DDD`.
pub fn parse_reply_line(line: &[u8]) -> Option<ReplyLine> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = u16::from(line[0] - b'0') * 100
        + u16::from(line[1] - b'0') * 10
        + u16::from(line[2] - b'0');
    if !(200..600).contains(&code) {
        return None;
    }
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return None,
    };
    Some(ReplyLine {
        code,
        last,
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        assert_eq!(Reply::new(250, "2.0.0 Ok").to_wire(), "250 2.0.0 Ok\r\n");
        let r = Reply::multi(
            250,
            vec!["mx.example".into(), "PIPELINING".into(), "SIZE 10".into()],
        );
        assert_eq!(
            r.to_wire(),
            "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn control_characters_never_reach_the_wire() {
        // Reply texts quote what a client or a backend sent (a HELO name, a path): an ESC
        // sequence went back to the client's terminal, and a CR or LF in a text would start a
        // reply line of its own. Tabs are text (RFC 5321 4.2: textstring).
        let r = Reply::new(
            550,
            "5.7.1 HELO a\x1b[31mred\x01\x7f\u{85} b\rc\nd\te refused",
        );
        assert_eq!(
            r.to_wire(),
            "550 5.7.1 HELO a?[31mred??? b?c?d\te refused\r\n"
        );
        let r = Reply::multi(250, vec!["x\r\n250 injected".into(), "é ok".into()]);
        assert_eq!(r.to_wire(), "250-x??250 injected\r\n250 é ok\r\n");
    }

    #[test]
    fn parses_reply_lines() {
        assert_eq!(
            parse_reply_line(b"250-PIPELINING"),
            Some(ReplyLine {
                code: 250,
                last: false,
                text: "PIPELINING".into()
            })
        );
        assert_eq!(
            parse_reply_line(b"354 End data"),
            Some(ReplyLine {
                code: 354,
                last: true,
                text: "End data".into()
            })
        );
        assert_eq!(
            parse_reply_line(b"250"),
            Some(ReplyLine {
                code: 250,
                last: true,
                text: String::new()
            })
        );
        for bad in [&b"25"[..], b"2x0 ok", b"250:ok", b"099 x", b"700 x"] {
            assert_eq!(
                parse_reply_line(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

//! One event, one line, in the human log format. Field values carry what clients, backends, DNS
//! answers and files said (a pregreet's first bytes, a HELO name, a backend's reply in an
//! error): raw, a CR LF followed by a timestamp forged a line of the gateway's own, and an ESC
//! sequence recoloured or cleared the terminal reading the log. Every value and message is
//! written with its control characters and bidirectional overrides escaped the way Rust writes
//! them (`\r`, `\n`, `\u{1b}`). The JSON format escapes them itself.

use std::{borrow::Cow, fmt};

use tracing::field::Field;
use tracing_subscriber::fmt::format::Writer;

/// A character that must not reach a log line or a terminal as it is: a control character
/// (C0, DEL, C1) or a bidirectional override that reorders what follows it on screen.
pub fn unsafe_on_a_line(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every [`unsafe_on_a_line`] character escaped.
pub fn escaped(text: &str) -> Cow<'_, str> {
    escaped_where(text, unsafe_on_a_line)
}

/// `text` with every character `escape` picks escaped the way Rust writes it.
pub fn escaped_where(text: &str, escape: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(&escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes one field of an event, escaped: the message as it is, any other field as `name=value`
/// (`tracing_subscriber::fmt::format::debug_fn(write_field).delimited(" ")`).
pub fn write_field(writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let text = format!("{value:?}");
    if field.name() == "message" {
        write!(writer, "{}", escaped(&text))
    } else {
        write!(writer, "{}={}", field.name(), escaped(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_escapes_and_overrides_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escaped("EHLO bot\r\n2026-12-04T22:40:00Z  INFO forged"),
            "EHLO bot\\r\\n2026-12-04T22:40:00Z  INFO forged"
        );
        assert_eq!(
            escaped("\u{1b}[2J\u{202e}gnp.exe"),
            "\\u{1b}[2J\\u{202e}gnp.exe"
        );
        assert_eq!(escaped("héllo wörld\t"), "héllo wörld\\t");
        assert!(matches!(escaped("plain mx.example.net"), Cow::Borrowed(_)));
    }
}

//! Daemon logs in failure reports: the end of a log, without terminal colours.

/// Removes terminal colour sequences (`ESC [ ... m`): the daemon colours its log when it thinks it
/// writes to a terminal, and the escapes would clutter a report.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines of `text`: a failure report shows what happened just before, not the whole
/// log.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colour_sequences() {
        for (input, expected) in [
            ("plain", "plain"),
            (
                "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m ready",
                "2026  INFO ready",
            ),
            ("cut \u{1b}[3", "cut "),
        ] {
            assert_eq!(strip_ansi(input), expected, "{input:?}");
        }
    }

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb", 5), "a\nb");
        assert_eq!(last_lines("", 3), "");
    }
}

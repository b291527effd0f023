//! Operator files (block imports, reputation lists) read a line at a time, holding at most
//! [`MAX_LINE_BYTES`] of a line: a file without newlines (a wrong path, `/dev/zero`, a list
//! saved as one line) costs a bounded buffer, never the whole file in memory.

use std::io::BufRead;

/// Longest line accepted, in bytes (newline excluded). A Spamhaus DROP JSON line is about 100
/// bytes, a reputation entry a name or an address; a longer line is reported as "line too long"
/// and skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 4096;

/// What [`next_line`] read.
pub enum Line {
    /// A line of at most [`MAX_LINE_BYTES`], in the buffer (newline removed).
    Complete,
    /// A longer line, skipped (the buffer holds nothing of it).
    TooLong,
}

/// Reads the next line into `buf` (cleared first), holding at most [`MAX_LINE_BYTES`] of it:
/// the rest of a longer line is read and dropped. `Ok(None)` at the end of the input.
pub fn next_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Line>> {
    buf.clear();
    let mut too_long = false;
    let mut started = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(started.then_some(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            }));
        }
        started = true;
        let newline = available.iter().position(|b| *b == b'\n');
        let part = available
            .get(..newline.unwrap_or(available.len()))
            .unwrap_or_default();
        if !too_long && buf.len() + part.len() <= MAX_LINE_BYTES {
            buf.extend_from_slice(part);
        } else {
            too_long = true;
            buf.clear();
        }
        let used = part.len() + usize::from(newline.is_some());
        reader.consume(used);
        if newline.is_some() {
            return Ok(Some(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            }));
        }
    }
}

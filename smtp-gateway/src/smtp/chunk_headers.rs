//! The header filter of `auth_results.rs` over BDAT chunks: the client's `Authentication-Results`
//! fields claiming our authserv-id are taken out of a chunked message as they are out of DATA.
//!
//! BDAT bytes come in counted chunks, not lines, and a line may run across chunks; the bytes are
//! opaque and relayed unchanged (no dot-stuffing, bare CR and LF kept). So lines are cut at LF
//! only, each keeps the end it came with (CRLF, or a bare LF), and only while the message is in
//! its header block: from the empty line on, the bytes are not looked at. Memory stays bounded:
//! an unfinished line is held up to `smtp.max_text_line` bytes; a longer one is decided on its
//! start ([`HeaderFilter::long_line`]) and the rest of it passes or goes unseen.
//!
//! `chunk.rs` sends what passes to the backend in chunks of its own size (a BDAT's count must be
//! known before its bytes), so this type only turns bytes into filtered bytes.

use super::auth_results::{HeaderFilter, MAX_HELD_LINES};

/// The filter of one chunked message, kept by the transaction across its chunks.
#[derive(Debug)]
pub struct ChunkHeaders {
    /// The line filter.
    filter: HeaderFilter,
    /// The current line's bytes so far (no LF yet), at most `max_line`.
    partial: Vec<u8>,
    /// Inside the rest of an over-long line: `Some(true)` it passes, `Some(false)` it is
    /// dropped, up to and including its LF.
    long: Option<bool>,
    /// The longest line held whole (`smtp.max_text_line`).
    max_line: usize,
}

impl ChunkHeaders {
    /// A filter with lines held up to `max_line` bytes.
    pub fn new(filter: HeaderFilter, max_line: usize) -> Self {
        Self {
            filter,
            partial: Vec::new(),
            long: None,
            max_line,
        }
    }

    /// Whether the header block is over: every further byte passes unchanged.
    pub fn in_body(&self) -> bool {
        self.filter.in_body()
    }

    /// How many filtered bytes may wait before they go to the backend as a chunk of their own
    /// (a header block longer than that is not held whole): as many as the filter may hold.
    pub fn flush_at(&self) -> usize {
        self.max_line.saturating_mul(MAX_HELD_LINES + 1)
    }

    /// The fields dropped so far.
    pub fn dropped(&self) -> usize {
        self.filter.dropped()
    }

    /// Feeds `bytes`, appending what passes to `out`. Stops right after the line that ends the
    /// header block and returns how many bytes it took: the rest passes unchanged, unseen.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> usize {
        let mut used = 0;
        while used < bytes.len() && !self.filter.in_body() {
            let rest = bytes.get(used..).unwrap_or_default();
            let lf = rest.iter().position(|b| *b == b'\n');
            if let Some(passes) = self.long {
                let take = lf.map_or(rest.len(), |i| i + 1);
                if passes {
                    out.extend_from_slice(rest.get(..take).unwrap_or_default());
                }
                if lf.is_some() {
                    self.long = None;
                }
                used += take;
                continue;
            }
            let room = self.max_line.saturating_sub(self.partial.len());
            match lf {
                Some(i) if i <= room => {
                    self.partial
                        .extend_from_slice(rest.get(..=i).unwrap_or_default());
                    used += i + 1;
                    let line = std::mem::take(&mut self.partial);
                    let (content, end) = split_end(&line);
                    self.filter.line_ending(content, end, out);
                }
                _ => {
                    let take = rest.len().min(room);
                    self.partial
                        .extend_from_slice(rest.get(..take).unwrap_or_default());
                    used += take;
                    if self.partial.len() >= self.max_line {
                        let start = std::mem::take(&mut self.partial);
                        self.long = Some(self.filter.long_line(&start, out));
                    }
                }
            }
        }
        used
    }

    /// The end of the message (`BDAT … LAST`) inside the header block: an unfinished last line
    /// and a field still held pass (they claim nothing).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.partial.is_empty() && self.long.is_none() {
            let line = std::mem::take(&mut self.partial);
            self.filter.line_ending(&line, b"", out);
        }
        self.filter.finish(out);
    }
}

/// A line (LF included) as its content and its end (CRLF or LF).
fn split_end(line: &[u8]) -> (&[u8], &[u8]) {
    let content_len = if line.ends_with(b"\r\n") {
        line.len() - 2
    } else if line.ends_with(b"\n") {
        line.len() - 1
    } else {
        line.len()
    };
    line.split_at(content_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `text` through a filter for `gw.test` in pieces of `piece` bytes (each piece fed
    /// whole, as far as the filter takes it); returns what reaches the backend.
    fn run(text: &[u8], piece: usize, max_line: usize) -> Vec<u8> {
        let mut h = ChunkHeaders::new(HeaderFilter::new("gw.test"), max_line);
        let mut out = Vec::new();
        for part in text.chunks(piece) {
            let used = h.feed(part, &mut out);
            out.extend_from_slice(part.get(used..).unwrap_or_default());
        }
        if !h.in_body() {
            h.finish(&mut out);
        }
        out
    }

    #[test]
    fn forged_fields_go_whatever_the_chunk_boundaries() {
        let text = b"Received: from x\r\n\tby y\r\n\
            Authentication-Results: gw.test; spf=pass\r\n\tsmtp.mailfrom=a@b\r\n\
            Authentication-Results: other.test; spf=fail\n\
            Subject: hi\r\n\
            \r\n\
            Authentication-Results: gw.test; in the body\r\n.\r\n\x00bin\rary\n";
        let want = b"Received: from x\r\n\tby y\r\n\
            Authentication-Results: other.test; spf=fail\n\
            Subject: hi\r\n\
            \r\n\
            Authentication-Results: gw.test; in the body\r\n.\r\n\x00bin\rary\n";
        for piece in 1..=text.len() {
            assert_eq!(
                String::from_utf8_lossy(&run(text, piece, 1000)),
                String::from_utf8_lossy(want),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn bare_lf_lines_and_an_unterminated_end_keep_their_bytes() {
        let text = b"X: a\nAuthentication-Results: gw.test; none\nY: b";
        assert_eq!(run(text, 3, 1000), b"X: a\nY: b");
        // A message that is all headers with no line end: passed as it came.
        assert_eq!(run(b"Subject: x", 4, 1000), b"Subject: x");
    }

    #[test]
    fn over_long_lines_are_decided_on_their_start() {
        // An over-long forged field (its id behind a long comment) goes, continuation and all.
        let mut text = b"Authentication-Results: (".to_vec();
        text.extend(std::iter::repeat_n(b'x', 300));
        text.extend_from_slice(b") gw.test; spf=pass\r\n\tmore\r\nSubject: s\r\n\r\nbody\r\n");
        assert_eq!(run(&text, 7, 64), b"Subject: s\r\n\r\nbody\r\n");
        // Another over-long field passes whole, and the filter still sees the fields after it.
        let mut long = b"X-Long: ".to_vec();
        long.extend(std::iter::repeat_n(b'y', 300));
        long.extend_from_slice(b"\r\n");
        let mut text = long.clone();
        text.extend_from_slice(b"Authentication-Results: gw.test; none\r\n\r\nbody\r\n");
        let mut want = long;
        want.extend_from_slice(b"\r\nbody\r\n");
        assert_eq!(run(&text, 5, 64), want);
    }

    #[test]
    fn the_filter_stops_at_the_end_of_the_header_block() {
        let mut h = ChunkHeaders::new(HeaderFilter::new("gw.test"), 1000);
        let mut out = Vec::new();
        let bytes = b"A: b\r\n\r\nAuthentication-Results: gw.test; x\r\n";
        let used = h.feed(bytes, &mut out);
        assert_eq!(used, 8, "the empty line ends what the filter reads");
        assert!(h.in_body());
        assert_eq!(out, b"A: b\r\n\r\n");
    }
}

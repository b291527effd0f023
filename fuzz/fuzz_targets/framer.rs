//! The command-line framer (`Connection::read_line`, the daemon's connection over an in-memory
//! client), fed in fuzzer-chosen reads: the lines it returns must be the same whatever the chunking, and equal
//! to what the wire format says (content without its ending, truncated to the limit, flags).
//!
//! Input: byte 0 picks the line limit, byte 1 the chunking, the rest is what the client sends.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use smtp_gateway::fuzzing::{Ending, Line, line, memory_connection};
use smtp_gateway_fuzz::{ChunkedClient, runtime};

/// Line limits tried: tiny ones put every edge within reach, 512 is the command default.
const LIMITS: [usize; 8] = [1, 2, 3, 4, 5, 8, 16, 512];

/// What the wire format says `data` holds, as lines of at most `max` bytes (ending included).
fn expected(mut data: &[u8], max: usize) -> Vec<Line> {
    let mut lines = Vec::new();
    while !data.is_empty() {
        match data.iter().position(|b| *b == b'\n') {
            Some(lf) => {
                let raw = &data[..lf];
                let (content, ending) = match raw.strip_suffix(b"\r") {
                    Some(c) => (c, Ending::CrLf),
                    None => (raw, Ending::BareLf),
                };
                let too_long = lf + 1 > max;
                let kept = &content[..content.len().min(max)];
                lines.push(line(kept.to_vec(), ending, too_long));
                data = &data[lf + 1..];
            }
            None => {
                let too_long = data.len() >= max;
                lines.push(line(
                    data[..data.len().min(max)].to_vec(),
                    Ending::Eof,
                    too_long,
                ));
                data = &[];
            }
        }
    }
    lines
}

fuzz_target!(|input: &[u8]| {
    let [limit, seed, payload @ ..] = input else {
        return;
    };
    let max = LIMITS[usize::from(*limit) % LIMITS.len()];
    let got = runtime().block_on(async {
        let mut conn = memory_connection(ChunkedClient::new(payload, *seed));
        let mut got = Vec::new();
        while let Some(line) = conn
            .read_line(max, Duration::from_secs(10))
            .await
            .expect("reading from memory")
        {
            got.push(line);
        }
        got
    });
    assert_eq!(got, expected(payload, max), "max {max}, seed {seed}");
});

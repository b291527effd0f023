//! The message-text relay (`relay_message`) between an in-memory client, whose bytes arrive in
//! fuzzer-chosen reads, and an in-memory fake backend that records what it receives. Whatever the client sends:
//! - the backend stream has no bare CR and no bare LF;
//! - it holds exactly one end of data (`CRLF.CRLF`), at its very end, when the message was
//!   relayed, and none otherwise (a refused or abandoned message is never completed);
//! - no line of it is a lone `.` before that end (synthesised line starts are dot-stuffed);
//! - a client text made of clean CRLF lines only is forwarded byte for byte up to its end.
//!
//! Input: byte 0 picks the settings, byte 1 the chunking, the rest is the text after `354`.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use smtp_gateway::fuzzing::{
    BareNewlinePolicy, TextEnd, TextSettings, memory_backend, memory_connection, relay_text,
};
use smtp_gateway_fuzz::{ChunkedClient, FakeBackend, runtime};

/// Text line limits tried (the relay reads with room for CRLF, at least 3 bytes).
const LINE_LIMITS: [usize; 4] = [3, 8, 40, 1000];

/// The client's text up to and including its end of data, if it has one and every line before
/// it is clean (CRLF-terminated, no CR inside, within `max_line`): what must reach the backend
/// byte for byte.
fn clean_message(text: &[u8], max_line: usize) -> Option<&[u8]> {
    let mut start = 0;
    loop {
        let lf = start + text[start..].iter().position(|b| *b == b'\n')?;
        let line = &text[start..lf];
        let content = line.strip_suffix(b"\r")?;
        if content.contains(&b'\r') || lf + 1 - start > max_line.max(3) {
            return None;
        }
        start = lf + 1;
        if content == b"." {
            return Some(&text[..start]);
        }
    }
}

/// Where `needle` occurs in `hay`.
fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fuzz_target!(|input: &[u8]| {
    let [options, seed, text @ ..] = input else {
        return;
    };
    let settings = TextSettings {
        max_size: if options & 0x40 != 0 { 64 } else { 1 << 20 },
        max_line: LINE_LIMITS[usize::from(options & 0x03)],
        bare_newlines: if options & 0x04 != 0 {
            BareNewlinePolicy::Normalize
        } else {
            BareNewlinePolicy::Reject
        },
        refuse_long_lines: options & 0x08 != 0,
        timeout: Duration::from_secs(10),
    };
    let (end, sent) = runtime().block_on(async {
        let (fake, recorded) = FakeBackend::new(b"250 fake\r\n", Vec::new());
        let mut backend = memory_backend(fake, Duration::from_secs(10))
            .await
            .expect("fake backend session");
        let mut conn = memory_connection(ChunkedClient::new(text, *seed));
        let end = relay_text(&mut conn, &mut backend, settings).await;
        drop(backend);
        let sent = std::mem::take(&mut *recorded.lock().expect("recorded"));
        (end, sent)
    });
    for (i, b) in sent.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(sent.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && sent[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    let ends = occurrences(&sent, b"\r\n.\r\n") + usize::from(sent.starts_with(b".\r\n"));
    match end {
        TextEnd::Relayed(_) => {
            assert_eq!(
                ends,
                1,
                "one end of data in {:?}",
                String::from_utf8_lossy(&sent)
            );
            assert!(sent.ends_with(b".\r\n"), "the end of data is last");
        }
        TextEnd::Refused | TextEnd::ClientGone => {
            assert_eq!(
                ends,
                0,
                "{end:?} with an end of data sent: {:?}",
                String::from_utf8_lossy(&sent)
            );
        }
        TextEnd::BackendFailed => {}
    }
    let lines: Vec<&[u8]> = sent.split(|b| *b == b'\n').collect();
    if let Some((_, body)) = lines.split_last() {
        let body_lines = body.len().saturating_sub(1);
        for l in &body[..body_lines] {
            assert_ne!(*l, b".\r", "a lone dot before the end of data");
        }
    }
    if let Some(clean) = clean_message(text, settings.max_line)
        && clean.len() as u64 <= settings.max_size
    {
        assert!(
            matches!(end, TextEnd::Relayed(_)),
            "clean text not relayed: {end:?}"
        );
        assert_eq!(sent, clean, "clean text changed on its way");
    }
});

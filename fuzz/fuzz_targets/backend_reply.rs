//! The backend reply reader (`Backend::read_reply` and `parse_reply_line`) on whatever a backend
//! sends after its EHLO reply: each reply is either read whole (one code, 200 to 599, texts
//! without LF) or refused with an error; never a panic, never a hang.
//!
//! Input: what the backend (in memory) sends after its EHLO reply (then its stream ends).

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use smtp_gateway::fuzzing::{memory_backend, parse_reply_line};
use smtp_gateway_fuzz::{FakeBackend, runtime};

fuzz_target!(|script: &[u8]| {
    for line in script.split(|b| *b == b'\n') {
        if let Some(parsed) = parse_reply_line(line.strip_suffix(b"\r").unwrap_or(line)) {
            assert!((200..600).contains(&parsed.code), "{parsed:?}");
        }
    }
    let script = script.to_vec();
    runtime().block_on(async {
        let (fake, _) = FakeBackend::new(b"250 fake\r\n", script);
        let Ok(mut session) = memory_backend(fake, Duration::from_secs(10)).await else {
            // Only an empty script ends before a reply is read: the session is then refused.
            return;
        };
        for _ in 0..64 {
            match session.read_reply().await {
                Ok(reply) => {
                    assert!((200..600).contains(&reply.code), "{reply:?}");
                    for text in &reply.lines {
                        assert!(!text.contains('\n'), "{reply:?}");
                    }
                }
                Err(_) => break,
            }
        }
    });
});

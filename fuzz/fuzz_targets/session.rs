//! A whole MX session (`Session::run`, the daemon's own code) driven by an in-memory client
//! sending any bytes, in fuzzer-chosen reads (and reading every reply): every line goes through the framer, the line checks, the
//! parser and the verb handlers (the backend is a closed port, so MAIL is answered `4xx`). The
//! session must end (the client closes after its input) without panicking.
//!
//! Input: byte 0 picks the chunking (and, one value in eight, a client that talks before the
//! banner), the rest is what the client sends.

#![no_main]

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use smtp_gateway::fuzzing::{SessionHarness, memory_connection};
use smtp_gateway_fuzz::{ChunkedClient, runtime};

/// The gateway configuration of every run: short timeouts, an unreachable backend, one accepted
/// domain, the checks at their defaults.
const CONFIG: &str = r#"
[smtp]
hostname = "mx.fuzz.test"
command_timeout = "5s"
tarpit_delay = "0s"
max_unknown_commands = 20
max_errors = 20

[backend]
servers = [{ address = "127.0.0.1:9", identity = "none" }]
connect_timeout = "1s"
reply_timeout = "1s"
pool_size = 0

[relay]
accepted_domains = ["example.org"]
"#;

fn harness() -> &'static SessionHarness {
    static H: OnceLock<SessionHarness> = OnceLock::new();
    H.get_or_init(|| SessionHarness::new(CONFIG).expect("fuzz session configuration"))
}

/// Whether `line` (without its CRLF) is a reply line: a code 200 to 599, then a space, a dash
/// or nothing, then text without CR (RFC 5321 4.2).
fn is_reply_line(line: &[u8]) -> bool {
    let code = line.get(..3).and_then(|c| std::str::from_utf8(c).ok());
    let code_ok = code
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..600).contains(&c))
        && code.is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()));
    code_ok && matches!(line.get(3), None | Some(b' ') | Some(b'-')) && !line.contains(&b'\r')
}

fuzz_target!(|input: &[u8]| {
    let [seed, payload @ ..] = input else {
        return;
    };
    // Most runs wait for the banner as clients do; one in eight talks first (pregreet).
    let talks_first = seed % 8 == 0;
    let client = ChunkedClient::new(payload, *seed);
    let replies = client.replies();
    let client = if talks_first {
        client
    } else {
        client.after_banner()
    };
    let finished = runtime().block_on(async {
        let conn = memory_connection(client);
        let peer = SocketAddr::from(([198, 18, 0, 7], 40000));
        let local = SocketAddr::from(([198, 18, 0, 1], 25));
        tokio::time::timeout(Duration::from_secs(30), harness().run(conn, peer, local))
            .await
            .is_ok()
    });
    assert!(
        finished,
        "the session did not end within 30 s of its client closing"
    );
    // Whatever the client sent, the gateway wrote only well-formed reply lines, every one ended
    // by CRLF (nothing of the client's reflected as a line of its own).
    let replies = std::mem::take(&mut *replies.lock().expect("replies"));
    assert!(
        replies.is_empty() || replies.ends_with(b"\r\n"),
        "unterminated reply: {:?}",
        String::from_utf8_lossy(&replies)
    );
    for line in replies.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let content = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            line.ends_with(b"\r") && is_reply_line(content),
            "not a reply line: {:?} in {:?}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(&replies)
        );
    }
    if !talks_first {
        assert!(
            replies.starts_with(b"220"),
            "{:?}",
            String::from_utf8_lossy(&replies)
        );
    }
});

//! A whole MX session (`Session::run`, the daemon's own code) driven over a loopback socket by
//! any bytes, in fuzzer-chosen chunks: every line goes through the framer, the line checks, the
//! parser and the verb handlers (the backend is a closed port, so MAIL is answered `4xx`). The
//! session must end (the client closes after its input) without panicking.
//!
//! Input: byte 0 picks the chunking, the rest is what the client sends.

#![no_main]

use std::{sync::OnceLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use smtp_gateway::fuzzing::SessionHarness;
use smtp_gateway_fuzz::{chunks, fd, listener, runtime, tcp_pair, write_chunked};
use tokio::io::AsyncReadExt;

/// The gateway configuration of every run: short timeouts, an unreachable backend, one accepted
/// domain, the checks at their defaults.
const CONFIG: &str = r#"
[smtp]
hostname = "mx.fuzz.test"
command_timeout = "5s"
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

fuzz_target!(|input: &[u8]| {
    let [seed, payload @ ..] = input else {
        return;
    };
    let pieces: Vec<Vec<u8>> = chunks(payload, *seed)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let finished = runtime().block_on(async {
        let l = listener().await;
        let (client, server, peer, local) = tcp_pair(&l).await;
        let (mut replies, requests) = client.into_split();
        // The client reads every reply (a client that never reads is the holding benchmark's
        // business, not this target's).
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(replies.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let writer = tokio::spawn(write_chunked(requests, fd(&server), pieces));
        let finished =
            tokio::time::timeout(Duration::from_secs(30), harness().run(server, peer, local))
                .await
                .is_ok();
        drop(writer.await);
        drop(drain.await);
        finished
    });
    assert!(
        finished,
        "the session did not end within 30 s of its client closing"
    );
});

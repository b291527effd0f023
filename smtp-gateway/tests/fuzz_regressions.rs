//! Inputs the fuzz targets (`fuzz/`, `cargo xtask fuzz`) found, kept as ordinary tests so a
//! regression fails `cargo test` and not only a fuzzing run that happens to find them again.
//! Each test names its target and what the input broke.

use std::time::Duration;

use smtp_gateway::fuzzing::{Ending, Line, classify_line, client_connection, line, rcpt_paths};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

/// The lines the framer returns for `pieces`, written 50 ms apart (so it reads each on its
/// own), then EOF.
async fn frame(pieces: &'static [&'static [u8]], max: usize) -> Vec<Line> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let mut client = client.expect("connect");
    let writer = tokio::spawn(async move {
        for piece in pieces {
            client.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.shutdown().await.expect("shutdown");
        client
    });
    let mut conn = client_connection(accepted.expect("accept").0);
    let mut lines = Vec::new();
    while let Some(line) = conn
        .read_line(max, Duration::from_secs(5))
        .await
        .expect("read")
    {
        lines.push(line);
    }
    drop(writer.await);
    lines
}

/// session_lines: `RCPT<TAB>TO:<é>` made the address-literal fallback slice the line through the
/// two bytes of `é` (issue 10, 1.1): the session task panicked before replying.
#[test]
fn a_multibyte_character_at_the_verb_boundary_is_refused_not_a_panic() {
    for raw in [
        &b"RCPT\tTO:<\xc3\xa9>"[..],
        b"MAIL\tFROM:<\xc3\xa9>",
        b"RCPT TO\xc3\xa9<a@[192.0.2.1]>",
        b"MAIL FROM\xc3\xa9<a@[192.0.2.1]>",
        b"\xc3\xa9CPT TO:<a@[192.0.2.1]>",
    ] {
        assert!(
            !classify_line(&line(raw.to_vec(), Ending::CrLf, false)),
            "{:?} is not a command",
            String::from_utf8_lossy(raw)
        );
    }
}

/// The fallback still reads address literals the parser refuses.
#[test]
fn address_literal_paths_still_parse() {
    let paths = rcpt_paths(b"RCPT TO:<user@[192.0.2.1]>").expect("a RCPT");
    assert_eq!(paths.parsed, "user@[192.0.2.1]");
    assert_eq!(paths.policy, "user@[192.0.2.1]");
}

/// framer: an over-long line cut by the end of input, arriving in two reads (the second shorter
/// than the limit), came back as two lines: the truncated one and its tail as a phantom command.
#[tokio::test]
async fn the_tail_of_an_over_long_line_at_eof_is_not_another_line() {
    let lines = frame(&[b"0123456789abcdefXYZ", b"tail"], 16).await;
    assert_eq!(
        lines,
        vec![line(b"0123456789abcdef".to_vec(), Ending::Eof, true)],
        "one truncated line, nothing after it"
    );
}

/// framer: a CRLF line one byte over the limit whose CR arrived in one read and LF in the next
/// kept the CR as content: a line that is only too long was also flagged as holding a bare CR,
/// depending on how TCP cut it.
#[tokio::test]
async fn a_cr_split_from_its_lf_is_the_ending_not_content() {
    let lines = frame(&[b"0123456789abcde\r", b"\nNEXT\r\n"], 16).await;
    assert_eq!(
        lines,
        vec![
            line(b"0123456789abcde".to_vec(), Ending::CrLf, true),
            line(b"NEXT".to_vec(), Ending::CrLf, false),
        ]
    );
}

//! Checks and limits not exercised elsewhere, each fired through a live session: MAIL before
//! HELO, a HELO literal that is not the client's address, too many errors, the message size
//! limit, an over-long message text line, messages per session, and a non-ASCII path after a tab
//! (which once killed the session task). The real daemon in front of a scripted backend. Needs
//! root (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
};

use peers::{Gateway, Step, backend_script, gateway};

#[test]
fn mail_before_helo_is_refused() {
    let gw = gateway("nohelo", "", 0);
    let mut c = gw.client();
    c.expect("MAIL FROM:<a@example.net>", "503 5.5.1");
    assert!(gw.log().contains("helo_missing"), "{}", gw.log());
    // A well-behaved client that says EHLO first passes.
    assert!(c.cmd("EHLO mail.goodcorp.example").starts_with("250"));
}

#[test]
fn helo_literal_of_another_address_is_refused_when_configured() {
    let gw = gateway(
        "literal",
        "[checks]\nhelo_literal_mismatch = { action = \"reject\" }",
        0,
    );
    let mut c = gw.client();
    let helo = c.cmd("EHLO [198.51.100.9]");
    assert!(
        helo.starts_with("550 5.7.1") && helo.contains("helo_literal_mismatch"),
        "{helo}"
    );
    c.expect_that("EHLO [127.0.0.1]", "250", "the client's own literal passes");
}

#[test]
fn too_many_errors_closes_the_session() {
    let gw = gateway("errors", "max_errors = 2", 0);
    let mut c = gw.greeted("mail.goodcorp.example");
    assert!(c.cmd("RCPT TO:<b@example.org>").starts_with("503"));
    assert!(c.cmd("RCPT TO:<b@example.org>").starts_with("503"));
    c.expect("RCPT TO:<b@example.org>", "503");
    let closing = c.reply();
    assert!(
        closing.starts_with("421 4.7.0 Too many errors"),
        "{closing}"
    );
    let mut rest = String::new();
    let _ = c.stream.get_mut().read_to_string(&mut rest);
    assert!(rest.is_empty(), "connection closed: {rest:?}");
    assert!(gw.log().contains("too_many_errors"), "{}", gw.log());
}

#[test]
fn oversized_message_and_long_text_line_are_refused_and_the_session_goes_on() {
    // Each refused message aborts its backend session; the next MAIL opens a new one.
    let gw = gateway("size", "max_message_size = 2048", 3);
    let mut c = gw.greeted("mail.goodcorp.example");

    c.open_message();
    let big = format!(
        "Subject: big\r\n\r\n{}.",
        "0123456789abcdef0123456789abcdef\r\n".repeat(100)
    );
    c.expect(&big, "552 5.3.4");

    c.open_message();
    let long = format!("Subject: long\r\n\r\n{}\r\n.", "x".repeat(1200));
    let reply = c.cmd(&long);
    assert!(
        reply.starts_with("554 5.6.0") && reply.contains("line too long"),
        "{reply}"
    );

    c.open_message();
    c.expect_that(
        "Subject: fine\r\n\r\nwithin limits\r\n.",
        "250",
        "a message within the limits is relayed",
    );
}

#[test]
fn messages_per_session_are_limited() {
    let gw = gateway("msgs", "max_messages = 1", 1);
    let mut c = gw.greeted("mail.goodcorp.example");
    c.open_message();
    assert!(c.cmd("Subject: one\r\n\r\nfirst\r\n.").starts_with("250"));
    c.expect("MAIL FROM:<a@example.net>", "452 4.5.3");
}

#[test]
fn a_non_ascii_path_after_a_tab_is_refused_and_the_session_goes_on() {
    // smtp-proto refuses these paths; the gateway's own look at them (address literals) must not
    // cut the line inside the two-byte `é` (issue 10 section 1.1: the session task panicked).
    let gw = gateway("tabpath", "", 1);
    let mut c = gw.client();
    for line in ["RCPT\tTO:<é>", "MAIL\tFROM:<é>"] {
        let reply = c.cmd(line);
        assert!(reply.starts_with('5'), "{line:?} before HELO: {reply}");
    }
    assert!(c.cmd("EHLO mail.goodcorp.example").starts_with("250"));
    for line in ["RCPT\tTO:<é>", "MAIL\tFROM:<é>"] {
        let reply = c.cmd(line);
        assert!(reply.starts_with('5'), "{line:?} after EHLO: {reply}");
    }
    // The session still works: a clean transaction goes through.
    c.open_message();
    c.expect("Subject: after\r\n\r\nstill here\r\n.", "250");
    assert!(c.cmd("QUIT").starts_with("221"));
}

#[test]
fn a_bdat_size_that_is_no_number_closes_the_session() {
    // The chunk that follows cannot be measured, so nothing after the command can be told apart
    // from commands: the session closes, as for a chunk over the limit (a 501 went on reading
    // the chunk's bytes as commands).
    let gw = gateway("bdatsize", "", 0);
    let mut c = gw.greeted("client.example.net");
    c.stream
        .get_mut()
        .write_all(b"BDAT 99999999999999999999 LAST\r\nRSET\r\nNOOP\r\n")
        .expect("write");
    let reply = c.reply();
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    let mut rest = Vec::new();
    let _ = c.stream.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "closed, the chunk's bytes not run as commands: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn a_bdat_line_outside_its_grammar_is_a_syntax_error_and_closes() {
    // RFC 3030: `BDAT SP chunk-size [SP "LAST"]`. smtp-proto skips what follows `LAST`, so
    // `BDAT 5 LAST EXTRA` was taken as a last chunk; a word that is not `LAST` was "chunk size
    // not understood". Both are syntax errors (Postfix: `501 5.5.4 Syntax: BDAT count [LAST]`);
    // the chunk's end is unknown, so the session closes and its bytes never run as commands.
    for line in [
        "BDAT 5 LAST EXTRA",
        "BDAT 5 MORE",
        "BDAT 5 LAST LAST",
        "BDAT x",
        // The parser skips blanks before the verb: so does the BDAT check.
        "  BDAT 5 MORE",
    ] {
        let gw = gateway("bdatsyntax", "", 0);
        let mut c = gw.greeted("client.example.net");
        c.stream
            .get_mut()
            .write_all(format!("{line}\r\nRSET\r\nNOOP\r\n").as_bytes())
            .expect("write");
        let reply = c.reply();
        assert!(reply.starts_with("501 5.5.4"), "{line}: {reply}");
        let mut rest = Vec::new();
        let _ = c.stream.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "{line}: closed, the chunk's bytes not run as commands: {}",
            String::from_utf8_lossy(&rest)
        );
    }
}

#[test]
fn a_client_cannot_write_lines_of_its_own_into_the_log() {
    // What a client sends reaches the log in check details (the pregreet's first bytes here),
    // and in the human format one event is one line: a CR LF in those bytes followed by a
    // timestamp forged a line of the gateway's own ("... INFO smtp_gateway: ...").
    let gw = gateway("logforge", "greet_pause = \"1s\"", 0);
    let mut tcp = gw.connect().stream.into_inner();
    tcp.write_all(b"EHLO bot\r\n2026-12-04T22:40:00.000000Z  INFO forged: banned nobody\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.contains("521"), "pregreet refused: {answer:?}");
    gw.wait_log("check fired");
    let log = gw.log();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-04T22:40:00")),
        "a forged line in the log:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("check fired") && l.contains("2026-12-04T22:40:00")),
        "the bytes are still logged, on the check's line:\n{log}"
    );
}

/// A backend that refuses every recipient whose mailbox starts with `unknown` (`550 5.1.1`) and
/// accepts the rest, offering PIPELINING when `pipelining`. One session.
fn picky_backend(pipelining: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let script = if pipelining {
        picky::<true>
    } else {
        picky::<false>
    };
    let _seen = backend_script(listener, 1, script);
    addr
}

fn picky<const PIPELINING: bool>(in_data: &mut bool, cmd: &str, _: &mut Vec<String>) -> Step {
    let upper = cmd.to_ascii_uppercase();
    if *in_data {
        if cmd == "." {
            *in_data = false;
            return Step::Reply(b"250 2.0.0 queued\r\n");
        }
        return Step::Quiet;
    }
    Step::Reply(if upper.starts_with("EHLO") && PIPELINING {
        b"250-backend.test\r\n250 PIPELINING\r\n"
    } else if upper.starts_with("EHLO") {
        b"250 backend.test\r\n"
    } else if upper.starts_with("RCPT TO:<UNKNOWN") {
        b"550 5.1.1 no such user\r\n"
    } else if upper == "DATA" {
        *in_data = true;
        b"354 go ahead\r\n"
    } else if upper == "QUIT" {
        return Step::Quit;
    } else {
        b"250 2.0.0 Ok\r\n"
    })
}

#[test]
fn refused_recipients_do_not_count_towards_max_recipients() {
    // smtp.max_recipients caps the recipients of a message, as Postfix's smtpd_recipient_limit
    // does: those accepted. Counting every RCPT tried deferred the last valid recipients of a
    // list message that held a few stale addresses.
    for pipelining in [false, true] {
        let gw = Gateway::start("rcptcap", picky_backend(pipelining), "max_recipients = 2");
        let mut c = gw.greeted("client.example.net");
        let mut lines = vec!["MAIL FROM:<a@example.net>".to_string()];
        lines.extend((0..3).map(|i| format!("RCPT TO:<unknown{i}@example.org>")));
        lines.extend((0..3).map(|i| format!("RCPT TO:<b{i}@example.org>")));
        let burst: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        c.stream
            .get_mut()
            .write_all(burst.as_bytes())
            .expect("write");
        let replies: Vec<String> = lines.iter().map(|_| c.reply()).collect();
        let codes: Vec<&str> = replies.iter().map(|r| r.get(..3).unwrap_or("")).collect();
        assert_eq!(
            codes,
            ["250", "550", "550", "550", "250", "250", "452"],
            "pipelining {pipelining}: {replies:?}"
        );
        c.expect("DATA", "354");
        c.expect("Subject: x\r\n\r\nhello\r\n.", "250");
        c.expect("QUIT", "221");
    }
}

#[test]
fn a_backend_that_answers_data_with_anything_but_354_or_a_refusal_is_not_relayed() {
    // A backend answering DATA `250` (or any 2xx or 3xx but 354) broke the protocol: relayed,
    // the client read a positive reply to DATA (a lax client counts the message as taken) and
    // its message text was then read as commands.
    type Script = fn(&mut (), &str, &mut Vec<String>) -> Step;
    let cases: [(Script, &str); 3] = [
        (odd_data::<false, 250>, "250, no pipelining"),
        (odd_data::<true, 250>, "250, pipelining"),
        (odd_data::<false, 334>, "334"),
    ];
    for (script, what) in cases {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _seen = backend_script(listener, 1, script);
        let gw = Gateway::start("odddata", addr, "");
        let mut c = gw.greeted("client.example.net");
        c.expect("MAIL FROM:<a@example.net>", "250");
        c.expect("RCPT TO:<b@example.org>", "250");
        let reply = c.cmd("DATA");
        assert!(
            reply.starts_with("451 4.4.2"),
            "DATA answered {what}: {reply}"
        );
        // The session goes on, without a transaction.
        c.expect("RCPT TO:<b@example.org>", "503");
        c.expect("QUIT", "221");
    }
}

/// A backend that answers DATA with `CODE` (250 or 334), offering PIPELINING when `PIPELINING`.
fn odd_data<const PIPELINING: bool, const CODE: u16>(
    _: &mut (),
    cmd: &str,
    _: &mut Vec<String>,
) -> Step {
    let upper = cmd.to_ascii_uppercase();
    Step::Reply(if upper.starts_with("EHLO") && PIPELINING {
        b"250-backend.test\r\n250 PIPELINING\r\n"
    } else if upper.starts_with("EHLO") {
        b"250 backend.test\r\n"
    } else if upper == "DATA" && CODE == 250 {
        b"250 2.0.0 sure\r\n"
    } else if upper == "DATA" {
        b"334 VXNlcm5hbWU6\r\n"
    } else if upper == "QUIT" {
        return Step::Quit;
    } else {
        b"250 2.0.0 Ok\r\n"
    })
}

#[test]
fn data_rset_and_starttls_take_no_argument() {
    // RFC 5321 4.1.1.4/4.1.1.5, RFC 3207 4: `"DATA" CRLF`, `"RSET" CRLF`, `"STARTTLS" CRLF`.
    // smtp-proto skips what follows the verb, so `STARTTLS foo` began a handshake and `DATA x`
    // opened the message (Postfix: `501 5.5.4 Syntax: STARTTLS`).
    let gw = gateway("noargs", "", 1);
    let mut c = gw.greeted("client.example.net");
    for verb in ["STARTTLS", "RSET", "DATA"] {
        let reply = c.cmd(&format!("{verb} now"));
        assert!(
            reply.starts_with(&format!("501 5.5.4 Syntax: {verb}")),
            "{verb} now: {reply}"
        );
    }
    // Blanks before the verb (the parser skips them) change nothing.
    let reply = c.cmd(" RSET now");
    assert!(reply.starts_with("501 5.5.4 Syntax: RSET"), "{reply}");
    // The same verbs alone (trailing blanks allowed) still work.
    c.expect("RSET ", "250");
    c.expect("MAIL FROM:<a@example.net>", "250");
    c.expect("RCPT TO:<b@example.org>", "250");
    c.expect("DATA", "354");
    c.expect("Subject: x\r\n\r\nhello\r\n.", "250");
    c.expect("QUIT", "221");
}

#[test]
fn a_helo_name_of_bytes_or_control_characters_is_refused_without_echoing_them() {
    // Bytes that are not UTF-8 reached the backend as replacement characters (a HELO name the
    // client never gave), and an ESC or ^A in the name went back raw in the refusal's text.
    let gw = gateway("helobytes", "", 0);
    for name in [
        &b"\xff\xfe.example.org"[..],
        b"a\x1b[31mred\x01.example.org",
    ] {
        let mut c = gw.client();
        let mut line = b"EHLO ".to_vec();
        line.extend_from_slice(name);
        line.extend_from_slice(b"\r\n");
        c.stream.get_mut().write_all(&line).expect("write");
        let reply = c.reply();
        assert!(
            reply.starts_with("550 5.7.1") && reply.contains("helo_invalid"),
            "{:?}: {reply:?}",
            String::from_utf8_lossy(name)
        );
        assert!(
            !reply.trim_end().chars().any(char::is_control),
            "a control character echoed: {reply:?}"
        );
    }
}

#[test]
fn a_command_s_leading_blanks_are_not_forwarded() {
    // The parser skips blanks before the verb, and MAIL and RCPT go to the backend as the client
    // wrote them: ` MAIL FROM:<...>` reached it with its blank, which a strict backend does not
    // understand (its reply then answered another command).
    let (addr, seen) = peers::scripted_backend_on_loopback(1);
    let gw = Gateway::start("blanks", addr, "");
    let mut c = gw.greeted("client.example.net");
    c.expect(" MAIL FROM:<a@example.net>", "250");
    c.expect("  RCPT TO:<b@example.org>", "250");
    c.expect("QUIT", "221");
    drop(gw);
    let seen = seen.join().expect("backend");
    for line in ["MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>"] {
        assert!(
            seen.iter().any(|l| l == line),
            "{line} not seen as such: {seen:?}"
        );
    }
}

#[test]
fn parameters_of_extensions_not_offered_are_refused() {
    // RFC 5321 4.1.1.11: a parameter of an extension the server did not offer gets 555. The
    // gateway offers SIZE, 8BITMIME and SMTPUTF8 (and AUTH where a login is possible), not DSN
    // nor BINARYMIME; such parameters went on to the backend, which then refused every
    // recipient (BINARYMIME) or acted on what the client was never offered (DSN).
    let (addr, seen) = peers::scripted_backend_on_loopback(1);
    let gw = Gateway::start("params", addr, "");
    let mut c = gw.greeted("client.example.net");
    for (line, param) in [
        (
            "MAIL FROM:<a@example.net> BODY=BINARYMIME",
            "BODY=BINARYMIME",
        ),
        ("MAIL FROM:<a@example.net> RET=HDRS", "RET"),
        ("MAIL FROM:<a@example.net> ENVID=abc", "ENVID"),
        ("MAIL FROM:<a@example.net> REQUIRETLS", "REQUIRETLS"),
    ] {
        let reply = c.cmd(line);
        assert!(
            reply.starts_with("555 5.5.4") && reply.contains(param),
            "{line}: {reply}"
        );
    }
    // What is offered passes.
    c.expect(
        "MAIL FROM:<a@example.net> SIZE=100 BODY=8BITMIME SMTPUTF8",
        "250",
    );
    for (line, param) in [
        ("RCPT TO:<b@example.org> NOTIFY=SUCCESS", "NOTIFY"),
        (
            "RCPT TO:<b@example.org> ORCPT=rfc822;b@example.org",
            "ORCPT",
        ),
    ] {
        let reply = c.cmd(line);
        assert!(
            reply.starts_with("555 5.5.4") && reply.contains(param),
            "{line}: {reply}"
        );
    }
    c.expect("RCPT TO:<b@example.org>", "250");
    c.expect("QUIT", "221");
    drop(gw);
    let seen = seen.join().expect("backend");
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("BINARYMIME") || l.contains("NOTIFY") || l.contains("ENVID")),
        "{seen:?}"
    );
}

/// A backend offering PIPELINING, and CHUNKING when `chunking`, to EHLO (no 8BITMIME, no
/// SMTPUTF8; nothing to HELO), answering anything else but QUIT `250`, for `sessions` sessions
/// one after the other.
fn backend_offering(sessions: usize, chunking: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let script = if chunking {
        offering::<true>
    } else {
        offering::<false>
    };
    let _seen = backend_script(listener, sessions, script);
    addr
}

fn offering<const CHUNKING: bool>(_: &mut (), cmd: &str, _: &mut Vec<String>) -> Step {
    let upper = cmd.to_ascii_uppercase();
    Step::Reply(if upper.starts_with("EHLO") && CHUNKING {
        b"250-backend.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
    } else if upper.starts_with("EHLO") {
        b"250-backend.test\r\n250 PIPELINING\r\n"
    } else if upper.starts_with("HELO") {
        b"250 backend.test\r\n"
    } else if upper == "QUIT" {
        return Step::Quit;
    } else {
        b"250 2.0.0 Ok\r\n"
    })
}

#[test]
fn a_helo_client_does_not_take_chunking_from_the_next_ehlo_client() {
    // Until its own backend session opens (at MAIL), a client is offered CHUNKING when the last
    // backend session handed out offered it. A backend session greeted with HELO (for a HELO
    // client) offers no extension at all, and the next EHLO client was not offered CHUNKING.
    let gw = Gateway::start("chunkflap", backend_offering(3, true), "");
    let mut c = gw.greeted("first.example.net");
    c.expect("MAIL FROM:<a@example.net>", "250");
    c.expect("RCPT TO:<b@example.org>", "250");
    c.expect("QUIT", "221");
    let mut c = gw.client();
    c.expect("HELO old.example.net", "250");
    c.expect("MAIL FROM:<a@example.net>", "250");
    c.expect("RCPT TO:<b@example.org>", "250");
    c.expect("QUIT", "221");
    let mut c = gw.client();
    let ehlo = c.cmd("EHLO next.example.net");
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
}

#[test]
fn eight_bit_and_utf8_are_offered_as_the_backend_offers_them() {
    // The gateway offered 8BITMIME and SMTPUTF8 whatever the backend: a client then sent 8-bit
    // text (or UTF-8 addresses) a backend without them refuses for good, where it would have
    // converted the text to 7 bits (or said so itself) had they not been offered.
    let gw = Gateway::start("eightbit", backend_offering(3, false), "");
    // The backend session of this client (opened at MAIL) shows what the backend offers.
    let mut c = gw.greeted("first.example.net");
    c.expect("MAIL FROM:<a@example.net>", "250");
    c.expect("RCPT TO:<b@example.org>", "250");
    let again = c.cmd("EHLO first.example.net");
    c.expect("QUIT", "221");
    let mut c = gw.client();
    let next = c.cmd("EHLO next.example.net");
    for ehlo in [&again, &next] {
        assert!(ehlo.starts_with("250"), "{ehlo}");
        assert!(
            !ehlo.contains("8BITMIME") && !ehlo.contains("SMTPUTF8"),
            "{ehlo}"
        );
        assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    }
}

#[test]
fn a_backend_that_refuses_ehlo_is_greeted_with_helo() {
    // RFC 5321 3.2: a client whose EHLO is refused as unknown falls back to HELO. The gateway
    // did not: every client got `451 4.4.1` from a backend that speaks plain SMTP only.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = backend_script(listener, 1, |in_data: &mut bool, cmd, seen| {
        if *in_data {
            if cmd == "." {
                *in_data = false;
                return Step::Reply(b"250 2.0.0 queued\r\n");
            }
            return Step::Quiet;
        }
        seen.push(cmd.to_string());
        let upper = cmd.to_ascii_uppercase();
        Step::Reply(if upper.starts_with("EHLO") {
            b"502 5.5.1 Command not implemented\r\n"
        } else if upper == "DATA" {
            *in_data = true;
            b"354 go ahead\r\n"
        } else if upper == "QUIT" {
            return Step::Quit;
        } else {
            b"250 2.0.0 Ok\r\n"
        })
    });
    let gw = Gateway::start("helofallback", addr, "");
    let mut c = gw.greeted("client.example.net");
    c.expect("MAIL FROM:<a@example.net>", "250");
    c.expect("RCPT TO:<b@example.org>", "250");
    c.expect("DATA", "354");
    c.expect("Subject: x\r\n\r\nhello\r\n.", "250");
    c.expect("QUIT", "221");
    drop(gw);
    let seen = seen.join().expect("backend");
    assert!(
        seen.iter().any(|l| l == "HELO client.example.net"),
        "{seen:?}"
    );
}

//! One command line: reading it (a line in progress that already shows a TLS record or binary
//! bytes is not waited for), the line-level checks (non-SMTP traffic, length, NUL, bare
//! newlines), the parse (with the address-literal paths smtp-proto refuses), and the dispatch by
//! verb. The one-line verbs (RSET, NOOP, QUIT, VRFY, HELP, the unimplemented ones) are answered
//! here, and the junk commands (`smtp.junk_command_limit`) counted.

use smtp_proto::{Error as ParseError, Request};

use super::{CheckEffect, Flow, Session};
use crate::{
    checks::Check,
    policy::address::{self, PathCommand},
    smtp::{
        connection::{ConnError, Connection, Ending, Line},
        parameters,
        reply::Reply,
    },
};

/// What reading the next command brought.
pub(super) enum Incoming {
    /// A line (complete, or cut by the end of the stream).
    Line(Line),
    /// The client closed with nothing pending.
    Closed,
    /// The line in progress is not SMTP (what it looks like); it was not waited for.
    NotSmtp(&'static str),
}

/// Reads the next command line of at most `max` bytes by `deadline`. With `sniff`, a line in
/// progress whose first bytes are a TLS record or binary is reported at once
/// ([`Incoming::NotSmtp`]) instead of waiting for an end of line that may never come; the
/// complete line would be judged the same by [`non_smtp`].
pub(super) async fn read_command(
    conn: &mut Connection,
    max: usize,
    deadline: tokio::time::Instant,
    sniff: bool,
) -> Result<Incoming, ConnError> {
    if sniff {
        while !conn.has_line() && conn.buffered() < max {
            if let Some(kind) = non_smtp_start(conn.peek()) {
                return Ok(Incoming::NotSmtp(kind));
            }
            if conn.read_more_until(deadline).await? == 0 {
                break;
            }
        }
    }
    Ok(match conn.read_line_until(max, deadline).await? {
        Some(line) => Incoming::Line(line),
        None => Incoming::Closed,
    })
}

/// Whether a command line has a word after its verb.
fn has_argument(line: &[u8]) -> bool {
    line.split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty())
        .nth(1)
        .is_some()
}

/// Whether `line` is a BDAT command (any case, after any blanks, as the parser reads it),
/// whatever its arguments.
fn is_bdat(line: &[u8]) -> bool {
    line.trim_ascii_start().get(..5).is_some_and(|verb| {
        verb.eq_ignore_ascii_case(b"BDAT ") || verb.eq_ignore_ascii_case(b"BDAT\t")
    })
}

impl Session {
    /// Counts a junk command (Postfix's NOOP, VRFY, ETRN, RSET, and here also HELP and a repeated
    /// HELO/EHLO); past `smtp.junk_command_limit` since the last delivered message the session is
    /// closed with `421 4.7.0`.
    fn count_junk(&mut self) -> Option<Flow> {
        self.junk_commands += 1;
        if self.junk_commands <= self.shared.config.smtp.junk_command_limit {
            return None;
        }
        tracing::info!(client = %self.client, junk = self.junk_commands, "too many junk commands; closing");
        Some(self.drop_reply("Too many junk commands"))
    }

    /// Checks, parses and handles one command line.
    pub(super) async fn handle_line(&mut self, line: Line) -> Flow {
        // Only a clean RCPT or DATA can join the forwarded group; anything else may reply,
        // close or depend on the transaction, so the awaited replies come first.
        if !self.pipeline.is_empty()
            && !may_join_group(&line)
            && let Flow::Close = self.settle_pipeline().await
        {
            return Flow::Close;
        }
        if let Some(flow) = self.check_line(&line) {
            return flow;
        }
        let parsed = parse_command(&line);
        if !self.pipeline.is_empty()
            && !matches!(parsed, Ok(Request::Rcpt { .. } | Request::Data))
            && let Flow::Close = self.settle_pipeline().await
        {
            return Flow::Close;
        }
        match parsed {
            Ok(request) => self.dispatch(request, &line.data).await,
            Err(ParseError::UnknownCommand) => {
                self.unknown_commands += 1;
                self.reply(Reply::new(500, "5.5.2 Command unrecognized"));
                if self.unknown_commands > self.shared.config.smtp.max_unknown_commands
                    && self.fire(
                        Check::TooManyUnknownCommands,
                        format!("{} unknown commands", self.unknown_commands),
                    ) == CheckEffect::Drop
                {
                    return self.drop_reply("Too many unknown commands");
                }
                Flow::Continue
            }
            // smtp-proto refused it: BDAT's own reading says why, and closes the session.
            Err(_) if is_bdat(&line.data) => self.handle_bdat(&line.data).await,
            Err(e) => {
                self.reply(syntax_error_reply(e));
                self.count_error().unwrap_or(Flow::Continue)
            }
        }
    }

    /// The line-level checks: `Some(flow)` when one refused the line or drops the session.
    pub(super) fn check_line(&mut self, line: &Line) -> Option<Flow> {
        if let Some(kind) = non_smtp(&line.data)
            && self.fire(Check::NonSmtp, kind) != CheckEffect::Pass
        {
            return Some(self.drop_reply("Not an SMTP client"));
        }
        if line.too_long {
            let detail = format!(
                "command line over {} bytes",
                self.shared.config.smtp.max_command_line
            );
            let refusal = Reply::new(500, "5.5.2 Line too long");
            if let Some(flow) = self.enforce(Check::LongLine, detail, refusal, "Line too long") {
                return Some(flow);
            }
        }
        if line.nul {
            let refusal = Reply::new(500, "5.5.2 NUL byte in command");
            if let Some(flow) = self.enforce(
                Check::NulByte,
                "NUL in command",
                refusal,
                "NUL byte in command",
            ) {
                return Some(flow);
            }
        }
        if line.ending == Ending::BareLf || line.bare_cr {
            let refusal = Reply::new(500, "5.5.2 Commands must end with CRLF");
            let detail = "bare LF or CR in command";
            if let Some(flow) = self.enforce(
                Check::BareNewline,
                detail,
                refusal,
                "Bare LF or CR in command",
            ) {
                return Some(flow);
            }
        }
        None
    }

    /// Hands a parsed command to its verb's handler; `raw` is the line as received (what gets
    /// forwarded to the backend).
    async fn dispatch(&mut self, request: Request<String>, raw: &[u8]) -> Flow {
        // The parser skipped any blanks before the verb; the backend gets the line without them.
        let raw = raw.trim_ascii_start();
        let junk = match request {
            Request::Noop { .. } | Request::Vrfy { .. } | Request::Help { .. } | Request::Rset => {
                true
            }
            Request::Ehlo { .. } | Request::Helo { .. } => self.helo.is_some(),
            _ => false,
        };
        if junk && let Some(flow) = self.count_junk() {
            return flow;
        }
        match request {
            Request::Ehlo { host } => self.handle_helo(host, true).await,
            Request::Helo { host } => self.handle_helo(host, false).await,
            Request::Mail { from } => self.handle_mail(from, raw).await,
            Request::Rcpt { to } => self.handle_rcpt(to.address, raw).await,
            Request::Data => self.handle_data().await,
            Request::Bdat { .. } => self.handle_bdat(raw).await,
            Request::Rset => {
                self.txn = None;
                match self.backend.as_mut() {
                    Some(b) => match b.command(b"RSET").await {
                        Ok(r) => self.reply(r),
                        Err(e) => return self.backend_lost(e),
                    },
                    None => self.reply(Reply::new(250, "2.0.0 Ok")),
                }
                Flow::Continue
            }
            Request::Noop { .. } => {
                self.reply(Reply::new(250, "2.0.0 Ok"));
                Flow::Continue
            }
            Request::Quit => {
                self.reply(Reply::new(221, "2.0.0 Bye"));
                Flow::Close
            }
            Request::StartTls => self.handle_starttls().await,
            Request::Vrfy { .. } => {
                self.reply(Reply::new(
                    252,
                    "2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
                ));
                Flow::Continue
            }
            Request::Help { .. } => {
                self.reply(Reply::new(214, "2.0.0 See RFC 5321"));
                Flow::Continue
            }
            Request::Auth { .. } => self.handle_auth(raw).await,
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => {
                self.reply(Reply::new(502, "5.5.1 Command not implemented"));
                self.count_error().unwrap_or(Flow::Continue)
            }
        }
    }
}

/// Parses a command line. A MAIL/RCPT path smtp-proto refuses is looked at again: an address
/// literal (`user@[198.51.100.7]`, which RFC 5321 4.1.2 allows) is handed to the relay policy.
/// DATA, RSET and STARTTLS take no argument (RFC 5321 4.1.1.4, 4.1.1.5; RFC 3207 section 4),
/// which smtp-proto does not check: one that has any is a syntax error, as with Postfix. A MAIL
/// or RCPT parameter of an extension not offered is one too (`parameters.rs`).
pub(crate) fn parse_command(line: &Line) -> Result<Request<String>, ParseError> {
    let raw = line.with_crlf();
    match Request::parse(&mut raw.iter()).map(Request::into_owned) {
        Err(e @ (ParseError::InvalidRecipientAddress | ParseError::InvalidSenderAddress)) => {
            literal_path_request(&line.data).ok_or(e)
        }
        Ok(Request::Mail { from }) => match parameters::unoffered_mail_parameter(&from) {
            Some(param) => Err(ParseError::UnsupportedParameter {
                param: param.into(),
            }),
            None => Ok(Request::Mail { from }),
        },
        Ok(Request::Rcpt { to }) => match parameters::unoffered_rcpt_parameter(&to) {
            Some(param) => Err(ParseError::UnsupportedParameter {
                param: param.into(),
            }),
            None => Ok(Request::Rcpt { to }),
        },
        Ok(request @ (Request::Data | Request::Rset | Request::StartTls))
            if has_argument(&line.data) =>
        {
            let syntax = match request {
                Request::Data => "DATA",
                Request::Rset => "RSET",
                _ => "STARTTLS",
            };
            Err(ParseError::SyntaxError { syntax })
        }
        other => other,
    }
}

/// The MAIL/RCPT request of a line whose path is an address literal. The raw line (parameters
/// included) is what gets forwarded.
fn literal_path_request(line: &[u8]) -> Option<Request<String>> {
    let (command, address) = address::literal_path(line)?;
    Some(match command {
        PathCommand::Rcpt => Request::Rcpt {
            to: smtp_proto::RcptTo {
                address,
                orcpt: None,
                rrvs: 0,
                flags: 0,
            },
        },
        PathCommand::Mail => Request::Mail {
            from: smtp_proto::MailFrom {
                address,
                ..Default::default()
            },
        },
    })
}

/// The reply to a line smtp-proto could not parse: `501`, but `555` for a MAIL or RCPT parameter
/// the server does not know (RFC 5321 section 4.1.1.11; Postfix: "555 5.5.4 Unsupported option").
fn syntax_error_reply(e: ParseError) -> Reply {
    let text = match e {
        ParseError::SyntaxError { syntax } => format!("5.5.4 Syntax: {syntax}"),
        ParseError::InvalidSenderAddress => "5.1.7 Invalid sender address".into(),
        ParseError::InvalidRecipientAddress => "5.1.3 Invalid recipient address".into(),
        ParseError::InvalidParameter { param } => format!("5.5.4 Invalid parameter {param}"),
        ParseError::UnsupportedParameter { param } => {
            return Reply::new(555, format!("5.5.4 Unsupported parameter {param}"));
        }
        _ => "5.5.2 Syntax error".into(),
    };
    Reply::new(501, text)
}

/// A RCPT line, or a bare DATA, that no line-level check fires on: the only lines that can be
/// handled while forwarded commands still await their replies (DATA settles them itself, after
/// it may have joined them: `data.rs`).
pub(crate) fn may_join_group(line: &Line) -> bool {
    line.ending == Ending::CrLf
        && !line.too_long
        && !line.nul
        && !line.bare_cr
        && (line
            .data
            .get(..5)
            .is_some_and(|verb| verb.eq_ignore_ascii_case(b"RCPT "))
            || line.data.eq_ignore_ascii_case(b"DATA"))
        && non_smtp(&line.data).is_none()
}

/// Recognises traffic that is not SMTP: HTTP requests, proxy CONNECT, a TLS ClientHello sent to a
/// plaintext port, or binary bytes.
pub(crate) fn non_smtp(line: &[u8]) -> Option<&'static str> {
    const HTTP: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
        b"TRACE ",
    ];
    if line.starts_with(b"CONNECT ") {
        return Some("proxy CONNECT");
    }
    if HTTP.iter().any(|verb| line.starts_with(verb))
        || line.starts_with(b"Host:")
        || line.starts_with(b"User-Agent:")
    {
        return Some("HTTP request");
    }
    if let Some(kind) = non_smtp_start(line) {
        return Some(kind);
    }
    let controls = line
        .iter()
        .filter(|b| (**b < 0x20 && **b != b'\t' && **b != b'\r') || **b == 0x7f)
        .count();
    if controls > 0 && controls * 4 >= line.len().max(1) {
        return Some("binary data");
    }
    None
}

/// What the first bytes of a line (complete or in progress) already show to be something other
/// than SMTP, whatever follows: a TLS record (`16 03`), or a control byte other than TAB and CR
/// (which no command starts with). `None` also when too few bytes are in to tell.
fn non_smtp_start(start: &[u8]) -> Option<&'static str> {
    match start {
        [0x16, 0x03, ..] => Some("TLS handshake on a plaintext port"),
        [0x16] => None,
        [first, ..] if (*first < 0x20 && *first != b'\t' && *first != b'\r') || *first == 0x7f => {
            Some("binary data")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use smtp_proto::{Error as ParseError, Request};

    use super::{non_smtp, non_smtp_start, parse_command, syntax_error_reply};
    use crate::smtp::connection::{Ending, Line};

    fn line(text: &str) -> Line {
        Line {
            data: text.as_bytes().to_vec(),
            ending: Ending::CrLf,
            bare_cr: false,
            nul: false,
            too_long: false,
        }
    }

    #[test]
    fn an_unknown_parameter_gets_555_and_a_bad_value_501() {
        let reply = |text: &str| match parse_command(&line(text)) {
            Err(e) => syntax_error_reply(e),
            other => panic!("{text}: parsed as {other:?}"),
        };
        for text in [
            "RCPT TO:<b@example.org> FOO=BAR",
            "MAIL FROM:<a@example.net> XYZZY",
        ] {
            let r = reply(text);
            assert_eq!(
                (r.code, r.to_wire().contains("5.5.4")),
                (555, true),
                "{text}"
            );
        }
        assert_eq!(reply("MAIL FROM:<a@example.net> SIZE=ABC").code, 501);
        assert_eq!(reply("RCPT TO:<b@example.org> NOTIFY=MAYBE").code, 501);
    }

    #[test]
    fn address_literal_paths_are_parsed_for_the_policy() {
        match parse_command(&line("RCPT TO:<user@[198.51.100.7]> NOTIFY=NEVER")) {
            Ok(Request::Rcpt { to }) => assert_eq!(to.address, "user@[198.51.100.7]"),
            other => panic!("{other:?}"),
        }
        match parse_command(&line("mail from: <a@[IPv6:2001:db8::1]>")) {
            Ok(Request::Mail { from }) => assert_eq!(from.address, "a@[IPv6:2001:db8::1]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_policy_never_accepts_a_domain_the_parser_reads_otherwise() {
        // Found by the mail_path fuzz target: a line that is not UTF-8 has no raw path for the
        // policy, and the parsed address, whose quoted parts hold `<` and `>`, was judged as a
        // path: its own brackets stripped, the policy saw `example.org` where the parser (and a
        // backend parsing like it) reads `example.org>`.
        let data = b"RCPT TO:<\"<r\"\xff@\"example.org>\"\"\">".to_vec();
        let raw = Line {
            data: data.clone(),
            ..line("")
        };
        let Ok(Request::Rcpt { to }) = parse_command(&raw) else {
            panic!("the parser refuses the line: the case is gone");
        };
        assert_eq!(
            to.address.rsplit_once('@').map(|(_, d)| d),
            Some("example.org>")
        );
        let cfg = crate::policy::relay::RelayConfig {
            accepted_domains: vec!["example.org".into()],
            ..Default::default()
        };
        let client = std::net::IpAddr::from([192, 0, 2, 1]);
        let path = crate::policy::address::policy_path(&data, &to.address);
        let verdict = crate::policy::relay::check_recipient(&cfg, client, false, &path);
        assert!(
            !matches!(verdict, crate::policy::relay::RelayVerdict::Accept { .. }),
            "accepted {path:?}: {verdict:?}"
        );
        // A source route the parser drops is judged from the raw line, also when the line is
        // not UTF-8: the backend receives the route.
        let data = b"RCPT TO:<@relay.example.net:u\xff@example.org>".to_vec();
        if let Ok(Request::Rcpt { to }) = parse_command(&Line {
            data: data.clone(),
            ..line("")
        }) {
            let path = crate::policy::address::policy_path(&data, &to.address);
            let verdict = crate::policy::relay::check_recipient(&cfg, client, false, &path);
            assert!(
                !matches!(verdict, crate::policy::relay::RelayVerdict::Accept { .. }),
                "accepted {path:?} (parsed {:?}): {verdict:?}",
                to.address
            );
        }
    }

    #[test]
    fn a_non_ascii_path_after_a_tab_is_a_syntax_error_not_a_panic() {
        // Issue 10 section 1.1: the session task panicked on these lines.
        assert!(matches!(
            parse_command(&line("RCPT\tTO:<é>")),
            Err(ParseError::InvalidRecipientAddress)
        ));
        assert!(parse_command(&line("MAIL\tFROM:<é>")).is_err());
    }

    #[test]
    fn a_line_in_progress_is_judged_by_its_first_bytes_as_the_complete_line_would_be() {
        let hello = [
            0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
        ];
        for n in 2..hello.len() {
            assert_eq!(
                non_smtp_start(&hello[..n]),
                Some("TLS handshake on a plaintext port")
            );
        }
        assert_eq!(non_smtp_start(&[0x16]), None, "one byte: not yet known");
        assert_eq!(non_smtp_start(&[0x16, 0x41]), Some("binary data"));
        assert_eq!(non_smtp_start(b"\0EHLO"), Some("binary data"));
        assert_eq!(non_smtp_start(b"\x7fELF"), Some("binary data"));
        for ok in [
            &b""[..],
            b"E",
            b"EHLO mx",
            b"\tEHLO",
            b"\rEHLO",
            b"GET / HT",
        ] {
            assert_eq!(non_smtp_start(ok), None, "{ok:?}");
        }
        // Whatever follows, the complete line gets the same verdict.
        for start in [&hello[..2], &[0x16, 0x41][..], b"\0E", b"\x01"] {
            let mut complete = start.to_vec();
            complete.extend_from_slice(b"HLO mail.goodcorp.example with more text");
            assert_eq!(non_smtp(&complete), non_smtp_start(start), "{start:?}");
        }
    }

    #[test]
    fn recognises_non_smtp() {
        assert_eq!(non_smtp(b"GET / HTTP/1.1"), Some("HTTP request"));
        assert_eq!(
            non_smtp(b"CONNECT mx.example:25 HTTP/1.1"),
            Some("proxy CONNECT")
        );
        assert_eq!(
            non_smtp(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some("TLS handshake on a plaintext port")
        );
        assert_eq!(non_smtp(&[0x01, 0x02, 0x03, b'a']), Some("binary data"));
        for ok in [
            &b"EHLO mx.example.org"[..],
            b"MAIL FROM:<a@b>",
            b"HELO\tx",
            b"quit",
        ] {
            assert_eq!(non_smtp(ok), None, "{}", String::from_utf8_lossy(ok));
        }
    }
}

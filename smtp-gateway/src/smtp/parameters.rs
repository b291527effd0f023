//! The MAIL and RCPT parameters the gateway takes: those of the extensions its EHLO reply offers
//! (`session/ehlo.rs`): SIZE (RFC 1870), BODY=7BIT and BODY=8BITMIME (RFC 6152), SMTPUTF8
//! (RFC 6531) and AUTH= (RFC 4954; dropped unless the client logged in, `mail.rs`). Any other
//! that smtp-proto reads (DSN's RET, ENVID, NOTIFY, ORCPT; BINARYMIME, REQUIRETLS, DELIVERBY,
//! MT-PRIORITY, FUTURERELEASE, ...) belongs to an extension not offered: RFC 5321 section
//! 4.1.1.11 answers it `555`, as Postfix does, rather than pass the backend what the client was
//! never offered (a backend without BINARYMIME then refused every recipient).

use smtp_proto::{
    MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_CONPERM, MAIL_REQUIRETLS,
    MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8, MailFrom, RCPT_CONNEG, RcptTo,
};

/// MAIL flags of the extensions offered.
const OFFERED_MAIL_FLAGS: u64 = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;

/// The first parameter of `mail` that no offered extension defines, named as the client wrote
/// it, if any.
pub fn unoffered_mail_parameter(mail: &MailFrom<String>) -> Option<&'static str> {
    let flags = mail.flags & !OFFERED_MAIL_FLAGS;
    let named = [
        (flags & MAIL_BODY_BINARYMIME != 0, "BODY=BINARYMIME"),
        (flags & (MAIL_RET_FULL | MAIL_RET_HDRS) != 0, "RET"),
        (flags & MAIL_REQUIRETLS != 0, "REQUIRETLS"),
        (flags & MAIL_CONPERM != 0, "CONPERM"),
        (mail.env_id.is_some(), "ENVID"),
        (mail.by != 0, "BY"),
        (mail.trans_id.is_some(), "TRANSID"),
        (mail.solicit.is_some(), "SOLICIT"),
        (mail.mtrk.is_some(), "MTRK"),
        (mail.hold_for != 0, "HOLDFOR"),
        (mail.hold_until != 0, "HOLDUNTIL"),
        (mail.mt_priority != 0, "MT-PRIORITY"),
    ];
    named
        .into_iter()
        .find(|(present, _)| *present)
        .map(|(_, name)| name)
        .or((flags != 0).then_some("BY"))
}

/// The first parameter of `rcpt` that no offered extension defines, if any.
pub fn unoffered_rcpt_parameter(rcpt: &RcptTo<String>) -> Option<&'static str> {
    if rcpt.orcpt.is_some() {
        Some("ORCPT")
    } else if rcpt.flags & RCPT_CONNEG != 0 {
        Some("CONNEG")
    } else if rcpt.rrvs != 0 {
        Some("RRVS")
    } else if rcpt.flags != 0 {
        Some("NOTIFY")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use smtp_proto::Request;

    use super::*;

    fn parsed(line: &str) -> Request<String> {
        let line = format!("{line}\r\n");
        Request::parse(&mut line.as_bytes().iter())
            .map(Request::into_owned)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn only_the_parameters_of_offered_extensions_pass() {
        for (line, unoffered) in [
            ("MAIL FROM:<a@example.net>", None),
            ("MAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8", None),
            ("MAIL FROM:<a@example.net> BODY=7BIT", None),
            ("MAIL FROM:<a@example.net> AUTH=<>", None),
            (
                "MAIL FROM:<a@example.net> BODY=BINARYMIME",
                Some("BODY=BINARYMIME"),
            ),
            ("MAIL FROM:<a@example.net> RET=FULL", Some("RET")),
            ("MAIL FROM:<a@example.net> ENVID=x", Some("ENVID")),
            ("MAIL FROM:<a@example.net> REQUIRETLS", Some("REQUIRETLS")),
            ("MAIL FROM:<a@example.net> BY=120;R", Some("BY")),
            (
                "MAIL FROM:<a@example.net> MT-PRIORITY=3",
                Some("MT-PRIORITY"),
            ),
            ("MAIL FROM:<a@example.net> HOLDFOR=10", Some("HOLDFOR")),
        ] {
            let Request::Mail { from } = parsed(line) else {
                panic!("{line}: not MAIL");
            };
            assert_eq!(unoffered_mail_parameter(&from), unoffered, "{line}");
        }
        for (line, unoffered) in [
            ("RCPT TO:<b@example.org>", None),
            ("RCPT TO:<b@example.org> NOTIFY=NEVER", Some("NOTIFY")),
            (
                "RCPT TO:<b@example.org> NOTIFY=SUCCESS,DELAY",
                Some("NOTIFY"),
            ),
            (
                "RCPT TO:<b@example.org> ORCPT=rfc822;b@example.org",
                Some("ORCPT"),
            ),
        ] {
            let Request::Rcpt { to } = parsed(line) else {
                panic!("{line}: not RCPT");
            };
            assert_eq!(unoffered_rcpt_parameter(&to), unoffered, "{line}");
        }
    }
}

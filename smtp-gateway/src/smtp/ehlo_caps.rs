//! The backend's EHLO keywords (RFC 5321 section 4.1.1.1), parsed once from its reply and asked
//! by name: PIPELINING, CHUNKING, STARTTLS, AUTH mechanisms, XCLIENT attributes.
//!
//! The first reply line is the server's greeting (its name), never a keyword. Every later line is
//! `keyword [params]`; keywords compare case-insensitively.

use super::reply::Reply;

/// One EHLO keyword line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Keyword {
    /// The keyword as the server wrote it.
    name: String,
    /// Everything after it, surrounding whitespace removed (empty when there is none).
    params: String,
}

/// The extensions a backend offered in one EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EhloCaps {
    /// Keyword lines in reply order (the greeting line excluded).
    keywords: Vec<Keyword>,
}

impl EhloCaps {
    /// Parses the lines of an EHLO reply (the reply code is not looked at).
    pub fn parse(reply: &Reply) -> Self {
        let keywords = reply
            .lines
            .iter()
            .skip(1)
            .filter_map(|line| {
                let line = line.trim();
                let (name, params) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
                (!name.is_empty()).then(|| Keyword {
                    name: name.to_string(),
                    params: params.trim().to_string(),
                })
            })
            .collect();
        Self { keywords }
    }

    /// The parameters of `keyword` (empty when it has none); `None` when it is not offered.
    pub fn params(&self, keyword: &str) -> Option<&str> {
        self.keywords
            .iter()
            .find(|k| k.name.eq_ignore_ascii_case(keyword))
            .map(|k| k.params.as_str())
    }

    /// Whether `keyword` is offered.
    pub fn has(&self, keyword: &str) -> bool {
        self.params(keyword).is_some()
    }

    /// PIPELINING (RFC 2920): commands may be written together.
    pub fn pipelining(&self) -> bool {
        self.has("PIPELINING")
    }

    /// CHUNKING (RFC 3030): message text may be sent in BDAT chunks.
    pub fn chunking(&self) -> bool {
        self.has("CHUNKING")
    }

    /// STARTTLS (RFC 3207).
    pub fn starttls(&self) -> bool {
        self.has("STARTTLS")
    }

    /// The SASL mechanisms of the AUTH keyword (RFC 4954), as the server listed them; an AUTH
    /// keyword without mechanisms offers none.
    pub fn auth(&self) -> Option<&str> {
        self.params("AUTH")
            .filter(|mechanisms| !mechanisms.is_empty())
    }

    /// The attribute list of the XCLIENT keyword (Postfix XCLIENT_README), e.g.
    /// `NAME ADDR PORT PROTO HELO`.
    pub fn xclient(&self) -> Option<&str> {
        self.params("XCLIENT")
    }

    /// Whether XCLIENT is offered with attribute `attr` (case-insensitive).
    pub fn xclient_offers(&self, attr: &str) -> bool {
        self.xclient().is_some_and(|attrs| {
            attrs
                .split_whitespace()
                .any(|a| a.eq_ignore_ascii_case(attr))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::EhloCaps;
    use crate::smtp::reply::Reply;

    fn caps(lines: &[&str]) -> EhloCaps {
        EhloCaps::parse(&Reply::multi(
            250,
            lines.iter().map(|l| l.to_string()).collect(),
        ))
    }

    #[test]
    fn keywords_are_found_by_name_whatever_their_case() {
        let c = caps(&[
            "backend.test Hello",
            "pipelining",
            "SIZE 10240000",
            "AUTH  PLAIN LOGIN ",
            "XCLIENT NAME ADDR PORT",
            "STARTTLS",
            "chunking",
        ]);
        assert!(c.pipelining());
        assert!(c.chunking());
        assert!(c.starttls());
        assert_eq!(c.auth(), Some("PLAIN LOGIN"));
        assert_eq!(c.params("size"), Some("10240000"));
        assert_eq!(c.xclient(), Some("NAME ADDR PORT"));
        assert!(c.xclient_offers("addr"));
        assert!(!c.xclient_offers("HELO"));
        assert!(!c.has("8BITMIME"));
    }

    #[test]
    fn the_greeting_line_is_no_keyword() {
        let c = caps(&["PIPELINING"]);
        assert!(!c.pipelining());
        assert!(!caps(&["CHUNKING"]).chunking());
        let none = caps(&["backend.test"]);
        assert_eq!(none.auth(), None);
        assert_eq!(none.xclient(), None);
        assert!(!none.xclient_offers("ADDR"));
    }

    #[test]
    fn a_keyword_without_params_has_empty_params() {
        let c = caps(&["backend.test", "XCLIENT", "AUTH"]);
        assert_eq!(c.xclient(), Some(""));
        assert_eq!(c.auth(), None, "AUTH needs at least one mechanism");
    }
}

//! Which A answers of a list count: the postscreen filter syntax, one matcher per octet
//! (`127.0.0.[2..11]`, `127.0.[0..255].[1..3;5]`).

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// Which A answers of a list count: one matcher per octet (postscreen syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerFilter {
    /// Matchers for the four octets, most significant first.
    octets: [OctetMatch; 4],
}

/// The values one octet may take: a union of inclusive ranges (a single value is `(n, n)`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct OctetMatch {
    /// Inclusive ranges, in the order written.
    ranges: Vec<(u8, u8)>,
}

/// Why a filter such as `127.0.0.[2..11]` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not four dot-separated octets.
    #[error("expected 4 dot-separated octets, found {0}")]
    OctetCount(usize),
    /// An octet item that is not a decimal number.
    #[error("{0:?} is not a decimal number")]
    NotANumber(String),
    /// An octet value above 255.
    #[error("octet value {0} is greater than 255")]
    OutOfRange(String),
    /// A range `a..b` with `a > b`.
    #[error("range {0}..{1} is reversed (start greater than end)")]
    ReversedRange(u8, u8),
    /// A `[` without `]`, or the reverse, or nothing between them.
    #[error("{0:?} is not a number, [a..b] range or [a;b;c] list")]
    Brackets(String),
}

impl FromStr for AnswerFilter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Ranges contain dots too ("[2..11]"): split on the dots outside brackets.
        let fields = split_outside_brackets(text)?;
        let octets: Vec<OctetMatch> = fields
            .iter()
            .map(|field| parse_octet(field))
            .collect::<Result<_, _>>()?;
        let octets: [OctetMatch; 4] = octets
            .try_into()
            .map_err(|v: Vec<OctetMatch>| FilterError::OctetCount(v.len()))?;
        Ok(Self { octets })
    }
}

/// Splits `text` on the dots that are not inside `[...]`.
fn split_outside_brackets(text: &str) -> Result<Vec<&str>, FilterError> {
    let mut fields = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return Err(FilterError::Brackets(text.to_string())),
            '.' if depth == 0 => {
                fields.push(text.get(start..index).unwrap_or_default());
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(FilterError::Brackets(text.to_string()));
    }
    fields.push(text.get(start..).unwrap_or_default());
    Ok(fields)
}

/// Parses one octet field: `n`, or `[item;item;...]` where an item is `n` or `a..b`.
fn parse_octet(field: &str) -> Result<OctetMatch, FilterError> {
    let inner = match field.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .filter(|inner| !inner.is_empty())
            .ok_or_else(|| FilterError::Brackets(field.to_string()))?,
        None if field.contains(['[', ']', ';']) || field.contains("..") => {
            return Err(FilterError::Brackets(field.to_string()));
        }
        None => field,
    };
    let ranges = inner
        .split(';')
        .map(|item| match item.split_once("..") {
            Some((low, high)) => {
                let (low, high) = (parse_value(low)?, parse_value(high)?);
                if low > high {
                    return Err(FilterError::ReversedRange(low, high));
                }
                Ok((low, high))
            }
            None => parse_value(item).map(|value| (value, value)),
        })
        .collect::<Result<_, _>>()?;
    Ok(OctetMatch { ranges })
}

/// Parses a decimal octet value 0..=255.
fn parse_value(text: &str) -> Result<u8, FilterError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FilterError::NotANumber(text.to_string()));
    }
    // All digits: the only failure left is a value too large for the type.
    text.parse::<u8>()
        .map_err(|_| FilterError::OutOfRange(text.to_string()))
}

impl AnswerFilter {
    /// Whether `answer` matches every octet.
    pub fn matches(&self, answer: Ipv4Addr) -> bool {
        self.octets
            .iter()
            .zip(answer.octets())
            .all(|(octet, value)| {
                octet
                    .ranges
                    .iter()
                    .any(|&(low, high)| (low..=high).contains(&value))
            })
    }
}

impl fmt::Display for AnswerFilter {
    /// The canonical postscreen form, e.g. `127.0.0.[2..3;5]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, octet) in self.octets.iter().enumerate() {
            if index > 0 {
                f.write_str(".")?;
            }
            match octet.ranges.as_slice() {
                [(low, high)] if low == high => write!(f, "{low}")?,
                ranges => {
                    f.write_str("[")?;
                    for (item, (low, high)) in ranges.iter().enumerate() {
                        if item > 0 {
                            f.write_str(";")?;
                        }
                        if low == high {
                            write!(f, "{low}")?;
                        } else {
                            write!(f, "{low}..{high}")?;
                        }
                    }
                    f.write_str("]")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::dnsbl::test_support::ip4;

    fn filter(text: &str) -> AnswerFilter {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    // ---- filters ----

    #[test]
    fn filters_in_postscreen_syntax_match_what_they_say() {
        // (filter, matching answers, non-matching answers)
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "127.0.0.2",
                &["127.0.0.2"],
                &["127.0.0.3", "127.0.1.2", "128.0.0.2"],
            ),
            (
                "127.0.0.[2..11]",
                &["127.0.0.2", "127.0.0.5", "127.0.0.11"],
                &["127.0.0.1", "127.0.0.12"],
            ),
            (
                "127.0.0.[2;3;4]",
                &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
                &["127.0.0.5", "127.0.0.1"],
            ),
            (
                "127.0.[0..255].[1..3]",
                &["127.0.0.1", "127.0.15.3", "127.0.255.2"],
                &["127.0.15.0", "127.0.15.4", "127.1.0.1"],
            ),
            (
                "127.0.0.[1..3;10]",
                &["127.0.0.1", "127.0.0.10"],
                &["127.0.0.4", "127.0.0.11"],
            ),
            ("[127].0.0.[2]", &["127.0.0.2"], &["127.0.0.3"]),
            (
                "127.0.0.[0..255]",
                &["127.0.0.0", "127.0.0.255"],
                &["127.0.1.0"],
            ),
        ];
        for (text, hits, misses) in cases {
            let f = filter(text);
            for answer in *hits {
                assert!(f.matches(ip4(answer)), "{text} should match {answer}");
            }
            for answer in *misses {
                assert!(!f.matches(ip4(answer)), "{text} should not match {answer}");
            }
        }
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let cases: &[(&str, FilterError)] = &[
            ("127.0.0.256", FilterError::OutOfRange("256".into())),
            (
                "127.0.0.99999999999999999999",
                FilterError::OutOfRange("99999999999999999999".into()),
            ),
            ("127.0.0.[2..300]", FilterError::OutOfRange("300".into())),
            ("127.0.0.[11..2]", FilterError::ReversedRange(11, 2)),
            ("127.0.0", FilterError::OctetCount(3)),
            ("127.0.0.2.1", FilterError::OctetCount(5)),
            ("", FilterError::NotANumber(String::new())),
            ("127.0.0.x", FilterError::NotANumber("x".into())),
            ("127.0.0.-1", FilterError::NotANumber("-1".into())),
            ("127.0.0. 2", FilterError::NotANumber(" 2".into())),
            ("127.0.0.[2;;3]", FilterError::NotANumber(String::new())),
            ("127.0.0.[]", FilterError::Brackets("[]".into())),
            ("127.0.0.[2", FilterError::Brackets("127.0.0.[2".into())),
            ("127.0.0.2]", FilterError::Brackets("127.0.0.2]".into())),
            (
                "127.0.0.[[2]]",
                FilterError::Brackets("127.0.0.[[2]]".into()),
            ),
            ("127.0.0.2..3", FilterError::NotANumber(String::new())),
            ("127.0.0.2;3", FilterError::Brackets("2;3".into())),
        ];
        for (text, expected) in cases {
            let got = text.parse::<AnswerFilter>().err();
            assert_eq!(got.as_ref(), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn filters_display_in_canonical_form() {
        for (text, canonical) in [
            ("127.0.0.2", "127.0.0.2"),
            ("127.0.0.[2..11]", "127.0.0.[2..11]"),
            ("127.0.0.[2;3;4]", "127.0.0.[2;3;4]"),
            ("[127].0.[0..255].[1..3;9]", "127.0.[0..255].[1..3;9]"),
            ("127.0.0.[5..5]", "127.0.0.5"),
        ] {
            assert_eq!(filter(text).to_string(), canonical);
            assert_eq!(filter(canonical), filter(text));
        }
    }
}

//! One list in `[dnsbl].sites`: the postscreen string `zone[=filter][*weight]` or its table
//! form, and the check of the zone name.

use std::{fmt, str::FromStr};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

/// Longest zone name: 253 characters for a whole name, less 64 for the 32 reversed nibbles of
/// an IPv6 query and their dots.
pub(super) const MAX_ZONE_LEN: usize = 253 - 64;

/// One list: where to look, which answers count, and how much they weigh.
///
/// Deserializes from the postscreen string `zone[=filter][*weight]` or from a table with the
/// same three keys (only `zone` required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblSite {
    /// DNS zone of the list, e.g. `zen.spamhaus.org` (a trailing dot is allowed).
    pub zone: String,
    /// Added to the score when an answer matches (default 1); negative for allowlists, e.g.
    /// `list.dnswl.org*-2`. Zero is refused.
    pub weight: i32,
    /// Answers that count, in postscreen syntax: per octet a number, `[a..b]` or `[a;b;c]`
    /// (items may mix, `[1..3;5]`), e.g. `127.0.[0..255].[1..3]`. `None`: any answer in
    /// 127.0.0.0/8 counts. Answers in 127.255.255.0/24 (list error codes) never count.
    pub filter: Option<String>,
}

/// Weight of a site that does not state one (as in postscreen).
const DEFAULT_WEIGHT: i32 = 1;

/// serde's `default` for [`SiteTable::weight`].
fn default_weight() -> i32 {
    DEFAULT_WEIGHT
}

/// The table form of [`DnsblSite`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteTable {
    /// See [`DnsblSite::zone`].
    zone: String,
    /// See [`DnsblSite::weight`].
    #[serde(default = "default_weight")]
    weight: i32,
    /// See [`DnsblSite::filter`].
    #[serde(default)]
    filter: Option<String>,
}

impl<'de> Deserialize<'de> for DnsblSite {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SiteVisitor;

        impl<'de> Visitor<'de> for SiteVisitor {
            type Value = DnsblSite;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a site string such as \"zen.example=127.0.0.[2..11]*3\" or a table \
                     { zone, filter, weight }",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<DnsblSite, E> {
                value.parse().map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DnsblSite, A::Error> {
                let table = SiteTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(DnsblSite {
                    zone: table.zone,
                    weight: table.weight,
                    filter: table.filter,
                })
            }
        }

        deserializer.deserialize_any(SiteVisitor)
    }
}

/// Why a `zone[=filter][*weight]` string could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{site:?}: the weight after '*' must be an integer such as 3 or -2")]
pub struct SiteSyntaxError {
    /// The string as written.
    pub site: String,
}

impl FromStr for DnsblSite {
    type Err = SiteSyntaxError;

    /// Splits the postscreen form `zone[=filter][*weight]`. Zone and filter are checked by
    /// [`DnsblConfig::validate`], so that the error names the key.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (rest, weight) = match text.rsplit_once('*') {
            Some((rest, weight)) => {
                let weight = weight.trim().parse().map_err(|_| SiteSyntaxError {
                    site: text.to_string(),
                })?;
                (rest, weight)
            }
            None => (text, DEFAULT_WEIGHT),
        };
        let (zone, filter) = match rest.split_once('=') {
            Some((zone, filter)) => (zone, Some(filter.trim().to_string())),
            None => (rest, None),
        };
        Ok(Self {
            zone: zone.trim().to_string(),
            weight,
            filter,
        })
    }
}

impl fmt::Display for DnsblSite {
    /// The postscreen form, `zone[=filter]*weight`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.zone)?;
        if let Some(filter) = &self.filter {
            write!(f, "={filter}")?;
        }
        write!(f, "*{}", self.weight)
    }
}

/// Why a zone name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// Empty (or only a dot).
    #[error("the zone name is empty")]
    Empty,
    /// Longer than leaves room for an IPv6 query below it.
    #[error("{0:?} is longer than {MAX_ZONE_LEN} characters")]
    TooLong(String),
    /// An empty label, a label over 63 characters, a character outside letters, digits, `-`
    /// and `_`, or a label starting or ending with `-`.
    #[error("{0:?} is not a valid DNS name (labels of 1 to 63 letters, digits, '-' or '_')")]
    BadLabel(String),
}

/// Checks a zone name and returns it lowercased without its trailing dot.
pub(super) fn normalize_zone(zone: &str) -> Result<String, ZoneError> {
    let name = zone.strip_suffix('.').unwrap_or(zone);
    if name.is_empty() {
        return Err(ZoneError::Empty);
    }
    if name.len() > MAX_ZONE_LEN {
        return Err(ZoneError::TooLong(zone.to_string()));
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(ZoneError::BadLabel(zone.to_string()));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::dnsbl::test_support::site;

    #[test]
    fn zone_names_are_checked_and_normalized() {
        assert_eq!(normalize_zone("Zen.Example."), Ok("zen.example".into()));
        assert_eq!(
            normalize_zone("b.barracudacentral.org"),
            Ok("b.barracudacentral.org".into())
        );
        assert_eq!(
            normalize_zone("key_1.zen.dq.example"),
            Ok("key_1.zen.dq.example".into())
        );
        assert_eq!(normalize_zone(""), Err(ZoneError::Empty));
        assert_eq!(normalize_zone("."), Err(ZoneError::Empty));
        for bad in [
            "zen..example",
            "zen example",
            "-zen.example",
            "zen-.example",
            "zen.example..",
            "zen/x",
        ] {
            assert_eq!(
                normalize_zone(bad),
                Err(ZoneError::BadLabel(bad.into())),
                "{bad:?}"
            );
        }
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(matches!(
            normalize_zone(&long_label),
            Err(ZoneError::BadLabel(_))
        ));
    }

    #[test]
    fn compact_site_strings_split_into_zone_filter_weight() {
        let cases = [
            (
                "zen.example=127.0.0.[2..11]*3",
                "zen.example",
                Some("127.0.0.[2..11]"),
                3,
            ),
            (
                "list.dnswl.example=127.0.[0..255].[1..3]*-2",
                "list.dnswl.example",
                Some("127.0.[0..255].[1..3]"),
                -2,
            ),
            ("bl.example", "bl.example", None, 1),
            ("bl.example*2", "bl.example", None, 2),
            ("bl.example=127.0.0.2", "bl.example", Some("127.0.0.2"), 1),
            (
                " bl.example = 127.0.0.2 * 4 ",
                "bl.example",
                Some("127.0.0.2"),
                4,
            ),
        ];
        for (text, zone, filter, weight) in cases {
            let s = site(text);
            assert_eq!(s.zone, zone, "{text}");
            assert_eq!(s.filter.as_deref(), filter, "{text}");
            assert_eq!(s.weight, weight, "{text}");
        }
        assert_eq!(
            site("zen.example=127.0.0.[2..11]*3").to_string(),
            "zen.example=127.0.0.[2..11]*3"
        );
        assert_eq!(site("bl.example").to_string(), "bl.example*1");
        for bad in [
            "bl.example*",
            "bl.example*x",
            "bl.example*1.5",
            "bl.example*99999999999",
        ] {
            assert!(bad.parse::<DnsblSite>().is_err(), "{bad:?}");
        }
    }
}

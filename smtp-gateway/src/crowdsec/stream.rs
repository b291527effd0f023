//! The LAPI's decision stream (`GET /v1/decisions/stream`): the request, the bounded read of
//! its answer, and what one decision means for the kernel blocklist.
//!
//! The first request after a start (or a change of LAPI) says `startup=true` and gets every
//! decision in force; the next ones get what was added and deleted since. Only `ban` decisions
//! of scope `Ip` or `Range` are for the XDP blocklist; the rest (captcha, country or AS scopes)
//! are ignored. Every byte of the answer is hostile: its size is bounded, a malformed decision
//! is skipped (and counted), never a panic.

use std::{io::Read as _, net::IpAddr, sync::Arc, time::Duration};

use serde::Deserialize;

use super::config::CrowdsecConfig;
use crate::dataplane::Target;

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("LAPI answered HTTP {status}: {text}")]
    Status { status: u16, text: String },
    #[error("LAPI unreachable: {0}")]
    Transport(String),
    #[error("LAPI answer larger than crowdsec.max_response_bytes ({0})")]
    TooLarge(u64),
    #[error("LAPI answer is not a decision stream: {0}")]
    Json(#[from] serde_json::Error),
    #[error("reading the LAPI answer: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// One answer of the stream.
#[derive(Debug, Default, Deserialize)]
pub struct DecisionStream {
    /// Decisions added since the last poll (all of them with `startup=true`).
    #[serde(default)]
    pub new: Option<Vec<Decision>>,
    /// Decisions deleted or expired since the last poll.
    #[serde(default)]
    pub deleted: Option<Vec<Decision>>,
    /// Decisions past `crowdsec.max_decisions` in a list, skipped as they were read.
    #[serde(skip)]
    pub skipped: usize,
}

/// The stream in `body`, holding at most `max` decisions of each list: the rest are skipped as
/// they are read (and counted), never held. An answer within `crowdsec.max_response_bytes` can
/// still be millions of tiny decisions (64 MiB of `{}` is 22 million, about 3.4 GB held).
pub fn parse_stream(body: &[u8], max: usize) -> Result<DecisionStream, serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    let mut de = serde_json::Deserializer::from_slice(body);
    let stream = capped::StreamSeed(max).deserialize(&mut de)?;
    de.end()?;
    Ok(stream)
}

/// The seeds that read a stream with a cap on each list.
mod capped {
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::{Decision, DecisionStream};

    /// A whole answer, each list capped at `.0`.
    pub struct StreamSeed(pub usize);

    impl<'de> DeserializeSeed<'de> for StreamSeed {
        type Value = DecisionStream;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<DecisionStream, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for StreamSeed {
        type Value = DecisionStream;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decision stream object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DecisionStream, A::Error> {
            let mut stream = DecisionStream::default();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                let list = match key.as_ref() {
                    "new" => &mut stream.new,
                    "deleted" => &mut stream.deleted,
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                };
                let (decisions, skipped) = map.next_value_seed(ListSeed(self.0))?;
                *list = decisions;
                stream.skipped = stream.skipped.saturating_add(skipped);
            }
            Ok(stream)
        }
    }

    /// One list (or null): at most `.0` decisions kept, and how many were skipped.
    struct ListSeed(usize);

    impl<'de> DeserializeSeed<'de> for ListSeed {
        type Value = (Option<Vec<Decision>>, usize);

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_option(self)
        }
    }

    impl<'de> Visitor<'de> for ListSeed {
        type Value = (Option<Vec<Decision>>, usize);

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of decisions or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok((None, 0))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok((None, 0))
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut kept = Vec::new();
            let mut skipped = 0usize;
            while kept.len() < self.0 {
                match seq.next_element::<Decision>()? {
                    Some(decision) => kept.push(decision),
                    None => return Ok((Some(kept), 0)),
                }
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {
                skipped = skipped.saturating_add(1);
            }
            Ok((Some(kept), skipped))
        }
    }
}

/// One decision, as the LAPI gives it (unknown fields ignored).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Decision {
    /// The LAPI's id of the decision.
    #[serde(default)]
    pub id: i64,
    /// Time left, in Go's duration syntax (`3h59m59.9s`).
    #[serde(default)]
    pub duration: String,
    /// Who decided (`crowdsec`, `cscli`, `CAPI`, `lists`…).
    #[serde(default)]
    pub origin: String,
    /// Why (the scenario name).
    #[serde(default)]
    pub scenario: String,
    /// `Ip`, `Range`, `Country`…
    #[serde(default)]
    pub scope: String,
    /// `ban`, `captcha`…
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The address or prefix.
    #[serde(default)]
    pub value: String,
}

/// What a decision asks of the blocklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// Drop `target` for `ttl`.
    Ban { target: Target, ttl: Duration },
    /// Not for the XDP blocklist (another type or scope); nothing to do.
    NotOurs,
    /// Malformed: why.
    Invalid(String),
}

impl Decision {
    /// What this decision asks of the blocklist.
    pub fn meaning(&self) -> Meaning {
        if !self.kind.eq_ignore_ascii_case("ban") {
            return Meaning::NotOurs;
        }
        let target = if self.scope.eq_ignore_ascii_case("ip") {
            match self.value.parse::<IpAddr>() {
                Ok(addr) => match addr.to_canonical() {
                    IpAddr::V4(a) => Target::V4(a),
                    IpAddr::V6(a) => Target::V6(a),
                },
                Err(_) => return Meaning::Invalid(format!("{:?} is not an address", self.value)),
            }
        } else if self.scope.eq_ignore_ascii_case("range") {
            let net = match self.value.parse::<ipnet::IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => return Meaning::Invalid(format!("{:?} is not a prefix", self.value)),
            };
            match Target::from_net(net) {
                Ok(target) => target,
                Err(e) => return Meaning::Invalid(e.to_string()),
            }
        } else {
            return Meaning::NotOurs;
        };
        match go_duration(&self.duration) {
            Some(ttl) if !ttl.is_zero() => Meaning::Ban { target, ttl },
            Some(_) => Meaning::Invalid(format!("duration {:?} is over", self.duration)),
            None => Meaning::Invalid(format!("duration {:?} is not a duration", self.duration)),
        }
    }

    /// The reason stored with the kernel entry (`crowdsec: <scenario>`), printable only.
    pub fn reason(&self) -> String {
        let scenario: String = self
            .scenario
            .chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect();
        format!("crowdsec: {scenario}")
    }
}

/// Longest duration text parsed.
const MAX_DURATION_TEXT: usize = 64;

/// A Go `time.Duration` text (`1h2m3.5s`, `250ms`, `-1.5s`, `0`): `None` when malformed; a
/// negative one is zero (already over). Saturates at `Duration::MAX`.
pub fn go_duration(text: &str) -> Option<Duration> {
    if text.is_empty() || text.len() > MAX_DURATION_TEXT {
        return None;
    }
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, text.get(1..)?),
        Some(b'+') => (false, text.get(1..)?),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|n| *n > 0)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per_unit: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        if number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let nanos = value * nanos_per_unit;
        if !nanos.is_finite() || nanos < 0.0 {
            return None;
        }
        total =
            total.saturating_add(Duration::try_from_secs_f64(nanos / 1e9).unwrap_or(Duration::MAX));
        rest = next;
    }
    Some(if negative { Duration::ZERO } else { total })
}

/// The HTTP side of the stream: one agent per configuration (its timeouts, TLS roots and key).
pub struct LapiClient {
    /// The HTTP client.
    agent: ureq::Agent,
    /// `<url>/v1/decisions/stream`.
    endpoint: url::Url,
    /// The bouncer key.
    key: String,
    /// `crowdsec.max_response_bytes`.
    max_response: u64,
    /// `crowdsec.max_decisions`: decisions held at most per list of one answer.
    max_decisions: usize,
    /// `crowdsec.origins`, comma-joined (empty: all).
    origins: String,
}

impl LapiClient {
    /// A client for `cfg` (reads the key file and the CA file).
    pub fn new(cfg: &CrowdsecConfig) -> Result<Self, StreamError> {
        let key = cfg.key().map_err(StreamError::Setup)?;
        let base = url::Url::parse(&cfg.url)
            .map_err(|e| StreamError::Setup(format!("crowdsec.url: {e}")))?;
        let endpoint = base
            .join("v1/decisions/stream")
            .map_err(|e| StreamError::Setup(format!("crowdsec.url: {e}")))?;
        let mut builder = ureq::AgentBuilder::new()
            .timeout(cfg.timeout)
            .redirects(0)
            .user_agent(concat!("smtp-gateway/", env!("CARGO_PKG_VERSION")));
        if !cfg.ca_file.as_os_str().is_empty() {
            builder = builder.tls_config(Arc::new(tls_config(&cfg.ca_file)?));
        }
        Ok(Self {
            agent: builder.build(),
            endpoint,
            key,
            max_response: cfg.max_response_bytes,
            max_decisions: cfg.max_decisions,
            origins: cfg.origins.join(","),
        })
    }

    /// One poll (blocking, bounded by `crowdsec.timeout`): every decision in force with
    /// `startup`, else what changed since the last poll.
    pub fn poll(&self, startup: bool) -> Result<DecisionStream, StreamError> {
        let mut request = self
            .agent
            .request_url("GET", &self.endpoint)
            .set("X-Api-Key", &self.key)
            .query("startup", if startup { "true" } else { "false" })
            .query("scopes", "ip,range");
        if !self.origins.is_empty() {
            request = request.query("origins", &self.origins);
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                let mut text = String::new();
                let _ = response.into_reader().take(512).read_to_string(&mut text);
                return Err(StreamError::Status {
                    status,
                    text: text.trim().chars().filter(|c| !c.is_control()).collect(),
                });
            }
            Err(e) => return Err(StreamError::Transport(e.to_string())),
        };
        let mut body = Vec::new();
        response
            .into_reader()
            .take(self.max_response.saturating_add(1))
            .read_to_end(&mut body)?;
        if body.len() as u64 > self.max_response {
            return Err(StreamError::TooLarge(self.max_response));
        }
        Ok(parse_stream(&body, self.max_decisions)?)
    }
}

/// A TLS client configuration trusting the CA certificates in `path` only.
fn tls_config(path: &std::path::Path) -> Result<rustls::ClientConfig, StreamError> {
    let setup = |e: String| StreamError::Setup(format!("crowdsec.ca_file {}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::bounded_file::pem_certificates(path).map_err(|e| setup(e.to_string()))? {
        roots.add(cert).map_err(|e| setup(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(setup("no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        for (text, want) in [
            ("0", Some(Duration::ZERO)),
            ("1h", Some(Duration::from_secs(3600))),
            ("3h59m59s", Some(Duration::from_secs(4 * 3600 - 1))),
            ("59m59.102238437s", Some(Duration::new(3599, 102_238_437))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("250ms", Some(Duration::from_millis(250))),
            ("7µs", Some(Duration::from_micros(7))),
            ("-24.226057ms", Some(Duration::ZERO)),
            ("+2m", Some(Duration::from_secs(120))),
            ("", None),
            ("5", None),
            ("h", None),
            ("1x", None),
            ("1..5s", None),
            (".s", None),
            ("1h-1m", None),
        ] {
            let got = go_duration(text);
            match (got, want) {
                (Some(g), Some(w)) => {
                    let diff = g.abs_diff(w);
                    assert!(diff < Duration::from_micros(1), "{text:?}: {g:?} vs {w:?}");
                }
                _ => assert_eq!(got, want, "{text:?}"),
            }
        }
        assert_eq!(go_duration(&"9".repeat(40)), None, "no unit");
        assert_eq!(
            go_duration(&format!("{}h", "9".repeat(30))),
            Some(Duration::MAX)
        );
        assert_eq!(go_duration(&"1s".repeat(40)), None, "longer than the bound");
    }

    fn decision(scope: &str, kind: &str, value: &str, duration: &str) -> Decision {
        Decision {
            id: 1,
            duration: duration.into(),
            origin: "cscli".into(),
            scenario: "ssh-bf".into(),
            scope: scope.into(),
            kind: kind.into(),
            value: value.into(),
        }
    }

    #[test]
    fn decisions_mean_bans_of_addresses_and_prefixes_only() {
        let ban = |target: &str, secs| Meaning::Ban {
            target: target.parse().expect("target"),
            ttl: Duration::from_secs(secs),
        };
        assert_eq!(
            decision("Ip", "ban", "198.18.0.5", "1h").meaning(),
            ban("198.18.0.5", 3600)
        );
        assert_eq!(
            decision("ip", "ban", "::ffff:198.18.0.6", "1m").meaning(),
            ban("198.18.0.6", 60)
        );
        assert_eq!(
            decision("Range", "ban", "2001:db8::1/64", "2h").meaning(),
            ban("2001:db8::/64", 7200)
        );
        assert_eq!(
            decision("Ip", "captcha", "198.18.0.5", "1h").meaning(),
            Meaning::NotOurs
        );
        assert_eq!(
            decision("Country", "ban", "FR", "1h").meaning(),
            Meaning::NotOurs
        );
        for bad in [
            decision("Ip", "ban", "198.18.0.300", "1h"),
            decision("Range", "ban", "0.0.0.0/0", "1h"),
            decision("Range", "ban", "198.18.0.0/33", "1h"),
            decision("Ip", "ban", "198.18.0.5", "soon"),
            decision("Ip", "ban", "198.18.0.5", "-1s"),
        ] {
            assert!(matches!(bad.meaning(), Meaning::Invalid(_)), "{bad:?}");
        }
    }

    #[test]
    fn a_stream_holds_at_most_the_cap_of_each_list_and_counts_the_rest() {
        // 64 MiB of `{}` is 22 million decisions, about 3.4 GB held: past the cap a decision is
        // skipped as it is read, never held.
        let empties = |n: usize| vec!["{}"; n].join(",");
        let body = format!(
            r#"{{"new":[{}],"deleted":[{}],"extra":1}}"#,
            empties(25),
            empties(7)
        );
        let s = parse_stream(body.as_bytes(), 10).expect("stream");
        assert_eq!(s.new.as_ref().map(Vec::len), Some(10));
        assert_eq!(s.deleted.as_ref().map(Vec::len), Some(7));
        assert_eq!(s.skipped, 15);
        let s = parse_stream(br#"{"new":null}"#, 10).expect("stream");
        assert!(s.new.is_none() && s.deleted.is_none() && s.skipped == 0);
        for bad in [&b"[1,2]"[..], b"{\"new\":[1]}", b"{\"new\":[]} trailing"] {
            assert!(
                parse_stream(bad, 10).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn streams_decode_with_nulls_and_unknown_fields() {
        let s: DecisionStream = serde_json::from_str(
            r#"{"deleted":null,"new":[{"duration":"59m59.1s","id":1,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"198.18.0.5","uuid":"u","simulated":false}]}"#,
        )
        .expect("stream");
        assert!(s.deleted.is_none());
        let new = s.new.expect("new");
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].value, "198.18.0.5");
        assert!(serde_json::from_str::<DecisionStream>("[1,2]").is_err());
        let reason = Decision {
            scenario: "a\u{7}b\nc".into(),
            ..Decision::default()
        }
        .reason();
        assert_eq!(reason, "crowdsec: abc");
    }
}

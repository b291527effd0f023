//! `[crowdsec]`: the CrowdSec Local API (LAPI) the gateway polls as a bouncer.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::invalid::Invalid;

/// Shortest and longest `crowdsec.poll_interval`.
const POLL_INTERVAL: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// Shortest and longest `crowdsec.timeout`.
const TIMEOUT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(300));
/// Smallest and largest `crowdsec.max_response_bytes` (1 KiB, 1 GiB).
const MAX_RESPONSE: (u64, u64) = (1 << 10, 1 << 30);
/// Largest `crowdsec.max_decisions`.
const MAX_DECISIONS: usize = 10_000_000;
/// Longest API key, and most `origins` (each at most [`MAX_ORIGIN_LEN`]).
const MAX_KEY_LEN: usize = 256;
const MAX_ORIGINS: usize = 32;
const MAX_ORIGIN_LEN: usize = 64;

/// `[crowdsec]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CrowdsecConfig {
    /// Poll the LAPI and write its ban decisions into the kernel blocklist (default `false`).
    pub enabled: bool,
    /// The LAPI's base URL, `http://` or `https://` (default `http://127.0.0.1:8080/`).
    pub url: String,
    /// The bouncer's API key (`cscli bouncers add NAME`). Set this or `api_key_file`.
    pub api_key: String,
    /// A file whose first line is the API key (read at start and at each reload), so the
    /// configuration file need not hold the secret.
    pub api_key_file: PathBuf,
    /// PEM CA certificate(s) an `https` LAPI's certificate is checked against (required for
    /// `https`: a LAPI's certificate is usually signed by a CA of its own).
    pub ca_file: PathBuf,
    /// How often the decision stream is asked for what changed (default 10 s; 1 s..=1 h).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Time for one request, connect to last byte (default 10 s; 100 ms..=5 min).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest response read (default 64 MiB; 1 KiB..=1 GiB). The first answer after a start
    /// holds every decision in force, about 200 bytes each.
    pub max_response_bytes: u64,
    /// Decisions tracked at most (default 1,000,000; 1..=10,000,000); more are not applied
    /// (logged and counted as ignored).
    pub max_decisions: usize,
    /// Only decisions of these origins (the LAPI's `origins` filter, e.g. `["crowdsec",
    /// "cscli", "CAPI", "lists"]`); empty (the default): all.
    pub origins: Vec<String>,
}

impl Default for CrowdsecConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "http://127.0.0.1:8080/".into(),
            api_key: String::new(),
            api_key_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            poll_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            max_response_bytes: 64 << 20,
            max_decisions: 1_000_000,
            origins: Vec::new(),
        }
    }
}

impl CrowdsecConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| Invalid::new("crowdsec.url", format!("{:?}: {e}", self.url)))?;
        match url.scheme() {
            "http" => {}
            "https" if !self.enabled || !self.ca_file.as_os_str().is_empty() => {}
            "https" => {
                return Err(Invalid::new(
                    "crowdsec.url",
                    "an https LAPI needs crowdsec.ca_file (the CA that signs its certificate)",
                ));
            }
            other => {
                return Err(Invalid::new(
                    "crowdsec.url",
                    format!("scheme {other:?}: http or https"),
                ));
            }
        }
        if url.cannot_be_a_base() || url.query().is_some() || url.fragment().is_some() {
            return Err(Invalid::new(
                "crowdsec.url",
                format!("{:?} is not a base URL (no query, no fragment)", self.url),
            ));
        }
        let (has_key, has_file) = (
            !self.api_key.is_empty(),
            !self.api_key_file.as_os_str().is_empty(),
        );
        if has_key && has_file {
            return Err(Invalid::new(
                "crowdsec.api_key",
                "set api_key or api_key_file, not both",
            ));
        }
        if self.enabled && !has_key && !has_file {
            return Err(Invalid::new(
                "crowdsec.api_key",
                "the LAPI wants a bouncer key (cscli bouncers add NAME): set api_key or api_key_file",
            ));
        }
        if has_key {
            check_key(&self.api_key).map_err(|reason| Invalid::new("crowdsec.api_key", reason))?;
        }
        Invalid::duration_in(
            "crowdsec.poll_interval",
            self.poll_interval,
            POLL_INTERVAL.0,
            POLL_INTERVAL.1,
        )?;
        Invalid::duration_in("crowdsec.timeout", self.timeout, TIMEOUT.0, TIMEOUT.1)?;
        if !(MAX_RESPONSE.0..=MAX_RESPONSE.1).contains(&self.max_response_bytes) {
            return Err(Invalid::new(
                "crowdsec.max_response_bytes",
                format!(
                    "{} is not in {}..={}",
                    self.max_response_bytes, MAX_RESPONSE.0, MAX_RESPONSE.1
                ),
            ));
        }
        if !(1..=MAX_DECISIONS).contains(&self.max_decisions) {
            return Err(Invalid::new(
                "crowdsec.max_decisions",
                format!("{} is not in 1..={MAX_DECISIONS}", self.max_decisions),
            ));
        }
        if self.origins.len() > MAX_ORIGINS {
            return Err(Invalid::new(
                "crowdsec.origins",
                format!("at most {MAX_ORIGINS} origins"),
            ));
        }
        for origin in &self.origins {
            let ok = !origin.is_empty()
                && origin.len() <= MAX_ORIGIN_LEN
                && origin
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'));
            if !ok {
                return Err(Invalid::new(
                    "crowdsec.origins",
                    format!(
                        "{origin:?} is not an origin name (letters, digits, - _ : .; at most {MAX_ORIGIN_LEN})"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The API key in force: `api_key`, or the first line of `api_key_file`.
    pub fn key(&self) -> Result<String, String> {
        if !self.api_key.is_empty() {
            return Ok(self.api_key.clone());
        }
        let path = &self.api_key_file;
        let text = read_bounded(path, MAX_KEY_LEN * 4)
            .map_err(|e| format!("crowdsec.api_key_file {}: {e}", path.display()))?;
        let key = text.lines().next().unwrap_or_default().trim().to_string();
        check_key(&key).map_err(|e| format!("crowdsec.api_key_file {}: {e}", path.display()))?;
        Ok(key)
    }
}

/// An API key goes into an HTTP header: printable ASCII without spaces, bounded.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "not an API key (1 to {MAX_KEY_LEN} printable ASCII characters, no spaces)"
        ));
    }
    Ok(())
}

/// At most `limit` bytes of the file at `path`, as text.
fn read_bounded(path: &std::path::Path, limit: usize) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit as u64)
        .read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(extra: &str) -> Result<CrowdsecConfig, String> {
        let c: CrowdsecConfig =
            toml::from_str(&format!("enabled = true\n{extra}")).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_are_off_and_valid() {
        let c = CrowdsecConfig::default();
        assert!(!c.enabled);
        c.validate().expect("defaults");
        assert_eq!(c.poll_interval, Duration::from_secs(10));
    }

    #[test]
    fn rejections_name_their_key() {
        for (extra, key) in [
            ("", "crowdsec.api_key"),
            ("api_key = \"k\"\napi_key_file = \"/k\"", "crowdsec.api_key"),
            ("api_key = \"with space\"", "crowdsec.api_key"),
            ("api_key = \"k\"\nurl = \"ftp://x/\"", "crowdsec.url"),
            ("api_key = \"k\"\nurl = \"not a url\"", "crowdsec.url"),
            (
                "api_key = \"k\"\nurl = \"https://lapi:8080/\"",
                "crowdsec.url",
            ),
            (
                "api_key = \"k\"\nurl = \"http://lapi/?x=1\"",
                "crowdsec.url",
            ),
            (
                "api_key = \"k\"\npoll_interval = \"0s\"",
                "crowdsec.poll_interval",
            ),
            (
                "api_key = \"k\"\npoll_interval = \"2h\"",
                "crowdsec.poll_interval",
            ),
            ("api_key = \"k\"\ntimeout = \"1ms\"", "crowdsec.timeout"),
            (
                "api_key = \"k\"\nmax_response_bytes = 10",
                "crowdsec.max_response_bytes",
            ),
            (
                "api_key = \"k\"\nmax_decisions = 0",
                "crowdsec.max_decisions",
            ),
            ("api_key = \"k\"\norigins = [\"a b\"]", "crowdsec.origins"),
        ] {
            let err = enabled(extra).expect_err(extra);
            assert!(err.contains(key), "{extra:?}: {err}");
        }
        enabled("api_key = \"k\"\nurl = \"https://lapi:8080/\"\nca_file = \"/ca.pem\"")
            .expect("https with a CA");
        enabled("api_key_file = \"/k\"\norigins = [\"cscli\", \"CAPI\"]").expect("key file");
    }

    #[test]
    fn the_key_file_gives_its_first_line() {
        let dir = std::env::temp_dir().join(format!("sgw-cs-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key");
        std::fs::write(&path, "  abc123  \nsecond line\n").expect("write");
        let c = CrowdsecConfig {
            api_key_file: path.clone(),
            ..CrowdsecConfig::default()
        };
        assert_eq!(c.key().as_deref(), Ok("abc123"));
        std::fs::write(&path, "\n").expect("write");
        assert!(c.key().is_err(), "an empty key is refused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

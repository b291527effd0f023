//! `[store]`: which engine keeps the state that outlives a restart (and, with Redis, spans a
//! fleet), where it lives, how long a session may wait on it and what happens when it does not
//! answer in time; and its validation.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::invalid::Invalid;

/// Largest `store.budget`: a session never waits on the store longer than this.
pub const MAX_BUDGET: Duration = Duration::from_secs(5);
/// Largest `store.io_timeout`.
pub const MAX_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest `store.retry_interval`.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(600);
/// Largest `store.purge_interval`.
pub const MAX_PURGE_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Largest `store.outcomes_ttl`.
pub const MAX_OUTCOMES_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest `store.queue`.
pub const MAX_QUEUE: usize = 1_000_000;
/// Largest `store.max_value_bytes`.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Smallest `store.max_value_bytes` (a ban record with a long reason fits).
pub const MIN_VALUE_BYTES: usize = 512;
/// Largest `store.load_limit`.
pub const MAX_LOAD_LIMIT: usize = 10_000_000;
/// Largest `store.cache_bytes`.
pub const MAX_CACHE_BYTES: usize = 1 << 30;
/// Smallest `store.fleet_reconcile_interval`.
pub const MIN_FLEET_RECONCILE: Duration = Duration::from_secs(1);
/// Largest `store.fleet_reconcile_interval`.
pub const MAX_FLEET_RECONCILE: Duration = Duration::from_secs(3600);
/// Smallest `store.fleet_unban_ttl`.
pub const MIN_FLEET_UNBAN_TTL: Duration = Duration::from_secs(60);
/// Largest `store.fleet_unban_ttl`.
pub const MAX_FLEET_UNBAN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Smallest `store.permanent_ban_ttl`.
pub const MIN_PERMANENT_BAN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest `store.permanent_ban_ttl` (100 years of 365 days).
pub const MAX_PERMANENT_BAN_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Default `store.fleet_min_prefix_v4`: no fleet record wider than a /8.
pub const DEFAULT_FLEET_MIN_PREFIX_V4: u8 = 8;
/// Default `store.fleet_min_prefix_v6`: no fleet record wider than a /16.
pub const DEFAULT_FLEET_MIN_PREFIX_V6: u8 = 16;
/// Largest `store.key_prefix` and `store.node`, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Which engine keeps the state.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// A redb file on this host (survives restarts, not shared).
    Embedded,
    /// A Redis server shared by every gateway of a fleet.
    Redis,
    /// No store: everything but the kernel maps is lost at a restart.
    Off,
}

/// What a session does when the store does not answer within `store.budget` (or fails).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Go on with what this node knows (the store's answer counts as "nothing known").
    Open,
    /// Answer `421 4.3.0` and close: no session is judged without the shared state.
    Closed,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The engine: `embedded` (default), `redis` or `off`.
    pub engine: Engine,
    /// The embedded store's file (its directory is created, mode 0700).
    pub path: PathBuf,
    /// The embedded store's page cache, in bytes.
    pub cache_bytes: usize,
    /// The Redis server: `redis://host:port/db`, `rediss://...` (TLS) or `unix:///path/to/socket`.
    pub redis_url: String,
    /// With `rediss://`: the CA certificate(s) (PEM) the server's certificate must chain to;
    /// empty: the system's roots.
    pub redis_ca_file: PathBuf,
    /// With `rediss://`: the certificate chain (PEM) this gateway presents to a Redis that asks
    /// for one (`tls-auth-clients`); empty: none. Set with `redis_client_key_file`.
    pub redis_client_cert_file: PathBuf,
    /// The private key (PEM) of `redis_client_cert_file`.
    pub redis_client_key_file: PathBuf,
    /// Prefix of every key this gateway writes in Redis (several fleets may share a server).
    pub key_prefix: String,
    /// This gateway's name in the stored records (origin of bans); empty: the host name.
    pub node: String,
    /// How long an SMTP session may wait on the store (then `on_timeout` decides).
    #[serde(with = "humantime_serde")]
    pub budget: Duration,
    /// `open`: go on with local state; `closed`: answer 421 and close.
    pub on_timeout: OnTimeout,
    /// How long a background operation (a batch of writes, a lookup) may take; a load (at
    /// start, a fleet reconcile) must read each round of 1,000 keys within it, however many
    /// rounds it takes.
    #[serde(with = "humantime_serde")]
    pub io_timeout: Duration,
    /// Writes waiting for the store at most (sessions never wait for a write); beyond, the
    /// oldest are dropped and counted.
    pub queue: usize,
    /// How often writes that failed (store down) are tried again.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// How often the embedded store deletes expired entries (they are ignored on read anyway).
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// Largest value read back from the store; a larger one is an error, never decoded.
    pub max_value_bytes: usize,
    /// Entries of one kind read at start (auto-ban counts, waiting bans, session outcomes).
    pub load_limit: usize,
    /// How long a source's session outcomes are kept in the store after its last session.
    #[serde(with = "humantime_serde")]
    pub outcomes_ttl: Duration,
    /// With `engine = "redis"`: bans made on any gateway (CLI, auto-ban) are published on
    /// `<key_prefix>fleet/bans` and applied to every other gateway's kernel blocklist.
    pub fleet: bool,
    /// How often a fleet gateway compares its kernel blocklist with the stored bans (a node that
    /// was away, a missed message, a ban deleted elsewhere).
    #[serde(with = "humantime_serde")]
    pub fleet_reconcile_interval: Duration,
    /// How long a deleted ban is remembered, so that a gateway that missed the deletion
    /// removes its copy at its next reconcile.
    #[serde(with = "humantime_serde")]
    pub fleet_unban_ttl: Duration,
    /// How long the store keeps the record of a ban that has no expiry (`block add` without
    /// `--ttl`); the record itself still says the ban never ends. Also the longest a fleet ban
    /// with an expiry lasts on this node (`fleet/apply.rs::left`).
    #[serde(with = "humantime_serde")]
    pub permanent_ban_ttl: Duration,
    /// The shortest IPv4 prefix a ban or allowlist record of another node may cover here; a
    /// wider one is refused (counted as invalid, logged). 0..=32.
    pub fleet_min_prefix_v4: u8,
    /// The same for IPv6. 0..=128.
    pub fleet_min_prefix_v6: u8,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            engine: Engine::Embedded,
            path: PathBuf::from("/var/lib/smtp-gateway/state.redb"),
            cache_bytes: 16 << 20,
            redis_url: "redis://127.0.0.1:6379/".into(),
            redis_ca_file: PathBuf::new(),
            redis_client_cert_file: PathBuf::new(),
            redis_client_key_file: PathBuf::new(),
            key_prefix: "smtp-gateway:".into(),
            node: String::new(),
            budget: Duration::from_millis(50),
            on_timeout: OnTimeout::Open,
            io_timeout: Duration::from_secs(2),
            queue: 100_000,
            retry_interval: Duration::from_secs(1),
            purge_interval: Duration::from_secs(300),
            max_value_bytes: 16 << 10,
            load_limit: 100_000,
            outcomes_ttl: Duration::from_secs(7 * 24 * 3600),
            fleet: true,
            fleet_reconcile_interval: Duration::from_secs(10),
            fleet_unban_ttl: Duration::from_secs(7 * 24 * 3600),
            permanent_ban_ttl: MAX_PERMANENT_BAN_TTL,
            fleet_min_prefix_v4: DEFAULT_FLEET_MIN_PREFIX_V4,
            fleet_min_prefix_v6: DEFAULT_FLEET_MIN_PREFIX_V6,
        }
    }
}

impl StoreConfig {
    /// Checks the values (the Redis URL is parsed too, so a typo fails at load, not at run).
    pub fn validate(&self) -> Result<(), Invalid> {
        Invalid::duration_in(
            "store.budget",
            self.budget,
            Duration::from_millis(1),
            MAX_BUDGET,
        )?;
        Invalid::duration_in(
            "store.io_timeout",
            self.io_timeout,
            Duration::from_millis(10),
            MAX_IO_TIMEOUT,
        )?;
        Invalid::duration_in(
            "store.retry_interval",
            self.retry_interval,
            Duration::from_millis(10),
            MAX_RETRY_INTERVAL,
        )?;
        Invalid::duration_in(
            "store.purge_interval",
            self.purge_interval,
            Duration::from_secs(1),
            MAX_PURGE_INTERVAL,
        )?;
        Invalid::duration_in(
            "store.outcomes_ttl",
            self.outcomes_ttl,
            Duration::from_secs(1),
            MAX_OUTCOMES_TTL,
        )?;
        Invalid::duration_in(
            "store.fleet_reconcile_interval",
            self.fleet_reconcile_interval,
            MIN_FLEET_RECONCILE,
            MAX_FLEET_RECONCILE,
        )?;
        Invalid::duration_in(
            "store.fleet_unban_ttl",
            self.fleet_unban_ttl,
            MIN_FLEET_UNBAN_TTL,
            MAX_FLEET_UNBAN_TTL,
        )?;
        Invalid::duration_in(
            "store.permanent_ban_ttl",
            self.permanent_ban_ttl,
            MIN_PERMANENT_BAN_TTL,
            MAX_PERMANENT_BAN_TTL,
        )?;
        Invalid::at_most("store.fleet_min_prefix_v4", self.fleet_min_prefix_v4, 32)?;
        Invalid::at_most("store.fleet_min_prefix_v6", self.fleet_min_prefix_v6, 128)?;
        Invalid::in_range("store.queue", self.queue, 1, MAX_QUEUE)?;
        Invalid::in_range(
            "store.max_value_bytes",
            self.max_value_bytes,
            MIN_VALUE_BYTES,
            MAX_VALUE_BYTES,
        )?;
        Invalid::in_range("store.load_limit", self.load_limit, 1, MAX_LOAD_LIMIT)?;
        Invalid::in_range(
            "store.cache_bytes",
            self.cache_bytes,
            1 << 20,
            MAX_CACHE_BYTES,
        )?;
        for (key, value) in [
            ("store.key_prefix", &self.key_prefix),
            ("store.node", &self.node),
        ] {
            if value.len() > MAX_NAME_BYTES {
                return Err(Invalid::new(
                    key,
                    format!("must be at most {MAX_NAME_BYTES} bytes"),
                ));
            }
            if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(Invalid::new(
                    key,
                    "must not contain spaces or control characters",
                ));
            }
        }
        match self.engine {
            Engine::Embedded => {
                if !self.path.is_absolute() {
                    return Err(Invalid::new("store.path", "must be an absolute path"));
                }
            }
            Engine::Redis => self.validate_redis()?,
            Engine::Off => {}
        }
        Ok(())
    }
}

impl StoreConfig {
    /// The TLS files (option, path) of a `rediss://` Redis, set or not.
    pub fn redis_tls_files(&self) -> [(&'static str, &std::path::Path); 3] {
        [
            ("store.redis_ca_file", &self.redis_ca_file),
            ("store.redis_client_cert_file", &self.redis_client_cert_file),
            ("store.redis_client_key_file", &self.redis_client_key_file),
        ]
    }

    /// `store.redis_url` parses (with the scheme a typo is refused for, not TLS itself), its
    /// TLS is one whose certificate is checked, and the TLS files are set only with
    /// `rediss://`, as absolute paths, the client certificate and key both or neither.
    fn validate_redis(&self) -> Result<(), Invalid> {
        let client = ::redis::Client::open(self.redis_url.as_str()).map_err(|_| {
            Invalid::new(
                "store.redis_url",
                "must be a redis://, rediss:// or unix:// URL",
            )
        })?;
        let tls = match client.get_connection_info().addr() {
            ::redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(Invalid::new(
                    "store.redis_url",
                    "#insecure (TLS without checking the server's certificate) is not \
                     supported: give the CA in store.redis_ca_file",
                ));
            }
            ::redis::ConnectionAddr::TcpTls { .. } => true,
            _ => false,
        };
        for (key, path) in self.redis_tls_files() {
            if path.as_os_str().is_empty() {
                continue;
            }
            if !tls {
                return Err(Invalid::new(
                    key,
                    "is only used with TLS: store.redis_url must be a rediss:// URL",
                ));
            }
            if !path.is_absolute() {
                return Err(Invalid::new(key, "must be an absolute path"));
            }
        }
        match (
            self.redis_client_cert_file.as_os_str().is_empty(),
            self.redis_client_key_file.as_os_str().is_empty(),
        ) {
            (false, true) => Err(Invalid::new(
                "store.redis_client_key_file",
                "must be set with store.redis_client_cert_file (both or neither)",
            )),
            (true, false) => Err(Invalid::new(
                "store.redis_client_cert_file",
                "must be set with store.redis_client_key_file (both or neither)",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(cfg: StoreConfig) -> Invalid {
        cfg.validate().expect_err("refused")
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(StoreConfig::default().validate(), Ok(()));
        let redis = StoreConfig {
            engine: Engine::Redis,
            redis_url: "unix:///run/redis/redis.sock".into(),
            ..StoreConfig::default()
        };
        assert_eq!(redis.validate(), Ok(()));
    }

    #[test]
    fn rejections_name_the_key() {
        let d = StoreConfig::default;
        let cases = [
            (
                StoreConfig {
                    budget: Duration::ZERO,
                    ..d()
                },
                "store.budget",
                "must be at least 1ms",
            ),
            (
                StoreConfig {
                    budget: MAX_BUDGET + Duration::from_millis(1),
                    ..d()
                },
                "store.budget",
                "must be at most 5s",
            ),
            (
                StoreConfig { queue: 0, ..d() },
                "store.queue",
                "must be at least 1",
            ),
            (
                StoreConfig {
                    max_value_bytes: MAX_VALUE_BYTES + 1,
                    ..d()
                },
                "store.max_value_bytes",
                "must be at most 1048576",
            ),
            (
                StoreConfig {
                    load_limit: 0,
                    ..d()
                },
                "store.load_limit",
                "must be at least 1",
            ),
            (
                StoreConfig {
                    path: "state.redb".into(),
                    ..d()
                },
                "store.path",
                "must be an absolute path",
            ),
            (
                StoreConfig {
                    engine: Engine::Redis,
                    redis_url: "http://x/".into(),
                    ..d()
                },
                "store.redis_url",
                "must be a redis://, rediss:// or unix:// URL",
            ),
            (
                StoreConfig {
                    node: "a b".into(),
                    ..d()
                },
                "store.node",
                "must not contain spaces or control characters",
            ),
            (
                StoreConfig {
                    key_prefix: "x".repeat(MAX_NAME_BYTES + 1),
                    ..d()
                },
                "store.key_prefix",
                "must be at most 128 bytes",
            ),
            (
                StoreConfig {
                    io_timeout: Duration::from_secs(61),
                    ..d()
                },
                "store.io_timeout",
                "must be at most 1m",
            ),
            (
                StoreConfig {
                    fleet_min_prefix_v4: 33,
                    ..d()
                },
                "store.fleet_min_prefix_v4",
                "must be at most 32",
            ),
            (
                StoreConfig {
                    fleet_min_prefix_v6: 129,
                    ..d()
                },
                "store.fleet_min_prefix_v6",
                "must be at most 128",
            ),
        ];
        for (cfg, key, reason) in cases {
            let err = rejected(cfg);
            assert_eq!((err.key.as_str(), err.reason.as_str()), (key, reason));
        }
    }

    #[test]
    fn the_reconcile_interval_is_bounded() {
        for (interval, reason) in [
            (Duration::from_millis(999), "must be at least 1s"),
            (
                MAX_FLEET_RECONCILE + Duration::from_secs(1),
                "must be at most 1h",
            ),
        ] {
            let err = rejected(StoreConfig {
                fleet_reconcile_interval: interval,
                ..StoreConfig::default()
            });
            assert_eq!(
                (err.key.as_str(), err.reason.as_str()),
                ("store.fleet_reconcile_interval", reason)
            );
        }
    }

    #[test]
    fn rediss_is_accepted_with_or_without_tls_files() {
        let tls = |ca: &str, cert: &str, key: &str| StoreConfig {
            engine: Engine::Redis,
            redis_url: "rediss://127.0.0.1:6380/0".into(),
            redis_ca_file: ca.into(),
            redis_client_cert_file: cert.into(),
            redis_client_key_file: key.into(),
            ..StoreConfig::default()
        };
        assert_eq!(tls("", "", "").validate(), Ok(()));
        assert_eq!(tls("/etc/ca.pem", "", "").validate(), Ok(()));
        assert_eq!(tls("", "/etc/c.pem", "/etc/c.key").validate(), Ok(()));
    }

    #[test]
    fn redis_tls_files_are_refused_where_they_would_not_be_used() {
        let redis = |url: &str, ca: &str, cert: &str, key: &str| StoreConfig {
            engine: Engine::Redis,
            redis_url: url.into(),
            redis_ca_file: ca.into(),
            redis_client_cert_file: cert.into(),
            redis_client_key_file: key.into(),
            ..StoreConfig::default()
        };
        let tls = "rediss://127.0.0.1:6380/0";
        let cases = [
            (
                redis(tls, "", "/etc/c.pem", ""),
                "store.redis_client_key_file",
                "must be set with store.redis_client_cert_file (both or neither)",
            ),
            (
                redis(tls, "", "", "/etc/c.key"),
                "store.redis_client_cert_file",
                "must be set with store.redis_client_key_file (both or neither)",
            ),
            (
                redis("redis://127.0.0.1:6379/0", "/etc/ca.pem", "", ""),
                "store.redis_ca_file",
                "is only used with TLS: store.redis_url must be a rediss:// URL",
            ),
            (
                redis("unix:///run/redis.sock", "", "/etc/c.pem", "/etc/c.key"),
                "store.redis_client_cert_file",
                "is only used with TLS: store.redis_url must be a rediss:// URL",
            ),
            (
                redis(tls, "ca.pem", "", ""),
                "store.redis_ca_file",
                "must be an absolute path",
            ),
            (
                redis("rediss://127.0.0.1:6380/0#insecure", "", "", ""),
                "store.redis_url",
                "#insecure (TLS without checking the server's certificate) is not supported: \
                 give the CA in store.redis_ca_file",
            ),
        ];
        for (cfg, key, reason) in cases {
            let err = rejected(cfg);
            assert_eq!((err.key.as_str(), err.reason.as_str()), (key, reason));
        }
    }

    #[test]
    fn a_redis_url_is_not_checked_when_the_engine_is_embedded() {
        let cfg = StoreConfig {
            redis_url: "nonsense".into(),
            ..StoreConfig::default()
        };
        assert_eq!(cfg.validate(), Ok(()));
    }
}

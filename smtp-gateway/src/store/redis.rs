//! The Redis engine: every gateway of a fleet reads and writes one server (`store.redis_url`,
//! TCP, TLS or a unix socket) under `store.key_prefix`. Entries expire natively (`SET ... PX`).
//! With TLS (`rediss://`) the CA, client certificate and key files are read once, at start
//! ([`client`]), while the daemon has its privileges; the fleet subscriber uses the same client.
//! The connection manager reconnects by itself; it connects lazily, so a Redis that is down
//! never stops a daemon from starting. Reads are bounded in size by the server (`GETRANGE`):
//! a hostile value is never transferred whole.

use std::{path::Path, sync::Arc, time::Duration};

use ::redis::{
    AsyncCommands as _, Client, ClientTlsConfig, ConnectionAddr, TlsCertificates,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::{
    CounterLife, SCAN_ROUND, Scan, ScanProgress, Scanned, StoreConfig, StoreError, Write,
    records::{FleetList, encode},
};

/// A lazily connected, self-reconnecting Redis connection and the key prefix.
pub(super) struct Redis {
    /// The client the connection was made from (the fleet subscriber's too); boxed, its TLS
    /// settings are large.
    client: Box<Client>,
    /// The connection (clones share it).
    conn: ConnectionManager,
    /// `store.key_prefix`.
    prefix: String,
    /// With `store.fleet`: the channel ban changes are published on, and this node's name.
    fleet: Option<(String, String)>,
}

impl Redis {
    /// The engine on `client` (see [`client`]); connects on first use (needs the tokio runtime).
    pub(super) fn connect(
        client: Client,
        config: &StoreConfig,
        node: &str,
    ) -> Result<Self, StoreError> {
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.io_timeout))
            .set_response_timeout(Some(config.io_timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)?;
        Ok(Self {
            client: Box::new(client),
            conn,
            prefix: config.key_prefix.clone(),
            fleet: config.fleet.then(|| {
                (
                    super::records::fleet_channel(&config.key_prefix),
                    node.to_string(),
                )
            }),
        })
    }

    /// The client, for another connection to the same server (the fleet's pub/sub).
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn connection(&self) -> &ConnectionManager {
        &self.conn
    }

    /// The full key of `key`.
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Applies a batch in one pipeline (`SET PX` / `DEL`); with `store.fleet`, a ban or
    /// allowlist record written or deleted is then published to the other gateways (after its write, in the same
    /// pipeline, so a gateway that reads the record on the message finds it).
    pub(super) async fn apply(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        let mut pipe = ::redis::pipe();
        for write in &batch {
            match write {
                Write::Put { key, value, ttl } => {
                    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                    pipe.cmd("SET")
                        .arg(self.full(key))
                        .arg(value.as_slice())
                        .arg("PX")
                        .arg(ttl_ms)
                        .ignore();
                    if let Some((channel, _)) = &self.fleet
                        && let Some((list, _)) = FleetList::of_record_key(key)
                    {
                        pipe.cmd("PUBLISH")
                            .arg(channel)
                            .arg(list.written(value, *ttl))
                            .ignore();
                    }
                }
                Write::Delete { key } => {
                    pipe.cmd("DEL").arg(self.full(key)).ignore();
                    if let Some((channel, node)) = &self.fleet
                        && let Some((list, target)) = FleetList::of_record_key(key)
                    {
                        let message = list.deleted(target.to_string(), node.clone());
                        pipe.cmd("PUBLISH")
                            .arg(channel)
                            .arg(encode(key, &message)?)
                            .ignore();
                    }
                }
            }
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Adds one to the counter `key` (`INCR`) and returns its new value; a new counter expires
    /// `ttl` later (`PEXPIRE ... NX`, never renewed), both in one transaction. A value that is
    /// not a counter is Redis's error; a negative one written behind our back reads as 0.
    pub(super) async fn incr(
        &self,
        key: String,
        ttl: Duration,
        life: CounterLife,
    ) -> Result<u64, StoreError> {
        let full = self.full(&key);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        let mut pipe = ::redis::pipe();
        pipe.atomic().cmd("INCR").arg(&full);
        let expire = pipe.cmd("PEXPIRE").arg(&full).arg(ttl_ms);
        if life == CounterLife::Window {
            expire.arg("NX");
        }
        let (n,): (i64,) = expire.ignore().query_async(&mut conn).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The value of `key`, at most `max` bytes transferred (one more tells it is too large). A
    /// key of another type (a list, a hash) is a value that does not decode, not a failure of
    /// the store.
    pub(super) async fn get(&self, key: String, max: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        let end = i64::try_from(max).unwrap_or(i64::MAX);
        let value: Vec<u8> = match conn.getrange(self.full(&key), 0, end as isize).await {
            Ok(value) => value,
            Err(e) if is_wrong_type(&e) => return Err(wrong_type(key)),
            Err(e) => return Err(e.into()),
        };
        check(&key, value, max)
    }

    /// Up to `limit` entries under `prefix` (`SCAN`, then per round one pipeline of bounded
    /// reads and one of `PTTL`: what is left of each by Redis's clock, the fleet's one clock).
    /// Keys that are not UTF-8 or not ours, or that expired meanwhile, are left out; a value
    /// too large or a key of another type (its read alone fails: `WRONGTYPE`) is skipped,
    /// counted, and the first of a scan logged. One bad key never fails the scan.
    pub(super) async fn scan(
        &self,
        prefix: String,
        limit: usize,
        max: usize,
        progress: ScanProgress,
    ) -> Result<Scan, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", escape_glob(&self.full(&prefix)));
        let end = i64::try_from(max).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        let mut skipped = 0;
        let mut skip = |e: StoreError| {
            if skipped == 0 {
                tracing::warn!(error = %e, "store: entry skipped (the first of this scan)");
            }
            skipped += 1;
        };
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_ROUND)
                .query_async(&mut conn)
                .await?;
            progress.round_done();
            let keys: Vec<String> = keys
                .into_iter()
                .filter_map(|k| String::from_utf8(k).ok())
                .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string))
                .take(limit.saturating_sub(out.len()))
                .collect();
            if !keys.is_empty() {
                let mut pipe = ::redis::pipe();
                for key in &keys {
                    pipe.cmd("GETRANGE").arg(self.full(key)).arg(0).arg(end);
                }
                // One result per read: an error reply (WRONGTYPE) is that entry's alone.
                let values: Vec<::redis::RedisResult<Vec<u8>>> =
                    pipe.ignore_errors().query_async(&mut conn).await?;
                progress.round_done();
                let mut pipe = ::redis::pipe();
                for key in &keys {
                    pipe.cmd("PTTL").arg(self.full(key));
                }
                let lives: Vec<i64> = pipe.query_async(&mut conn).await?;
                progress.round_done();
                for ((key, value), life) in keys.into_iter().zip(values).zip(lives) {
                    // -1: no expiry; -2: gone since the read.
                    let left = match life {
                        -2 => continue,
                        ms => u64::try_from(ms).ok().map(Duration::from_millis),
                    };
                    let value = match value {
                        Ok(value) => value,
                        Err(e) if is_wrong_type(&e) => {
                            skip(wrong_type(key));
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    match check(&key, value, max) {
                        Ok(Some(value)) => out.push(Scanned { key, value, left }),
                        Ok(None) => {}
                        Err(e) => skip(e),
                    }
                }
            }
            cursor = next;
            if cursor == 0 || out.len() >= limit {
                return Ok((out, skipped));
            }
        }
    }
}

/// The client of `store.redis_url`. With `rediss://`, the files of `store.redis_ca_file`,
/// `store.redis_client_cert_file` and `store.redis_client_key_file` are read and checked now
/// (each error names its option and file): the CA file holds certificates, the certificate file
/// a chain, the key file the private key of its first certificate. Nothing connects yet.
pub(crate) fn client(config: &StoreConfig) -> Result<Client, StoreError> {
    let plain = Client::open(config.redis_url.as_str())?;
    if !matches!(
        plain.get_connection_info().addr(),
        ConnectionAddr::TcpTls { .. }
    ) {
        return Ok(plain);
    }
    let [(ca_key, ca), (cert_key, cert), (key_key, key)] = config.redis_tls_files();
    let root_cert = match read(ca_key, ca)? {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in certificates(ca_key, ca, &pem)? {
                roots
                    .add(der)
                    .map_err(|e| tls_file(ca_key, ca, format!("not a CA certificate: {e}")))?;
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (read(cert_key, cert)?, read(key_key, key)?) {
        (Some(client_cert), Some(client_key)) => {
            let chain = certificates(cert_key, cert, &client_cert)?;
            let der = PrivateKeyDer::from_pem_slice(&client_key)
                .map_err(|e| tls_file(key_key, key, format!("no private key (PEM): {e}")))?;
            // The provider the daemon's rustls is built with (ring); this also checks that the
            // key is the certificate's.
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_file(key_key, key, e))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(chain, der)
            .map_err(|e| {
                tls_file(
                    key_key,
                    key,
                    format!("not usable with {}: {e}", cert.display()),
                )
            })?;
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        (None, None) => None,
        // The configuration's validation refuses one without the other.
        (Some(_), None) => {
            return Err(tls_file(
                key_key,
                key,
                "must be set with store.redis_client_cert_file",
            ));
        }
        (None, Some(_)) => {
            return Err(tls_file(
                cert_key,
                cert,
                "must be set with store.redis_client_key_file",
            ));
        }
    };
    Ok(Client::build_with_tls(
        config.redis_url.as_str(),
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )?)
}

/// The contents of the file `option` names; `None` when it is not set.
fn read(option: &'static str, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    crate::bounded_file::read_pem(path)
        .map(Some)
        .map_err(|e| tls_file(option, path, format!("cannot read: {e}")))
}

/// The certificates of a PEM file, at least one.
fn certificates(
    option: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_file(option, path, format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_file(option, path, "no certificate (PEM) in it"));
    }
    Ok(certs)
}

/// The error of a TLS file.
fn tls_file(option: &'static str, path: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::TlsFile {
        option,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A value read with `GETRANGE 0 max`: empty is missing (no value is ever empty), over `max`
/// bytes is too large.
fn check(key: &str, value: Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, StoreError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > max {
        return Err(StoreError::TooLarge {
            key: key.to_string(),
            len: value.len(),
            max,
        });
    }
    Ok(Some(value))
}

/// Whether Redis refused a command because the key holds another type (`WRONGTYPE`).
fn is_wrong_type(e: &::redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
}

/// A key of another type than a string, as the value that does not decode it is.
fn wrong_type(key: String) -> StoreError {
    StoreError::Decode {
        key,
        reason: "the key holds another type than a string (WRONGTYPE)".into(),
    }
}

/// `text` with Redis glob characters escaped, for a `MATCH` pattern.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_of_a_prefix_are_escaped() {
        assert_eq!(escape_glob("sgw:pass/"), "sgw:pass/");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn empty_is_missing_and_long_is_refused() {
        assert_eq!(check("k", Vec::new(), 4).expect("ok"), None);
        assert_eq!(
            check("k", b"abcd".to_vec(), 4).expect("ok"),
            Some(b"abcd".to_vec())
        );
        assert!(matches!(
            check("k", b"abcde".to_vec(), 4),
            Err(StoreError::TooLarge { len: 5, max: 4, .. })
        ));
    }
}

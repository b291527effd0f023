//! The fleet store over TLS (`rediss://`), against a real `redis-server` (Debian's, built with
//! TLS) listening on a TLS port only and asking every client for a certificate
//! (`tls-auth-clients yes`, its default), with certificates from a throw-away CA ([`peers::pki`]):
//!
//! - [`a_gateway_reaches_redis_over_tls_with_its_client_certificate`]: a ban made through the
//!   daemon is written to Redis (read back with `redis-cli --tls`), and the fleet subscriber is
//!   subscribed over TLS too;
//! - [`a_redis_whose_certificate_another_ca_signed_is_a_store_that_is_down`]: the daemon starts
//!   and serves, and reports the store unavailable (as for a Redis that is down), naming the
//!   certificate; nothing reaches Redis.
//!
//! Needs root (bpffs pins) and `redis-server`/`redis-cli` (package redis-server).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use peers::pki::Pki;
use smtp_gateway_test_kit::launcher::free_port;

/// Key prefix of this file's gateways.
const PREFIX: &str = "sgw-tls:";
/// How long redis-server gets to answer, and a write or subscription to reach it.
const WITHIN: Duration = Duration::from_secs(15);

/// Polls `done` every 20 ms until it holds, at most [`WITHIN`].
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WITHIN;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private `redis-server` on a loopback TLS port (no plain port), requiring client
/// certificates signed by its CA; no persistence; killed by PID on drop.
struct TlsRedis {
    /// The process.
    child: Child,
    /// Its TLS port on 127.0.0.1.
    port: u16,
    /// The CA `redis-cli` trusts and client certificates are checked against.
    ca: PathBuf,
    /// `redis-cli`'s client certificate and key.
    cli_cert: (PathBuf, PathBuf),
}

impl TlsRedis {
    /// Starts one in `dir` with a server certificate for 127.0.0.1 from `pki`.
    fn start(dir: &Path, pki: &Pki) -> TlsRedis {
        let (cert, key) = pki.write_server_files(dir);
        let ca = pki.write_ca(dir, "redis-ca");
        let cli_cert = pki.issue(dir, "redis-cli", "redis-cli.test");
        let port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port"])
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (package redis-server; `cargo xtask setup` installs it)");
        let redis = TlsRedis {
            child,
            port,
            ca,
            cli_cert,
        };
        assert!(
            wait_until(|| redis.cli(&["PING"]) == "PONG"),
            "redis-server did not answer over TLS within {WITHIN:?}"
        );
        redis
    }

    /// `store.redis_url` for it.
    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli --tls ... ARGS`, its output trimmed ("" when it cannot connect).
    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["--tls", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.cli_cert.0)
            .arg("--key")
            .arg(&self.cli_cert.1)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[store]` section of a gateway on `redis` trusting `ca`, with the client certificate
/// `client`.
fn store_section(redis: &TlsRedis, ca: &Path, client: &(PathBuf, PathBuf)) -> String {
    format!(
        "[store]\nengine = \"redis\"\nredis_url = \"{}\"\nredis_ca_file = \"{}\"\n\
         redis_client_cert_file = \"{}\"\nredis_client_key_file = \"{}\"\n\
         key_prefix = \"{PREFIX}\"\nnode = \"tls-node\"\nbudget = \"500ms\"\n\
         retry_interval = \"100ms\"\nio_timeout = \"1s\"\n",
        redis.url(),
        ca.display(),
        client.0.display(),
        client.1.display(),
    )
}

/// A fresh directory for one test.
fn test_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgw-redis-tls-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

#[test]
fn a_gateway_reaches_redis_over_tls_with_its_client_certificate() {
    let dir = test_dir("ok");
    let pki = Pki::new();
    let redis = TlsRedis::start(&dir, &pki);
    let client = pki.issue(&dir, "gateway", "gw.test");
    let ca = pki.write_ca(&dir, "ca");
    let gw = peers::gateway("redis-tls-ok", &store_section(&redis, &ca, &client), 0);

    // The fleet subscriber is on the channel, through TLS.
    let channel = format!("{PREFIX}fleet/bans");
    assert!(
        wait_until(|| redis.cli(&["PUBSUB", "NUMSUB", &channel]).ends_with("\n1")),
        "the gateway never subscribed to {channel}: {:?}\n{}",
        redis.cli(&["PUBSUB", "NUMSUB", &channel]),
        gw.log()
    );

    // A ban through the daemon is a record in Redis.
    let out = gw.cli(&["block", "add", "198.18.0.9", "--reason", "over tls"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = format!("{PREFIX}ban/198.18.0.9");
    assert!(
        wait_until(|| redis.cli(&["GET", &key]).contains("over tls")),
        "{key} never reached Redis: {:?}\n{}",
        redis.cli(&["GET", &key]),
        gw.log()
    );
    assert_eq!(gw.log_count("state store unavailable"), 0, "{}", gw.log());
    drop(gw);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_redis_whose_certificate_another_ca_signed_is_a_store_that_is_down() {
    let dir = test_dir("untrusted");
    let pki = Pki::new();
    let redis = TlsRedis::start(&dir, &pki);
    // The client certificate is one Redis accepts; the CA the gateway trusts is another one.
    let client = pki.issue(&dir, "gateway", "gw.test");
    let other = Pki::new().write_ca(&dir, "other-ca");
    let gw = peers::gateway(
        "redis-tls-untrusted",
        &store_section(&redis, &other, &client),
        0,
    );

    // It serves, as with a Redis that is down.
    let banner = gw.banner();
    assert!(banner.starts_with("220"), "{banner}\n{}", gw.log());
    let out = gw.cli(&["block", "add", "198.18.0.10"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The write is refused by the handshake: the store is reported unavailable, saying why.
    gw.wait_log_line(&["state store unavailable", "invalid peer certificate"]);
    gw.wait_log_line(&["fleet: cannot subscribe", "invalid peer certificate"]);
    assert_eq!(
        redis.cli(&["EXISTS", &format!("{PREFIX}ban/198.18.0.10")]),
        "0",
        "{}",
        gw.log()
    );
    drop(gw);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

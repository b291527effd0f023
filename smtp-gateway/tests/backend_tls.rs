//! STARTTLS to the backend: the gateway verifies the backend's certificate against the configured
//! CA, upgrades before XCLIENT (so the identity travels encrypted), and refuses a backend whose
//! certificate does not chain to that CA. The backend here is a minimal scripted SMTP server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use smtp_gateway::smtp::{
    backend_pool::BackendPool,
    config::{BackendConfig, BackendServer, BackendTls, ConnectAt, Identity},
    identity::ClientIdentity,
    tls::backend_connector,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;

#[path = "support/pki.rs"]
#[allow(dead_code)] // the gateway-side tests use the rest of the shared PKI
mod pki;

/// The backend's TLS side: the CA a gateway must trust, and the acceptor presenting a
/// certificate it signed.
fn backend_pki() -> (String, TlsAcceptor) {
    let pki = pki::Pki::new();
    let acceptor = TlsAcceptor::from(Arc::new(pki.server_config()));
    (pki.ca_pem, acceptor)
}

/// Serves one session: banner, EHLO (offering STARTTLS), STARTTLS, then inside TLS EHLO
/// (offering XCLIENT), XCLIENT, EHLO. Returns the commands received after the upgrade.
async fn scripted_backend(listener: TcpListener, acceptor: TlsAcceptor) -> Vec<String> {
    let (tcp, _) = listener.accept().await.expect("accept");
    let mut plain = BufReader::new(tcp);
    let mut line = String::new();
    plain
        .get_mut()
        .write_all(b"220 backend.test ESMTP\r\n")
        .await
        .expect("banner");
    plain.read_line(&mut line).await.expect("ehlo");
    assert!(line.starts_with("EHLO "), "{line}");
    plain
        .get_mut()
        .write_all(b"250-backend.test\r\n250 STARTTLS\r\n")
        .await
        .expect("caps");
    line.clear();
    plain.read_line(&mut line).await.expect("starttls");
    assert_eq!(line, "STARTTLS\r\n");
    plain
        .get_mut()
        .write_all(b"220 2.0.0 Ready\r\n")
        .await
        .expect("220");
    let Ok(tls) = acceptor.accept(plain.into_inner()).await else {
        return vec!["handshake failed".into()];
    };
    let mut tls = BufReader::new(tls);
    let mut seen = Vec::new();
    for reply in [
        &b"250-backend.test\r\n250 XCLIENT NAME ADDR PORT PROTO HELO\r\n"[..],
        b"220 backend.test ESMTP\r\n",
        b"250-backend.test\r\n250 PIPELINING\r\n",
    ] {
        line.clear();
        if tls.read_line(&mut line).await.unwrap_or(0) == 0 {
            break;
        }
        seen.push(line.trim_end().to_string());
        tls.get_mut().write_all(reply).await.expect("reply");
    }
    seen
}

fn config(addr: SocketAddr, ca: &std::path::Path) -> BackendConfig {
    BackendConfig {
        servers: vec![BackendServer {
            address: addr,
            identity: Identity::Xclient,
            tls: Some(BackendTls {
                ca: ca.to_path_buf(),
                server_name: None,
            }),
        }],
        connect_at: ConnectAt::Mail,
        connect_timeout: Duration::from_secs(5),
        reply_timeout: Duration::from_secs(5),
        ..BackendConfig::default()
    }
}

fn client() -> ClientIdentity {
    ClientIdentity {
        addr: "198.51.100.7:40000".parse().expect("addr"),
        name: None,
        helo: Some("mx.client.example".into()),
        esmtp: true,
        login: None,
    }
}

/// Connects through the pool to a [`scripted_backend`] that presents `acceptor`'s certificate,
/// trusting only `trusted_ca` (PEM). Returns whether the kept EHLO reply offers PIPELINING (or
/// the pool's error) and the commands the backend received after its upgrade.
async fn connect_over_starttls(
    tag: &str,
    acceptor: TlsAcceptor,
    trusted_ca: &str,
) -> (Result<bool, String>, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("sgw-btls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, trusted_ca).expect("ca");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(scripted_backend(listener, acceptor));
    let cfg = config(addr, &ca);
    let connector =
        backend_connector(cfg.servers[0].tls.as_ref().expect("tls"), addr.ip()).expect("connector");
    let result = BackendPool::new()
        .connect(
            &cfg,
            &[Some(connector)],
            &client(),
            "127.0.0.1:25".parse().expect("addr"),
            "gw.test",
        )
        .await;
    let seen = server.await.expect("server");
    let _ = std::fs::remove_dir_all(&dir);
    let pipelining = result
        .map(|(backend, _reused)| backend.pipelining())
        .map_err(|e| e.to_string());
    (pipelining, seen)
}

#[tokio::test]
async fn starttls_to_the_backend_then_xclient_inside_tls() {
    let (ca, acceptor) = backend_pki();
    let (pipelining, seen) = connect_over_starttls("ok", acceptor, &ca).await;
    assert!(
        pipelining.expect("connect over TLS"),
        "the reply to the client's EHLO inside TLS is the one kept"
    );
    assert_eq!(seen[0], "EHLO gw.test");
    assert!(
        seen[1].starts_with("XCLIENT ADDR=198.51.100.7 PORT=40000"),
        "{seen:?}"
    );
    assert_eq!(seen[2], "EHLO mx.client.example");
}

#[tokio::test]
async fn a_backend_certificate_from_another_ca_is_refused() {
    let (_, acceptor) = backend_pki();
    let (other_ca, _) = backend_pki();
    let (result, seen) = connect_over_starttls("bad", acceptor, &other_ca).await;
    let err = result.expect_err("an untrusted backend certificate must be refused");
    assert!(err.contains("STARTTLS"), "{err}");
    assert!(
        !seen.iter().any(|l| l.starts_with("XCLIENT")),
        "identity must never be sent: {seen:?}"
    );
}

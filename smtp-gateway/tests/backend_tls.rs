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

struct Pki {
    ca_pem: String,
    acceptor: TlsAcceptor,
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    Pki {
        ca_pem: ca.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
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

#[tokio::test]
async fn starttls_to_the_backend_then_xclient_inside_tls() {
    let pki = pki();
    let dir = std::env::temp_dir().join(format!("sgw-btls-{}-ok", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("ca");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(scripted_backend(listener, pki.acceptor.clone()));
    let cfg = config(addr, &ca);
    let connector =
        backend_connector(cfg.servers[0].tls.as_ref().expect("tls"), addr.ip()).expect("connector");
    let (backend, _reused) = BackendPool::new()
        .connect(
            &cfg,
            &[Some(connector)],
            &client(),
            "127.0.0.1:25".parse().expect("addr"),
            "gw.test",
        )
        .await
        .expect("connect over TLS");
    assert!(
        backend.pipelining(),
        "the reply to the client's EHLO inside TLS is the one kept"
    );
    let seen = server.await.expect("server");
    assert_eq!(seen[0], "EHLO gw.test");
    assert!(
        seen[1].starts_with("XCLIENT ADDR=198.51.100.7 PORT=40000"),
        "{seen:?}"
    );
    assert_eq!(seen[2], "EHLO mx.client.example");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_backend_certificate_from_another_ca_is_refused() {
    let backend_pki = pki();
    let other = pki();
    let dir = std::env::temp_dir().join(format!("sgw-btls-{}-bad", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("other-ca.pem");
    std::fs::write(&ca, &other.ca_pem).expect("ca");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(scripted_backend(listener, backend_pki.acceptor.clone()));
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
    let err = result
        .err()
        .expect("an untrusted backend certificate must be refused");
    assert!(err.to_string().contains("STARTTLS"), "{err}");
    let seen = server.await.expect("server");
    assert!(
        !seen.iter().any(|l| l.starts_with("XCLIENT")),
        "identity must never be sent: {seen:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

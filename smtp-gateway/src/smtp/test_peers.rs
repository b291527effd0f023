//! Peers for the relay unit tests (`text.rs`, `chunk.rs`, `auth_results.rs`): a backend on
//! loopback that records what it is sent, a real backend session on it, and a client
//! connection whose bytes a task writes; for the TLS tests (`connection.rs`, `tls_accept.rs`),
//! the gateway's acceptor and a client that trusts it. Compiled for tests only.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::smtp::{
    backend::Backend,
    config::{BackendConfig, BackendServer, ConnectAt, Identity, TlsConfig},
    connection::{Connection, MaybeTls},
    identity::ClientIdentity,
    tls,
};

/// The name in the TLS peers' certificate.
pub(crate) const TLS_NAME: &str = "mx.example.net";

/// The gateway's acceptor (`tls::acceptor`, reading PEM files as the daemon does) for a fresh
/// self-signed certificate for [`TLS_NAME`], and a client that trusts it, speaks only `version`
/// and keeps the tickets it gets (rustls's in-memory store). The files go into a directory of
/// their own per call, removed before this returns: tests run in parallel, and a shared one
/// removed by one test while another read its key failed that one now and then.
pub(crate) fn tls_peers(
    version: &'static rustls::SupportedProtocolVersion,
) -> (TlsAcceptor, TlsConnector) {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![TLS_NAME.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sgw-tls-peers-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (certificate, private_key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&certificate, cert.pem()).expect("write cert");
    std::fs::write(&private_key, key.serialize_pem()).expect("write key");
    let acceptor = tls::acceptor(&TlsConfig {
        certificate,
        private_key,
    })
    .expect("acceptor");
    let _ = std::fs::remove_dir_all(&dir);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    (acceptor, TlsConnector::from(Arc::new(client)))
}

/// Both ends of a loopback TCP connection: the peer (the client) and the accepted side.
pub(crate) async fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (sock, _) = accepted.expect("accept");
    (peer.expect("connect"), sock)
}

/// [`TLS_NAME`] as the name a TLS client checks.
pub(crate) fn tls_name() -> ServerName<'static> {
    ServerName::try_from(TLS_NAME).expect("name")
}

/// When the recording backend stops recording.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    /// At the end of message text (`CRLF.CRLF`), then it answers `250 queued`.
    Dot,
    /// Once this many bytes came (chunk bytes are counted, not terminated).
    Bytes(usize),
}

/// A backend that greets, answers EHLO offering CHUNKING, then records what it is sent
/// `until` it has enough (or the session closes). Returns its address and the recording.
pub(crate) async fn recording_backend(until: Until) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let recorder = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.write_all(b"220 b ESMTP\r\n").await.expect("banner");
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.expect("ehlo");
        assert!(buf.get(..n).unwrap_or_default().starts_with(b"EHLO"));
        s.write_all(b"250-b\r\n250 CHUNKING\r\n")
            .await
            .expect("ehlo reply");
        let mut got = Vec::new();
        loop {
            let done = match until {
                Until::Dot => got.ends_with(b"\r\n.\r\n"),
                Until::Bytes(n) => got.len() >= n,
            };
            if done {
                break;
            }
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        if matches!(until, Until::Dot) {
            let _ = s.write_all(b"250 queued\r\n").await;
        }
        got
    });
    (addr, recorder)
}

/// A backend on loopback that greets every connection and answers `250` to whatever it is sent,
/// until the connection closes: for tests that need several backend sessions to one server.
pub(crate) async fn answering_backend() -> SocketAddr {
    let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = server.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = server.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 b ESMTP\r\n").await;
                let mut buf = vec![0u8; 512];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(b"250 b\r\n").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

/// A backend session on `address` (no identity, connected as if at MAIL), for a client that
/// said `EHLO c` from 127.0.0.1.
pub(crate) async fn backend_session(address: SocketAddr) -> Backend {
    let cfg = BackendConfig {
        servers: vec![BackendServer {
            address,
            identity: Identity::None,
            tls: None,
        }],
        connect_at: ConnectAt::Mail,
        connect_timeout: Duration::from_secs(5),
        reply_timeout: Duration::from_secs(5),
        ..BackendConfig::default()
    };
    let id = ClientIdentity {
        addr: "127.0.0.1:1".parse().expect("addr"),
        name: None,
        reverse_name: None,
        helo: Some("c".into()),
        esmtp: true,
        login: None,
    };
    Backend::connect(
        &cfg,
        &cfg.servers[0],
        None,
        &id,
        "127.0.0.1:25".parse().expect("addr"),
        "gw",
    )
    .await
    .expect("backend")
}

/// The gateway's side of a client connection whose client writes `pieces` one after the
/// other (`pause` between them, each its own segment) and then stays open. The client's task
/// returns its stream, so the caller decides when it closes.
pub(crate) async fn client_connection(
    pieces: Vec<Vec<u8>>,
    pause: Duration,
) -> (Connection, JoinHandle<TcpStream>) {
    let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let front_addr = front.local_addr().expect("addr");
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(front_addr).await.expect("connect");
        c.set_nodelay(true).expect("nodelay");
        for piece in pieces {
            c.write_all(&piece).await.expect("write");
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        c
    });
    let (server_side, _) = front.accept().await.expect("accept");
    (
        Connection::new(MaybeTls::Plain(server_side), Duration::from_secs(2)),
        client,
    )
}

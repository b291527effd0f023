//! Pregreet detection on implicit TLS without a greet pause: a client whose first protected bytes
//! (an `EHLO`) arrive with its TLS handshake, before the gateway could send its banner, is a
//! pregreeter (`521 5.5.1`, inside TLS) just as on a plaintext port; a client that waits for the
//! banner is served. Runs the real daemon on an implicit-TLS port in front of a scripted
//! backend. Needs root (bpffs pins).

use std::{
    io::{BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use peers::{Client, binary, scripted_backend};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use smtp_gateway_test_kit::{
    DaemonProcess, Wait,
    launcher::{self, free_port},
};

/// The daemon on an implicit-TLS port with `greet_pause = "0s"`; stopped, detached and cleaned
/// on drop.
struct Gateway {
    /// The running daemon.
    child: DaemonProcess,
    /// Its files.
    dir: PathBuf,
    /// Its configuration.
    config: PathBuf,
    /// The smtps port.
    port: u16,
    /// The CA that signed its certificate (PEM).
    ca: String,
}

impl Gateway {
    fn start(backend: SocketAddr, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sgw-pgtls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key");
        let port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let config = dir.join("gateway.toml");
        let text = format!(
            "[dataplane]\npin_dir = \"/sys/fs/bpf/sgw-pgtls-{pid}-{tag}\"\n\
             [smtp]\nhostname = \"gw.test\"\ngreet_pause = \"0s\"\n\
             listeners = [{{ address = \"127.0.0.1:{port}\", kind = \"smtps\" }}]\n\
             [smtp.tls]\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\n\
             [backend]\nservers = [{{ address = \"{backend}\", identity = \"none\" }}]\n\
             [relay]\naccepted_domains = [\"example.org\"]\n\
             [autoban]\nenabled = false\n\
             [metrics]\nenabled = false\n",
            pid = std::process::id(),
            cert = dir.join("cert.pem").display(),
            key = dir.join("key.pem").display(),
        );
        std::fs::write(&config, text).expect("config");
        let child = DaemonProcess::spawn(
            launcher::wrapped(&[] as &[&str], &binary(), &config),
            &dir.join("gateway.log"),
            libc::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("start: {e}"));
        let gw = Self {
            child,
            dir,
            config,
            port,
            ca: ca.pem(),
        };
        if gw.child.wait_for(Duration::from_secs(10), |log| {
            log.contains("SMTP listener ready")
        }) != Wait::Done
        {
            panic!("gateway did not start:\n{}", gw.child.log());
        }
        gw
    }

    /// A TLS client of the gateway, its handshake not yet done.
    fn tls(&self) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        rustls::StreamOwned::new(conn, tcp)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = launcher::detach(&binary(), &self.config);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Everything the gateway says until it closes (TLS close or EOF).
fn read_all(tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> String {
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_client_talking_before_the_tls_protected_banner_is_a_pregreeter() {
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let _seen = scripted_backend(backend, 1);
    let gw = Gateway::start(backend_addr, "pregreet");

    // The EHLO is queued before the handshake ends: rustls sends it right behind the client's
    // Finished, in the same flight, so it is there before the gateway could greet.
    let mut bot = gw.tls();
    bot.conn
        .writer()
        .write_all(b"EHLO bot.example\r\n")
        .expect("queue");
    while bot.conn.is_handshaking() {
        bot.conn.complete_io(&mut bot.sock).expect("handshake");
    }
    bot.flush().expect("send");
    let answer = read_all(&mut bot);
    assert!(
        answer.starts_with("521 5.5.1"),
        "the bot got {answer:?}\n{}",
        gw.child.log()
    );
    assert!(
        !answer.contains("220 "),
        "no banner for the bot: {answer:?}"
    );

    // A client that waits for the banner is served.
    let mut client = Client {
        stream: BufReader::new(gw.tls()),
    };
    let banner = client.reply();
    assert!(banner.starts_with("220 "), "{banner}");
    assert!(client.cmd("EHLO client.example.net").starts_with("250"));
    assert!(client.cmd("QUIT").starts_with("221"));
    let log = gw.child.log();
    assert!(
        log.contains("pregreet"),
        "the check is logged for the bot:\n{log}"
    );
}

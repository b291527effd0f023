//! AUTH on submission: offered only inside TLS, relayed to the backend (which decides), and an
//! authenticated client may relay to any domain while an anonymous one may not. Runs the real
//! daemon on an implicit-TLS port in front of a scripted backend. Needs root (bpffs pins).

use std::{
    io::BufReader,
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command},
    sync::Arc,
    time::Duration,
};

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use peers::{Client, GOOD_PLAIN, scripted_backend};
use rustls::pki_types::{CertificateDer, pem::PemObject};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-gateway");

struct Gateway {
    child: Child,
    config: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .arg("detach")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    smtp_gateway_test_kit::launcher::free_port().expect("free port")
}

fn start_gateway(backend: SocketAddr, listeners: &str, tag: &str) -> (Gateway, String) {
    let dir = std::env::temp_dir().join(format!("sgw-auth-{}-{tag}", std::process::id()));
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
    let config = dir.join("gateway.toml");
    let text = format!(
        "[dataplane]\npin_dir = \"/sys/fs/bpf/sgw-auth-{pid}-{tag}\"\n\
         [smtp]\nhostname = \"gw.test\"\nlisteners = [{listeners}]\n\
         [smtp.tls]\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\n\
         [backend]\nservers = [{{ address = \"{backend}\", identity = \"none\" }}]\n\
         [relay]\naccepted_domains = [\"example.org\"]\n\
         [metrics]\nenabled = false\n",
        pid = std::process::id(),
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    );
    std::fs::write(&config, text).expect("config");
    let log = std::fs::File::create(dir.join("gateway.log")).expect("log");
    let child = Command::new(BIN)
        .arg("-c")
        .arg(&config)
        .arg("run")
        .stderr(log)
        .spawn()
        .expect("start gateway");
    let gw = Gateway {
        child,
        config,
        dir: dir.clone(),
    };
    for _ in 0..100 {
        if std::fs::read_to_string(dir.join("gateway.log"))
            .is_ok_and(|l| l.contains("SMTP listener ready"))
        {
            return (gw, ca.pem());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "gateway did not start: {:?}",
        std::fs::read_to_string(dir.join("gateway.log"))
    );
}

fn tls_client(
    addr: SocketAddr,
    ca_pem: &str,
) -> Client<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    Client {
        stream: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
    }
}

#[test]
fn auth_is_relayed_on_implicit_tls_and_lets_the_client_relay() {
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let seen = scripted_backend(backend, 1);
    let port = free_port();
    let (_gw, ca) = start_gateway(
        backend_addr,
        &format!("{{ address = \"127.0.0.1:{port}\", kind = \"smtps\" }}"),
        "smtps",
    );
    let mut c = tls_client(SocketAddr::from(([127, 0, 0, 1], port)), &ca);
    assert!(c.reply().starts_with("220 "));
    let ehlo = c.cmd("EHLO client.example.net");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN"),
        "backend mechanisms offered inside TLS: {ehlo}"
    );
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    let anon = c.cmd("RCPT TO:<friend@elsewhere.test>");
    assert!(
        anon.starts_with("550 5.7.1"),
        "anonymous relay refused: {anon}"
    );
    assert!(c.cmd("RSET").starts_with("250"));
    let bad = c.cmd("AUTH PLAIN AHVzZXIAd3Jvbmc=");
    assert!(bad.starts_with("535"), "{bad}");
    let good = c.cmd(&format!("AUTH PLAIN {GOOD_PLAIN}"));
    assert!(good.starts_with("235"), "{good}");
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    let relayed = c.cmd("RCPT TO:<friend@elsewhere.test>");
    assert!(
        relayed.starts_with("250"),
        "authenticated client may relay: {relayed}"
    );
    let trick = c.cmd("RCPT TO:<friend%evil.test@example.org>");
    assert!(
        trick.starts_with("550 5.7.1"),
        "address tricks stay refused: {trick}"
    );
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: t\r\n\r\nhello\r\n.").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let seen = seen.join().expect("backend");
    assert!(
        seen.iter()
            .any(|l| l == &format!("AUTH PLAIN {GOOD_PLAIN}")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == "RCPT TO:<friend@elsewhere.test>"),
        "{seen:?}"
    );
}

#[test]
fn auth_is_refused_in_plaintext_on_submission() {
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let _seen = scripted_backend(backend, 1);
    let port = free_port();
    let (_gw, _ca) = start_gateway(
        backend_addr,
        &format!("{{ address = \"127.0.0.1:{port}\", kind = \"submission\" }}"),
        "plain",
    );
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut c = Client {
        stream: BufReader::new(tcp),
    };
    assert!(c.reply().starts_with("220 "));
    let ehlo = c.cmd("EHLO client.example.net");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let auth = c.cmd(&format!("AUTH PLAIN {GOOD_PLAIN}"));
    assert!(auth.starts_with("538 5.7.11"), "{auth}");
}

/// A backend whose SASL exchange never ends: `AUTH LOGIN` and every response get `334`, `*`
/// cancels (`501`). Serves one session; returns every line it saw.
fn endless_sasl_backend(listener: TcpListener) -> std::thread::JoinHandle<Vec<String>> {
    use std::io::{BufRead, Write};
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let Ok((tcp, _)) = listener.accept() else {
            return seen;
        };
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut out = tcp.try_clone().expect("clone");
        let mut input = BufReader::new(tcp);
        out.write_all(b"220 backend.test ESMTP\r\n").ok();
        let mut in_auth = false;
        loop {
            let mut line = String::new();
            if input.read_line(&mut line).unwrap_or(0) == 0 {
                return seen;
            }
            let cmd = line.trim_end().to_string();
            seen.push(cmd.clone());
            let upper = cmd.to_ascii_uppercase();
            let reply: &[u8] = if in_auth && cmd == "*" {
                in_auth = false;
                b"501 5.7.0 Authentication aborted\r\n"
            } else if in_auth {
                b"334 UGFzc3dvcmQ6\r\n"
            } else if upper.starts_with("EHLO") {
                b"250-backend.test\r\n250-AUTH LOGIN\r\n250 8BITMIME\r\n"
            } else if upper == "AUTH LOGIN" {
                in_auth = true;
                b"334 VXNlcm5hbWU6\r\n"
            } else if upper == "QUIT" {
                out.write_all(b"221 bye\r\n").ok();
                return seen;
            } else {
                b"250 2.0.0 Ok\r\n"
            };
            out.write_all(reply).ok();
        }
    })
}

#[test]
fn a_sasl_exchange_is_bounded_and_cancelled_on_the_backend() {
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let seen = endless_sasl_backend(backend);
    let port = free_port();
    let (_gw, ca) = start_gateway(
        backend_addr,
        &format!("{{ address = \"127.0.0.1:{port}\", kind = \"smtps\" }}"),
        "steps",
    );
    let mut c = tls_client(SocketAddr::from(([127, 0, 0, 1], port)), &ca);
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.example.net").contains("AUTH LOGIN"));
    let mut reply = c.cmd("AUTH LOGIN");
    let mut steps = 0;
    while reply.starts_with("334") {
        steps += 1;
        assert!(steps <= 20, "the exchange never ends");
        reply = c.cmd("c29tZXRoaW5n");
    }
    assert!(reply.starts_with("501"), "after {steps} steps: {reply}");
    assert!(c.cmd("NOOP").starts_with("250"), "the session goes on");
    assert!(c.cmd("QUIT").starts_with("221"));
    let seen = seen.join().expect("backend");
    assert!(
        seen.iter().any(|l| l == "*"),
        "the backend's exchange is cancelled: {seen:?}"
    );
}

#[test]
fn a_sasl_response_with_a_bare_lf_is_refused_not_relayed() {
    use std::io::Write;
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let seen = endless_sasl_backend(backend);
    let port = free_port();
    let (_gw, ca) = start_gateway(
        backend_addr,
        &format!("{{ address = \"127.0.0.1:{port}\", kind = \"smtps\" }}"),
        "barelf",
    );
    let mut c = tls_client(SocketAddr::from(([127, 0, 0, 1], port)), &ca);
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.example.net").contains("AUTH LOGIN"));
    assert!(c.cmd("AUTH LOGIN").starts_with("334"));
    c.stream.get_mut().write_all(b"YmFyZQ==\n").expect("write");
    c.stream.get_mut().flush().expect("flush");
    let reply = c.reply();
    assert!(
        reply.starts_with("500 5.5.2") || reply.starts_with("421"),
        "{reply}"
    );
    drop(c);
    let seen = seen.join().expect("backend");
    assert!(!seen.iter().any(|l| l == "YmFyZQ=="), "relayed: {seen:?}");
    assert!(seen.iter().any(|l| l == "*"), "not cancelled: {seen:?}");
}

#[test]
fn a_new_backend_session_is_not_authenticated() {
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let seen = scripted_backend(backend, 2);
    let port = free_port();
    let (_gw, ca) = start_gateway(
        backend_addr,
        &format!("{{ address = \"127.0.0.1:{port}\", kind = \"smtps\" }}"),
        "reehlo",
    );
    let mut c = tls_client(SocketAddr::from(([127, 0, 0, 1], port)), &ca);
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    let good = c.cmd(&format!("AUTH PLAIN {GOOD_PLAIN}"));
    assert!(good.starts_with("235"), "{good}");
    // The repeated EHLO must not leave the client authenticated towards a backend session that
    // never saw its login.
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    let relay = c.cmd("RCPT TO:<friend@elsewhere.test>");
    assert!(
        relay.starts_with("550 5.7.1"),
        "relayed without a login: {relay}"
    );
    // Logging in again on the new backend session lets it relay.
    assert!(c.cmd("RSET").starts_with("250"));
    let good = c.cmd(&format!("AUTH PLAIN {GOOD_PLAIN}"));
    assert!(good.starts_with("235"), "{good}");
    assert!(c.cmd("MAIL FROM:<user@example.net>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<friend@elsewhere.test>").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let seen = seen.join().expect("backend");
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("AUTH PLAIN")).count(),
        2,
        "{seen:?}"
    );
}

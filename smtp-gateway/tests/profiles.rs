//! Per-listener policy profiles through the real daemon: one gateway with an MX listener (no
//! profile: `mx`, the top-level sections) and a submission listener (`kind = "submission"` and no
//! profile: its kind's, `submission`).
//! The submission listener greets at once, ignores a pregreet, asks the DNSBL nothing and refuses
//! MAIL before AUTH with `530 5.7.0`; the MX listener keeps the greet pause and the DNSBL. A
//! listener naming a profile that does not exist is refused by `check-config` with its line.
//! Runs against a DNS server of the test's own on loopback and a scripted backend. Needs root
//! (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{
    io::{BufReader, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use peers::{Client, binary, scripted_backend};
use smtp_gateway_test_kit::{
    DaemonProcess, DnsResponder, Records, Wait,
    launcher::{self, free_port},
};

/// The client (127.0.0.1) as the DNSBL zone lists it.
const CLIENT_IN_ZEN: &str = "1.0.0.127.zen.test";
/// `smtp.greet_pause` of the test gateway (the MX listener keeps it).
const GREET_PAUSE: Duration = Duration::from_millis(800);

/// A daemon with an MX listener on `mx` and a submission listener on `submission`; killed and
/// its pins removed when dropped.
struct Gateway {
    child: DaemonProcess,
    dir: PathBuf,
    config: PathBuf,
    mx: u16,
    submission: u16,
}

impl Gateway {
    fn start(tag: &str, dns: std::net::SocketAddr, backend: std::net::SocketAddr) -> Gateway {
        let dir = std::env::temp_dir().join(format!("sgw-prof-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let port = || free_port().unwrap_or_else(|e| panic!("{e}"));
        let (mx, submission, metrics) = (port(), port(), port());
        // AUTH, which the submission profile requires, is offered inside TLS only.
        let (cert, key) = peers::pki::Pki::new().write_server_files(&dir);
        let config = dir.join("gateway.toml");
        let text = format!(
            "[dataplane]\npin_dir = \"/sys/fs/bpf/sgw-prof-{pid}-{tag}\"\n\
             [smtp]\nhostname = \"gw.test\"\ngreet_pause = \"{pause}ms\"\n\
             listeners = [\n  {{ address = \"127.0.0.1:{mx}\" }},\n  \
             {{ address = \"127.0.0.1:{submission}\", kind = \"submission\" }},\n]\n\
             [smtp.tls]\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\n\
             [backend]\nservers = [{{ address = \"{backend}\", identity = \"none\" }}]\n\
             [checks]\ndnsbl = {{ action = \"reject\" }}\n\
             [dnsbl]\nenabled = true\nnameservers = [\"{dns}\"]\ntimeout = \"2s\"\nthreshold = 3\n\
             sites = [\"zen.test=127.0.0.[2..11]*3\"]\n\
             [relay]\naccepted_domains = [\"example.org\"]\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [store]\npath = \"{state}\"\n",
            state = dir.join("state.redb").display(),
            cert = cert.display(),
            key = key.display(),
            pid = std::process::id(),
            pause = GREET_PAUSE.as_millis(),
        );
        std::fs::write(&config, text).expect("config");
        let child = DaemonProcess::spawn(
            launcher::run_command(&binary(), &config),
            &dir.join("gateway.log"),
            libc::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("start: {e}"));
        let gw = Gateway {
            child,
            dir,
            config,
            mx,
            submission,
        };
        let ready = |log: &str| log.matches("SMTP listener ready").count() == 2;
        if gw.child.wait_for(Duration::from_secs(10), ready) != Wait::Done {
            panic!("the gateway did not start:\n{}", gw.child.log());
        }
        gw
    }

    /// Connects to `port`; returns the client (banner not read yet).
    fn connect(port: u16) -> Client<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        Client {
            stream: BufReader::new(tcp),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = launcher::detach(&binary(), &self.config);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_submission_listener_requires_auth_and_skips_the_mx_checks_the_mx_listener_keeps() {
    let dns = DnsResponder::start(Records::new().a(CLIENT_IN_ZEN, &[Ipv4Addr::new(127, 0, 0, 2)]))
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let _seen = scripted_backend(backend.try_clone().expect("clone"), 1);
    let gw = Gateway::start("two", dns.addr(), backend.local_addr().expect("addr"));

    // Submission: the banner at once (no "220-" teaser, no pause) ...
    let started = Instant::now();
    let mut c = Gateway::connect(gw.submission);
    let banner = c.reply();
    assert!(
        banner.starts_with("220 ") && started.elapsed() < GREET_PAUSE,
        "no greet pause on submission ({:?}): {banner}",
        started.elapsed()
    );
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    // ... and no MAIL without a login.
    let mail = c.cmd("MAIL FROM:<user@example.net>");
    assert!(
        mail.starts_with("530 5.7.0 Authentication required"),
        "unauthenticated MAIL on submission: {mail}"
    );
    assert!(c.cmd("QUIT").starts_with("221"));

    // A client talking before the banner is not a pregreeter there.
    let mut early = Gateway::connect(gw.submission);
    early
        .stream
        .get_mut()
        .write_all(b"EHLO early.example.net\r\n")
        .expect("write");
    assert!(early.reply().starts_with("220 "), "pregreet ignored");
    assert!(
        early.reply().starts_with("250"),
        "the early EHLO is answered"
    );
    assert!(
        dns.queries().is_empty(),
        "no DNSBL lookup for submission clients: {:?}",
        dns.queries()
    );

    // MX: the greet pause and the DNSBL, as configured at the top level.
    let started = Instant::now();
    let mut c = Gateway::connect(gw.mx);
    let banner = c.reply();
    assert!(
        banner.starts_with("220-") && started.elapsed() >= GREET_PAUSE,
        "greet pause on MX ({:?}): {banner}",
        started.elapsed()
    );
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    let mail = c.cmd("MAIL FROM:<user@example.net>");
    assert!(
        mail.starts_with("554 5.7.1"),
        "listed client refused on MX: {mail}"
    );
    assert!(
        dns.queries().iter().any(|n| n == CLIENT_IN_ZEN),
        "DNSBL asked for the MX client: {:?}",
        dns.queries()
    );
}

#[test]
fn check_config_refuses_an_unknown_profile_naming_its_line() {
    let dir = std::env::temp_dir().join(format!("sgw-prof-{}-unknown", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "[smtp]\n\
         listeners = [\n\
         \x20 { address = \"127.0.0.1:25\" },\n\
         \x20 { address = \"127.0.0.1:587\", kind = \"submission\", profile = \"submision\" },\n\
         ]\n\
         [backend]\nservers = [{ address = \"127.0.0.1:10025\" }]\n",
    )
    .expect("config");
    let out = Command::new(binary())
        .arg("-c")
        .arg(&config)
        .arg("check-config")
        .output()
        .expect("run check-config");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("gateway.toml: line 4:")
            && stderr.contains("\"submision\"")
            && stderr.contains("mx, submission"),
        "names the line, the profile and the known ones: {stderr}"
    );
}

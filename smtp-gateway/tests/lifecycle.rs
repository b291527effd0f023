//! The daemon's lifecycle with the proxy running: SIGHUP reloads proxy settings live (and a bad
//! file changes nothing), SIGTERM lets an in-flight message complete while newcomers get `421`.
//! The real binary in front of a scripted backend. Needs root (bpffs pins).

#[path = "support/peers.rs"]
mod peers;

use std::{
    io::{BufReader, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use peers::{Client, scripted_backend};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-gateway");

struct Gateway {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
    port: u16,
    pin_dir: String,
}

impl Gateway {
    fn start(tag: &str, backend: std::net::SocketAddr, smtp_extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sgw-life-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let pin_dir = format!("/sys/fs/bpf/sgw-life-{}-{tag}", std::process::id());
        let gw = Self {
            child: Command::new("true").spawn().expect("placeholder"),
            dir: dir.clone(),
            config: dir.join("gateway.toml"),
            port,
            pin_dir,
        };
        gw.write_config(backend, smtp_extra);
        let log = std::fs::File::create(dir.join("gateway.log")).expect("log");
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&gw.config)
            .arg("run")
            .stderr(log)
            .spawn()
            .expect("start");
        let mut gw = gw;
        let mut placeholder = std::mem::replace(&mut gw.child, child);
        let _ = placeholder.wait();
        gw.wait_log("SMTP listener ready");
        gw
    }

    fn write_config(&self, backend: std::net::SocketAddr, smtp_extra: &str) {
        let text = format!(
            "[dataplane]\npin_dir = \"{}\"\n[smtp]\nhostname = \"gw.test\"\nlisteners = [{{ address = \"127.0.0.1:{}\" }}]\n{smtp_extra}\n\
             [backend]\nservers = [{{ address = \"{backend}\", identity = \"none\" }}]\n[relay]\naccepted_domains = [\"example.org\"]\n",
            self.pin_dir, self.port
        );
        std::fs::write(&self.config, text).expect("config");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        for _ in 0..100 {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no {needle:?} in the log:\n{}", self.log());
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    fn client(&self) -> Client<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut c = Client {
            stream: BufReader::new(tcp),
        };
        let banner = c.reply();
        assert!(banner.starts_with("220 "), "{banner}");
        c
    }
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

fn two_recipients(c: &mut Client<TcpStream>) -> (String, String) {
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    let first = c.cmd("RCPT TO:<one@example.org>");
    let second = c.cmd("RCPT TO:<two@example.org>");
    (first, second)
}

#[test]
fn sighup_changes_a_proxy_limit_live_and_a_bad_file_changes_nothing() {
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = backend.local_addr().expect("addr");
    let _seen = scripted_backend(backend, 3);
    let gw = Gateway::start("hup", addr, "max_recipients = 5");

    let mut c = gw.client();
    let (first, second) = two_recipients(&mut c);
    assert!(
        first.starts_with("250") && second.starts_with("250"),
        "{first} {second}"
    );
    c.cmd("QUIT");

    gw.write_config(addr, "max_recipients = 1");
    gw.signal(libc::SIGHUP);
    gw.wait_log("configuration reloaded");
    let mut c = gw.client();
    let (first, second) = two_recipients(&mut c);
    assert!(first.starts_with("250"), "{first}");
    assert!(
        second.starts_with("452 4.5.3"),
        "the reloaded limit applies to new sessions: {second}"
    );
    c.cmd("QUIT");

    // Valid TOML whose certificate cannot be read: the whole reload is refused.
    gw.write_config(
        addr,
        "max_recipients = 5\n[smtp.tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"",
    );
    gw.signal(libc::SIGHUP);
    gw.wait_log("reload failed");
    assert!(gw.log().contains("/nonexistent/cert.pem"), "{}", gw.log());
    let mut c = gw.client();
    let ehlo = c.cmd("EHLO client.example.net");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<one@example.org>").starts_with("250"));
    let second = c.cmd("RCPT TO:<two@example.org>");
    assert!(
        second.starts_with("452"),
        "the previous generation (max_recipients = 1) stays: {second}"
    );
}

#[test]
fn sigterm_lets_an_inflight_message_complete_and_refuses_newcomers() {
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = backend.local_addr().expect("addr");
    let seen = scripted_backend(backend, 1);
    let mut gw = Gateway::start("term", addr, "shutdown_timeout = \"20s\"");

    let mut c = gw.client();
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<one@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.stream
        .get_mut()
        .write_all(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .expect("write");

    gw.signal(libc::SIGTERM);
    gw.wait_log("stopping");
    let mut late = TcpStream::connect(("127.0.0.1", gw.port)).expect("the listener still answers");
    late.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut late, &mut answer);
    assert!(
        answer.starts_with("421 4.3.2"),
        "newcomers are told to come back: {answer:?}"
    );

    let done = c.cmd("second half\r\n.");
    assert!(
        done.starts_with("250"),
        "the in-flight message completes: {done}"
    );
    let next = c.cmd("NOOP");
    assert!(
        next.starts_with("421 4.3.2"),
        "then the session is closed politely: {next}"
    );

    let status = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            gw.child.try_wait().ok().flatten()
        })
        .expect("the daemon exits once sessions are done");
    assert!(status.success(), "{status}");
    let seen = seen.join().expect("backend");
    assert!(seen.iter().any(|l| l == "DATA"), "{seen:?}");
}

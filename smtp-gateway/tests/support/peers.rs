//! Test peers shared by the integration tests: a scripted backend MTA, a line client, and the
//! daemon under test started through the test kit's launcher (plain, or on a TLS listener with a
//! certificate from a throw-away CA, [`pki`]).

#[path = "pki.rs"]
pub mod pki;

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use smtp_gateway_test_kit::{
    DaemonProcess, GATEWAY_BIN_ENV, Wait,
    launcher::{self, free_port},
};

/// The daemon under test, as cargo built it for this test binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_smtp-gateway");

/// How long the daemon gets to log what a test waits for (start-up included).
const LOG_WAIT: Duration = Duration::from_secs(10);

/// The daemon binary: `$SMTP_GATEWAY_BIN` if set, else [`BIN`].
pub fn binary() -> PathBuf {
    std::env::var_os(GATEWAY_BIN_ENV).map_or_else(|| PathBuf::from(BIN), PathBuf::from)
}

/// A [`scripted_backend`] on a free loopback port serving `sessions` sessions: its address and
/// the commands it saw.
pub fn scripted_backend_on_loopback(
    sessions: usize,
) -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    (addr, scripted_backend(listener, sessions))
}

/// The daemon with `smtp_extra` in front of a [`scripted_backend`] serving `backend_sessions`
/// sessions.
pub fn gateway(tag: &str, smtp_extra: &str, backend_sessions: usize) -> Gateway {
    let (addr, _seen) = scripted_backend_on_loopback(backend_sessions);
    Gateway::start(tag, addr, smtp_extra)
}

/// base64("\0user\0secret")
pub const GOOD_PLAIN: &str = "AHVzZXIAc2VjcmV0";

/// What a scripted backend does after one line.
pub enum Step {
    /// Sends this reply.
    Reply(&'static [u8]),
    /// Sends nothing (a line of message text).
    Quiet,
    /// Says `221 bye` and ends the session.
    Quit,
}

/// A backend MTA on `listener` that serves `sessions` sessions one after the other: a `220`
/// banner, then each line (without its line ending) goes to `script` with the session's state
/// (fresh for every session), which records what it wants in the list the thread returns and
/// says what to do.
pub fn backend_script<S: Default + 'static>(
    listener: TcpListener,
    sessions: usize,
    script: fn(&mut S, &str, &mut Vec<String>) -> Step,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..sessions {
            let Ok((tcp, _)) = listener.accept() else {
                break;
            };
            let mut state = S::default();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut out = tcp.try_clone().expect("clone");
            let mut input = BufReader::new(tcp);
            out.write_all(b"220 backend.test ESMTP\r\n").ok();
            loop {
                let mut line = String::new();
                if input.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                match script(&mut state, line.trim_end(), &mut seen) {
                    Step::Reply(reply) => {
                        out.write_all(reply).ok();
                    }
                    Step::Quiet => {}
                    Step::Quit => {
                        out.write_all(b"221 bye\r\n").ok();
                        break;
                    }
                }
            }
        }
        seen
    })
}

/// A backend that offers AUTH PLAIN, accepts one credential, and accepts any mail; serves
/// `sessions` sessions one after the other and returns every command it saw.
pub fn scripted_backend(
    listener: TcpListener,
    sessions: usize,
) -> std::thread::JoinHandle<Vec<String>> {
    // The state: whether the session is in message text.
    backend_script(listener, sessions, |in_data: &mut bool, cmd, seen| {
        if *in_data {
            if cmd == "." {
                *in_data = false;
                return Step::Reply(b"250 2.0.0 queued\r\n");
            }
            return Step::Quiet;
        }
        seen.push(cmd.to_string());
        let upper = cmd.to_ascii_uppercase();
        Step::Reply(if upper.starts_with("EHLO") {
            b"250-backend.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("AUTH PLAIN ") {
            if cmd.ends_with(GOOD_PLAIN) {
                b"235 2.7.0 Authentication successful\r\n"
            } else {
                b"535 5.7.8 Authentication credentials invalid\r\n"
            }
        } else if upper.starts_with("MAIL")
            || upper.starts_with("RCPT")
            || upper.starts_with("RSET")
        {
            b"250 2.0.0 Ok\r\n"
        } else if upper == "DATA" {
            *in_data = true;
            b"354 go ahead\r\n"
        } else if upper == "QUIT" {
            return Step::Quit;
        } else {
            b"502 5.5.1 no\r\n"
        })
    })
}

/// A line-oriented SMTP client over any stream.
pub struct Client<S: std::io::Read + Write> {
    pub stream: BufReader<S>,
}

impl<S: std::io::Read + Write> Client<S> {
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.stream.read_line(&mut line).expect("read") > 0,
                "connection closed after {all:?}"
            );
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.stream
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.stream.get_mut().flush().expect("flush");
        self.reply()
    }

    /// Sends `line` and asserts that the reply starts with `code`; returns the reply.
    pub fn expect(&mut self, line: &str, code: &str) -> String {
        let reply = self.cmd(line);
        assert!(reply.starts_with(code), "{line:?} -> {reply}");
        reply
    }

    /// Sends `line` and asserts that the reply starts with `code`, saying `why` when it does
    /// not; returns the reply.
    pub fn expect_that(&mut self, line: &str, code: &str, why: &str) -> String {
        let reply = self.cmd(line);
        assert!(reply.starts_with(code), "{why}: {line:?} -> {reply}");
        reply
    }

    /// Opens a message on a greeted session: `MAIL FROM:<a@example.net>` and
    /// `RCPT TO:<b@example.org>` accepted, `DATA` answered `354`.
    pub fn open_message(&mut self) {
        self.expect("MAIL FROM:<a@example.net>", "250");
        self.expect("RCPT TO:<b@example.org>", "250");
        self.expect("DATA", "354");
    }
}

/// The real daemon with the proxy on a free loopback port; killed, detached and cleaned on drop.
pub struct Gateway {
    /// The running daemon (PID, signals, exit status, its log).
    pub child: DaemonProcess,
    /// Its files (configuration, log, certificate).
    pub dir: PathBuf,
    /// Its configuration file.
    config: PathBuf,
    /// The proxy's port.
    pub port: u16,
    /// The metrics endpoint (every gateway gets its own free port).
    pub metrics_port: u16,
    /// What every configuration written for it keeps (pins, listener, TLS).
    layout: Layout,
    /// The CA that signed the daemon's certificate (PEM), for a gateway started with TLS.
    ca: Option<String>,
}

/// The parts of a test gateway's configuration that stay the same across rewrites.
struct Layout {
    /// Its pins (a private directory under /sys/fs/bpf).
    pin_dir: String,
    /// The `listeners` entry (address and kind).
    listener: String,
    /// The `[smtp.tls]` section (empty without TLS).
    tls: String,
    /// The metrics endpoint's port.
    metrics_port: u16,
}

impl Layout {
    /// Writes the daemon's configuration to `path`: the proxy in front of `backend`, extra
    /// `[smtp]` and `[backend]` keys (or sections after `[smtp]`).
    fn write(
        &self,
        path: &std::path::Path,
        backend: SocketAddr,
        smtp_extra: &str,
        backend_extra: &str,
    ) {
        let Self {
            pin_dir,
            listener,
            tls,
            metrics_port,
        } = self;
        let text = format!(
            "[dataplane]\npin_dir = \"{pin_dir}\"\n[smtp]\nhostname = \"gw.test\"\nlisteners = [{listener}]\n{smtp_extra}\n{tls}\
             [backend]\nservers = [{{ address = \"{backend}\", identity = \"none\" }}]\n{backend_extra}\n[relay]\naccepted_domains = [\"example.org\"]\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        );
        // Every daemon keeps its state in its own directory (tests run in parallel, and the
        // default store file allows one daemon at a time), unless the test chose a store.
        let text = if text.contains("[store]") {
            text
        } else {
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            format!(
                "{text}[store]\npath = \"{}\"\n",
                dir.join("state.redb").display()
            )
        };
        std::fs::write(path, text).expect("config");
    }
}

/// How a test gateway is started, beyond its tag and backend.
#[derive(Default)]
struct Launch<'a> {
    /// Extra `[smtp]` keys (or sections after `[smtp]`).
    smtp_extra: &'a str,
    /// Extra `[backend]` keys.
    backend_extra: &'a str,
    /// A command prefix the daemon runs under (`setpriv ...`).
    wrapper: &'a [&'a str],
    /// The listener's `kind` (`smtps`, `submission`) with a certificate from a fresh test CA;
    /// `None`: plain SMTP without TLS.
    tls_kind: Option<&'a str>,
}

impl<'a> Launch<'a> {
    /// A plain SMTP listener with extra `[smtp]` keys.
    fn new(smtp_extra: &'a str) -> Self {
        Self {
            smtp_extra,
            ..Self::default()
        }
    }
}

impl Gateway {
    pub fn start(tag: &str, backend: SocketAddr, smtp_extra: &str) -> Self {
        Self::launch(tag, backend, Launch::new(smtp_extra))
    }

    /// Starts the daemon under `wrapper` (a command prefix such as `setpriv ...`).
    pub fn start_under(tag: &str, backend: SocketAddr, smtp_extra: &str, wrapper: &[&str]) -> Self {
        let how = Launch {
            wrapper,
            ..Launch::new(smtp_extra)
        };
        Self::launch(tag, backend, how)
    }

    /// Starts the daemon with extra `[backend]` keys.
    pub fn start_with_backend(tag: &str, backend: SocketAddr, smtp: &str, extra: &str) -> Self {
        let how = Launch {
            backend_extra: extra,
            ..Launch::new(smtp)
        };
        Self::launch(tag, backend, how)
    }

    /// Starts the daemon with a listener of `kind` (`smtps`, `submission`) and a certificate for
    /// 127.0.0.1 from a fresh test CA (clients: [`Gateway::tls`], [`Gateway::tls_client`]).
    pub fn start_tls(tag: &str, backend: SocketAddr, kind: &str, smtp_extra: &str) -> Self {
        let how = Launch {
            tls_kind: Some(kind),
            ..Launch::new(smtp_extra)
        };
        Self::launch(tag, backend, how)
    }

    /// [`Gateway::start_tls`] with extra `[backend]` keys.
    pub fn start_tls_with_backend(
        tag: &str,
        backend: SocketAddr,
        kind: &str,
        smtp_extra: &str,
        backend_extra: &str,
    ) -> Self {
        let how = Launch {
            tls_kind: Some(kind),
            backend_extra,
            ..Launch::new(smtp_extra)
        };
        Self::launch(tag, backend, how)
    }

    fn launch(tag: &str, backend: SocketAddr, how: Launch<'_>) -> Self {
        let dir = std::env::temp_dir().join(format!("sgw-life-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let metrics_port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let address = format!("address = \"127.0.0.1:{port}\"");
        let (listener, tls, ca) = match how.tls_kind {
            None => (format!("{{ {address} }}"), String::new(), None),
            Some(kind) => {
                let pki = pki::Pki::new();
                let (cert, key) = pki.write_server_files(&dir);
                let tls = format!(
                    "[smtp.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
                    cert.display(),
                    key.display()
                );
                (
                    format!("{{ {address}, kind = \"{kind}\" }}"),
                    tls,
                    Some(pki.ca_pem),
                )
            }
        };
        let layout = Layout {
            pin_dir: format!("/sys/fs/bpf/sgw-life-{}-{tag}", std::process::id()),
            listener,
            tls,
            metrics_port,
        };
        let config = dir.join("gateway.toml");
        layout.write(&config, backend, how.smtp_extra, how.backend_extra);
        let child = DaemonProcess::spawn(
            launcher::wrapped(how.wrapper, &binary(), &config),
            &dir.join("gateway.log"),
            libc::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("start: {e}"));
        let gw = Self {
            child,
            dir,
            config,
            port,
            metrics_port,
            layout,
            ca,
        };
        gw.wait_log("SMTP listener ready");
        gw
    }

    pub fn write_config(&self, backend: SocketAddr, smtp_extra: &str) {
        self.write_config_with(backend, smtp_extra, "");
    }

    /// The configuration with extra `[smtp]` and `[backend]` keys (or sections after `[smtp]`).
    pub fn write_config_with(&self, backend: SocketAddr, smtp_extra: &str, backend_extra: &str) {
        self.layout
            .write(&self.config, backend, smtp_extra, backend_extra);
    }

    /// The configuration file the daemon runs with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Runs the CLI against this daemon's configuration.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run the CLI")
    }

    /// Counts of `needle` in the log.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Waits (bounded, woken by each line the daemon logs) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        if self.child.wait_for(LOG_WAIT, |log| log.contains(needle)) != Wait::Done {
            panic!("no {needle:?} in the log:\n{}", self.log());
        }
    }

    /// Waits (bounded, woken by each line the daemon logs) until one log line contains every
    /// one of `needles`.
    pub fn wait_log_line(&self, needles: &[&str]) {
        let found = |log: &str| log.lines().any(|l| needles.iter().all(|n| l.contains(n)));
        if self.child.wait_for(LOG_WAIT, found) != Wait::Done {
            panic!("no line with {needles:?} in the log:\n{}", self.log());
        }
    }

    /// Sends `sig` to the daemon by its PID.
    pub fn signal(&self, sig: libc::c_int) {
        let _ = self.child.signal(sig);
    }

    /// One `GET /metrics` of the daemon's metrics endpoint: the whole response.
    pub fn scrape(&self) -> String {
        let mut tcp =
            TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("connect to metrics");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        std::io::Read::read_to_string(&mut tcp, &mut body).expect("response");
        body
    }

    /// Connects and returns the greeting (all its lines).
    pub fn banner(&self) -> String {
        self.connect().reply()
    }

    /// A line client on a new plaintext connection, the banner not yet read.
    pub fn connect(&self) -> Client<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        Client {
            stream: BufReader::new(tcp),
        }
    }

    /// A line client on a new plaintext connection whose `220` banner was read.
    pub fn client(&self) -> Client<TcpStream> {
        let mut c = self.connect();
        let banner = c.reply();
        assert!(
            banner.lines().last().is_some_and(|l| l.starts_with("220 ")),
            "{banner}"
        );
        c
    }

    /// A line client on a new plaintext connection that said `EHLO helo` and got `250`.
    pub fn greeted(&self, helo: &str) -> Client<TcpStream> {
        let mut c = self.client();
        c.expect(&format!("EHLO {helo}"), "250");
        c
    }

    /// A TLS connection to a gateway started with [`Gateway::start_tls`], trusting its CA; the
    /// handshake is not yet done.
    pub fn tls(&self) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let ca = self.ca.as_deref().expect("a gateway started with TLS");
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        rustls::StreamOwned::new(pki::client_connection(ca), tcp)
    }

    /// A line client over [`Gateway::tls`]; the banner is not yet read.
    pub fn tls_client(&self) -> Client<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        Client {
            stream: BufReader::new(self.tls()),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // The test may have left its configuration invalid: detach with one naming the pins only.
        let detach = self.dir.join("detach.toml");
        let _ = std::fs::write(
            &detach,
            format!("[dataplane]\npin_dir = \"{}\"\n", self.layout.pin_dir),
        );
        let _ = launcher::detach(&binary(), &detach);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A name no other scratch area of this test process has: `{prefix}-{pid}-{n}`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A fresh scratch area named after `prefix`: a temporary directory (created) and a pin
/// directory path under /sys/fs/bpf (not created).
pub fn scratch(prefix: &str) -> (PathBuf, PathBuf) {
    let name = unique_name(prefix);
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    (dir, PathBuf::from("/sys/fs/bpf").join(name))
}

/// What a CLI run printed on stdout.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a CLI run printed on stderr.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that a CLI run failed (`why` when it did not) and said `needle` on stderr.
pub fn assert_refused(out: &std::process::Output, needle: &str, why: &str) {
    assert!(!out.status.success(), "{why}");
    let err = stderr(out);
    assert!(err.contains(needle), "no {needle:?} in {err}");
}

/// Connects from `source` (a 127/8 address), talks before the banner as a bot does, and returns
/// everything the gateway answered.
pub fn pregreet(source: [u8; 4], port: u16) -> String {
    use std::io::Read;
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind source");
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    let mut tcp: TcpStream = socket.into();
    tcp.write_all(b"EHLO bot.example\r\n").expect("write");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    out
}

/// The value of the sample `series` (name and labels) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<u64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Makes a FIFO at `path` (mkfifo(1)): a list file whose reader waits until the test writes.
pub fn mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo (coreutils)");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// The FIFO at `path` opened for writing, once a reader (the daemon reading a list) has opened
/// it: the open returns only then. `None` when no reader came within `within` (the waiting
/// open is then released by a reader of our own, so no thread is left behind).
pub fn fifo_writer_once_read(path: &std::path::Path, within: Duration) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let (tx, rx) = std::sync::mpsc::channel();
    let fifo = path.to_path_buf();
    let opener = std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(&fifo));
    });
    match rx.recv_timeout(within) {
        Ok(Ok(file)) => {
            let _ = opener.join();
            Some(file)
        }
        Ok(Err(e)) => panic!("open {} for writing: {e}", path.display()),
        Err(_) => {
            let _reader = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
            let _ = opener.join();
            None
        }
    }
}

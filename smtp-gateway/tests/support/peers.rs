//! Test peers shared by the integration tests: a scripted backend MTA, a line client, and the
//! daemon under test started through the test kit's launcher.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
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

/// base64("\0user\0secret")
pub const GOOD_PLAIN: &str = "AHVzZXIAc2VjcmV0";

/// A backend that offers AUTH PLAIN, accepts one credential, and accepts any mail; serves
/// `sessions` sessions one after the other and returns every command it saw.
pub fn scripted_backend(
    listener: TcpListener,
    sessions: usize,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..sessions {
            serve_one(&listener, &mut seen);
        }
        seen
    })
}

fn serve_one(listener: &TcpListener, seen: &mut Vec<String>) {
    {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut out = tcp.try_clone().expect("clone");
        let mut input = BufReader::new(tcp);
        out.write_all(b"220 backend.test ESMTP\r\n").ok();
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if input.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let cmd = line.trim_end().to_string();
            if in_data {
                if cmd == "." {
                    in_data = false;
                    out.write_all(b"250 2.0.0 queued\r\n").ok();
                }
                continue;
            }
            seen.push(cmd.clone());
            let upper = cmd.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
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
                in_data = true;
                b"354 go ahead\r\n"
            } else if upper == "QUIT" {
                out.write_all(b"221 bye\r\n").ok();
                return;
            } else {
                b"502 5.5.1 no\r\n"
            };
            out.write_all(reply).ok();
        }
    }
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
}

/// The real daemon with the proxy on a free loopback port; killed, detached and cleaned on drop.
pub struct Gateway {
    /// The running daemon (PID, signals, exit status, its log).
    pub child: DaemonProcess,
    pub dir: PathBuf,
    config: PathBuf,
    pub port: u16,
    /// The metrics endpoint (every gateway gets its own free port).
    pub metrics_port: u16,
    pin_dir: String,
}

impl Gateway {
    pub fn start(tag: &str, backend: std::net::SocketAddr, smtp_extra: &str) -> Self {
        Self::start_under(tag, backend, smtp_extra, &[])
    }

    /// Starts the daemon under `wrapper` (a command prefix such as `setpriv ...`).
    pub fn start_under(
        tag: &str,
        backend: std::net::SocketAddr,
        smtp_extra: &str,
        wrapper: &[&str],
    ) -> Self {
        Self::launch(tag, backend, smtp_extra, "", wrapper)
    }

    /// Starts the daemon with extra `[backend]` keys.
    pub fn start_with_backend(
        tag: &str,
        backend: std::net::SocketAddr,
        smtp_extra: &str,
        backend_extra: &str,
    ) -> Self {
        Self::launch(tag, backend, smtp_extra, backend_extra, &[])
    }

    fn launch(
        tag: &str,
        backend: std::net::SocketAddr,
        smtp_extra: &str,
        backend_extra: &str,
        wrapper: &[&str],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("sgw-life-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let metrics_port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let pin_dir = format!("/sys/fs/bpf/sgw-life-{}-{tag}", std::process::id());
        let config = dir.join("gateway.toml");
        write_config_file(
            &config,
            &pin_dir,
            port,
            metrics_port,
            backend,
            smtp_extra,
            backend_extra,
        );
        let child = DaemonProcess::spawn(
            launcher::wrapped(wrapper, &binary(), &config),
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
            pin_dir,
        };
        gw.wait_log("SMTP listener ready");
        gw
    }

    pub fn write_config(&self, backend: std::net::SocketAddr, smtp_extra: &str) {
        self.write_config_with(backend, smtp_extra, "");
    }

    /// The configuration with extra `[smtp]` and `[backend]` keys (or sections after `[smtp]`).
    pub fn write_config_with(
        &self,
        backend: std::net::SocketAddr,
        smtp_extra: &str,
        backend_extra: &str,
    ) {
        write_config_file(
            &self.config,
            &self.pin_dir,
            self.port,
            self.metrics_port,
            backend,
            smtp_extra,
            backend_extra,
        );
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

    /// Sends `sig` to the daemon by its PID.
    pub fn signal(&self, sig: libc::c_int) {
        let _ = self.child.signal(sig);
    }

    /// Connects and returns the greeting (all its lines).
    pub fn banner(&self) -> String {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut c = Client {
            stream: BufReader::new(tcp),
        };
        c.reply()
    }

    pub fn client(&self) -> Client<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut c = Client {
            stream: BufReader::new(tcp),
        };
        let banner = c.reply();
        assert!(
            banner.lines().last().is_some_and(|l| l.starts_with("220 ")),
            "{banner}"
        );
        c
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // The test may have left its configuration invalid: detach with one naming the pins only.
        let detach = self.dir.join("detach.toml");
        let _ = std::fs::write(
            &detach,
            format!("[dataplane]\npin_dir = \"{}\"\n", self.pin_dir),
        );
        let _ = launcher::detach(&binary(), &detach);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the daemon's configuration: the proxy on `port`, metrics on `metrics_port`, extra
/// `[smtp]` and `[backend]` keys (or sections after `[smtp]`).
fn write_config_file(
    config: &std::path::Path,
    pin_dir: &str,
    port: u16,
    metrics_port: u16,
    backend: std::net::SocketAddr,
    smtp_extra: &str,
    backend_extra: &str,
) {
    let text = format!(
        "[dataplane]\npin_dir = \"{pin_dir}\"\n[smtp]\nhostname = \"gw.test\"\nlisteners = [{{ address = \"127.0.0.1:{port}\" }}]\n{smtp_extra}\n\
         [backend]\nservers = [{{ address = \"{backend}\", identity = \"none\" }}]\n{backend_extra}\n[relay]\naccepted_domains = [\"example.org\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
    );
    std::fs::write(config, text).expect("config");
}

/// Connects from `source` (a 127/8 address), talks before the banner as a bot does, and returns
/// everything the gateway answered.
pub fn pregreet(source: [u8; 4], port: u16) -> String {
    use std::io::Read;
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&std::net::SocketAddr::from((source, 0)).into())
        .expect("bind source");
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    let mut tcp: TcpStream = socket.into();
    tcp.write_all(b"EHLO bot.example\r\n").expect("write");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    out
}

//! What the state-store tests share: a `smtp-sink` backend and a private `redis-server`, each
//! started on loopback (or a unix socket in the test's directory) and stopped by PID in `Drop`,
//! and the three client behaviours the store must remember: a client that delivers (and earns
//! its pass), a pregreeter (auto-ban counts), and a look at the banner (a client the pass cache
//! knows gets `220` at once, one the greet pause applies to gets `220-` first).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::smtp_client::{Client, connect_from};

/// How long a helper process gets to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(10);

/// Waits (bounded) until `connect` succeeds.
fn wait_listening(what: &str, mut connect: impl FnMut() -> bool) {
    let deadline = Instant::now() + LISTEN_WITHIN;
    while !connect() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen within {LISTEN_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `smtp-sink` (package postfix) on 127.0.0.1, stopped by PID on drop.
pub struct Sink {
    /// The process.
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Sink {
    /// Starts a sink on `port`.
    pub fn start(port: u16) -> Sink {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new("smtp-sink")
            .args(["-u", "nobody", "-c"])
            .arg(addr.to_string())
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink (package postfix)");
        let sink = Sink { child, addr };
        wait_listening("smtp-sink", || TcpStream::connect(addr).is_ok());
        sink
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `redis-server` (Debian's package) on a unix socket, no persistence, stopped by PID.
pub struct Redis {
    /// The process, while it runs.
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its working directory.
    dir: PathBuf,
}

impl Redis {
    /// Starts one in `dir` (socket `dir/redis.sock`) and waits until it answers.
    pub fn start(dir: &Path) -> Redis {
        let mut redis = Redis {
            child: None,
            socket: dir.join("redis.sock"),
            dir: dir.to_path_buf(),
        };
        redis.restart();
        redis
    }

    /// Starts it again (empty: it keeps nothing) after [`Self::kill`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server runs already");
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.socket)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (package redis-server; `cargo xtask setup` installs it)");
        self.child = Some(child);
        wait_listening("redis-server", || self.cli(&["PING"]) == "PONG");
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `store.redis_url` for it.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `redis-cli -s SOCKET ARGS...`, its output trimmed ("" when it cannot connect).
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The banner `source` gets (lines joined by `\n`): one `220` line when the pass cache knows
/// the client, `220-` then `220` after the greet pause otherwise. Says QUIT.
pub fn banner(addr: SocketAddr, source: IpAddr) -> String {
    let mut stream = connect_from(addr, source);
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    let mut text = String::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(15);
    // Read until the last banner line (`220 `) arrived.
    while !text.lines().any(|l| l.starts_with("220 ")) {
        assert!(Instant::now() < deadline, "no banner: {text:?}");
        let n = stream.read(&mut buf).expect("read the banner");
        assert!(n > 0, "closed during the banner: {text:?}");
        text.push_str(&String::from_utf8_lossy(buf.get(..n).unwrap_or_default()));
    }
    let _ = stream.write_all(b"QUIT\r\n");
    text.trim_end().replace("\r\n", "\n")
}

/// Delivers one message from `source` (which earns it a pass); panics unless the backend took it.
pub fn deliver(addr: SocketAddr, source: IpAddr) {
    let mut client = Client::connect(addr, source);
    let ehlo = client.cmd("EHLO client.example.net");
    assert!(ehlo.starts_with("250"), "EHLO: {ehlo}");
    let reply = client.send(
        "sender@example.net",
        "user@example.org",
        "Subject: store test\r\n\r\nhello\r\n",
    );
    assert!(reply.starts_with("250"), "DATA: {reply}");
    let _ = client.cmd("QUIT");
}

/// Talks before the greeting from `source`: the gateway answers 521 and closes. Returns what it
/// said.
pub fn pregreet(addr: SocketAddr, source: IpAddr) -> String {
    let mut stream = connect_from(addr, source);
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    stream.write_all(b"EHLO bot.example\r\n").expect("pregreet");
    let mut text = String::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(
            Instant::now() < deadline,
            "the pregreeter was never refused: {text:?}"
        );
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(buf.get(..n).unwrap_or_default())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the pregreet refusal: {e} after {text:?}"),
        }
    }
    assert!(text.contains("521"), "pregreeter not refused: {text:?}");
    text
}

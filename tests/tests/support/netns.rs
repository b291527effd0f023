//! Network-namespace labs for end-to-end tests (run as root).
//!
//! - [`Topology`]: two namespaces (`<prefix>-gw`, `<prefix>-cl`) joined by a veth pair, the
//!   gateway side on 198.18.0.1/24 + 2001:db8::1/64, the client side on the addresses the test asks
//!   for. Only connected routes exist: nothing in them can reach any other network. `Drop` deletes
//!   both namespaces (and with them the veth pair), also when the test panics.
//! - [`in_netns`]: runs a closure on a fresh thread that joined a namespace (the network
//!   namespace is per thread, so the test harness threads are never moved).
//! - [`Listener`]: a TCP listener (IPv4 + IPv6) accepting in a namespace until dropped.
//! - [`connect_from`]: one real TCP connect from a chosen source address, with a timeout.
//! - [`ChildGuard`]: kills a started process by its PID when dropped.
//!
//! Every loop is bounded in iterations and in time.
//!
//! Native XDP on the gateway veth needs nothing on the peer here (Linux 6.18): no dummy XDP
//! program on the client side, no `ethtool -K tx off` (the data plane reads headers only, never
//! checksums); the kernel stack's own TCP traffic and hping3's raw frames both pass and drop as
//! expected.
#![allow(dead_code)] // Each test binary that declares `mod support` uses a different part of it.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Child, Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The gateway side of the veth pair.
pub const GW_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The gateway side of the veth pair (IPv6).
pub const GW_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Polls `check` every `every` until it returns true or `within` has passed; returns whether it
/// became true. At most `within / every + 1` checks.
pub fn wait_until(within: Duration, every: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Runs `command`, panicking with its output unless it exits 0; returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `command` to completion, panicking only if it cannot be started.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// `nsenter --net=/run/netns/<ns> <program>`: runs `program` in the network namespace `ns`
/// without remounting /sys (unlike `ip netns exec`), so bpffs pins made by it outlive it.
pub fn nsenter(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{ns}")).arg(program);
    command
}

/// Joins the network namespace `ns` on the calling thread (only ever called on fresh threads).
fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// Runs `f` on a new thread inside the network namespace `ns` and returns its result (a panic in
/// `f` is propagated).
pub fn in_netns<T, F>(ns: &str, f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Starts `command` (a service made with [`nsenter`] into `ns`) with stdout and stderr in `log`,
/// and waits at most `within` until a connection to `addr` inside `ns` passes `ready`; panics
/// with the log when the service exits or never gets ready. The guard kills it by PID.
pub fn start_service(
    ns: &str,
    mut command: Command,
    log: &std::path::Path,
    what: &str,
    addr: SocketAddr,
    within: Duration,
    ready: fn(TcpStream) -> bool,
) -> ChildGuard {
    let file = File::create(log).unwrap_or_else(|e| panic!("{what} log {}: {e}", log.display()));
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut guard = ChildGuard::new(child, what);
    let up = wait_until(within, Duration::from_millis(50), || {
        assert!(
            matches!(guard.child.try_wait(), Ok(None)),
            "{what} exited:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        in_netns(ns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok_and(ready)
        })
    });
    assert!(
        up,
        "{what} not ready on {addr} within {within:?}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    guard
}

/// Kills the process by its PID (SIGKILL) and reaps it when dropped, unless it already exited.
pub struct ChildGuard {
    pub child: Child,
    pub what: String,
}

impl ChildGuard {
    pub fn new(child: Child, what: impl Into<String>) -> Self {
        Self {
            child,
            what: what.into(),
        }
    }

    /// Waits at most `within` for the process to exit; kills it and panics if it does not.
    pub fn wait_bounded(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut status = None;
        wait_until(within, Duration::from_millis(20), || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        match status {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} did not finish within {within:?}; killed", self.what);
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two namespaces and a veth pair between them; deleted on drop.
pub struct Topology {
    /// Gateway namespace (`/run/netns/<gw_ns>`).
    pub gw_ns: String,
    /// Client namespace.
    pub cl_ns: String,
    /// Gateway-side veth (in `gw_ns`).
    pub gw_if: String,
    /// Client-side veth (in `cl_ns`).
    pub cl_if: String,
    /// Addresses configured on the client veth.
    pub client_addrs: Vec<IpAddr>,
}

impl Topology {
    /// Builds the lab for the test tagged `tag` (at most 5 characters, unique among the tests of
    /// one binary; the process id keeps concurrent test binaries apart). `client_addrs` must lie in
    /// 198.18.0.0/24 or 2001:db8::/64.
    pub fn new(tag: &str, client_addrs: &[IpAddr]) -> Self {
        assert!(
            !tag.is_empty() && tag.len() <= 5 && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "test tag {tag:?}: 1 to 5 ASCII alphanumerics"
        );
        let pid = std::process::id();
        let prefix = format!("sgw{pid}-{tag}");
        let topo = Topology {
            gw_ns: format!("{prefix}-gw"),
            cl_ns: format!("{prefix}-cl"),
            gw_if: format!("g{pid}{tag}"),
            cl_if: format!("c{pid}{tag}"),
            client_addrs: client_addrs.to_vec(),
        };
        assert!(topo.gw_if.len() <= 15 && topo.cl_if.len() <= 15);
        for addr in client_addrs {
            let inside = match addr {
                IpAddr::V4(a) => a.octets()[..3] == [198, 18, 0],
                IpAddr::V6(a) => a.segments()[..4] == [0x2001, 0xdb8, 0, 0],
            };
            assert!(inside, "{addr} is outside the lab's link prefixes");
        }
        // Leftovers of an earlier process that had the same PID and was killed before cleaning up.
        topo.delete_namespaces();
        topo.build();
        topo
    }

    fn build(&self) {
        let (gw, cl) = (&self.gw_ns, &self.cl_ns);
        for ns in [gw, cl] {
            run_ok(Command::new("ip").args(["netns", "add", ns]));
        }
        // Created directly inside the namespaces: the names never exist in the host namespace.
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &self.gw_if,
            "netns",
            gw,
            "type",
            "veth",
            "peer",
            "name",
            &self.cl_if,
            "netns",
            cl,
        ]));
        for (ns, ifname) in [(gw, &self.gw_if), (cl, &self.cl_if)] {
            // No duplicate address detection at all, so the link-local addresses are never
            // tentative either; no router solicitations: the lab stays silent.
            run_ok(nsenter(ns, "sysctl").args([
                "-q",
                "-w",
                &format!("net.ipv6.conf.{ifname}.accept_dad=0"),
                &format!("net.ipv6.conf.{ifname}.router_solicitations=0"),
            ]));
            run_ok(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        let add = |ns: &str, ifname: &str, addr: String| {
            let mut args = vec!["-n", ns, "addr", "add", &addr, "dev", ifname];
            if addr.contains(':') {
                args.push("nodad");
            }
            run_ok(Command::new("ip").args(&args));
        };
        add(gw, &self.gw_if, format!("{GW_V4}/24"));
        add(gw, &self.gw_if, format!("{GW_V6}/64"));
        for addr in &self.client_addrs {
            let len = if addr.is_ipv4() { 24 } else { 64 };
            add(cl, &self.cl_if, format!("{addr}/{len}"));
        }
        for (ns, ifname) in [(gw, &self.gw_if), (cl, &self.cl_if)] {
            run_ok(Command::new("ip").args(["-n", ns, "link", "set", ifname, "up"]));
        }
        for (ns, ifname) in [(gw, &self.gw_if), (cl, &self.cl_if)] {
            let usable = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
                let up = run_ok(Command::new("ip").args(["-n", ns, "-o", "link", "show", ifname]));
                let tentative = run_ok(Command::new("ip").args([
                    "-n",
                    ns,
                    "-o",
                    "addr",
                    "show",
                    "dev",
                    ifname,
                    "tentative",
                ]));
                up.contains("LOWER_UP") && tentative.trim().is_empty()
            });
            assert!(usable, "{ns}/{ifname} did not come up within 10s");
        }
    }

    fn delete_namespaces(&self) {
        for ns in [&self.gw_ns, &self.cl_ns] {
            if std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
                let _ = run(Command::new("ip").args(["netns", "del", ns]));
            }
        }
    }

    /// The gateway's listening address for the family of `src`.
    pub fn gw_addr(src: IpAddr, port: u16) -> SocketAddr {
        match src {
            IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(GW_V4), port),
            IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(GW_V6), port),
        }
    }

    /// One TCP connect from `src` (in the client namespace) to the gateway's `port`.
    pub fn connect(&self, src: IpAddr, port: u16, timeout: Duration) -> io::Result<SocketAddr> {
        connect_from(&self.cl_ns, src, Self::gw_addr(src, port), timeout)
    }

    /// A connect from `src` to `port` must time out within `timeout`: its SYN was dropped
    /// silently (no SYN-ACK, and no RST, which would be "connection refused"). The error says
    /// what happened instead; callers add their own context (lists, logs).
    pub fn expect_dropped(&self, src: IpAddr, port: u16, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        match self.connect(src, port, timeout) {
            Ok(_) => Err(format!(
                "{src} connected to port {port}; it must be dropped"
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) || started.elapsed() >= timeout =>
            {
                Ok(())
            }
            Err(e) => Err(format!(
                "{src} got {e} after {:?} (a drop is a timeout, not a refusal)",
                started.elapsed()
            )),
        }
    }

    /// A connect from `src` to `port` must complete within `timeout`.
    pub fn expect_connects(&self, src: IpAddr, port: u16, timeout: Duration) -> Result<(), String> {
        self.connect(src, port, timeout)
            .map(|_| ())
            .map_err(|e| format!("{src} must connect to port {port}: {e}"))
    }

    /// The id of the XDP program attached to `gw_if` and its mode (`ip -j -d link show`: 1 is
    /// native/driver), or `None` when no program is attached.
    pub fn gw_xdp(&self) -> Option<(u64, u64)> {
        let out = run_ok(Command::new("ip").args([
            "-j",
            "-d",
            "-n",
            &self.gw_ns,
            "link",
            "show",
            "dev",
            &self.gw_if,
        ]));
        let json: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j link show: {e}: {out}"));
        let xdp = json.get(0)?.get("xdp")?;
        let id = xdp.get("prog")?.get("id")?.as_u64()?;
        let mode = xdp.get("mode").and_then(|m| m.as_u64()).unwrap_or(0);
        Some((id, mode))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.delete_namespaces();
    }
}

/// One TCP connect from `src` to `dst` inside namespace `ns`, giving up after `timeout`. Returns
/// the local address of the established connection (then closed).
pub fn connect_from(
    ns: &str,
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<SocketAddr> {
    in_netns(ns, move || {
        let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        socket.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
        socket.connect_timeout(&SockAddr::from(dst), timeout)?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("local address is not an IP socket address"))?;
        // Close with RST: no FIN_WAIT/TIME_WAIT state left behind between checks.
        socket.set_linger(Some(Duration::ZERO))?;
        Ok(local)
    })
}

/// A TCP listener on `port` (IPv4 0.0.0.0 and IPv6 [::], v6-only) in a namespace, accepting and
/// closing connections until dropped. Remembers the peer address of every accepted connection.
pub struct Listener {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<JoinHandle<()>>,
}

/// Longest a listener thread lives, whatever happens to the test.
const LISTENER_LIFETIME: Duration = Duration::from_secs(600);

impl Listener {
    /// Starts listening in `ns`; returns once both sockets are bound and listening.
    pub fn start(ns: &str, port: u16) -> Self {
        let (v4, v6) = in_netns(ns, move || {
            let v4 = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
                .unwrap_or_else(|e| panic!("bind 0.0.0.0:{port}: {e}"));
            let v6 = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).expect("socket");
            v6.set_only_v6(true).expect("IPV6_V6ONLY");
            v6.set_reuse_address(true).expect("SO_REUSEADDR");
            v6.bind(&SockAddr::from(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                port,
            )))
            .unwrap_or_else(|e| panic!("bind [::]:{port}: {e}"));
            v6.listen(128).expect("listen");
            (v4, TcpListener::from(v6))
        });
        // Sockets keep the namespace they were created in: the accept loop can run anywhere.
        for l in [&v4, &v6] {
            l.set_nonblocking(true).expect("nonblocking");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, peers) = (stop.clone(), peers.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < LISTENER_LIFETIME {
                    let mut idle = true;
                    for l in [&v4, &v6] {
                        if let Ok((conn, peer)) = l.accept() {
                            idle = false;
                            peers.lock().expect("peers").push(peer);
                            drop::<TcpStream>(conn);
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        };
        Listener {
            stop,
            peers,
            thread: Some(thread),
        }
    }

    /// Whether a connection from exactly `peer` was accepted, waiting at most `within`.
    pub fn accepted(&self, peer: SocketAddr, within: Duration) -> bool {
        wait_until(within, Duration::from_millis(10), || {
            self.peers.lock().expect("peers").contains(&peer)
        })
    }

    /// Connections accepted from address `ip` so far.
    pub fn accepted_from(&self, ip: IpAddr) -> usize {
        self.peers
            .lock()
            .expect("peers")
            .iter()
            .filter(|p| p.ip() == ip)
            .count()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

//! `smtp-gateway top` as an operator runs it: the real binary on real pinned maps whose counters
//! the XDP program itself wrote. Each test loads the program unattached into a private pin
//! directory and runs it on crafted SYNs through `BPF_PROG_TEST_RUN` (no interface, no traffic),
//! then runs the binary on those pins: once in a pipe (the plain and JSON frames) and once under
//! a real pseudo-terminal (the live view, its keys, and the terminal given back). Needs root.

use std::{
    io::Write,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use aya::programs::{TestRun, TestRunOptions};
use peers::{stderr, stdout};
use smtp_gateway::{config::Config, dataplane::loader};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-gateway");

/// `xdp_action::XDP_DROP` and `XDP_PASS`.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Removes a test's pins when dropped, panic or not.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = loader::detach(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0.display());
        }
    }
}

/// A private config and pin directory, with the XDP program loaded (unattached) on its maps.
struct Sandbox {
    dir: PathBuf,
    config: PathBuf,
    /// `None` for a sandbox without any pinned state.
    program: Option<aya::Ebpf>,
    // Last: the pins go after the program's handles are closed.
    _pins: PinGuard,
}

impl Sandbox {
    /// Config and pin dir only: nothing pinned.
    fn empty() -> Self {
        let (dir, pin_dir) = peers::scratch("sgw-top");
        let _ = loader::detach(&pin_dir);
        let config = dir.join("gateway.toml");
        let text = format!(
            "[dataplane]\npin_dir = \"{}\"\n[dataplane.capacity]\nblock_v4 = 1024\nblock_v6 = 1024\nblock_net_v4 = 256\nblock_net_v6 = 256\nrate_sources = 1024\nsource_stats = 1024\n[metrics]\nenabled = false\n",
            pin_dir.display()
        );
        std::fs::write(&config, text).expect("write config");
        Self {
            dir,
            config,
            program: None,
            _pins: PinGuard(pin_dir),
        }
    }

    /// Pinned maps with the program loaded on them, configured as the daemon would.
    fn with_program() -> Self {
        let mut sb = Self::empty();
        let config = Config::load(&sb.config).expect("load config");
        let (ebpf, mut dp) = loader::load_unattached(&config.dataplane).expect("load XDP program");
        dp.apply_config(&config.dataplane)
            .expect("apply the configuration");
        sb.program = Some(ebpf);
        sb
    }

    /// Runs the program `times` on `frame`, asserting its action each time.
    fn send(&mut self, frame: &[u8], times: usize, action: u32) {
        let ebpf = self.program.as_mut().expect("sandbox with a program");
        let program = loader::loaded_program(ebpf).expect("program");
        for _ in 0..times {
            let got = program
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN")
                .return_value;
            assert_eq!(got, action, "XDP action for a {}-byte frame", frame.len());
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("-c").arg(&self.config);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("run smtp-gateway")
    }

    /// The traffic every test looks at:
    ///
    /// | source      | frames          | packets | SYNs | drops | bytes |
    /// |-------------|-----------------|---------|------|-------|-------|
    /// | 198.18.0.7  | 3 SYNs          | 3       | 3    | 0     | 162   |
    /// | 198.18.0.9  | 5 SYNs, blocked | 5       | 5    | 5     | 270   |
    /// | 2001:db8::7 | 8 SYNs          | 8       | 8    | 0     | 592   |
    /// | 198.18.0.8  | 2 ACKs          | 2       | 0    | 0     | 108   |
    fn traffic() -> Self {
        let mut sb = Self::with_program();
        let out = sb.run(&["block", "add", "198.18.0.9", "--reason", "test"]);
        assert!(out.status.success(), "{}", stderr(&out));
        sb.send(&tcp_v4([198, 18, 0, 7], TCP_SYN), 3, XDP_PASS);
        sb.send(&tcp_v4([198, 18, 0, 9], TCP_SYN), 5, XDP_DROP);
        sb.send(&tcp_v6("2001:db8::7", TCP_SYN), 8, XDP_PASS);
        sb.send(&tcp_v4([198, 18, 0, 8], TCP_ACK), 2, XDP_PASS);
        sb
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ethernet + IPv4 (20 bytes) + TCP (20 bytes) to 198.18.0.25:25. 54 bytes.
fn tcp_v4(src: [u8; 4], flags: u8) -> Vec<u8> {
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[198, 18, 0, 25]);
    let sum = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&tcp(flags));
    f
}

/// Ethernet + IPv6 (40 bytes) + TCP (20 bytes) to [2001:db8::25]:25. 74 bytes.
fn tcp_v6(src: &str, flags: u8) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().expect("IPv6 source");
    let dst: std::net::Ipv6Addr = "2001:db8::25".parse().expect("IPv6 destination");
    let mut f = ethernet(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&tcp(flags));
    f
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Source port 40000, destination 25, no options; the program reads no checksum here.
fn tcp(flags: u8) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&25u16.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t
}

/// The IPv4 header checksum.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The source rows of a plain frame: the whitespace-separated cells of each line under the
/// `SOURCE` header.
fn table(frame: &str) -> Vec<Vec<String>> {
    frame
        .lines()
        .skip_while(|l| !l.starts_with("SOURCE"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The packet count of `verdict` in a plain frame's header.
fn verdict(frame: &str, verdict: &str) -> Option<u64> {
    let words: Vec<&str> = frame.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == verdict)
        .and_then(|i| words.get(i + 1)?.parse().ok())
}

#[test]
fn once_prints_the_kernel_counters_sorted_as_asked() {
    let sb = Sandbox::traffic();

    let out = sb.run(&["top", "--once", "--sort", "drops"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let frame = stdout(&out);
    assert!(
        !frame.contains('\x1b'),
        "escape codes in a plain frame:\n{frame}"
    );
    assert!(
        frame.contains("4 sources tracked, sorted by drops"),
        "{frame}"
    );
    assert_eq!(verdict(&frame, "passed"), Some(13), "{frame}");
    assert_eq!(verdict(&frame, "dropped_exact"), Some(5), "{frame}");
    assert_eq!(verdict(&frame, "rate_limited"), Some(0), "{frame}");
    let header: Vec<&str> = frame
        .lines()
        .find(|l| l.starts_with("SOURCE"))
        .expect("table header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "SOURCE", "PACKETS", "PKT/S", "SYNS", "DROPS", "DROP/S", "BYTES", "LAST", "SEEN"
        ],
        "no session columns without session data"
    );
    // SOURCE PACKETS PKT/S SYNS DROPS DROP/S BYTES LAST-SEEN; no rates from a single snapshot.
    let rows = table(&frame);
    let without_last_seen: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| r.iter().take(7).map(String::as_str).collect())
        .collect();
    assert_eq!(
        without_last_seen,
        [
            ["198.18.0.9", "5", "-", "5", "5", "-", "270"],
            ["2001:db8::7", "8", "-", "8", "0", "-", "592"],
            ["198.18.0.7", "3", "-", "3", "0", "-", "162"],
            ["198.18.0.8", "2", "-", "0", "0", "-", "108"],
        ],
        "{frame}"
    );
    for row in &rows {
        // Seen moments ago: "0s" to "29s", however slow the machine.
        let seen = row
            .get(7)
            .and_then(|s| s.strip_suffix('s')?.parse::<u64>().ok());
        assert!(seen.is_some_and(|s| s < 30), "{frame}");
    }

    let order = |args: &[&str]| -> Vec<String> {
        let out = sb.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        table(&stdout(&out))
            .into_iter()
            .map(|r| r[0].clone())
            .collect()
    };
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["top", "--once", "--sort", "packets"],
            &["2001:db8::7", "198.18.0.9", "198.18.0.7", "198.18.0.8"],
        ),
        (
            &["top", "--once", "--sort", "bytes", "--top", "2"],
            &["2001:db8::7", "198.18.0.9"],
        ),
        (
            &["top", "--once", "--sort", "syns"],
            &["2001:db8::7", "198.18.0.9", "198.18.0.7", "198.18.0.8"],
        ),
        // Not a terminal: one plain frame even without --once.
        (&["top", "--sort", "drops", "--top", "1"], &["198.18.0.9"]),
    ];
    for (args, expected) in cases {
        assert_eq!(order(args), expected, "{args:?}");
    }
}

#[test]
fn once_json_is_the_sorted_snapshot() {
    let sb = Sandbox::traffic();
    let out = sb.run(&["top", "--once", "--json", "--sort", "drops", "--top", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["sort"], "drops");
    assert_eq!(doc["tracked_sources"], 4);
    let sources = doc["sources"].as_array().expect("sources");
    let order: Vec<&str> = sources
        .iter()
        .map(|s| s["source"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(order, ["198.18.0.9", "2001:db8::7", "198.18.0.7"]);
    let blocked = &sources[0];
    assert_eq!(
        (
            &blocked["packets"],
            &blocked["syns"],
            &blocked["drops"],
            &blocked["bytes"]
        ),
        (
            &serde_json::json!(5),
            &serde_json::json!(5),
            &serde_json::json!(5),
            &serde_json::json!(270)
        )
    );
    assert!(blocked["sessions"].is_null() && blocked["last_verdict"].is_null());
    let passed = doc["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|v| v["verdict"] == "passed")
        .expect("passed verdict");
    assert_eq!(passed["packets"], 13);

    let out = sb.run(&["top", "--json"]);
    assert!(!out.status.success(), "--json without --once is refused");
}

#[test]
fn without_pinned_maps_it_says_what_to_do() {
    let sb = Sandbox::empty();
    let out = sb.run(&["top", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("start `smtp-gateway run` first"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
}

/// A pseudo-terminal: the test holds the master; the child gets the slave as its controlling
/// terminal, stdin and stdout.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    /// Everything the child wrote.
    output: Vec<u8>,
}

impl Pty {
    fn open() -> Self {
        Self::sized(30, 140)
    }

    /// A pseudo-terminal that reports `rows` x `cols` (0 x 0: nobody set its size).
    fn sized(rows: u16, cols: u16) -> Self {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors into the provided integers; no name buffer.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned by nobody else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        Self {
            master,
            slave,
            output: Vec::new(),
        }
    }

    /// The slave's local modes (ICANON, ECHO... are cleared by raw mode).
    fn lflag(&self) -> libc::tcflag_t {
        // SAFETY: tcgetattr fills a termios we own from a valid descriptor.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(self.slave.as_raw_fd(), &mut t), 0);
            t.c_lflag
        }
    }

    /// Starts `command` on the slave, as the leader of a new session whose terminal it is.
    fn spawn(&self, mut command: Command, log: &std::path::Path) -> Running {
        let fd = |f: &OwnedFd| Stdio::from(f.try_clone().expect("dup pty"));
        command
            .stdin(fd(&self.slave))
            .stdout(fd(&self.slave))
            .stderr(std::fs::File::create(log).expect("log file"));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Running(command.spawn().expect("start smtp-gateway top"))
    }

    /// Reads what the child wrote for up to `timeout`, until `done` holds on all of it.
    fn read_until(&mut self, timeout: Duration, mut done: impl FnMut(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.output) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut poll = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(100) as libc::c_int;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut poll, 1, ms) } <= 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            // SAFETY: reads into a buffer we own, at most its length.
            let n =
                unsafe { libc::read(self.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return done(&self.output);
            }
            self.output.extend_from_slice(&buf[..n as usize]);
        }
        true
    }

    fn type_keys(&self, keys: &[u8]) {
        let mut master = std::fs::File::from(self.master.try_clone().expect("dup master"));
        master.write_all(keys).expect("type on the terminal");
    }

    /// Waits up to 5 s for `child` to exit, draining the terminal meanwhile (a full pty would
    /// block the child's last writes); panics naming `what` if it does not.
    fn wait_exit(&mut self, child: &mut Running, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.read_until(Duration::from_millis(50), |_| false);
            if let Some(status) = child.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: top did not end within 5 s: {:?}",
                self.text()
            );
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}

/// A `top` started by a test; killed by PID on drop if still running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn position(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

const ENTER_ALT: &[u8] = b"\x1b[?1049h";
const LEAVE_ALT: &[u8] = b"\x1b[?1049l";

/// How a test ends the live view.
enum Quit {
    Keys(&'static [u8]),
    Signal(libc::c_int),
}

#[test]
fn live_view_sorts_on_keys_quits_and_gives_the_terminal_back() {
    let sb = Sandbox::traffic();
    let cases = [
        ("q", Quit::Keys(b"q")),
        ("Esc", Quit::Keys(b"\x1b")),
        ("Ctrl-C", Quit::Keys(b"\x03")),
        ("SIGTERM", Quit::Signal(libc::SIGTERM)),
    ];
    for (name, quit) in cases {
        let mut pty = Pty::open();
        let cooked = pty.lflag();
        assert_ne!(
            cooked & libc::ICANON,
            0,
            "a new pty starts in canonical mode"
        );
        let mut command = sb.command();
        command.args(["top", "--interval", "200ms", "--sort", "packets"]);
        let log = sb.dir.join("top.log");
        let mut top = pty.spawn(command, &log);
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

        assert!(
            pty.read_until(Duration::from_secs(10), |o| contains(o, b"198.18.0.9")),
            "{name}: the source never appeared; screen: {:?}; stderr: {}",
            pty.text(),
            log_text()
        );
        assert!(
            contains(&pty.output, ENTER_ALT),
            "{name}: alternate screen entered"
        );
        assert!(
            contains(&pty.output, b"sorted by packets"),
            "{name}: {:?}",
            pty.text()
        );
        assert_eq!(
            pty.lflag() & (libc::ICANON | libc::ECHO),
            0,
            "{name}: raw mode while live"
        );

        pty.type_keys(b"d");
        assert!(
            pty.read_until(Duration::from_secs(5), |o| contains(o, b"sorted by drops")),
            "{name}: `d` did not sort by drops: {:?}",
            pty.text()
        );
        // The drops column title is highlighted (reverse video) once sorted by it.
        assert!(
            contains(&pty.output, b"\x1b[7mDROPS\x1b[27m"),
            "{name}: sort column not highlighted: {:?}",
            pty.text()
        );
        // Two refreshes later the rates are measured: 0.0/s, nothing was sent meanwhile.
        assert!(
            pty.read_until(Duration::from_secs(5), |o| contains(o, b"0.0/s")),
            "{name}: no rates after a refresh: {:?}",
            pty.text()
        );

        match quit {
            Quit::Keys(keys) => pty.type_keys(keys),
            // SAFETY: kill(2) on our own child's PID.
            Quit::Signal(sig) => unsafe {
                libc::kill(top.0.id() as libc::pid_t, sig);
            },
        }
        let status = pty.wait_exit(&mut top, name);
        pty.read_until(Duration::from_millis(200), |_| false);
        assert!(status.success(), "{name}: {status}; stderr: {}", log_text());
        let entered = position(&pty.output, ENTER_ALT).expect("entered");
        let left = position(&pty.output, LEAVE_ALT)
            .unwrap_or_else(|| panic!("{name}: alternate screen never left: {:?}", pty.text()));
        assert!(left > entered, "{name}");
        assert!(
            !contains(&pty.output[left..], b"198.18.0.9"),
            "{name}: drew after leaving the alternate screen"
        );
        assert_eq!(pty.lflag(), cooked, "{name}: terminal modes restored");
    }
}

#[test]
fn a_terminal_that_reports_no_size_gets_frames_all_the_same() {
    let sb = Sandbox::traffic();
    for args in [&["top", "--once"][..], &["top", "--interval", "200ms"][..]] {
        let mut pty = Pty::sized(0, 0);
        let mut command = sb.command();
        command.args(args);
        let log = sb.dir.join("top.log");
        let mut top = pty.spawn(command, &log);
        assert!(
            pty.read_until(Duration::from_secs(10), |o| contains(o, b"198.18.0.9")),
            "{args:?}: no source on a 0 x 0 terminal: {:?}; stderr: {}",
            pty.text(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if args.contains(&"--interval") {
            pty.type_keys(b"q");
        }
        let status = pty.wait_exit(&mut top, &format!("{args:?}"));
        assert!(status.success(), "{args:?}: {status}");
    }
}

#[test]
fn live_view_without_pinned_maps_leaves_the_terminal_alone() {
    let sb = Sandbox::empty();
    let mut pty = Pty::open();
    let cooked = pty.lflag();
    let mut command = sb.command();
    command.arg("top");
    let log = sb.dir.join("top.log");
    let mut top = pty.spawn(command, &log);
    let status = pty.wait_exit(&mut top, "no maps");
    assert_eq!(status.code(), Some(1));
    let err = std::fs::read_to_string(&log).expect("log");
    assert!(err.contains("start `smtp-gateway run` first"), "{err}");
    assert!(!contains(&pty.output, ENTER_ALT), "{:?}", pty.text());
    assert_eq!(pty.lflag(), cooked);
}

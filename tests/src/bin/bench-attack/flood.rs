//! The SYN flood's sender: TCP SYN frames written to the attacker's veth through an `AF_PACKET`
//! socket (qdisc bypassed, as trafgen does), each from a random source of the flood's range with a
//! random port and sequence number and valid checksums, sent `BATCH` at a time with one
//! `sendmmsg(2)` per batch, batches evenly spaced for the configured rate.
//!
//! Why not trafgen (which earlier runs used): its `--gap` sends one packet per timer wake-up, and
//! on this VM the wake-ups cost far more than the packets: 50,000 SYNs into a veth took 1.27 s of
//! CPU with `--gap 40us` against 0.16 s sent back to back (`trafgen --num 50000` with and without
//! `--gap`, `/usr/bin/time`, 2026-12-04; `docs/bench/tried.md`). The attacker shares the legit
//! load's 2 CPUs, so that pacing cost, which a remote attacker never puts on the defender, came
//! off the clean rate; its `--rate` sends each second's packets in one burst instead. One wake-up
//! per batch of 64 (about 190 a second at 12,000 SYN/s) keeps the flood steady at the
//! millisecond scale with the pacing cost gone. The sender's CPU time (its thread's, which holds
//! the veth delivery and whatever the receiving side runs in that context) is reported.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use smtp_gateway_tests::syn_frame::{SYN_FRAME_LEN, Syn};

/// Frames per `sendmmsg(2)` call (and per wake-up).
pub const BATCH: usize = 64;

/// What a flood sends.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Sources: `net` with its low `32 - prefix_len` bits random.
    pub net: Ipv4Addr,
    pub prefix_len: u8,
    pub dst: SocketAddrV4,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// Frames per second.
    pub rate: u64,
    /// The sending thread's scheduling priority (nice value).
    pub nice: i32,
    /// Bounds: the flood stops after this many frames or this long, whichever comes first.
    pub max_frames: u64,
    pub max_time: Duration,
}

/// A running flood; stopped (and its thread joined) by [`Sender::stop`] or when dropped.
pub struct Sender {
    stop: Arc<AtomicBool>,
    /// The sending thread's CPU time so far (ns), updated after every batch.
    cpu_ns: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl Sender {
    /// Starts sending `spec` from a thread that joins network namespace `ns` and writes to its
    /// interface `ifname`.
    pub fn start(ns: &str, ifname: &str, spec: Spec) -> Result<Self> {
        if spec.prefix_len > 32 || spec.rate == 0 {
            bail!("flood: bad spec {spec:?}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns}");
        let ifname = ifname.to_string();
        let thread = {
            let (stop, cpu_ns) = (stop.clone(), cpu_ns.clone());
            std::thread::spawn(move || {
                let socket = std::fs::File::open(&path)
                    .with_context(|| format!("opening {path}"))
                    .and_then(|ns| {
                        // SAFETY: a valid namespace fd; CLONE_NEWNET changes only this thread.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            return Err(std::io::Error::last_os_error())
                                .context(format!("setns({path})"));
                        }
                        // SAFETY: changes only this thread's priority.
                        unsafe {
                            libc::setpriority(
                                libc::PRIO_PROCESS,
                                libc::gettid() as libc::id_t,
                                spec.nice,
                            )
                        };
                        packet_socket(&ifname)
                    });
                let socket = match socket {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                send_loop(&socket, spec, &stop, &cpu_ns)
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("flood sender: {e}"),
            Err(_) => bail!("flood sender: no socket after 5 s"),
        }
        Ok(Self {
            stop,
            cpu_ns,
            thread: Some(thread),
        })
    }

    /// The sending thread's CPU time so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        self.cpu_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Whether the thread has ended (its bounds ran out, or it failed).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the flood; the frames it sent.
    pub fn stop(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// An `AF_PACKET` raw socket bound to `ifname` (in this thread's namespace) that receives
/// nothing and bypasses the qdisc.
fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname).context("interface name")?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("interface {ifname}"));
    }
    // SAFETY: plain socket creation; protocol 0: the socket receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `fd` is a new socket we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
    }
    // SAFETY: a zeroed sockaddr_ll with family and interface set; the size passed is its own.
    let rc = unsafe {
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("bind to {ifname}"));
    }
    Ok(socket)
}

/// This thread's CPU time (ns).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Sends batches until `stop` or a bound; the frames sent.
fn send_loop(socket: &OwnedFd, spec: Spec, stop: &AtomicBool, cpu_ns: &AtomicU64) -> Result<u64> {
    let interval = Duration::from_secs_f64(BATCH as f64 / spec.rate as f64);
    let host_mask = u32::MAX
        .checked_shr(u32::from(spec.prefix_len))
        .unwrap_or(0);
    let net = u32::from(spec.net) & !host_mask;
    // xorshift64*, seeded from the clock: the frames only have to differ.
    let mut state = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64))
        | 1;
    let mut random = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let started = Instant::now();
    let cpu_start = thread_cpu_ns();
    let mut frames = vec![[0u8; SYN_FRAME_LEN]; BATCH];
    let mut sent = 0u64;
    let mut next = started;
    while !stop.load(Ordering::Relaxed)
        && sent < spec.max_frames
        && started.elapsed() < spec.max_time
    {
        let count = BATCH.min((spec.max_frames - sent) as usize);
        for frame in frames.iter_mut().take(count) {
            let r = random();
            *frame = Syn {
                dst_mac: spec.dst_mac,
                src_mac: spec.src_mac,
                src: SocketAddrV4::new(
                    Ipv4Addr::from(net | (r as u32 & host_mask)),
                    1024 + ((r >> 32) as u16 % (65535 - 1024 + 1)),
                ),
                dst: spec.dst,
                seq: (r >> 16) as u32,
                window: 64240,
            }
            .frame();
        }
        sent += send_batch(socket, &mut frames[..count])?;
        cpu_ns.store(thread_cpu_ns().saturating_sub(cpu_start), Ordering::Relaxed);
        // Evenly spaced batches; a batch that is late goes at once, but lost time is not made up
        // with a burst.
        next += interval;
        let now = Instant::now();
        match next.checked_duration_since(now) {
            Some(wait) => std::thread::sleep(wait),
            None => next = now,
        }
    }
    Ok(sent)
}

/// Sends `frames` with one `sendmmsg(2)`; the frames the kernel took. A full device queue
/// (ENOBUFS) takes none: counted as 0, as a NIC drops what it cannot queue.
fn send_batch(socket: &OwnedFd, frames: &mut [[u8; SYN_FRAME_LEN]]) -> Result<u64> {
    let mut iovecs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: f.len(),
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: a zeroed msghdr is valid (no name, no control data).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            }
        })
        .collect();
    // SAFETY: `messages` points at `iovecs`, which point at `frames`: all live across the call.
    let n = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            messages.as_mut_ptr(),
            messages.len() as libc::c_uint,
            0,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOBUFS) {
            return Ok(0);
        }
        return Err(e).context("sendmmsg");
    }
    Ok(n as u64)
}

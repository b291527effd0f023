//! Reading the XDP program's trace lines (`why --follow`): the program writes them with aya-log
//! into its ring buffer (`AYA_LOGS`, one per loaded program, not pinned: it lives as long as the
//! program); [`Follower`] opens the ring buffer of each attached program by program id and turns
//! each record back into a [`TraceLine`].
//!
//! The ring buffer has one read position, shared by every reader: two followers at once share
//! the lines between them (each keeps only those of its own source, so each may miss some). The
//! daemon never reads it.

use std::{
    net::IpAddr,
    os::fd::AsRawFd,
    sync::mpsc::{Receiver, Sender, channel},
    time::Duration,
};

use aya_log::EbpfLogger;

use super::DataplaneError;

/// One packet of a traced source, as the program logged it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TraceLine {
    /// The source address.
    pub src: IpAddr,
    /// TCP destination port.
    pub dport: u16,
    /// The TCP flags byte.
    pub flags: u8,
    /// The verdict (`smtp_gateway_common::Verdict::name`).
    pub verdict: String,
}

impl TraceLine {
    /// Parses the program's message, `trace src=<ip> dport=<n> flags=<hex> verdict=<name>`;
    /// anything else is `None`.
    pub fn parse(message: &str) -> Option<Self> {
        let rest = message.strip_prefix("trace ")?;
        let mut src = None;
        let mut dport = None;
        let mut flags = None;
        let mut verdict = None;
        for field in rest.split(' ') {
            let (name, value) = field.split_once('=')?;
            match name {
                "src" => src = value.parse().ok(),
                "dport" => dport = value.parse().ok(),
                "flags" => flags = u8::from_str_radix(value, 16).ok(),
                "verdict" if !value.is_empty() && value.len() <= 32 => {
                    verdict = Some(value.to_string())
                }
                _ => return None,
            }
        }
        Some(Self {
            src: src?,
            dport: dport?,
            flags: flags?,
            verdict: verdict?,
        })
    }

    /// The set TCP flags by name, e.g. `SYN` or `ACK|PSH` (`-` for none).
    pub fn flag_names(&self) -> String {
        const NAMES: [(u8, &str); 8] = [
            (0x02, "SYN"),
            (0x10, "ACK"),
            (0x08, "PSH"),
            (0x01, "FIN"),
            (0x04, "RST"),
            (0x20, "URG"),
            (0x40, "ECE"),
            (0x80, "CWR"),
        ];
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join("|")
        }
    }
}

/// The `log::Log` aya-log hands each record to: parses it and passes it on.
struct Sink(Sender<TraceLine>);

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Some(line) = TraceLine::parse(&record.args().to_string()) {
            // The receiver lives as long as the follower that owns this sink.
            let _ = self.0.send(line);
        }
    }

    fn flush(&self) {}
}

/// Readers of the trace lines of one or more programs.
pub struct Follower {
    loggers: Vec<EbpfLogger<Sink>>,
    lines: Receiver<TraceLine>,
}

impl Follower {
    /// Opens the ring buffer of each program in `program_ids` (see `trace::program_ids`).
    pub fn attach(program_ids: &[u32]) -> Result<Self, DataplaneError> {
        let (tx, lines) = channel();
        let mut loggers = Vec::new();
        for id in program_ids {
            let logger =
                EbpfLogger::init_from_id_with_logger(*id, Sink(tx.clone())).map_err(|e| {
                    DataplaneError::Trace(format!("reading the log of program {id}: {e}"))
                })?;
            loggers.push(logger);
        }
        Ok(Self { loggers, lines })
    }

    /// Opens the ring buffer of a program loaded by this process (tests and benchmarks).
    pub fn of_loaded(ebpf: &mut aya::Ebpf) -> Result<Self, DataplaneError> {
        let (tx, lines) = channel();
        let logger = EbpfLogger::init_with_logger(ebpf, Sink(tx))
            .map_err(|e| DataplaneError::Trace(format!("reading the program's log: {e}")))?;
        Ok(Self {
            loggers: vec![logger],
            lines,
        })
    }

    /// Waits at most `timeout` for lines, then returns every line written so far (possibly none;
    /// a signal ends the wait early).
    pub fn poll(&mut self, timeout: Duration) -> Vec<TraceLine> {
        let mut fds: Vec<libc::pollfd> = self
            .loggers
            .iter()
            .map(|l| libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs we own. The outcome does
        // not matter: the buffers are read below either way (EINTR: a signal to look at).
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        self.drain()
    }

    /// Every line written so far, without waiting.
    pub fn drain(&mut self) -> Vec<TraceLine> {
        for logger in &mut self.loggers {
            logger.flush();
        }
        self.lines.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_programs_lines() {
        let line = TraceLine::parse("trace src=198.18.0.7 dport=25 flags=2 verdict=passed")
            .expect("a trace line");
        assert_eq!(line.src, "198.18.0.7".parse::<IpAddr>().expect("ip"));
        assert_eq!((line.dport, line.flags), (25, 2));
        assert_eq!(line.verdict, "passed");
        assert_eq!(line.flag_names(), "SYN");
        let v6 = TraceLine::parse("trace src=2001:db8::7 dport=587 flags=18 verdict=dropped_exact")
            .expect("a v6 line");
        assert_eq!(v6.flag_names(), "ACK|PSH");
        for bad in [
            "",
            "trace",
            "src=198.18.0.7 dport=25 flags=2 verdict=passed",
            "trace src=x dport=25 flags=2 verdict=passed",
            "trace src=198.18.0.7 dport=25 flags=2",
            "trace src=198.18.0.7 dport=25 flags=2 verdict=passed extra=1",
        ] {
            assert_eq!(TraceLine::parse(bad), None, "{bad:?}");
        }
    }
}

//! The backend every contender relays to: Postfix's `smtp-sink`, counting what it receives.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::proc::{Cgroup, Proc, free_port, wait_listening};

/// `smtp-sink -u nobody -c 127.0.0.1:PORT 1024`, its `-c` counters going to a file, in its own
/// cgroup.
pub struct Sink {
    /// Held for its Drop: the process stops with this value.
    _proc: Proc,
    pub cgroup: Cgroup,
    pub addr: SocketAddr,
    counters: PathBuf,
    pub command: String,
}

impl Sink {
    pub fn start(dir: &Path) -> Result<Self> {
        let cgroup = Cgroup::create("sink")?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let counters = dir.join("smtp-sink.out");
        let out = File::create(&counters).context("creating the smtp-sink output file")?;
        let err = File::create(dir.join("smtp-sink.err"))?;
        let args = [
            "-u".to_string(),
            "nobody".into(),
            "-c".into(),
            addr.to_string(),
            "1024".into(),
        ];
        let command = format!("smtp-sink {}", args.join(" "));
        let mut cmd = Command::new("smtp-sink");
        cmd.args(&args).current_dir(dir).stdout(out).stderr(err);
        let mut proc = cgroup.spawn(
            "smtp-sink",
            &mut cmd,
            "starting smtp-sink (package postfix)",
        )?;
        wait_listening(addr, &mut proc, Duration::from_secs(10))?;
        eprintln!("smtp-sink ({}) on {addr}", proc.pid());
        Ok(Self {
            _proc: proc,
            cgroup,
            addr,
            counters,
            command,
        })
    }

    /// Messages received so far: the last `mesg=N` of its `-c` counters (`\r`-separated).
    pub fn messages(&self) -> Result<u64> {
        smtp_gateway_tests::smtp_sink_messages(&self.counters)
    }

    /// Waits (at most `timeout`) until the sink counted `expected` messages more than `before`;
    /// fails unless it counted exactly that many (a surplus is checked for a short while too).
    pub fn expect(&self, before: u64, expected: u64, timeout: Duration, what: &str) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let received = loop {
            let received = self.messages()?.saturating_sub(before);
            if received >= expected || Instant::now() > deadline {
                break received;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        ensure!(
            received == expected,
            "{what}: smtp-sink received {received} messages, {expected} were sent (waited up to \
             {timeout:?})"
        );
        Ok(())
    }
}

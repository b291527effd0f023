//! A private Postfix as a *sending* MTA (greylisting tests): it takes mail on a loopback
//! `smtpd` (from [`Sender::inject`]'s client, trusted by `mynetworks`) and relays everything to
//! one `relayhost` (a gateway), binding its connections to its own loopback source address, and
//! retrying deferred mail after a few seconds (`minimal_backoff_time`, `maximal_backoff_time`,
//! `queue_run_delay`). Stopped (`postfix stop`, then the master killed by PID) and removed on
//! drop.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use smtp_gateway_test_kit::{InstanceDir, MainCf, MasterCf};

use crate::postfix::{free_port, run, stop_instance};

/// A running sending Postfix.
pub struct Sender {
    /// Its instance directory.
    instance: InstanceDir,
    /// Where it takes mail.
    pub smtpd: SocketAddr,
}

impl Sender {
    /// Starts one that relays to `relayhost` from `source`, retrying within `backoff` (the
    /// minimal and maximal backoff, and the queue run delay).
    pub fn start(tag: &str, relayhost: SocketAddr, source: IpAddr, backoff: Duration) -> Sender {
        let dir = std::env::temp_dir().join(format!("sgw-sender-{}-{tag}", std::process::id()));
        if dir.exists() {
            stop_instance(&dir);
            let _ = fs::remove_dir_all(&dir);
        }
        let instance = InstanceDir::create(&dir).expect("sender instance");
        let smtpd = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let secs = format!("{}s", backoff.as_secs().max(1));
        let main_cf = MainCf::new(&instance, "sender.test")
            .set(
                "relayhost",
                format!("[{}]:{}", relayhost.ip(), relayhost.port()),
            )
            .set("smtp_bind_address", source)
            .set("mynetworks", "127.0.0.0/8")
            .set(
                "smtpd_relay_restrictions",
                "permit_mynetworks, reject_unauth_destination",
            )
            .set("queue_run_delay", &secs)
            .set("minimal_backoff_time", &secs)
            .set("maximal_backoff_time", &secs)
            .set("in_flow_delay", "0s")
            // A deferral is retried, never bounced, for the length of a test.
            .set("maximal_queue_lifetime", "1h")
            .set("smtp_connection_cache_on_demand", "no");
        let master_cf = MasterCf::new().service(format!("{smtpd} inet n - n - - smtpd"));
        instance
            .write_config(&main_cf, &master_cf)
            .expect("sender config");
        let (ok, out) = run(
            Command::new("postfix").arg("-c").arg(&dir).arg("start"),
            Duration::from_secs(60),
        )
        .expect("postfix start");
        let sender = Sender { instance, smtpd };
        assert!(
            ok,
            "sending postfix did not start: {out}\n{}",
            sender.maillog()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&smtpd, Duration::from_millis(500)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sending postfix does not listen: {}",
                sender.maillog()
            );
            thread::sleep(Duration::from_millis(50));
        }
        sender
    }

    /// `postfix reload`: its daemons restart, the queue manager first moving what the active
    /// queue holds back to the incoming queue and scanning it, so nothing waits on a lost timer.
    /// `postqueue -f`: the queue manager scans every queue now, ignoring the files' time stamps
    /// (Postfix's `mail_flush_deferred`: `QMGR_REQ_SCAN_ALL` over the deferred and incoming
    /// queues), as an operator flushes a queue.
    pub fn flush(&self) {
        let dir = self.instance.path();
        match run(
            Command::new("postqueue").arg("-c").arg(dir).arg("-f"),
            Duration::from_secs(30),
        ) {
            Ok((true, _)) => {}
            Ok((false, out)) | Err(out) => {
                panic!("postqueue -f failed: {out}\n{}", self.maillog())
            }
        }
    }

    pub fn maillog(&self) -> String {
        fs::read_to_string(self.instance.maillog()).unwrap_or_default()
    }

    /// Its directory.
    /// Every queue file of this instance: its queue, name, and seconds until its time stamp (a
    /// deferred message's next attempt), for a failure report.
    pub fn queue_files(&self) -> String {
        let now = std::time::SystemTime::now();
        let mut out = String::new();
        let queue = self.instance.path().join("queue");
        for name in ["incoming", "active", "deferred", "hold", "maildrop"] {
            let mut stack = vec![queue.join(name)];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let due = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .map(|t| match t.duration_since(now) {
                            Ok(ahead) => format!("due in {:.1}s", ahead.as_secs_f64()),
                            Err(e) => format!("due {:.1}s ago", e.duration().as_secs_f64()),
                        })
                        .unwrap_or_default();
                    out.push_str(&format!("{name}: {} {due}\n", path.display()));
                }
            }
        }
        out
    }

    pub fn dir(&self) -> PathBuf {
        self.instance.path().to_path_buf()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- sending postfix maillog:\n{}", self.maillog());
            eprintln!("--- sending postfix queue:\n{}", self.queue_files());
        }
        stop_instance(self.instance.path());
        let _ = fs::remove_dir_all(self.instance.path());
    }
}

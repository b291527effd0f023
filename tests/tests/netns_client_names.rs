//! End-to-end tests of verified client names (FCrDNS, issue 11 §1) against a real Postfix with
//! the restrictions production MTAs use:
//! `smtpd_client_restrictions = reject_unknown_reverse_client_hostname,
//! reject_unknown_client_hostname` (`unknown_client_reject_code = 550`; Postfix answers `450`
//! whatever that code when the name lookup failed temporarily).
//!
//! The lab ([`Topology`]): clients in their own namespace on 198.18.0.10-13; in the gateway
//! namespace the gateway (listening on 198.18.0.1), the DNS responder (its only name server) and
//! a private Postfix (XCLIENT from the gateway), both on that namespace's loopback. Clients cannot
//! come from 127.0.0.0/8 here: resolvers answer `localhost` for those PTRs without asking
//! (RFC 6761), so no PTR record of a test would ever be read.
//!
//! - 198.18.0.10: PTR `mx.good.test`, which resolves back: delivered, `Received:` names it;
//! - 198.18.0.11: no PTR: Postfix refuses (`cannot find your reverse hostname`);
//! - 198.18.0.12: PTR `forged.test`, which resolves elsewhere: Postfix refuses (`cannot find
//!   your hostname`);
//! - 198.18.0.13: its PTR zone never answers: `[TEMPUNAVAIL]`, a `4xx`, never a `5xx` (also when
//!   the gateway's own `fcrdns` check is set to `reject`).
//!
//! Needs root (namespaces, bpffs pins, Postfix) and the `postfix` package. Build the daemon
//! first: `cargo build && cargo test -p smtp-gateway-tests --test netns_client_names`.

#[allow(dead_code)]
#[path = "support/smtp_client.rs"]
mod smtp_client;
#[allow(dead_code)]
mod support;

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use smtp_client::Client;
use smtp_gateway_test_kit::{
    self as kit, Account, DaemonProcess, DnsResponder, InstanceDir, MainCf, MasterCf, Records,
    Wait, launcher,
};
use support::netns::{GW_V4, Topology, in_netns, nsenter, run};

/// The gateway's SMTP port (on 198.18.0.1 in the gateway namespace).
const SMTP_PORT: u16 = 2525;
/// Postfix's port (on 127.0.0.1 in the gateway namespace).
const BACKEND_PORT: u16 = 10025;
/// Wait for a delivery.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

const GOOD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const NO_PTR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const FORGED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const SLOW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);

/// The responder's table.
fn records() -> Records {
    Records::new()
        .ptr(IpAddr::V4(GOOD), &["mx.good.test."])
        .a("mx.good.test", &[GOOD])
        .ptr(IpAddr::V4(FORGED), &["forged.test."])
        .a("forged.test", &["192.0.2.1".parse().expect("ip")])
        .silent(&Records::reverse_name(IpAddr::V4(SLOW)))
}

/// The whole lab; `Drop` stops the gateway and Postfix, then the namespaces go.
struct Lab {
    /// The gateway daemon, until stopped.
    gateway: Option<DaemonProcess>,
    /// Its configuration (for `detach`).
    config: PathBuf,
    /// The lab's directory (gateway files, the Postfix instance).
    dir: PathBuf,
    /// The Postfix instance.
    postfix: InstanceDir,
    /// The DNS responder (in the gateway namespace).
    _dns: DnsResponder,
    /// The namespaces (dropped last).
    topo: Topology,
}

impl Lab {
    /// Builds the lab for test `tag`; `checks` is a `[checks]` body for the gateway.
    fn start(tag: &str, checks: &str) -> Lab {
        let topo = Topology::new(tag, &[GOOD, NO_PTR, FORGED, SLOW].map(IpAddr::V4));
        let dir = std::env::temp_dir().join(format!("sgw-names-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("lab dir");
        let dns = in_netns(&topo.gw_ns, || DnsResponder::start(records()))
            .expect("start the DNS responder");
        let postfix = start_postfix(&topo.gw_ns, &dir.join("postfix"));
        let config = dir.join("gateway.toml");
        let pin_dir = format!("/sys/fs/bpf/sgw-names-{}-{tag}", std::process::id());
        fs::write(
            &config,
            format!(
                "[dataplane]\npin_dir = \"{pin_dir}\"\n\n\
                 [smtp]\nhostname = \"gw.test\"\n\
                 listeners = [{{ address = \"{GW_V4}:{SMTP_PORT}\", kind = \"smtp\" }}]\n\n\
                 [backend]\nservers = [{{ address = \"127.0.0.1:{BACKEND_PORT}\", identity = \"xclient\" }}]\n\n\
                 [relay]\naccepted_domains = [\"example.org\"]\n\n\
                 [dns]\nnameservers = [\"{}\"]\ntimeout = \"300ms\"\nattempts = 1\n\n\
                 [fcrdns]\nenabled = true\ntimeout = \"1s\"\n\n\
                 [checks]\n{checks}\n\n\
                 [metrics]\nenabled = false\n\n\
                 [store]\npath = \"{}\"\n",
                dns.addr(),
                dir.join("state.redb").display()
            ),
        )
        .expect("write the gateway config");
        let binary = support::daemon::binary();
        let wrapper = [
            "nsenter".to_string(),
            format!("--net=/run/netns/{}", topo.gw_ns),
        ];
        let gateway = DaemonProcess::spawn(
            launcher::wrapped(&wrapper, &binary, &config),
            &dir.join("gateway.log"),
            libc::SIGTERM,
        )
        .unwrap_or_else(|e| panic!("spawn smtp-gateway: {e}"));
        let ready = gateway.wait_for(Duration::from_secs(20), |text| {
            text.lines().any(|l| l.trim_end().ends_with(" ready"))
        });
        let lab = Lab {
            gateway: Some(gateway),
            config,
            dir,
            postfix,
            _dns: dns,
            topo,
        };
        assert!(
            ready == Wait::Done,
            "gateway not ready:\n{}",
            lab.gateway_log()
        );
        lab
    }

    /// The gateway's log so far.
    fn gateway_log(&self) -> String {
        self.gateway
            .as_ref()
            .map(|g| kit::strip_ansi(&g.log()))
            .unwrap_or_default()
    }

    /// A client session from `source`: EHLO, one message to `local@example.org`; the reply to
    /// the first refused command or to the end of data.
    fn session(&self, source: Ipv4Addr, local: &str) -> String {
        let stream: TcpStream = in_netns(&self.topo.cl_ns, move || {
            smtp_client::connect_from(SocketAddr::from((GW_V4, SMTP_PORT)), IpAddr::V4(source))
        });
        let mut c = Client::over(stream);
        let ehlo = c.cmd("EHLO client.test");
        assert!(ehlo.starts_with("250"), "EHLO: {ehlo}");
        let to = format!("{local}@example.org");
        let r = c.send(
            "someone@sender.test",
            &to,
            &format!("From: someone@sender.test\r\nTo: {to}\r\nSubject: names\r\n\r\nbody\r\n"),
        );
        let _ = c.cmd("QUIT");
        r
    }

    /// The messages delivered to `local@example.org`, waiting up to `within` for `n`.
    fn delivered(&self, local: &str, n: usize, within: Duration) -> Vec<String> {
        let new = self.postfix.path().join("mail").join(local).join("new");
        let deadline = Instant::now() + within;
        loop {
            let files: Vec<PathBuf> = fs::read_dir(&new)
                .map(|e| e.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            if files.len() >= n || Instant::now() > deadline {
                return files
                    .iter()
                    .filter_map(|p| fs::read(p).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Postfix's log.
    fn maillog(&self) -> String {
        fs::read_to_string(self.postfix.maillog()).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log:\n{}\n--- maillog:\n{}",
                kit::last_lines(&self.gateway_log(), 60),
                kit::last_lines(&self.maillog(), 30)
            );
        }
        if let Some(mut gateway) = self.gateway.take() {
            let _ = gateway.stop(Duration::from_secs(5));
        }
        let _ = launcher::detach(&support::daemon::binary(), &self.config);
        stop_postfix(&self.postfix);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A private Postfix in namespace `ns` on 127.0.0.1:[`BACKEND_PORT`]: XCLIENT from 127.0.0.1,
/// the client-name restrictions, `example.org` delivered into `mail/<local>/new/`.
fn start_postfix(ns: &str, dir: &Path) -> InstanceDir {
    fn kit_err<T>(e: kit::Error) -> T {
        panic!("postfix instance: {e}")
    }
    let instance = InstanceDir::create(dir).unwrap_or_else(kit_err);
    let nobody = Account::nobody().unwrap_or_else(kit_err);
    instance
        .create_owned_dir("mail", nobody)
        .unwrap_or_else(kit_err);
    let d = dir.display();
    let deliver = dir.join("deliver.sh");
    fs::write(
        &deliver,
        format!(
            "#!/bin/sh\n\
             u=$(printf %s \"$1\" | tr '/' '_')\n\
             d={d}/mail/\"$u\"\n\
             mkdir -p \"$d/tmp\" \"$d/new\" \"$d/cur\" || exit 75\n\
             f=\"$(date +%s.%N).$$\"\n\
             cat > \"$d/tmp/$f\" || exit 75\n\
             mv \"$d/tmp/$f\" \"$d/new/$f\" || exit 75\n"
        ),
    )
    .expect("deliver.sh");
    fs::set_permissions(&deliver, fs::Permissions::from_mode(0o755)).expect("chmod deliver.sh");
    let main_cf = MainCf::new(&instance, "backend.test")
        .set("virtual_mailbox_domains", "example.org")
        .set("virtual_mailbox_maps", "static:ok")
        .set("virtual_transport", "sink")
        .set("sink_destination_recipient_limit", 1)
        .set("default_transport", "discard")
        .set("relay_transport", "discard")
        .set("smtpd_authorized_xclient_hosts", "127.0.0.1")
        .set("mynetworks", "127.0.0.0/8")
        .set(
            "smtpd_client_restrictions",
            "reject_unknown_reverse_client_hostname, reject_unknown_client_hostname",
        )
        .set("unknown_client_reject_code", 550)
        .set("in_flow_delay", "0s");
    let master_cf = MasterCf::new()
        .service(format!("127.0.0.1:{BACKEND_PORT} inet n - n - - smtpd"))
        .service(format!(
            "sink      unix  -       n       n       -       -       pipe\n  \
             flags=DRu user=nobody argv={} ${{user}}",
            deliver.display()
        ));
    instance
        .write_config(&main_cf, &master_cf)
        .unwrap_or_else(kit_err);
    let out = run(nsenter(ns, "postfix").arg("-c").arg(dir).arg("start"));
    assert!(
        out.status.success(),
        "postfix start: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(instance.maillog()).unwrap_or_default()
    );
    let ns_owned = ns.to_string();
    let listening = in_netns(&ns_owned, || {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let addr = SocketAddr::from(([127, 0, 0, 1], BACKEND_PORT));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    assert!(listening, "Postfix does not listen");
    instance
}

/// `postfix stop`, then SIGKILL of the master (by PID) if it is still there.
fn stop_postfix(instance: &InstanceDir) {
    let master = instance.master_pid();
    let _ = Command::new("postfix")
        .arg("-c")
        .arg(instance.path())
        .arg("stop")
        .output();
    if let Some(pid) = master {
        let deadline = Instant::now() + Duration::from_secs(5);
        while instance.master_pid() == Some(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if instance.master_pid() == Some(pid)
            && let Ok(pid) = i32::try_from(pid)
        {
            // SAFETY: the master of this test's own instance, by PID.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn postfix_sees_verified_names_and_refuses_the_rest() {
    let lab = Lab::start("names", "");
    let r = lab.session(GOOD, "good");
    assert!(r.starts_with("250"), "{r}");
    let delivered = lab.delivered("good", 1, DELIVERY_TIMEOUT);
    assert_eq!(delivered.len(), 1);
    assert!(
        delivered[0].contains("from client.test (mx.good.test [198.18.0.10])"),
        "Received should carry the verified name:\n{}",
        delivered[0]
    );
    assert!(
        delivered[0].contains("iprev=pass policy.iprev=198.18.0.10 (mx.good.test)"),
        "{}",
        delivered[0]
    );

    let r = lab.session(NO_PTR, "noptr");
    assert!(r.starts_with("550"), "{r}");
    assert!(r.contains("cannot find your reverse hostname"), "{r}");

    let r = lab.session(FORGED, "forged");
    assert!(r.starts_with("550"), "{r}");
    assert!(r.contains("cannot find your hostname"), "{r}");

    let r = lab.session(SLOW, "slow");
    assert!(
        r.starts_with("450"),
        "a DNS timeout must never give a 5xx: {r}"
    );

    // The session line is written after the QUIT reply: wait for it.
    for needle in [
        "client_name=\"mx.good.test\"",
        "client_name=\"[UNAVAILABLE]\"",
        "client_name=\"[TEMPUNAVAIL]\"",
    ] {
        let logged =
            support::netns::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
                lab.gateway_log().contains(needle)
            });
        assert!(logged, "{needle} missing from\n{}", lab.gateway_log());
    }
    let maillog = lab.maillog();
    assert!(
        maillog.contains("forged.test[198.18.0.12]") || maillog.contains("unknown[198.18.0.12]")
    );
    for local in ["noptr", "forged", "slow"] {
        assert!(
            lab.delivered(local, 1, Duration::ZERO).is_empty(),
            "{local}"
        );
    }
}

#[test]
fn the_fcrdns_check_refuses_temporarily_on_a_dns_failure() {
    let lab = Lab::start("check", "fcrdns = { action = \"reject\" }");
    let r = lab.session(SLOW, "slow2");
    assert!(r.starts_with("451 4.7.25"), "{r}");
    let r = lab.session(NO_PTR, "noptr2");
    assert!(r.starts_with("550 5.7.25"), "{r}");
    let r = lab.session(GOOD, "good2");
    assert!(r.starts_with("250"), "{r}");
}

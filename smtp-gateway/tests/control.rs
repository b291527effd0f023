//! The control socket and the daemon's privileges: the CLI goes through a running daemon (and
//! straight to the pinned maps when none runs), the socket answers root only, `reload` reports
//! how it went, the configuration file is reloaded when it changes, and the daemon runs without
//! capabilities after setup yet still bans and blocks; it serves a bounded number of connections,
//! each given a bounded time to send its request (and all the time its answer needs). The real binary in front of a scripted
//! backend. Needs root (bpffs pins, setpriv to act as another user).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{
    io::{Read, Write},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        net::UnixStream,
    },
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use peers::{Gateway, assert_refused, scripted_backend_on_loopback, stderr, stdout};
use serde_json::Value;

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}{}", stdout(out), stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// The daemon's control socket, as `stats` would find it (derived from the pin dir).
fn socket_of(gw: &Gateway) -> PathBuf {
    let text = std::fs::read_to_string(gw.config_path()).expect("config");
    let pin_dir = text
        .lines()
        .find_map(|l| l.strip_prefix("pin_dir = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("pin_dir in the test config");
    let name = PathBuf::from(pin_dir);
    PathBuf::from("/run/smtp-gateway").join(format!(
        "{}.sock",
        name.file_name().expect("name").to_string_lossy()
    ))
}

/// A fields line of /proc/<pid>/status ("CapEff", "Uid", "NoNewPrivs").
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn cli_goes_through_the_daemon_and_falls_back_to_the_maps() {
    let (addr, _seen) = scripted_backend_on_loopback(4);
    let mut gw = Gateway::start(
        "ctl",
        addr,
        "greet_pause = \"300ms\"\n[autoban]\nchecks = { pregreet = 1 }\n",
    );
    let socket = socket_of(&gw);
    let meta = std::fs::metadata(&socket).expect("the control socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "socket owner");

    // Block through the daemon: it logs who asked.
    let out = gw.cli(&[
        "block",
        "add",
        "198.18.7.0/24",
        "--ttl",
        "1h",
        "--reason",
        "ops",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("blocked 198.18.7.0/24 for 1h"),
        "{}",
        stdout(&out)
    );
    gw.wait_log("control: blocked 198.18.7.0/24");
    let list = json(&gw.cli(&["block", "list", "--json"]));
    let entry = list
        .as_array()
        .and_then(|a| a.iter().find(|e| e["target"] == "198.18.7.0/24"))
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(entry["origin"], "cli");
    assert_eq!(entry["reason"], "ops");
    let out = gw.cli(&["block", "del", "198.18.9.9"]);
    assert_refused(
        &out,
        "not in the blocklist",
        "deleting a missing entry must fail",
    );
    let out = gw.cli(&["allow", "add", "198.18.8.1", "--reason", "partner"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let allow = json(&gw.cli(&["allow", "list", "--json"]));
    assert!(
        allow
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["prefix"] == "198.18.8.1/32")),
        "{allow}"
    );

    // A clean session and a pregreeting one: the daemon's stats carry their verdicts.
    let mut c = gw.greeted("client.example.net");
    c.cmd("QUIT");
    peers::pregreet([127, 0, 0, 9], gw.port);
    gw.wait_log("verdict=\"dropped\"");
    let stats = json(&gw.cli(&["stats", "--json", "--top", "50"]));
    assert!(
        stats["session_sources"].as_u64().unwrap_or(0) >= 2,
        "{stats}"
    );

    // The auto-ban went into the kernel map (once the session closed, `autoban.grace`) although
    // the daemon has no capability left.
    wait_for("the auto-ban entry", || {
        json(&gw.cli(&["block", "list", "--json"]))
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|e| e["target"] == "127.0.0.9" && e["origin"] == "autoban")
            })
    });

    // Without a daemon the same commands work on the pinned maps (no session verdicts).
    gw.signal(libc::SIGTERM);
    let _ = gw.child.wait();
    assert!(!socket.exists(), "the socket is removed at shutdown");
    let out = gw.cli(&["block", "add", "198.18.7.7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = json(&gw.cli(&["stats", "--json"]));
    assert!(stats["session_sources"].is_null(), "{stats}");
    let list = json(&gw.cli(&["block", "list", "--json"]));
    assert!(
        list.as_array()
            .is_some_and(|a| a.iter().any(|e| e["target"] == "198.18.7.7")),
        "{list}"
    );
    let out = gw.cli(&["reload"]);
    assert_refused(&out, "no daemon answers", "the command must fail");
}

/// Runs `python3 -c script` as uid/gid 65534 (nobody).
fn as_nobody(script: &str, socket: &std::path::Path) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(socket)
        .output()
        .expect("setpriv (util-linux) and python3")
}

const CONNECT: &str = "import socket, sys\n\
s = socket.socket(socket.AF_UNIX)\n\
try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('EACCES'); sys.exit(0)\n\
try:\n    s.sendall(b'{\"op\":\"block_add\",\"target\":\"198.18.6.6\",\"ttl_secs\":null,\"reason\":null}\\n')\n\
except BrokenPipeError:\n    pass\n\
print(s.makefile().readline().strip())\n";

#[test]
fn control_socket_refuses_anyone_but_root() {
    let (addr, _seen) = scripted_backend_on_loopback(1);
    let gw = Gateway::start("ctlroot", addr, "");
    let socket = socket_of(&gw);

    // Mode 0600: another user cannot even connect.
    let out = as_nobody(CONNECT, &socket);
    assert_eq!(
        stdout(&out).trim(),
        "EACCES",
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // Made world-writable by mistake, it still checks the peer's uid.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = as_nobody(CONNECT, &socket);
    let answer: Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    assert_eq!(answer["status"], "error", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("root only")),
        "{answer}"
    );
    gw.wait_log("refused a client that is not root");
    let list = json(&gw.cli(&["block", "list", "--json"]));
    assert!(
        !list.to_string().contains("198.18.6.6"),
        "a refused client changed the blocklist: {list}"
    );

    // A daemon killed without a chance to clean up leaves its socket; `detach` removes it.
    let mut gw = gw;
    gw.signal(libc::SIGKILL);
    let _ = gw.child.wait();
    assert!(socket.exists(), "SIGKILL leaves the socket file");
    let out = gw.cli(&["detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !socket.exists(),
        "detach removes a socket nobody answers on"
    );
}

#[test]
fn daemon_keeps_no_capability_after_setup_unless_configured() {
    let (addr, _seen) = scripted_backend_on_loopback(1);

    let gw = Gateway::start("caps", addr, "");
    let pid = gw.child.id();
    for field in ["CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(status_field(pid, field), "0000000000000000", "{field}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert!(
        gw.log().contains("privileges dropped after setup"),
        "{}",
        gw.log()
    );
    // Map operations still work through the descriptors held.
    let out = gw.cli(&["block", "add", "198.18.5.5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop(gw);

    // Under a service manager's bounding set without CAP_SETPCAP (deploy/smtp-gateway.service):
    // it still starts and empties its permitted and effective sets.
    let gw = Gateway::start_under(
        "caps-unit",
        addr,
        "",
        &[
            "setpriv",
            "--bounding-set=-all,+bpf,+perfmon,+net_admin,+net_bind_service,+sys_admin",
        ],
    );
    let pid = gw.child.id();
    for field in ["CapEff", "CapPrm"] {
        assert_eq!(status_field(pid, field), "0000000000000000", "{field}");
    }
    assert!(
        gw.log().contains("bounding_set_reduced=false"),
        "{}",
        gw.log()
    );
    drop(gw);

    // Another user, keeping CAP_BPF.
    let gw = Gateway::start(
        "caps-user",
        addr,
        "[daemon]\nuser = \"nobody\"\nkeep_capabilities = [\"CAP_BPF\"]\n",
    );
    let pid = gw.child.id();
    assert!(
        status_field(pid, "Uid").starts_with("65534\t65534\t65534"),
        "uid"
    );
    let cap_bpf = 1u64 << 39;
    let eff = u64::from_str_radix(&status_field(pid, "CapEff"), 16).expect("hex");
    assert_eq!(eff, cap_bpf, "only CAP_BPF is kept");
    let out = gw.cli(&["block", "add", "198.18.5.6"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the entry", || {
        json(&gw.cli(&["block", "list", "--json"]))
            .to_string()
            .contains("198.18.5.6")
    });
}

#[test]
fn reload_command_and_file_change_take_the_one_reload_path() {
    let (addr, _seen) = scripted_backend_on_loopback(1);
    // No file watch yet: the reload command alone.
    let gw = Gateway::start("reload", addr, "[daemon]\nwatch_config = false\n");

    // A file the CLI itself cannot read: refused with the key and the line, nothing sent.
    let good = std::fs::read_to_string(gw.config_path()).expect("config");
    let bad = good.replace(
        "hostname = \"gw.test\"",
        "hostname = \"gw.test\"\nmax_recipients = 0",
    );
    std::fs::write(gw.config_path(), &bad).expect("write");
    let out = gw.cli(&["reload"]);
    assert!(!out.status.success(), "a bad file must fail the reload");
    let err = stderr(&out);
    assert!(
        err.contains("smtp.max_recipients") && err.contains(": line 5:"),
        "{err}"
    );

    // Valid TOML the daemon cannot apply (an unreadable certificate): the daemon refuses it.
    gw.write_config(
        addr,
        "[smtp.tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"",
    );
    let out = gw.cli(&["reload"]);
    assert!(!out.status.success(), "the daemon must refuse the file");
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/cert.pem") && err.contains("stays in force"),
        "{err}"
    );
    let banner = gw.banner();
    assert!(banner.contains("gw.test"), "{banner}");

    // A good one: applied; what needs a restart is said.
    std::fs::write(
        gw.config_path(),
        good.replace("gw.test", "gw2.test")
            .replace("watch_config = false", "watch_config = true"),
    )
    .expect("write");
    let out = gw.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("configuration reloaded"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("[daemon] changes"),
        "{}",
        stderr(&out)
    );
    let banner = gw.banner();
    assert!(banner.contains("gw2.test"), "{banner}");

    // Asked again, the daemon still says what waits for a restart: it runs the old value.
    let out = gw.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[daemon] changes"),
        "a second reload forgot what waits for a restart: {}",
        stderr(&out)
    );

    // A file cut short before [smtp] (a truncated write) has no listener and no backend: valid
    // alone, but the running listener stays until a restart and would have no backend.
    let text = std::fs::read_to_string(gw.config_path()).expect("config");
    let cut = text.split("[smtp]").next().unwrap_or_default().to_string();
    std::fs::write(gw.config_path(), cut).expect("write");
    let out = gw.cli(&["reload"]);
    assert!(!out.status.success(), "a listener without a backend");
    let err = stderr(&out);
    assert!(
        err.contains("backend.servers") && err.contains("stays in force"),
        "{err}"
    );
    let mut c = gw.greeted("client.example.net");
    c.expect("MAIL FROM:<a@example.net>", "250");
}

#[test]
fn a_changed_file_is_reloaded_without_a_signal() {
    let (addr, _seen) = scripted_backend_on_loopback(1);
    let gw = Gateway::start("watch", addr, "[daemon]\nwatch_debounce = \"200ms\"\n");
    assert_eq!(gw.log_count("configuration reloaded"), 0);

    // An editor-style replace: write a new file and rename it over the old one.
    let tmp = gw.dir.join("gateway.toml.new");
    let text = std::fs::read_to_string(gw.config_path())
        .expect("config")
        .replace("gw.test", "watched.test");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, gw.config_path()).expect("rename");
    gw.wait_log("origin=\"file change\"");
    assert_eq!(
        gw.log_count("configuration reloaded"),
        1,
        "one change, one reload"
    );
    let banner = gw.banner();
    assert!(banner.contains("watched.test"), "{banner}");

    // A bad edit leaves the running configuration in force and says why.
    let text = std::fs::read_to_string(gw.config_path()).expect("config");
    std::fs::write(
        gw.config_path(),
        text.replace("[relay]", "[relay]\nbogus = 1"),
    )
    .expect("write");
    gw.wait_log("configuration reload failed");
    assert!(gw.log().contains("bogus"), "{}", gw.log());
    let banner = gw.banner();
    assert!(banner.contains("watched.test"), "{banner}");
}

/// A connection to the control socket at `path`, reads bounded by 10 s.
fn control_connection(path: &std::path::Path) -> UnixStream {
    let stream = UnixStream::connect(path).expect("connect to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
}

/// Everything the daemon sends on `stream` until it closes it; an error if it keeps it open
/// past the stream's read timeout.
fn until_closed(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut text = String::new();
    stream.read_to_string(&mut text).map(|_| text)
}

#[test]
fn control_connections_are_capped_and_silent_ones_closed_but_answers_may_take_long() {
    let (addr, _seen) = scripted_backend_on_loopback(1);
    let daemon = "[daemon]\nwatch_config = false\ncontrol_max_connections = 3\n\
                  control_request_timeout = \"2s\"\n";
    let gw = Gateway::start("ctlcap", addr, daemon);
    let socket = socket_of(&gw);

    // Three peers take every slot: two say nothing, one sends half a request.
    let mut held: Vec<UnixStream> = (0..3).map(|_| control_connection(&socket)).collect();
    held[2]
        .write_all(b"{\"op\":\"stats\"")
        .expect("write half a request");
    // One more is told why and closed at once.
    let mut extra = control_connection(&socket);
    let answer = until_closed(&mut extra)
        .unwrap_or_else(|e| panic!("a connection over the cap was kept open: {e}"));
    assert!(
        answer.contains("daemon.control_max_connections"),
        "{answer:?}"
    );
    gw.wait_log_line(&["control:", "daemon.control_max_connections"]);
    // The held ones are closed once control_request_timeout passes without a complete request.
    for (i, stream) in held.iter_mut().enumerate() {
        let answer = until_closed(stream)
            .unwrap_or_else(|e| panic!("held connection {i} was never closed: {e}"));
        assert!(
            answer.contains("daemon.control_request_timeout"),
            "{i}: {answer:?}"
        );
    }
    // Their slots are free again as soon as they are closed.
    let out = gw.cli(&["block", "add", "198.18.4.4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let scrape = gw.scrape();
    let count = |result: &str| {
        peers::sample(
            &scrape,
            &format!("smtp_gateway_control_connections_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(count("refused"), Some(1), "{scrape}");
    assert_eq!(count("timed_out"), Some(3), "{scrape}");

    // Only reading the request is timed: a reload whose answer takes longer than
    // control_request_timeout (it reads a list from a FIFO the test writes late) is answered.
    let fifo = gw.dir.join("senders.fifo");
    peers::mkfifo(&fifo);
    gw.write_config(
        addr,
        &format!(
            "{daemon}[reputation]\nlists = [{{ name = \"late\", kind = \"sender_domain\", \
             path = \"{}\" }}]\n",
            fifo.display()
        ),
    );
    let reload = Command::new(peers::binary())
        .arg("-c")
        .arg(gw.config_path())
        .arg("reload")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    let mut list = peers::fifo_writer_once_read(&fifo, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the reload never opened the list:\n{}", gw.log()));
    // A connection opened now, while the reload's answer is pending, is closed for silence:
    // control_request_timeout has passed since the reload's request was read.
    let mut silent = control_connection(&socket);
    let answer = until_closed(&mut silent).unwrap_or_else(|e| panic!("silent peer kept open: {e}"));
    assert!(
        answer.contains("daemon.control_request_timeout"),
        "{answer:?}"
    );
    list.write_all(b"spam.example\n").expect("write the list");
    drop(list);
    let out = reload.wait_with_output().expect("the reload command");
    assert!(
        out.status.success(),
        "{}{}\n{}",
        stdout(&out),
        stderr(&out),
        gw.log()
    );
    assert!(
        stdout(&out).contains("configuration reloaded"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_client_that_stops_reading_its_answers_loses_its_slot() {
    let (addr, _seen) = scripted_backend_on_loopback(1);
    let daemon = "[daemon]\nwatch_config = false\ncontrol_max_connections = 1\n\
                  control_request_timeout = \"2s\"\n";
    let gw = Gateway::start("ctlunread", addr, daemon);
    let socket = socket_of(&gw);

    // The only slot: a peer that sends requests (each a bad one, answered with an error line of
    // about 75 bytes) and never reads. It sends until its writes fail, which they do once the
    // daemon, left with an answer nobody takes, stops reading and then closes: the answers
    // overflow the socket's buffers whatever their size.
    let unread = control_connection(&socket);
    let mut sender = unread.try_clone().expect("clone the stream");
    sender
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let sending = std::thread::spawn(move || {
        let requests = b"x\n".repeat(20_000);
        // At most 200 rounds (8 MB of requests, 600 MB of answers): bounded either way.
        (0..200)
            .take_while(|_| sender.write_all(&requests).is_ok())
            .count()
    });
    gw.wait_log_line(&["control:", "did not read its answer"]);
    // The slot is free again: the CLI is answered, not refused over the cap.
    let out = gw.cli(&["block", "add", "198.18.4.5"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), gw.log());
    let count = peers::sample(
        &gw.scrape(),
        "smtp_gateway_control_connections_total{result=\"timed_out\"}",
    );
    assert_eq!(count, Some(1));
    let rounds = sending.join().expect("the sender");
    assert!(
        rounds < 200,
        "the daemon read every request: {rounds} rounds"
    );
    drop(unread);
}

//! DNSBL scoring through a live session, against a DNS server of the test's own on loopback (the
//! system resolver is never used): a listed client is refused at MAIL FROM, and a DNS server
//! that never answers never costs a client its mail. Needs root (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use peers::{Gateway, scripted_backend};

/// Answers every A query with `answer` (or stays silent when `None`); records the query names.
fn dns_server(answer: Option<[u8; 4]>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    socket.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let addr = socket.local_addr().expect("addr");
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = names.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        for _ in 0..50 {
            // A signal to the test process interrupts a receive with a timeout even under
            // SA_RESTART (signal(7)): ask again rather than stop answering.
            let (n, peer) = match socket.recv_from(&mut buf) {
                Ok(received) => received,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let query = &buf[..n];
            // Header (12 bytes), then QNAME labels up to a zero byte, then QTYPE and QCLASS.
            let mut pos = 12;
            let mut labels = Vec::new();
            while pos < n && query[pos] != 0 {
                let len = query[pos] as usize;
                labels.push(
                    String::from_utf8_lossy(&query[pos + 1..(pos + 1 + len).min(n)]).into_owned(),
                );
                pos += len + 1;
            }
            let question_end = (pos + 5).min(n);
            if let Ok(mut v) = seen.lock() {
                v.push(labels.join("."));
            }
            let Some(a) = answer else {
                continue;
            };
            let mut reply = Vec::with_capacity(question_end + 16);
            reply.extend_from_slice(&query[..2]); // id
            reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]); // QR RD RA, 1 question, 1 answer
            reply.extend_from_slice(&query[12..question_end]);
            reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            reply.extend_from_slice(&a);
            let _ = socket.send_to(&reply, peer);
        }
    });
    (addr, names)
}

fn dnsbl_section(dns: SocketAddr, timeout: &str) -> String {
    format!(
        "[checks]\ndnsbl = {{ action = \"reject\" }}\n\
         [dnsbl]\nenabled = true\nnameservers = [\"{dns}\"]\ntimeout = \"{timeout}\"\nthreshold = 3\n\
         sites = [\"zen.test=127.0.0.[2..11]*3\"]"
    )
}

#[test]
fn a_listed_client_is_refused_at_mail_from() {
    let (dns, names) = dns_server(Some([127, 0, 0, 2]));
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let _seen = scripted_backend(backend.try_clone().expect("clone"), 1);
    let gw = Gateway::start(
        "dnsbl-hit",
        backend.local_addr().expect("addr"),
        &dnsbl_section(dns, "2s"),
    );
    let mut c = gw.client();
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    let mail = c.cmd("MAIL FROM:<a@example.net>");
    assert!(
        mail.starts_with("554 5.7.1"),
        "listed client refused: {mail}"
    );
    let queried = names.lock().expect("names").clone();
    assert!(
        queried.iter().any(|n| n == "1.0.0.127.zen.test"),
        "reversed-octet query: {queried:?}"
    );
    assert!(
        gw.log().contains("check=\"dnsbl\"") || gw.log().contains("check=dnsbl"),
        "{}",
        gw.log()
    );
}

#[test]
fn a_silent_dns_server_never_rejects_mail() {
    let (dns, names) = dns_server(None);
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let _seen = scripted_backend(backend.try_clone().expect("clone"), 1);
    let gw = Gateway::start(
        "dnsbl-silent",
        backend.local_addr().expect("addr"),
        &dnsbl_section(dns, "500ms"),
    );
    let mut c = gw.client();
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    let started = std::time::Instant::now();
    let mail = c.cmd("MAIL FROM:<a@example.net>");
    assert!(
        mail.starts_with("250"),
        "a DNS failure never rejects mail: {mail}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by dnsbl.timeout"
    );
    assert!(
        !names.lock().expect("names").is_empty(),
        "the DNS server was asked"
    );
}

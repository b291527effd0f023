//! Reputation lists through a real session: a sender whose domain (or parent domain) is listed is
//! refused, others pass; a listed HELO name is refused. Needs root (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use peers::{Gateway, scripted_backend_on_loopback};

#[test]
fn listed_sender_domain_and_helo_are_refused_others_pass() {
    let dir = std::env::temp_dir().join(format!("sgw-rep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let senders = dir.join("senders.txt");
    std::fs::write(&senders, "# disposable senders\nspam.example\n").expect("list");
    let helos = dir.join("helos.txt");
    std::fs::write(&helos, "bulk.mailer.example\n").expect("list");
    let (addr, _seen) = scripted_backend_on_loopback(2);
    let gw = Gateway::start(
        "rep",
        addr,
        &format!(
            "[checks]\nreputation = {{ action = \"reject\" }}\n[reputation]\nlists = [\
             {{ name = \"disposable\", kind = \"sender_domain\", path = \"{}\" }}, \
             {{ name = \"bulk\", kind = \"helo\", path = \"{}\" }}]",
            senders.display(),
            helos.display()
        ),
    );

    let mut c = gw.greeted("client.example.net");
    c.expect_that(
        "MAIL FROM:<a@mx.SPAM.example>",
        "550 5.7.1",
        "a subdomain of a listed domain",
    );
    c.expect("MAIL FROM:<a@notspam.example>", "250");
    c.cmd("QUIT");

    let mut c = gw.client();
    let helo = c.cmd("EHLO bulk.mailer.example");
    assert!(
        helo.starts_with("550 5.7.1") && helo.contains("reputation"),
        "{helo}"
    );
    assert!(
        gw.log().contains("HELO bulk.mailer.example in bulk"),
        "{}",
        gw.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

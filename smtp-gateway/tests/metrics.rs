//! The metrics endpoint of the real daemon: one session that fires `relay_attempt` and relays a
//! message, then a scrape of `GET /metrics` parsed as text. Needs root (bpffs pins).

#[path = "support/peers.rs"]
#[allow(dead_code)] // each test binary uses a different part of the shared peers
mod peers;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use peers::{Gateway, scripted_backend_on_loopback};

/// `GET path` on the metrics port: (status line, content type, body).
fn scrape(port: u16, path: &str) -> (String, String, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .expect("request");
    let mut response = String::new();
    tcp.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let content_type = lines
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    (status, content_type, body.to_string())
}

/// The value of the first sample whose name is `name` and whose labels contain every `labels`
/// pair (`key="value"`).
fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let wanted = series_name == name
            && labels
                .iter()
                .all(|want| series_labels.split(',').any(|have| have == *want));
        wanted.then(|| value.parse().ok()).flatten()
    })
}

/// Asserts that the sample `name` with `labels` counted at least one.
fn assert_counted(body: &str, name: &str, labels: &[&str]) {
    assert!(
        sample(body, name, labels).is_some_and(|v| v >= 1.0),
        "{name} {labels:?} not counted:\n{body}"
    );
}

#[test]
fn scrape_shows_checks_kernel_verdicts_and_reload_state() {
    let (addr, _seen) = scripted_backend_on_loopback(1);
    let gw = Gateway::start("metrics", addr, "");
    gw.wait_log("metrics endpoint ready");

    let mut c = gw.greeted("client.example.net");
    assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    let refused = c.cmd("RCPT TO:<someone@elsewhere.test>");
    assert!(refused.starts_with('5'), "relaying is refused: {refused}");
    assert!(c.cmd("RCPT TO:<one@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.expect("Subject: metrics\r\n\r\nhello\r\n.", "250");
    c.cmd("QUIT");

    // The checks counter follows the event channel asynchronously: poll briefly.
    let mut body = String::new();
    for _ in 0..50 {
        let (status, content_type, b) = scrape(gw.metrics_port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        body = b;
        // Both follow the session asynchronously (the check's event, the session's end).
        if sample(
            &body,
            "smtp_gateway_checks_fired_total",
            &["check=\"relay_attempt\""],
        )
        .is_some_and(|v| v >= 1.0)
            && body.contains("smtp_gateway_source_sessions_total{")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_counted(
        &body,
        "smtp_gateway_checks_fired_total",
        &["check=\"relay_attempt\""],
    );
    for family in [
        "smtp_gateway_xdp_packets_total",
        "smtp_gateway_xdp_bytes_total",
    ] {
        assert!(
            body.contains(&format!(
                "# TYPE {} counter",
                family.trim_end_matches("_total")
            )),
            "{family} family missing:\n{body}"
        );
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("{family}{{verdict=\""))),
            "{family} has no verdict samples:\n{body}"
        );
    }
    assert_eq!(
        sample(&body, "smtp_gateway_config_last_reload_success", &[]),
        Some(1.0),
        "{body}"
    );
    for (name, labels) in [
        ("smtp_gateway_messages_total", &["result=\"relayed\""][..]),
        ("smtp_gateway_connections_total", &[]),
        ("smtp_gateway_backend_reply_seconds_count", &[]),
    ] {
        assert_counted(&body, name, labels);
    }
    // The client's per-source series merge its session verdict and delivered messages (no XDP
    // here, so the session table alone puts it among the top sources).
    assert_eq!(
        sample(
            &body,
            "smtp_gateway_source_sessions_total",
            &["source=\"127.0.0.1\"", "verdict=\"rejected\""]
        ),
        Some(1.0),
        "the session with a refused relay attempt:\n{body}"
    );
    assert_eq!(
        sample(
            &body,
            "smtp_gateway_source_messages_delivered_total",
            &["source=\"127.0.0.1\""]
        ),
        Some(1.0),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    // A bad file on reload shows in the reload series (and the old configuration stays).
    std::fs::write(gw.config_path(), "[smtp]\nbogus = 1\n").expect("write a bad config");
    gw.signal(libc::SIGHUP);
    gw.wait_log("configuration reload failed");
    let (_, _, body) = scrape(gw.metrics_port, "/metrics");
    assert_eq!(
        sample(&body, "smtp_gateway_config_last_reload_success", &[]),
        Some(0.0),
        "{body}"
    );
    assert_counted(
        &body,
        "smtp_gateway_config_reloads_total",
        &["result=\"failure\""],
    );

    let (status, _, _) = scrape(gw.metrics_port, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

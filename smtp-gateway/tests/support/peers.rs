//! Test peers shared by the integration tests: a scripted backend MTA and a line client.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    time::Duration,
};

/// base64("\0user\0secret")
pub const GOOD_PLAIN: &str = "AHVzZXIAc2VjcmV0";

/// A backend that offers AUTH PLAIN, accepts one credential, and accepts any mail; serves
/// `sessions` sessions one after the other and returns every command it saw.
pub fn scripted_backend(
    listener: TcpListener,
    sessions: usize,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..sessions {
            serve_one(&listener, &mut seen);
        }
        seen
    })
}

fn serve_one(listener: &TcpListener, seen: &mut Vec<String>) {
    {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut out = tcp.try_clone().expect("clone");
        let mut input = BufReader::new(tcp);
        out.write_all(b"220 backend.test ESMTP\r\n").ok();
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if input.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let cmd = line.trim_end().to_string();
            if in_data {
                if cmd == "." {
                    in_data = false;
                    out.write_all(b"250 2.0.0 queued\r\n").ok();
                }
                continue;
            }
            seen.push(cmd.clone());
            let upper = cmd.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-backend.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
            } else if upper.starts_with("AUTH PLAIN ") {
                if cmd.ends_with(GOOD_PLAIN) {
                    b"235 2.7.0 Authentication successful\r\n"
                } else {
                    b"535 5.7.8 Authentication credentials invalid\r\n"
                }
            } else if upper.starts_with("MAIL")
                || upper.starts_with("RCPT")
                || upper.starts_with("RSET")
            {
                b"250 2.0.0 Ok\r\n"
            } else if upper == "DATA" {
                in_data = true;
                b"354 go ahead\r\n"
            } else if upper == "QUIT" {
                out.write_all(b"221 bye\r\n").ok();
                return;
            } else {
                b"502 5.5.1 no\r\n"
            };
            out.write_all(reply).ok();
        }
    }
}

/// A line-oriented SMTP client over any stream.
pub struct Client<S: std::io::Read + Write> {
    pub stream: BufReader<S>,
}

impl<S: std::io::Read + Write> Client<S> {
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.stream.read_line(&mut line).expect("read") > 0,
                "connection closed after {all:?}"
            );
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.stream
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.stream.get_mut().flush().expect("flush");
        self.reply()
    }
}

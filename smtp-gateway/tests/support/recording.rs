//! A backend MTA on loopback that records every command it receives, per connection, with a
//! few scripted misbehaviours, and a bounded wait over what it recorded.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The commands of each connection the backend accepted, in the order they were accepted.
pub type Connections = Arc<Mutex<Vec<Vec<String>>>>;

/// How the recording backend behaves.
#[derive(Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// A well-behaved MTA that does not offer PIPELINING.
    Normal,
    /// A well-behaved MTA that offers PIPELINING.
    Pipelining,
    /// Closes the connection right after accepting a message.
    CloseAfterMessage,
    /// Closes the connection, without a reply, at the second EHLO on it.
    CloseAtSecondEhlo,
}

/// Starts the backend. Whatever its behaviour, it refuses `MAIL ... SIZE=` with 552 and
/// recipients whose local part is `refused` with 550, and closes the connection without a reply
/// at a sender whose local part is `drop`; everything else is accepted.
pub fn recording_backend(behaviour: Behaviour) -> (SocketAddr, Connections) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let connections: Connections = Arc::default();
    let all = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let index = {
                let mut all = all.lock().expect("connections");
                all.push(Vec::new());
                all.len() - 1
            };
            let all = all.clone();
            std::thread::spawn(move || serve(stream, behaviour, index, &all));
        }
    });
    (addr, connections)
}

fn serve(stream: TcpStream, behaviour: Behaviour, index: usize, all: &Connections) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut out = stream.try_clone().expect("clone");
    let mut input = BufReader::new(stream);
    let _ = out.write_all(b"220 backend.test ESMTP\r\n");
    let mut in_data = false;
    let mut ehlos = 0;
    loop {
        let mut line = String::new();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_string();
        if in_data {
            if cmd == "." {
                in_data = false;
                let _ = out.write_all(b"250 2.0.0 queued\r\n");
                if behaviour == Behaviour::CloseAfterMessage {
                    return;
                }
            }
            continue;
        }
        all.lock().expect("connections")[index].push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            ehlos += 1;
            match behaviour {
                Behaviour::CloseAtSecondEhlo if ehlos == 2 => return,
                Behaviour::Pipelining => b"250-backend.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                _ => b"250-backend.test\r\n250 8BITMIME\r\n",
            }
        } else if upper.starts_with("MAIL FROM:<DROP@") {
            return;
        } else if upper.starts_with("MAIL") && upper.contains("SIZE=") {
            b"552 5.3.4 Message size exceeds fixed limit\r\n"
        } else if upper.starts_with("RCPT TO:<REFUSED@") {
            b"550 5.1.1 User unknown\r\n"
        } else if upper.starts_with("MAIL") || upper.starts_with("RCPT") || upper == "RSET" {
            b"250 2.0.0 Ok\r\n"
        } else if upper == "DATA" {
            in_data = true;
            b"354 go ahead\r\n"
        } else if upper == "QUIT" {
            let _ = out.write_all(b"221 2.0.0 bye\r\n");
            return;
        } else {
            b"502 5.5.1 no\r\n"
        };
        let _ = out.write_all(reply);
    }
}

/// Waits up to 10 s for `done` to hold over the recorded connections; returns them.
pub fn wait_for(
    connections: &Connections,
    what: &str,
    done: impl Fn(&[Vec<String>]) -> bool,
) -> Vec<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = connections.lock().expect("connections").clone();
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "{what}: {now:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

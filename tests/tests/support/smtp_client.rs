//! A blocking SMTP client for the end-to-end tests: one TCP connection (bound to a chosen source
//! address, or made by the caller, e.g. inside a network namespace), replies read whole, and a
//! MAIL/RCPT/DATA transaction in one call.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

/// Wait for one reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// A blocking SMTP client.
pub struct Client {
    /// Replies are read from here.
    reader: BufReader<TcpStream>,
    /// Commands are written here.
    writer: TcpStream,
}

/// A TCP connection from `source` to `addr` (in the calling thread's network namespace).
pub fn connect_from(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {source} -> {addr}: {e}"));
    socket.into()
}

impl Client {
    /// Connects from `source` to `addr` and reads the banner.
    pub fn connect(addr: SocketAddr, source: impl Into<IpAddr>) -> Client {
        Self::over(connect_from(addr, source.into()))
    }

    /// A client on an open connection; reads the banner (`220`).
    pub fn over(stream: TcpStream) -> Client {
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("read timeout");
        let writer = stream.try_clone().expect("clone");
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
        };
        let banner = client.reply();
        assert!(banner.starts_with("220"), "banner: {banner}");
        client
    }

    /// One complete reply, its lines joined by `\n`.
    pub fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("reading a reply after {lines:?}: {e}"));
            assert!(n > 0, "connection closed after {lines:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// Sends `line` (CRLF added) and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.reply()
    }

    /// Sends `lines` in one write (RFC 2920 pipelining) and returns one reply per line.
    pub fn pipeline(&mut self, lines: &[&str]) -> Vec<String> {
        let group: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        self.writer
            .write_all(group.as_bytes())
            .expect("write group");
        lines.iter().map(|_| self.reply()).collect()
    }

    /// One BDAT chunk (`BDAT n [LAST]` and its bytes in one write) and its reply.
    pub fn chunk(&mut self, bytes: &[u8], last: bool) -> String {
        let mut out = format!(
            "BDAT {}{}\r\n",
            bytes.len(),
            if last { " LAST" } else { "" }
        )
        .into_bytes();
        out.extend_from_slice(bytes);
        self.writer.write_all(&out).expect("write chunk");
        self.reply()
    }

    /// MAIL, RCPT, DATA with `text` (CRLF lines, without the final dot); the reply to the
    /// first command that is not positive, or to the end of data.
    pub fn send(&mut self, from: &str, to: &str, text: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        if !r.starts_with('2') {
            return r;
        }
        let r = self.cmd(&format!("RCPT TO:<{to}>"));
        if !r.starts_with('2') {
            return r;
        }
        let r = self.cmd("DATA");
        if !r.starts_with("354") {
            return r;
        }
        self.writer
            .write_all(format!("{text}.\r\n").as_bytes())
            .expect("write text");
        self.reply()
    }
}

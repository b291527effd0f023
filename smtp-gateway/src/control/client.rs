//! The CLI side of the control socket (blocking: the CLI has no async runtime).

use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    ControlError,
    protocol::{Request, Response},
};

/// A connection to a running daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
    /// `daemon.control_timeout`: how long each write and read may wait (named when it passes).
    timeout: Duration,
}

impl Client {
    /// Connects; `Ok(None)` when no daemon answers (no socket, or a stale one).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Option<Self>, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        let stream = match UnixStream::connect(path) {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                return Ok(None);
            }
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                return Err(ControlError::NotRoot(path.to_path_buf()));
            }
            Err(e) => return Err(io(e)),
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Some(Self {
            reader: BufReader::new(stream),
            writer,
            path: path.to_path_buf(),
            timeout,
        }))
    }

    /// The daemon's process id, from the socket's peer credentials (`None` if the kernel does
    /// not say): for telling the operator which process to stop.
    pub fn daemon_pid(&self) -> Option<i32> {
        nix::sys::socket::getsockopt(&self.writer, nix::sys::socket::sockopt::PeerCredentials)
            .ok()
            .map(|c| c.pid())
            .filter(|pid| *pid > 0)
    }

    /// Sends one request and reads its response.
    pub fn call(&mut self, request: &Request) -> Result<Response, ControlError> {
        // A socket timeout is EAGAIN ("Resource temporarily unavailable"): said as what it is.
        let io = |source: std::io::Error| match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ControlError::Timeout {
                path: self.path.clone(),
                timeout: self.timeout,
            },
            _ => ControlError::Io {
                path: self.path.clone(),
                source,
            },
        };
        let mut line = serde_json::to_string(request).map_err(|e| ControlError::Protocol {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(io)?;
        let mut answer = String::new();
        let n = self.reader.read_line(&mut answer).map_err(io)?;
        if n == 0 {
            return Err(ControlError::Protocol {
                path: self.path.clone(),
                message: "the daemon closed the connection".into(),
            });
        }
        serde_json::from_str(&answer).map_err(|e| ControlError::Protocol {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

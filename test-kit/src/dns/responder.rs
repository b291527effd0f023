//! [`DnsResponder`]: a UDP socket on `127.0.0.1:0` and a thread answering from a [`Records`]
//! table until the responder is dropped.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::records::{Question, Records};
use crate::{Error, Result};

/// Largest query read (a DNS query over UDP without EDNS fits in 512 bytes).
const RECEIVE_BUFFER: usize = 4096;
/// How often the serving thread looks at the stop flag when no query arrives (a wake-up
/// datagram normally stops it at once).
const STOP_CHECK: Duration = Duration::from_millis(500);

/// A running responder; stopped (its thread joined) when dropped. Usable from synchronous and
/// asynchronous tests alike: it serves from its own thread.
#[derive(Debug)]
pub struct DnsResponder {
    /// Where it listens.
    addr: SocketAddr,
    /// Every question received, in arrival order.
    questions: Arc<Mutex<Vec<Question>>>,
    /// Set on drop; the thread ends at its next receive.
    stop: Arc<AtomicBool>,
    /// The serving thread.
    thread: Option<JoinHandle<()>>,
}

impl DnsResponder {
    /// Binds `127.0.0.1:0/udp` and serves `records` until dropped.
    pub fn start(records: Records) -> Result<Self> {
        let bind = |error| Error::Dns {
            action: "binding 127.0.0.1:0/udp",
            error,
        };
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(bind)?;
        socket
            .set_read_timeout(Some(STOP_CHECK))
            .map_err(|error| Error::Dns {
                action: "setting the receive timeout",
                error,
            })?;
        let addr = socket.local_addr().map_err(|error| Error::Dns {
            action: "reading the bound address",
            error,
        })?;
        let questions = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("dns-responder".into())
            .spawn({
                let questions = questions.clone();
                let stop = stop.clone();
                move || serve(&socket, &records, &questions, &stop)
            })
            .map_err(|error| Error::Dns {
                action: "starting the serving thread",
                error,
            })?;
        Ok(Self {
            addr,
            questions,
            stop,
            thread: Some(thread),
        })
    }

    /// The address to configure as a name server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The query names received so far (lowercase, no trailing dot), in arrival order.
    pub fn queries(&self) -> Vec<String> {
        self.questions().into_iter().map(|q| q.name).collect()
    }

    /// The questions received so far, with their record types, in arrival order.
    pub fn questions(&self) -> Vec<Question> {
        self.questions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the thread from its receive; if this datagram is lost, the receive timeout ends
        // the wait anyway.
        if let Ok(socket) = UdpSocket::bind("127.0.0.1:0") {
            let _ = socket.send_to(&[], self.addr);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers queries until `stop` is set. Malformed datagrams are ignored; replies that cannot be
/// sent are lost, as on a real network (the client's timeout covers them).
fn serve(
    socket: &UdpSocket,
    records: &Records,
    questions: &Mutex<Vec<Question>>,
    stop: &AtomicBool,
) {
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    while !stop.load(Ordering::SeqCst) {
        let (len, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            // A signal to the test process interrupts a receive with a timeout even under
            // SA_RESTART (signal(7)): ask again rather than stop answering.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        };
        let Some((question, reply)) = buffer.get(..len).and_then(|b| records.answer(b)) else {
            continue;
        };
        questions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(question);
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::{
        op::{Message, Query, ResponseCode},
        rr::{Name, RData, RecordType, rdata::A},
    };

    use super::*;

    /// Sends a query for `name` of type `kind` to `server`; the decoded reply, or `None` when
    /// none came within `wait`.
    fn ask(server: SocketAddr, name: &str, kind: RecordType, wait: Duration) -> Option<Message> {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
        socket.set_read_timeout(Some(wait)).expect("timeout");
        let mut query = Message::query();
        query.metadata.id = 7;
        query.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        socket
            .send_to(&query.to_vec().expect("encode"), server)
            .expect("send");
        let mut buffer = [0u8; 4096];
        let (len, _) = socket.recv_from(&mut buffer).ok()?;
        Some(Message::from_vec(&buffer[..len]).expect("decode"))
    }

    #[test]
    fn serves_the_table_records_questions_and_stops_on_drop() {
        let listed = Ipv4Addr::new(127, 0, 0, 2);
        let responder = DnsResponder::start(
            Records::new()
                .a("1.0.0.127.zen.test", &[listed])
                .silent("drop.test")
                .servfail("fail.test"),
        )
        .expect("start the responder");
        let wait = Duration::from_secs(5);
        let reply =
            ask(responder.addr(), "1.0.0.127.zen.test.", RecordType::A, wait).expect("an answer");
        assert_eq!(reply.metadata.id, 7);
        assert!(matches!(&reply.answers[..], [r] if r.data == RData::A(A(listed))));
        let reply =
            ask(responder.addr(), "x.fail.test.", RecordType::TXT, wait).expect("an answer");
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(
            ask(
                responder.addr(),
                "1.0.0.127.drop.test.",
                RecordType::A,
                Duration::from_millis(300)
            )
            .is_none()
        );
        assert_eq!(
            responder.queries(),
            ["1.0.0.127.zen.test", "x.fail.test", "1.0.0.127.drop.test"]
        );
        assert_eq!(responder.questions()[1].kind, RecordType::TXT);

        let addr = responder.addr();
        drop(responder);
        // The port is free again: the socket went with the thread.
        UdpSocket::bind(addr).expect("the responder's port is released");
    }
}

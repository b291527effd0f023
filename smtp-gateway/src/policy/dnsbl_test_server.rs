//! A tiny authoritative DNS server for the DNSBL tests: UDP on `127.0.0.1:<ephemeral>`, fixed A
//! records, NXDOMAIN for every other name, and zones that answer SERVFAIL or never answer.
//! Message encoding is hickory-proto's (re-exported by hickory-resolver).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use hickory_resolver::proto::{
    op::{Message, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A},
};
use tokio::{net::UdpSocket, task::JoinHandle};

/// What the server knows: names are lowercase, without the trailing dot.
#[derive(Debug, Default, Clone)]
pub(super) struct Zones {
    /// Exact names and their A records.
    records: HashMap<String, Vec<Ipv4Addr>>,
    /// Zones whose queries are dropped (the client times out).
    silent: Vec<String>,
    /// Zones whose queries get SERVFAIL.
    servfail: Vec<String>,
}

impl Zones {
    /// Adds A records for `name`.
    pub(super) fn a(mut self, name: &str, answers: &[Ipv4Addr]) -> Self {
        self.records
            .entry(name.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .extend_from_slice(answers);
        self
    }

    /// Makes every query at or below `zone` go unanswered.
    pub(super) fn silent(mut self, zone: &str) -> Self {
        self.silent.push(zone.to_ascii_lowercase());
        self
    }

    /// Makes every query at or below `zone` answer SERVFAIL.
    pub(super) fn servfail(mut self, zone: &str) -> Self {
        self.servfail.push(zone.to_ascii_lowercase());
        self
    }
}

/// Whether `name` is `zone` or below it.
fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// A running server; stopped when dropped.
pub(super) struct TestDnsServer {
    /// Where it listens.
    addr: SocketAddr,
    /// Every query name received, lowercase without the trailing dot, in arrival order.
    queries: Arc<Mutex<Vec<String>>>,
    /// The serving task.
    task: JoinHandle<()>,
}

impl TestDnsServer {
    /// Binds `127.0.0.1:0` and serves `zones` until dropped.
    pub(super) async fn start(zones: Zones) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("test DNS server: cannot bind 127.0.0.1:0/udp");
        let addr = socket
            .local_addr()
            .expect("test DNS server: no local address");
        let queries = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(socket, zones, queries.clone()));
        Self {
            addr,
            queries,
            task,
        }
    }

    /// The address to configure as a name server.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The query names received so far.
    pub(super) fn queries(&self) -> Vec<String> {
        self.queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TestDnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers queries until the task is aborted; malformed datagrams are ignored.
async fn serve(socket: UdpSocket, zones: Zones, queries: Arc<Mutex<Vec<String>>>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Some(request) = buffer.get(..len).and_then(|b| Message::from_vec(b).ok()) else {
            continue;
        };
        let Some(query) = request.queries.first() else {
            continue;
        };
        let name = query
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name.clone());
        if zones.silent.iter().any(|zone| in_zone(&name, zone)) {
            continue;
        }

        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        response.add_queries(request.queries.iter().cloned());
        if zones.servfail.iter().any(|zone| in_zone(&name, zone)) {
            response.metadata.response_code = ResponseCode::ServFail;
        } else if let Some(answers) = zones.records.get(&name) {
            // The name exists: its A records, or NODATA for other types.
            if query.query_type() == RecordType::A {
                for answer in answers {
                    response.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A(*answer)),
                    ));
                }
            }
        } else {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        if let Ok(bytes) = response.to_vec() {
            // A lost reply is what a real network does too; the client's timeout covers it.
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

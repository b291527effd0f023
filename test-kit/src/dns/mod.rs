//! A DNS responder for tests: UDP on `127.0.0.1:<ephemeral>`, answering from a table of A, AAAA,
//! PTR and TXT records, recording every question, with zones that never answer (the client times
//! out) or answer SERVFAIL. The system resolver is never involved: point the code under test at
//! [`DnsResponder::addr`].
//!
//! - `records.rs`: [`Records`], the table and the answer to one query (pure, unit-tested);
//! - `responder.rs`: [`DnsResponder`], the socket and the thread serving the table.

mod records;
mod responder;

pub use records::{Question, Records};
pub use responder::DnsResponder;

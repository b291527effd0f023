//! The table a [`DnsResponder`](super::DnsResponder) serves and the answer it gives to one query.
//! Message encoding is hickory-proto's.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, PTR, TXT},
    },
};

/// Time to live of every answer.
const TTL: u32 = 60;

/// What the responder knows. Names are compared lowercase, without the trailing dot.
#[derive(Debug, Default, Clone)]
pub struct Records {
    /// Exact names and their records, of any of the served types.
    records: HashMap<String, Vec<RData>>,
    /// Zones whose queries are dropped (the client times out).
    silent: Vec<String>,
    /// Zones whose queries get SERVFAIL.
    servfail: Vec<String>,
}

/// One question received: the name (lowercase, no trailing dot) and the record type asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The query name, lowercase, without the trailing dot.
    pub name: String,
    /// The type asked for (`A`, `AAAA`, `PTR`, `TXT`, ...).
    pub kind: RecordType,
}

/// `name` lowercase and without its trailing dot: how the table and the questions spell names.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` is `zone` or below it.
fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

impl Records {
    /// An empty table: every name is NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `rdata` records for `name`.
    fn add(mut self, name: &str, rdata: impl IntoIterator<Item = RData>) -> Self {
        self.records.entry(key(name)).or_default().extend(rdata);
        self
    }

    /// Adds A records for `name`.
    pub fn a(self, name: &str, answers: &[Ipv4Addr]) -> Self {
        self.add(name, answers.iter().map(|a| RData::A(A(*a))))
    }

    /// Adds AAAA records for `name`.
    pub fn aaaa(self, name: &str, answers: &[Ipv6Addr]) -> Self {
        self.add(name, answers.iter().map(|a| RData::AAAA(AAAA(*a))))
    }

    /// Adds PTR records for the reverse name of `ip` (`in-addr.arpa` or `ip6.arpa`).
    /// Panics when a target is not a DNS name (a test's mistake).
    pub fn ptr(self, ip: IpAddr, targets: &[&str]) -> Self {
        let name = Self::reverse_name(ip);
        let rdata: Vec<RData> = targets
            .iter()
            .map(|target| {
                let target = Name::from_ascii(target)
                    .unwrap_or_else(|e| panic!("PTR target {target:?}: {e}"));
                RData::PTR(PTR(target))
            })
            .collect();
        self.add(&name, rdata)
    }

    /// Adds one PTR record for the reverse name of `ip` whose target is made of `labels` as raw
    /// bytes: a DNS label may hold any octet (a space, CR LF, `=`, non-ASCII), which is what a
    /// hostile reverse zone serves. Panics when a label is empty or longer than 63 bytes.
    pub fn ptr_raw(self, ip: IpAddr, labels: &[&[u8]]) -> Self {
        let name = Self::reverse_name(ip);
        let target = Name::from_labels(labels.iter().copied())
            .unwrap_or_else(|e| panic!("PTR target {labels:?}: {e}"));
        self.add(&name, [RData::PTR(PTR(target))])
    }

    /// Adds one TXT record for `name` made of `strings` (an SPF record is usually one string).
    pub fn txt(self, name: &str, strings: &[&str]) -> Self {
        let strings = strings.iter().map(|s| s.to_string()).collect();
        self.add(name, [RData::TXT(TXT::new(strings))])
    }

    /// Makes every query at or below `zone` go unanswered (the client times out).
    pub fn silent(mut self, zone: &str) -> Self {
        self.silent.push(key(zone));
        self
    }

    /// Makes every query at or below `zone` answer SERVFAIL.
    pub fn servfail(mut self, zone: &str) -> Self {
        self.servfail.push(key(zone));
        self
    }

    /// The reverse name of `ip` as the table spells it, e.g. `7.100.51.198.in-addr.arpa`.
    pub fn reverse_name(ip: IpAddr) -> String {
        key(&Name::from(ip).to_ascii())
    }

    /// The question in `request` and the reply to send (`None`: stay silent). `None` for both
    /// when `request` is not a DNS query with a question.
    pub fn answer(&self, request: &[u8]) -> Option<(Question, Option<Vec<u8>>)> {
        let request = Message::from_vec(request).ok()?;
        let query = request.queries.first()?;
        let question = Question {
            name: key(&query.name().to_ascii()),
            kind: query.query_type(),
        };
        if self.silent.iter().any(|zone| in_zone(&question.name, zone)) {
            return Some((question, None));
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        response.add_queries(request.queries.iter().cloned());
        if self
            .servfail
            .iter()
            .any(|zone| in_zone(&question.name, zone))
        {
            response.metadata.response_code = ResponseCode::ServFail;
        } else if let Some(records) = self.records.get(&question.name) {
            // The name exists: its records of the type asked for, or NODATA.
            for rdata in records.iter().filter(|r| r.record_type() == question.kind) {
                response.add_answer(Record::from_rdata(query.name().clone(), TTL, rdata.clone()));
            }
        } else {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        Some((question, response.to_vec().ok()))
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{OpCode, Query};

    use super::*;

    /// A query for `name` of type `kind`, encoded.
    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 4242;
        message.metadata.op_code = OpCode::Query;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(
            Name::from_ascii(name).expect("test name"),
            kind,
        ));
        message.to_vec().expect("encode the query")
    }

    /// The decoded reply of `records` to a query for `name` of type `kind`.
    fn ask(records: &Records, name: &str, kind: RecordType) -> (Question, Option<Message>) {
        let (question, reply) = records.answer(&query(name, kind)).expect("a question");
        let reply = reply.map(|bytes| Message::from_vec(&bytes).expect("decode the reply"));
        (question, reply)
    }

    fn table() -> Records {
        Records::new()
            .a(
                "7.100.51.198.zen.test.",
                &["127.0.0.2".parse().expect("ip")],
            )
            .aaaa("mail.example.test", &["2001:db8::25".parse().expect("ip")])
            .ptr("198.51.100.7".parse().expect("ip"), &["mail.example.test."])
            .txt("example.test", &["v=spf1 -all"])
            .silent("drop.test")
            .servfail("fail.test")
    }

    #[test]
    fn answers_each_type_from_the_table() {
        let records = table();
        let (question, reply) = ask(&records, "7.100.51.198.ZEN.test.", RecordType::A);
        assert_eq!(
            question,
            Question {
                name: "7.100.51.198.zen.test".into(),
                kind: RecordType::A
            }
        );
        let reply = reply.expect("an answer");
        assert_eq!(reply.metadata.id, 4242);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(matches!(
            reply.answers[..],
            [ref r] if r.data == RData::A(A("127.0.0.2".parse().expect("ip")))
        ));

        let reply = ask(&records, "mail.example.test.", RecordType::AAAA).1;
        assert_eq!(reply.expect("an answer").answers.len(), 1);

        let (question, reply) = ask(&records, "7.100.51.198.in-addr.arpa.", RecordType::PTR);
        assert_eq!(question.kind, RecordType::PTR);
        let reply = reply.expect("an answer");
        assert!(matches!(
            &reply.answers[..],
            [r] if r.data == RData::PTR(PTR(Name::from_ascii("mail.example.test.").expect("name")))
        ));

        let reply = ask(&records, "example.test.", RecordType::TXT).1;
        let reply = reply.expect("an answer");
        assert!(matches!(
            &reply.answers[..],
            [r] if r.data == RData::TXT(TXT::new(vec!["v=spf1 -all".into()]))
        ));
    }

    #[test]
    fn unknown_names_missing_types_silent_and_failing_zones() {
        let records = table();
        let reply = ask(&records, "nothing.test.", RecordType::A).1;
        assert_eq!(
            reply.expect("an answer").metadata.response_code,
            ResponseCode::NXDomain
        );
        // NODATA: the name exists, without records of that type.
        let reply = ask(&records, "example.test.", RecordType::A)
            .1
            .expect("an answer");
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());

        let (question, reply) = ask(&records, "1.0.0.127.drop.test.", RecordType::A);
        assert_eq!(question.name, "1.0.0.127.drop.test");
        assert!(reply.is_none(), "a silent zone never answers");
        assert!(ask(&records, "drop.test.", RecordType::TXT).1.is_none());
        // Only at or below the zone.
        assert!(ask(&records, "nodrop.test.", RecordType::A).1.is_some());

        let reply = ask(&records, "x.fail.test.", RecordType::A).1;
        assert_eq!(
            reply.expect("an answer").metadata.response_code,
            ResponseCode::ServFail
        );

        assert!(records.answer(b"not dns").is_none());
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            Records::reverse_name("198.51.100.7".parse().expect("ip")),
            "7.100.51.198.in-addr.arpa"
        );
        let v6 = Records::reverse_name("2001:db8::7".parse().expect("ip"));
        assert!(v6.starts_with("7.0.0.0."), "{v6}");
        assert!(v6.ends_with(".8.b.d.0.1.0.0.2.ip6.arpa"), "{v6}");
    }
}

//! The gateway with its DNS checks on: a second `smtp-gateway run`, configured like the first
//! plus `[dns]` (the test kit's responder on loopback as its only name server), `[fcrdns]`,
//! `[spf]` and `[auth_results]`; the responder's table; and what the responder was asked.
//!
//! Every SPF result but `pass` is set to `reject`, so a session whose SPF is not `pass` is
//! refused and its run fails; `fcrdns` keeps its default action (`score`), and a firing of it
//! fails the run like any check (see [`Gateway::verify`]).
//!
//! Clients of the benchmark connect from 127.0.0.1. hickory answers the PTR of 127.0.0.0/8 and
//! the address of `localhost` itself (RFC 6761 special-use names), without asking a name server;
//! the table still holds a PTR and an A record for 127.0.0.1, so a resolver that did ask would
//! verify a name too. The report says which names the sessions got and what the responder was
//! asked.

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use anyhow::{Context, Result, ensure};
use smtp_gateway_test_kit::{DnsResponder, Records};

use crate::{FROM, HELO, gateway::Gateway};

/// The gateway's instance number (cgroup, pins, files); the memory part numbers its own from 1.
const INSTANCE: usize = 100;
/// The SPF record of the sender domain and of the HELO name: every loopback client passes.
const SPF_RECORD: &str = "v=spf1 ip4:127.0.0.0/8 -all";
/// The client address whose PTR the table holds (every client connects from it).
const CLIENT: [u8; 4] = [127, 0, 0, 1];

/// A gateway with FCrDNS + SPF on, and the DNS responder it asks. Field order is drop order:
/// the gateway stops before its name server.
pub struct DnsGateway {
    pub gw: Gateway,
    dns: DnsResponder,
    /// Sessions per logged `client_name`, over every verified run.
    pub client_names: BTreeMap<String, u64>,
    /// The responder's table, as the report shows it.
    pub records: String,
}

/// What the responder was asked over the whole benchmark.
pub struct DnsSummary {
    /// Questions per (type, name), sorted.
    pub questions: BTreeMap<(String, String), u64>,
    /// Sessions per logged `client_name`.
    pub client_names: BTreeMap<String, u64>,
}

/// The sender domain of the clients' MAIL FROM.
fn sender_domain() -> &'static str {
    FROM.rsplit_once('@').map_or(FROM, |(_, domain)| domain)
}

/// The `[dns]`, `[fcrdns]`, `[spf]` and `[auth_results]` sections naming `nameserver`.
pub fn sections(nameserver: SocketAddr) -> String {
    format!(
        "[dns]\n\
         nameservers = [\"{nameserver}\"]\n\
         \n\
         [fcrdns]\n\
         enabled = true\n\
         \n\
         [spf]\n\
         enabled = true\n\
         softfail = {{ action = \"reject\" }}\n\
         neutral = {{ action = \"reject\" }}\n\
         none = {{ action = \"reject\" }}\n\
         temperror = {{ action = \"reject\" }}\n\
         permerror = {{ action = \"reject\" }}\n\
         \n\
         [auth_results]\n\
         enabled = true\n"
    )
}

impl DnsGateway {
    /// Starts the responder, then a gateway in front of `backend` with extra `[smtp]` keys and
    /// the DNS sections.
    pub fn start(dir: &Path, backend: SocketAddr, smtp_extra: &str) -> Result<Self> {
        let client = std::net::Ipv4Addr::from(CLIENT);
        let domain = sender_domain();
        let ptr_target = format!("{HELO}.");
        let records = Records::new()
            .txt(domain, &[SPF_RECORD])
            .txt(HELO, &[SPF_RECORD])
            .ptr(client.into(), &[ptr_target.as_str()])
            .a(HELO, &[client]);
        let shown = format!(
            "{domain}. TXT \"{SPF_RECORD}\"\n{HELO}. TXT \"{SPF_RECORD}\"\n{}. PTR {HELO}.\n\
             {HELO}. A {client}\n(TTL 60 s; any other name: NXDOMAIN)",
            Records::reverse_name(client.into())
        );
        let dns = DnsResponder::start(records).context("starting the DNS responder")?;
        eprintln!("DNS responder on {}", dns.addr());
        let gw = Gateway::start_with(dir, INSTANCE, backend, smtp_extra, &sections(dns.addr()))?;
        Ok(Self {
            gw,
            dns,
            client_names: BTreeMap::new(),
            records: shown,
        })
    }

    /// [`Gateway::verify`], then: the responder has been asked for the sender domain's SPF
    /// record (the resolver caches it, so not necessarily during this run).
    pub fn verify(&mut self, messages: u64, what: &str) -> Result<()> {
        let stats = self.gw.verify(messages, what)?;
        for (name, n) in stats.client_names {
            *self.client_names.entry(name).or_default() += n;
        }
        let domain = sender_domain();
        let questions = self.dns.questions();
        ensure!(
            questions
                .iter()
                .any(|q| q.name == domain && q.kind.to_string() == "TXT"),
            "{what}: the DNS responder was never asked for the TXT record of {domain}; it was \
             asked: {:?}",
            questions
        );
        Ok(())
    }

    /// What the responder was asked so far, and the client names logged.
    pub fn summary(&self) -> DnsSummary {
        let mut questions = BTreeMap::new();
        for q in self.dns.questions() {
            *questions.entry((q.kind.to_string(), q.name)).or_default() += 1;
        }
        DnsSummary {
            questions,
            client_names: self.client_names.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use smtp_gateway_tests::gateway_config;

    #[test]
    fn the_dns_gateway_configuration_is_valid_and_turns_the_checks_on() {
        let nameserver = "127.0.0.1:5353".parse().expect("addr");
        let mut text = gateway_config::toml(
            "pin_dir = \"/sys/fs/bpf/sgw-bench-x\"\ninterfaces = []\n",
            "127.0.0.1:2525",
            "",
            "127.0.0.1:2526".parse().expect("addr"),
        );
        text.push('\n');
        text.push_str(&super::sections(nameserver));
        let config = smtp_gateway::config::Config::parse(&text, "bench").expect("valid");
        assert_eq!(config.dns.nameservers, [nameserver]);
        assert!(config.fcrdns.enabled);
        assert!(config.spf.enabled);
        assert!(config.auth_results.enabled);
    }

    #[test]
    fn the_sender_domain_is_the_part_after_the_at() {
        assert_eq!(super::sender_domain(), "example.net");
    }
}

//! The paths a message can take to the sink, behind one interface: where to connect, which
//! cgroup holds its processes, and how to check that a run through it was clean.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;

use crate::{
    dns_gateway::DnsGateway, gateway::Gateway, haproxy::Haproxy, haraka::Haraka, postfix::Postfix,
    proc::Cgroup, sink::Sink,
};

/// Report names of the two gateways.
pub const GATEWAY: &str = "gateway";
pub const GATEWAY_DNS: &str = "gateway FCrDNS+SPF";

/// How long Postfix may take to relay what it accepted in one run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

pub enum Contender {
    /// Straight to smtp-sink: the baseline.
    Direct,
    Gateway(Gateway),
    /// The same gateway with FCrDNS and SPF on, asking a DNS responder on loopback.
    GatewayDns(DnsGateway),
    Haproxy(Haproxy),
    Haraka(Haraka),
    Postfix(Postfix),
}

impl Contender {
    pub fn name(&self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Gateway(_) => GATEWAY,
            Contender::GatewayDns(_) => GATEWAY_DNS,
            Contender::Haproxy(_) => "HAProxy",
            Contender::Haraka(_) => "Haraka",
            Contender::Postfix(_) => "Postfix",
        }
    }

    pub fn addr(&self, sink: &Sink) -> SocketAddr {
        match self {
            Contender::Direct => sink.addr,
            Contender::Gateway(g) => g.addr,
            Contender::GatewayDns(g) => g.gw.addr,
            Contender::Haproxy(h) => h.addr,
            Contender::Haraka(h) => h.addr,
            Contender::Postfix(p) => p.addr,
        }
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        match self {
            Contender::Direct => None,
            Contender::Gateway(g) => Some(&g.cgroup),
            Contender::GatewayDns(g) => Some(&g.gw.cgroup),
            Contender::Haproxy(h) => Some(&h.cgroup),
            Contender::Haraka(h) => Some(&h.cgroup),
            Contender::Postfix(p) => Some(&p.cgroup),
        }
    }

    /// CPU time of its cgroup so far (zero for direct).
    pub fn cpu(&self) -> Result<Duration> {
        self.cgroup().map_or(Ok(Duration::ZERO), Cgroup::usage)
    }

    /// After a run of `messages` one-message sessions: the sink counted exactly `messages` more
    /// than `before`, and the contender's own record is clean. Returns Postfix's queue drain
    /// time (the others relay before they acknowledge).
    pub fn verify(
        &mut self,
        sink: &Sink,
        before: u64,
        messages: u64,
        what: &str,
    ) -> Result<Option<Duration>> {
        let quick = Duration::from_secs(5);
        match self {
            Contender::Direct | Contender::Haproxy(_) => {
                sink.expect(before, messages, quick, what)?;
                Ok(None)
            }
            Contender::Gateway(g) => {
                sink.expect(before, messages, quick, what)?;
                g.verify(messages, what)?;
                Ok(None)
            }
            Contender::GatewayDns(g) => {
                sink.expect(before, messages, quick, what)?;
                g.verify(messages, what)?;
                Ok(None)
            }
            Contender::Haraka(h) => {
                sink.expect(before, messages, quick, what)?;
                h.verify(what)?;
                Ok(None)
            }
            Contender::Postfix(p) => {
                let drained = p.verify(messages, DRAIN_TIMEOUT, what)?;
                sink.expect(before, messages, quick, what)?;
                Ok(Some(drained))
            }
        }
    }
}

//! [`Dnsbl`]: the resolver over the configured name servers only, the reversed query names, and
//! the scoring of the answers against the compiled sites.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{NetError, runtime::TokioRuntimeProvider},
    proto::rr::{Name, RData, RecordType},
};
use tokio::task::JoinSet;

use super::{
    config::{DnsblConfig, compile_site},
    error::DnsblError,
    filter::AnswerFilter,
    score::{DnsblFailure, DnsblHit, DnsblScore, LookupFailure, is_list_error_code},
};

/// A site ready for scoring.
#[derive(Debug)]
struct CompiledSite {
    /// Index into [`Dnsbl::zones`] of the zone this site reads.
    zone: usize,
    /// Added once when an answer matches.
    weight: i32,
    /// `None`: any answer in 127.0.0.0/8.
    filter: Option<AnswerFilter>,
}

impl CompiledSite {
    /// Whether `answer` counts for this site.
    fn matches(&self, answer: Ipv4Addr) -> bool {
        match &self.filter {
            Some(filter) => filter.matches(answer),
            // Unfiltered: ignore what is not a list code, e.g. the address a resolver that
            // rewrites NXDOMAIN returns.
            None => answer.octets()[0] == 127,
        }
    }
}

/// DNSBL/DNSWL scorer: the compiled sites and a resolver over the configured name servers.
#[derive(Debug)]
pub struct Dnsbl {
    /// Resolver over `dnsbl.nameservers` only (it caches answers up to their TTL).
    resolver: TokioResolver,
    /// Distinct zones, each queried once per client.
    zones: Vec<String>,
    /// The sites in configuration order.
    sites: Vec<CompiledSite>,
    /// Deadline for all lookups of one client.
    timeout: Duration,
    /// Total at which a client is listed.
    threshold: i32,
}

impl Dnsbl {
    /// Checks `config` (whether `enabled` or not: name servers and sites are required) and
    /// builds the resolver. No I/O happens until [`score`](Self::score).
    pub fn new(config: &DnsblConfig) -> Result<Self, DnsblError> {
        config.check(true)?;
        let mut zones: Vec<String> = Vec::new();
        let mut sites = Vec::with_capacity(config.sites.len());
        for (index, site) in config.sites.iter().enumerate() {
            let (zone, weight, filter) = compile_site(index, site)?;
            let zone = match zones.iter().position(|z| *z == zone) {
                Some(existing) => existing,
                None => {
                    zones.push(zone);
                    zones.len() - 1
                }
            };
            sites.push(CompiledSite {
                zone,
                weight,
                filter,
            });
        }

        let name_servers = config
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut options = ResolverOpts::default();
        // One retransmission within the deadline; `score` enforces the deadline itself.
        options.timeout = config.timeout / 2;
        options.attempts = 1;
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .map_err(DnsblError::Resolver)?;

        Ok(Self {
            resolver,
            zones,
            sites,
            timeout: config.timeout,
            threshold: config.threshold,
        })
    }

    /// Looks `client` up in every zone concurrently and adds up the weights of the sites that
    /// match. Returns within the configured timeout (plus scheduling delay); zones that have
    /// not answered by then are reported as [`LookupFailure::Timeout`].
    pub async fn score(&self, client: IpAddr) -> DnsblScore {
        let mut lookups = JoinSet::new();
        for (index, zone) in self.zones.iter().enumerate() {
            let resolver = self.resolver.clone();
            let name = query_name(client, zone);
            lookups.spawn(async move { (index, lookup_a(&resolver, &name).await) });
        }
        let mut results: Vec<Option<Result<Vec<Ipv4Addr>, LookupFailure>>> =
            self.zones.iter().map(|_| None).collect();
        let collect = async {
            while let Some(joined) = lookups.join_next().await {
                match joined {
                    Ok((index, result)) => {
                        if let Some(slot) = results.get_mut(index) {
                            *slot = Some(result);
                        }
                    }
                    Err(e) => tracing::warn!("DNSBL lookup task ended abnormally: {e}"),
                }
            }
        };
        let timed_out = tokio::time::timeout(self.timeout, collect).await.is_err();
        // Dropping the set aborts the lookups still running.
        drop(lookups);

        let mut score = DnsblScore::default();
        let mut answers: Vec<Vec<Ipv4Addr>> = Vec::with_capacity(self.zones.len());
        for (zone, result) in self.zones.iter().zip(results) {
            let result = result.unwrap_or_else(|| {
                Err(if timed_out {
                    LookupFailure::Timeout
                } else {
                    LookupFailure::Dns("lookup task ended abnormally".into())
                })
            });
            let mut listed = Vec::new();
            match result {
                Ok(found) => {
                    for answer in found {
                        if is_list_error_code(answer) {
                            score.failures.push(DnsblFailure {
                                zone: zone.clone(),
                                reason: LookupFailure::ListError(answer),
                            });
                        } else {
                            listed.push(answer);
                        }
                    }
                }
                Err(reason) => score.failures.push(DnsblFailure {
                    zone: zone.clone(),
                    reason,
                }),
            }
            answers.push(listed);
        }
        for failure in &score.failures {
            tracing::debug!(%client, zone = %failure.zone, "DNSBL lookup failed: {}", failure.reason);
        }

        for site in &self.sites {
            let (Some(zone), Some(zone_answers)) =
                (self.zones.get(site.zone), answers.get(site.zone))
            else {
                continue;
            };
            let matched: Vec<Ipv4Addr> = zone_answers
                .iter()
                .copied()
                .filter(|a| site.matches(*a))
                .collect();
            if !matched.is_empty() {
                score.total = score.total.saturating_add(site.weight);
                score.hits.push(DnsblHit {
                    zone: zone.clone(),
                    weight: site.weight,
                    answers: matched,
                });
            }
        }
        score.listed = score.total >= self.threshold;
        score
    }
}

/// The A answers for `name`: empty when the name does not exist or has no A record.
async fn lookup_a(resolver: &TokioResolver, name: &str) -> Result<Vec<Ipv4Addr>, LookupFailure> {
    let name = Name::from_ascii(name)
        .map_err(|e| LookupFailure::Dns(format!("bad query name {name:?}: {e}")))?;
    match resolver.lookup(name, RecordType::A).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()),
        // NXDOMAIN or NODATA: not listed.
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(NetError::Timeout) => Err(LookupFailure::Timeout),
        Err(e) => Err(LookupFailure::Dns(e.to_string())),
    }
}

/// The fully qualified query name for `client` under `zone`: IPv4 octets reversed
/// (`7.100.51.198.zone.`), IPv6 nibbles reversed (32 labels). IPv4-mapped IPv6 addresses are
/// looked up as IPv4.
fn query_name(client: IpAddr, zone: &str) -> String {
    use std::fmt::Write as _;

    let mut name = String::with_capacity(64 + zone.len() + 2);
    match client.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            // Writing to a String cannot fail.
            let _ = write!(name, "{d}.{c}.{b}.{a}.");
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(zone);
    name.push('.');
    name
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv6Addr,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::policy::dnsbl::{
        Problem, ZoneError,
        site::{MAX_ZONE_LEN, normalize_zone},
        test_support::{ip4, site},
    };
    use smtp_gateway_test_kit::{DnsResponder, Records};

    // ---- query names ----

    #[test]
    fn ipv4_query_name_reverses_the_octets() {
        assert_eq!(
            query_name("198.51.100.7".parse().expect("ip"), "zen.example"),
            "7.100.51.198.zen.example."
        );
        // IPv4-mapped IPv6 is looked up as the IPv4 address it carries.
        assert_eq!(
            query_name("::ffff:198.51.100.7".parse().expect("ip"), "zen.example"),
            "7.100.51.198.zen.example."
        );
    }

    #[test]
    fn ipv6_query_name_reverses_the_nibbles() {
        let client: IpAddr = "2001:db8::7".parse().expect("ip");
        assert_eq!(
            query_name(client, "zen.example"),
            "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example."
        );
        let client = IpAddr::V6(Ipv6Addr::new(0xfedc, 0xba98, 0, 0, 0, 0, 0x1234, 0x5678));
        let name = query_name(client, "z");
        assert!(name.starts_with("8.7.6.5.4.3.2.1."), "{name}");
        assert!(name.ends_with("8.9.a.b.c.d.e.f.z."), "{name}");
        assert_eq!(name.split('.').count(), 32 + 2);
    }

    #[test]
    fn query_names_fit_in_a_dns_name_for_the_longest_zone() {
        let label = "a".repeat(62);
        let zone = format!("{label}.{label}.{}.b", "a".repeat(61));
        assert_eq!(zone.len(), MAX_ZONE_LEN);
        assert_eq!(normalize_zone(&zone).as_deref(), Ok(zone.as_str()));
        let name = query_name("2001:db8::7".parse().expect("ip"), &zone);
        assert!(Name::from_ascii(&name).is_ok(), "{name}");
        let too_long = format!("c{zone}");
        assert!(matches!(
            normalize_zone(&too_long),
            Err(ZoneError::TooLong(_))
        ));
    }

    #[test]
    fn new_refuses_what_validation_refuses() {
        let err = Dnsbl::new(&DnsblConfig::default()).unwrap_err();
        assert!(err.to_string().starts_with("dnsbl.nameservers:"), "{err}");
        let config = DnsblConfig {
            nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
            sites: vec![site("zen.example=127.0.0.[2..1]")],
            ..DnsblConfig::default()
        };
        let err = Dnsbl::new(&config).unwrap_err();
        assert!(
            matches!(&err, DnsblError::Invalid { key, problem: Problem::Filter { .. } } if key == "dnsbl.sites[0].filter"),
            "{err}"
        );
        let config = DnsblConfig {
            nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
            ..DnsblConfig::default()
        };
        assert!(matches!(
            Dnsbl::new(&config),
            Err(DnsblError::Invalid {
                problem: Problem::NoSites,
                ..
            })
        ));
    }

    // ---- lookups against a local DNS server ----

    const LISTED: &str = "198.51.100.7";
    const LISTED_BOTH: &str = "198.51.100.8";
    const UNLISTED: &str = "198.51.100.9";
    const LISTED_V6: &str = "2001:db8::7";
    const ERROR_CODE: &str = "198.51.100.20";
    const HIJACKED: &str = "198.51.100.21";

    /// `zen.test` lists LISTED (127.0.0.2, 127.0.0.10), LISTED_BOTH (127.0.0.3) and LISTED_V6
    /// (127.0.0.4); `wl.test` lists LISTED_BOTH (127.0.0.15); `other.test` lists LISTED
    /// (127.0.0.2); `codes.test` answers an error code and a non-loopback address;
    /// `drop.test` never answers; `fail.test` answers SERVFAIL.
    fn server() -> DnsResponder {
        let v6_name = query_name(LISTED_V6.parse().expect("ip"), "zen.test");
        let name = |client: &str, zone: &str| query_name(client.parse().expect("ip"), zone);
        DnsResponder::start(
            Records::new()
                .a(
                    &name(LISTED, "zen.test"),
                    &[ip4("127.0.0.2"), ip4("127.0.0.10")],
                )
                .a(&name(LISTED_BOTH, "zen.test"), &[ip4("127.0.0.3")])
                .a(&v6_name, &[ip4("127.0.0.4")])
                .a(&name(LISTED_BOTH, "wl.test"), &[ip4("127.0.0.15")])
                .a(&name(LISTED, "other.test"), &[ip4("127.0.0.2")])
                .a(&name(ERROR_CODE, "codes.test"), &[ip4("127.255.255.254")])
                .a(&name(HIJACKED, "codes.test"), &[ip4("192.0.2.1")])
                .silent("drop.test")
                .servfail("fail.test"),
        )
        .expect("start the test DNS responder")
    }

    /// Deadline for the lookups that the server answers (generous: they take milliseconds).
    const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
    /// How late after its deadline `score` may return.
    const MARGIN: Duration = Duration::from_millis(500);

    fn scorer(server: &DnsResponder, sites: &[&str], timeout: Duration) -> Dnsbl {
        Dnsbl::new(&DnsblConfig {
            enabled: true,
            nameservers: vec![server.addr()],
            timeout,
            threshold: 3,
            sites: sites.iter().map(|s| site(s)).collect(),
        })
        .expect("test configuration is valid")
    }

    async fn score(dnsbl: &Dnsbl, client: &str) -> DnsblScore {
        dnsbl.score(client.parse().expect("client address")).await
    }

    #[tokio::test]
    async fn listed_client_reaches_the_threshold() {
        let server = server();
        let dnsbl = scorer(&server, &["zen.test*3"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, LISTED).await;
        assert_eq!(s.failures, vec![]);
        assert_eq!(s.total, 3);
        assert!(s.listed);
        assert_eq!(
            s.hits,
            vec![DnsblHit {
                zone: "zen.test".into(),
                weight: 3,
                answers: vec![ip4("127.0.0.2"), ip4("127.0.0.10")],
            }]
        );
        assert_eq!(server.queries(), vec!["7.100.51.198.zen.test".to_string()]);
    }

    #[tokio::test]
    async fn filter_excludes_answers() {
        let server = server();
        let dnsbl = scorer(
            &server,
            &["zen.test=127.0.0.[2..3]*3", "zen.test=127.0.0.[4..9]*5"],
            LOOKUP_TIMEOUT,
        );
        let s = score(&dnsbl, LISTED).await;
        assert_eq!(s.total, 3);
        assert_eq!(s.hits.len(), 1);
        assert_eq!(s.hits[0].answers, vec![ip4("127.0.0.2")]);
        assert!(s.failures.is_empty());
        // Both sites read the same zone: one query.
        assert_eq!(server.queries().len(), 1);

        let dnsbl = scorer(&server, &["zen.test=127.0.0.[4..9]*5"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, LISTED).await;
        assert_eq!((s.total, s.listed, s.hits.len()), (0, false, 0));
    }

    #[tokio::test]
    async fn weights_add_up_across_sites() {
        let server = server();
        let dnsbl = scorer(
            &server,
            &[
                "zen.test=127.0.0.2*1",
                "zen.test=127.0.0.10*2",
                "other.test*2",
                "wl.test*-5",
            ],
            LOOKUP_TIMEOUT,
        );
        let s = score(&dnsbl, LISTED).await;
        assert_eq!(s.total, 5);
        assert!(s.listed);
        let zones: Vec<(&str, i32)> = s.hits.iter().map(|h| (h.zone.as_str(), h.weight)).collect();
        assert_eq!(
            zones,
            vec![("zen.test", 1), ("zen.test", 2), ("other.test", 2)]
        );
        assert!(s.failures.is_empty());
        let mut queries = server.queries();
        queries.sort();
        assert_eq!(
            queries,
            vec![
                "7.100.51.198.other.test",
                "7.100.51.198.wl.test",
                "7.100.51.198.zen.test"
            ]
        );
    }

    #[tokio::test]
    async fn allowlist_weight_cancels_a_listing() {
        let server = server();
        let dnsbl = scorer(
            &server,
            &["zen.test*3", "wl.test=127.0.[0..255].[15]*-3"],
            LOOKUP_TIMEOUT,
        );
        let s = score(&dnsbl, LISTED_BOTH).await;
        assert_eq!(s.total, 0);
        assert!(!s.listed);
        assert_eq!(s.hits.len(), 2);
        assert_eq!(s.hits[1].zone, "wl.test");
        assert_eq!(s.hits[1].weight, -3);
        assert_eq!(s.hits[1].answers, vec![ip4("127.0.0.15")]);
        // On the blocklist only: the allowlist takes nothing away.
        let s = score(&dnsbl, LISTED).await;
        assert_eq!((s.total, s.listed), (3, true));
    }

    #[tokio::test]
    async fn unlisted_client_scores_zero() {
        let server = server();
        let dnsbl = scorer(
            &server,
            &["zen.test*3", "wl.test*-2", "other.test"],
            LOOKUP_TIMEOUT,
        );
        let s = score(&dnsbl, UNLISTED).await;
        assert_eq!(s, DnsblScore::default());
    }

    #[tokio::test]
    async fn ipv6_client_is_looked_up_by_nibbles() {
        let server = server();
        let dnsbl = scorer(&server, &["zen.test*4"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, LISTED_V6).await;
        assert_eq!(s.total, 4);
        assert_eq!(s.hits[0].answers, vec![ip4("127.0.0.4")]);
        assert_eq!(
            server.queries(),
            vec![
                "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test"
                    .to_string()
            ]
        );
        let s = score(&dnsbl, "2001:db8::8").await;
        assert_eq!(s, DnsblScore::default());
    }

    #[tokio::test]
    async fn silent_zone_times_out_within_the_deadline_and_scores_zero() {
        let server = server();
        let timeout = Duration::from_millis(300);
        let dnsbl = scorer(&server, &["drop.test*5", "zen.test*3"], timeout);
        let started = Instant::now();
        let s = score(&dnsbl, LISTED).await;
        let elapsed = started.elapsed();
        assert!(elapsed < timeout + MARGIN, "took {elapsed:?}");
        assert_eq!(
            s.failures,
            vec![DnsblFailure {
                zone: "drop.test".into(),
                reason: LookupFailure::Timeout,
            }]
        );
        // What did answer still counts.
        assert_eq!(s.total, 3);
        assert_eq!(s.hits.len(), 1);

        let dnsbl = scorer(&server, &["drop.test*5"], timeout);
        let started = Instant::now();
        let s = score(&dnsbl, LISTED).await;
        assert!(started.elapsed() < timeout + MARGIN);
        assert_eq!((s.total, s.listed, s.failures.len()), (0, false, 1));
    }

    #[tokio::test]
    async fn servfail_is_a_failure_not_a_listing() {
        let server = server();
        let dnsbl = scorer(&server, &["fail.test*5"], LOOKUP_TIMEOUT);
        let started = Instant::now();
        let s = score(&dnsbl, LISTED).await;
        assert!(
            started.elapsed() < LOOKUP_TIMEOUT,
            "SERVFAIL should not wait for the deadline"
        );
        assert_eq!(s.total, 0);
        assert_eq!(s.failures.len(), 1);
        assert_eq!(s.failures[0].zone, "fail.test");
        assert!(
            matches!(&s.failures[0].reason, LookupFailure::Dns(m) if m.contains("Server Failure")),
            "{:?}",
            s.failures[0].reason
        );
    }

    #[tokio::test]
    async fn list_error_codes_and_foreign_answers_never_score() {
        let server = server();
        let dnsbl = scorer(&server, &["codes.test*5"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, ERROR_CODE).await;
        assert_eq!(s.total, 0);
        assert_eq!(
            s.failures,
            vec![DnsblFailure {
                zone: "codes.test".into(),
                reason: LookupFailure::ListError(ip4("127.255.255.254")),
            }]
        );
        // An unfiltered site only counts 127.0.0.0/8 answers (not a resolver's NXDOMAIN rewrite).
        let s = score(&dnsbl, HIJACKED).await;
        assert_eq!(s, DnsblScore::default());
        // An explicit filter decides by itself.
        let dnsbl = scorer(&server, &["codes.test=192.0.2.[0..255]*5"], LOOKUP_TIMEOUT);
        let s = score(&dnsbl, HIJACKED).await;
        assert_eq!(s.total, 5);
    }

    #[tokio::test]
    async fn unreachable_name_server_is_a_failure() {
        // A port nobody listens on: ICMP port unreachable, or a timeout.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        drop(socket);
        let timeout = Duration::from_millis(300);
        let dnsbl = Dnsbl::new(&DnsblConfig {
            enabled: true,
            nameservers: vec![addr],
            timeout,
            threshold: 3,
            sites: vec![site("zen.test*3")],
        })
        .expect("valid");
        let started = Instant::now();
        let s = score(&dnsbl, LISTED).await;
        assert!(started.elapsed() < timeout + MARGIN);
        assert_eq!((s.total, s.listed, s.failures.len()), (0, false, 1));
    }
}

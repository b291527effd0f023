//! Anti-relay, differential: a RCPT line is parsed the way the session parses it (smtp-proto, or
//! the address-literal fallback), and the relay policy judges the path the session gives it. A
//! client that may not relay must never have a recipient accepted whose domain, as the parser
//! (and so a backend parsing the line like it) reads it, is not one we accept.
//!
//! Input: any bytes, used as the whole command line (the seeds start with `RCPT TO:`).

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use smtp_gateway::fuzzing::{RelayConfig, RelayVerdict, check_recipient, rcpt_paths};

/// The only domain accepted.
const ACCEPTED: &str = "example.org";

/// The domain of `address` as the parser gave it, normalised as the policy compares domains.
fn parser_domain(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    Some(domain.to_lowercase())
}

fuzz_target!(|line: &[u8]| {
    let Some(paths) = rcpt_paths(line) else {
        return;
    };
    let cfg = RelayConfig {
        accepted_domains: vec![ACCEPTED.into()],
        ..RelayConfig::default()
    };
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let RelayVerdict::Accept { normalized } = check_recipient(&cfg, client, false, &paths.policy)
    else {
        return;
    };
    if normalized == "Postmaster" {
        // RFC 5321 4.1.1.3: accepted without a domain, delivered locally; the parser must not
        // read a domain into it either (smtp-proto gives an empty address there).
        assert_eq!(
            parser_domain(&paths.parsed),
            None,
            "Postmaster accepted for parsed path {:?}",
            paths.parsed
        );
        return;
    }
    let policy_domain = parser_domain(&normalized);
    assert_eq!(
        policy_domain.as_deref(),
        Some(ACCEPTED),
        "policy accepted {normalized:?} from {:?}",
        String::from_utf8_lossy(line)
    );
    assert_eq!(
        parser_domain(&paths.parsed),
        policy_domain,
        "accepted {:?} (policy path {:?}) but the parser reads {:?}",
        String::from_utf8_lossy(line),
        paths.policy,
        paths.parsed
    );
});

//! Properties of the anti-relay policy (`check_recipient`): who may give which domain, which
//! address tricks are refused from everyone, and that the domain accepted is the address's own.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use smtp_gateway::fuzzing::{PathError, RelayConfig, RelayRefusal, RelayVerdict, check_recipient};

/// The accepted domain of every case.
const ACCEPTED: &str = "example.org";

fn config() -> RelayConfig {
    RelayConfig {
        accepted_domains: vec![ACCEPTED.into(), "*.example.net".into()],
        relay_networks: vec!["192.0.2.0/24".parse().expect("network")],
        allow_address_literals: false,
    }
}

/// A client outside `relay_networks`, and one inside.
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
const RELAY_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));

fn local_part() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$&'*+/=?^_`{|}~-]{1,8}(\\.[A-Za-z0-9_-]{1,8}){0,2}"
        .prop_filter("no tricks", |l| !l.contains(['%', '!']))
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?"
}

fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 2..4).prop_map(|labels| labels.join("."))
}

fn verdict(client: IpAddr, authenticated: bool, rcpt: &str) -> RelayVerdict {
    check_recipient(&config(), client, authenticated, rcpt)
}

proptest! {
    /// A recipient in an accepted domain is accepted from anyone, in any case, with or without
    /// angle brackets and a trailing dot, and normalised to the lowercase domain.
    #[test]
    fn accepted_domains_are_open_to_everyone(local in local_part(), upper in any::<bool>(), dot in any::<bool>(), brackets in any::<bool>()) {
        let mut d = if upper { ACCEPTED.to_uppercase() } else { ACCEPTED.to_string() };
        if dot { d.push('.'); }
        let addr = format!("{local}@{d}");
        let rcpt = if brackets { format!("<{addr}>") } else { addr };
        prop_assert_eq!(
            verdict(STRANGER, false, &rcpt),
            RelayVerdict::Accept { normalized: format!("{local}@{ACCEPTED}") }
        );
    }

    /// Any other domain is refused to a stranger (subdomains of `*.example.net` excepted) and
    /// accepted from a relay client or an authenticated one; the normalised domain is the
    /// address's own.
    #[test]
    fn other_domains_need_relay_rights(local in local_part(), d in domain()) {
        let rcpt = format!("<{local}@{d}>");
        let open = d == ACCEPTED || d.ends_with(".example.net");
        match verdict(STRANGER, false, &rcpt) {
            RelayVerdict::Accept { normalized } => {
                prop_assert!(open, "{} accepted from a stranger", rcpt);
                prop_assert_eq!(normalized, format!("{local}@{d}"));
            }
            RelayVerdict::Reject { reason } => {
                prop_assert!(!open, "{} refused: {}", rcpt, reason);
                prop_assert_eq!(reason, RelayRefusal::RelayDenied { domain: d.clone() });
            }
        }
        let expected = RelayVerdict::Accept { normalized: format!("{local}@{d}") };
        prop_assert_eq!(verdict(RELAY_CLIENT, false, &rcpt), expected.clone());
        prop_assert_eq!(verdict(STRANGER, true, &rcpt), expected);
    }

    /// Routing tricks are refused from everyone, relay clients and authenticated ones included.
    #[test]
    fn tricks_are_refused_from_everyone(
        local in local_part(),
        d in domain(),
        other in domain(),
        client in prop_oneof![Just(STRANGER), Just(RELAY_CLIENT)],
        authenticated in any::<bool>(),
    ) {
        let cases = [
            (format!("<@{other}:{local}@{ACCEPTED}>"), RelayRefusal::Path(PathError::SourceRoute)),
            (format!("<{local}%{other}@{ACCEPTED}>"), RelayRefusal::Path(PathError::PercentHack)),
            (format!("<{other}!{local}@{ACCEPTED}>"), RelayRefusal::Path(PathError::BangPath)),
            (format!("<\"{local}@{other}\"@{ACCEPTED}>"), RelayRefusal::Path(PathError::QuotedLocalPart)),
            (format!("<{local}@{d}@{ACCEPTED}>"), RelayRefusal::Path(PathError::MultipleAt)),
            (format!("<{local}@[192.0.2.1]>"), RelayRefusal::AddressLiteral),
        ];
        for (rcpt, reason) in cases {
            prop_assert_eq!(verdict(client, authenticated, &rcpt), RelayVerdict::Reject { reason });
        }
    }

    /// Whatever the text, an accepted recipient's domain is accepted or the client may relay:
    /// the policy never accepts for a stranger a domain it does not accept.
    #[test]
    fn a_stranger_only_reaches_accepted_domains(rcpt in "[ -~]{0,40}") {
        if let RelayVerdict::Accept { normalized } = verdict(STRANGER, false, &rcpt)
            && normalized != "Postmaster"
        {
            let (_, d) = normalized.rsplit_once('@').expect("an accepted address has a domain");
            prop_assert!(d == ACCEPTED || d.ends_with(".example.net"), "{:?} -> {}", rcpt, normalized);
        }
    }
}

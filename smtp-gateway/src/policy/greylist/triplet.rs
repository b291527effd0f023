//! The greylisting triplet: the client's network, the normalised sender and the recipient, and
//! the fixed-size key they make. Every part comes from the client: it is read by characters,
//! never cut at a byte index, and hashed, so a key is 64 hex digits whatever was sent.
//!
//! Sender normalisation (so one sender's retries and mailing-list bounces stay one triplet):
//! ASCII lowercase; in the local part a BATV prefix (`prvs=TAG=`, `msprvs1=TAG=`, `btv1==TAG==`)
//! is removed, then everything from the first `+` (a sub-address tag), then every run of digits
//! standing alone between separators (VERP and bounce numbers: `bounce-1234-5678`) becomes `#`.

use std::net::IpAddr;

use ipnet::IpNet;

/// BATV prefixes: the tag runs from the prefix to the next `=` (or `==` for `btv1`).
const BATV_PREFIXES: [(&str, &str); 3] = [("prvs=", "="), ("msprvs1=", "="), ("btv1==", "==")];

/// The network a client is grouped in (`/ipv4_prefix` or `/ipv6_prefix`); an IPv4-mapped IPv6
/// address is judged as IPv4.
pub fn client_network(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> IpNet {
    let ip = ip.to_canonical();
    let prefix = match ip {
        IpAddr::V4(_) => ipv4_prefix.min(32),
        IpAddr::V6(_) => ipv6_prefix.min(128),
    };
    // The prefix is within the family's length: this cannot fail; the host route if it did.
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// The sender as greylisting compares it (see the module docs); `<>` stays empty.
pub fn normalise_sender(sender: &str) -> String {
    let lower = sender.to_ascii_lowercase();
    let (local, domain) = match lower.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (lower.as_str(), None),
    };
    let local = strip_batv(local);
    let local = local.split_once('+').map_or(local, |(head, _)| head);
    let local = hash_numbers(local);
    match domain {
        Some(domain) => format!("{local}@{domain}"),
        None => local,
    }
}

/// `local` without its BATV prefix, when it has a well-formed one (prefix, tag, separator, and
/// something left).
fn strip_batv(local: &str) -> &str {
    for (prefix, end) in BATV_PREFIXES {
        if let Some(rest) = local.strip_prefix(prefix)
            && let Some((_tag, original)) = rest.split_once(end)
            && !original.is_empty()
        {
            return original;
        }
    }
    local
}

/// Every run of ASCII digits not touching a letter becomes `#`.
fn hash_numbers(local: &str) -> String {
    let mut out = String::with_capacity(local.len());
    let mut digits = String::new();
    // Whether the character before the current run of digits was a letter.
    let mut after_letter = false;
    for c in local.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            if after_letter || c.is_alphabetic() {
                out.push_str(&digits);
            } else {
                out.push('#');
            }
            digits.clear();
        }
        after_letter = c.is_alphabetic();
        out.push(c);
    }
    if !digits.is_empty() {
        if after_letter {
            out.push_str(&digits);
        } else {
            out.push('#');
        }
    }
    out
}

/// The store key of a triplet: the SHA-256 of its three parts, in hex (64 characters).
pub fn triplet_key(network: &IpNet, sender: &str, recipient: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(network.to_string().as_bytes());
    ctx.update(b"\0");
    ctx.update(normalise_sender(sender).as_bytes());
    ctx.update(b"\0");
    ctx.update(recipient.to_ascii_lowercase().as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_normalise_as_documented() {
        for (input, want) in [
            ("", ""),
            ("User@Example.COM", "user@example.com"),
            ("user+tag@example.com", "user@example.com"),
            ("user+a+b@example.com", "user@example.com"),
            ("prvs=1234abcdef=user@example.com", "user@example.com"),
            ("prvs=4567abcdef=user+tag@example.com", "user@example.com"),
            (
                "msprvs1=17abcdefg=bounces@example.com",
                "bounces@example.com",
            ),
            ("btv1==123abcd==user@example.com", "user@example.com"),
            ("bounce-1234-5678@lists.example", "bounce-#-#@lists.example"),
            ("list-bounces-42@example.com", "list-bounces-#@example.com"),
            ("123@example.com", "#@example.com"),
            ("user2@example.com", "user2@example.com"),
            ("2user@example.com", "2user@example.com"),
            (
                "srs0=ab=cd=example.org=user@example.com",
                "srs0=ab=cd=example.org=user@example.com",
            ),
            ("\"a@b\"@example.com", "\"a@b\"@example.com"),
            ("prvs=", "prvs="),
            ("prvs==@x", "prvs==@x"),
            ("prvs=tag=@x", "prvs=tag=@x"),
            ("nodomain", "nodomain"),
            ("@", "@"),
            ("+@+", "@+"),
        ] {
            assert_eq!(normalise_sender(input), want, "{input:?}");
        }
    }

    #[test]
    fn hostile_senders_never_panic() {
        let long = "9".repeat(100_000);
        let cases = [
            "ÿ+é@É".to_string(),
            "prvs=é=ü@ö".to_string(),
            "btv1==€==".to_string(),
            "1\u{0}2@\u{0}".to_string(),
            "🦀123🦀+🦀@🦀".to_string(),
            "١٢٣@example.com".to_string(),
            "msprvs1=".to_string(),
            format!("{long}@{long}"),
            format!("prvs={long}={long}+{long}@x"),
            "@@@@+++===".to_string(),
            "\u{10FFFF}\u{FEFF}+".to_string(),
        ];
        for case in &cases {
            let out = normalise_sender(case);
            assert!(out.len() <= case.len() + 1, "{case:?} grew");
            assert_eq!(
                triplet_key(&client_network([198, 18, 0, 1].into(), 24, 64), case, case).len(),
                64
            );
        }
        assert_eq!(normalise_sender("ÿ+é@É"), "ÿ@É", "only ASCII is lowercased");
        assert_eq!(normalise_sender("🦀123🦀+🦀@🦀"), "🦀#🦀@🦀");
    }

    #[test]
    fn networks_group_clients() {
        let v4 = |s: &str| -> IpAddr { s.parse().expect("ip") };
        assert_eq!(
            client_network(v4("198.18.7.9"), 24, 64).to_string(),
            "198.18.7.0/24"
        );
        assert_eq!(
            client_network(v4("::ffff:198.18.7.9"), 24, 64).to_string(),
            "198.18.7.0/24"
        );
        assert_eq!(
            client_network(v4("2001:db8:1:2:3:4:5:6"), 24, 64).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            client_network(v4("198.18.7.9"), 40, 200).to_string(),
            "198.18.7.9/32"
        );
    }

    #[test]
    fn keys_tell_triplets_apart() {
        let net = client_network([198, 18, 0, 1].into(), 24, 64);
        let other = client_network([198, 18, 1, 1].into(), 24, 64);
        let key = triplet_key(&net, "a+x@example.com", "rcpt@example.org");
        assert_eq!(
            key,
            triplet_key(&net, "A+y@EXAMPLE.com", "RCPT@example.org")
        );
        assert_eq!(
            key,
            triplet_key(
                &client_network([198, 18, 0, 200].into(), 24, 64),
                "a@example.com",
                "rcpt@example.org"
            )
        );
        assert_ne!(
            key,
            triplet_key(&other, "a@example.com", "rcpt@example.org")
        );
        assert_ne!(key, triplet_key(&net, "b@example.com", "rcpt@example.org"));
        assert_ne!(key, triplet_key(&net, "a@example.com", "other@example.org"));
        // The separator keeps parts from sliding into each other.
        assert_ne!(triplet_key(&net, "ab", "c"), triplet_key(&net, "a", "bc"));
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

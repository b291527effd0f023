//! Properties of prefixes: what `block`/`allow`/`import` accept as a target (`Target`, host bits
//! refused, IPv4-mapped IPv6 folded to IPv4) and the rate limiter's key masks derived from
//! `ipv4_prefix`/`ipv6_prefix`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use smtp_gateway::fuzzing::{DataplaneConfig, RateLimitConfig, Target, TargetError, kernel_config};

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

proptest! {
    /// A prefix without host bits is accepted, covers exactly its addresses, and prints back to
    /// itself; with host bits it is refused, naming the network meant; /0 is always refused.
    #[test]
    fn ipv4_prefixes(addr in v4(), len in 0u8..=32, probe in v4()) {
        let given = Ipv4Net::new(addr, len).expect("length <= 32");
        let parsed = given.to_string().parse::<Target>();
        if len == 0 {
            let refused = matches!(
                parsed,
                Err(TargetError::Everything(_)) | Err(TargetError::HostBits { .. })
            );
            prop_assert!(refused, "/0 accepted: {:?}", parsed);
            return Ok(());
        }
        if given.trunc() != given {
            prop_assert_eq!(
                parsed,
                Err(TargetError::HostBits {
                    given: given.to_string(),
                    network: given.trunc().to_string(),
                })
            );
            return Ok(());
        }
        let target = parsed.expect("a true prefix is accepted");
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let inside = u32::from(probe) & mask == u32::from(addr) & mask;
        prop_assert_eq!(target.contains(IpAddr::V4(probe)), inside);
        prop_assert!(target.contains(IpAddr::V4(addr)));
        prop_assert_eq!(target.to_string().parse::<Target>(), Ok(target));
        prop_assert_eq!(matches!(target, Target::V4(_)), len == 32);
    }

    /// The same for IPv6; an IPv4-mapped prefix of /96 or longer becomes the IPv4 prefix.
    #[test]
    fn ipv6_prefixes(addr in v6(), len in 0u8..=128, probe in v6()) {
        let net = Ipv6Net::new(addr, len).expect("length <= 128").trunc();
        let parsed = net.to_string().parse::<Target>();
        if len == 0 {
            prop_assert!(matches!(parsed, Err(TargetError::Everything(_))));
            return Ok(());
        }
        let target = parsed.expect("a true prefix is accepted");
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        let inside = u128::from(probe) & mask == u128::from(addr) & mask;
        if net.addr().to_ipv4_mapped().is_none() || len < 96 {
            prop_assert_eq!(target.contains(IpAddr::V6(probe)), inside);
            prop_assert_eq!(target.net(), IpNet::V6(net));
        }
        prop_assert_eq!(target.to_string().parse::<Target>(), Ok(target));
    }

    /// `::ffff:a.b.c.d/(96+n)` is the IPv4 target `a.b.c.d/n`.
    #[test]
    fn mapped_prefixes_fold_to_ipv4(addr in v4(), len in 1u8..=32) {
        let v4 = Ipv4Net::new(addr, len).expect("length <= 32").trunc();
        let mapped = Ipv6Net::new(v4.addr().to_ipv6_mapped(), 96 + len).expect("length <= 128");
        prop_assert_eq!(
            mapped.to_string().parse::<Target>(),
            v4.to_string().parse::<Target>()
        );
    }

    /// The rate limiter's key masks: an address masked with them is its configured prefix.
    #[test]
    fn rate_limit_key_masks(v4_len in 0u8..=32, v6_len in 0u8..=128, a in v4(), b in v6()) {
        let cfg = DataplaneConfig {
            rate_limit: RateLimitConfig {
                ipv4_prefix: v4_len,
                ipv6_prefix: v6_len,
                ..RateLimitConfig::default()
            },
            ..DataplaneConfig::default()
        };
        let k = kernel_config(&cfg);
        // The kernel reads the masks as native integers over network-order bytes.
        let masked4 = u32::from_ne_bytes(a.octets()) & k.rate_v4_mask;
        prop_assert_eq!(
            Ipv4Addr::from(masked4.to_ne_bytes()),
            Ipv4Net::new(a, v4_len).expect("length").trunc().addr()
        );
        let o = b.octets();
        let hi = u64::from_ne_bytes(o[..8].try_into().expect("8 bytes")) & k.rate_v6_mask[0];
        let lo = u64::from_ne_bytes(o[8..].try_into().expect("8 bytes")) & k.rate_v6_mask[1];
        let mut masked6 = [0u8; 16];
        masked6[..8].copy_from_slice(&hi.to_ne_bytes());
        masked6[8..].copy_from_slice(&lo.to_ne_bytes());
        prop_assert_eq!(
            Ipv6Addr::from(masked6),
            Ipv6Net::new(b, v6_len).expect("length").trunc().addr()
        );
    }
}

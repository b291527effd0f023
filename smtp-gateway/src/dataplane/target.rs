//! What an operator blocks or allows: one address or one prefix, IPv4 or IPv6, parsed strictly.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A single address (exact maps) or a true prefix (LPM tries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    NetV4(Ipv4Net),
    NetV6(Ipv6Net),
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?} is not an IP address or prefix")]
    Syntax(String),
    #[error("{given} has host bits set (did you mean {network}?)")]
    HostBits { given: String, network: String },
    #[error("{0} covers a whole address family; refusing")]
    Everything(String),
}

impl Target {
    /// As a prefix (addresses as /32 or /128).
    pub fn net(self) -> IpNet {
        match self {
            Target::V4(a) => IpNet::V4(Ipv4Net::from(a)),
            Target::V6(a) => IpNet::V6(Ipv6Net::from(a)),
            Target::NetV4(n) => IpNet::V4(n),
            Target::NetV6(n) => IpNet::V6(n),
        }
    }

    /// Whether `addr` is covered.
    pub fn contains(self, addr: IpAddr) -> bool {
        self.net().contains(&addr)
    }

    /// From a prefix, normalising /32 and /128 to addresses and IPv4-mapped IPv6 to IPv4.
    pub fn from_net(net: IpNet) -> Result<Self, TargetError> {
        if net.trunc() != net {
            return Err(TargetError::HostBits {
                given: net.to_string(),
                network: net.trunc().to_string(),
            });
        }
        if net.prefix_len() == 0 {
            return Err(TargetError::Everything(net.to_string()));
        }
        Ok(match net {
            IpNet::V4(n) if n.prefix_len() == 32 => Target::V4(n.addr()),
            IpNet::V4(n) => Target::NetV4(n),
            IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
                Some(v4) if n.prefix_len() >= 96 => {
                    return Self::from_net(IpNet::V4(
                        Ipv4Net::new(v4, n.prefix_len() - 96)
                            .map_err(|_| TargetError::Syntax(n.to_string()))?,
                    ));
                }
                _ if n.prefix_len() == 128 => Target::V6(n.addr()),
                _ => Target::NetV6(n),
            },
        })
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Self::from_net(IpNet::from(addr));
        }
        let net = s
            .parse::<IpNet>()
            .map_err(|_| TargetError::Syntax(s.to_string()))?;
        Self::from_net(net)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::V4(a) => a.fmt(f),
            Target::V6(a) => a.fmt(f),
            Target::NetV4(n) => n.fmt(f),
            Target::NetV6(n) => n.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let cases: &[(&str, &str)] = &[
            ("198.18.0.1", "198.18.0.1"),
            ("198.18.0.1/32", "198.18.0.1"),
            ("198.18.0.0/15", "198.18.0.0/15"),
            (" 2001:db8::1 ", "2001:db8::1"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:db8::5/128", "2001:db8::5"),
            ("::ffff:198.18.0.9", "198.18.0.9"),
            ("::ffff:198.18.0.0/120", "198.18.0.0/24"),
        ];
        for (input, expected) in cases {
            let t: Target = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(t.to_string(), *expected, "{input}");
        }
        assert!(matches!("198.18.0.1".parse(), Ok(Target::V4(_))));
        assert!(matches!("198.18.0.0/24".parse(), Ok(Target::NetV4(_))));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert_eq!(
            "198.18.0.1/24".parse::<Target>(),
            Err(TargetError::HostBits {
                given: "198.18.0.1/24".into(),
                network: "198.18.0.0/24".into()
            })
        );
        for bad in [
            "",
            "198.18.0",
            "198.18.0.0/33",
            "mail.example",
            "2001:db8::/129",
            "1.2.3.4 x",
        ] {
            assert!(
                matches!(bad.parse::<Target>(), Err(TargetError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "0.0.0.0/0".parse::<Target>(),
            Err(TargetError::Everything(_))
        ));
        assert!(matches!(
            "::/0".parse::<Target>(),
            Err(TargetError::Everything(_))
        ));
    }
}

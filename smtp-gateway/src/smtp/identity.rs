//! Passing the client's identity to the backend: a PROXY protocol v2 header (HAProxy spec,
//! section 2.2) or an XCLIENT command (Postfix XCLIENT_README), with xtext encoding.

use std::net::{IpAddr, SocketAddr};

use super::ehlo_caps::EhloCaps;

/// PROXY v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The PROXY v2 header for a TCP connection from `client` to `server`.
pub fn proxy_v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, PROXY command
    match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.octets());
            out.extend_from_slice(&s.octets());
        }
        (c, s) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(c).octets());
            out.extend_from_slice(&v6(s).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&server.port().to_be_bytes());
    out
}

/// xtext (RFC 3461 section 4): printable ASCII except `+` and `=`, the rest as `+HH`.
pub fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// What XCLIENT tells the backend about the client.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Client address and port.
    pub addr: SocketAddr,
    /// Verified reverse name, if any (`[UNAVAILABLE]` otherwise).
    pub name: Option<String>,
    /// HELO/EHLO name the client gave.
    pub helo: Option<String>,
    /// `ESMTP` or `SMTP`.
    pub esmtp: bool,
    /// SASL login name, if authenticated.
    pub login: Option<String>,
}

/// The XCLIENT command line (without CRLF) for `id`, using only the attributes the backend
/// advertised with its XCLIENT keyword (e.g. `XCLIENT NAME ADDR PORT PROTO HELO`).
pub fn xclient_command(id: &ClientIdentity, offered: &EhloCaps) -> String {
    let has = |attr: &str| offered.xclient_offers(attr);
    let mut parts = vec!["XCLIENT".to_string()];
    if has("ADDR") {
        let addr = match id.addr.ip().to_canonical() {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("IPV6:{a}"),
        };
        parts.push(format!("ADDR={}", xtext(&addr)));
    }
    if has("PORT") {
        parts.push(format!("PORT={}", id.addr.port()));
    }
    if has("NAME") {
        parts.push(format!(
            "NAME={}",
            xtext(id.name.as_deref().unwrap_or("[UNAVAILABLE]"))
        ));
    }
    if has("HELO")
        && let Some(helo) = &id.helo
    {
        parts.push(format!("HELO={}", xtext(helo)));
    }
    if has("PROTO") {
        parts.push(format!("PROTO={}", if id.esmtp { "ESMTP" } else { "SMTP" }));
    }
    if has("LOGIN")
        && let Some(login) = &id.login
    {
        parts.push(format!("LOGIN={}", xtext(login)));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_v2_ipv4_header_layout() {
        let h = proxy_v2_header(
            "198.51.100.7:40000".parse().expect("addr"),
            "192.0.2.1:25".parse().expect("addr"),
        );
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[14..16], &[0, 12]);
        assert_eq!(&h[16..20], &[198, 51, 100, 7]);
        assert_eq!(&h[20..24], &[192, 0, 2, 1]);
        assert_eq!(&h[24..26], &40000u16.to_be_bytes());
        assert_eq!(&h[26..28], &25u16.to_be_bytes());
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn proxy_v2_mixed_families_use_ipv6() {
        let h = proxy_v2_header(
            "[2001:db8::7]:1".parse().expect("addr"),
            "192.0.2.1:25".parse().expect("addr"),
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(
            &h[32..48],
            &"::ffff:192.0.2.1"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets()
        );
    }

    #[test]
    fn xtext_encodes_specials() {
        assert_eq!(xtext("mx.example.org"), "mx.example.org");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext("é"), "+C3+A9");
    }

    /// The capabilities of an EHLO reply offering `XCLIENT {attrs}`.
    fn offering(attrs: &str) -> EhloCaps {
        EhloCaps::parse(&crate::smtp::reply::Reply::multi(
            250,
            vec!["backend.test".into(), format!("XCLIENT {attrs}")],
        ))
    }

    #[test]
    fn xclient_uses_advertised_attributes_only() {
        let id = ClientIdentity {
            addr: "[2001:db8::7]:4000".parse().expect("addr"),
            name: None,
            helo: Some("mx.example.org".into()),
            esmtp: true,
            login: None,
        };
        assert_eq!(
            xclient_command(&id, &offering("NAME ADDR PORT PROTO HELO LOGIN")),
            "XCLIENT ADDR=IPV6:2001:db8::7 PORT=4000 NAME=[UNAVAILABLE] HELO=mx.example.org PROTO=ESMTP"
        );
        assert_eq!(
            xclient_command(&id, &offering("ADDR")),
            "XCLIENT ADDR=IPV6:2001:db8::7"
        );
    }
}

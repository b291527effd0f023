//! A small builder of crafted Ethernet frames for `BPF_PROG_TEST_RUN`.
//!
//! A frame is a stack of layers written outside-in; each layer's "next protocol" field (EtherType,
//! IPv4 protocol, IPv6 next header) and every length field are filled from the layer that follows
//! at [`Frame::build`], so a test only states what it cares about:
//!
//! ```ignore
//! let frame = Frame::new()
//!     .vlan(TPID_8021AD, 100)
//!     .vlan(TPID_8021Q, 200)
//!     .ipv4(Ipv4::new("192.0.2.7"))
//!     .tcp(Tcp::syn(25))
//!     .build();
//! ```
//!
//! Checksums are not computed beyond the IPv4 header's: the XDP program never checks them.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::{Ipv4Addr, Ipv6Addr};

use smtp_gateway_tests::syn_frame::internet_checksum;

/// 802.1Q VLAN tag (customer tag, or inner tag of a double-tagged frame).
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad service tag (outer tag of a double-tagged frame).
pub const TPID_8021AD: u16 = 0x88a8;
/// EtherType of ARP, for a frame that is not IP at all.
pub const ETHERTYPE_ARP: u16 = 0x0806;

pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const TCP_LEN: usize = 20;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const PROTO_NONE: u8 = 59;

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// IPv4 header fields a test may vary.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Header length in 32-bit words (the IHL field). Values above 5 add NOP options; values
    /// below 5 are written as given in the field, over a normal 20-byte header.
    pub ihl: u8,
    /// The "don't fragment" flag (set by default, as Linux sets it on TCP segments).
    pub dont_fragment: bool,
    /// The "more fragments" flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub fragment_offset: u16,
    /// Overrides the protocol number derived from the next layer.
    pub protocol: Option<u8>,
    /// Overrides the version nibble (4).
    pub version: u8,
}

impl Ipv4 {
    /// A plain 20-byte header from `src` to 192.0.2.25.
    pub fn new(src: &str) -> Self {
        Self {
            src: src.parse().expect("IPv4 source"),
            dst: Ipv4Addr::new(192, 0, 2, 25),
            ihl: 5,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
            protocol: None,
            version: 4,
        }
    }
}

/// IPv6 header fields a test may vary.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Overrides the version nibble (6).
    pub version: u8,
}

impl Ipv6 {
    /// A header from `src` to 2001:db8:25::25.
    pub fn new(src: &str) -> Self {
        Self {
            src: src.parse().expect("IPv6 source"),
            dst: "2001:db8:25::25".parse().expect("IPv6 destination"),
            version: 6,
        }
    }
}

/// IPv6 extension headers.
#[derive(Clone, Copy, Debug)]
pub enum Ipv6Ext {
    /// 8 bytes.
    HopByHop,
    /// 8 bytes (type 0, no segment left).
    Routing,
    /// 8 bytes.
    DestinationOptions,
    /// `(units + 1) * 8` bytes of padding options (the Hdr Ext Len field is `units`; at most 32).
    LongDestinationOptions { units: u8 },
    /// Authentication Header with a 12-byte ICV: 24 bytes, Payload Len 4 (in 4-byte units,
    /// minus 2: its length is computed differently from the other extension headers).
    Authentication,
    /// A Fragment header: `offset` in 8-byte units, `more` = the M flag.
    Fragment { offset: u16, more: bool },
}

impl Ipv6Ext {
    fn number(self) -> u8 {
        match self {
            Ipv6Ext::HopByHop => 0,
            Ipv6Ext::Routing => 43,
            Ipv6Ext::Fragment { .. } => 44,
            Ipv6Ext::Authentication => 51,
            Ipv6Ext::DestinationOptions | Ipv6Ext::LongDestinationOptions { .. } => 60,
        }
    }
}

/// TCP header fields a test may vary.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    /// [`TCP_SYN`], [`TCP_ACK`], ... or-ed together.
    pub flags: u8,
    /// Data offset in 32-bit words. Values above 5 add NOP options; values below 5 are written as
    /// given in the field, over a normal 20-byte header.
    pub doff: u8,
}

impl Tcp {
    /// A connection attempt (SYN without ACK) to `dst_port`.
    pub fn syn(dst_port: u16) -> Self {
        Self {
            src_port: 40000,
            dst_port,
            flags: TCP_SYN,
            doff: 5,
        }
    }

    /// A segment of an established connection (ACK) to `dst_port`.
    pub fn ack(dst_port: u16) -> Self {
        Self {
            flags: TCP_ACK,
            ..Self::syn(dst_port)
        }
    }
}

#[derive(Clone, Debug)]
enum Layer {
    Vlan { tpid: u16, vid: u16 },
    EtherType(u16),
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    Ipv6Ext(Ipv6Ext),
    Tcp(Tcp),
    Udp { dst_port: u16 },
    Icmp,
    Payload(Vec<u8>),
}

impl Layer {
    /// The EtherType announcing this layer.
    fn ether_type(&self) -> Option<u16> {
        match self {
            Layer::Vlan { tpid, .. } => Some(*tpid),
            Layer::EtherType(t) => Some(*t),
            Layer::Ipv4(_) => Some(ETHERTYPE_IPV4),
            Layer::Ipv6(_) => Some(ETHERTYPE_IPV6),
            _ => None,
        }
    }

    /// The IP protocol / IPv6 next-header number announcing this layer.
    fn ip_protocol(&self, in_ipv6: bool) -> Option<u8> {
        match self {
            Layer::Ipv6Ext(ext) => Some(ext.number()),
            Layer::Tcp(_) => Some(PROTO_TCP),
            Layer::Udp { .. } => Some(PROTO_UDP),
            Layer::Icmp if in_ipv6 => Some(PROTO_ICMPV6),
            Layer::Icmp => Some(PROTO_ICMP),
            _ => None,
        }
    }
}

/// An Ethernet frame under construction.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    layers: Vec<Layer>,
}

impl Frame {
    /// An Ethernet header (02:00:00:00:00:02 <- 02:00:00:00:00:01); add the layers inside it.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.layers.push(Layer::Vlan { tpid, vid });
        self
    }

    /// A payload announced by a raw EtherType (e.g. [`ETHERTYPE_ARP`]) followed by `len` zeros.
    pub fn ether_type(mut self, ether_type: u16, len: usize) -> Self {
        self.layers.push(Layer::EtherType(ether_type));
        self.layers.push(Layer::Payload(vec![0; len]));
        self
    }

    pub fn ipv4(mut self, header: Ipv4) -> Self {
        self.layers.push(Layer::Ipv4(header));
        self
    }

    pub fn ipv6(mut self, header: Ipv6) -> Self {
        self.layers.push(Layer::Ipv6(header));
        self
    }

    pub fn ipv6_ext(mut self, ext: Ipv6Ext) -> Self {
        self.layers.push(Layer::Ipv6Ext(ext));
        self
    }

    pub fn tcp(mut self, header: Tcp) -> Self {
        self.layers.push(Layer::Tcp(header));
        self
    }

    /// A UDP header to `dst_port` with 8 bytes of payload.
    pub fn udp(mut self, dst_port: u16) -> Self {
        self.layers.push(Layer::Udp { dst_port });
        self
    }

    /// An ICMP (or ICMPv6 inside IPv6) echo request.
    pub fn icmp_echo(mut self) -> Self {
        self.layers.push(Layer::Icmp);
        self
    }

    /// Raw bytes after the last header.
    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.layers.push(Layer::Payload(bytes.to_vec()));
        self
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let next_ether_type = |i: usize| {
            self.layers
                .get(i + 1)
                .and_then(Layer::ether_type)
                .unwrap_or(0)
        };
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        let first = self.layers.first().and_then(Layer::ether_type).unwrap_or(0);
        out.extend_from_slice(&first.to_be_bytes());

        // Length fields and the IPv4 checksum are patched once the whole frame is written:
        // (position of the field, start of what it covers).
        let mut ipv4_total: Vec<(usize, usize)> = Vec::new();
        let mut ipv6_payload: Vec<(usize, usize)> = Vec::new();
        let mut udp_len: Vec<(usize, usize)> = Vec::new();
        let mut ipv4_checksum: Vec<(usize, usize)> = Vec::new();

        for (i, layer) in self.layers.iter().enumerate() {
            let in_ipv6 = self.layers[..=i]
                .iter()
                .any(|l| matches!(l, Layer::Ipv6(_)));
            let next_proto = || {
                self.layers
                    .get(i + 1)
                    .and_then(|l| l.ip_protocol(in_ipv6))
                    .unwrap_or(PROTO_NONE)
            };
            match layer {
                Layer::Vlan { vid, .. } => {
                    out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
                    out.extend_from_slice(&next_ether_type(i).to_be_bytes());
                }
                Layer::EtherType(_) => {}
                Layer::Ipv4(h) => {
                    let start = out.len();
                    let written_words = h.ihl.max(5);
                    out.push((h.version << 4) | (h.ihl & 0x0f));
                    out.push(0); // DSCP/ECN
                    ipv4_total.push((out.len(), start));
                    out.extend_from_slice(&[0, 0]); // total length, patched
                    out.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
                    let frags = (u16::from(h.dont_fragment) << 14)
                        | (u16::from(h.more_fragments) << 13)
                        | (h.fragment_offset & 0x1fff);
                    out.extend_from_slice(&frags.to_be_bytes());
                    out.push(64); // TTL
                    out.push(h.protocol.unwrap_or_else(next_proto));
                    ipv4_checksum.push((out.len(), start));
                    out.extend_from_slice(&[0, 0]); // checksum, patched
                    out.extend_from_slice(&h.src.octets());
                    out.extend_from_slice(&h.dst.octets());
                    // Options: NOPs, then End of Option List in the last byte.
                    let options = (usize::from(written_words) - 5) * 4;
                    for n in 0..options {
                        out.push(if n + 1 == options { 0 } else { 1 });
                    }
                }
                Layer::Ipv6(h) => {
                    let start = out.len();
                    out.extend_from_slice(&[h.version << 4, 0, 0, 0]);
                    ipv6_payload.push((out.len(), start + IPV6_LEN));
                    out.extend_from_slice(&[0, 0]); // payload length, patched
                    out.push(next_proto());
                    out.push(64); // hop limit
                    out.extend_from_slice(&h.src.octets());
                    out.extend_from_slice(&h.dst.octets());
                }
                Layer::Ipv6Ext(ext) => {
                    out.push(next_proto());
                    match ext {
                        Ipv6Ext::Fragment { offset, more } => {
                            out.push(0); // reserved
                            let field = (offset << 3) | u16::from(*more);
                            out.extend_from_slice(&field.to_be_bytes());
                            out.extend_from_slice(&0xdead_beefu32.to_be_bytes());
                        }
                        Ipv6Ext::Routing => {
                            // Length 0 (8 bytes), type 0, segments left 0, reserved.
                            out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
                        }
                        Ipv6Ext::HopByHop | Ipv6Ext::DestinationOptions => {
                            // Length 0 (8 bytes), one PadN option covering the other 4 bytes.
                            out.extend_from_slice(&[0, 1, 4, 0, 0, 0, 0]);
                        }
                        Ipv6Ext::LongDestinationOptions { units } => {
                            assert!(*units <= 32, "one PadN option covers at most 255 bytes");
                            let total = (usize::from(*units) + 1) * 8;
                            out.extend_from_slice(&[*units, 1, (total - 4) as u8]);
                            out.extend(std::iter::repeat_n(0u8, total - 4));
                        }
                        Ipv6Ext::Authentication => {
                            // Payload Len 4: (4 + 2) * 4 = 24 bytes. Reserved, SPI, sequence,
                            // 12-byte ICV.
                            out.extend_from_slice(&[4, 0, 0]);
                            out.extend_from_slice(&0x0000_1000u32.to_be_bytes());
                            out.extend_from_slice(&1u32.to_be_bytes());
                            out.extend_from_slice(&[0xa5; 12]);
                        }
                    }
                }
                Layer::Tcp(t) => {
                    let written_words = t.doff.max(5);
                    out.extend_from_slice(&t.src_port.to_be_bytes());
                    out.extend_from_slice(&t.dst_port.to_be_bytes());
                    out.extend_from_slice(&1000u32.to_be_bytes()); // sequence
                    let ack = if t.flags & TCP_ACK != 0 { 2000u32 } else { 0 };
                    out.extend_from_slice(&ack.to_be_bytes());
                    out.push((t.doff & 0x0f) << 4);
                    out.push(t.flags);
                    out.extend_from_slice(&64240u16.to_be_bytes()); // window
                    out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                    let options = (usize::from(written_words) - 5) * 4;
                    out.extend(std::iter::repeat_n(1u8, options));
                }
                Layer::Udp { dst_port } => {
                    let start = out.len();
                    out.extend_from_slice(&53000u16.to_be_bytes());
                    out.extend_from_slice(&dst_port.to_be_bytes());
                    udp_len.push((out.len(), start));
                    out.extend_from_slice(&[0, 0, 0, 0]); // length (patched), checksum
                    out.extend_from_slice(b"payload!");
                }
                Layer::Icmp => {
                    let kind = if in_ipv6 { 128 } else { 8 }; // echo request
                    out.extend_from_slice(&[kind, 0, 0, 0, 0, 1, 0, 1]);
                    out.extend_from_slice(b"ping....");
                }
                Layer::Payload(bytes) => out.extend_from_slice(bytes),
            }
        }

        let end = out.len();
        let put16 = |out: &mut Vec<u8>, at: usize, value: usize| {
            let value = u16::try_from(value).expect("frame shorter than 64 KiB");
            out[at..at + 2].copy_from_slice(&value.to_be_bytes());
        };
        for (at, start) in ipv4_total {
            put16(&mut out, at, end - start);
        }
        for (at, start) in ipv6_payload {
            put16(&mut out, at, end - start);
        }
        for (at, start) in udp_len {
            put16(&mut out, at, end - start);
        }
        for (at, start) in ipv4_checksum {
            let header_len = usize::from(out[start] & 0x0f).max(5) * 4;
            let sum = internet_checksum(&out[start..(start + header_len).min(end)]);
            out[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_syn_layout() {
        let f = Frame::new()
            .ipv4(Ipv4::new("192.0.2.7"))
            .tcp(Tcp::syn(25))
            .build();
        assert_eq!(f.len(), ETH_LEN + IPV4_LEN + TCP_LEN);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(f[14 + 9], PROTO_TCP);
        assert_eq!(&f[14 + 2..14 + 4], &[0, 40]);
        assert_eq!(internet_checksum(&f[14..34]), 0, "header checksum verifies");
        assert_eq!(&f[34 + 2..34 + 4], &[0, 25]);
        assert_eq!(f[34 + 12], 0x50);
        assert_eq!(f[34 + 13], TCP_SYN);
    }
}

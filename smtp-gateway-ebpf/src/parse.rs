//! Header parsing: every read is bounds-checked against `data_end`, every offset is computed from
//! the headers (IPv4 IHL, IPv6 extension-header lengths), never assumed.

use core::mem;

use aya_ebpf::programs::XdpContext;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers we walk through (RFC 8200 section 4).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Longest IPv6 extension-header chain we walk; a longer one is treated as uninspectable.
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// VLAN tags we strip (802.1ad outer + 802.1Q inner); a frame with more is uninspectable.
const MAX_VLAN_TAGS: usize = 2;
/// IPv4 "more fragments" flag and fragment-offset mask in host order.
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;
/// Offset of the flags byte in the TCP header, and its SYN and ACK bits.
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Source address of an inspected packet.
#[derive(Clone, Copy)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// A TCP segment whose destination port is known.
#[derive(Clone, Copy)]
pub struct TcpPacket {
    pub src: Source,
    pub dst_port: u16,
    /// SYN set and ACK clear: a new connection attempt.
    pub syn: bool,
    /// The TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN), for the trace.
    pub flags: u8,
    /// IPv4 first fragment (MF set), or IPv6 packet carrying a Fragment header.
    pub fragment: bool,
    /// IPv6 packet whose TCP header follows one or more extension headers.
    pub ext_headers: bool,
}

/// What the parser found.
pub enum Parsed {
    /// Not IP, not TCP, or a non-first fragment (whose port cannot be known; the kernel can never
    /// reassemble it without the first fragment, which is inspected).
    Other,
    /// A header is truncated or invalid.
    Malformed,
    /// Cannot be attributed to a port but must not pass: a VLAN stack or an IPv6
    /// extension-header chain longer than we walk, or a TCP first fragment too short to hold the
    /// TCP header (RFC 1858's tiny fragment: passing it would let the kernel reassemble an
    /// uninspected segment).
    Uninspectable,
    /// A TCP segment.
    Tcp(TcpPacket),
}

/// Pointer to a `T` at `offset`, or `Err` when the packet is too short.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != EtherType::Ieee8021q as u16 && ether_type != EtherType::Ieee8021ad as u16 {
            break;
        }
        let Ok(vlan) = ptr_at::<VlanHdr>(ctx, offset) else {
            return Parsed::Malformed;
        };
        // SAFETY: bounds checked by ptr_at.
        ether_type = unsafe { (*vlan).ether_type };
        offset += VlanHdr::LEN;
    }
    if ether_type == EtherType::Ieee8021q as u16 || ether_type == EtherType::Ieee8021ad as u16 {
        // A deeper stack than we walk: Linux strips priority tags (VID 0) of any depth without
        // a VLAN device, so what is behind may well reach a listener.
        return Parsed::Uninspectable;
    }
    if ether_type == EtherType::Ipv4 as u16 {
        parse_ipv4(ctx, offset)
    } else if ether_type == EtherType::Ipv6 as u16 {
        parse_ipv6(ctx, offset)
    } else {
        Parsed::Other
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Parsed {
    let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, offset) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (vihl, proto, frags, src, total) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            (*ip).frags,
            (*ip).src_addr,
            (*ip).tot_len,
        )
    };
    let header_len = ((vihl & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes(total) as usize;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || total < header_len {
        return Parsed::Malformed;
    }
    if proto != IPPROTO_TCP {
        return Parsed::Other;
    }
    let frags = u16::from_be_bytes(frags);
    if frags & IPV4_OFFSET_MASK != 0 {
        return Parsed::Other;
    }
    let fragment = frags & IPV4_MF != 0;
    parse_tcp(
        ctx,
        (offset + header_len, offset + total),
        Source::V4(src),
        fragment,
        fragment,
        false,
    )
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Parsed {
    let Ok(ip) = ptr_at::<Ipv6Hdr>(ctx, offset) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (vcf0, mut next, src, payload) = unsafe {
        (
            (*ip).vcf[0],
            (*ip).next_hdr,
            (*ip).src_addr,
            (*ip).payload_len,
        )
    };
    // RFC 4291 2.5.5.2: an IPv4-mapped source (::ffff:a.b.c.d) never appears on the wire, and
    // Linux drops it; it must not be counted as the IPv4 address it names.
    let high = u64::from_be_bytes([
        src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7],
    ]);
    let mapped = high == 0 && u32::from_be_bytes([src[8], src[9], src[10], src[11]]) == 0xffff;
    if vcf0 >> 4 != 6 || mapped {
        return Parsed::Malformed;
    }
    // Where the datagram ends; a payload length of 0 is a jumbogram's (RFC 2675), bounded by
    // the frame alone.
    let payload = u16::from_be_bytes(payload) as usize;
    let end = if payload == 0 {
        usize::MAX
    } else {
        offset + Ipv6Hdr::LEN + payload
    };
    let mut offset = offset + Ipv6Hdr::LEN;
    let mut fragment = false;
    let mut more_fragments = false;
    let mut ext_headers = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => break,
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let Ok(hdr) = ptr_at::<[u8; 2]>(ctx, offset) else {
                    return Parsed::Malformed;
                };
                // SAFETY: bounds checked by ptr_at.
                let hdr = unsafe { *hdr };
                next = hdr[0];
                offset += (hdr[1] as usize + 1) * 8;
            }
            IPV6_AUTH => {
                let Ok(hdr) = ptr_at::<[u8; 2]>(ctx, offset) else {
                    return Parsed::Malformed;
                };
                // SAFETY: bounds checked by ptr_at.
                let hdr = unsafe { *hdr };
                next = hdr[0];
                offset += (hdr[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let Ok(hdr) = ptr_at::<[u8; 8]>(ctx, offset) else {
                    return Parsed::Malformed;
                };
                // SAFETY: bounds checked by ptr_at.
                let hdr = unsafe { *hdr };
                if u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 != 0 {
                    return Parsed::Other;
                }
                next = hdr[0];
                offset += 8;
                fragment = true;
                more_fragments = hdr[3] & 1 != 0;
            }
            _ => return Parsed::Other,
        }
        ext_headers = true;
    }
    match next {
        IPPROTO_TCP => {}
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH | IPV6_FRAGMENT => {
            return Parsed::Uninspectable;
        }
        _ => return Parsed::Other,
    }
    parse_tcp(
        ctx,
        (offset, end),
        Source::V6(src),
        fragment,
        more_fragments,
        ext_headers,
    )
}

/// The TCP header at `offset` of a datagram ending at `end` (bytes after it in the frame, such
/// as Ethernet padding, are not the datagram's).
#[inline(always)]
fn parse_tcp(
    ctx: &XdpContext,
    (offset, end): (usize, usize),
    src: Source,
    fragment: bool,
    more_fragments: bool,
    ext_headers: bool,
) -> Parsed {
    let tcp = if offset + TcpHdr::LEN <= end {
        ptr_at::<TcpHdr>(ctx, offset)
    } else {
        Err(())
    };
    let Ok(tcp) = tcp else {
        // A first fragment with more to come that cannot hold the TCP header: the rest of the
        // header would arrive in a fragment we never inspect (RFC 1858 tiny fragment).
        return if more_fragments {
            Parsed::Uninspectable
        } else {
            Parsed::Malformed
        };
    };
    // SAFETY: bounds checked by ptr_at; byte 13 of the 20-byte header holds the flags.
    let (tcp, flags) = unsafe { (&*tcp, *(tcp as *const u8).add(TCP_FLAGS_OFFSET)) };
    if tcp.doff() < 5 {
        return Parsed::Malformed;
    }
    Parsed::Tcp(TcpPacket {
        src,
        dst_port: u16::from_be_bytes(tcp.dest),
        syn: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        flags,
        fragment,
        ext_headers,
    })
}

/// Length of the frame as XDP sees it (linear part).
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

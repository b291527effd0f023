//! One Ethernet + IPv4 + TCP SYN frame with valid checksums, for the benchmarks' flood senders
//! (bench-drop's xdp-live frames, bench-attack's paced sender): a SYN the receiving stack takes
//! for a real connection attempt, not one it discards for a bad checksum. Also the RFC 1071
//! checksum itself, which the program tests' frame builder uses for its IPv4 headers.

use std::net::SocketAddrV4;

/// Length of [`Syn::frame`]: Ethernet 14 + IPv4 20 + TCP 20.
pub const SYN_FRAME_LEN: usize = 54;

/// A TCP SYN from `src` to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct Syn {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub window: u16,
}

impl Syn {
    /// The frame's bytes: IPv4 with DF, TTL 64, no options; TCP data offset 5, SYN only.
    pub fn frame(&self) -> [u8; SYN_FRAME_LEN] {
        let mut f = [0u8; SYN_FRAME_LEN];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let (src, dst) = (self.src.ip().octets(), self.dst.ip().octets());
        // Version/IHL, DSCP, total length 40, identification, DF, TTL 64, TCP, checksum 0.
        f[14..26].copy_from_slice(&[0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        let ip_sum = internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        f[34..36].copy_from_slice(&self.src.port().to_be_bytes());
        f[36..38].copy_from_slice(&self.dst.port().to_be_bytes());
        f[38..42].copy_from_slice(&self.seq.to_be_bytes());
        // Acknowledgment 0, data offset 5, SYN, window, checksum 0, urgent 0.
        f[46] = 0x50;
        f[47] = 0x02;
        f[48..50].copy_from_slice(&self.window.to_be_bytes());
        let tcp_sum = tcp_checksum(&f);
        f[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
        f
    }
}

/// The TCP checksum of `frame`'s segment: over the IPv4 pseudo-header (addresses, protocol 6,
/// TCP length 20) and the 20-byte header, its checksum field counted as it stands.
fn tcp_checksum(frame: &[u8; SYN_FRAME_LEN]) -> u16 {
    let mut covered = [0u8; 12 + 20];
    covered[0..8].copy_from_slice(&frame[26..34]);
    covered[8..12].copy_from_slice(&[0, 6, 0, 20]);
    covered[12..32].copy_from_slice(&frame[34..54]);
    internet_checksum(&covered)
}

/// The RFC 1071 checksum of `bytes`: the one's-complement sum of their big-endian 16-bit words
/// (an odd last byte padded with zero), folded and complemented. Over bytes that hold their own
/// valid checksum, it is 0.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver verifies a checksum by summing the covered bytes with the field in place: the
    /// folded sum must be 0xffff (its complement 0).
    #[test]
    fn the_checksum_of_rfc_1071s_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(internet_checksum(&[0xff]), !0xff00, "an odd byte is padded");
    }

    #[test]
    fn both_checksums_verify() {
        for (src, sport, seq) in [
            ("198.19.200.7", 40000, 0x0102_0304),
            ("198.18.128.0", 1024, 0),
            ("198.18.143.255", 65535, u32::MAX),
        ] {
            let syn = Syn {
                dst_mac: [2, 0, 0, 0, 0, 2],
                src_mac: [2, 0, 0, 0, 0, 1],
                src: SocketAddrV4::new(src.parse().expect("address"), sport),
                dst: SocketAddrV4::new("198.18.2.1".parse().expect("address"), 25),
                seq,
                window: 64240,
            };
            let f = syn.frame();
            assert_eq!(internet_checksum(&f[14..34]), 0, "IPv4 header of {syn:?}");
            assert_eq!(tcp_checksum(&f), 0, "TCP of {syn:?}");
            assert_eq!(&f[26..30], &syn.src.ip().octets());
            assert_eq!(u16::from_be_bytes([f[34], f[35]]), sport);
            assert_eq!(f[47], 0x02, "SYN only");
        }
    }
}

//! One Ethernet + IPv4 + TCP SYN frame with valid checksums, for the benchmarks' flood senders
//! (bench-drop's xdp-live frames, bench-attack's paced sender): a SYN the receiving stack takes
//! for a real connection attempt, not one it discards for a bad checksum.

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
        let ip_sum = fold(add(&f[14..34]));
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        f[34..36].copy_from_slice(&self.src.port().to_be_bytes());
        f[36..38].copy_from_slice(&self.dst.port().to_be_bytes());
        f[38..42].copy_from_slice(&self.seq.to_be_bytes());
        // Acknowledgment 0, data offset 5, SYN, window, checksum 0, urgent 0.
        f[46] = 0x50;
        f[47] = 0x02;
        f[48..50].copy_from_slice(&self.window.to_be_bytes());
        let pseudo = add(&src) + add(&dst) + 6 + 20;
        let tcp_sum = fold(pseudo + add(&f[34..54]));
        f[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
        f
    }
}

/// The one's-complement sum of `bytes` as big-endian 16-bit words (an odd last byte padded).
fn add(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

/// `sum` folded to 16 bits and complemented: the checksum field's value.
fn fold(mut sum: u32) -> u16 {
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
            assert_eq!(fold(add(&f[14..34])), 0, "IPv4 header of {syn:?}");
            let pseudo = add(&f[26..34]) + 6 + 20;
            assert_eq!(fold(pseudo + add(&f[34..54])), 0, "TCP of {syn:?}");
            assert_eq!(&f[26..30], &syn.src.ip().octets());
            assert_eq!(u16::from_be_bytes([f[34], f[35]]), sport);
            assert_eq!(f[47], 0x02, "SYN only");
        }
    }
}

//! The XDP object built by `build.rs`, embedded in the binary.

/// The ELF object of the XDP program.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/smtp-gateway.bpf.o"));

/// Name of the XDP entry point in [`OBJECT`].
pub const PROGRAM_NAME: &str = "smtp_gateway";

/// A stable hash of [`OBJECT`] (FNV-1a, 64 bits), recorded in the pinned `META` so a restart can
/// tell whether the attached program is this build's.
pub fn object_hash() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in OBJECT {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

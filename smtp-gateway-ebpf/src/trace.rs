//! The live trace of `why --follow`: one aya-log line per inspected packet of a traced source
//! (source, destination port, TCP flags, verdict). Only called while the `TRACE` bit of the
//! configuration is set, which the program reads anyway for every inspected packet: with no trace
//! active it costs one bit test, no lookup and no log.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::info;
use smtp_gateway_common::{SourceKey, Verdict};

use crate::{TRACE, parse::TcpPacket};

/// What one trace line says besides the source, in one register: destination port (bits
/// 16..32), TCP flags (8..16), verdict (0..8). Built only on the traced path.
#[inline(always)]
pub fn packed(packet: &TcpPacket, verdict: Verdict) -> u32 {
    (u32::from(packet.dst_port) << 16) | (u32::from(packet.flags) << 8) | verdict as u32
}

/// Logs one line for the packet whose source has per-source key `key` when that source is traced
/// and its trace has not ended at `now` (an entry left behind by a killed `why --follow` stops
/// logging by itself). `what` is [`packed`]. Out of line and with four scalar-or-pointer
/// arguments, so the hot path stores nothing extra for a branch it does not take.
#[inline(never)]
pub fn emit(ctx: &XdpContext, key: &SourceKey, what: u32, now: u64) {
    // SAFETY: the value is a plain `u64`; a concurrent delete can only make us log one more line.
    let until = match unsafe { TRACE.get(key) } {
        Some(until) => *until,
        None => return,
    };
    if now >= until {
        return;
    }
    let port = (what >> 16) as u16;
    let flags = (what >> 8) as u8;
    let name = match Verdict::ALL.get((what & 0xff) as usize) {
        Some(v) => v.name(),
        None => "unknown",
    };
    match key.as_v4() {
        Some(a) => info!(
            ctx,
            "trace src={:i} dport={} flags={:x} verdict={}", a, port, flags, name
        ),
        None => info!(
            ctx,
            "trace src={:i} dport={} flags={:x} verdict={}", key.addr, port, flags, name
        ),
    }
}

//! The live trace of `why --follow`: one aya-log line per inspected packet of a traced source
//! (source, destination port, TCP flags, verdict). Only called while the `TRACE` bit of the
//! configuration is set, which the program reads anyway for every inspected packet: with no trace
//! active it costs one bit test, no lookup and no log.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::info;
use smtp_gateway_common::{SourceKey, Verdict};

use crate::{
    TRACE,
    parse::{Source, TcpPacket},
};

/// Logs the verdict of `packet` when its source is traced and the trace has not ended at `now`
/// (an entry left behind by a killed `why --follow` stops logging by itself).
/// Out of line: the hot path keeps its registers whether or not this branch exists.
#[inline(never)]
pub fn emit(ctx: &XdpContext, key: &SourceKey, packet: &TcpPacket, verdict: Verdict, now: u64) {
    // SAFETY: the value is a plain `u64`; a concurrent delete can only make us log one more line.
    let until = match unsafe { TRACE.get(key) } {
        Some(until) => *until,
        None => return,
    };
    if now >= until {
        return;
    }
    let name = verdict.name();
    match packet.src {
        Source::V4(a) => info!(
            ctx,
            "trace src={:i} dport={} flags={:x} verdict={}",
            a,
            packet.dst_port,
            packet.flags,
            name
        ),
        Source::V6(a) => info!(
            ctx,
            "trace src={:i} dport={} flags={:x} verdict={}",
            a,
            packet.dst_port,
            packet.flags,
            name
        ),
    }
}

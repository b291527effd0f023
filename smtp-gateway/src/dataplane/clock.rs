//! Time as the XDP program sees it and wall-clock time for operators. The program reads
//! `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE): the same base as CLOCK_MONOTONIC, at most
//! one kernel tick behind, so an expiry written here takes effect within a tick.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Current CLOCK_MONOTONIC time in nanoseconds, the base of the program's coarse clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Current Unix time in seconds.
pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `expires_at_ns` of an entry that lives `ttl` from now (`None`: never expires).
pub fn expiry_after(ttl: Option<Duration>) -> u64 {
    match ttl {
        Some(ttl) => monotonic_ns().saturating_add(ttl.as_nanos().min(u64::MAX as u128) as u64),
        None => 0,
    }
}

/// Time left before `expires_at_ns` (`None`: never expires; zero: already expired).
pub fn remaining(expires_at_ns: u64, now_ns: u64) -> Option<Duration> {
    (expires_at_ns != 0).then(|| Duration::from_nanos(expires_at_ns.saturating_sub(now_ns)))
}

//! A socket's TCP counters (`TCP_INFO`), for tests that count the segments a write made.

use std::os::fd::AsRawFd;

/// Data segments the socket has sent and received so far (`tcpi_data_segs_out`,
/// `tcpi_data_segs_in`); pure ACKs and a lone FIN are not counted.
pub fn data_segments(socket: &impl AsRawFd) -> std::io::Result<(u32, u32)> {
    // SAFETY: tcp_info is plain integers, valid zeroed; getsockopt writes at most `len` bytes
    // into it, and the descriptor stays open for the borrow.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((info.tcpi_data_segs_out, info.tcpi_data_segs_in))
}

//! The two events a launcher waits for, as file descriptors `poll(2)` can watch together: the
//! daemon's exit (a pidfd, readable once the process has ended) and a write to its log file
//! (inotify `IN_MODIFY`).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

/// A pidfd for `pid` (Linux 5.3+): readable once the process has exited, reaped or not.
pub(super) fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open(2) takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking inotify descriptor watching `path` for writes.
pub(super) fn watch_writes(path: &Path) -> io::Result<OwnedFd> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: inotify_init1(2) returns a new descriptor or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a valid inotify descriptor and a NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_path.as_ptr(), libc::IN_MODIFY) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Empties a non-blocking inotify descriptor (the events themselves carry nothing we need).
pub(super) fn drain(fd: &OwnedFd) {
    let mut buffer = [0u8; 4096];
    loop {
        // SAFETY: reading into a buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n <= 0 {
            return;
        }
    }
}

/// Waits up to `within` until one of `fds` is readable; which ones are. A signal interrupting
/// the wait counts as "nothing yet" (the caller loops on its own deadline).
pub(super) fn readable(fds: &[&OwnedFd], within: Duration) -> io::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout = libc::c_int::try_from(within.as_millis()).unwrap_or(libc::c_int::MAX);
    let count = libc::nfds_t::try_from(polls.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `polls` is a valid array of `count` entries for the duration of the call.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), count, timeout) };
    if n < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; polls.len()]);
        }
        return Err(error);
    }
    Ok(polls.iter().map(|p| p.revents != 0).collect())
}

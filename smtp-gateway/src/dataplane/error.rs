//! Errors of the data plane, each saying what the operator can do about it.

use std::path::PathBuf;

/// Everything that can go wrong loading, attaching or updating the kernel data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// bpffs is not mounted where the pins go.
    #[error(
        "{path} is not on a bpf filesystem and mounting one failed: {source} (mount it with `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    Bpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    /// bpffs would have to be mounted in a mount namespace private to this process.
    #[error(
        "{path}: no bpf filesystem at /sys/fs/bpf in this process's mount namespace, which is not the host's (started with `ip netns exec`?). One mounted here would be private to this process: its pins, and every entry in them, would vanish when it exits, and no other smtp-gateway process (daemon or CLI) would see them. Enter only the network namespace (`nsenter --net=/run/netns/NAME smtp-gateway ...`), or set dataplane.allow_private_bpffs = true to accept state that dies with the process"
    )]
    PrivateBpffs { path: PathBuf },
    /// A pinned map exists with another shape than this build's.
    #[error(
        "pinned map {name} at {path} does not match this version ({detail}); refusing to reuse it. Run `smtp-gateway detach` to remove the old state (its entries are lost), then start again"
    )]
    LayoutMismatch {
        name: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// Loading the object (creating or reusing maps, loading the program).
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    /// A pinned map the daemon reads by its pin is gone: `detach` ran under the daemon.
    #[error(
        "the data plane is not pinned: {path} is gone (removed by `smtp-gateway detach`?); restart the daemon (`systemctl restart smtp-gateway`, or stop it and `smtp-gateway run`) to attach and pin it again"
    )]
    NotPinned { path: PathBuf },
    /// A map is full.
    #[error(
        "map {name} is full ({capacity} entries); raise dataplane.capacity.{option} and recreate the maps (`smtp-gateway detach`, then start again)"
    )]
    Full {
        name: &'static str,
        capacity: u32,
        option: &'static str,
    },
    /// The program could not be loaded or attached.
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    /// The configured interface does not exist in this network namespace.
    #[error("interface {0} does not exist in this network namespace")]
    UnknownInterface(String),
    /// The kernel refused the attach mode.
    #[error(
        "attaching to {interface} in {mode} mode failed: {detail}. The driver may not support native XDP: set dataplane.attach_mode = \"skb\" to use generic XDP"
    )]
    Attach {
        interface: String,
        mode: &'static str,
        detail: String,
    },
    /// A link could not be pinned, opened or replaced.
    #[error("XDP link at {path}: {detail}")]
    Link { path: PathBuf, detail: String },
    /// Filesystem work on the pin directory.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `why --follow` could not trace (no attached program, its log unreadable).
    #[error("trace: {0}")]
    Trace(String),
    /// A task panicked while holding the data plane.
    #[error("internal error: the data plane lock was poisoned by a failed task")]
    Poisoned,
}

impl DataplaneError {
    /// Wraps a map error, turning "no space" into [`DataplaneError::Full`].
    pub(crate) fn map(
        name: &'static str,
        capacity: u32,
        option: &'static str,
        source: aya::maps::MapError,
    ) -> Self {
        if let aya::maps::MapError::SyscallError(ref e) = source
            && e.io_error.raw_os_error() == Some(libc::E2BIG)
        {
            return DataplaneError::Full {
                name,
                capacity,
                option,
            };
        }
        DataplaneError::Map { name, source }
    }
}

/// Whether a map error means "no such key" (aya reports lookups as `KeyNotFound` but deletes as
/// a raw ENOENT).
pub fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

//! Giving up privileges once setup is done: the XDP program is attached, the maps are open and
//! every socket is bound, so the daemon needs no capability to go on (map operations work on the
//! descriptors it holds). Runs while the process has a single thread: credentials and
//! capabilities are per thread on Linux, and every thread started later inherits these.

use std::collections::HashSet;

use caps::{CapSet, Capability};
use nix::unistd::{Gid, Group, Uid, User};

use super::config::DaemonConfig;

/// Why privileges could not be dropped (the daemon does not start then).
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("daemon.user: no user named {0:?}")]
    NoUser(String),
    #[error("daemon.group: no group named {0:?}")]
    NoGroup(String),
    #[error("looking up {what}: {source}")]
    Lookup {
        what: String,
        source: nix::errno::Errno,
    },
    #[error("daemon.keep_capabilities: {0:?} is not a capability")]
    BadCapability(String),
    #[error("dropping privileges ({step}): {message}")]
    Step { step: &'static str, message: String },
    #[error("dropping privileges needs a single-threaded process, found {0} threads")]
    Threads(usize),
}

/// What the process runs as after [`drop_privileges`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub uid: u32,
    pub gid: u32,
    pub kept: Vec<String>,
    /// Whether the bounding set was reduced too (needs CAP_SETPCAP).
    pub bounding: bool,
}

/// Drops every capability not listed in `daemon.keep_capabilities` (from every set, the bounding
/// set included), sets no_new_privs, and switches to `daemon.user`/`daemon.group` when given.
pub fn drop_privileges(cfg: &DaemonConfig) -> Result<Dropped, PrivilegeError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        return Err(PrivilegeError::Threads(threads));
    }
    let keep = cfg
        .keep_capabilities
        .iter()
        .map(|n| {
            n.parse::<Capability>()
                .map_err(|_| PrivilegeError::BadCapability(n.clone()))
        })
        .collect::<Result<HashSet<_>, _>>()?;
    let step = |step: &'static str| {
        move |e: caps::errors::CapsError| PrivilegeError::Step {
            step,
            message: e.to_string(),
        }
    };
    let errno = |step: &'static str| {
        move |e: nix::errno::Errno| PrivilegeError::Step {
            step,
            message: e.to_string(),
        }
    };

    // The bounding set first: it needs CAP_SETPCAP, which goes with the rest below. Without it
    // (a service manager already bounded the set, as deploy/smtp-gateway.service does) the
    // bounding set stays as given: the permitted set, emptied below, is what counts.
    let bounding = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    if bounding {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(step("bounding set"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(step("ambient set"))?;
    caps::set(None, CapSet::Inheritable, &HashSet::new()).map_err(step("inheritable set"))?;

    if let Some((uid, gid)) = target_ids(cfg)? {
        // Keep the permitted set across the uid change; the effective set is restored below.
        nix::sys::prctl::set_keepcaps(true).map_err(errno("keepcaps"))?;
        nix::unistd::setgroups(&[gid]).map_err(errno("setgroups"))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(errno("setresgid"))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(errno("setresuid"))?;
        nix::sys::prctl::set_keepcaps(false).map_err(errno("keepcaps"))?;
    }
    caps::set(None, CapSet::Effective, &keep).map_err(step("effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(step("permitted set"))?;
    nix::sys::prctl::set_no_new_privs().map_err(errno("no_new_privs"))?;

    let mut kept: Vec<String> = keep.iter().map(ToString::to_string).collect();
    kept.sort();
    Ok(Dropped {
        uid: Uid::current().as_raw(),
        gid: Gid::current().as_raw(),
        kept,
        bounding,
    })
}

/// Whether `daemon.user` and `daemon.group` exist, as [`drop_privileges`] looks them up
/// (`check-config`; nothing is changed).
pub fn check_accounts(cfg: &DaemonConfig) -> Result<(), PrivilegeError> {
    target_ids(cfg).map(drop)
}

/// The uid and gid to switch to, when `daemon.user` or `daemon.group` is set.
fn target_ids(cfg: &DaemonConfig) -> Result<Option<(Uid, Gid)>, PrivilegeError> {
    if cfg.user.is_empty() && cfg.group.is_empty() {
        return Ok(None);
    }
    let lookup = |what: String| move |source| PrivilegeError::Lookup { what, source };
    let user = if cfg.user.is_empty() {
        None
    } else {
        Some(
            User::from_name(&cfg.user)
                .map_err(lookup(format!("user {:?}", cfg.user)))?
                .ok_or_else(|| PrivilegeError::NoUser(cfg.user.clone()))?,
        )
    };
    let gid = if cfg.group.is_empty() {
        user.as_ref().map_or(Gid::current(), |u| u.gid)
    } else {
        Group::from_name(&cfg.group)
            .map_err(lookup(format!("group {:?}", cfg.group)))?
            .ok_or_else(|| PrivilegeError::NoGroup(cfg.group.clone()))?
            .gid
    };
    let uid = user.map_or(Uid::current(), |u| u.uid);
    Ok(Some((uid, gid)))
}

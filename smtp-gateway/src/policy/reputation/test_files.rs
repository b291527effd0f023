//! Helpers shared by the unit tests of this folder: list files in the temporary directory and
//! lists loaded from them.

use std::{
    fs,
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{DEFAULT_FALSE_POSITIVE_RATE, ListConfig, ListKind, Reputation, ReputationConfig};

/// A list file in the temporary directory, removed when dropped.
pub(super) struct TempFile(pub(super) PathBuf);

impl TempFile {
    /// Writes `contents` to a fresh file named after this process.
    pub(super) fn new(contents: impl AsRef<[u8]>) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "smtp-gateway-reputation-{}-{}.txt",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, contents).expect("write a temporary list file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A list `name` of `kind` reading `file`, at the default false positive rate.
pub(super) fn list(name: &str, kind: ListKind, file: &TempFile) -> ListConfig {
    ListConfig {
        name: name.to_string(),
        kind,
        path: file.0.clone(),
        false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE,
    }
}

/// Loads `lists`, panicking when they do not load.
pub(super) fn load(lists: Vec<ListConfig>) -> Reputation {
    Reputation::load(&ReputationConfig { lists }).expect("the lists load")
}

/// `text` as an IP address.
pub(super) fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

/// `Ok(normalized)` or `Err(part of the message)`.
pub(super) type Expected = Result<&'static str, &'static str>;

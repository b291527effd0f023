//! Reload on file change, of complete files only. The configuration file's directory is watched
//! (editors and configuration managers replace files by renaming a new one over them, which a
//! watch on the file itself would miss). A file is complete when its writer closes it
//! (`IN_CLOSE_WRITE`) or when it is renamed into place; mere writes only say that a new version
//! is on its way (an empty or half-written file is a valid configuration, so reading one while it
//! is rewritten in place would apply it). Once `daemon.watch_debounce` passes after the last
//! completed change with no new write under way, one reload request goes to the daemon's reload
//! path, the same one SIGHUP takes.
//!
//! Every reload reads the file with [`load_complete`]: a read during which the file's size,
//! times or inode changed is retried, and an empty file (no option, no section: comments at most)
//! is refused; either way the old configuration stays.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{
    EventKind, RecursiveMode, Watcher,
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
};
use tokio::sync::{mpsc, watch};

use crate::{
    config::{Config, ConfigError},
    reload::{ReloadOrigin, ReloadRequest, ReloadSender},
};

/// Reads of a changing file before the reload gives up (the old configuration stays).
const STABLE_READ_ATTEMPTS: usize = 10;
/// Pause between two reads of a changing file.
const STABLE_READ_PAUSE: Duration = Duration::from_millis(100);

/// Why the file cannot be watched (the daemon still reloads on SIGHUP).
#[derive(Debug, thiserror::Error)]
#[error("daemon.watch_config: cannot watch {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

/// What an event says about the watched file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Being written: a complete version is on its way.
    Writing,
    /// Complete: closed by its writer, or renamed into place.
    Complete,
}

/// Starts watching `path`; the returned watcher must be kept alive (dropping it stops the watch).
pub fn spawn(
    path: &Path,
    debounce: Duration,
    reload: ReloadSender,
    shutdown: watch::Receiver<bool>,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let err = |source| WatchError {
        path: path.to_path_buf(),
        source,
    };
    // Events are matched by file name: the path the daemon was given may be relative.
    let name = path.file_name().map(|n| n.to_os_string());
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                if let Some(change) = classify(&event, name.as_deref()) {
                    let _ = tx.send(change);
                }
            }
            Err(e) => tracing::warn!(error = %e, "configuration watch error"),
        })
        .map_err(err)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(err)?;
    tokio::spawn(debounce_loop(rx, debounce, reload, shutdown));
    Ok(watcher)
}

/// What the event says about the watched file, if anything.
fn classify(event: &notify::Event, name: Option<&std::ffi::OsStr>) -> Option<Change> {
    let named = |p: &PathBuf| p.file_name() == name;
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Any))
            if event.paths.iter().any(named) =>
        {
            Some(Change::Complete)
        }
        // Renamed from the first path to the last: complete when the last is the file.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both))
            if event.paths.last().is_some_and(named) =>
        {
            Some(Change::Complete)
        }
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
            if event.paths.iter().any(named) =>
        {
            Some(Change::Writing)
        }
        _ => None,
    }
}

/// One reload per burst of completed changes, `debounce` after the last one; a write that starts
/// meanwhile postpones the reload until that write is complete too.
async fn debounce_loop(
    mut changes: mpsc::UnboundedReceiver<Change>,
    debounce: Duration,
    reload: ReloadSender,
    mut shutdown: watch::Receiver<bool>,
) {
    // Whether the current write was logged (once per version of the file).
    let mut noted = false;
    loop {
        // A complete version.
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = shutdown.changed() => return,
            };
            match change {
                None => return,
                Some(Change::Complete) => break,
                Some(Change::Writing) => {
                    if !noted {
                        tracing::debug!(
                            "configuration file is being written; it is reloaded once complete"
                        );
                        noted = true;
                    }
                }
            }
        }
        // Then quiet: no further change for `debounce`.
        let quiet = loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = tokio::time::sleep(debounce) => break true,
                _ = shutdown.changed() => return,
            };
            match change {
                None => return,
                Some(Change::Complete) => {}
                Some(Change::Writing) => break false,
            }
        };
        if !quiet {
            // A new version is being written: wait for it instead.
            tracing::debug!(
                "configuration file is being written again; it is reloaded once complete"
            );
            noted = true;
            continue;
        }
        noted = false;
        let request = ReloadRequest {
            origin: ReloadOrigin::FileChange,
            reply: None,
        };
        if reload.send(request).await.is_err() {
            return;
        }
    }
}

/// Reads, parses and validates the configuration file for a reload: only a stable read of a
/// non-empty file (see the module docs); anything else leaves the old configuration in force.
pub async fn load_complete(path: &Path) -> Result<Config, ConfigError> {
    let text = read_complete(path).await?;
    Config::parse(&text, &path.display().to_string())
}

/// What identifies one version of the file.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        inode: m.ino(),
        len: m.len(),
        modified: (m.mtime(), m.mtime_nsec()),
        changed: (m.ctime(), m.ctime_nsec()),
    })
}

/// The file's text, read while it did not change (size, times and inode the same before and
/// after, and as long as the size said), and not empty (comments only count as empty).
async fn read_complete(path: &Path) -> Result<String, ConfigError> {
    let error = |error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    };
    for _ in 0..STABLE_READ_ATTEMPTS {
        // A small file, read at once (as the startup read does); only the pause is awaited.
        let before = stamp(path).map_err(error)?;
        let text = crate::config::read_text(path)?;
        let after = stamp(path).map_err(error)?;
        if before == after && text.len() as u64 == after.len {
            crate::config::refuse_empty(path, &text)?;
            return Ok(text);
        }
        tokio::time::sleep(STABLE_READ_PAUSE).await;
    }
    Err(error(std::io::Error::other(format!(
        "the file kept changing while it was read ({STABLE_READ_ATTEMPTS} attempts)"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_writes_is_one_reload_after_the_quiet_time() {
        let dir = std::env::temp_dir().join(format!("sgw-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, "# v1\n").unwrap();
        let (reload_tx, mut reload_rx) = crate::reload::channel();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let _watcher = spawn(&path, Duration::from_millis(300), reload_tx, stop_rx).unwrap();

        // Several writes, and an editor-style replace by rename, in quick succession.
        for i in 0..5 {
            std::fs::write(&path, format!("# v{i}\n")).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tmp = dir.join(".gateway.toml.swp");
        std::fs::write(&tmp, "# replaced\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        // Another file in the directory is not the configuration.
        std::fs::write(dir.join("other.toml"), "x").unwrap();

        let first = tokio::time::timeout(Duration::from_secs(5), reload_rx.recv())
            .await
            .expect("a reload within 5 s")
            .expect("channel open");
        assert_eq!(first.origin, ReloadOrigin::FileChange);
        let second = tokio::time::timeout(Duration::from_millis(800), reload_rx.recv()).await;
        assert!(second.is_err(), "one burst must give one reload");

        std::fs::write(dir.join("other.toml"), "y").unwrap();
        let unrelated = tokio::time::timeout(Duration::from_millis(800), reload_rx.recv()).await;
        assert!(unrelated.is_err(), "another file must not reload");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_reload_reads_only_a_file_with_content() {
        let dir = std::env::temp_dir().join(format!("sgw-watch-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        for empty in [
            "",
            "\n  \n",
            "# gateway.toml\n# every option is commented out\n",
        ] {
            std::fs::write(&path, empty).unwrap();
            let error = load_complete(&path).await.unwrap_err().to_string();
            assert!(error.contains("the file is empty"), "{error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        std::fs::write(&path, "[dataplane]\nallowlist = [\"198.18.2.0/24\"]\n").unwrap();
        let config = load_complete(&path).await.unwrap();
        assert_eq!(config.dataplane.allowlist.len(), 1);
        std::fs::write(&path, "[dataplane]\n").unwrap();
        assert!(
            load_complete(&path).await.is_ok(),
            "a section alone is content"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_closed_or_renamed_file_is_complete() {
        use notify::{
            Event,
            event::{CreateKind, DataChange, MetadataKind},
        };
        let dir = PathBuf::from("/etc/smtp-gateway");
        let file = dir.join("gateway.toml");
        let other = dir.join("gateway.toml.new");
        let name = file.file_name();
        let event = |kind, paths: &[&PathBuf]| {
            paths
                .iter()
                .fold(Event::new(kind), |e, p| e.add_path(p.to_path_buf()))
        };
        let cases = [
            (
                event(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    &[&file],
                ),
                Some(Change::Complete),
            ),
            (
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                    &[&file],
                ),
                Some(Change::Complete),
            ),
            (
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                    &[&other, &file],
                ),
                Some(Change::Complete),
            ),
            // Renamed away: nothing to read.
            (
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                    &[&file, &other],
                ),
                None,
            ),
            (
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                    &[&file],
                ),
                None,
            ),
            (
                event(
                    EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                    &[&file],
                ),
                Some(Change::Writing),
            ),
            (
                event(EventKind::Create(CreateKind::File), &[&file]),
                Some(Change::Writing),
            ),
            (
                event(
                    EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                    &[&file],
                ),
                None,
            ),
            (
                event(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    &[&other],
                ),
                None,
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(classify(&event, name), expected, "{event:?}");
        }
    }
}

//! Reload on file change. The configuration file's directory is watched (editors and
//! configuration managers replace files by renaming a new one over them, which a watch on the
//! file itself would miss); once `daemon.watch_debounce` passes without another change to the
//! file, one reload request goes to the daemon's reload path, the same one SIGHUP takes.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{
    EventKind, RecursiveMode, Watcher,
    event::{AccessKind, AccessMode},
};
use tokio::sync::{mpsc, watch};

use crate::reload::{ReloadOrigin, ReloadRequest, ReloadSender};

/// Why the file cannot be watched (the daemon still reloads on SIGHUP).
#[derive(Debug, thiserror::Error)]
#[error("daemon.watch_config: cannot watch {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    source: notify::Error,
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
            Ok(event) if concerns(&event, name.as_deref()) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "configuration watch error"),
        })
        .map_err(err)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(err)?;
    tokio::spawn(debounce_loop(rx, debounce, reload, shutdown));
    Ok(watcher)
}

/// Whether the event changes the watched file.
fn concerns(event: &notify::Event, name: Option<&std::ffi::OsStr>) -> bool {
    let changes = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    changes && event.paths.iter().any(|p| p.file_name() == name)
}

/// One reload per burst of changes, `debounce` after the last one.
async fn debounce_loop(
    mut changes: mpsc::UnboundedReceiver<()>,
    debounce: Duration,
    reload: ReloadSender,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            change = changes.recv() => if change.is_none() { return },
            _ = shutdown.changed() => return,
        }
        loop {
            tokio::select! {
                change = changes.recv() => if change.is_none() { return },
                _ = tokio::time::sleep(debounce) => break,
                _ = shutdown.changed() => return,
            }
        }
        let request = ReloadRequest {
            origin: ReloadOrigin::FileChange,
            reply: None,
        };
        if reload.send(request).await.is_err() {
            return;
        }
    }
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
}

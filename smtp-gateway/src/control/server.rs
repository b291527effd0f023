//! The daemon side of the control socket. The socket file is created root-owned with mode 0600
//! (under a umask, so it is never reachable by others, not even briefly), and every connection's
//! peer credentials are checked too: a socket made world-writable by mistake still answers root
//! only. Requests are handled one at a time per connection (`top` keeps one open).
//!
//! Any local process can connect, so what a connection may hold is bounded ([`Limits`]): at most
//! `daemon.control_max_connections` are served at once (one more is told why and closed at once),
//! and each has `daemon.control_request_timeout` to send every request line, and as long again
//! to take each part of an answer it is sent (a peer that stops reading would hold its slot for
//! ever). Making the answer is not timed: a reload or a long list takes what it takes.

use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::sys::stat::{Mode, umask};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, oneshot, watch},
};

use super::{
    ControlError, ops,
    protocol::{MAX_REQUEST_BYTES, Request, Response, SourceSessions, StatsReport},
};
use crate::{
    dataplane::{Dataplane, SharedDataplane},
    metrics::Metrics,
    reload::{ReloadOrigin, ReloadRequest, ReloadSender},
    source_outcomes::SourceOutcomes,
    store::records::FleetList,
};

/// The bound socket, before the daemon serves it.
pub struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

/// What the connections may hold (from `[daemon]`, read at start).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `daemon.control_max_connections`: connections served at once.
    pub max_connections: usize,
    /// `daemon.control_request_timeout`: how long a connection has to send one request line.
    pub request_timeout: Duration,
}

/// What the requests act on.
pub struct Handler {
    pub dataplane: SharedDataplane,
    pub outcomes: Arc<SourceOutcomes>,
    /// Counts the connections (accepted, refused over the cap, timed out).
    pub metrics: Arc<Metrics>,
    pub reload: ReloadSender,
    /// The state store: `block add`/`block del` and `allow add`/`allow del` write/delete the
    /// record (shared by a fleet).
    pub store: Option<crate::store::Store>,
    /// The sections `why` reads to find an address's keys in the store.
    pub why: super::why_store::WhyScope,
    /// Asks the fleet task for a reconcile now (none without a fleet).
    pub fleet_sync: Option<tokio::sync::mpsc::Sender<()>>,
}

/// Creates the socket at `path` (and its directory). A socket file nobody answers on is a
/// leftover of a daemon that died and is replaced; one that answers means another daemon runs;
/// anything else at `path` (a file, a directory, a symbolic link) is refused and left alone.
pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        // Only a socket is ever replaced: any other file there is somebody else's.
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ControlError::AlreadyRunning(path.to_path_buf())),
            Err(_) => std::fs::remove_file(path).map_err(io)?,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::os::unix::fs::chown(path, Some(0), Some(0)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    Ok(ControlSocket {
        listener,
        path: path.to_path_buf(),
    })
}

impl ControlSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until shutdown, then removes the socket file.
    pub async fn serve(
        self,
        handler: Arc<Handler>,
        limits: Limits,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let listener = match UnixListener::from_std(self.listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "control: cannot serve the bound socket");
                return;
            }
        };
        tracing::info!(path = %self.path.display(), "control socket ready");
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        // Set while every slot is taken and a refusal was logged: one warning per such spell,
        // whatever number of connections it refuses (each is counted).
        let mut saturated = false;
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.changed() => break,
            };
            match stream {
                Ok((mut stream, _)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        handler.metrics.control_connection("refused");
                        let pid = stream.peer_cred().ok().and_then(|p| p.pid());
                        if saturated {
                            tracing::debug!(client_pid = pid, "control: connection refused");
                        } else {
                            saturated = true;
                            tracing::warn!(
                                client_pid = pid,
                                "control: {} connections open (daemon.control_max_connections): \
                                 refusing more until one closes",
                                limits.max_connections
                            );
                        }
                        refuse_over_cap(&stream, limits.max_connections);
                        continue;
                    };
                    saturated = false;
                    handler.metrics.control_connection("accepted");
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        connection(&mut stream, &handler, limits.request_timeout).await;
                        // The slot is free before the peer sees the close: a client that
                        // connects again at once finds it.
                        drop(slot);
                        drop(stream);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(error = %e, path = %self.path.display(), "control: socket not removed");
        }
    }
}

/// Tells a connection over `daemon.control_max_connections` why it is closed, without waiting
/// (a peer that does not read gets nothing).
fn refuse_over_cap(stream: &UnixStream, max: usize) {
    let refusal = Response::Error {
        message: format!(
            "the daemon serves {max} control connections at once \
             (daemon.control_max_connections) and all are taken: try again later"
        ),
    };
    if let Ok(mut text) = serde_json::to_string(&refusal) {
        text.push('\n');
        let _ = stream.try_write(text.as_bytes());
    }
}

/// One client: root only, then one response per request line; each line must arrive within
/// `request_timeout` of the daemon waiting for it.
async fn connection(stream: &mut UnixStream, handler: &Handler, request_timeout: Duration) {
    let peer = stream.peer_cred().ok();
    let (read, mut write) = stream.split();
    if peer.map(|p| p.uid()) != Some(0) {
        tracing::warn!(
            uid = peer.map(|p| p.uid()),
            pid = peer.and_then(|p| p.pid()),
            "control: refused a client that is not root"
        );
        let refusal = Response::Error {
            message: "permission denied: the control socket answers root only".into(),
        };
        let _ = write_response(&mut write, &refusal, request_timeout).await;
        return;
    }
    let pid = peer.and_then(|p| p.pid());
    let mut lines = BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    let mut line = String::new();
    // Requests answered on this connection: one that answered some and then stays quiet is a
    // client between requests (`top` with a long --interval), not worth a warning.
    let mut answered = 0u64;
    loop {
        line.clear();
        let Ok(read) = tokio::time::timeout(request_timeout, lines.read_line(&mut line)).await
        else {
            handler.metrics.control_connection("timed_out");
            let limit = humantime::format_duration(request_timeout);
            if answered > 0 && line.is_empty() {
                tracing::debug!(
                    client_pid = pid,
                    answered,
                    "control: closed a connection idle for daemon.control_request_timeout \
                     ({limit}) after its requests"
                );
            } else {
                tracing::warn!(
                    client_pid = pid,
                    "control: closed a connection that sent no complete request within \
                     daemon.control_request_timeout ({limit})"
                );
            }
            let closing = Response::Error {
                message: format!(
                    "no complete request within daemon.control_request_timeout ({limit}): closing"
                ),
            };
            // Without waiting: a peer that sends nothing may read nothing either.
            if let Ok(mut text) = serde_json::to_string(&closing) {
                text.push('\n');
                let _ = write.try_write(text.as_bytes());
            }
            return;
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') => {
                let _ = write_response(
                    &mut write,
                    &Response::Error {
                        message: format!("request longer than {MAX_REQUEST_BYTES} bytes"),
                    },
                    request_timeout,
                )
                .await;
                return;
            }
            Ok(_) => {}
        }
        // Every request may use the whole budget again.
        lines.get_mut().set_limit(MAX_REQUEST_BYTES as u64);
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(handler, request, pid).await,
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        match write_response(&mut write, &response, request_timeout).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                handler.metrics.control_connection("timed_out");
                tracing::warn!(
                    client_pid = pid,
                    "control: closed a connection that did not read its answer within \
                     daemon.control_request_timeout ({})",
                    humantime::format_duration(request_timeout)
                );
                return;
            }
            Err(_) => return,
        }
        answered += 1;
    }
}

/// Bytes of an answer the peer must take within one `stall` (a socket buffer holds about this
/// much, so a peer that reads at all always gets a chunk through in time).
const ANSWER_CHUNK_BYTES: usize = 64 * 1024;

/// Sends one answer line; the peer must take each [`ANSWER_CHUNK_BYTES`] of it within `stall`,
/// else the error is `TimedOut`. A slow reader of a long list is served; one that stopped
/// reading is not waited for.
async fn write_response(
    write: &mut (impl AsyncWrite + Unpin),
    response: &Response,
    stall: Duration,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(std::io::Error::other)?;
    text.push('\n');
    for chunk in text.as_bytes().chunks(ANSWER_CHUNK_BYTES) {
        tokio::time::timeout(stall, write.write_all(chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    }
    Ok(())
}

/// Runs one request.
async fn handle(handler: &Handler, request: Request, pid: Option<i32>) -> Response {
    match request {
        Request::Reload => return reload(handler).await,
        Request::FleetSync => {
            let message = match &handler.fleet_sync {
                // A full channel holds a request already: that reconcile covers this one.
                Some(sync) => match sync.try_send(()) {
                    Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {
                        "fleet: this node's bans without a record are being published"
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => {
                        "fleet: the fleet task has stopped"
                    }
                },
                None => "no fleet (store.engine = \"redis\" with store.fleet)",
            };
            return Response::Done {
                message: message.into(),
                warnings: Vec::new(),
            };
        }
        Request::Sessions => {
            let sources = handler
                .outcomes
                .snapshot()
                .into_iter()
                .map(|(source, counts)| SourceSessions { source, counts })
                .collect();
            return Response::Sessions { sources };
        }
        _ => {}
    }
    let mutating = matches!(
        request,
        Request::BlockAdd { .. }
            | Request::BlockDel { .. }
            | Request::AllowAdd { .. }
            | Request::AllowDel { .. }
    );
    // Only changes are logged (`top` asks for statistics every second).
    let described = mutating.then(|| format!("{request:?}"));
    let record = handler
        .store
        .as_ref()
        .and_then(|store| ban_record_change(store, &request));
    let dataplane = handler.dataplane.clone();
    let outcomes = handler.outcomes.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut dp = dataplane
            .lock()
            .map_err(|_| "the data plane lock is poisoned".to_string())?;
        run_on_dataplane(&mut dp, &outcomes, request).map_err(|e| e.to_string())
    })
    .await;
    let mut response = match result {
        Ok(Ok(response)) => response,
        Ok(Err(message)) => Response::Error { message },
        Err(e) => Response::Error {
            message: format!("internal error: {e}"),
        },
    };
    if let (Some(store), Some(change), Response::Done { .. }) = (&handler.store, record, &response)
    {
        change.write(store);
    }
    if let (Some(store), Response::Why(report)) = (&handler.store, &mut response) {
        let targets: Vec<String> = report.blocks.iter().map(|b| b.target.clone()).collect();
        // Allowlist rows name a prefix (`198.18.0.7/32`); records are keyed by target.
        let allowed: Vec<String> = report
            .allows
            .iter()
            .filter_map(|a| a.prefix.parse::<crate::dataplane::Target>().ok())
            .map(|t| t.to_string())
            .collect();
        report.store = Some(
            super::why_store::store_view(store, &handler.why, report.address, &targets, &allowed)
                .await,
        );
    }
    if let Some(described) = described {
        match &response {
            Response::Done { message, .. } => {
                tracing::info!(client_pid = pid, "control: {message}");
            }
            Response::Error { message } => {
                tracing::info!(client_pid = pid, request = %described, "control: refused: {message}");
            }
            _ => {}
        }
    }
    response
}

/// What a blocklist or allowlist change does to the stored records, once the kernel took it.
enum RecordChange {
    /// `block add` / `allow add`: the record and how long it is kept.
    Put(FleetList, crate::store::BanRecord, Duration),
    /// `block del` / `allow del`: the target's record goes (and the deletion is remembered).
    Delete(FleetList, String),
}

impl RecordChange {
    /// Queues the write (never waits).
    fn write(self, store: &crate::store::Store) {
        match self {
            RecordChange::Put(list, record, ttl) => {
                let id = record.target.clone();
                store.delete(list.deletions(), &id);
                store.put(list.records(), &id, &record, ttl);
            }
            RecordChange::Delete(list, id) => {
                store.delete(list.records(), &id);
                if !store.fleet() {
                    return;
                }
                let tombstone = list.deleted(id.clone(), store.node().to_string());
                store.put(
                    list.deletions(),
                    &id,
                    &tombstone,
                    store.config().fleet_unban_ttl,
                );
            }
        }
    }
}

/// The record change of `request`, if it changes the blocklist or the allowlist (targets in
/// their canonical form, as every node parses them).
fn ban_record_change(store: &crate::store::Store, request: &Request) -> Option<RecordChange> {
    let record =
        |target: &crate::dataplane::Target, reason: &Option<String>, ttl: Option<Duration>| {
            let now = crate::store::records::unix_now_ms();
            crate::store::BanRecord {
                target: target.to_string(),
                source: None,
                reason: reason.clone().unwrap_or_default(),
                origin: "cli".into(),
                node: store.node().to_string(),
                added_unix_ms: now,
                expires_unix_ms: ttl
                    .map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
            }
        };
    let kept = store.config().permanent_ban_ttl;
    match request {
        Request::BlockAdd {
            target,
            ttl_secs,
            reason,
        } => {
            let target: crate::dataplane::Target = target.parse().ok()?;
            let ttl = ttl_secs.map(Duration::from_secs);
            Some(RecordChange::Put(
                FleetList::Blocklist,
                record(&target, reason, ttl),
                ttl.unwrap_or(kept).min(kept),
            ))
        }
        Request::AllowAdd { target, reason } => {
            let target: crate::dataplane::Target = target.parse().ok()?;
            Some(RecordChange::Put(
                FleetList::Allowlist,
                record(&target, reason, None),
                kept,
            ))
        }
        Request::BlockDel { target } => {
            let target: crate::dataplane::Target = target.parse().ok()?;
            Some(RecordChange::Delete(
                FleetList::Blocklist,
                target.to_string(),
            ))
        }
        Request::AllowDel { target } => {
            let target: crate::dataplane::Target = target.parse().ok()?;
            Some(RecordChange::Delete(
                FleetList::Allowlist,
                target.to_string(),
            ))
        }
        _ => None,
    }
}

fn run_on_dataplane(
    dp: &mut Dataplane,
    outcomes: &SourceOutcomes,
    request: Request,
) -> Result<Response, ops::OpError> {
    Ok(match request {
        Request::BlockAdd {
            target,
            ttl_secs,
            reason,
        } => ops::block_add(
            dp,
            &target,
            ttl_secs.map(std::time::Duration::from_secs),
            reason.as_deref(),
        )?,
        Request::BlockDel { target } => ops::block_del(dp, &target)?,
        Request::BlockList => Response::Blocklist {
            entries: ops::block_list(dp)?,
        },
        Request::AllowAdd { target, reason } => ops::allow_add(dp, &target, reason.as_deref())?,
        Request::AllowDel { target } => ops::allow_del(dp, &target)?,
        Request::AllowList => Response::Allowlist {
            entries: ops::allow_list(dp)?,
        },
        Request::Stats { top } => Response::Stats(with_sessions(ops::stats(dp, top)?, outcomes)),
        Request::Why { address } => {
            let mut report = super::why::why(dp, &address)?;
            report.sessions = outcomes.get(report.address);
            Response::Why(Box::new(report))
        }
        Request::Reload | Request::Sessions | Request::FleetSync => Response::Error {
            message: "not a data plane operation".into(),
        },
    })
}

/// Adds the daemon's session outcomes to the kernel rows.
fn with_sessions(mut report: StatsReport, outcomes: &SourceOutcomes) -> StatsReport {
    for row in report
        .top_by_drops
        .iter_mut()
        .chain(report.top_by_packets.iter_mut())
    {
        row.sessions = outcomes.get(row.kernel.source);
    }
    report.session_sources = Some(outcomes.len());
    report
}

/// Asks the daemon's reload path and waits for its result.
async fn reload(handler: &Handler) -> Response {
    let (tx, rx) = oneshot::channel();
    let request = ReloadRequest {
        origin: ReloadOrigin::ControlSocket,
        reply: Some(tx),
    };
    if handler.reload.send(request).await.is_err() {
        return Response::Error {
            message: "the daemon is stopping".into(),
        };
    }
    match rx.await {
        Ok(Ok(warnings)) => Response::Done {
            message: "configuration reloaded".into(),
            warnings,
        },
        Ok(Err(message)) => Response::Error {
            message: format!(
                "reload refused, the previous configuration stays in force: {message}"
            ),
        },
        Err(_) => Response::Error {
            message: "the daemon is stopping".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn block_add_and_del_through_the_daemon_change_the_ban_record() {
        let dir = std::env::temp_dir().join(format!("sgw-ctl-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = crate::store::StoreConfig {
            path: dir.join("state.redb"),
            node: "mx1".into(),
            permanent_ban_ttl: Duration::from_secs(3 * 24 * 3600),
            ..crate::store::StoreConfig::default()
        };
        let (store, _writer) = crate::store::Opened::open(&cfg)
            .expect("open")
            .expect("embedded")
            .start(Arc::new(crate::metrics::Metrics::new()))
            .expect("start");
        let add = |target: &str, ttl_secs: Option<u64>| Request::BlockAdd {
            target: target.into(),
            ttl_secs,
            reason: Some("spam run".into()),
        };
        let before = crate::store::records::unix_now_ms();
        match ban_record_change(&store, &add("2001:0db8:0::/64", Some(60))) {
            Some(RecordChange::Put(FleetList::Blocklist, record, ttl)) => {
                assert_eq!(record.target, "2001:db8::/64");
                assert_eq!(
                    (record.reason.as_str(), record.origin.as_str()),
                    ("spam run", "cli")
                );
                assert_eq!(record.node, "mx1");
                let expires = record.expires_unix_ms.expect("an expiry");
                assert!(expires >= before + 60_000 && expires <= before + 70_000);
                assert_eq!(ttl, Duration::from_secs(60));
            }
            _ => panic!("block add must put a record"),
        }
        match ban_record_change(&store, &add("198.18.0.7/32", None)) {
            Some(RecordChange::Put(FleetList::Blocklist, record, ttl)) => {
                assert_eq!(record.expires_unix_ms, None);
                assert_eq!(
                    ttl,
                    Duration::from_secs(3 * 24 * 3600),
                    "store.permanent_ban_ttl"
                );
            }
            _ => panic!("a permanent block add must put a record"),
        }
        // A ban longer than the permanent one is kept no longer than it.
        match ban_record_change(&store, &add("198.18.0.8", Some(30 * 24 * 3600))) {
            Some(RecordChange::Put(_, _, ttl)) => {
                assert_eq!(ttl, Duration::from_secs(3 * 24 * 3600));
            }
            _ => panic!("block add must put a record"),
        }
        assert!(matches!(
            ban_record_change(&store, &Request::BlockDel { target: "198.18.0.7".into() }),
            Some(RecordChange::Delete(FleetList::Blocklist, t)) if t == "198.18.0.7"
        ));
        // The allowlist: a permanent record of origin `cli`, and its deletion.
        let allow = Request::AllowAdd {
            target: "2001:db8:0:0::7/128".into(),
            reason: Some("partner relay".into()),
        };
        match ban_record_change(&store, &allow) {
            Some(RecordChange::Put(FleetList::Allowlist, record, ttl)) => {
                assert_eq!(record.target, "2001:db8::7");
                assert_eq!(
                    (
                        record.reason.as_str(),
                        record.origin.as_str(),
                        record.node.as_str()
                    ),
                    ("partner relay", "cli", "mx1")
                );
                assert_eq!(record.expires_unix_ms, None);
                assert_eq!(ttl, Duration::from_secs(3 * 24 * 3600));
            }
            _ => panic!("allow add must put an allowlist record"),
        }
        assert!(matches!(
            ban_record_change(&store, &Request::AllowDel { target: "198.18.0.0/24".into() }),
            Some(RecordChange::Delete(FleetList::Allowlist, t)) if t == "198.18.0.0/24"
        ));
        assert!(ban_record_change(&store, &add("not an address", None)).is_none());
        assert!(ban_record_change(&store, &Request::BlockList).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh directory for one test's socket path.
    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_refused_and_kept() {
        let dir = dir("not-a-socket");
        let path = dir.join("control.sock");
        std::fs::write(&path, "precious").expect("write");
        let error = match bind(&path) {
            Ok(_) => panic!("bound over a regular file"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains(&path.display().to_string()) && error.contains("not a socket"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "precious");
        // A symbolic link is not a socket either, whatever it points to.
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(bind(&link).is_err());
        assert!(std::fs::symlink_metadata(&link).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_socket_nobody_answers_on_is_replaced() {
        let dir = dir("stale");
        let path = dir.join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
        let socket = bind(&path).expect("replaced");
        let meta = std::fs::symlink_metadata(socket.path()).expect("socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // One that answers belongs to another daemon.
        assert!(matches!(bind(&path), Err(ControlError::AlreadyRunning(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

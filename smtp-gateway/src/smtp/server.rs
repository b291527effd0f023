//! Listeners and the accept loop: the global connection cap (a semaphore permit moved into each
//! session), the per-source cap (IPv6 by /64, `slots.rs`), TCP_NODELAY, implicit TLS, and `421`
//! for clients over a cap. At the global cap an idle session of a larger source makes room
//! (`slots.rs`) before a newcomer is refused. Accept errors back off instead of spinning. Each
//! session runs under `session_guard.rs`, which gives its slots back even when it panics.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};

use super::{
    Shared,
    config::{ListenerConfig, ListenerKind},
    connection::{Connection, MaybeTls},
    profile::Profile,
    session::Session,
    session_guard,
    slots::{Idle, Slots},
    tls_accept,
};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {0} is `smtps` but [smtp.tls] is not configured")]
    TlsMissing(SocketAddr),
}

/// Binds a listener (IPv6 sockets are IPv6-only so `0.0.0.0:25` and `[::]:25` can coexist).
/// Binds one listener (blocking and runtime-free: the daemon binds before dropping privileges).
pub fn bind(cfg: &ListenerConfig) -> Result<std::net::TcpListener, ServerError> {
    let err = |source| ServerError::Bind {
        address: cfg.address,
        source,
    };
    let domain = socket2::Domain::for_address(cfg.address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    if cfg.address.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&cfg.address.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    Ok(socket.into())
}

/// Accepts on every configured listener until shutdown, then answers `421` to newcomers while
/// the running sessions finish (each is told at its next command), up to `smtp.shutdown_timeout`.
/// Every session runs with the configuration generation current when it was accepted.
pub async fn serve(
    shared: watch::Receiver<Arc<Shared>>,
    listeners: Vec<(ListenerConfig, TcpListener)>,
    shutdown: watch::Receiver<bool>,
) {
    let initial = shared.borrow().config.smtp.max_connections;
    let limit = Arc::new(Semaphore::new(initial));
    let counts = Arc::new(Slots::default());
    // Every session is spawned on the tracker; closing it and waiting means "drained".
    let sessions = tokio_util::task::TaskTracker::new();
    tokio::spawn(follow_connection_limit(
        shared.clone(),
        limit.clone(),
        initial,
        shutdown.clone(),
    ));
    let mut tasks = Vec::new();
    for (cfg, listener) in listeners {
        tracing::info!(address = %cfg.address, kind = ?cfg.kind, "SMTP listener ready");
        tasks.push(tokio::spawn(accept_loop(
            shared.clone(),
            cfg,
            listener,
            limit.clone(),
            counts.clone(),
            shutdown.clone(),
            sessions.clone(),
        )));
    }
    let mut stop = shutdown.clone();
    let _ = stop.wait_for(|s| *s).await;
    let deadline = shared.borrow().config.smtp.shutdown_timeout;
    tracing::info!(deadline = %humantime::format_duration(deadline), "stopping: new connections get 421, running sessions may finish");
    sessions.close();
    if tokio::time::timeout(deadline, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline reached with sessions still running; closing them");
    }
    for t in tasks {
        t.abort();
    }
}

/// Resizes the global cap when a reload changes `smtp.max_connections`.
async fn follow_connection_limit(
    mut shared: watch::Receiver<Arc<Shared>>,
    limit: Arc<Semaphore>,
    mut current: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = shared.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let wanted = shared.borrow().config.smtp.max_connections;
        if wanted > current {
            limit.add_permits(wanted - current);
        } else if wanted < current {
            // Permits held by running sessions are forgotten as they come back.
            let mut left = current - wanted;
            while left > 0 {
                left -= limit.forget_permits(left);
                if left > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        current = wanted;
    }
}

async fn accept_loop(
    shared: watch::Receiver<Arc<Shared>>,
    cfg: ListenerConfig,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    counts: Arc<Slots>,
    shutdown: watch::Receiver<bool>,
    sessions: tokio_util::task::TaskTracker,
) {
    let mut backoff = Duration::from_millis(10);
    // The bound address (the configured one with its port resolved): see `session_local`.
    let bound = listener.local_addr().unwrap_or(cfg.address);
    loop {
        let (tcp, client) = match listener.accept().await {
            Ok(ok) => {
                backoff = Duration::from_millis(10);
                ok
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        if *shutdown.borrow() {
            refuse(tcp, "4.3.2 Service shutting down, try again later");
            continue;
        }
        let shared = shared.borrow().clone();
        let smtp = &shared.config.smtp;
        let Some(slot) = counts.acquire(client.ip(), smtp.max_connections_per_source) else {
            refuse(
                tcp,
                "4.7.0 Too many connections from your address, try again later",
            );
            continue;
        };
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => Permit::Now(permit),
            Err(_)
                if !smtp.evict_idle_after.is_zero()
                    && counts.evict_for(&slot, smtp.evict_idle_after) =>
            {
                shared.metrics.session_evicted();
                Permit::Freed(limit.clone(), smtp.write_timeout)
            }
            Err(_) => {
                refuse(tcp, "4.7.0 Too many connections, try again later");
                continue;
            }
        };
        shared.metrics.connection(cfg.address);
        let kind = cfg.kind;
        let profile = session_profile(&shared, &cfg);
        let session_shutdown = shutdown.clone();
        sessions.spawn(async move {
            let Some(permit) = permit.wait().await else {
                refuse(tcp, "4.7.0 Too many connections, try again later");
                return;
            };
            let metrics = shared.metrics.clone();
            let idle = slot.idle();
            // The slots are released when the session ends, also when it panicked.
            let slots = (permit, slot, metrics.session_started());
            // Boxed here, where it is made: passed by value, the whole state machine would
            // also be held by this task's future until its first poll.
            let session = Box::pin(run_session(
                shared,
                (tcp, idle),
                client,
                (bound, kind, profile),
                session_shutdown,
            ));
            session_guard::run_guarded(session, slots, client, &metrics).await;
        });
    }
}

/// A newcomer's connection permit: taken at once, or the one an idle session that was told to
/// make room gives back (waited for at most the given time: its goodbye is never waited for, so
/// it comes back at once unless the session is stuck elsewhere).
enum Permit {
    Now(OwnedSemaphorePermit),
    Freed(Arc<Semaphore>, Duration),
}

impl Permit {
    async fn wait(self) -> Option<OwnedSemaphorePermit> {
        match self {
            Permit::Now(permit) => Some(permit),
            Permit::Freed(limit, within) => tokio::time::timeout(within, limit.acquire_owned())
                .await
                .ok()?
                .ok(),
        }
    }
}

/// The policy profile a listener's sessions run with in this generation. Validation refuses an
/// unknown name, but a listener keeps its settings until a restart while the profiles reload: a
/// name the new generation lacks falls back to `mx`, with a warning.
fn session_profile(shared: &Shared, cfg: &ListenerConfig) -> Arc<Profile> {
    let profiles = &shared.config.profiles;
    profiles.get(Some(cfg.profile_name())).unwrap_or_else(|| {
        tracing::warn!(listener = %cfg.address, profile = cfg.profile_name(), "profile no longer configured; using mx until a restart");
        profiles.mx()
    })
}

/// One session on an accepted connection: the implicit TLS handshake (`smtps`), then the
/// session itself. `listener` is the bound listening address, its kind and its profile.
async fn run_session(
    shared: Arc<Shared>,
    (tcp, idle): (TcpStream, Arc<Idle>),
    client: SocketAddr,
    (listener, kind, profile): (SocketAddr, ListenerKind, Arc<Profile>),
    shutdown: watch::Receiver<bool>,
) {
    let local = session_local(listener, &tcp);
    let stream = if kind == ListenerKind::Smtps {
        let Some(acceptor) = shared.tls.clone() else {
            return;
        };
        // Boxed, as the session is below: a handshake's state is not kept for the session's life.
        let handshake = Box::pin(tls_accept::accept(
            &acceptor,
            tcp,
            shared.config.smtp.command_timeout,
            tls_accept::Next::Banner,
            Some(&idle),
        ));
        match handshake.await {
            Ok(tls) => {
                shared.metrics.tls_handshake(true);
                MaybeTls::Tls(Box::new(tls))
            }
            Err(e) => {
                shared.metrics.tls_handshake(false);
                if tls_accept::made_room(&e) {
                    tracing::info!(%client, "{e}");
                } else if e.kind() != std::io::ErrorKind::TimedOut {
                    tracing::info!(%client, error = %e, "TLS handshake failed");
                }
                return;
            }
        }
    } else {
        MaybeTls::Plain(tcp)
    };
    let conn = Connection::new(stream, shared.config.smtp.write_timeout).with_idle(idle);
    // A client this node does not know is asked of the state store (at most store.budget).
    let pass = Box::pin(shared.pass_cache.lookup(client.ip().to_canonical())).await;
    Session::new(shared, conn, client, local, kind, profile, pass)
        .with_shutdown(shutdown)
        .run()
        .await;
}

/// The local address of a session (what XCLIENT and PROXY v2 tell the backend it was sent to): a
/// listener bound to one address accepts only on that address, so it is the listener's own and
/// needs no getsockname(2) per session; a wildcard listener (`0.0.0.0`, `[::]`) asks the socket.
fn session_local(listener: SocketAddr, tcp: &TcpStream) -> SocketAddr {
    if listener.ip().is_unspecified() {
        tcp.local_addr().unwrap_or(listener)
    } else {
        listener
    }
}

/// Answers `421` on a connection over a cap and closes it. The reply fits an empty socket send
/// buffer, so it is written without waiting: a client that does not read can never hold up the
/// accept loop.
fn refuse(tcp: TcpStream, text: &str) {
    let _ = tcp.try_write(format!("421 {text}\r\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::net::{TcpListener, TcpStream};

    use super::session_local;

    /// The session's end of a connection made to `to` through `listener`.
    async fn accepted(listener: &TcpListener, to: SocketAddr) -> TcpStream {
        let (client, server) = tokio::join!(TcpStream::connect(to), listener.accept());
        let _client = client.expect("connect");
        server.expect("accept").0
    }

    #[tokio::test]
    async fn a_wildcard_listener_gives_each_session_the_address_it_was_reached_on() {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .expect("bind");
        let bound = listener.local_addr().expect("addr");
        let reached = SocketAddr::from((Ipv4Addr::LOCALHOST, bound.port()));
        let tcp = accepted(&listener, reached).await;
        assert_eq!(session_local(bound, &tcp), reached);
    }

    #[tokio::test]
    async fn a_listener_bound_to_one_address_gives_that_address() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let bound = listener.local_addr().expect("addr");
        let tcp = accepted(&listener, bound).await;
        assert_eq!(session_local(bound, &tcp), tcp.local_addr().expect("addr"));
    }
}

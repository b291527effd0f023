//! Idle backend connections kept for the next session (servers with `identity = "none"` only:
//! an XCLIENT or PROXY v2 identity belongs to one connection). A session that ends with its
//! backend between transactions hands the connection back instead of sending QUIT; the next
//! session takes it, says EHLO with its own client's name, and skips the connect, the banner and
//! the QUIT: two round trips and a TCP connection per message fewer for the backend.
//!
//! Connections are taken newest first, so under a light load the older ones reach
//! `backend.pool_idle` and are closed with QUIT by [`BackendPool::run_sweeper`]. A connection the
//! backend closed, or one on which it said something unasked (a 421 before its own idle timeout),
//! is found out before it is handed to a session; one that fails at that EHLO is replaced by a new
//! connection, so a client never sees the difference.
//!
//! [`BackendPool::connect`] is how a session gets its backend: the first reachable server in
//! configuration order (failover), an idle connection to it when there is one. The pool also
//! remembers whether the last backend session it handed out offered CHUNKING, which is what a
//! client is told before its own backend session exists.

use std::{
    net::SocketAddr,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use super::{
    backend::{Backend, BackendError},
    config::{BackendConfig, Identity},
    identity::ClientIdentity,
    tls::BackendConnector,
};

/// One idle connection and when it is closed.
struct Idle {
    backend: Backend,
    expires: Instant,
}

/// The bits of [`BackendPool`]'s `seen`.
struct Seen;

impl Seen {
    /// A backend session greeted with EHLO was seen.
    const KNOWN: u8 = 1;
    const CHUNKING: u8 = 1 << 1;
    const EIGHT_BIT: u8 = 1 << 2;
    const SMTPUTF8: u8 = 1 << 3;
}

/// Extensions the gateway offers when its backend does (and before it knows, all the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirroredExtension {
    /// 8BITMIME (RFC 6152).
    EightBitMime,
    /// SMTPUTF8 (RFC 6531).
    SmtpUtf8,
}

/// The idle connections of the whole run (configuration generations share it: a reload that
/// changes the pool's limits applies them to the connections handed back from then on).
#[derive(Default)]
pub struct BackendPool {
    idle: Mutex<Vec<Idle>>,
    /// Wakes the sweeper when a connection with an earlier expiry arrives.
    added: Notify,
    /// The extensions ([`Seen`] bits) the last backend session greeted with EHLO offered: what
    /// a client is told at EHLO while its own backend session is not open yet
    /// (`connect_at = "mail"`). 0 before the first.
    seen: AtomicU8,
    /// The AUTH mechanisms the last backend session greeted with EHLO offered (`Some(None)`: none;
    /// `None`: no backend session yet): what a submission client is offered at EHLO while its
    /// own backend session is not open (it is opened at AUTH).
    auth_seen: Mutex<Option<Option<String>>>,
}

impl std::fmt::Debug for BackendPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendPool")
            .field("idle", &self.len())
            .finish()
    }
}

impl BackendPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The vector stays consistent at every step, so a panic elsewhere cannot corrupt it.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Idle connections now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A backend session for `client`: for each server in order, an idle connection to it (for
    /// `identity = "none"` servers), else a new one (identity passed, EHLO replayed); the next
    /// server when it fails. Returns the backend and whether the connection was reused.
    /// `tls[i]` is the STARTTLS connector of `cfg.servers[i]`, if it has one.
    pub async fn connect(
        &self,
        cfg: &BackendConfig,
        tls: &[Option<BackendConnector>],
        client: &ClientIdentity,
        local: SocketAddr,
        gateway_name: &str,
    ) -> Result<(Backend, bool), BackendError> {
        let mut last = BackendError::NoServers;
        for (i, server) in cfg.servers.iter().enumerate() {
            if server.identity == Identity::None && cfg.pool_size > 0 {
                // A connection that fails its EHLO (the backend closed it meanwhile) is dropped,
                // and the next one, or a new one, serves the client.
                while let Some(mut idle) = self.take(server.address) {
                    match idle.hello(client, gateway_name).await {
                        Ok(_) => return Ok((self.seen(idle), true)),
                        Err(e) => {
                            tracing::debug!(backend = %server.address, error = %e, "idle backend connection unusable; replacing it");
                        }
                    }
                }
            }
            let connector = tls.get(i).and_then(Option::as_ref);
            match Backend::connect(cfg, server, connector, client, local, gateway_name).await {
                Ok(backend) => return Ok((self.seen(backend), false)),
                Err(e) => {
                    tracing::warn!(backend = %server.address, error = %e, "backend unavailable, trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Notes what a backend session about to be handed out offered (see
    /// [`BackendPool::chunking_seen`]). One greeted with HELO (for a HELO client) offers no
    /// extension: it says nothing of the backend's, and the next EHLO client would have been
    /// offered none.
    fn seen(&self, backend: Backend) -> Backend {
        if !backend.esmtp() {
            return backend;
        }
        let caps = backend.caps();
        let bit = |offered: bool, bit: u8| if offered { bit } else { 0 };
        let bits = Seen::KNOWN
            | bit(caps.chunking(), Seen::CHUNKING)
            | bit(caps.has("8BITMIME"), Seen::EIGHT_BIT)
            | bit(caps.has("SMTPUTF8"), Seen::SMTPUTF8);
        self.seen.store(bits, Ordering::Relaxed);
        let auth = backend.caps().auth().map(str::to_string);
        *self
            .auth_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(auth);
        backend
    }

    /// The AUTH mechanisms the last backend session handed out offered (`Some(None)`: none),
    /// or `None` before the first.
    pub fn auth_seen(&self) -> Option<Option<String>> {
        self.auth_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the last backend session greeted with EHLO offered CHUNKING (false before the
    /// first).
    pub fn chunking_seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed) & Seen::CHUNKING != 0
    }

    /// Whether the last backend session greeted with EHLO offered `keyword`, `8BITMIME` or
    /// `SMTPUTF8` (true before the first: nearly every MTA offers both, and a client not told
    /// them would bounce a message it cannot downgrade).
    pub fn offered_seen(&self, keyword: MirroredExtension) -> bool {
        let seen = self.seen.load(Ordering::Relaxed);
        let bit = match keyword {
            MirroredExtension::EightBitMime => Seen::EIGHT_BIT,
            MirroredExtension::SmtpUtf8 => Seen::SMTPUTF8,
        };
        seen & Seen::KNOWN == 0 || seen & bit != 0
    }

    /// The most recently returned connection to `addr` that is still open and not expired.
    /// Connections found closed are dropped; expired ones are closed with QUIT in the background.
    pub fn take(&self, addr: SocketAddr) -> Option<Backend> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.lock();
            loop {
                let Some(pos) = idle.iter().rposition(|i| i.backend.addr == addr) else {
                    break None;
                };
                let mut entry = idle.swap_remove(pos);
                if entry.expires <= now {
                    expired.push(entry.backend);
                } else if entry.backend.still_open() {
                    break Some(entry.backend);
                }
            }
        };
        quit_in_background(expired);
        found
    }

    /// Keeps `backend` until `max_idle` passes; gives it back when `per_server` connections to its
    /// server are already idle (the caller closes it).
    #[must_use = "a connection given back must be closed"]
    pub fn put(&self, backend: Backend, per_server: usize, max_idle: Duration) -> Option<Backend> {
        let mut idle = self.lock();
        let held = idle
            .iter()
            .filter(|i| i.backend.addr == backend.addr)
            .count();
        if held >= per_server {
            return Some(backend);
        }
        let expires = Instant::now() + max_idle;
        let earliest = due_first(&idle, expires);
        idle.push(Idle { backend, expires });
        drop(idle);
        if earliest {
            self.added.notify_one();
        }
        None
    }

    /// Takes out the connections whose time is up, and tells when the next one's is.
    fn take_expired(&self, now: Instant) -> (Vec<Backend>, Option<Instant>) {
        let mut idle = self.lock();
        let mut expired = Vec::new();
        let mut i = 0;
        while i < idle.len() {
            if idle[i].expires <= now {
                expired.push(idle.swap_remove(i).backend);
            } else {
                i += 1;
            }
        }
        let next = idle.iter().map(|i| i.expires).min();
        (expired, next)
    }

    /// Closes idle connections with QUIT as their time runs out, until `shutdown`; then closes
    /// the rest.
    pub async fn run_sweeper(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (expired, next) = self.take_expired(Instant::now());
            for backend in expired {
                backend.quit().await;
            }
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = self.added.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    /// Closes every idle connection with QUIT (at shutdown, once the sessions are done), all at
    /// once: each QUIT is bounded by its server's `backend.connect_timeout`.
    pub async fn close_all(&self) {
        let all: Vec<Backend> = self.lock().drain(..).map(|i| i.backend).collect();
        let quits: Vec<_> = all.into_iter().map(|b| tokio::spawn(b.quit())).collect();
        for quit in quits {
            let _ = quit.await;
        }
    }
}

/// Whether a connection idle until `expires` is due before every one in `idle`: only then must
/// the sweeper, asleep until the earliest of those (or for good when there are none), be woken.
/// Every other session's hand-back would wake it, often on another runtime worker, for nothing.
fn due_first(idle: &[Idle], expires: Instant) -> bool {
    idle.iter().all(|i| expires < i.expires)
}

/// QUITs `backends` in a task of their own (the caller is a session that must not wait).
fn quit_in_background(backends: Vec<Backend>) {
    if backends.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for backend in backends {
            backend.quit().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::BackendPool;
    use crate::smtp::test_peers::{answering_backend, backend_session};

    /// Whether the sweeper would be woken now (takes the wake-up).
    fn sweeper_woken(pool: &BackendPool) -> bool {
        pool.added.notified().now_or_never().is_some()
    }

    #[tokio::test]
    async fn only_a_connection_due_before_every_other_wakes_the_sweeper() {
        let server = answering_backend().await;
        let pool = BackendPool::new();
        let long = Duration::from_secs(300);
        let put = |backend, max_idle| assert!(pool.put(backend, 8, max_idle).is_none());
        put(backend_session(server).await, long);
        assert!(
            sweeper_woken(&pool),
            "the first one: the sweeper slept for good"
        );
        // Handed back later with the same pool_idle: due after the first, whose time the
        // sweeper already waits for.
        put(backend_session(server).await, long);
        assert!(!sweeper_woken(&pool), "woken for a later connection");
        // A reload shortened pool_idle: this one is due first.
        put(backend_session(server).await, Duration::from_secs(1));
        assert!(sweeper_woken(&pool), "not woken for an earlier connection");
        assert_eq!(pool.len(), 3);
    }
}

//! Listeners and the accept loop: the global connection cap (a semaphore permit moved into each
//! session), the per-source cap (IPv6 by /64), TCP_NODELAY, implicit TLS, and `421` for clients
//! over a cap. Accept errors back off instead of spinning.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};

use super::{
    Shared,
    config::{ListenerConfig, ListenerKind},
    connection::{Connection, MaybeTls},
    session::Session,
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

/// Sessions per source prefix.
#[derive(Default)]
struct SourceCounts(Mutex<HashMap<IpAddr, usize>>);

/// The per-source key: IPv4 address or IPv6 /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

/// A slot of the per-source cap, released on drop.
struct SourceSlot {
    counts: Arc<SourceCounts>,
    key: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counts.0.lock()
            && let Some(n) = map.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl SourceCounts {
    fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut map = self.0.lock().ok()?;
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            counts: self.clone(),
            key,
        })
    }
}

/// Binds a listener (IPv6 sockets are IPv6-only so `0.0.0.0:25` and `[::]:25` can coexist).
pub fn bind(cfg: &ListenerConfig) -> Result<TcpListener, ServerError> {
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
    TcpListener::from_std(socket.into()).map_err(err)
}

/// Accepts on every configured listener until `shutdown` turns true.
pub async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<(ListenerConfig, TcpListener)>,
    shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(shared.config.smtp.max_connections));
    let counts = Arc::new(SourceCounts::default());
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
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    cfg: ListenerConfig,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    counts: Arc<SourceCounts>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (tcp, client) = match accepted {
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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refuse(tcp, "4.7.0 Too many connections, try again later").await;
            continue;
        };
        let Some(slot) = counts.acquire(client.ip(), shared.config.smtp.max_connections_per_source)
        else {
            refuse(
                tcp,
                "4.7.0 Too many connections from your address, try again later",
            )
            .await;
            continue;
        };
        let shared = shared.clone();
        let kind = cfg.kind;
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let local = tcp.local_addr().unwrap_or(cfg.address);
            let stream = if kind == ListenerKind::Smtps {
                let Some(acceptor) = shared.tls.clone() else {
                    return;
                };
                match tokio::time::timeout(shared.config.smtp.command_timeout, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => MaybeTls::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        tracing::info!(%client, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                }
            } else {
                MaybeTls::Plain(tcp)
            };
            Session::new(shared, Connection::new(stream), client, local, kind)
                .run()
                .await;
        });
    }
}

async fn refuse(mut tcp: TcpStream, text: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        tcp.write_all(format!("421 {text}\r\n").as_bytes()),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let a: IpAddr = "2001:db8:1:2:3::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        let v4: IpAddr = "198.51.100.7".parse().expect("ip");
        assert_eq!(source_key(v4), v4);
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().expect("ip");
        assert_eq!(source_key(mapped), v4);
    }

    #[test]
    fn per_source_cap_counts_and_releases() {
        let counts = Arc::new(SourceCounts::default());
        let ip: IpAddr = "198.51.100.7".parse().expect("ip");
        let a = counts.acquire(ip, 2).expect("first");
        let _b = counts.acquire(ip, 2).expect("second");
        assert!(counts.acquire(ip, 2).is_none());
        drop(a);
        assert!(counts.acquire(ip, 2).is_some());
    }
}

//! `smtp-gateway run`: attach the XDP program (or reuse the pinned one), push the configuration,
//! sweep expired entries, reload on SIGHUP, stop on SIGTERM/SIGINT. The kernel protection stays
//! when the daemon stops (pinned links and maps); `smtp-gateway detach` removes it.
//!
//! The daemon is a set of tasks around one shared [`Dataplane`]; the SMTP proxy joins them as
//! another task fed by the same configuration and shutdown signal.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use ipnet::IpNet;
use smtp_gateway_common::{AllowEntry, origin};
use tokio::sync::watch;

use crate::{
    config::{Config, ConfigError, DataplaneConfig},
    dataplane::{Dataplane, DataplaneError, clock, loader, reasons},
    signal::{Control, Signals},
};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Listen(#[from] crate::smtp::server::ServerError),
    #[error(transparent)]
    Tls(#[from] crate::smtp::tls::TlsError),
    #[error(transparent)]
    Dnsbl(#[from] crate::policy::dnsbl::DnsblError),
    #[error(transparent)]
    Reputation(#[from] crate::policy::reputation::ReputationError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// The data plane shared by the daemon's tasks.
pub type SharedDataplane = Arc<Mutex<Dataplane>>;

/// Runs the daemon until SIGTERM (graceful: sessions may finish) or SIGINT (immediate).
/// `config_path` is re-read on SIGHUP.
pub async fn run(config_path: Option<PathBuf>, config: Config) -> Result<(), DaemonError> {
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    let dp_cfg = config.dataplane.clone();
    let dataplane = tokio::task::spawn_blocking(move || start_dataplane(&dp_cfg))
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))??;
    let dataplane: SharedDataplane = Arc::new(Mutex::new(dataplane));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let (events, events_rx) = crate::smtp::events::channel();
    // One set of counters for the whole run: reload generations share it.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let metrics_server = if config.metrics.enabled {
        let listener = crate::metrics::bind(&config.metrics).await?;
        Some(tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            Some(dataplane.clone()),
            config_rx.clone(),
            shutdown_rx.clone(),
        )))
    } else {
        tracing::info!("metrics.enabled is false: no metrics endpoint");
        None
    };
    let checks_counter = tokio::spawn(
        metrics
            .clone()
            .count_events(events.subscribe(), shutdown_rx.clone()),
    );
    let autoban = tokio::spawn(crate::autoban::run(
        config_rx.clone(),
        dataplane.clone(),
        events_rx,
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    let pass_cache = Arc::new(crate::policy::pass_cache::PassCache::new(
        config.smtp.pass_cache_ttl,
        config.smtp.pass_cache_size,
    ));
    let proxy = start_proxy(
        &config,
        events.clone(),
        pass_cache.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    )?;
    let sweeper = tokio::spawn(sweep_loop(dataplane.clone(), config_rx, shutdown_rx));
    tracing::info!("ready");

    let fast = loop {
        match signals.next().await {
            Control::Terminate => break false,
            Control::Interrupt => break true,
            Control::Reload => {
                let Some(path) = &config_path else {
                    tracing::warn!("SIGHUP: no configuration file to reload (running on defaults)");
                    continue;
                };
                let old = config_tx.borrow().clone();
                let proxy_ctx = proxy.as_ref().map(|p| ProxyReload {
                    events: events.clone(),
                    pass_cache: pass_cache.clone(),
                    metrics: metrics.clone(),
                    shared: &p.shared,
                });
                match reload(path, &old, &dataplane, proxy_ctx).await {
                    Ok(new) => {
                        metrics.reload(true);
                        tracing::info!(path = %path.display(), "configuration reloaded");
                        let _ = config_tx.send(new);
                    }
                    Err(e) => {
                        metrics.reload(false);
                        tracing::error!(
                            error = %e,
                            "configuration reload failed; the previous configuration stays in force"
                        );
                    }
                }
            }
        }
    };
    let _ = shutdown_tx.send(true);
    let _ = sweeper.await;
    let _ = checks_counter.await;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    if let Some(proxy) = proxy {
        if fast {
            proxy.handle.abort();
        }
        let _ = proxy.handle.await;
    }
    let bans = autoban.await.unwrap_or(0);
    tracing::info!(bans, "sources banned by session verdicts during this run");
    tracing::info!(
        "stopped; the XDP program stays attached with its pinned maps (`smtp-gateway detach` removes it)"
    );
    Ok(())
}

/// What a reload needs to build and publish a new proxy generation.
struct ProxyReload<'a> {
    events: crate::smtp::events::EventSender,
    pass_cache: Arc<crate::policy::pass_cache::PassCache>,
    metrics: Arc<crate::metrics::Metrics>,
    shared: &'a watch::Sender<Arc<crate::smtp::Shared>>,
}

/// The running proxy: its task and the configuration generation new sessions use.
struct Proxy {
    handle: tokio::task::JoinHandle<()>,
    shared: watch::Sender<Arc<crate::smtp::Shared>>,
}

/// Everything a configuration generation of the proxy needs, built without side effects (so a
/// failure leaves the running generation untouched).
fn build_shared(
    config: &Config,
    events: crate::smtp::events::EventSender,
    pass_cache: Arc<crate::policy::pass_cache::PassCache>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<crate::smtp::Shared, DaemonError> {
    let tls = config
        .smtp
        .tls
        .as_ref()
        .map(crate::smtp::tls::acceptor)
        .transpose()?;
    let dnsbl = if config.dnsbl.enabled {
        Some(Arc::new(crate::policy::dnsbl::Dnsbl::new(&config.dnsbl)?))
    } else {
        None
    };
    let backend_tls = config
        .backend
        .servers
        .iter()
        .map(|s| {
            s.tls
                .as_ref()
                .map(|t| crate::smtp::tls::backend_connector(t, s.address.ip()))
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let reputation = Arc::new(crate::policy::reputation::Reputation::load(
        &config.reputation,
    )?);
    let mut config = config.clone();
    // A client claiming to be us is lying: our own name joins the configured ones.
    config.helo.own_names.push(config.smtp.hostname.clone());
    Ok(crate::smtp::Shared {
        config,
        dnsbl,
        tls,
        backend_tls,
        events,
        reputation,
        pass_cache,
        metrics,
    })
}

/// Binds the SMTP listeners (a bind failure stops the start) and serves them in the background.
fn start_proxy(
    config: &Config,
    events: crate::smtp::events::EventSender,
    pass_cache: Arc<crate::policy::pass_cache::PassCache>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Proxy>, DaemonError> {
    if config.smtp.listeners.is_empty() {
        tracing::info!("smtp.listeners is empty: the SMTP proxy is off");
        return Ok(None);
    }
    let shared = Arc::new(build_shared(config, events, pass_cache, metrics)?);
    let mut listeners = Vec::new();
    for l in &config.smtp.listeners {
        listeners.push((l.clone(), crate::smtp::server::bind(l)?));
    }
    let (shared_tx, shared_rx) = watch::channel(shared);
    Ok(Some(Proxy {
        handle: tokio::spawn(crate::smtp::server::serve(shared_rx, listeners, shutdown)),
        shared: shared_tx,
    }))
}

/// Attaches, pushes the runtime config and the static allowlist.
fn start_dataplane(cfg: &DataplaneConfig) -> Result<Dataplane, DataplaneError> {
    let report = loader::attach(cfg)?;
    for (interface, action) in &report.links {
        tracing::info!(interface, ?action, mode = ?cfg.attach_mode, "XDP program attached");
    }
    for interface in &report.removed {
        tracing::info!(
            interface,
            "XDP link removed (interface no longer configured)"
        );
    }
    if cfg.interfaces.is_empty() {
        tracing::warn!("dataplane.interfaces is empty: the kernel filter is not attached anywhere");
    }
    let mut dataplane = report.dataplane;
    dataplane.apply_config(cfg)?;
    sync_config_allowlist(&mut dataplane, &cfg.allowlist)?;
    tracing::info!(
        ports = ?cfg.protected_ports,
        rate_limit = cfg.rate_limit.enabled,
        syn_per_second = cfg.rate_limit.syn_per_second,
        burst = cfg.rate_limit.burst,
        pins = %dataplane.dir().display(),
        "dataplane configured"
    );
    Ok(dataplane)
}

/// Makes the allowlist entries of origin "config" exactly `wanted`.
pub fn sync_config_allowlist(dp: &mut Dataplane, wanted: &[IpNet]) -> Result<(), DataplaneError> {
    for record in dp.allowed()? {
        if record.entry.origin == origin::CONFIG && !wanted.contains(&record.net) {
            dp.disallow(record.net)?;
        }
    }
    let reason = reasons::intern(dp, "configuration file")?;
    for net in wanted {
        dp.allow(
            *net,
            AllowEntry {
                reason,
                origin: origin::CONFIG,
                added_at_s: clock::unix_now_s(),
            },
        )?;
    }
    Ok(())
}

/// Reads, validates and applies a new configuration; on any error the old one stays.
async fn reload(
    path: &std::path::Path,
    old: &Config,
    dataplane: &SharedDataplane,
    proxy: Option<ProxyReload<'_>>,
) -> Result<Config, DaemonError> {
    let new = Config::load(path)?;
    // Built first and without side effects: a certificate that cannot be read leaves everything
    // as it was.
    // Reading certificates and reputation lists (possibly millions of lines) is blocking work:
    // it runs off the async workers that serve the sessions.
    let generation = match &proxy {
        Some(p) => {
            let (config, events, cache, metrics) = (
                new.clone(),
                p.events.clone(),
                p.pass_cache.clone(),
                p.metrics.clone(),
            );
            Some(
                tokio::task::spawn_blocking(move || build_shared(&config, events, cache, metrics))
                    .await
                    .map_err(|e| DaemonError::Task(e.to_string()))??,
            )
        }
        None => None,
    };
    if old.smtp.listeners != new.smtp.listeners {
        tracing::warn!("smtp.listeners changes take effect only after a restart");
    }
    if old.metrics.enabled != new.metrics.enabled || old.metrics.listen != new.metrics.listen {
        tracing::warn!(
            "metrics.enabled and metrics.listen changes take effect only after a restart"
        );
    }
    let (o, n) = (&old.dataplane, &new.dataplane);
    if o.pin_dir != n.pin_dir || o.capacity != n.capacity || o.attach_mode != n.attach_mode {
        tracing::warn!(
            "dataplane.pin_dir, dataplane.capacity and dataplane.attach_mode changes take effect \
             only after `smtp-gateway detach` and a restart"
        );
    }
    let cfg = n.clone();
    let interfaces_changed = o.interfaces != n.interfaces;
    let dataplane = dataplane.clone();
    tokio::task::spawn_blocking(move || -> Result<(), DataplaneError> {
        if interfaces_changed {
            let report = loader::attach(&cfg)?;
            for (interface, action) in &report.links {
                tracing::info!(interface, ?action, "XDP link");
            }
            for interface in &report.removed {
                tracing::info!(interface, "XDP link removed");
            }
        }
        let mut dp = dataplane.lock().map_err(|_| DataplaneError::Poisoned)?;
        dp.apply_config(&cfg)?;
        sync_config_allowlist(&mut dp, &cfg.allowlist)
    })
    .await
    .map_err(|e| DaemonError::Task(e.to_string()))??;
    if let (Some(generation), Some(p)) = (generation, proxy) {
        // Sessions already running keep the generation they started with.
        let _ = p.shared.send(Arc::new(generation));
    }
    Ok(new)
}

/// Removes expired blocklist entries every `dataplane.sweep_interval`.
async fn sweep_loop(
    dataplane: SharedDataplane,
    mut config: watch::Receiver<Config>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let interval = config.borrow().dataplane.sweep_interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = config.changed() => continue,
            _ = shutdown.changed() => return,
        }
        let dp = dataplane.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut dp = dp.lock().map_err(|_| "lock poisoned".to_string())?;
            dp.sweep_expired(clock::monotonic_ns())
                .map_err(|e| e.to_string())
        })
        .await;
        match result {
            Ok(Ok(report)) if report.removed > 0 => {
                tracing::info!(
                    removed = report.removed,
                    examined = report.examined,
                    "expired entries removed"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "expiry sweep failed"),
            Err(e) => tracing::error!(error = %e, "expiry sweep task failed"),
        }
    }
}

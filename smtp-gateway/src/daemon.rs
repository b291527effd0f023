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
    config::{Config, ConfigError, DataplaneConfig, ListenerConfig},
    control::{ControlError, server::ControlSocket},
    dataplane::{Dataplane, DataplaneError, clock, loader, reasons},
    privileges::PrivilegeError,
    reload::{ReloadOrigin, ReloadRequest},
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
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
}

/// The data plane shared by the daemon's tasks.
pub type SharedDataplane = Arc<Mutex<Dataplane>>;

/// Everything set up while the daemon still has its privileges: the data plane attached and
/// its maps open, every socket bound. [`serve`] runs on it without privileges.
pub struct Prepared {
    config_path: Option<PathBuf>,
    config: Config,
    dataplane: Dataplane,
    listeners: Vec<(ListenerConfig, std::net::TcpListener)>,
    metrics_listener: Option<std::net::TcpListener>,
    control: ControlSocket,
    /// Set when privileges were dropped (then interfaces cannot be attached on reload).
    dropped: bool,
}

/// Attaches, binds, then drops privileges (`[daemon]`). Must run before any other thread
/// exists (no async runtime yet): credentials and capabilities are per thread, and only threads
/// started afterwards inherit the reduced ones.
pub fn prepare(config_path: Option<PathBuf>, config: Config) -> Result<Prepared, DaemonError> {
    let dataplane = start_dataplane(&config.dataplane)?;
    let metrics_listener = if config.metrics.enabled {
        Some(crate::metrics::bind(&config.metrics)?)
    } else {
        tracing::info!("metrics.enabled is false: no metrics endpoint");
        None
    };
    let mut listeners = Vec::new();
    for l in &config.smtp.listeners {
        listeners.push((l.clone(), crate::smtp::server::bind(l)?));
    }
    let control = crate::control::server::bind(&config.control_socket())?;
    let dropped = if config.daemon.drop_privileges {
        let d = crate::privileges::drop_privileges(&config.daemon)?;
        tracing::info!(
            uid = d.uid,
            gid = d.gid,
            capabilities = ?d.kept,
            bounding_set_reduced = d.bounding,
            "privileges dropped after setup"
        );
        true
    } else {
        tracing::warn!("daemon.drop_privileges is false: the daemon keeps all its privileges");
        false
    };
    Ok(Prepared {
        config_path,
        config,
        dataplane,
        listeners,
        metrics_listener,
        control,
        dropped,
    })
}

/// Runs the daemon until SIGTERM (graceful: sessions may finish) or SIGINT (immediate).
/// The configuration file is re-read on SIGHUP, when it changes, and on `smtp-gateway reload`.
pub async fn serve(prepared: Prepared) -> Result<(), DaemonError> {
    let Prepared {
        config_path,
        config,
        dataplane,
        listeners,
        metrics_listener,
        control,
        dropped,
    } = prepared;
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    let dataplane: SharedDataplane = Arc::new(Mutex::new(dataplane));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let (reload_tx, mut reload_rx) = crate::reload::channel();
    let (events, events_rx) = crate::smtp::events::channel();
    let (ends, ends_rx) = crate::smtp::events::ends_channel();
    // One set of counters and one outcome table for the whole run: reload generations share them.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let outcomes = Arc::new(crate::source_outcomes::SourceOutcomes::new(
        config.metrics.session_sources,
    ));
    let metrics_server = metrics_listener.map(|listener| {
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            crate::metrics::ScrapeSources {
                dataplane: Some(dataplane.clone()),
                outcomes: Some(outcomes.clone()),
            },
            config_rx.clone(),
            shutdown_rx.clone(),
        ))
    });
    let control_server = tokio::spawn(control.serve(
        Arc::new(crate::control::server::Handler {
            dataplane: dataplane.clone(),
            outcomes: outcomes.clone(),
            reload: reload_tx.clone(),
        }),
        shutdown_rx.clone(),
    ));
    let _watcher = match (&config_path, config.daemon.watch_config) {
        (Some(path), true) => match crate::config_watch::spawn(
            path,
            config.daemon.watch_debounce,
            reload_tx.clone(),
            shutdown_rx.clone(),
        ) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "reloads on SIGHUP and `smtp-gateway reload` only");
                None
            }
        },
        _ => None,
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
        ends_rx,
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    let pass_cache = Arc::new(crate::policy::pass_cache::PassCache::new(
        config.smtp.pass_cache_ttl,
        config.smtp.pass_cache_size,
    ));
    let backend_pool = Arc::new(crate::smtp::backend_pool::BackendPool::new());
    let pool_sweeper = tokio::spawn({
        let pool = backend_pool.clone();
        let shutdown = shutdown_rx.clone();
        async move { pool.run_sweeper(shutdown).await }
    });
    let context = GenerationContext {
        events: events.clone(),
        ends,
        pass_cache,
        metrics: metrics.clone(),
        outcomes,
        backend_pool: backend_pool.clone(),
    };
    let proxy = start_proxy(&config, listeners, &context, shutdown_rx.clone())?;
    let sweeper = tokio::spawn(sweep_loop(dataplane.clone(), config_rx, shutdown_rx));
    tracing::info!("ready");

    let fast = loop {
        let request = tokio::select! {
            signal = signals.next() => match signal {
                Control::Terminate => break false,
                Control::Interrupt => break true,
                Control::Reload => ReloadRequest { origin: ReloadOrigin::Signal, reply: None },
            },
            Some(request) = reload_rx.recv() => request,
        };
        let result = match &config_path {
            None => Err("no configuration file to reload (running on built-in defaults)".into()),
            Some(path) => {
                let old = config_tx.borrow().clone();
                let generation = proxy.as_ref().map(|p| (&context, &p.shared));
                match reload(path, &old, &dataplane, generation, dropped).await {
                    Ok((new, notes)) => {
                        metrics.reload(true);
                        for note in &notes {
                            tracing::warn!("{note}");
                        }
                        tracing::info!(
                            path = %path.display(),
                            origin = request.origin.name(),
                            "configuration reloaded"
                        );
                        let _ = config_tx.send(new);
                        Ok(notes)
                    }
                    Err(e) => {
                        metrics.reload(false);
                        tracing::error!(
                            error = %e,
                            origin = request.origin.name(),
                            "configuration reload failed; the previous configuration stays in force"
                        );
                        Err(e.to_string())
                    }
                }
            }
        };
        if let Err(e) = &result
            && config_path.is_none()
        {
            tracing::warn!(origin = request.origin.name(), "reload: {e}");
        }
        if let Some(reply) = request.reply {
            let _ = reply.send(result);
        }
    };
    let _ = shutdown_tx.send(true);
    let _ = sweeper.await;
    let _ = checks_counter.await;
    let _ = control_server.await;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    if let Some(proxy) = proxy {
        if fast {
            proxy.handle.abort();
        }
        let _ = proxy.handle.await;
    }
    // The sessions are over: the idle backend connections end with QUIT (SIGINT just closes them).
    let _ = pool_sweeper.await;
    if !fast {
        backend_pool.close_all().await;
    }
    let bans = autoban.await.unwrap_or(0);
    tracing::info!(bans, "sources banned by session verdicts during this run");
    tracing::info!(
        "stopped; the XDP program stays attached with its pinned maps (`smtp-gateway detach` removes it)"
    );
    Ok(())
}

/// What every proxy configuration generation shares with the others (built once per run;
/// cloned, cheaply, into the blocking task that builds a generation).
#[derive(Clone)]
struct GenerationContext {
    events: crate::smtp::events::EventSender,
    ends: crate::smtp::events::EndSender,
    pass_cache: Arc<crate::policy::pass_cache::PassCache>,
    metrics: Arc<crate::metrics::Metrics>,
    outcomes: Arc<crate::source_outcomes::SourceOutcomes>,
    backend_pool: Arc<crate::smtp::backend_pool::BackendPool>,
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
    context: GenerationContext,
) -> Result<crate::smtp::Shared, DaemonError> {
    let GenerationContext {
        events,
        ends,
        pass_cache,
        metrics,
        outcomes,
        backend_pool,
    } = context;
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
        outcomes,
        ends,
        backend_pool,
    })
}

/// Serves the bound SMTP listeners in the background.
fn start_proxy(
    config: &Config,
    bound: Vec<(ListenerConfig, std::net::TcpListener)>,
    context: &GenerationContext,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Proxy>, DaemonError> {
    if bound.is_empty() {
        tracing::info!("smtp.listeners is empty: the SMTP proxy is off");
        return Ok(None);
    }
    let shared = Arc::new(build_shared(config, context.clone())?);
    let mut listeners = Vec::new();
    for (l, std_listener) in bound {
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(|source| {
            crate::smtp::server::ServerError::Bind {
                address: l.address,
                source,
            }
        })?;
        listeners.push((l, listener));
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

/// Reads, validates and applies a new configuration; on any error the old one stays. Returns
/// the new configuration and notes on changes that need a restart.
async fn reload(
    path: &std::path::Path,
    old: &Config,
    dataplane: &SharedDataplane,
    proxy: Option<(&GenerationContext, &watch::Sender<Arc<crate::smtp::Shared>>)>,
    privileges_dropped: bool,
) -> Result<(Config, Vec<String>), DaemonError> {
    let new = crate::config_watch::load_complete(path).await?;
    // Built first and without side effects: a certificate that cannot be read leaves everything
    // as it was.
    // Reading certificates and reputation lists (possibly millions of lines) is blocking work:
    // it runs off the async workers that serve the sessions.
    let generation = match &proxy {
        Some((context, _)) => {
            let (config, parts) = (new.clone(), (*context).clone());
            Some(
                tokio::task::spawn_blocking(move || build_shared(&config, parts))
                    .await
                    .map_err(|e| DaemonError::Task(e.to_string()))??,
            )
        }
        None => None,
    };
    let mut notes = restart_notes(old, &new);
    let (o, n) = (&old.dataplane, &new.dataplane);
    // Attaching needs the privileges given up after setup.
    let attach = o.interfaces != n.interfaces && !privileges_dropped;
    if o.interfaces != n.interfaces && privileges_dropped {
        notes.push(
            "dataplane.interfaces changes take effect only after a restart (the daemon gave up \
             the privileges to attach after setup; see daemon.drop_privileges)"
                .into(),
        );
    }
    let cfg = n.clone();
    let dataplane = dataplane.clone();
    tokio::task::spawn_blocking(move || -> Result<(), DataplaneError> {
        if attach {
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
    if let (Some(generation), Some((_, shared))) = (generation, proxy) {
        // Sessions already running keep the generation they started with.
        let _ = shared.send(Arc::new(generation));
    }
    Ok((new, notes))
}

/// The changed options that take effect only after a restart (config/gateway.toml lists them).
fn restart_notes(old: &Config, new: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    let mut note = |changed: bool, text: &str| {
        if changed {
            notes.push(text.to_string());
        }
    };
    note(
        old.smtp.listeners != new.smtp.listeners,
        "smtp.listeners changes take effect only after a restart",
    );
    note(
        old.metrics.enabled != new.metrics.enabled || old.metrics.listen != new.metrics.listen,
        "metrics.enabled and metrics.listen changes take effect only after a restart",
    );
    note(
        old.metrics.session_sources != new.metrics.session_sources,
        "metrics.session_sources changes take effect only after a restart",
    );
    let (o, n) = (&old.dataplane, &new.dataplane);
    note(
        o.pin_dir != n.pin_dir || o.capacity != n.capacity || o.attach_mode != n.attach_mode,
        "dataplane.pin_dir, dataplane.capacity and dataplane.attach_mode changes take effect \
         only after `smtp-gateway detach` and a restart",
    );
    let (o, n) = (&old.daemon, &new.daemon);
    note(
        o.control_socket != n.control_socket
            || o.watch_config != n.watch_config
            || o.watch_debounce != n.watch_debounce
            || o.drop_privileges != n.drop_privileges
            || o.user != n.user
            || o.group != n.group
            || o.keep_capabilities != n.keep_capabilities,
        "[daemon] changes (other than control_timeout) take effect only after a restart",
    );
    notes
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

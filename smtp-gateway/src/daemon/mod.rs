//! `smtp-gateway run`: attach the XDP program (or reuse the pinned one), push the configuration,
//! sweep expired entries, reload on SIGHUP, stop on SIGTERM/SIGINT. The kernel protection stays
//! when the daemon stops (pinned links and maps); `smtp-gateway detach` removes it.
//!
//! The daemon is a set of tasks around one shared [`Dataplane`]; the SMTP proxy joins them as
//! another task fed by the same configuration and shutdown signal. This is the only place that
//! holds the whole [`Config`]: every task gets its own section.
//!
//! - `mod.rs`: the wiring: [`prepare`] (privileged setup) and [`serve`] (the tasks, the reload
//!   loop, the stop, which does not wait for a reload under way);
//! - `reload.rs`: the one reload path, the proxy's configuration generations, the sections handed
//!   to running tasks, and the notes on changes that need a restart;
//! - `config.rs`: `[daemon]`;
//! - `privileges.rs`: giving up capabilities (and the uid) once setup is done;
//! - `watcher.rs`: the configuration file watcher (reload on a complete write) and the complete-file
//!   read every reload goes through;
//! - `check.rs`: [`check_files`], the files and accounts `check-config` checks as the start
//!   would use them;
//! - `error.rs`: [`DaemonError`].
//!
//! The state store (`store/`) is opened in [`prepare`] (the embedded file lives under
//! `/var/lib`) and started in [`serve`]; its writer is stopped last, after auto-ban has written
//! its last bans.

mod check;
pub mod config;
mod error;
pub mod privileges;
mod reload;
pub mod watcher;

use std::{path::PathBuf, sync::Arc};

use tokio::sync::watch;

pub use check::{check_files, warnings};
pub use error::CheckError;
pub use error::DaemonError;
use reload::{GenerationContext, Live, Proxy};

use crate::{
    config::Config,
    control::server::ControlSocket,
    dataplane::{Dataplane, DataplaneError, SharedDataplane, config::DataplaneConfig, loader},
    reload::{ReloadOrigin, ReloadRequest},
    signal::{Control, Signals},
    smtp::config::ListenerConfig,
};

/// Everything set up while the daemon still has its privileges: the data plane attached and
/// its maps open, every socket bound. [`serve`] runs on it without privileges.
pub struct Prepared {
    /// The file reloads read (none: running on built-in defaults).
    config_path: Option<PathBuf>,
    /// The configuration the daemon starts with.
    config: Config,
    /// The attached data plane, its maps open.
    dataplane: Dataplane,
    /// Every `smtp.listeners` socket, bound.
    listeners: Vec<(ListenerConfig, std::net::TcpListener)>,
    /// The metrics endpoint's socket, bound when `metrics.enabled`.
    metrics_listener: Option<std::net::TcpListener>,
    /// The control socket, bound.
    control: ControlSocket,
    /// Set when privileges were dropped (then interfaces cannot be attached on reload).
    dropped: bool,
    /// The state store, opened (none: `store.engine = "off"`).
    store: Option<crate::store::Opened>,
}

/// Attaches, binds, then drops privileges (`[daemon]`). Must run before any other thread
/// exists (no async runtime yet): credentials and capabilities are per thread, and only threads
/// started afterwards inherit the reduced ones.
pub fn prepare(config_path: Option<PathBuf>, config: Config) -> Result<Prepared, DaemonError> {
    let dataplane = start_dataplane(&config.dataplane)?;
    let metrics_listener = if config.metrics.enabled {
        Some(crate::metrics::endpoint::bind(&config.metrics)?)
    } else {
        tracing::info!("metrics.enabled is false: no metrics endpoint");
        None
    };
    let mut listeners = Vec::new();
    for l in &config.smtp.listeners {
        listeners.push((l.clone(), crate::smtp::server::bind(l)?));
    }
    let control = crate::control::server::bind(&config.control_socket())?;
    // The embedded file lives under /var/lib: opened while the privileges last.
    let store = crate::store::Opened::open(&config.store)?;
    let dropped = if config.daemon.drop_privileges {
        let d = privileges::drop_privileges(&config.daemon)?;
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
        store,
    })
}

/// Runs the daemon until SIGTERM (graceful: sessions may finish) or SIGINT (immediate).
/// The configuration file is re-read on SIGHUP, when it changes, and on `smtp-gateway reload`.
pub async fn serve(prepared: Prepared) -> Result<(), DaemonError> {
    let Prepared {
        config_path,
        config,
        dataplane,
        ..
    } = prepared;
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    let dataplane: SharedDataplane = Arc::new(std::sync::Mutex::new(dataplane));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The whole file stays here; each task reads its own section, published on every reload.
    let live = Live::new(&config);
    // `block import` asks the fleet task for a reconcile through the control socket.
    let (fleet_sync_tx, fleet_sync_rx) = tokio::sync::mpsc::channel(1);
    let (reload_tx, mut reload_rx) = crate::reload::channel();
    let (events, events_rx) = crate::events::channel();
    let (ends, ends_rx) = crate::events::ends_channel(config.smtp.max_connections);
    // One set of counters and one outcome table for the whole run: reload generations share them.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let outcomes = Arc::new(crate::source_outcomes::SourceOutcomes::new(
        config.metrics.session_sources,
    ));
    let pass_cache = Arc::new(crate::policy::pass_cache::PassCache::new(
        config.smtp.pass_cache_ttl,
        config.smtp.pass_cache_size,
    ));
    let greylist = Arc::new(crate::policy::greylist::Greylist::new(
        config.greylist.local_capacity,
    ));
    // The state store: its writer outlives every task that writes (stopped last).
    let (store_stop, store_stop_rx) = watch::channel(false);
    let (store, store_writer) = match prepared.store {
        Some(opened) => {
            let (store, writer) = opened.start(metrics.clone())?;
            pass_cache.attach(store.clone());
            greylist.attach(store.clone());
            outcomes.attach(store.clone());
            match store.load(crate::store::Space::Outcome).await {
                Ok(kept) => {
                    let restored = outcomes.restore(kept);
                    tracing::info!(
                        sources = restored,
                        "session outcomes taken back from the store"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "session outcomes not loaded from the store"),
            }
            (Some(store), Some(tokio::spawn(writer.run(store_stop_rx))))
        }
        None => {
            tracing::info!("store.engine is off: only the kernel maps outlive a restart");
            (None, None)
        }
    };
    let metrics_server = match prepared.metrics_listener {
        Some(listener) => {
            let sources = crate::metrics::endpoint::ScrapeSources::new(
                Some(dataplane.clone()),
                Some(outcomes.clone()),
            )?;
            Some(tokio::spawn(crate::metrics::endpoint::serve(
                listener,
                metrics.clone(),
                sources,
                live.metrics.subscribe(),
                shutdown_rx.clone(),
            )))
        }
        None => None,
    };
    let control_server = tokio::spawn(
        prepared.control.serve(
            Arc::new(crate::control::server::Handler {
                dataplane: dataplane.clone(),
                outcomes: outcomes.clone(),
                metrics: metrics.clone(),
                reload: reload_tx.clone(),
                store: store.clone(),
                fleet_sync: store
                    .as_ref()
                    .filter(|s| s.fleet())
                    .map(|_| fleet_sync_tx.clone()),
                why: crate::control::why_store::WhyScope {
                    autoban: live.autoban.subscribe(),
                    greylist: live.greylist.subscribe(),
                },
            }),
            crate::control::server::Limits {
                max_connections: config.daemon.control_max_connections,
                request_timeout: config.daemon.control_request_timeout,
            },
            shutdown_rx.clone(),
        ),
    );
    let _watcher = match (&config_path, config.daemon.watch_config) {
        (Some(path), true) => match self::watcher::spawn(
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
        live.autoban.subscribe(),
        dataplane.clone(),
        events_rx,
        ends_rx,
        metrics.clone(),
        store.clone(),
        shutdown_rx.clone(),
    ));
    let crowdsec = tokio::spawn(crate::crowdsec::run(
        live.crowdsec.subscribe(),
        dataplane.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    let fleet = tokio::spawn(crate::fleet::run(
        store.clone(),
        dataplane.clone(),
        metrics.clone(),
        fleet_sync_rx,
        shutdown_rx.clone(),
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
        greylist,
        metrics: metrics.clone(),
        outcomes,
        backend_pool: backend_pool.clone(),
    };
    let proxy = start_proxy(&config, prepared.listeners, &context, shutdown_rx.clone())?;
    let sweeper = tokio::spawn(crate::dataplane::sweeper::sweep_loop(
        dataplane.clone(),
        live.sweep_interval.subscribe(),
        shutdown_rx,
    ));
    let mut current = config;
    // A SIGHUP that came while a reload ran: one more reload once it is done (the loop listens
    // for signals during a reload, so that a stop is not kept waiting behind it).
    let mut hangup: Option<ReloadRequest> = None;
    tracing::info!("ready");

    let fast = 'run: loop {
        let request = match hangup.take() {
            Some(request) => request,
            None => tokio::select! {
                signal = signals.next() => match signal {
                    Control::Terminate => break false,
                    Control::Interrupt => break true,
                    Control::Reload => ReloadRequest { origin: ReloadOrigin::Signal, reply: None },
                },
                Some(request) = reload_rx.recv() => request,
            },
        };
        let Some(path) = &config_path else {
            let e = "no configuration file to reload (running on built-in defaults)";
            tracing::warn!(origin = request.origin.name(), "reload: {e}");
            if let Some(reply) = request.reply {
                let _ = reply.send(Err(e.into()));
            }
            continue;
        };
        // A reload may take long: lists read from a slow (or hung) file system, the data plane
        // held by a large import. SIGTERM and SIGINT are heard meanwhile: the reload is
        // abandoned (its blocking part is not waited for) and the daemon stops with the
        // configuration in force.
        let outcome = {
            let generation = proxy.as_ref().map(|p| (&context, &p.shared));
            let reloading =
                reload::reload(path, &current, &dataplane, generation, prepared.dropped);
            tokio::pin!(reloading);
            loop {
                tokio::select! {
                    outcome = &mut reloading => break outcome,
                    signal = signals.next() => match signal {
                        Control::Reload => {
                            hangup = Some(ReloadRequest {
                                origin: ReloadOrigin::Signal,
                                reply: None,
                            });
                        }
                        stop => {
                            tracing::warn!(
                                origin = request.origin.name(),
                                "stop signal during a reload: reload abandoned, stopping with the \
                                 configuration in force"
                            );
                            break 'run stop == Control::Interrupt;
                        }
                    },
                }
            }
        };
        let result = match outcome {
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
                live.publish(&new);
                current = new;
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
        };
        if let Some(reply) = request.reply {
            let _ = reply.send(result);
        }
    };
    if fast {
        // Before the shutdown is told: the proxy would start a drain (and say "running sessions
        // may finish") that SIGINT does not grant.
        tracing::info!("interrupted (SIGINT): sessions and backend connections are cut now");
        if let Some(proxy) = &proxy {
            proxy.handle.abort();
        }
    }
    let _ = shutdown_tx.send(true);
    let _ = sweeper.await;
    let _ = checks_counter.await;
    let _ = control_server.await;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    if let Some(proxy) = proxy {
        let _ = proxy.handle.await;
    }
    // The sessions are over: the idle backend connections end with QUIT (SIGINT just closes them).
    let _ = pool_sweeper.await;
    if !fast {
        backend_pool.close_all().await;
    }
    let _ = crowdsec.await;
    let _ = fleet.await;
    let bans = autoban.await.unwrap_or(0);
    tracing::info!(bans, "sources banned by session verdicts during this run");
    // Every task that writes has ended: the last writes are flushed.
    drop(store);
    let _ = store_stop.send(true);
    if let Some(writer) = store_writer {
        let lost = writer.await.unwrap_or(0);
        if lost > 0 {
            tracing::warn!(lost, "state store: writes lost at stop");
        }
    }
    tracing::info!(
        "stopped; the XDP program stays attached with its pinned maps (`smtp-gateway detach` removes it)"
    );
    Ok(())
}

/// Serves the bound SMTP listeners in the background.
fn start_proxy(
    config: &Config,
    bound: Vec<(ListenerConfig, std::net::TcpListener)>,
    context: &GenerationContext,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Proxy>, DaemonError> {
    if bound.is_empty() {
        tracing::info!("{}", check::NO_LISTENERS);
        return Ok(None);
    }
    for warning in check::relay_warnings(config) {
        tracing::warn!("{warning}");
    }
    let shared = Arc::new(reload::build_shared(config, context.clone())?);
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
        tracing::warn!("{}", check::NO_INTERFACES);
    }
    let mut dataplane = report.dataplane;
    dataplane.apply_config(cfg)?;
    dataplane.sync_config_allowlist(&cfg.allowlist)?;
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

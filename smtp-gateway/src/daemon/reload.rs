//! The one reload path: read and validate the new file, build the proxy's next configuration
//! generation without side effects, apply the data plane's section, then hand every running task
//! its own section ([`Live`]). On any error the old configuration stays in force. Also the notes
//! on changes that take effect only after a restart.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::error::{CheckError, DaemonError};
use crate::{
    autoban::AutobanConfig,
    config::Config,
    crowdsec::config::CrowdsecConfig,
    dataplane::{DataplaneError, SharedDataplane, loader},
    metrics::config::MetricsConfig,
};

/// The sections running tasks read live, one channel each; every reload publishes all of them
/// (the proxy gets its whole generation through [`Proxy::shared`] instead).
pub(super) struct Live {
    /// `[autoban]`, for the auto-ban task.
    pub autoban: watch::Sender<AutobanConfig>,
    /// `[crowdsec]`, for the bouncer task.
    pub crowdsec: watch::Sender<CrowdsecConfig>,
    /// `[metrics]`, for the endpoint (`top_sources`).
    pub metrics: watch::Sender<MetricsConfig>,
    /// `dataplane.sweep_interval`, for the expiry sweeper.
    pub sweep_interval: watch::Sender<Duration>,
    /// `[greylist]`, for `why` (the sessions get theirs through their generation).
    pub greylist: watch::Sender<crate::policy::greylist::GreylistConfig>,
}

impl Live {
    /// Channels holding the sections of `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            autoban: watch::Sender::new(config.autoban.clone()),
            crowdsec: watch::Sender::new(config.crowdsec.clone()),
            metrics: watch::Sender::new(config.metrics.clone()),
            sweep_interval: watch::Sender::new(config.dataplane.sweep_interval),
            greylist: watch::Sender::new(config.greylist.clone()),
        }
    }

    /// Hands every task its section of `config` (each is told, changed or not).
    pub fn publish(&self, config: &Config) {
        self.autoban.send_replace(config.autoban.clone());
        self.crowdsec.send_replace(config.crowdsec.clone());
        self.metrics.send_replace(config.metrics.clone());
        self.sweep_interval
            .send_replace(config.dataplane.sweep_interval);
        self.greylist.send_replace(config.greylist.clone());
    }
}

/// What every proxy configuration generation shares with the others (built once per run;
/// cloned, cheaply, into the blocking task that builds a generation).
#[derive(Clone)]
pub(super) struct GenerationContext {
    /// Verdict events (auto-ban and metrics read them).
    pub events: crate::events::EventSender,
    /// Session ends (auto-ban reads them).
    pub ends: crate::events::EndSender,
    /// Clients that passed recently (survives reloads).
    pub pass_cache: Arc<crate::policy::pass_cache::PassCache>,
    /// Greylisting triplets and auto-allowlist (survives reloads).
    pub greylist: Arc<crate::policy::greylist::Greylist>,
    /// Process counters.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per-source session outcomes.
    pub outcomes: Arc<crate::source_outcomes::SourceOutcomes>,
    /// Idle backend connections.
    pub backend_pool: Arc<crate::smtp::backend_pool::BackendPool>,
}

/// The running proxy: its task and the configuration generation new sessions use.
pub(super) struct Proxy {
    /// The accept loop.
    pub handle: tokio::task::JoinHandle<()>,
    /// The current generation; sessions take it when they are accepted.
    pub shared: watch::Sender<Arc<crate::smtp::Shared>>,
}

/// Everything a configuration generation of the proxy needs, built without side effects (so a
/// failure leaves the running generation untouched).
pub(super) fn build_shared(
    config: &Config,
    context: GenerationContext,
) -> Result<crate::smtp::Shared, DaemonError> {
    let GenerationContext {
        events,
        ends,
        pass_cache,
        greylist,
        metrics,
        outcomes,
        backend_pool,
    } = context;
    let tls = config
        .smtp
        .tls
        .as_ref()
        .map(crate::smtp::tls::acceptor)
        .transpose()
        .map_err(|e| CheckError::new("smtp.tls", e))?;
    // One resolver for every DNS check (`[dns]`), built only when one is on.
    let resolver = if config.dnsbl.enabled || config.fcrdns.enabled || config.spf.enabled {
        let servers = config.dns.effective_nameservers(&config.dnsbl.nameservers);
        Some(config.dns.resolver(servers, "the DNS checks")?)
    } else {
        None
    };
    let dnsbl = match (&resolver, config.dnsbl.enabled) {
        (Some(resolver), true) => Some(Arc::new(crate::policy::dnsbl::Dnsbl::with_resolver(
            &config.dnsbl,
            resolver.clone(),
        )?)),
        _ => None,
    };
    let fcrdns = match (&resolver, config.fcrdns.enabled) {
        (Some(resolver), true) => Some(Arc::new(crate::policy::fcrdns::Fcrdns::new(
            &config.fcrdns,
            resolver.clone(),
        ))),
        _ => None,
    };
    let spf = match (&resolver, config.spf.enabled) {
        (Some(resolver), true) => Some(Arc::new(crate::policy::spf::Spf::new(
            resolver.clone(),
            &config.smtp.hostname,
        ))),
        _ => None,
    };
    let backend_tls = config
        .backend
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.tls
                .as_ref()
                .map(|t| crate::smtp::tls::backend_connector(t, s.address.ip()))
                .transpose()
                .map_err(|e| CheckError::new(format!("backend.servers[{i}].tls"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let reputation = Arc::new(crate::policy::reputation::Reputation::load(
        &config.reputation,
    )?);
    let mut config = config.proxy();
    // A client claiming to be us is lying: our own name joins the configured ones.
    config.helo.own_names.push(config.smtp.hostname.clone());
    Ok(crate::smtp::Shared {
        config,
        dnsbl,
        fcrdns,
        spf,
        tls,
        backend_tls,
        events,
        reputation,
        pass_cache,
        greylist,
        metrics,
        outcomes,
        ends,
        backend_pool,
    })
}

/// Reads, validates and applies a new configuration; on any error the old one stays. Returns
/// the new configuration and notes on changes that need a restart.
pub(super) async fn reload(
    path: &Path,
    old: &Config,
    dataplane: &SharedDataplane,
    proxy: Option<(&GenerationContext, &watch::Sender<Arc<crate::smtp::Shared>>)>,
    privileges_dropped: bool,
) -> Result<(Config, Vec<String>), DaemonError> {
    let new = super::watcher::load_complete(path).await?;
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
    // What is checked, built and applied is what will run: the file's options, with the ones
    // that need a restart as they run now (a listener stays, and must still have a backend).
    let new = as_running(new, old, attach);
    new.validate_assembled(&path.display().to_string())?;
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
    let cfg = new.dataplane.clone();
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
        dp.sync_config_allowlist(&cfg.allowlist)
    })
    .await
    .map_err(|e| DaemonError::Task(e.to_string()))??;
    if let (Some(generation), Some((context, shared))) = (generation, proxy) {
        publish_generation(context, shared, generation, &new);
    }
    Ok((new, notes))
}

/// Makes `generation` the one new sessions take, with the state shared across generations set
/// to `new` (the pass cache's TTL and size). Sessions already running keep the generation they
/// started with.
fn publish_generation(
    context: &GenerationContext,
    shared: &watch::Sender<Arc<crate::smtp::Shared>>,
    generation: crate::smtp::Shared,
    new: &Config,
) {
    context
        .pass_cache
        .configure(new.smtp.pass_cache_ttl, new.smtp.pass_cache_size);
    context.greylist.configure(new.greylist.local_capacity);
    let _ = shared.send(Arc::new(generation));
}

/// The configuration a reload of `new` runs when `old` runs: `new`, with the running value of
/// every option [`restart_notes`] names (and of `dataplane.interfaces` unless the reload
/// attaches). The running configuration keeps them, so every later reload says again what waits
/// for a restart, and a file put back as it runs says nothing.
pub(super) fn as_running(new: Config, old: &Config, attach: bool) -> Config {
    let mut running = new;
    running.smtp.listeners = old.smtp.listeners.clone();
    running.metrics.enabled = old.metrics.enabled;
    running.metrics.listen = old.metrics.listen;
    running.metrics.session_sources = old.metrics.session_sources;
    running.store = old.store.clone();
    let (o, r) = (&old.dataplane, &mut running.dataplane);
    r.pin_dir = o.pin_dir.clone();
    r.capacity = o.capacity.clone();
    r.attach_mode = o.attach_mode;
    if !attach {
        r.interfaces = o.interfaces.clone();
    }
    running.daemon = crate::daemon::config::DaemonConfig {
        control_timeout: running.daemon.control_timeout,
        ..old.daemon.clone()
    };
    running
}

/// The changed options that take effect only after a restart (config/gateway.toml lists them).
pub(super) fn restart_notes(old: &Config, new: &Config) -> Vec<String> {
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
    note(
        old.store != new.store,
        "store changes take effect only after a restart",
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
            || o.control_max_connections != n.control_max_connections
            || o.control_request_timeout != n.control_request_timeout
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared parts of generations built from `old`, with a pass cache of `pass_ttl`.
    fn context(old: &Config, pass_ttl: Duration) -> GenerationContext {
        let (events, _) = crate::events::channel();
        let (ends, _) = crate::events::ends_channel(old.smtp.max_connections);
        GenerationContext {
            events,
            ends,
            pass_cache: Arc::new(crate::policy::pass_cache::PassCache::new(
                pass_ttl,
                old.smtp.pass_cache_size,
            )),
            greylist: Arc::new(crate::policy::greylist::Greylist::new(
                old.greylist.local_capacity,
            )),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            outcomes: Arc::new(crate::source_outcomes::SourceOutcomes::new(10)),
            backend_pool: Arc::new(crate::smtp::backend_pool::BackendPool::new()),
        }
    }

    #[test]
    fn a_reload_applies_the_pass_cache_ttl_and_size() {
        let old = Config::default();
        let context = context(&old, old.smtp.pass_cache_ttl);
        let (shared, sessions) =
            watch::channel(Arc::new(build_shared(&old, context.clone()).expect("old")));
        let now = std::time::Instant::now();
        for last in 1..=3 {
            let ip = std::net::IpAddr::from([198, 51, 100, last]);
            context.pass_cache.insert(ip, now);
        }
        let mut new = old.clone();
        new.smtp.pass_cache_size = 1;
        let generation = build_shared(&new, context.clone()).expect("new");
        publish_generation(&context, &shared, generation, &new);
        assert!(sessions.has_changed().expect("open"));
        assert_eq!(context.pass_cache.len(), 1, "resized on reload");
        new.smtp.pass_cache_ttl = Duration::ZERO;
        let generation = build_shared(&new, context.clone()).expect("newer");
        publish_generation(&context, &shared, generation, &new);
        assert!(context.pass_cache.is_empty(), "disabled on reload");
    }

    #[tokio::test]
    async fn a_reload_applies_the_greylist_section_and_keeps_its_table() {
        let old = Config::default();
        let context = context(&old, Duration::ZERO);
        let (shared, sessions) =
            watch::channel(Arc::new(build_shared(&old, context.clone()).expect("old")));
        let on = crate::policy::greylist::GreylistConfig {
            enabled: true,
            ..old.greylist.clone()
        };
        for last in 1..=3 {
            let ip = std::net::IpAddr::from([198, 51, 100 + last, 1]);
            context.greylist.check(&on, ip, "a@x", "r@y").await;
        }
        assert_eq!(context.greylist.len(), 3);
        let mut new = old.clone();
        new.greylist = crate::policy::greylist::GreylistConfig {
            local_capacity: 1,
            delay: Duration::from_secs(2),
            ..on
        };
        let generation = build_shared(&new, context.clone()).expect("new");
        publish_generation(&context, &shared, generation, &new);
        let current = sessions.borrow().clone();
        assert!(current.config.greylist.enabled, "new sessions greylist");
        assert_eq!(current.config.greylist.delay, Duration::from_secs(2));
        assert_eq!(
            context.greylist.len(),
            1,
            "resized on reload, the rest kept"
        );
    }

    #[test]
    fn a_reload_runs_the_options_that_need_a_restart_as_they_run() {
        let old = Config::parse(
            "[smtp]\nlisteners = [{ address = \"127.0.0.1:2525\" }]\n\
             [backend]\nservers = [{ address = \"127.0.0.1:10025\" }]\n",
            "old.toml",
        )
        .expect("old");
        let mut new = old.clone();
        new.smtp.listeners.clear();
        new.daemon.watch_config = !old.daemon.watch_config;
        new.daemon.control_timeout = Duration::from_secs(5);
        new.smtp.max_recipients = 7;
        assert_eq!(restart_notes(&old, &new).len(), 2, "listeners and [daemon]");
        let running = as_running(new.clone(), &old, false);
        assert_eq!(running.smtp.listeners, old.smtp.listeners);
        assert_eq!(running.daemon.watch_config, old.daemon.watch_config);
        assert_eq!(running.daemon.control_timeout, Duration::from_secs(5));
        assert_eq!(running.smtp.max_recipients, 7);
        // Asked again, the same notes; the file put back as it runs, none.
        assert_eq!(restart_notes(&running, &new).len(), 2);
        assert!(restart_notes(&running, &old).is_empty());
    }

    #[test]
    fn a_reload_hands_every_task_its_new_section() {
        let old = Config::default();
        let live = Live::new(&old);
        let (mut autoban, mut metrics, mut sweep) = (
            live.autoban.subscribe(),
            live.metrics.subscribe(),
            live.sweep_interval.subscribe(),
        );
        let mut new = old.clone();
        new.autoban.ttl = Duration::from_secs(60);
        new.metrics.top_sources = 7;
        new.dataplane.sweep_interval = Duration::from_secs(42);
        live.publish(&new);
        assert!(autoban.has_changed().expect("open"));
        assert!(metrics.has_changed().expect("open"));
        assert!(sweep.has_changed().expect("open"));
        assert_eq!(*autoban.borrow_and_update(), new.autoban);
        assert_eq!(metrics.borrow_and_update().top_sources, 7);
        assert_eq!(*sweep.borrow_and_update(), Duration::from_secs(42));
        // Unchanged sections are announced too, as the whole file was before.
        live.publish(&new);
        assert!(sweep.has_changed().expect("open"));
    }
}

//! The process-side counters: sessions (and session panics), checks, TLS, backend, messages,
//! reloads, bans, state store operations, control socket connections. They live in one
//! [`Metrics`] shared by every task and incremented where things happen (sessions, the proxy,
//! auto-ban, the daemon); the endpoint that serves them is `endpoint.rs`.
//!
//! - `config.rs`: `[metrics]`;
//! - `endpoint.rs`: `GET /metrics`, the scrape-time kernel and per-source series.

pub mod config;
pub mod endpoint;

use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::{broadcast, watch};

use crate::{
    checks::{Action, Check},
    events::Event,
};

/// Prefix of every series.
const PREFIX: &str = "smtp_gateway";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    /// The listener's address.
    listener: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    /// `success`/`failure`, `relayed`/`refused`.
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    /// The check's name.
    check: &'static str,
    /// The action configured when it fired.
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// What a CrowdSec decision did: `banned`, `removed`, `kept`, `ignored`.
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    /// `get`, `scan`, `write`, `decode`.
    op: &'static str,
    /// `ok`, `error` or `timeout`.
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    /// `new` or `reused`.
    origin: &'static str,
}

/// The process-side counters, shared (`Arc`) by the proxy, auto-ban and the daemon; built once
/// per run so they survive configuration reloads.
#[derive(Debug)]
pub struct Metrics {
    /// Everything below, for encoding.
    registry: Registry,
    /// Accepted connections per listener address.
    connections: Family<ListenerLabels, Counter>,
    /// Sessions running now.
    sessions_active: Gauge,
    /// TLS handshakes (implicit TLS and STARTTLS) by outcome.
    tls_handshakes: Family<ResultLabels, Counter>,
    /// Backend command round trips.
    backend_reply: Histogram,
    /// Backend sessions by connection: opened for the session, or an idle one reused.
    backend_sessions: Family<OriginLabels, Counter>,
    /// Messages relayed (backend 2xx) or refused.
    messages: Family<ResultLabels, Counter>,
    /// Checks that fired, by check and configured action.
    checks_fired: Family<CheckLabels, Counter>,
    /// SIGHUP reloads by outcome.
    config_reloads: Family<ResultLabels, Counter>,
    /// 1 when the last reload (or the start) succeeded.
    config_last_reload_success: Gauge,
    /// Sources banned in the kernel by auto-ban.
    bans: Counter,
    /// Session tasks that panicked (caught; their slots were released).
    session_panics: Counter,
    /// Idle sessions closed at capacity to make room for a client of a smaller source.
    sessions_evicted: Counter,
    /// CrowdSec LAPI polls by outcome.
    crowdsec_polls: Family<ResultLabels, Counter>,
    /// CrowdSec decisions by what they did to the blocklist.
    crowdsec_decisions: Family<DecisionLabels, Counter>,
    /// Fleet bans by what they did to the kernel blocklist.
    fleet_bans: Family<DecisionLabels, Counter>,
    /// 1 while another running gateway uses this gateway's `store.node`.
    fleet_node_shared: Gauge,
    /// State store operations by operation and outcome (timeouts included).
    store_operations: Family<StoreLabels, Counter>,
    /// Store writes dropped because the write queue was full (store down too long).
    store_queue_overflows: Counter,
    /// Store writes waiting to be written.
    store_queued: Gauge,
    /// Greylisting verdicts on recipients, by result.
    greylist: Family<ResultLabels, Counter>,
    /// Control socket connections by what became of them.
    control_connections: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements `sessions_active` when the session ends.
pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Fresh counters, registered under the `smtp_gateway_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Self {
            registry: Registry::default(),
            connections: Family::default(),
            sessions_active: Gauge::default(),
            tls_handshakes: Family::default(),
            backend_reply: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            backend_sessions: Family::default(),
            messages: Family::default(),
            checks_fired: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_success: Gauge::default(),
            bans: Counter::default(),
            session_panics: Counter::default(),
            sessions_evicted: Counter::default(),
            crowdsec_polls: Family::default(),
            crowdsec_decisions: Family::default(),
            fleet_bans: Family::default(),
            fleet_node_shared: Gauge::default(),
            store_operations: Family::default(),
            store_queue_overflows: Counter::default(),
            store_queued: Gauge::default(),
            greylist: Family::default(),
            control_connections: Family::default(),
        };
        registry.register(
            "connections",
            "SMTP connections accepted, by listener",
            m.connections.clone(),
        );
        registry.register(
            "sessions_active",
            "SMTP sessions running",
            m.sessions_active.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes with clients (implicit TLS and STARTTLS), by result",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "backend_reply_seconds",
            "Backend command round trips",
            m.backend_reply.clone(),
        );
        registry.register(
            "backend_sessions",
            "Backend sessions started, by connection: \"new\" (opened for the session) or \"reused\" (an idle one from the pool)",
            m.backend_sessions.clone(),
        );
        registry.register(
            "messages",
            "Messages relayed (backend 2xx) or refused",
            m.messages.clone(),
        );
        registry.register(
            "checks_fired",
            "Session checks that fired, by check and configured action",
            m.checks_fired.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_success",
            "1 when the last configuration (re)load succeeded",
            m.config_last_reload_success.clone(),
        );
        registry.register(
            "bans",
            "Sources banned in the kernel by session verdicts",
            m.bans.clone(),
        );
        registry.register(
            "session_panics",
            "Session tasks that panicked (caught, logged with the client address, slots released)",
            m.session_panics.clone(),
        );
        registry.register(
            "sessions_evicted",
            "Idle sessions closed with 421 at max_connections to make room for a new client \
             (smtp.evict_idle_after)",
            m.sessions_evicted.clone(),
        );
        registry.register(
            "crowdsec_polls",
            "CrowdSec LAPI decision-stream polls, by result (success, failure)",
            m.crowdsec_polls.clone(),
        );
        registry.register(
            "crowdsec_decisions",
            "CrowdSec decisions by what they did to the kernel blocklist: banned (entry written), removed, kept (the target has an entry of another origin), ignored (not a ban of an address or prefix, malformed, or over crowdsec.max_decisions)",
            m.crowdsec_decisions.clone(),
        );
        registry.register(
            "fleet_bans",
            "Bans and operator allowlist entries of other gateways of the fleet (store.fleet) by what they did here: banned (blocklist entry written), removed (ban deleted there), allowed (allowlist entry written), disallowed (allowlist entry deleted there), kept (the target has an active entry of another origin), invalid (message or record that does not make sense, or refused: wider than store.fleet_min_prefix_v4/_v6, or a ban on loopback, unspecified or multicast addresses), failed (map error), reconcile_failed (the store did not answer); and published: this node's own bans and operator allowlist entries without a stored record (an import, a block or allow add without the daemon, entries older than a Redis that lost its data) written and published at a reconcile",
            m.fleet_bans.clone(),
        );
        registry.register(
            "fleet_node_shared",
            "1 while another running gateway was seen using this gateway's store.node (its presence key <key_prefix>fleet/nodes/<node> rewritten by another instance within a few reconcile intervals): the two never apply each other's bans",
            m.fleet_node_shared.clone(),
        );
        registry.register(
            "store_operations",
            "State store operations, by operation (get, scan, write, decode) and result (ok, error, timeout)",
            m.store_operations.clone(),
        );
        registry.register(
            "store_queue_overflows",
            "State store writes dropped because the write queue was full",
            m.store_queue_overflows.clone(),
        );
        registry.register(
            "store_queued_writes",
            "State store writes waiting to be written",
            m.store_queued.clone(),
        );
        registry.register(
            "greylist",
            "Greylisting verdicts on recipients, by result: deferred (451 4.7.1), passed (a retry after the delay, or a triplet that passed before), allowlisted (auto-allowlisted client network), bypassed (authenticated, DNSWL-listed, SPF pass for a big sender, passed recently), store_error (the store did not answer; store.on_timeout decided)",
            m.greylist.clone(),
        );
        registry.register(
            "control_connections",
            "Control socket connections, by result: accepted, refused (over daemon.control_max_connections, closed at once), timed_out (closed for not sending a complete request, or not taking its answer, within daemon.control_request_timeout)",
            m.control_connections.clone(),
        );
        m.config_last_reload_success.set(1);
        Self { registry, ..m }
    }

    /// One poll of the CrowdSec LAPI.
    pub fn crowdsec_poll(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.crowdsec_polls
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// `n` CrowdSec decisions did `action`.
    pub fn crowdsec_decisions(&self, action: &'static str, n: usize) {
        if n > 0 {
            self.crowdsec_decisions
                .get_or_create(&DecisionLabels { action })
                .inc_by(n as u64);
        }
    }

    /// `n` fleet bans did `action`.
    pub fn fleet(&self, action: &'static str, n: usize) {
        if n > 0 {
            self.fleet_bans
                .get_or_create(&DecisionLabels { action })
                .inc_by(n as u64);
        }
    }

    /// Whether another running gateway uses this gateway's `store.node`.
    pub fn fleet_node_shared(&self, shared: bool) {
        self.fleet_node_shared.set(i64::from(shared));
    }

    /// A connection accepted on `listener`.
    pub fn connection(&self, listener: SocketAddr) {
        self.connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
    }

    /// A session starts; it ends when the guard is dropped.
    pub fn session_started(&self) -> ActiveSession {
        self.sessions_active.inc();
        ActiveSession(self.sessions_active.clone())
    }

    /// A client TLS handshake finished.
    pub fn tls_handshake(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.tls_handshakes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The histogram backend round trips are recorded in.
    pub fn backend_reply_histogram(&self) -> Histogram {
        self.backend_reply.clone()
    }

    /// A session got its backend connection: a new one, or an idle one `reused`.
    pub fn backend_session(&self, reused: bool) {
        let origin = if reused { "reused" } else { "new" };
        self.backend_sessions
            .get_or_create(&OriginLabels { origin })
            .inc();
    }

    /// A message left the session: relayed (backend 2xx) or refused.
    pub fn message(&self, relayed: bool) {
        let result = if relayed { "relayed" } else { "refused" };
        self.messages.get_or_create(&ResultLabels { result }).inc();
    }

    /// A check fired.
    pub fn check_fired(&self, check: Check, action: Action) {
        let check = check.name();
        let action = match action {
            Action::Ignore => "ignore",
            Action::Score => "score",
            Action::Reject => "reject",
            Action::Drop => "drop",
        };
        self.checks_fired
            .get_or_create(&CheckLabels { check, action })
            .inc();
    }

    /// Greylisting judged a recipient: `deferred`, `passed`, `allowlisted`, `bypassed`,
    /// `store_error`.
    pub fn greylist(&self, result: &'static str) {
        self.greylist.get_or_create(&ResultLabels { result }).inc();
    }

    /// A configuration reload finished.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
        self.config_last_reload_success.set(i64::from(ok));
    }

    /// A source was banned in the kernel.
    pub fn ban(&self) {
        self.bans.inc();
    }

    /// A state store operation finished with `result` (`ok`, `error`, `timeout`).
    pub fn store_op(&self, op: &'static str, result: &'static str) {
        self.store_ops(op, result, 1);
    }

    /// `n` state store operations finished with `result`.
    pub fn store_ops(&self, op: &'static str, result: &'static str, n: u64) {
        self.store_operations
            .get_or_create(&StoreLabels { op, result })
            .inc_by(n);
    }

    /// A store write was dropped: the queue was full.
    pub fn store_queue_overflow(&self) {
        self.store_queue_overflows.inc();
    }

    /// Store writes dropped so far because the queue was full (for tests and `stats`).
    pub fn store_queue_overflows(&self) -> u64 {
        self.store_queue_overflows.get()
    }

    /// Store writes waiting now.
    pub fn store_queued(&self, n: usize) {
        self.store_queued.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The count of store operations `op` that ended with `result` (for tests and `stats`).
    pub fn store_count(&self, op: &'static str, result: &'static str) -> u64 {
        self.store_operations
            .get_or_create(&StoreLabels { op, result })
            .get()
    }

    /// A control socket connection was `accepted`, `refused` (over the cap) or closed as
    /// `timed_out` (no complete request in time).
    pub fn control_connection(&self, result: &'static str) {
        self.control_connections
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A session task panicked (and was caught).
    pub fn session_panic(&self) {
        self.session_panics.inc();
    }

    /// An idle session was told to make room for a new client.
    pub fn session_evicted(&self) {
        self.sessions_evicted.inc();
    }

    /// Counts the verdict events until shutdown.
    pub async fn count_events(
        self: Arc<Self>,
        mut events: broadcast::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = shutdown.changed() => return,
            };
            match event {
                Ok(e) => self.check_fired(e.check, e.action),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "metrics fell behind the session events");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Appends the text encoding of the counters (without the final `# EOF`).
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        text::encode_registry(out, &self.registry)
    }
}

//! `GET /metrics`: the scrape-time side of the Prometheus/OpenMetrics endpoint. The process
//! counters ([`Metrics`]) are encoded as they are; the kernel counters are read from the pinned
//! maps at scrape time (through their own descriptors, without the data plane's lock), with
//! per-source series for the top sources; one scrape reads at a time, and scrapes that queued
//! behind a reading share it. The HTTP side is deliberately minimal: one request per
//! connection, `GET /metrics` or `404`, then close.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::{Metrics, PREFIX, config::MetricsConfig};
use crate::{
    dataplane::{
        DataplaneError, SharedDataplane,
        stats::{CounterReader, SourceRow},
    },
    events::SessionVerdict,
    source_outcomes::{SessionCounts, SourceOutcomes},
};

/// The content type of the text encoding `prometheus-client` produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest request head read before answering (the request line is all we need).
const MAX_REQUEST: usize = 8192;
/// How long a scraper may take to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen: cannot listen on {address}: {source}")]
pub struct MetricsError {
    /// `metrics.listen`.
    address: SocketAddr,
    /// Why it could not be bound.
    source: std::io::Error,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    /// The kernel's verdict name.
    verdict: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    /// The source address.
    source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceVerdictLabels {
    /// The source address.
    source: String,
    /// The session verdict name.
    verdict: &'static str,
}

/// Where the per-source series come from at scrape time, and the turn scrapes take.
#[derive(Clone, Default)]
pub struct ScrapeSources {
    /// The kernel counters, read without the data plane's lock (none when the daemon runs
    /// without a data plane, in tests).
    counters: Option<Arc<CounterReader>>,
    /// The session outcomes per source.
    outcomes: Option<Arc<SourceOutcomes>>,
    /// One scrape reads at a time; the last reading, which scrapes that waited for it share.
    turn: Arc<tokio::sync::Mutex<Option<Reading>>>,
    /// Readings rendered so far (scrapes that shared one do not count).
    renders: Arc<AtomicU64>,
}

/// One rendered exposition.
struct Reading {
    /// When its reading started: a scrape that arrived before this may use it.
    started: Instant,
    /// The text.
    body: String,
}

impl ScrapeSources {
    /// Takes what scrapes need from the data plane (its counter maps, through duplicated
    /// descriptors), holding its lock only for that.
    pub fn new(
        dataplane: Option<SharedDataplane>,
        outcomes: Option<Arc<SourceOutcomes>>,
    ) -> Result<Self, DataplaneError> {
        let counters = match dataplane {
            Some(dp) => {
                let dp = dp.lock().map_err(|_| DataplaneError::Poisoned)?;
                Some(Arc::new(dp.counter_reader()?))
            }
            None => None,
        };
        Ok(Self {
            counters,
            outcomes,
            ..Self::default()
        })
    }

    /// Readings rendered so far.
    pub fn renders(&self) -> u64 {
        self.renders.load(Ordering::Relaxed)
    }
}

/// The text exposition: process counters, then the kernel counters read now (the per-source
/// ones for the `top_sources` sources with the most drops, then packets). One scrape reads at a
/// time; scrapes that waited for a reading started after they arrived get that one.
pub async fn render(metrics: &Metrics, sources: &ScrapeSources, top_sources: usize) -> String {
    render_for(Instant::now(), metrics, sources, top_sources).await
}

/// [`render`] for a scrape that arrived at `arrived`.
async fn render_for(
    arrived: Instant,
    metrics: &Metrics,
    sources: &ScrapeSources,
    top_sources: usize,
) -> String {
    let mut last = sources.turn.lock().await;
    if let Some(reading) = last.as_ref()
        && reading.started >= arrived
    {
        return reading.body.clone();
    }
    let started = Instant::now();
    let body = read(metrics, sources, top_sources).await;
    sources.renders.fetch_add(1, Ordering::Relaxed);
    *last = Some(Reading {
        started,
        body: body.clone(),
    });
    body
}

/// Reads every counter and renders them.
async fn read(metrics: &Metrics, sources: &ScrapeSources, top_sources: usize) -> String {
    let mut kernel = Registry::with_prefix(PREFIX);
    let mut rows = Vec::new();
    if let Some(counters) = &sources.counters {
        let counters = counters.clone();
        let read = tokio::task::spawn_blocking(move || {
            let totals = counters.verdict_totals()?;
            let rows = counters.source_rows()?;
            Ok::<_, DataplaneError>((totals, rows))
        })
        .await;
        match read {
            Ok(Ok((totals, all))) => {
                kernel_totals(&mut kernel, &totals);
                rows = all;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics: reading the kernel counters"),
            Err(e) => tracing::warn!(error = %e, "metrics: kernel counters task failed"),
        }
    }
    let outcomes = sources
        .outcomes
        .as_ref()
        .map(|o| o.snapshot())
        .unwrap_or_default();
    source_series(&mut kernel, &top(rows, &outcomes, top_sources), &outcomes);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = metrics
        .encode(&mut out)
        .and_then(|()| text::encode_registry(&mut out, &kernel))
        .and_then(|()| text::encode_eof(&mut out));
    out
}

/// The `n` sources with the most drops, then packets (sources without traffic are left out);
/// when the kernel knows fewer than `n`, the sources with the most sessions fill the rest.
fn top(mut rows: Vec<SourceRow>, outcomes: &[(IpAddr, SessionCounts)], n: usize) -> Vec<SourceRow> {
    rows.retain(|r| r.packets > 0 || r.drops > 0);
    rows.sort_by(|a, b| {
        b.drops
            .cmp(&a.drops)
            .then(b.packets.cmp(&a.packets))
            .then(a.source.cmp(&b.source))
    });
    rows.truncate(n);
    if rows.len() < n {
        let mut by_sessions: Vec<&(IpAddr, SessionCounts)> = outcomes
            .iter()
            .filter(|(ip, _)| !rows.iter().any(|r| r.source == *ip))
            .collect();
        by_sessions.sort_by(|a, b| b.1.sessions.cmp(&a.1.sessions).then(a.0.cmp(&b.0)));
        let room = n - rows.len();
        rows.extend(by_sessions.into_iter().take(room).map(|(ip, _)| SourceRow {
            source: *ip,
            packets: 0,
            bytes: 0,
            syns: 0,
            drops: 0,
            last_seen_secs_ago: 0,
        }));
    }
    rows
}

/// Registers the scrape-time kernel verdict series.
fn kernel_totals(registry: &mut Registry, totals: &[crate::dataplane::stats::VerdictTotal]) {
    let packets = Family::<VerdictLabels, Counter>::default();
    let bytes = Family::<VerdictLabels, Counter>::default();
    for t in totals {
        let labels = VerdictLabels { verdict: t.verdict };
        packets.get_or_create(&labels).inc_by(t.packets);
        bytes.get_or_create(&labels).inc_by(t.bytes);
    }
    registry.register(
        "xdp_packets",
        "Packets seen by the XDP program, by verdict",
        packets,
    );
    registry.register(
        "xdp_bytes",
        "Bytes seen by the XDP program, by verdict",
        bytes,
    );
}

/// Registers the per-source series of the chosen sources: kernel counters and session outcomes.
fn source_series(
    registry: &mut Registry,
    sources: &[SourceRow],
    outcomes: &[(IpAddr, SessionCounts)],
) {
    let per_source = [
        (
            "source_packets",
            "Packets from the source (top sources only)",
        ),
        (
            "source_drops",
            "Packets from the source dropped in the kernel (top sources only)",
        ),
        ("source_syns", "SYNs from the source (top sources only)"),
    ];
    for (i, (name, help)) in per_source.into_iter().enumerate() {
        let family = Family::<SourceLabels, Counter>::default();
        for r in sources {
            let value = [r.packets, r.drops, r.syns][i];
            family
                .get_or_create(&SourceLabels {
                    source: r.source.to_string(),
                })
                .inc_by(value);
        }
        registry.register(name, help, family);
    }
    let sessions = Family::<SourceVerdictLabels, Counter>::default();
    let delivered = Family::<SourceLabels, Counter>::default();
    for r in sources {
        let Some((_, counts)) = outcomes.iter().find(|(ip, _)| *ip == r.source) else {
            continue;
        };
        let source = r.source.to_string();
        for verdict in SessionVerdict::ALL {
            if let Some(n) = counts.by_verdict.get(verdict.name()) {
                sessions
                    .get_or_create(&SourceVerdictLabels {
                        source: source.clone(),
                        verdict: verdict.name(),
                    })
                    .inc_by(*n);
            }
        }
        delivered
            .get_or_create(&SourceLabels { source })
            .inc_by(counts.delivered);
    }
    registry.register(
        "source_sessions",
        "SMTP sessions from the source by verdict (top sources only)",
        sessions,
    );
    registry.register(
        "source_messages_delivered",
        "Messages from the source the backend accepted (top sources only)",
        delivered,
    );
}

/// Binds the endpoint (a failure stops the start, naming `metrics.listen`). Blocking and
/// runtime-free: the daemon binds every socket before it drops its privileges.
pub fn bind(cfg: &MetricsConfig) -> Result<std::net::TcpListener, MetricsError> {
    let err = |source| MetricsError {
        address: cfg.listen,
        source,
    };
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Answers scrapes until shutdown.
pub async fn serve(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    sources: ScrapeSources,
    config: watch::Receiver<MetricsConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "metrics: cannot serve the bound socket");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(address = %addr, "metrics endpoint ready");
    }
    let mut backoff = Duration::from_millis(10);
    // Connections being served; past `metrics.max_connections` a new one is closed at once.
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let tcp = match tcp {
            Ok((tcp, _)) => {
                backoff = Duration::from_millis(10);
                tcp
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (top_sources, max) = {
            let config = config.borrow();
            (config.top_sources, config.max_connections)
        };
        let Some(place) = Place::take(&open, max) else {
            tracing::debug!(
                max,
                "metrics: connection cap reached; closing a new connection"
            );
            drop(tcp);
            continue;
        };
        let metrics = metrics.clone();
        let sources = sources.clone();
        tokio::spawn(async move {
            let _place = place;
            let answer =
                tokio::time::timeout(IO_TIMEOUT, answer(tcp, &metrics, &sources, top_sources))
                    .await;
            if let Ok(Err(e)) = answer {
                tracing::debug!(error = %e, "metrics: scrape connection failed");
            }
        });
    }
}

/// One of the `metrics.max_connections` places, given back when the connection's task ends.
struct Place(Arc<std::sync::atomic::AtomicUsize>);

impl Place {
    /// A place when fewer than `max` are taken.
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(open.clone()))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Reads one request head and answers it.
async fn answer(
    mut tcp: TcpStream,
    metrics: &Metrics,
    sources: &ScrapeSources,
    top_sources: usize,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let (status, content_type, body) = if is_metrics_request(request_line) {
        (
            "200 OK",
            CONTENT_TYPE,
            render(metrics, sources, top_sources).await,
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; try GET /metrics\n".to_string(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(response.as_bytes()).await?;
    tcp.shutdown().await
}

/// `GET /metrics HTTP/1.x` (a query string is ignored).
fn is_metrics_request(line: &[u8]) -> bool {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let path = target.split('?').next().unwrap_or_default();
    method == "GET" && path == "/metrics" && version.starts_with("HTTP/1.")
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::checks::{Action, Check};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("response");
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_404() {
        let metrics = Arc::new(Metrics::new());
        metrics.check_fired(Check::RelayAttempt, Action::Reject);
        metrics.connection("127.0.0.1:25".parse().expect("addr"));
        metrics.tls_handshake(false);
        metrics.reload(true);
        metrics.ban();
        let _session = metrics.session_started();
        metrics.backend_reply_histogram().observe(0.002);
        let listener = bind(&MetricsConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..MetricsConfig::default()
        })
        .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_config_tx, config_rx) = watch::channel(MetricsConfig::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let outcomes = Arc::new(SourceOutcomes::new(10));
        outcomes.record(&crate::events::SessionEnd {
            source: IpAddr::from([198, 18, 0, 9]),
            verdict: SessionVerdict::Delivered,
            delivered: 3,
            checks: Vec::new(),
        });
        let sources = ScrapeSources::new(None, Some(outcomes)).expect("no data plane");
        let server = tokio::spawn(serve(listener, metrics, sources, config_rx, stop_rx));

        let response = get(addr, "/metrics").await;
        let (head, body) = response.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Type: {CONTENT_TYPE}")),
            "{head}"
        );
        for series in [
            "smtp_gateway_checks_fired_total{check=\"relay_attempt\",action=\"reject\"} 1",
            "smtp_gateway_connections_total{listener=\"127.0.0.1:25\"} 1",
            "smtp_gateway_tls_handshakes_total{result=\"failure\"} 1",
            "smtp_gateway_config_reloads_total{result=\"success\"} 1",
            "smtp_gateway_config_last_reload_success 1",
            "smtp_gateway_bans_total 1",
            "smtp_gateway_sessions_active 1",
            "smtp_gateway_backend_reply_seconds_count 1",
            // No kernel rows here: the source with sessions fills the top list.
            "smtp_gateway_source_sessions_total{source=\"198.18.0.9\",verdict=\"delivered\"} 1",
            "smtp_gateway_source_messages_delivered_total{source=\"198.18.0.9\"} 3",
        ] {
            assert!(body.contains(series), "{series} missing from\n{body}");
        }
        assert!(body.ends_with("# EOF\n"), "{body}");

        let response = get(addr, "/other").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );

        let _ = stop_tx.send(true);
        server.await.expect("server stops on shutdown");
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once_and_scrapes_go_on() {
        // Each connection holds a task and a descriptor for up to 5 s: without a cap, tens of
        // thousands of idle ones took every descriptor of the daemon (SMTP's backend
        // connections then failed with "Too many open files").
        let config = MetricsConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            max_connections: 2,
            ..MetricsConfig::default()
        };
        let listener = bind(&config).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_config_tx, config_rx) = watch::channel(config);
        let (stop_tx, stop_rx) = watch::channel(false);
        let sources = ScrapeSources::new(None, None).expect("no data plane");
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new()),
            sources,
            config_rx,
            stop_rx,
        ));
        // Two idle connections take both places (each sends a byte, so it is surely accepted
        // and being read before the next connects).
        let mut idle = Vec::new();
        for _ in 0..2 {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(b"G").await.expect("write");
            idle.push(tcp);
        }
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(3), third.read(&mut byte))
            .await
            .expect("closed at once, not held");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // One place free again: scrapes are answered.
        drop(idle.pop());
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if get(addr, "/metrics").await.starts_with("HTTP/1.1 200") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(answered.is_ok(), "a freed place serves a scrape");
        let _ = stop_tx.send(true);
        server.await.expect("server stops on shutdown");
    }

    /// Pinned maps of their own for one test, removed when it ends (also on panic).
    struct Pins(std::path::PathBuf);

    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = crate::dataplane::loader::detach(&self.0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_does_not_wait_for_the_data_plane_lock() {
        let pins = Pins(std::path::PathBuf::from(format!(
            "/sys/fs/bpf/sgw-unit-{}-scrape",
            std::process::id()
        )));
        let cfg = crate::dataplane::config::DataplaneConfig {
            pin_dir: pins.0.clone(),
            ..Default::default()
        };
        let dp = crate::dataplane::loader::ensure_maps(&cfg).expect("maps (root and bpffs)");
        let dataplane: SharedDataplane = Arc::new(std::sync::Mutex::new(dp));
        let sources = ScrapeSources::new(Some(dataplane.clone()), None).expect("scrape handles");
        // Another task (a reload, a `block import`) holds the lock for as long as the test says.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _guard = dataplane.lock();
            let _ = held_tx.send(());
            let _ = release_rx.recv();
        });
        held_rx.recv().expect("lock held");
        let metrics = Metrics::new();
        let scrape = tokio::time::timeout(Duration::from_secs(5), render(&metrics, &sources, 20));
        let body = scrape.await;
        let _ = release_tx.send(());
        holder.join().expect("holder");
        let body = body.expect("the scrape waited for the data plane lock");
        assert!(
            body.contains("smtp_gateway_xdp_packets_total{verdict=\"passed\"} 0"),
            "{body}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_that_arrived_together_share_one_reading() {
        let sources = ScrapeSources::new(None, None).expect("scrape handles");
        let metrics = Arc::new(Metrics::new());
        let arrived = Instant::now();
        let mut scrapes = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (metrics, sources) = (metrics.clone(), sources.clone());
            scrapes.spawn(async move { render_for(arrived, &metrics, &sources, 20).await });
        }
        let bodies = scrapes.join_all().await;
        assert!(bodies.iter().all(|b| b.ends_with("# EOF\n")));
        assert_eq!(
            sources.renders(),
            1,
            "one reading for 8 scrapes waiting in turn"
        );
        // A scrape arriving after that reading started gets a fresh one.
        render(&metrics, &sources, 20).await;
        assert_eq!(sources.renders(), 2);
    }

    #[test]
    fn request_lines() {
        assert!(is_metrics_request(b"GET /metrics HTTP/1.1\r"));
        assert!(is_metrics_request(b"GET /metrics?x=1 HTTP/1.0"));
        assert!(!is_metrics_request(b"POST /metrics HTTP/1.1"));
        assert!(!is_metrics_request(b"GET /metricsx HTTP/1.1"));
        assert!(!is_metrics_request(b"GET /metrics"));
    }

    #[test]
    fn top_sources_order_by_drops_then_packets() {
        let row = |last: u8, packets, drops| crate::dataplane::stats::SourceRow {
            source: IpAddr::from([198, 18, 0, last]),
            packets,
            bytes: 0,
            syns: 0,
            drops,
            last_seen_secs_ago: 0,
        };
        let rows = vec![row(1, 100, 0), row(2, 5, 5), row(3, 50, 5), row(4, 0, 0)];
        let sessions = |last: u8, n| {
            (
                IpAddr::from([198, 18, 0, last]),
                SessionCounts {
                    sessions: n,
                    ..SessionCounts::default()
                },
            )
        };
        // Source 5 has the most sessions but the kernel's top 3 take every place; with room
        // for 5, the session-only sources follow by session count.
        let outcomes = [sessions(6, 1), sessions(5, 9), sessions(3, 4)];
        let last_octets = |rows: Vec<SourceRow>| -> Vec<u8> {
            rows.iter()
                .map(|r| match r.source {
                    IpAddr::V4(v4) => v4.octets()[3],
                    IpAddr::V6(_) => 0,
                })
                .collect()
        };
        assert_eq!(last_octets(top(rows.clone(), &outcomes, 3)), vec![3, 2, 1]);
        assert_eq!(
            last_octets(top(rows.clone(), &outcomes, 5)),
            vec![3, 2, 1, 5, 6]
        );
        let got: Vec<u8> = top(rows, &[], 3)
            .iter()
            .map(|r| match r.source {
                IpAddr::V4(v4) => v4.octets()[3],
                IpAddr::V6(_) => 0,
            })
            .collect();
        assert_eq!(got, vec![3, 2, 1]);
    }

    #[tokio::test]
    async fn bind_failure_names_the_key() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let cfg = MetricsConfig {
            listen: taken.local_addr().expect("addr"),
            ..MetricsConfig::default()
        };
        let err = bind(&cfg).expect_err("port in use").to_string();
        assert!(err.starts_with("metrics.listen: cannot listen on"), "{err}");
    }
}

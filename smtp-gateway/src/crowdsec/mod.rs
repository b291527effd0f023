//! A CrowdSec bouncer: the ban decisions of a CrowdSec Local API (LAPI) go into the kernel
//! blocklist, so a source CrowdSec bans (from any of its log parsers, `cscli decisions add`, or
//! its community blocklists) is dropped by XDP before it costs a socket.
//!
//! Every `crowdsec.poll_interval`, the task asks the LAPI's decision stream what changed
//! (`stream.rs`) and applies it under one lock of the data plane (`bouncer.rs`): ban decisions of
//! scope `Ip` and `Range` are written with their time left and origin `crowdsec`, deleted ones
//! removed. The HTTP request and the map writes run off the async threads and are bounded by
//! `crowdsec.timeout`. A LAPI that is down costs nothing but a log line and a counter: the
//! entries written stay (each expires with its decision) and the next poll catches up; after a
//! failed first answer the next poll asks for everything again.
//!
//! `[crowdsec]` reloads live: another URL or key starts over with a full answer.
//!
//! - `config.rs`: `[crowdsec]`;
//! - `stream.rs`: the HTTP request and what a decision means;
//! - `bouncer.rs`: the decisions in force, written to and removed from the blocklist.

pub mod bouncer;
pub mod config;
pub mod stream;

use std::sync::Arc;

use tokio::sync::watch;

use self::{bouncer::Bouncer, config::CrowdsecConfig, stream::LapiClient};
use crate::{dataplane::SharedDataplane, metrics::Metrics};

/// Polls the LAPI while `[crowdsec]` is enabled, until shutdown.
pub async fn run(
    mut config: watch::Receiver<CrowdsecConfig>,
    dataplane: SharedDataplane,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut bouncer = Some(Bouncer::new());
    let mut client: Option<(CrowdsecConfig, Arc<LapiClient>)> = None;
    loop {
        let cfg = config.borrow_and_update().clone();
        if cfg.enabled {
            let lapi = match &client {
                Some((built_for, lapi)) if same_lapi(built_for, &cfg) => Some(lapi.clone()),
                _ => match LapiClient::new(&cfg) {
                    Ok(lapi) => {
                        let lapi = Arc::new(lapi);
                        client = Some((cfg.clone(), lapi.clone()));
                        // Another LAPI (or key): its ids are not ours; start over.
                        if let Some(b) = bouncer.as_mut() {
                            b.restart();
                        }
                        Some(lapi)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "CrowdSec bouncer not started");
                        metrics.crowdsec_poll(false);
                        None
                    }
                },
            };
            if let (Some(lapi), Some(mut state)) = (lapi, bouncer.take()) {
                let dp = dataplane.clone();
                let max = cfg.max_decisions;
                let poll = tokio::task::spawn_blocking(move || {
                    let outcome = poll_once(&lapi, &mut state, &dp, max);
                    (state, outcome)
                });
                tokio::select! {
                    joined = poll => match joined {
                        Ok((state, outcome)) => {
                            bouncer = Some(state);
                            report(&metrics, outcome);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "CrowdSec poll task failed; starting over");
                            bouncer = Some(Bouncer::new());
                        }
                    },
                    _ = shutdown.changed() => break,
                }
            }
        }
        let wait = tokio::time::sleep(cfg.poll_interval);
        tokio::select! {
            () = wait, if cfg.enabled => {}
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Whether `a` and `b` talk to the same LAPI the same way (else the client is rebuilt and the
/// decisions asked for again).
fn same_lapi(a: &CrowdsecConfig, b: &CrowdsecConfig) -> bool {
    a.url == b.url
        && a.api_key == b.api_key
        && a.api_key_file == b.api_key_file
        && a.ca_file == b.ca_file
        && a.timeout == b.timeout
        && a.max_response_bytes == b.max_response_bytes
        && a.origins == b.origins
}

/// What one poll did.
enum PollOutcome {
    /// The answer was applied (`startup`: it held every decision in force).
    Applied {
        startup: bool,
        applied: bouncer::Applied,
        error: Option<String>,
        tracked: usize,
    },
    /// The LAPI did not answer usefully.
    Failed(stream::StreamError),
}

/// One request and its answer applied (blocking).
fn poll_once(
    lapi: &LapiClient,
    bouncer: &mut Bouncer,
    dataplane: &SharedDataplane,
    max_decisions: usize,
) -> PollOutcome {
    let startup = bouncer.needs_startup();
    let answer = match lapi.poll(startup) {
        Ok(answer) => answer,
        Err(e) => return PollOutcome::Failed(e),
    };
    let Ok(mut dp) = dataplane.lock() else {
        bouncer.restart();
        return PollOutcome::Applied {
            startup,
            applied: bouncer::Applied::default(),
            error: Some(crate::dataplane::DataplaneError::Poisoned.to_string()),
            tracked: bouncer.len(),
        };
    };
    let (applied, error) = bouncer.apply(&mut dp, answer, startup, max_decisions);
    PollOutcome::Applied {
        startup,
        applied,
        error: error.map(|e| e.to_string()),
        tracked: bouncer.len(),
    }
}

/// Logs and counts one poll.
fn report(metrics: &Metrics, outcome: PollOutcome) {
    match outcome {
        PollOutcome::Failed(e) => {
            metrics.crowdsec_poll(false);
            tracing::warn!(error = %e, "CrowdSec LAPI poll failed; the entries written stay, retrying");
        }
        PollOutcome::Applied {
            startup,
            applied,
            error,
            tracked,
        } => {
            metrics.crowdsec_poll(error.is_none());
            metrics.crowdsec_decisions("banned", applied.banned);
            metrics.crowdsec_decisions("removed", applied.removed);
            metrics.crowdsec_decisions("ignored", applied.ignored);
            metrics.crowdsec_decisions("kept", applied.kept);
            if let Some(error) = error {
                tracing::error!(%error, failed = applied.failed, "CrowdSec decisions not all applied");
            }
            let changed = applied.banned + applied.removed + applied.kept + applied.ignored > 0;
            if startup || changed {
                tracing::info!(
                    startup,
                    banned = applied.banned,
                    removed = applied.removed,
                    kept = applied.kept,
                    ignored = applied.ignored,
                    tracked,
                    "CrowdSec decisions applied"
                );
            }
        }
    }
}

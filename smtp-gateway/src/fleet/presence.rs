//! Two running gateways configured with the same `store.node` never exchange bans: each takes
//! the other's records and messages for its own. To tell it, each daemon draws a random
//! instance id at start and, at each reconcile, reads back then sets the presence key
//! `<key_prefix>fleet/nodes/<node>` to it, living [`PRESENCE_INTERVALS`] reconcile intervals.
//! Another id read back once this run has written its own means another gateway wrote it in
//! between: a warning naming the node (once per run of sightings) and the gauge
//! `fleet_node_shared` at 1; no other id for the key's life, an info line and the gauge at 0. An
//! id read back before this run's first write is a previous run's (a restart) and says nothing.
//!
//! Redis being down only skips a check (debug). The value read is hostile: at most one byte
//! more than an id is read (`GETRANGE`), and it is printed only when it is an id.

use std::time::{Duration, Instant};

use ::redis::{AsyncCommands as _, aio::ConnectionManager};
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::{metrics::Metrics, store::StoreConfig};

/// The presence key lives this many reconcile intervals past its last refresh.
pub const PRESENCE_INTERVALS: u32 = 3;
/// Random bytes of an instance id (printed as twice as many hex digits).
const ID_BYTES: usize = 16;
/// Length of an instance id's text.
const ID_LEN: usize = 2 * ID_BYTES;

/// A new random instance id: [`ID_LEN`] lowercase hex digits.
pub fn instance_id() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; ID_BYTES];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a check found, to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Another gateway wrote the key since this one's last write (its id, when the value is
    /// one), and none had been seen for the key's life before.
    Shared(Option<String>),
    /// No other gateway seen for the key's life any more.
    Alone,
    /// Nothing new.
    Same,
}

/// What the checks of this run have seen (no I/O: the decisions of [`Presence::check`]).
#[derive(Debug)]
pub struct Watch {
    /// This run's id.
    instance: String,
    /// Whether this run has written its id (before that, another id is a previous run's).
    written: bool,
    /// When another id was last read back, while the key is shared.
    shared_since: Option<Instant>,
    /// How long the key lives (another gateway refreshes it at least this often).
    hold: Duration,
}

impl Watch {
    /// A run with `instance`, the key living `hold`.
    pub fn new(instance: String, hold: Duration) -> Self {
        Self {
            instance,
            written: false,
            shared_since: None,
            hold,
        }
    }

    /// Notes what the key held (`previous`, at most one byte more than an id) just before this
    /// run wrote its id again, at `now`.
    pub fn observe(&mut self, previous: Option<&[u8]>, now: Instant) -> Change {
        let other = previous.filter(|v| *v != self.instance.as_bytes());
        let written = std::mem::replace(&mut self.written, true);
        match other {
            Some(value) if written => {
                let new = self.shared_since.is_none();
                self.shared_since = Some(now);
                if new {
                    Change::Shared(as_id(value))
                } else {
                    Change::Same
                }
            }
            _ => match self.shared_since {
                Some(at) if now.saturating_duration_since(at) >= self.hold => {
                    self.shared_since = None;
                    Change::Alone
                }
                _ => Change::Same,
            },
        }
    }
}

/// `value` as an instance id, when it is one.
fn as_id(value: &[u8]) -> Option<String> {
    (value.len() == ID_LEN && value.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| String::from_utf8_lossy(value).into_owned())
}

/// This run's presence in Redis.
pub struct Presence {
    /// What the checks have seen.
    watch: Watch,
    /// `<key_prefix>fleet/nodes/<node>`.
    key: String,
    /// This node's name, for the log.
    node: String,
    /// How long the key lives.
    ttl: Duration,
    /// A check takes at most this (`store.io_timeout`).
    timeout: Duration,
    /// The store's connection (multiplexed, reconnects by itself): no connection of its own.
    conn: ConnectionManager,
}

impl Presence {
    /// The presence of `node` through the store's connection `conn`, with a new instance id;
    /// `None` (logged) when no random id can be made.
    pub fn new(conn: ConnectionManager, cfg: &StoreConfig, node: &str) -> Option<Self> {
        let instance = match instance_id() {
            Ok(id) => id,
            Err(_) => {
                tracing::error!("fleet: no random instance id; a shared store.node goes unseen");
                return None;
            }
        };
        let ttl = cfg.fleet_reconcile_interval * PRESENCE_INTERVALS;
        tracing::debug!(node, instance, "fleet: this run's instance id");
        Some(Self {
            watch: Watch::new(instance, ttl),
            key: format!("{}fleet/nodes/{node}", cfg.key_prefix),
            node: node.to_string(),
            ttl,
            timeout: cfg.io_timeout,
            conn,
        })
    }

    /// Reads the key back, writes this run's id with its TTL, and tells what changed.
    pub async fn check(&mut self, metrics: &Metrics) {
        let swapped = tokio::time::timeout(self.timeout, self.swap()).await;
        let previous = match swapped {
            Ok(Ok(previous)) => previous,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "fleet: node presence not checked");
                return;
            }
            Err(_) => {
                tracing::debug!("fleet: node presence not checked (timeout)");
                return;
            }
        };
        if !self.watch.written && previous.is_some() {
            tracing::debug!(
                node = self.node,
                "fleet: presence key of a previous run found"
            );
        }
        match self.watch.observe(previous.as_deref(), Instant::now()) {
            Change::Shared(other) => {
                metrics.fleet_node_shared(true);
                tracing::warn!(
                    node = self.node,
                    other_instance = other.as_deref().unwrap_or("unreadable"),
                    "fleet: another running gateway uses this store.node; neither applies the \
                     other's bans: give each gateway its own store.node"
                );
            }
            Change::Alone => {
                metrics.fleet_node_shared(false);
                tracing::info!(
                    node = self.node,
                    "fleet: no other gateway seen with this store.node any more"
                );
            }
            Change::Same => {}
        }
    }

    /// The key's value (at most one byte more than an id; a key of another type reads as a
    /// value that is no id), then this run's id written for `ttl`.
    async fn swap(&mut self) -> Result<Option<Vec<u8>>, ::redis::RedisError> {
        let end = isize::try_from(ID_LEN).unwrap_or(isize::MAX);
        let previous: Option<Vec<u8>> = match self.conn.getrange(&self.key, 0, end).await {
            Ok(value) => Some(value).filter(|v: &Vec<u8>| !v.is_empty()),
            Err(e) if e.code() == Some("WRONGTYPE") => Some(b"(another type)".to_vec()),
            Err(e) => return Err(e),
        };
        let ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.conn
            .pset_ex::<_, _, ()>(&self.key, &self.watch.instance, ms)
            .await?;
        Ok(previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_id_is_random_hex() {
        let (a, b) = (instance_id().expect("id"), instance_id().expect("id"));
        assert_ne!(a, b);
        assert_eq!(as_id(a.as_bytes()), Some(a));
    }

    #[test]
    fn another_id_after_this_run_wrote_is_another_gateway() {
        let hold = Duration::from_secs(30);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let me = "a".repeat(ID_LEN);
        let other = "b".repeat(ID_LEN);
        let mut watch = Watch::new(me.clone(), hold);
        // A restart: the previous run's id is there at the first check, and nothing is said.
        assert_eq!(watch.observe(Some(other.as_bytes()), at(0)), Change::Same);
        assert_eq!(watch.observe(Some(me.as_bytes()), at(10)), Change::Same);
        assert_eq!(watch.observe(None, at(20)), Change::Same);
        // Another gateway wrote since: told once, however often it comes back.
        assert_eq!(
            watch.observe(Some(other.as_bytes()), at(30)),
            Change::Shared(Some(other.clone()))
        );
        assert_eq!(watch.observe(Some(other.as_bytes()), at(40)), Change::Same);
        // Our own id read back between its writes (it reconciles less often): still shared.
        assert_eq!(watch.observe(Some(me.as_bytes()), at(45)), Change::Same);
        assert_eq!(watch.observe(Some(other.as_bytes()), at(50)), Change::Same);
        // Not seen for the key's life: over.
        assert_eq!(watch.observe(Some(me.as_bytes()), at(79)), Change::Same);
        assert_eq!(watch.observe(Some(me.as_bytes()), at(80)), Change::Alone);
        assert_eq!(watch.observe(Some(me.as_bytes()), at(90)), Change::Same);
        // A value that is no id (written by hand, another type, too long) is someone else too.
        let junk = b"\x1b[31mnot an id";
        assert_eq!(watch.observe(Some(junk), at(100)), Change::Shared(None));
        let long = format!("{other}0");
        assert_eq!(as_id(long.as_bytes()), None);
    }
}

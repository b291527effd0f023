//! The stored data model and its codec: what a key is made of ([`Space`] and an id), the ban and
//! allowlist record every node can read ([`BanRecord`]), and the bounded decoding of values read
//! back (hostile: a value over `store.max_value_bytes` or one that does not decode is a typed
//! error, never a panic). Features keep their own record types (pass cache, auto-ban counts,
//! session outcomes); they are encoded here.

use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StoreError;

/// What kind of entry a key names; the first part of every key (`<space>/<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// Clients that passed (postscreen's cache), by address.
    Pass,
    /// Auto-ban counts, by ban target and check, aging out with `autoban.window`.
    Count,
    /// Auto-ban counts shared by a fleet (`store.fleet`): one counter per ban target and check
    /// that every gateway adds to ([`Store::incr`](super::Store::incr)), living
    /// `autoban.window` from its first firing.
    FleetCount,
    /// Bans decided and not yet written to the kernel, by ban target.
    Pending,
    /// Per-source session outcomes, by address.
    Outcome,
    /// Bans in force, by target (with origin node, reason and expiry).
    Ban,
    /// Allowlist entries made by an operator (`allow add` through the daemon), by target: with
    /// `store.fleet`, every gateway applies them.
    Allow,
    /// Bans deleted (`block del`), by target, kept `store.fleet_unban_ttl`: what lets a fleet
    /// gateway that missed the deletion remove its copy (a record merely missing, e.g. after
    /// Redis lost its data, removes nothing).
    Unban,
    /// Allowlist entries deleted (`allow del`), by target, kept `store.fleet_unban_ttl`: the
    /// allowlist's counterpart of [`Space::Unban`].
    Unallow,
    /// Greylisting triplets (`policy/greylist/`), by the SHA-256 of the triplet.
    Greylist,
    /// Greylisting's auto-allowlist: a counter of the sessions that passed, by client network,
    /// living `greylist.auto_allowlist_ttl` from the last pass. (Named `greypass`: the JSON
    /// records of the older `greyallow` space are left to expire.)
    GreyAllow,
}

impl Space {
    /// Every space.
    pub const ALL: [Space; 11] = [
        Space::Pass,
        Space::Count,
        Space::FleetCount,
        Space::Pending,
        Space::Outcome,
        Space::Ban,
        Space::Allow,
        Space::Unban,
        Space::Unallow,
        Space::Greylist,
        Space::GreyAllow,
    ];

    /// The space's name in keys.
    pub fn name(self) -> &'static str {
        match self {
            Space::Pass => "pass",
            Space::Count => "count",
            Space::FleetCount => "fcount",
            Space::Pending => "pending",
            Space::Outcome => "outcome",
            Space::Ban => "ban",
            Space::Allow => "allow",
            Space::Unban => "unban",
            Space::Unallow => "unallow",
            Space::Greylist => "greylist",
            Space::GreyAllow => "greypass",
        }
    }

    /// The key of `id` in this space (without the engine's prefix).
    pub fn key(self, id: &str) -> String {
        format!("{}/{id}", self.name())
    }

    /// The id of `key` when it belongs to this space.
    pub fn id_of(self, key: &str) -> Option<&str> {
        key.strip_prefix(self.name())?.strip_prefix('/')
    }
}

/// A ban or allowlist entry as every node stores and reads it: the fleet's shared view of who is
/// blocked, by whom and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanRecord {
    /// What it covers: an address or a prefix (`198.18.0.7`, `2001:db8::/64`).
    pub target: String,
    /// The address whose behaviour decided it, when one did (auto-ban).
    pub source: Option<String>,
    /// Why (`autoban: pregreet`, an operator's text).
    pub reason: String,
    /// Which subsystem decided it (`autoban`, `cli`, `import`).
    pub origin: String,
    /// The node that decided it (`store.node`).
    pub node: String,
    /// When it was decided, Unix milliseconds.
    pub added_unix_ms: u64,
    /// When it ends, Unix milliseconds (none: never).
    pub expires_unix_ms: Option<u64>,
}

/// What a gateway publishes to the others when one of its ban or allowlist records changes
/// (`store.fleet`): the record written, or the target whose record was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum FleetMessage {
    /// A ban record was written.
    Ban {
        /// The record.
        record: BanRecord,
        /// How long the record is kept, from its write: what is left of the ban by the
        /// writer's own measure, which the receiver applies as is (so the gateways' clocks need
        /// not agree). Absent from older gateways' messages.
        #[serde(default)]
        ttl_ms: Option<u64>,
    },
    /// A ban record was deleted (`block del`).
    Unban {
        /// What it covered.
        target: String,
        /// The node that deleted it.
        node: String,
    },
    /// An allowlist record was written (`allow add`).
    Allow {
        /// The record.
        record: BanRecord,
    },
    /// An allowlist record was deleted (`allow del`).
    Unallow {
        /// What it covered.
        target: String,
        /// The node that deleted it.
        node: String,
    },
}

/// The two lists a fleet shares: the blocklist (ban records) and the operators' allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FleetList {
    /// Bans: records in [`Space::Ban`], deletions remembered in [`Space::Unban`].
    Blocklist,
    /// Operators' allowlist entries: records in [`Space::Allow`], deletions in
    /// [`Space::Unallow`].
    Allowlist,
}

impl FleetList {
    /// Both lists.
    pub const ALL: [FleetList; 2] = [FleetList::Blocklist, FleetList::Allowlist];

    /// The space of its records.
    pub fn records(self) -> Space {
        match self {
            FleetList::Blocklist => Space::Ban,
            FleetList::Allowlist => Space::Allow,
        }
    }

    /// The space of its remembered deletions.
    pub fn deletions(self) -> Space {
        match self {
            FleetList::Blocklist => Space::Unban,
            FleetList::Allowlist => Space::Unallow,
        }
    }

    /// The list whose record `key` (without the engine's prefix) is, and the record's target.
    pub fn of_record_key(key: &str) -> Option<(FleetList, &str)> {
        FleetList::ALL
            .into_iter()
            .find_map(|list| Some((list, list.records().id_of(key)?)))
    }

    /// The message that a record of this list was written, kept `ttl`: the record's bytes (our
    /// own encoding of a [`BanRecord`]) wrapped, never decoded again; a ban's carries `ttl`.
    pub fn written(self, record: &[u8], ttl: Duration) -> Vec<u8> {
        let op: &[u8] = match self {
            FleetList::Blocklist => br#"{"op":"ban","record":"#,
            FleetList::Allowlist => br#"{"op":"allow","record":"#,
        };
        let mut out = Vec::with_capacity(record.len() + op.len() + 32);
        out.extend_from_slice(op);
        out.extend_from_slice(record);
        if self == FleetList::Blocklist {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            out.extend_from_slice(format!(r#","ttl_ms":{ms}"#).as_bytes());
        }
        out.push(b'}');
        out
    }

    /// The message that `node` deleted this list's record of `target`.
    pub fn deleted(self, target: String, node: String) -> FleetMessage {
        match self {
            FleetList::Blocklist => FleetMessage::Unban { target, node },
            FleetList::Allowlist => FleetMessage::Unallow { target, node },
        }
    }

    /// The target of a remembered deletion of this list (`None` for any other message).
    pub fn deleted_target(self, message: FleetMessage) -> Option<String> {
        match (self, message) {
            (FleetList::Blocklist, FleetMessage::Unban { target, .. })
            | (FleetList::Allowlist, FleetMessage::Unallow { target, .. }) => Some(target),
            _ => None,
        }
    }
}

/// The pub/sub channel of a fleet's ban and allowlist messages.
pub fn fleet_channel(key_prefix: &str) -> String {
    format!("{key_prefix}fleet/bans")
}

/// The current Unix time in milliseconds (0 before 1970).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Encodes a record (JSON: readable with `redis-cli`, tolerant of added optional fields).
pub fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Decode {
        key: key.to_string(),
        reason: format!("cannot encode: {e}"),
    })
}

/// Decodes a value read back from the store: refused unread when over `max` bytes, a typed
/// error when it is not a `T`.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8], max: usize) -> Result<T, StoreError> {
    if bytes.len() > max {
        return Err(StoreError::TooLarge {
            key: key.to_string(),
            len: bytes.len(),
            max,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> BanRecord {
        BanRecord {
            target: "2001:db8::/64".into(),
            source: Some("2001:db8::7".into()),
            reason: "autoban: pregreet".into(),
            origin: "autoban".into(),
            node: "mx1".into(),
            added_unix_ms: 1,
            expires_unix_ms: Some(2),
        }
    }

    #[test]
    fn a_record_round_trips() {
        let bytes = encode("ban/x", &record()).expect("encode");
        let back: BanRecord = decode("ban/x", &bytes, 4096).expect("decode");
        assert_eq!(back, record());
    }

    #[test]
    fn hostile_values_are_typed_errors() {
        let bytes = encode("ban/x", &record()).expect("encode");
        let cases: [(&[u8], &str); 6] = [
            (&bytes, "too large"),
            (b"", "decode"),
            (b"\xff\xfe\x00garbage", "decode"),
            (b"{\"target\": 7}", "decode"),
            (
                b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
                "decode",
            ),
            (b"{\"target\":\"x\",\"unknown\":1}", "decode"),
        ];
        for (i, (value, kind)) in cases.into_iter().enumerate() {
            let max = if i == 0 { bytes.len() - 1 } else { 4096 };
            let err = decode::<BanRecord>("ban/x", value, max).expect_err(kind);
            match (kind, &err) {
                ("too large", StoreError::TooLarge { len, max: m, .. }) => {
                    assert_eq!((*len, *m), (bytes.len(), bytes.len() - 1));
                }
                ("decode", StoreError::Decode { key, .. }) => assert_eq!(key, "ban/x"),
                _ => panic!("case {i}: unexpected {err}"),
            }
        }
    }

    #[test]
    fn fleet_messages_round_trip_and_refuse_junk() {
        let bytes = encode("ban/x", &record()).expect("encode");
        let hour = Duration::from_secs(3600);
        let back: FleetMessage =
            decode("m", &FleetList::Blocklist.written(&bytes, hour), 4096).expect("ban");
        assert_eq!(
            back,
            FleetMessage::Ban {
                record: record(),
                ttl_ms: Some(3_600_000)
            }
        );
        // An older gateway's message, without the TTL.
        let mut old = br#"{"op":"ban","record":"#.to_vec();
        old.extend_from_slice(&bytes);
        old.push(b'}');
        assert_eq!(
            decode::<FleetMessage>("m", &old, 4096).expect("older ban"),
            FleetMessage::Ban {
                record: record(),
                ttl_ms: None
            }
        );
        let back: FleetMessage =
            decode("m", &FleetList::Allowlist.written(&bytes, hour), 4096).expect("allow");
        assert_eq!(back, FleetMessage::Allow { record: record() });
        assert_eq!(
            FleetList::of_record_key("allow/2001:db8::/64"),
            Some((FleetList::Allowlist, "2001:db8::/64"))
        );
        assert_eq!(
            FleetList::of_record_key("ban/198.18.0.7"),
            Some((FleetList::Blocklist, "198.18.0.7"))
        );
        assert_eq!(FleetList::of_record_key("unallow/198.18.0.7"), None);
        let unallow = FleetList::Allowlist.deleted("198.18.0.7".into(), "mx2".into());
        let bytes = encode("m", &unallow).expect("encode");
        let back = decode::<FleetMessage>("m", &bytes, 4096).expect("unallow");
        assert_eq!(
            FleetList::Allowlist.deleted_target(back.clone()),
            Some("198.18.0.7".into())
        );
        assert_eq!(FleetList::Blocklist.deleted_target(back), None);
        let unban = FleetMessage::Unban {
            target: "198.18.0.7".into(),
            node: "mx2".into(),
        };
        let bytes = encode("m", &unban).expect("encode");
        assert_eq!(
            decode::<FleetMessage>("m", &bytes, 4096).expect("unban"),
            unban
        );
        for junk in [
            &b"{\"op\":\"nuke\"}"[..],
            b"{\"op\":\"unban\",\"target\":1,\"node\":\"a\"}",
            b"{\"op\":\"unban\",\"target\":\"a\",\"node\":\"a\",\"x\":1}",
            b"\xff",
        ] {
            assert!(decode::<FleetMessage>("m", junk, 4096).is_err());
        }
    }

    #[test]
    fn keys_name_their_space() {
        for space in Space::ALL {
            let key = space.key("198.18.0.1");
            assert_eq!(space.id_of(&key), Some("198.18.0.1"));
            assert!(
                Space::ALL
                    .iter()
                    .filter(|s| **s != space)
                    .all(|s| s.id_of(&key).is_none())
            );
        }
    }
}

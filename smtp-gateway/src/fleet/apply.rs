//! How the fleet's bans and allowlist entries reach this gateway's kernel lists: a ban of another
//! node becomes a blocklist entry of origin `fleet` with its reason and remaining TTL, an
//! operator's `allow add` on another node an allowlist entry of origin `fleet` with its reason;
//! a ban or an allowlist entry deleted there removes it here. An active entry of another origin
//! (this node's operator, auto-ban, CrowdSec, an import, the configuration file) is never
//! replaced nor removed (the rule of `crowdsec/bouncer.rs`). Every value comes from Redis and is
//! hostile: a target that does not parse or a record already over is skipped and counted.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use smtp_gateway_common::{AllowEntry, BlockEntry, origin};

use crate::{
    dataplane::{Dataplane, DataplaneError, Target, clock, reasons},
    store::{
        BanRecord, Loaded, StoreConfig,
        records::{FleetList, unix_now_ms},
    },
};

/// What applying a message or a reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Entries written (new, or a later expiry).
    pub banned: usize,
    /// Entries of origin `fleet` removed.
    pub removed: usize,
    /// Allowlist entries written.
    pub allowed: usize,
    /// Allowlist entries of origin `fleet` removed.
    pub disallowed: usize,
    /// Bans on a target that holds an active entry of another origin (left as it is).
    pub kept: usize,
    /// Bans of this node, already applied, or over.
    pub known: usize,
    /// Records that do not make sense (target that does not parse) or that this node refuses
    /// ([`refusal`]).
    pub invalid: usize,
    /// The records refused (each counted in `invalid` too), for the log.
    pub refused: Vec<Refused>,
}

/// A record of another node refused ([`refusal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its list.
    pub list: FleetList,
    /// What it covers.
    pub target: Target,
    /// The node that wrote it, as the record says (hostile text: print it escaped).
    pub node: String,
    /// Why.
    pub why: Refusal,
}

/// What is left of a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// It never expires.
    Never,
    /// It drops for this long still.
    For(Duration),
    /// It is over.
    Over,
}

/// What this node takes from the fleet whatever a record says (`[store]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `store.permanent_ban_ttl`: no ban of another node lasts longer here.
    pub permanent: Duration,
    /// `store.fleet_min_prefix_v4`: the shortest IPv4 prefix a record may cover.
    pub min_prefix_v4: u8,
    /// `store.fleet_min_prefix_v6`: the shortest IPv6 prefix a record may cover.
    pub min_prefix_v6: u8,
}

impl Limits {
    /// The limits of `[store]`.
    pub fn of(cfg: &StoreConfig) -> Self {
        Self {
            permanent: cfg.permanent_ban_ttl,
            min_prefix_v4: cfg.fleet_min_prefix_v4,
            min_prefix_v6: cfg.fleet_min_prefix_v6,
        }
    }
}

/// Why a record of another node is refused whatever else it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its prefix is shorter than `store.fleet_min_prefix_v4` / `_v6` (the minimum).
    TooWide(u8),
    /// A ban on (or overlapping) addresses no ban may cover (loopback, unspecified, multicast).
    Reserved(&'static str),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooWide(min) => write!(f, "wider than the /{min} a fleet record may cover"),
            Refusal::Reserved(what) => write!(f, "a ban covering {what} addresses"),
        }
    }
}

/// What no ban of another node may cover nor overlap: addresses that are never a client's.
const RESERVED: [(IpNet, &str); 6] = [
    (
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
        "loopback",
    ),
    (
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 32)),
        "unspecified",
    ),
    (
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4)),
        "multicast",
    ),
    (
        IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
        "loopback",
    ),
    (
        IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128)),
        "unspecified",
    ),
    (
        IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
        )),
        "multicast",
    ),
];

/// Whether this node refuses a record of `list` on `target` (see [`Refusal`]): any record on a
/// prefix shorter than the family's minimum, and a ban that is or overlaps a [`RESERVED`]
/// range (an allowlist entry there harms nobody).
pub fn refusal(list: FleetList, target: Target, limits: &Limits) -> Option<Refusal> {
    let net = target.net();
    let min = match net {
        IpNet::V4(_) => limits.min_prefix_v4,
        IpNet::V6(_) => limits.min_prefix_v6,
    };
    if net.prefix_len() < min {
        return Some(Refusal::TooWide(min));
    }
    if list != FleetList::Blocklist {
        return None;
    }
    RESERVED
        .iter()
        .find(|(reserved, _)| net.contains(reserved) || reserved.contains(&net))
        .map(|(_, what)| Refusal::Reserved(what))
}

/// What is left of `record`'s ban at `now_unix_ms`: never, for a record without an expiry (a
/// kernel entry that never expires, as a local `block add` without `--ttl` writes it); else
/// `life` when the store told it — what is left of the record by Redis's clock (a reconcile's
/// `PTTL`), or the writer's TTL carried by its message — so that gateways whose clocks
/// disagree still agree on a ban's end; else (a message of an older gateway) the record's end
/// by this node's wall clock. Either is hostile, and capped: never longer than the ban's whole
/// length as its writer stated it (`expires_unix_ms - added_unix_ms`, both by the writer's
/// clock, so no clock needs to agree with ours), nor than `permanent`
/// (`store.permanent_ban_ttl`).
pub fn left(
    record: &BanRecord,
    life: Option<Duration>,
    now_unix_ms: u64,
    permanent: Duration,
) -> Left {
    let Some(end) = record.expires_unix_ms else {
        return Left::Never;
    };
    let stated = Duration::from_millis(end.saturating_sub(record.added_unix_ms));
    let left = match life {
        Some(life) => life,
        None => Duration::from_millis(end.saturating_sub(now_unix_ms)),
    }
    .min(stated)
    .min(permanent);
    if left.is_zero() {
        Left::Over
    } else {
        Left::For(left)
    }
}

/// Writes `record` (a ban of another node, `life` left of it when the store told it: see
/// [`left`]) to the blocklist, within `limits`.
pub fn ban(
    dp: &mut Dataplane,
    record: &BanRecord,
    life: Option<Duration>,
    node: &str,
    limits: &Limits,
    done: &mut Applied,
) -> Result<(), DataplaneError> {
    if record.node == node {
        done.known += 1;
        return Ok(());
    }
    let Some(target) = admitted(FleetList::Blocklist, record, limits, done) else {
        return Ok(());
    };
    let ttl = match left(record, life, unix_now_ms(), limits.permanent) {
        Left::Never => None,
        Left::For(left) => Some(left),
        Left::Over => {
            done.known += 1;
            return Ok(());
        }
    };
    let new = BlockEntry {
        expires_at_ns: clock::expiry_after(ttl),
        added_at_s: record.added_unix_ms / 1000,
        reason: 0,
        origin: origin::FLEET,
    };
    let existing = dp.block_entry(target)?;
    match against(existing.as_ref(), &new, clock::monotonic_ns()) {
        Against::Kept => done.kept += 1,
        Against::Known => done.known += 1,
        Against::Write => {
            let reason = reasons::intern(dp, &record.reason)?;
            dp.block(target, BlockEntry { reason, ..new })?;
            done.banned += 1;
        }
    }
    Ok(())
}

/// What a ban of another node does to the entry its target holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Against {
    /// An active entry of another origin is there: left as it is.
    Kept,
    /// The same ban is there already.
    Known,
    /// Written (new, or another expiry).
    Write,
}

/// What writing `new` (an entry of origin `fleet`) does to `existing` at monotonic `now_ns`:
/// an active entry of another origin is kept; the same ban (same start, by its writer's clock)
/// is written again only when it ends at least a second earlier; another ban is written unless
/// it ends within a second of the entry.
fn against(existing: Option<&BlockEntry>, new: &BlockEntry, now_ns: u64) -> Against {
    let Some(entry) = existing.filter(|e| e.is_active(now_ns)) else {
        return Against::Write;
    };
    if entry.origin != origin::FLEET {
        return Against::Kept;
    }
    // The same ban (the same start) only ever gets shorter: each reconcile capping what is left
    // of it at its stated length (`left`) must not push its end on and on.
    let never = |ns: u64| if ns == 0 { u64::MAX } else { ns };
    if entry.added_at_s == new.added_at_s
        && never(new.expires_at_ns) > never(entry.expires_at_ns).saturating_sub(1_000_000_000)
    {
        return Against::Known;
    }
    // Within a second of what is there: the same ban seen again (message, then reconcile).
    if entry.expires_at_ns == new.expires_at_ns
        || (entry.expires_at_ns != 0
            && new.expires_at_ns != 0
            && entry.expires_at_ns.abs_diff(new.expires_at_ns) < 1_000_000_000)
    {
        return Against::Known;
    }
    Against::Write
}

/// Removes the entry of `target` from `list` when it came from the fleet (`from` deleted its
/// record there).
pub fn remove(
    dp: &mut Dataplane,
    list: FleetList,
    target: &str,
    from: &str,
    node: &str,
    done: &mut Applied,
) -> Result<(), DataplaneError> {
    if from == node {
        done.known += 1;
        return Ok(());
    }
    let Ok(target) = target.parse::<Target>() else {
        done.invalid += 1;
        return Ok(());
    };
    let origin = match list {
        FleetList::Blocklist => dp.block_entry(target)?.map(|e| e.origin),
        FleetList::Allowlist => dp.allow_entry(target.net())?.map(|e| e.origin),
    };
    match (origin, list) {
        (Some(origin::FLEET), FleetList::Blocklist) if dp.unblock(target)? => done.removed += 1,
        (Some(origin::FLEET), FleetList::Allowlist) if dp.disallow(target.net())? => {
            done.disallowed += 1;
        }
        (Some(origin::FLEET), _) => {}
        _ => done.known += 1,
    }
    Ok(())
}

/// Makes the entries of origin `fleet` of `list` match the store (records with what is left of
/// them by Redis's clock, within `limits`): every record missing here is written; an entry
/// whose record was deleted (a target of `deletions`, the remembered deletions) and that no
/// record holds is removed. A record merely missing removes nothing (Redis may have lost its
/// data: a ban stays until it expires, an allowlist entry until it is deleted).
pub fn reconcile(
    dp: &mut Dataplane,
    list: FleetList,
    records: &[Loaded<BanRecord>],
    deletions: &[String],
    node: &str,
    limits: &Limits,
) -> Result<Applied, DataplaneError> {
    let mut done = Applied::default();
    let mut held: HashSet<Target> = HashSet::new();
    for Loaded { value, left, .. } in records {
        // A refused record holds nothing here: its remembered deletion still removes an entry
        // applied before (by an older gateway).
        if let Ok(target) = value.target.parse::<Target>()
            && refusal(list, target, limits).is_none()
        {
            held.insert(target);
        }
        match list {
            FleetList::Blocklist => ban(dp, value, *left, node, limits, &mut done)?,
            FleetList::Allowlist => allow(dp, value, node, limits, &mut done)?,
        }
    }
    let deleted: HashSet<Target> = deletions
        .iter()
        .filter_map(|t| t.parse::<Target>().ok())
        .filter(|t| !held.contains(t))
        .collect();
    if deleted.is_empty() {
        return Ok(done);
    }
    let fleet_entries: Vec<Target> = match list {
        FleetList::Blocklist => dp
            .blocked()?
            .into_iter()
            .filter(|r| r.entry.origin == origin::FLEET)
            .map(|r| r.target)
            .collect(),
        FleetList::Allowlist => dp
            .allowed()?
            .into_iter()
            .filter(|r| r.entry.origin == origin::FLEET)
            .filter_map(|r| Target::from_net(r.net).ok())
            .collect(),
    };
    for target in fleet_entries.into_iter().filter(|t| deleted.contains(t)) {
        match list {
            FleetList::Blocklist if dp.unblock(target)? => done.removed += 1,
            FleetList::Allowlist if dp.disallow(target.net())? => done.disallowed += 1,
            _ => {}
        }
    }
    Ok(done)
}

/// Removes the entries of origin `fleet` that `limits` refuse (`[store]` needs a restart to
/// change, and the kernel lists outlive it: a ban applied under a looser
/// `store.fleet_min_prefix_v4` would otherwise stay in force though no record of its width is
/// applied any more). Entries of other origins are not looked at.
pub fn drop_refused(dp: &mut Dataplane, limits: &Limits) -> Result<Applied, DataplaneError> {
    let mut done = Applied::default();
    let refused = |list, target| refusal(list, target, limits).is_some();
    let bans: Vec<Target> = dp
        .blocked()?
        .into_iter()
        .filter(|r| r.entry.origin == origin::FLEET && refused(FleetList::Blocklist, r.target))
        .map(|r| r.target)
        .collect();
    for target in bans {
        if dp.unblock(target)? {
            done.removed += 1;
        }
    }
    let allowed: Vec<IpNet> = dp
        .allowed()?
        .into_iter()
        .filter(|r| r.entry.origin == origin::FLEET)
        .filter(|r| Target::from_net(r.net).is_ok_and(|t| refused(FleetList::Allowlist, t)))
        .map(|r| r.net)
        .collect();
    for net in allowed {
        if dp.disallow(net)? {
            done.disallowed += 1;
        }
    }
    Ok(done)
}

/// Writes `record` (an operator's allowlist entry on another node) to the allowlist, unless
/// `limits` refuse it. The kernel keeps allowlist entries until they are deleted; a record
/// whose expiry (if any) has passed is not applied.
pub fn allow(
    dp: &mut Dataplane,
    record: &BanRecord,
    node: &str,
    limits: &Limits,
    done: &mut Applied,
) -> Result<(), DataplaneError> {
    if record.node == node
        || record
            .expires_unix_ms
            .is_some_and(|end| end <= unix_now_ms())
    {
        done.known += 1;
        return Ok(());
    }
    let Some(target) = admitted(FleetList::Allowlist, record, limits, done) else {
        return Ok(());
    };
    match dp.allow_entry(target.net())? {
        Some(entry) if entry.origin == origin::FLEET => done.known += 1,
        Some(_) => done.kept += 1,
        None => {
            let reason = reasons::intern(dp, &record.reason)?;
            dp.allow(
                target.net(),
                AllowEntry {
                    reason,
                    origin: origin::FLEET,
                    added_at_s: record.added_unix_ms / 1000,
                },
            )?;
            done.allowed += 1;
        }
    }
    Ok(())
}

/// The target of `record` (a record of `list`) when it parses and `limits` take it; else
/// counted as invalid (and a refusal kept for the log).
fn admitted(
    list: FleetList,
    record: &BanRecord,
    limits: &Limits,
    done: &mut Applied,
) -> Option<Target> {
    let Ok(target) = record.target.parse::<Target>() else {
        done.invalid += 1;
        return None;
    };
    match refusal(list, target, limits) {
        None => Some(target),
        Some(why) => {
            done.invalid += 1;
            done.refused.push(Refused {
                list,
                target,
                node: record.node.clone(),
                why,
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `store.permanent_ban_ttl` of the tests.
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn record(expires_unix_ms: Option<u64>) -> BanRecord {
        BanRecord {
            target: "198.18.0.7".into(),
            source: None,
            reason: "r".into(),
            origin: "cli".into(),
            node: "mx1".into(),
            added_unix_ms: 0,
            expires_unix_ms,
        }
    }

    #[test]
    fn the_store_s_clock_decides_what_is_left_of_a_ban() {
        let hour = Duration::from_secs(3600);
        let now = 10_000_000_000;
        // A ban this node's clock sees as over (its writer's clock is behind ours, or ours
        // ahead): what Redis says is left of its record wins.
        let written_behind = record(Some(now - 60_000));
        assert_eq!(
            left(&written_behind, Some(hour), now, YEAR),
            Left::For(hour)
        );
        // And one this node's clock would keep too long.
        let written_ahead = record(Some(now + 10 * 3_600_000));
        assert_eq!(left(&written_ahead, Some(hour), now, YEAR), Left::For(hour));
        // Without a life from the store (a message of an older gateway): the wall clock.
        assert_eq!(left(&written_behind, None, now, YEAR), Left::Over);
        assert_eq!(
            left(&record(Some(now + 1_000)), None, now, YEAR),
            Left::For(Duration::from_secs(1))
        );
        // No expiry: never over, whatever the record's key has left.
        assert_eq!(left(&record(None), Some(hour), now, YEAR), Left::Never);
        assert_eq!(
            left(&record(Some(now)), Some(Duration::ZERO), now, YEAR),
            Left::Over
        );
    }

    #[test]
    fn a_ban_lasts_no_longer_than_its_writer_said_nor_than_permanent_ban_ttl() {
        let now = 10_000_000_000;
        let hour = Duration::from_secs(3600);
        // A one-hour ban (by its writer's clock) whose message claims u64::MAX ms are left:
        // the hour its writer stated, whatever the TTL says.
        let one_hour = BanRecord {
            added_unix_ms: now,
            ..record(Some(now + 3_600_000))
        };
        let forever = Some(Duration::from_millis(u64::MAX));
        assert_eq!(left(&one_hour, forever, now, YEAR), Left::For(hour));
        // Nor from the record's own end by this node's clock (a message without a TTL).
        let far = BanRecord {
            added_unix_ms: now,
            ..record(Some(u64::MAX))
        };
        assert_eq!(left(&far, None, now, YEAR), Left::For(YEAR));
        // The writer's clocks need not agree with ours: its stated length counts, not its
        // timestamps (a writer a day behind, a ban of one hour).
        let behind = BanRecord {
            added_unix_ms: now - 86_400_000,
            ..record(Some(now - 86_400_000 + 3_600_000))
        };
        assert_eq!(
            left(&behind, Some(hour / 2), now, YEAR),
            Left::For(hour / 2)
        );
        assert_eq!(left(&behind, forever, now, YEAR), Left::For(hour));
        // Never longer than store.permanent_ban_ttl, however long the writer said.
        let decade = BanRecord {
            added_unix_ms: 0,
            ..record(Some(u64::MAX))
        };
        assert_eq!(left(&decade, forever, now, YEAR), Left::For(YEAR));
        assert_eq!(left(&decade, None, now, YEAR), Left::For(YEAR));
        // An end before its start is a ban of no length: over.
        let backwards = BanRecord {
            added_unix_ms: now,
            ..record(Some(now - 1))
        };
        assert_eq!(left(&backwards, Some(hour), now, YEAR), Left::Over);
        // A record without an expiry stays without one (a permanent ban is a kernel entry that
        // never expires, as this node's own `block add` without --ttl writes it).
        assert_eq!(left(&record(None), forever, now, YEAR), Left::Never);
    }

    #[test]
    fn records_too_wide_or_on_reserved_addresses_are_refused() {
        let limits = Limits {
            permanent: YEAR,
            min_prefix_v4: 8,
            min_prefix_v6: 16,
        };
        let t = |s: &str| s.parse::<Target>().unwrap_or_else(|e| panic!("{s}: {e}"));
        let (ban, allow) = (FleetList::Blocklist, FleetList::Allowlist);
        let wide4 = Some(Refusal::TooWide(8));
        let wide6 = Some(Refusal::TooWide(16));
        let cases = [
            // The whole Internet in two halves, per family.
            (ban, "0.0.0.0/1", wide4),
            (ban, "128.0.0.0/1", wide4),
            (ban, "::/1", wide6),
            (ban, "8000::/1", wide6),
            (ban, "10.0.0.0/7", wide4),
            (ban, "2000::/15", wide6),
            // The same widths on the allowlist.
            (allow, "0.0.0.0/1", wide4),
            (allow, "::/1", wide6),
            // At the minimum: applied.
            (ban, "10.0.0.0/8", None),
            (ban, "2001::/16", None),
            (allow, "198.18.0.0/15", None),
            (ban, "198.18.0.7", None),
            (ban, "2001:db8::7", None),
            // Bans on what is never a client: loopback, unspecified, multicast, or any prefix
            // covering one.
            (ban, "127.0.0.1", Some(Refusal::Reserved("loopback"))),
            (ban, "127.0.0.0/8", Some(Refusal::Reserved("loopback"))),
            (ban, "126.0.0.0/8", None),
            (ban, "::1", Some(Refusal::Reserved("loopback"))),
            (ban, "::ffff:127.0.0.1", Some(Refusal::Reserved("loopback"))),
            (ban, "0.0.0.0", Some(Refusal::Reserved("unspecified"))),
            (ban, "0.0.0.0/8", Some(Refusal::Reserved("unspecified"))),
            (ban, "::", Some(Refusal::Reserved("unspecified"))),
            (ban, "::/16", Some(Refusal::Reserved("loopback"))),
            (ban, "224.0.0.1", Some(Refusal::Reserved("multicast"))),
            (ban, "239.0.0.0/8", Some(Refusal::Reserved("multicast"))),
            (ban, "ff02::1", Some(Refusal::Reserved("multicast"))),
            (ban, "ff05::/16", Some(Refusal::Reserved("multicast"))),
            (ban, "fe80::/16", None),
            // An allowlist entry on them harms nobody.
            (allow, "127.0.0.1", None),
        ];
        for (list, target, expected) in cases {
            assert_eq!(
                refusal(list, t(target), &limits),
                expected,
                "{list:?} {target}"
            );
        }
        // The minimum is the configuration's: 0 lets any width through.
        let open = Limits {
            min_prefix_v4: 0,
            min_prefix_v6: 0,
            ..limits
        };
        assert_eq!(refusal(ban, t("192.0.0.0/3"), &open), None);
        assert_eq!(refusal(ban, t("2000::/3"), &open), None);
        assert_eq!(refusal(allow, t("0.0.0.0/1"), &open), None);
        // Reserved addresses stay refused to bans, however wide.
        let reserved = [
            ("0.0.0.0/1", "loopback"),
            ("128.0.0.0/1", "multicast"),
            ("::/1", "loopback"),
            ("8000::/1", "multicast"),
        ];
        for (target, what) in reserved {
            assert_eq!(
                refusal(ban, t(target), &open),
                Some(Refusal::Reserved(what)),
                "{target}"
            );
        }
        assert_eq!(refusal(ban, t("192.0.0.0/3"), &limits), wide4);
    }

    #[test]
    fn the_same_ban_seen_again_never_lasts_longer() {
        let (s, now) = (1_000_000_000u64, 5_000 * 1_000_000_000u64);
        let fleet = |expires_at_ns, added_at_s| BlockEntry {
            expires_at_ns,
            added_at_s,
            reason: 0,
            origin: origin::FLEET,
        };
        let hour = 3600 * s;
        let there = fleet(now + hour, 100);
        // The same ban (same start), told again two seconds later with "an hour left" (a
        // reconcile reading a key that claims more than the ban's stated hour): not extended,
        // however often it comes back.
        for later in [2 * s, 60 * s, hour / 2] {
            let again = fleet(now + later + hour, 100);
            assert_eq!(
                against(Some(&there), &again, now + later),
                Against::Known,
                "{later}"
            );
        }
        // Nor made permanent.
        assert_eq!(against(Some(&there), &fleet(0, 100), now), Against::Known);
        // Shortened, yes (Redis's clock says less is left than the message did).
        let shorter = fleet(now + hour / 2, 100);
        assert_eq!(against(Some(&there), &shorter, now), Against::Write);
        // A new ban on the target (a later start, say `block add` again there): written.
        let renewed = fleet(now + 2 * hour, 200);
        assert_eq!(against(Some(&there), &renewed, now), Against::Write);
        // Within a second of what is there: the same ban, whatever its start.
        let jitter = fleet(now + hour + s / 2, 200);
        assert_eq!(against(Some(&there), &jitter, now), Against::Known);
        // Nothing, or an entry over: written; an active entry of another origin: kept.
        assert_eq!(against(None, &there, now), Against::Write);
        let over = fleet(now - 1, 100);
        assert_eq!(against(Some(&over), &there, now), Against::Write);
        let operator = BlockEntry {
            origin: origin::CLI,
            ..there
        };
        assert_eq!(against(Some(&operator), &there, now), Against::Kept);
    }
}

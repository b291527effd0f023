//! From two snapshots to what one frame shows: per-second rates and the sorted source rows.
//! Pure functions, no terminal.

use std::{cmp::Ordering, collections::HashMap, net::IpAddr, time::Duration};

pub use smtp_gateway::cli::top::SortKey;

use super::source::{Snapshot, TopRow};

/// One verdict line of the header.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictLine {
    /// Stable verdict name, as `stats` and the metrics print it.
    pub verdict: &'static str,
    /// Packets with this verdict since the maps were created.
    pub packets: u64,
    /// Packets per second since the previous refresh (`None` on the first frame).
    pub per_sec: Option<f64>,
}

/// One source row with its rates.
#[derive(Debug, Clone, PartialEq)]
pub struct RowView {
    /// The counters as read.
    pub row: TopRow,
    /// Packets per second since the previous refresh (`None` on the first frame).
    pub packets_per_sec: Option<f64>,
    /// Drops per second since the previous refresh (`None` on the first frame).
    pub drops_per_sec: Option<f64>,
}

/// What one frame shows.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The header: one line per kernel verdict.
    pub verdicts: Vec<VerdictLine>,
    /// Every tracked source, sorted; the renderer keeps those that fit.
    pub rows: Vec<RowView>,
    /// Whether any source has session data (else the session columns are hidden).
    pub sessions_known: bool,
}

/// Per-second rate of a counter that went from `before` to `now` in `elapsed`.
///
/// `None` without an earlier reading or a measurable interval. A counter that went down was
/// restarted (another source took its place in the per-source table and it came back to fresh
/// counters, or the counters were reset): everything it holds now was counted during the
/// interval.
pub fn rate(before: Option<u64>, now: u64, elapsed: Duration) -> Option<f64> {
    let before = before?;
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let delta = if now >= before { now - before } else { now };
    Some(delta as f64 / secs)
}

/// Builds a frame from the current snapshot and, for the rates, the previous one.
pub fn build(previous: Option<&Snapshot>, current: &Snapshot, sort: SortKey) -> View {
    let elapsed = previous.map(|p| current.taken.saturating_duration_since(p.taken));
    let elapsed = elapsed.unwrap_or_default();

    let verdicts = current
        .verdicts
        .iter()
        .map(|v| {
            let before = previous.map(|p| {
                p.verdicts
                    .iter()
                    .find(|b| b.verdict == v.verdict)
                    .map_or(0, |b| b.packets)
            });
            VerdictLine {
                verdict: v.verdict,
                packets: v.packets,
                per_sec: rate(before, v.packets, elapsed),
            }
        })
        .collect();

    let before: Option<HashMap<IpAddr, &TopRow>> =
        previous.map(|p| p.sources.iter().map(|r| (r.source, r)).collect());
    let mut rows: Vec<RowView> = current
        .sources
        .iter()
        .map(|r| {
            // A source missing from the previous snapshot appeared during the interval.
            let old = before.as_ref().map(|b| b.get(&r.source).copied());
            RowView {
                packets_per_sec: rate(old.map(|o| o.map_or(0, |o| o.packets)), r.packets, elapsed),
                drops_per_sec: rate(old.map(|o| o.map_or(0, |o| o.drops)), r.drops, elapsed),
                row: r.clone(),
            }
        })
        .collect();
    sort_rows(&mut rows, sort);

    View {
        verdicts,
        sessions_known: rows
            .iter()
            .any(|r| r.row.sessions.is_some() || r.row.rejected.is_some()),
        rows,
    }
}

/// Largest first by `key`; unknown values (no rate yet, no session data) last; ties by packets,
/// then by address so the order is stable from one frame to the next.
pub fn sort_rows(rows: &mut [RowView], key: SortKey) {
    rows.sort_by(|a, b| {
        let primary = match key {
            SortKey::Packets => b.row.packets.cmp(&a.row.packets),
            SortKey::Syns => b.row.syns.cmp(&a.row.syns),
            SortKey::Drops => b.row.drops.cmp(&a.row.drops),
            SortKey::Bytes => b.row.bytes.cmp(&a.row.bytes),
            SortKey::Rate => descending_rate(a.packets_per_sec, b.packets_per_sec),
            // `Option`'s order puts `None` first, so descending puts it last.
            SortKey::Sessions => b.row.sessions.cmp(&a.row.sessions),
            SortKey::Rejected => b.row.rejected.cmp(&a.row.rejected),
        };
        primary
            .then(b.row.packets.cmp(&a.row.packets))
            .then(a.row.source.cmp(&b.row.source))
    });
}

fn descending_rate(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => b.total_cmp(&a),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use smtp_gateway::dataplane::stats::VerdictTotal;

    use super::*;

    fn row(addr: &str, packets: u64, syns: u64, drops: u64, bytes: u64) -> TopRow {
        TopRow {
            source: addr.parse().expect("address"),
            packets,
            bytes,
            syns,
            drops,
            last_seen_secs_ago: Some(0),
            sessions: None,
            rejected: None,
            last_verdict: None,
        }
    }

    fn snapshot(taken: Instant, passed: u64, sources: Vec<TopRow>) -> Snapshot {
        Snapshot {
            verdicts: vec![VerdictTotal {
                verdict: "passed",
                packets: passed,
                bytes: passed * 60,
            }],
            sources,
            taken,
            taken_at_unix_s: 0,
        }
    }

    fn order(view: &View) -> Vec<String> {
        view.rows.iter().map(|r| r.row.source.to_string()).collect()
    }

    #[test]
    fn rate_cases() {
        let sec = Duration::from_secs(1);
        let cases: [(Option<u64>, u64, Duration, Option<f64>); 7] = [
            (None, 100, sec, None),                               // first frame
            (Some(100), 100, sec, Some(0.0)),                     // idle
            (Some(100), 150, sec, Some(50.0)),                    // steady
            (Some(100), 150, Duration::from_secs(2), Some(25.0)), // longer interval
            (Some(100), 150, Duration::from_millis(500), Some(100.0)),
            (Some(100), 30, sec, Some(30.0)), // counter restarted: all of it is new
            (Some(100), 150, Duration::ZERO, None), // no measurable interval
        ];
        for (before, now, elapsed, expected) in cases {
            assert_eq!(
                rate(before, now, elapsed),
                expected,
                "rate({before:?}, {now}, {elapsed:?})"
            );
        }
    }

    #[test]
    fn sort_cases() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let before = snapshot(
            t0,
            10,
            vec![
                row("198.18.0.1", 100, 10, 0, 6000),
                row("198.18.0.2", 50, 50, 40, 3000),
                row("198.18.0.3", 10, 1, 1, 9000),
            ],
        );
        let now = snapshot(
            t1,
            30,
            vec![
                row("198.18.0.1", 102, 10, 0, 6120),  // +2 in 2 s: 1/s
                row("198.18.0.2", 70, 70, 60, 4200),  // +20: 10/s
                row("198.18.0.3", 10, 1, 1, 9000),    // idle
                row("2001:db8::1", 8, 8, 0, 640),     // new: 4/s
                row("198.18.0.4", 102, 0, 102, 6120), // ties .1 on packets: address decides
            ],
        );
        let cases: [(SortKey, [&str; 5]); 5] = [
            (
                SortKey::Packets,
                [
                    "198.18.0.1",
                    "198.18.0.4",
                    "198.18.0.2",
                    "198.18.0.3",
                    "2001:db8::1",
                ],
            ),
            (
                SortKey::Rate,
                [
                    "198.18.0.4",
                    "198.18.0.2",
                    "2001:db8::1",
                    "198.18.0.1",
                    "198.18.0.3",
                ],
            ),
            (
                SortKey::Drops,
                [
                    "198.18.0.4",
                    "198.18.0.2",
                    "198.18.0.3",
                    "198.18.0.1",
                    "2001:db8::1",
                ],
            ),
            (
                SortKey::Syns,
                [
                    "198.18.0.2",
                    "198.18.0.1",
                    "2001:db8::1",
                    "198.18.0.3",
                    "198.18.0.4",
                ],
            ),
            (
                SortKey::Bytes,
                [
                    "198.18.0.3",
                    "198.18.0.1",
                    "198.18.0.4",
                    "198.18.0.2",
                    "2001:db8::1",
                ],
            ),
        ];
        for (key, expected) in cases {
            let view = build(Some(&before), &now, key);
            assert_eq!(order(&view), expected, "sorted by {key:?}");
        }
        let view = build(Some(&before), &now, SortKey::Rate);
        let new = &view.rows[2];
        assert_eq!(new.packets_per_sec, Some(4.0), "a new source counts from 0");
        assert_eq!(view.rows[0].drops_per_sec, Some(51.0));
        assert_eq!(view.verdicts[0].per_sec, Some(10.0));
        assert!(!view.sessions_known, "no session data: columns hidden");
    }

    #[test]
    fn first_frame_has_no_rates_and_rate_sort_falls_back_to_packets() {
        let now = snapshot(
            Instant::now(),
            5,
            vec![
                row("198.18.0.1", 1, 1, 0, 60),
                row("198.18.0.2", 9, 9, 0, 540),
            ],
        );
        let view = build(None, &now, SortKey::Rate);
        assert_eq!(order(&view), ["198.18.0.2", "198.18.0.1"]);
        assert!(view.rows.iter().all(|r| r.packets_per_sec.is_none()));
        assert_eq!(view.verdicts[0].per_sec, None);
    }

    #[test]
    fn session_sorts_put_unknown_last() {
        let mut known = row("198.18.0.9", 1, 1, 0, 60);
        known.sessions = Some(3);
        known.rejected = Some(2);
        let mut fewer = row("198.18.0.8", 5, 5, 0, 300);
        fewer.sessions = Some(1);
        fewer.rejected = Some(0);
        let unknown = row("198.18.0.1", 50, 50, 0, 3000);
        let now = snapshot(Instant::now(), 0, vec![unknown, fewer, known]);
        for key in [SortKey::Sessions, SortKey::Rejected] {
            let view = build(None, &now, key);
            assert_eq!(
                order(&view),
                ["198.18.0.9", "198.18.0.8", "198.18.0.1"],
                "{key:?}"
            );
            assert!(view.sessions_known);
        }
    }

    #[test]
    fn cycling_skips_hidden_session_keys() {
        let cases = [
            (SortKey::Packets, 1, false, SortKey::Rate),
            (SortKey::Bytes, 1, false, SortKey::Packets),
            (SortKey::Bytes, 1, true, SortKey::Sessions),
            (SortKey::Packets, -1, false, SortKey::Bytes),
            (SortKey::Packets, -1, true, SortKey::Rejected),
            (SortKey::Sessions, 1, false, SortKey::Rate),
        ];
        for (from, step, sessions, expected) in cases {
            assert_eq!(
                from.cycle(step, sessions),
                expected,
                "{from:?} {step:+} sessions={sessions}"
            );
        }
    }
}

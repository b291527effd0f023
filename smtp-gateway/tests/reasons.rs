//! The kernel's reason table over time, on real pinned maps in a private bpffs directory (no
//! program, no interface): more distinct reasons than the table holds, with deletes, expiry
//! sweeps and replacements in between, and a ban that never fails for want of a reason slot.
//! Needs root.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use smtp_gateway::{
    config::Config,
    control::ops,
    dataplane::{Dataplane, clock, loader, reasons},
};

/// Slots of the reason table in these tests.
const REASONS: usize = 16;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Pinned maps of one test; detached and removed on drop.
struct Pins {
    dir: PathBuf,
    dp: Option<Dataplane>,
}

impl Pins {
    fn new() -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/sgw-reasons-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let text = format!(
            "[dataplane]\npin_dir = \"{}\"\n[dataplane.capacity]\nblock_v4 = 1024\nblock_v6 = \
             1024\nblock_net_v4 = 1024\nblock_net_v6 = 1024\nrate_sources = 1024\nsource_stats = \
             1024\nreasons = {REASONS}\n",
            dir.display()
        );
        let config = Config::parse(&text, "test").expect("config");
        let dp = loader::ensure_maps(&config.dataplane).expect("pinned maps");
        Self { dir, dp: Some(dp) }
    }

    fn dp(&mut self) -> &mut Dataplane {
        self.dp.as_mut().expect("open")
    }

    /// The reason listed for `target`.
    fn reason_of(&mut self, target: &str) -> Option<String> {
        ops::block_list(self.dp())
            .expect("list")
            .into_iter()
            .find(|row| row.target == target)
            .unwrap_or_else(|| panic!("{target} is not listed"))
            .reason
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        drop(self.dp.take());
        let _ = loader::detach(&self.dir);
    }
}

fn block(dp: &mut Dataplane, target: &str, ttl: Option<Duration>, reason: &str) {
    if let Err(e) = ops::block_add(dp, target, ttl, Some(reason)) {
        panic!("block add {target} ({reason}): {e}");
    }
}

#[test]
fn reasons_are_freed_with_their_last_entry_deleted_expired_or_replaced() {
    let mut pins = Pins::new();
    // Deletes: five rounds of ten distinct reasons, more than the table holds in all.
    for round in 0..5 {
        for i in 0..10 {
            let target = format!("198.18.{round}.{i}");
            block(
                pins.dp(),
                &target,
                None,
                &format!("round {round} entry {i}"),
            );
            assert_eq!(
                pins.reason_of(&target).as_deref(),
                Some(format!("round {round} entry {i}").as_str())
            );
        }
        for i in 0..10 {
            ops::block_del(pins.dp(), &format!("198.18.{round}.{i}")).expect("delete");
        }
    }
    // Replacement: one target, a new reason each time.
    for i in 0..(3 * REASONS) {
        block(pins.dp(), "198.18.9.9", None, &format!("replacement {i}"));
        assert_eq!(
            pins.reason_of("198.18.9.9").as_deref(),
            Some(format!("replacement {i}").as_str())
        );
    }
    ops::block_del(pins.dp(), "198.18.9.9").expect("delete");
    // Expiry: entries with a lifetime, swept as the daemon's sweeper does.
    for round in 1..=5 {
        for i in 1..=10 {
            let target = format!("2001:db8:{round}::{i}");
            let reason = format!("expiring {round}.{i}");
            block(pins.dp(), &target, Some(Duration::from_secs(1)), &reason);
            assert_eq!(pins.reason_of(&target).as_deref(), Some(reason.as_str()));
        }
        let later = clock::monotonic_ns() + Duration::from_secs(5).as_nanos() as u64;
        let report = pins.dp().sweep_expired(later).expect("sweep");
        assert_eq!((report.removed, report.reasons_freed), (10, 10));
    }
    // A reason shared by two entries stays while one of them does.
    block(pins.dp(), "198.18.10.1", None, "shared");
    block(pins.dp(), "198.18.10.2", None, "shared");
    ops::block_del(pins.dp(), "198.18.10.1").expect("delete");
    assert_eq!(pins.reason_of("198.18.10.2").as_deref(), Some("shared"));
}

#[test]
fn a_full_reason_table_never_fails_a_ban() {
    let mut pins = Pins::new();
    let before = reasons::fallbacks();
    // Every slot taken by a live entry's reason.
    for i in 0..REASONS {
        block(
            pins.dp(),
            &format!("198.18.20.{i}"),
            None,
            &format!("live {i}"),
        );
    }
    // One more distinct reason: the ban is made, without its text.
    block(pins.dp(), "198.18.21.1", None, "one too many");
    assert_eq!(pins.reason_of("198.18.21.1"), None);
    assert!(reasons::fallbacks() > before, "the fallback is counted");
    // An auto-ban takes the library path the autoban task takes.
    let dp = pins.dp();
    let id = reasons::intern(dp, "autoban: pregreet").expect("never an error for want of room");
    assert_eq!(id, 0);
    // Once a live entry goes, its slot serves a new reason.
    ops::block_del(pins.dp(), "198.18.20.0").expect("delete");
    block(pins.dp(), "198.18.21.2", None, "room again");
    assert_eq!(pins.reason_of("198.18.21.2").as_deref(), Some("room again"));
}

#[test]
fn reimported_lists_free_the_reasons_they_replace() {
    use smtp_gateway::dataplane::import::{self, ImportOptions};
    let mut pins = Pins::new();
    // Five imports of the same 6 addresses (IPv4 and IPv6), each line with a reason of its own
    // import: 35 reasons over time in a table of 16 (13 at once: the last import's 6 and this
    // one's 7), so each import must free those it replaces or run out of slots (an entry stored
    // without its reason lists none).
    for round in 0..5 {
        let mut text = String::new();
        for i in 0..3 {
            text.push_str(&format!("198.18.20.{i} ; round {round} v4 {i}\n"));
            text.push_str(&format!("2001:db8:20::{} ; round {round} v6 {i}\n", i + 1));
        }
        // A later line for the same address wins, and frees the earlier line's reason.
        text.push_str(&format!("198.18.20.0 ; round {round} last\n"));
        let (lines, errors) = import::parse(text.as_bytes()).expect("read from memory");
        assert!(errors.is_empty(), "{errors:?}");
        let summary =
            import::apply(pins.dp(), &lines, &ImportOptions::default(), |_| {}).expect("import");
        assert_eq!((summary.exact_v4, summary.exact_v6), (4, 3));
        assert_eq!(
            pins.reason_of("198.18.20.0").as_deref(),
            Some(format!("round {round} last").as_str())
        );
        for i in 1..3 {
            assert_eq!(
                pins.reason_of(&format!("198.18.20.{i}")).as_deref(),
                Some(format!("round {round} v4 {i}").as_str())
            );
        }
        for i in 0..3 {
            assert_eq!(
                pins.reason_of(&format!("2001:db8:20::{}", i + 1))
                    .as_deref(),
                Some(format!("round {round} v6 {i}").as_str())
            );
        }
    }
}

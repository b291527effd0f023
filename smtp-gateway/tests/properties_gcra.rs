//! Properties of the SYN limiter's GCRA step (`RateState::admit`, the arithmetic the XDP program
//! runs) and of the emission interval and tolerance userspace derives from `[dataplane.rate_limit]`.

use proptest::prelude::*;
use smtp_gateway::fuzzing::{DataplaneConfig, RateLimitConfig, kernel_config};
use smtp_gateway_common::RateState;

/// Runs SYNs at `times` (sorted) through one source's limiter; returns which were admitted.
fn run(times: &[u64], interval: u64, tolerance: u64) -> Vec<bool> {
    let mut state = None;
    times
        .iter()
        .map(
            |now| match RateState::admit(state, *now, interval, tolerance) {
                Some(next) => {
                    state = Some(next);
                    true
                }
                None => false,
            },
        )
        .collect()
}

fn sorted_times() -> impl Strategy<Value = Vec<u64>> {
    (
        0u64..1 << 40,
        prop::collection::vec(0u64..2_000_000_000, 1..200),
    )
        .prop_map(|(start, gaps)| {
            gaps.iter()
                .scan(start, |t, gap| {
                    *t += gap;
                    Some(*t)
                })
                .collect()
        })
}

proptest! {
    /// A fresh source gets exactly `burst` SYNs at one instant, then none.
    #[test]
    fn a_fresh_source_gets_exactly_its_burst(
        burst in 1u64..64,
        interval in 1u64..10_000_000_000,
        now in 0u64..1 << 50,
        extra in 1usize..32,
    ) {
        let tolerance = interval * (burst - 1);
        let times = vec![now; burst as usize + extra];
        let admitted = run(&times, interval, tolerance);
        prop_assert_eq!(admitted.iter().filter(|a| **a).count() as u64, burst);
        prop_assert!(admitted[..burst as usize].iter().all(|a| *a), "the first {} pass", burst);
    }

    /// Over any span of arrivals, at most `burst + span / interval` SYNs are admitted.
    #[test]
    fn never_more_than_burst_plus_rate(
        burst in 1u64..16,
        interval in 1_000u64..1_000_000_000,
        times in sorted_times(),
    ) {
        let tolerance = interval * (burst - 1);
        let admitted = run(&times, interval, tolerance);
        for start in 0..times.len() {
            let mut count = 0;
            for end in start..times.len() {
                count += u64::from(admitted[end]);
                let span = times[end] - times[start];
                prop_assert!(
                    count <= burst + span / interval,
                    "{} admitted in {} ns (burst {}, interval {})", count, span, burst, interval
                );
            }
        }
    }

    /// A source that keeps to the rate is never refused, whatever its burst.
    #[test]
    fn a_source_within_the_rate_always_passes(
        burst in 1u64..16,
        interval in 1u64..1_000_000_000,
        start in 0u64..1 << 50,
        slack in prop::collection::vec(0u64..1_000, 1..100),
    ) {
        let tolerance = interval * (burst - 1);
        let mut t = start;
        let times: Vec<u64> = slack.iter().map(|s| { t += interval + s; t }).collect();
        prop_assert!(run(&times, interval, tolerance).iter().all(|a| *a));
    }

    /// A refusal changes nothing, and once idle long enough a source has its full burst again.
    #[test]
    fn idle_sources_recover_their_burst(
        burst in 1u64..16,
        interval in 1u64..1_000_000_000,
        times in sorted_times(),
    ) {
        let tolerance = interval * (burst - 1);
        let mut state = None;
        for now in &times {
            if let Some(next) = RateState::admit(state, *now, interval, tolerance) {
                state = Some(next);
            }
        }
        let Some(last) = state else { return Ok(()); };
        let later = last.tat_ns.max(*times.last().unwrap_or(&0));
        let mut state = Some(last);
        for _ in 0..burst {
            let next = RateState::admit(state, later, interval, tolerance);
            prop_assert!(next.is_some(), "burst available again at {}", later);
            state = next;
        }
        prop_assert!(RateState::admit(state, later, interval, tolerance).is_none());
    }

    /// The configured rate and burst become interval = 1e9 / rate (at least 1 ns) and
    /// tolerance = (burst - 1) * interval, without overflow.
    #[test]
    fn the_kernel_parameters_follow_the_configuration(
        syn_per_second in 0.001f64..1e9,
        burst in 1u32..=u32::MAX,
    ) {
        let cfg = DataplaneConfig {
            rate_limit: RateLimitConfig {
                enabled: true,
                syn_per_second,
                burst,
                ..RateLimitConfig::default()
            },
            ..DataplaneConfig::default()
        };
        let k = kernel_config(&cfg);
        let expected = (1e9 / syn_per_second).round().max(1.0) as u64;
        prop_assert_eq!(k.rate_interval_ns, expected);
        prop_assert_eq!(
            k.rate_tolerance_ns,
            expected.saturating_mul(u64::from(burst - 1))
        );
    }
}

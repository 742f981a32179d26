//! Rates of the random faults over long runs with fixed seeds: loss (independent and
//! Gilbert–Elliott), duplication, reordering and corruption.

mod common;

use std::time::Duration;

use atbus_sim::{DropReason, Fate, Link};
use common::{assert_near, evenly_spaced, index_of, numbered, run};

const N: u32 = 100_000;
const GAP: Duration = Duration::from_micros(100);

fn new_link(spec: &str, seed: u64) -> Link {
    Link::new(spec.parse().expect("valid spec"), seed).expect("valid config")
}

/// Sends `N` datagrams and returns, for each, whether it was lost.
fn loss_pattern(spec: &str, seed: u64) -> Vec<bool> {
    let mut link = new_link(spec, seed);
    let pattern: Vec<bool> = (0..N)
        .map(|i| link.send(GAP * i, numbered(i, 20)) == Fate::Dropped(DropReason::Loss))
        .collect();
    let lost = pattern.iter().filter(|&&l| l).count() as u64;
    assert_eq!(link.stats().dropped_loss, lost);
    pattern
}

fn rate(pattern: &[bool]) -> f64 {
    pattern.iter().filter(|&&l| l).count() as f64 / pattern.len() as f64
}

fn mean_burst(pattern: &[bool]) -> f64 {
    let bursts = pattern.split(|&lost| !lost).filter(|run| !run.is_empty());
    let (count, total) = bursts.fold((0, 0), |(c, t), run| (c + 1, t + run.len()));
    total as f64 / count as f64
}

#[test]
fn independent_loss_matches_its_probability() {
    let pattern = loss_pattern("loss=10%", 7);
    // Standard deviation of the rate is sqrt(0.1 * 0.9 / 1e5) ≈ 0.00095.
    assert_near("loss rate", rate(&pattern), 0.10, 0.004);
    // Independent losses come in geometric runs of mean 1 / (1 - p).
    assert_near("mean burst", mean_burst(&pattern), 1.0 / 0.9, 0.02);
}

#[test]
fn gilbert_elliott_loss_matches_its_rate_and_mean_burst_length() {
    let pattern = loss_pattern("loss=5%,burst=4", 7);
    assert_near("loss rate", rate(&pattern), 0.05, 0.005);
    assert_near("mean burst", mean_burst(&pattern), 4.0, 0.25);

    let pattern = loss_pattern("loss=20%,burst=1.5", 8);
    assert_near("loss rate", rate(&pattern), 0.20, 0.01);
    assert_near("mean burst", mean_burst(&pattern), 1.5, 0.05);
}

#[test]
fn duplicates_match_their_probability_and_follow_the_original() {
    let mut link = new_link("delay=10ms,dup=3%", 9);
    let delivered = run(&mut link, evenly_spaced(N, GAP, 32));
    let duplicated = link.stats().duplicated;
    assert_eq!(delivered.len() as u64, u64::from(N) + duplicated);
    assert_near("dup rate", duplicated as f64 / f64::from(N), 0.03, 0.002);
    // Every datagram arrives in order, its copy (if any) right after it, same instant.
    let mut expected = 0;
    for pair in delivered.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.1 == b.1 {
            assert_eq!(a.0, b.0);
        } else {
            assert_eq!(index_of(&a.1), expected);
            assert_eq!(index_of(&b.1), expected + 1);
            expected += 1;
        }
    }
    assert_eq!(expected, N - 1);
}

#[test]
fn held_back_datagrams_match_their_probability_and_are_overtaken() {
    let mut link = new_link("delay=10ms,jitter=1ms,reorder=2%", 10);
    let mut fates = Vec::new();
    let mut held = Vec::new();
    for i in 0..N {
        let before = link.stats().reordered;
        fates.push(link.send(GAP * i, numbered(i, 32)));
        held.push(link.stats().reordered > before);
    }
    let reordered = link.stats().reordered;
    assert_eq!(held.iter().filter(|&&h| h).count() as u64, reordered);
    assert_near("reorder rate", reordered as f64 / f64::from(N), 0.02, 0.002);

    let arrival = |i: usize| match fates[i] {
        Fate::InFlight { arrival } => arrival,
        Fate::Dropped(reason) => panic!("dropped: {reason:?}"),
    };
    // With traffic following every 100 µs, a held-back datagram is overtaken by the
    // next one that is not held back.
    let mut overtaken = 0;
    for i in 0..fates.len() - 1 {
        if held[i] && !held[i + 1] {
            assert!(
                arrival(i + 1) < arrival(i),
                "datagram {i} was not overtaken"
            );
            overtaken += 1;
        }
    }
    assert!(overtaken as u64 > reordered * 9 / 10);

    // The delivered order shows the overtaking; the other datagrams stay in order.
    let delivered = run(
        &mut new_link("delay=10ms,jitter=1ms,reorder=2%", 10),
        evenly_spaced(N, GAP, 32),
    );
    let order: Vec<u32> = delivered.iter().map(|(_, d)| index_of(d)).collect();
    let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(
        inversions as u64 >= reordered * 9 / 10,
        "{inversions} inversions"
    );
    let not_held: Vec<u32> = order.into_iter().filter(|&i| !held[i as usize]).collect();
    assert!(not_held.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn corrupted_datagrams_differ_in_exactly_one_bit() {
    let mut link = new_link("delay=10ms,corrupt=4%", 12);
    let sends: Vec<_> = evenly_spaced(N, GAP, 48).collect();
    let delivered = run(&mut link, sends.clone());
    assert_eq!(delivered.len(), sends.len());
    let mut differing = 0;
    for ((_, sent), (_, got)) in sends.iter().zip(&delivered) {
        let bits: u32 = sent
            .iter()
            .zip(got)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert!(bits <= 1, "{bits} bits flipped");
        differing += u64::from(bits);
    }
    assert_eq!(differing, link.stats().corrupted);
    assert_near("corrupt rate", differing as f64 / f64::from(N), 0.04, 0.003);
    // The caller's bytes were left alone.
    assert!(sends.iter().all(|(_, d)| d[4..].iter().all(|&b| b == 0xA5)));
}

#[test]
fn fault_probabilities_of_one_always_apply() {
    let mut link = new_link("dup=100%,corrupt=100%,reorder=100%", 13);
    let delivered = run(&mut link, evenly_spaced(100, GAP, 16));
    assert_eq!(delivered.len(), 200);
    let stats = link.stats();
    assert_eq!(
        (stats.duplicated, stats.corrupted, stats.reordered),
        (100, 100, 100)
    );

    let mut link = new_link("loss=100%", 13);
    assert!(run(&mut link, evenly_spaced(100, GAP, 16)).is_empty());
    assert_eq!(link.stats().dropped_loss, 100);
}

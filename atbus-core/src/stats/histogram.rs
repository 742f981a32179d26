//! The latency histogram of `DESIGN.md` ("Observability").

use std::time::Duration;

/// Upper edges of the latency buckets, in milliseconds; a 20th bucket above the last
/// edge is unbounded.
///
/// 0–60 ms by 15, 60–180 ms by 30, 180–300 ms by 60 then 320 ms, 320–800 ms by 120,
/// 800–2000 ms by 300, then everything above (`DESIGN.md`, "Observability").
pub const HISTOGRAM_EDGES_MS: [u64; 19] = [
    15, 30, 45, 60, 90, 120, 150, 180, 240, 300, 320, 440, 560, 680, 800, 1100, 1400, 1700, 2000,
];

/// Number of buckets: one per edge plus the unbounded one.
pub const HISTOGRAM_BUCKETS: usize = HISTOGRAM_EDGES_MS.len() + 1;

/// Every edge is a multiple of this, so a bucket lookup is one table load.
const STEP_MICROS: u64 = 5_000;

/// The bucket of each `STEP_MICROS` step below the last edge: `BUCKET_OF_STEP[i]` is
/// the bucket of every sample in `[i × 5 ms, (i + 1) × 5 ms)`.
const BUCKET_OF_STEP: [u8; (HISTOGRAM_EDGES_MS[18] * 1_000 / STEP_MICROS) as usize] = {
    let mut table = [0; (HISTOGRAM_EDGES_MS[18] * 1_000 / STEP_MICROS) as usize];
    let (mut step, mut bucket) = (0, 0);
    while step < table.len() {
        // Compile-time check that the table is exact.
        assert!(HISTOGRAM_EDGES_MS[bucket] * 1_000 % STEP_MICROS == 0);
        if step as u64 * STEP_MICROS >= HISTOGRAM_EDGES_MS[bucket] * 1_000 {
            bucket += 1;
        }
        table[step] = bucket as u8;
        step += 1;
    }
    table
};

/// `duration` in whole microseconds, saturating; without `Duration::as_micros`'s
/// 128-bit arithmetic, as this runs per sample.
#[inline]
pub(super) fn saturating_micros(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(duration.subsec_micros()))
}

/// Counts of latency samples per bucket of [`HISTOGRAM_EDGES_MS`].
///
/// Bucket rule: a sample falls in the first bucket whose upper edge is strictly
/// greater than the sample, so each bucket is the half-open interval
/// `[previous edge, edge)`: 0 and 14.999 ms fall in bucket 0 (`[0, 15)`), 15 ms in
/// bucket 1 (`[15, 30)`), and 2000 ms or more in the last, unbounded bucket.
/// Samples are truncated to whole microseconds first, which moves none of them across
/// an edge (edges are whole milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LatencyHistogram {
    counts: [u64; HISTOGRAM_BUCKETS],
}

impl LatencyHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        LatencyHistogram {
            counts: [0; HISTOGRAM_BUCKETS],
        }
    }

    /// A histogram with these counts, bucket by bucket.
    pub const fn from_counts(counts: [u64; HISTOGRAM_BUCKETS]) -> Self {
        LatencyHistogram { counts }
    }

    /// The bucket `sample` falls in: `0..HISTOGRAM_BUCKETS`, see the bucket rule above.
    #[inline]
    pub fn bucket_of(sample: Duration) -> usize {
        let step = saturating_micros(sample) / STEP_MICROS;
        match usize::try_from(step)
            .ok()
            .and_then(|i| BUCKET_OF_STEP.get(i))
        {
            Some(&bucket) => usize::from(bucket),
            None => HISTOGRAM_BUCKETS - 1,
        }
    }

    /// The bounds of bucket `bucket`: its lower edge (inclusive) and its upper edge
    /// (exclusive), `None` for the unbounded last bucket. `None` altogether if
    /// `bucket >= HISTOGRAM_BUCKETS`.
    pub fn bucket_bounds(bucket: usize) -> Option<(Duration, Option<Duration>)> {
        if bucket >= HISTOGRAM_BUCKETS {
            return None;
        }
        let lower = match bucket {
            0 => 0,
            _ => HISTOGRAM_EDGES_MS[bucket - 1],
        };
        let upper = HISTOGRAM_EDGES_MS.get(bucket).copied();
        Some((
            Duration::from_millis(lower),
            upper.map(Duration::from_millis),
        ))
    }

    /// Counts one sample.
    #[inline]
    pub fn record(&mut self, sample: Duration) {
        self.record_bucket(Self::bucket_of(sample));
    }

    /// Counts one sample in `bucket` (from [`bucket_of`](Self::bucket_of)).
    #[inline]
    pub(crate) fn record_bucket(&mut self, bucket: usize) {
        let count = &mut self.counts[bucket];
        *count = count.saturating_add(1);
    }

    /// The counts, bucket by bucket.
    pub const fn counts(&self) -> &[u64; HISTOGRAM_BUCKETS] {
        &self.counts
    }

    /// Number of samples counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0, |sum, &c| sum.saturating_add(c))
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.saturating_add(theirs);
        }
    }

    /// The bucket holding the `q`-quantile (`q` clamped to `0.0..=1.0`; 0.5 is the
    /// median): the first bucket at which at least `ceil(q × total)` samples (and at
    /// least one) are counted. `None` if the histogram is empty. The quantile lies
    /// within [`bucket_bounds`](Self::bucket_bounds) of the answer; the histogram
    /// knows no finer.
    pub fn quantile_bucket(&self, q: f64) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // The float product is exact enough: a rank off by one at 2^53 samples.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        self.counts.iter().position(|&c| {
            seen = seen.saturating_add(c);
            seen >= rank
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_sample_on_an_edge_falls_in_the_bucket_above_it() {
        assert_eq!(LatencyHistogram::bucket_of(ms(15)), 1);
        assert_eq!(LatencyHistogram::bucket_of(ms(30)), 2);
        assert_eq!(LatencyHistogram::bucket_of(ms(320)), 11);
        assert_eq!(LatencyHistogram::bucket_of(ms(1700)), 18);
        for (i, &edge) in HISTOGRAM_EDGES_MS.iter().enumerate() {
            assert_eq!(LatencyHistogram::bucket_of(ms(edge)), i + 1, "edge {edge}");
            assert_eq!(
                LatencyHistogram::bucket_of(ms(edge) - Duration::from_nanos(1)),
                i,
                "just below edge {edge}"
            );
        }
    }

    #[test]
    fn the_lookup_table_agrees_with_the_bucket_rule() {
        let by_rule = |micros: u64| {
            HISTOGRAM_EDGES_MS
                .iter()
                .position(|&edge| edge * 1_000 > micros)
                .unwrap_or(HISTOGRAM_BUCKETS - 1)
        };
        for micros in (0..2_100_000)
            .step_by(7)
            .chain((0..=2_100u64).map(|ms| ms * 1_000))
        {
            for micros in [micros.saturating_sub(1), micros, micros + 1] {
                let sample = Duration::from_micros(micros);
                assert_eq!(
                    LatencyHistogram::bucket_of(sample),
                    by_rule(micros),
                    "{micros} µs"
                );
            }
        }
    }

    #[test]
    fn zero_and_just_under_15_ms_fall_in_the_first_bucket() {
        assert_eq!(LatencyHistogram::bucket_of(Duration::ZERO), 0);
        assert_eq!(
            LatencyHistogram::bucket_of(Duration::from_micros(14_999)),
            0
        );
        assert_eq!(
            LatencyHistogram::bucket_of(Duration::from_nanos(14_999_999)),
            0
        );
    }

    #[test]
    fn two_seconds_and_above_fall_in_the_unbounded_bucket() {
        let last = HISTOGRAM_BUCKETS - 1;
        assert_eq!(LatencyHistogram::bucket_of(ms(1999)), last - 1);
        assert_eq!(LatencyHistogram::bucket_of(ms(2000)), last);
        assert_eq!(LatencyHistogram::bucket_of(Duration::from_secs(3600)), last);
        assert_eq!(LatencyHistogram::bucket_of(Duration::MAX), last);
    }

    #[test]
    fn bucket_bounds_follow_the_edges() {
        assert_eq!(
            LatencyHistogram::bucket_bounds(0),
            Some((Duration::ZERO, Some(ms(15))))
        );
        assert_eq!(
            LatencyHistogram::bucket_bounds(10),
            Some((ms(300), Some(ms(320))))
        );
        assert_eq!(LatencyHistogram::bucket_bounds(19), Some((ms(2000), None)));
        assert_eq!(LatencyHistogram::bucket_bounds(20), None);
        for bucket in 0..HISTOGRAM_BUCKETS {
            let (lower, _) = LatencyHistogram::bucket_bounds(bucket).unwrap();
            assert_eq!(LatencyHistogram::bucket_of(lower), bucket);
        }
    }

    #[test]
    fn record_merge_and_total_count_samples() {
        let mut a = LatencyHistogram::new();
        a.record(ms(1));
        a.record(ms(15));
        a.record(ms(5000));
        let mut b = LatencyHistogram::new();
        b.record(ms(16));
        b.merge(&a);
        assert_eq!(b.total(), 4);
        assert_eq!(b.counts()[0], 1);
        assert_eq!(b.counts()[1], 2);
        assert_eq!(b.counts()[19], 1);
        assert_eq!(a.total(), 3);
    }

    #[test]
    fn quantile_bucket_finds_the_bucket_holding_the_rank() {
        assert_eq!(LatencyHistogram::new().quantile_bucket(0.5), None);
        let mut counts = [0; HISTOGRAM_BUCKETS];
        counts[0] = 50;
        counts[3] = 49;
        counts[19] = 1;
        let h = LatencyHistogram::from_counts(counts);
        assert_eq!(h.quantile_bucket(0.0), Some(0));
        assert_eq!(h.quantile_bucket(0.5), Some(0));
        assert_eq!(h.quantile_bucket(0.51), Some(3));
        assert_eq!(h.quantile_bucket(0.99), Some(3));
        assert_eq!(h.quantile_bucket(1.0), Some(19));
        assert_eq!(h.quantile_bucket(7.0), Some(19));
        assert_eq!(h.quantile_bucket(f64::NAN), Some(0));
    }
}

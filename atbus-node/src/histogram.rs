//! A latency histogram with the bucket edges of `DESIGN.md` ("Observability").
//! Kept small and local so that the core's statistics module can replace it.

use std::fmt;
use std::time::Duration;

/// Upper bucket edges in milliseconds; the last bucket is unbounded.
pub const BUCKET_EDGES_MS: [u64; 19] = [
    15, 30, 45, 60, 90, 120, 150, 180, 240, 300, 320, 440, 560, 680, 800, 1100, 1400, 1700, 2000,
];

/// Counts of latencies per bucket, plus exact samples for percentiles.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    counts: [u64; 20],
    samples: Vec<Duration>,
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let ms = latency.as_millis();
        let bucket = BUCKET_EDGES_MS
            .iter()
            .position(|&edge| ms < u128::from(edge))
            .unwrap_or(BUCKET_EDGES_MS.len());
        self.counts[bucket] += 1;
        self.samples.push(latency);
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.samples.len() as u64
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The latency below which `q` (0..=1) of the samples fall.
    pub fn quantile(&mut self, q: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        self.samples.sort_unstable();
        let index = ((self.samples.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.samples[index]
    }

    /// The largest latency.
    pub fn max(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }

    /// `(label, count)` for every bucket.
    pub fn buckets(&self) -> Vec<(String, u64)> {
        let mut lower = 0;
        let mut out = Vec::new();
        for (i, &count) in self.counts.iter().enumerate() {
            let label = match BUCKET_EDGES_MS.get(i) {
                Some(&edge) => {
                    let l = format!("{lower}-{edge} ms");
                    lower = edge;
                    l
                }
                None => format!(">= {lower} ms"),
            };
            out.push((label, count));
        }
        out
    }
}

impl fmt::Display for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.len().max(1);
        let widest = self.counts.iter().copied().max().unwrap_or(0).max(1);
        for (label, count) in self.buckets() {
            if count == 0 {
                continue;
            }
            let bar = "#".repeat(((count * 40).div_ceil(widest)) as usize);
            writeln!(
                f,
                "  {label:>14} {count:>8} {:>6.2}% {bar}",
                count as f64 * 100.0 / total as f64
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_design_buckets() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_millis(1));
        h.record(Duration::from_millis(15));
        h.record(Duration::from_secs(5));
        let b = h.buckets();
        assert_eq!(b[0], ("0-15 ms".to_string(), 1));
        assert_eq!(b[1], ("15-30 ms".to_string(), 1));
        assert_eq!(b[19], (">= 2000 ms".to_string(), 1));
        assert_eq!(h.max(), Duration::from_secs(5));
    }
}

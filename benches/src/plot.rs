//! The latency distributions of a comparison as an SVG: for each transport, the
//! fraction of messages slower than a given latency (complementary cumulative
//! distribution) on a log scale, so that the tail (p99, p99.9, max) is readable.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

/// Colours of the curves, in the order of the series.
const COLOURS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// One curve: a name and its latencies, ascending.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// The legend.
    pub name: String,
    /// Latencies, ascending.
    pub latencies: &'a [Duration],
}

/// Writes to `file` an SVG of each series' latency distribution, titled `title`:
/// x is the latency in ms, y (log scale) the fraction of the messages whose latency
/// is at least x. A curve ends at its maximum, at `1 / messages`.
pub fn latency_ccdf(file: &Path, title: &str, series: &[Series<'_>]) -> Result<(), String> {
    let max_ms = series
        .iter()
        .filter_map(|s| s.latencies.last())
        .map(|d| d.as_secs_f64() * 1e3)
        .fold(1.0, f64::max);
    let most = series
        .iter()
        .map(|s| s.latencies.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let min_fraction = 0.5 / most as f64;
    let root = SVGBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..max_ms * 1.05, (min_fraction..1.0).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, virtual time)")
        .y_desc("fraction of messages at least this late")
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, s) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let n = s.latencies.len().max(1) as f64;
        // A staircase: at each latency the fraction drops by one message.
        let mut points = Vec::with_capacity(2 * s.latencies.len());
        let mut above = 1.0;
        for (i, latency) in s.latencies.iter().enumerate() {
            let x = latency.as_secs_f64() * 1e3;
            points.push((x, above));
            let remaining = (s.latencies.len() - i - 1) as f64 / n;
            if remaining > 0.0 {
                points.push((x, remaining));
                above = remaining;
            }
        }
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

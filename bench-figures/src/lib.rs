//! The numbers behind a benchmark's tables, as JSON, so `cargo xtask bench` can draw them.
//!
//! A benchmark binary given `--figures PATH` writes one [`Figures`] document there. Every figure
//! is a grouped bar chart: categories along x (a load level, a configuration), one bar per
//! series in each category, the bar at the median of the repeats and a whisker from min to max.
//! Keeping to one chart kind keeps the renderer small and every plot readable the same way.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Everything one benchmark binary measured, in drawable form.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// The sub-benchmark name (`xdp`, `smtp`, `drop`, ...): file names derive from it.
    pub bench: String,
    /// The exact command that reproduces the figures (`cargo xtask bench drop`).
    pub command: String,
    /// The machine, as `smtp_gateway_tests::machine` describes it.
    pub machine: String,
    pub figures: Vec<Figure>,
}

/// One chart.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    /// Unique within the bench; the SVG is `docs/bench/<bench>-<id>.svg`.
    pub id: String,
    pub title: String,
    /// What the categories are ("concurrent sessions", "configuration").
    pub x_label: String,
    /// The measured quantity with its unit ("ns per packet", "messages/s").
    pub y_label: String,
    /// Draw y on a log scale (for values spanning orders of magnitude).
    #[serde(default)]
    pub log_y: bool,
    /// Category labels in display order; every series has one point per category at most.
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    /// A sentence under the plot: the baseline, the aim, how to read it.
    #[serde(default)]
    pub note: String,
}

/// One bar per category.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// A measured value: median and spread over `repeats` runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Point {
    /// One of the figure's `categories`.
    pub category: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub repeats: usize,
}

impl Point {
    /// The median, min and max of `samples` (which must not be empty; an empty slice gives NaN).
    pub fn from_samples(category: impl Into<String>, samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Point {
            category: category.into(),
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            repeats: sorted.len(),
        }
    }
}

impl Figures {
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let p = Point::from_samples("a", &[3.0, 1.0, 2.0]);
        assert_eq!((p.median, p.min, p.max, p.repeats), (2.0, 1.0, 3.0, 3));
        let p = Point::from_samples("b", &[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(p.median, 2.5);
    }

    #[test]
    fn round_trips_through_json() {
        let figs = Figures {
            bench: "x".into(),
            command: "cargo xtask bench x".into(),
            machine: "m".into(),
            figures: vec![Figure {
                id: "f".into(),
                title: "t".into(),
                categories: vec!["a".into()],
                series: vec![Series {
                    name: "s".into(),
                    points: vec![Point::from_samples("a", &[1.0])],
                }],
                ..Figure::default()
            }],
        };
        let dir = std::env::temp_dir().join(format!("figures-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.json");
        figs.write(&path).unwrap();
        assert_eq!(Figures::read(&path).unwrap(), figs);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

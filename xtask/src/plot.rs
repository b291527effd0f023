//! Draws a benchmark's [`Figures`] document as one SVG per figure (plotters, SVG backend).
//!
//! Every figure is the same kind of chart (see the `bench-figures` crate): categories along x,
//! one bar per series in each category at the median of the repeats, a whisker from min to max,
//! the median written above it, a legend, both axis labels and the title; y is linear from zero,
//! or logarithmic when the figure asks for it. The note and the command go into BENCHMARKS.md
//! under the image, not into the SVG.
//!
//! Text needs font metrics: plotters measures it with ab_glyph from DejaVu Sans (Debian package
//! `fonts-dejavu-core`, installed by `cargo xtask setup`), read at run time. The SVG itself only
//! names the family `sans-serif`; viewers use their own font.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, ensure};
use bench_figures::{Figure, Figures, Point};
use plotters::{
    coord::{Shift, ranged1d::AsRangedCoord, ranged1d::ValueFormatter},
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// The font plotters measures text with.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Its bold face (titles); the regular face stands in when it is missing.
const FONT_BOLD: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";
/// The Debian package that ships [`FONT`].
pub const FONT_PACKAGE: &str = "fonts-dejavu-core";

const WIDTH: u32 = 900;
const HEIGHT: u32 = 500;

/// Series colours (Okabe–Ito: distinguishable with the common colour-vision deficiencies).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

/// The colour of series number `i`.
pub fn series_colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Registers DejaVu Sans with plotters once; fails with what to install when it is missing.
fn fonts() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let load = |path: &str| -> Result<&'static [u8], String> {
            std::fs::read(path).map(|b| &*b.leak()).map_err(|e| {
                format!(
                    "cannot read the plot font {path} ({e}): install Debian's {FONT_PACKAGE} \
                     (`cargo xtask setup` as root, or `apt-get install {FONT_PACKAGE}`)"
                )
            })
        };
        let regular = load(FONT)?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, regular)
            .map_err(|_| format!("{FONT} is not a usable TrueType font"))?;
        let bold = load(FONT_BOLD).unwrap_or(regular);
        plotters::style::register_font("sans-serif", FontStyle::Bold, bold)
            .map_err(|_| format!("{FONT_BOLD} is not a usable TrueType font"))?;
        Ok(())
    });
    result.clone().map_err(anyhow::Error::msg)
}

/// `<bench>-<id>.svg`, the file name of a figure's plot.
pub fn svg_name(bench: &str, figure: &Figure) -> String {
    format!("{bench}-{}.svg", figure.id)
}

/// Writes one SVG per figure of `doc` into `dir`; returns their paths, in the figures' order.
pub fn render(doc: &Figures, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for figure in &doc.figures {
        let path = dir.join(svg_name(&doc.bench, figure));
        ensure!(
            !paths.contains(&path),
            "{}: figure id {:?} appears twice",
            doc.bench,
            figure.id
        );
        render_figure(figure, &path)
            .with_context(|| format!("drawing figure {:?} of {}", figure.id, doc.bench))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Checks what the chart relies on: a usable id, known categories, drawable values.
fn validate(fig: &Figure) -> anyhow::Result<()> {
    ensure!(
        !fig.id.is_empty()
            && fig
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "figure id {:?}: ASCII letters, digits, '-' and '_' only (it names a file)",
        fig.id
    );
    ensure!(!fig.categories.is_empty(), "no categories");
    for s in &fig.series {
        for p in &s.points {
            ensure!(
                fig.categories.contains(&p.category),
                "series {:?}: category {:?} is not one of {:?}",
                s.name,
                p.category,
                fig.categories
            );
            if fig.log_y && p.median.is_finite() {
                ensure!(
                    p.min > 0.0 && p.median > 0.0,
                    "series {:?} at {:?}: a log scale needs positive values",
                    s.name,
                    p.category
                );
            }
        }
    }
    Ok(())
}

/// The drawable points (finite median) with their series index.
fn points(fig: &Figure) -> impl Iterator<Item = (usize, &Point)> {
    fig.series.iter().enumerate().flat_map(|(j, s)| {
        s.points
            .iter()
            .filter(|p| p.median.is_finite())
            .map(move |p| (j, p))
    })
}

/// The y range: from zero (or the lowest value) with headroom for the legend and the labels; on a
/// log scale, decades around the values.
fn y_range(fig: &Figure) -> (f64, f64) {
    let values: Vec<f64> = points(fig)
        .flat_map(|(_, p)| [p.min, p.median, p.max])
        .filter(|v| v.is_finite())
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() {
        return if fig.log_y { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if fig.log_y {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil() + 0.5),
        )
    } else {
        let top = if hi > 0.0 { hi * 1.3 } else { 1.0 };
        (lo.min(0.0) * 1.1, top)
    }
}

/// A value as axis and bar labels show it: about three significant digits, no trailing zeros.
pub fn format_value(v: f64) -> String {
    let text = format_digits(v);
    if text.contains('.') && !text.contains('e') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn format_digits(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        let m = format!("{:.3}", v / 1e6);
        format!("{}M", m.trim_end_matches('0').trim_end_matches('.'))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

/// Draws `fig` into the SVG file `path`.
pub fn render_figure(fig: &Figure, path: &Path) -> anyhow::Result<()> {
    fonts()?;
    validate(fig)?;
    let (lo, hi) = y_range(fig);
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    if fig.log_y {
        draw(&root, fig, (lo..hi).log_scale(), lo)?;
    } else {
        draw(&root, fig, lo..hi, lo.max(0.0).min(hi))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The chart, generic over the y axis (linear or log); bars start at `base`. Category `i` spans
/// x from `i` to `i + 1`; its bars share the middle 80 %.
fn draw<Y>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    fig: &Figure,
    y: Y,
    base: f64,
) -> anyhow::Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let n = fig.categories.len() as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(
            &fig.title,
            ("sans-serif", 20).into_font().style(FontStyle::Bold),
        )
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n, y)?;
    // The category names are drawn below, at the middle of their span.
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|v| format_value(*v))
        .x_desc(&fig.x_label)
        .y_desc(&fig.y_label)
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 13))
        .draw()?;
    let label_font = ("sans-serif", 13).into_font().color(&BLACK);
    for (i, name) in fig.categories.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, base));
        let (_, y_axis) = chart.plotting_area().get_pixel_range();
        let y = y.max(y_axis.end);
        root.draw(&Text::new(
            name.clone(),
            (x, y + 8),
            label_font.pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }

    let groups = fig.series.len().max(1) as f64;
    let px = |x: f64, v: f64| chart.backend_coord(&(x, v));
    let whisker = BLACK.stroke_width(1);
    let value_font = ("sans-serif", 11)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    // Bars first, then whiskers and labels over them.
    let mut marks = Vec::new();
    for (j, p) in points(fig) {
        let Some(cat) = fig.categories.iter().position(|c| *c == p.category) else {
            continue;
        };
        let x0 = cat as f64 + 0.1 + 0.8 * j as f64 / groups;
        let x1 = x0 + 0.8 / groups;
        let (left, y_base) = px(x0, base);
        let (right, y_median) = px(x1, p.median);
        root.draw(&Rectangle::new(
            [(left + 1, y_median), (right - 1, y_base)],
            series_colour(j).filled(),
        ))?;
        marks.push(((left + right) / 2, ((right - left) / 4).max(2), p));
    }
    for (mid, cap, p) in marks {
        let y_median = px(0.0, p.median).1;
        let mut top = y_median;
        if p.min.is_finite() && p.max.is_finite() {
            let (y_min, y_max) = (px(0.0, p.min).1, px(0.0, p.max).1);
            if y_min != y_max {
                root.draw(&PathElement::new(vec![(mid, y_min), (mid, y_max)], whisker))?;
                for y in [y_min, y_max] {
                    root.draw(&PathElement::new(
                        vec![(mid - cap, y), (mid + cap, y)],
                        whisker,
                    ))?;
                }
            }
            top = top.min(y_max);
        }
        root.draw(&Text::new(
            format_value(p.median),
            (mid, top - 4),
            value_font.clone(),
        ))?;
    }
    for (j, s) in fig.series.iter().enumerate() {
        let colour = series_colour(j);
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(&s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
    }
    if !fig.series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bench_figures::Series;

    fn doc(log_y: bool) -> Figures {
        let series = |name: &str, base: f64| Series {
            name: name.into(),
            points: vec![
                Point::from_samples("10 sessions", &[base, base * 1.1, base * 0.9]),
                Point::from_samples("100 sessions", &[base * 2.0, base * 2.5]),
            ],
        };
        Figures {
            bench: "demo".into(),
            command: "cargo xtask bench demo".into(),
            machine: "test".into(),
            figures: vec![Figure {
                id: "rate".into(),
                title: "Messages per second".into(),
                x_label: "concurrent sessions".into(),
                y_label: "messages/s".into(),
                log_y,
                categories: vec!["10 sessions".into(), "100 sessions".into()],
                series: vec![series("direct", 2000.0), series("via gateway", 900.0)],
                note: "a note".into(),
            }],
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// `fill="#RRGGBB"` as plotters' SVG backend writes it.
    fn fill(c: RGBColor) -> String {
        format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2)
    }

    #[test]
    fn renders_bars_whiskers_labels_and_legend() {
        for log_y in [false, true] {
            let dir = temp_dir(if log_y { "log" } else { "lin" });
            let doc = doc(log_y);
            let paths = render(&doc, &dir).expect("render");
            assert_eq!(paths, vec![dir.join("demo-rate.svg")]);
            let svg = std::fs::read_to_string(&paths[0]).expect("svg written");
            assert!(svg.starts_with("<svg"), "not an SVG: {}", &svg[..80]);
            for text in [
                "Messages per second",
                "direct",
                "via gateway",
                "10 sessions",
                "100 sessions",
                "concurrent sessions",
                "messages/s",
            ] {
                assert!(svg.contains(text), "{text:?} missing from the SVG");
            }
            // One rect per bar in the series colour, plus its legend swatch.
            for j in 0..2 {
                let rects = svg
                    .lines()
                    .filter(|l| l.starts_with("<rect") && l.contains(&fill(series_colour(j))))
                    .count();
                assert_eq!(
                    rects,
                    2 + 1,
                    "series {j}: bars + legend swatch (log_y {log_y})"
                );
            }
            // Medians above the bars (the direct series at 10 sessions: 2000).
            assert!(svg.lines().any(|l| l.trim() == "2000"), "median label");
            // Whiskers: a vertical line and two caps per bar with a spread.
            assert!(svg.matches("<polyline").count() >= 4 * 3);
            std::fs::remove_dir_all(&dir).expect("cleanup");
        }
    }

    #[test]
    fn refuses_unknown_categories_and_bad_ids() {
        let dir = temp_dir("bad");
        let mut bad = doc(false);
        bad.figures[0].series[0].points[0].category = "elsewhere".into();
        let err = render(&bad, &dir).expect_err("unknown category");
        assert!(format!("{err:#}").contains("elsewhere"), "{err:#}");
        let mut bad = doc(false);
        bad.figures[0].id = "../x".into();
        assert!(render(&bad, &dir).is_err());
        let mut bad = doc(true);
        bad.figures[0].series[0].points[0].min = 0.0;
        assert!(render(&bad, &dir).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn formats_values() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(0.934), "0.934");
        assert_eq!(format_value(1.5), "1.5");
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(10.0), "10");
        assert_eq!(format_value(12.34), "12.3");
        assert_eq!(format_value(2345.6), "2346");
        assert_eq!(format_value(2_500_000.0), "2.5M");
    }
}
